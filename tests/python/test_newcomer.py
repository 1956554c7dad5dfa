"""A newcomer's first hour (issue 14): the first snippet runs given a URL, connect() reads every
form the configuration reads, and messages fit what was done."""

from __future__ import annotations

import os
from pathlib import Path

import distributed_leasing as dl
import pytest
from redis_servers import RedisServer


async def test_the_first_snippet_runs_with_a_url(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'leases.db'}"
    async with dl.lease("critical-section-lock", url=url) as lease:
        assert lease.fencing_token == 1
        holder = await (await dl.LeaseClient.connect(url)).inspect("critical-section-lock")
        assert holder is not None and holder.lease_id == lease.lease_id
    with dl.lease("critical-section-lock", url=url) as again:
        assert again.fencing_token == 2


def test_lease_refuses_url_and_client_together(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'leases.db'}"
    client = dl.LeaseClient.connect_sync(url)
    with pytest.raises(ValueError, match="not both"):
        dl.lease("x", url=url, client=client)
    client.close_sync()


def test_not_configured_says_where_a_url_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("RedisLeasing__")]:
        monkeypatch.delenv(key)
    with pytest.raises(dl.ConfigError) as err, dl.lease("x"):
        pass
    assert "url=" in str(err.value)


def test_connect_reads_the_configuration_forms(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The StackExchange.Redis form and valkey://, as the configuration reads them.
    for url in (f"127.0.0.1:{redis_server.port}", f"valkey://127.0.0.1:{redis_server.port}"):
        c = dl.LeaseClient.connect_sync(url)
        assert c.kind == "redis"
        c.close_sync()
    # A relative SQLite path is relative to the current directory.
    monkeypatch.chdir(tmp_path)
    c = dl.LeaseClient.connect_sync("sqlite://leases.db")
    lease = c.try_acquire_sync("job")
    assert lease is not None
    assert (tmp_path / "leases.db").exists()
    c.close_sync()
    with pytest.raises(dl.ConfigError, match="in-memory"):
        dl.LeaseClient.connect_sync("sqlite::memory:")


def test_unavailable_after_waiting_does_not_advise_waiting(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'leases.db'}"
    c = dl.LeaseClient.connect_sync(url)
    held = c.acquire_sync("job", duration=30)
    with pytest.raises(dl.LeaseUnavailable) as once:
        c.acquire_sync("job")
    assert "pass wait=" in str(once.value)
    with pytest.raises(dl.LeaseUnavailable) as waited:
        c.acquire_sync("job", wait=0.3)
    assert "pass wait=" not in str(waited.value)
    assert "gave up after waiting" in str(waited.value)
    held.release_sync()
    c.close_sync()
