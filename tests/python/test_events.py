"""Lease events (async iterator), counters on the handle, ``metrics()``, and the bridge from the
Rust core's tracing to Python's ``logging``."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap

import distributed_leasing as dl
import pytest
from conftest import StoreUnderTest
from redis_servers import RedisServer


async def test_events_report_renewals_then_the_loss(
    store: StoreUnderTest, unique_name: str
) -> None:
    client = await dl.LeaseClient.connect(store.url)
    before = dl.metrics()
    lease = await client.acquire(unique_name, duration=5.0, renew_interval=0.2)
    seen: list[dl.LeaseEvent] = []

    async def read() -> None:
        async for event in lease.events():
            seen.append(event)
            if sum(e.kind == "renewed" for e in seen) == 2 and len(seen) == 2:
                store.make_lost(unique_name)

    await asyncio.wait_for(read(), timeout=30)
    kinds = [e.kind for e in seen]
    assert kinds[:2] == ["renewed", "renewed"], seen
    assert kinds[-1] == "lost", seen
    assert seen[-1].reason == "missing"
    assert seen[0].renewals is not None and seen[1].renewals == seen[0].renewals + 1
    assert lease.is_lost and lease.renewals >= 2
    # Opened after the end: just the end.
    assert [e async for e in lease.events()] == [seen[-1]]
    after = dl.metrics()
    assert after["leasing.acquisitions.total"] > before["leasing.acquisitions.total"]
    assert after["leasing.renewals.total"] >= before["leasing.renewals.total"] + 2
    assert after["leasing.leases_lost.total"] > before["leasing.leases_lost.total"]


async def test_a_released_lease_ends_its_events_with_released(
    store: StoreUnderTest, unique_name: str
) -> None:
    client = await dl.LeaseClient.connect(store.url)
    lease = await client.acquire(unique_name)
    events = lease.events()
    active = dl.metrics()["leasing.active_leases.current"]
    assert active >= 1
    await lease.release()
    assert [e.kind async for e in events] == ["released"]
    assert dl.metrics()["leasing.active_leases.current"] == active - 1
    e = await lease.events().__anext__()
    assert repr(e) == "LeaseEvent(kind='released')"
    assert (e.renewals, e.attempt, e.error, e.will_retry, e.reason) == (None,) * 5


async def test_renewal_failures_are_reported_with_attempt_and_retry(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = await dl.LeaseClient.connect(srv.url, operation_timeout=0.5, connect_timeout=0.5)
    lease = await client.acquire(unique_name, duration=3.0, renew_interval=0.3)
    events = lease.events()
    srv.pause()  # SIGSTOP: renewals time out
    try:
        failures: list[dl.LeaseEvent] = []
        async for event in events:
            if event.kind == "renewal_failed":
                failures.append(event)
            if event.kind == "lost":
                break
    finally:
        srv.resume()
    assert failures, "no renewal_failed event before the loss"
    assert failures[0].attempt == 1 and failures[0].error
    assert [f.attempt for f in failures] == list(range(1, len(failures) + 1))
    assert failures[-1].will_retry is False
    assert lease.renewal_failures >= len(failures)
    assert lease.lost_reason == "expired"


async def test_logging_shows_acquire_renew_release_and_loss(
    redis_server: RedisServer, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="distributed_leasing")
    dl.refresh_logging()
    client = await dl.LeaseClient.connect(redis_server.url)
    lease = await client.acquire(unique_name, duration=5.0, renew_interval=0.2)
    async for event in lease.events():
        if event.kind == "renewed":
            break
    redis_server.cli("DEL", f"lease:{unique_name}")
    await asyncio.wait_for(lease.wait_lost(), timeout=20)
    other = await client.acquire(unique_name + "-2")
    await other.release()

    def records(needle: str) -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name == "distributed_leasing" and needle in r.getMessage()
        ]

    for _ in range(100):  # records reach Python from a Rust thread: give it a moment
        if records("lease released"):
            break
        await asyncio.sleep(0.05)
    acquired = records("lease acquired")
    assert acquired and acquired[0].levelno == logging.DEBUG
    assert vars(acquired[0])["lease"] == unique_name
    assert vars(acquired[0])["leasing"]["outcome"] == "acquired"
    assert "acquire{" in acquired[0].getMessage(), "the span gives the context"
    assert records("lease renewed")
    lost = records("lease lost")
    assert lost and lost[0].levelno == logging.WARNING
    assert vars(lost[0])["leasing"]["reason"] == "missing"
    assert records("lease released")


NO_LOGGING = textwrap.dedent(
    """
    import logging, os, sys, time
    import distributed_leasing as dl

    def log_thread() -> bool:
        for t in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{t}/comm") as f:
                if f.read().strip() == "dl-log":
                    return True
        return False

    client = dl.LeaseClient.connect_sync(sys.argv[1])
    for i in range(200):  # each cycle emits DEBUG events in Rust, none wanted
        client.acquire_sync(sys.argv[2]).release_sync()
    time.sleep(0.2)
    print("before", log_thread())
    logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="REC %(message)s")
    client.acquire_sync(sys.argv[2]).release_sync()
    time.sleep(0.5)
    print("after", log_thread())
    """
)


def test_a_disabled_level_never_reaches_python(redis_server: RedisServer, unique_name: str) -> None:
    """With the logger at its default level (WARNING), DEBUG events are dropped by one atomic
    load in Rust: the thread that takes records to Python is never even started."""
    r = subprocess.run(
        [sys.executable, "-c", NO_LOGGING, redis_server.url, unique_name],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "before False" in lines, r.stdout
    assert "after True" in lines, r.stdout
    recs = [ln for ln in lines if ln.startswith("REC ")]
    assert any("lease acquired" in ln for ln in recs), r.stdout
    assert all("redis://" not in ln for ln in lines), "no connection string in any record"


async def test_a_server_that_may_evict_lease_keys_is_warned_about_at_connect(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A memory limit with a policy other than ``noeviction`` may evict a live lease (its key
    has a TTL): the client says so once, at connect, naming the policy (docs/safety.md)."""
    caplog.set_level(logging.WARNING, logger="distributed_leasing")
    dl.refresh_logging()

    def warnings() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "distributed_leasing" and "maxmemory-policy" in r.getMessage()
        ]

    # The test harness's server has no memory limit: nothing to say.
    client = await dl.LeaseClient.connect(redis_server.url)
    await client.close()
    with RedisServer(extra_args=["--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru"]) as s:
        client = await dl.LeaseClient.connect(s.url)
        for _ in range(100):  # records reach Python from a Rust thread: give it a moment
            if warnings():
                break
            await asyncio.sleep(0.05)
        await client.close()
    found = warnings()
    assert len(found) == 1, found
    assert "volatile-lru" in found[0] and "noeviction" in found[0]
