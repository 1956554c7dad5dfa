"""Configuration from the Python side: from_config, the zero-argument lease(), warnings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import distributed_leasing as dl
import pytest
from redis_servers import RedisServer

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.lower().startswith("redisleasing")}


def run_in(
    directory: Path, code: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=directory,
        env=env or CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_nothing_configured_raises_config_error_listing_the_ways(tmp_path: Path) -> None:
    r = run_in(
        tmp_path,
        """
        import asyncio, distributed_leasing as dl
        async def main():
            try:
                async with dl.lease("x"):
                    print("acquired without configuration")
            except dl.ConfigError as e:
                print("CONFIG:", e)
        asyncio.run(main())
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("CONFIG:"), r.stdout
    for way in ("appsettings.Local.json", "RedisLeasing__ConnectionString", "leasing configure"):
        assert way in r.stdout, r.stdout


def test_seed_style_local_file_is_used_by_lease(redis_server: RedisServer, tmp_path: Path) -> None:
    (tmp_path / "appsettings.json").write_text(
        json.dumps(
            {
                "RedisLeasing": {
                    "KeyPrefix": "lease:",
                    "Database": 0,
                    "UseSsl": True,
                    "Port": 6380,
                    "DefaultLeaseDuration": "00:00:30",
                    "AutoRenew": True,
                    "AutoRenewInterval": "00:00:20",
                    "ConnectTimeout": 5000,
                    "SyncTimeout": 5000,
                }
            }
        )
    )
    (tmp_path / "appsettings.Local.json").write_text(
        json.dumps(
            {
                "RedisLeasing": {
                    "ConnectionString": (
                        f"127.0.0.1:{redis_server.port},ssl=False,abortConnect=False"
                    ),
                    "KeyPrefix": "cfgtest:",
                }
            }
        )
    )
    r = run_in(
        tmp_path,
        """
        import distributed_leasing as dl
        with dl.lease("from-config", metadata={"instanceId": "cfg"}) as lease:
            print(lease.duration)
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "30.0"
    assert "abortConnect" in r.stderr  # an unused StackExchange option is a warning, not silence
    client = dl.LeaseClient.from_config(tmp_path)
    with client.lease("seen") as lease:
        assert redis_server.cli("EXISTS", "cfgtest:seen").strip() == "1"
        assert lease.duration == 30.0


def test_environment_overrides_files(redis_server: RedisServer, tmp_path: Path) -> None:
    (tmp_path / "appsettings.Local.json").write_text(
        '{"RedisLeasing": {"ConnectionString": "127.0.0.1:1,ssl=False"}}'
    )
    env = dict(CLEAN_ENV)
    env["REDISLEASING__CONNECTIONSTRING"] = redis_server.url
    env["RedisLeasing__DefaultLeaseDuration"] = "00:00:12"
    env["RedisLeasing__AutoRenewInterval"] = "4"
    r = run_in(
        tmp_path,
        """
        import distributed_leasing as dl
        with dl.lease("env-wins") as lease:
            print(lease.duration)
        """,
        env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "12.0"


def test_invalid_values_are_refused_with_key_file_and_fix(tmp_path: Path) -> None:
    secret = "Sup3rSecretKey-do-not-print"
    (tmp_path / "appsettings.Local.json").write_text(
        json.dumps(
            {
                "RedisLeasing": {
                    "ConnectionString": (
                        f"cache.redis.cache.windows.net:6380,password={secret},ssl=True"
                    ),
                    "Database": 99,
                    "DefaultLeaseDuration": "-00:00:01",
                    "Port": 70000,
                }
            }
        )
    )
    with pytest.raises(dl.ConfigError) as info:
        dl.LeaseClient.from_config(tmp_path)
    text = str(info.value)
    assert "appsettings.Local.json" in text
    for key in ("Database", "DefaultLeaseDuration", "Port"):
        assert key in text, text
    assert secret not in text and secret not in repr(info.value)


def test_malformed_json_names_file_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "appsettings.json").write_text('{\n  "RedisLeasing": {\n    "KeyPrefix": \n}\n')
    with pytest.raises(dl.ConfigError) as info:
        dl.LeaseClient.from_config(tmp_path)
    assert "appsettings.json" in str(info.value)
    assert "line 4" in str(info.value)


def test_sqlite_url_in_config(tmp_path: Path) -> None:
    db = tmp_path / "leases.db"
    (tmp_path / "appsettings.Local.json").write_text(
        json.dumps({"RedisLeasing": {"ConnectionString": f"sqlite://{db}"}})
    )
    client = dl.LeaseClient.from_config(tmp_path)
    assert client.kind == "sqlite"
    with client.lease("embedded") as lease:
        assert lease.fencing_token == 1
    assert db.exists()
