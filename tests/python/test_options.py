"""One keyword list (issue 13): the options of every entry point are declared once, by the
native option classes, mirrored by the TypedDicts of ``_options.py`` for type checkers; every
entry point accepts exactly them and refuses any other keyword by name."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_type_hints

import distributed_leasing as dl
import pytest
from distributed_leasing import _native

# Native keywords that are no option of the lease entry points: ``announce`` is set by an
# election's campaign (issue 24), which builds its native options itself.
NATIVE_ONLY = {"announce"}


def native_keywords(cls: type) -> set[str]:
    return set(inspect.signature(cls).parameters) - NATIVE_ONLY


def test_typed_dicts_name_exactly_the_native_options() -> None:
    assert set(get_type_hints(dl.AcquireOptions)) == native_keywords(_native._Options)
    assert set(get_type_hints(dl.LeaseOptions)) == native_keywords(_native._Options) - {
        "wait",
        "backoff",
    }
    assert set(get_type_hints(dl.ContextOptions)) == native_keywords(_native._Options) | {"on_lost"}
    assert set(get_type_hints(dl.ClientOptions)) == native_keywords(_native._ClientOptions)


def entry_points(url: str) -> dict[str, tuple[Callable[..., Any], set[str]]]:
    """Each public entry point taking options, called with a name and keywords, and the
    options it must accept."""
    client = dl.LeaseClient.connect_sync(url)
    lease_opts = set(get_type_hints(dl.LeaseOptions))
    acquire_opts = set(get_type_hints(dl.AcquireOptions))
    context_opts = set(get_type_hints(dl.ContextOptions))

    def run(coro: Any) -> Any:
        return asyncio.run(coro)

    return {
        "lease": (lambda n, **kw: dl.lease(n, url=url, **kw), context_opts),
        "LeaseClient.lease": (lambda n, **kw: client.lease(n, **kw), context_opts),
        "acquire": (lambda n, **kw: run(client.acquire(n, **kw)), acquire_opts),
        "acquire_sync": (lambda n, **kw: client.acquire_sync(n, **kw), acquire_opts),
        "try_acquire": (lambda n, **kw: run(client.try_acquire(n, **kw)), lease_opts),
        "try_acquire_sync": (lambda n, **kw: client.try_acquire_sync(n, **kw), lease_opts),
    }


VALUES: dict[str, object] = {
    "duration": 5.0,
    "renew_interval": 1.0,
    "auto_renew": True,
    "metadata": {"instanceId": "test"},
    "wait": 0,
    "backoff": dl.Backoff.fixed(0.5),
    "on_lost": "ignore",
}


def test_every_entry_point_takes_its_options_and_refuses_others_by_name(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'leases.db'}"
    for i, (call, (enter, accepted)) in enumerate(entry_points(url).items()):
        name = f"opts-{i}"
        # Every accepted option at once: the call goes through (a context is only built).
        got = enter(name, **{k: VALUES[k] for k in accepted})
        if isinstance(got, dl.Lease):
            assert got.duration == 5.0, call
            got.release_sync()
        # A misspelt option is named, with the right spelling suggested.
        with pytest.raises(TypeError, match=r"unexpected keyword argument 'durtion'.*'duration'"):
            enter(name, durtion=5.0)
        # An option of another entry point is refused, never silently ignored.
        for other in set(VALUES) - accepted:
            with pytest.raises(TypeError, match=f"unexpected keyword argument {other!r}"):
                enter(name, **{other: VALUES[other]})
        # The checks are the same everywhere: a string is not a number of seconds.
        with pytest.raises(TypeError, match=r"duration='5' is a str"):
            enter(name, duration="5")
        with pytest.raises(ValueError, match="renew_interval=-1"):
            enter(name, renew_interval=-1)


def test_connect_takes_the_client_options_and_refuses_others(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'leases.db'}"
    with dl.LeaseClient.connect_sync(url, duration=7.0, key_prefix="x:") as client:
        assert client.key_prefix == "x:"
        lease = client.acquire_sync("a")
        assert lease.duration == 7.0
        lease.release_sync()
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'wait'"):
        dl.LeaseClient.connect_sync(url, wait=5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"'operation_timout'.*'operation_timeout'"):
        asyncio.run(dl.LeaseClient.connect(url, operation_timout=1))  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"ca_file=5 is a int"):
        dl.LeaseClient.connect_sync(url, ca_file=5)  # type: ignore[arg-type]
