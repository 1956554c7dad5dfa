"""Paths to two holders, and losses that went unreported, found by trying the library as an
unkind user would (issue 12). Each test here failed on the build before its fix.

- forked children of a process that had used the library drew the same lease ids, and the
  acquire script re-admitted a matching id: every child held the lease at once;
- a deleted SQLite file left its holder renewing against the unlinked inode;
- a release at exit that found another holder reported nothing;
- ``close()`` left leases renewing;
- admin operations treated application hashes as leases, and a foreign fence counter left an
  orphan lease behind;
- a process that exited holding a lease left it held until its TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import distributed_leasing as dl
import pytest
from conftest import StoreUnderTest
from redis_servers import RedisServer

CHILDREN = 4


# -- 1. fork ------------------------------------------------------------------------------------


def _use_sync(url: str, name: str) -> None:
    c = dl.LeaseClient.connect_sync(url)
    lease = c.try_acquire_sync(name + "-warm-sync")
    assert lease is not None
    lease.release_sync()


def _use_async(url: str, name: str) -> None:
    async def go() -> None:
        c = await dl.LeaseClient.connect(url)
        lease = await c.try_acquire(name + "-warm-async")
        assert lease is not None
        await lease.release()

    asyncio.run(go())


def _use_thread(url: str, name: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _use_sync(url, name + "-thread")
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert not errors, errors


def _use_waiting(url: str, name: str) -> None:
    async def go() -> None:
        c = await dl.LeaseClient.connect(url)
        first = await c.acquire(name + "-warm-wait", wait=0)
        task = asyncio.ensure_future(c.acquire(name + "-warm-wait", wait=10))
        await asyncio.sleep(0.2)
        await first.release()
        second = await task
        await second.release()

    asyncio.run(go())


USES: dict[str, Callable[[str, str], None]] = {
    "sync": _use_sync,
    "async": _use_async,
    "thread": _use_thread,
    "waiting": _use_waiting,
}


def _child(url: str, name: str, conn: Connection) -> None:
    """Runs in a forked child: its own client, one attempt, report, then hold until the parent
    has every child's report (so that no attempt can come after the winner's release)."""
    try:
        c = dl.LeaseClient.connect_sync(url)
        lease = c.try_acquire_sync(name, duration=30)
        conn.send(("won", lease.lease_id, lease.fencing_token) if lease else ("lost", None, 0))
        conn.poll(60)
        if lease is not None:
            lease.release_sync()
        c.close_sync()
    except BaseException as e:
        conn.send(("error", repr(e), 0))
    finally:
        conn.close()


def _fork_and_compete(url: str, name: str) -> list[tuple[str, Any, int]]:
    ctx = multiprocessing.get_context("fork")
    pipes: list[Connection] = []
    procs = []
    for _ in range(CHILDREN):
        parent_end, child_end = ctx.Pipe()
        p = ctx.Process(target=_child, args=(url, name, child_end))
        p.start()
        child_end.close()
        pipes.append(parent_end)
        procs.append(p)
    try:
        results = []
        for r in pipes:
            assert r.poll(60), "a forked child did not answer in 60 s"
            results.append(r.recv())
        return results
    finally:
        for r in pipes:  # every attempt is in: the holders may release
            with contextlib.suppress(OSError):
                r.send("release")
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()


@pytest.mark.parametrize("use", list(USES))
def test_forked_children_never_share_a_lease(
    use: str, store: StoreUnderTest, unique_name: str
) -> None:
    # The parent uses the library first (so its generators are warm), then forks.
    USES[use](store.url, unique_name)
    results = _fork_and_compete(store.url, unique_name)
    assert not [r for r in results if r[0] == "error"], results
    winners = [r for r in results if r[0] == "won"]
    assert len(winners) == 1, f"{len(winners)} forked children held one lease at once: {results}"
    # And the ids the children drew are their own: a second round, all sequential.
    ids = {w[1] for w in winners}
    c = dl.LeaseClient.connect_sync(store.url)
    try:
        more = _fork_and_compete(store.url, unique_name + "-b")
        ids |= {m[1] for m in more if m[0] == "won"}
        assert len([m for m in more if m[0] == "won"]) == 1, more
        assert len(ids) == 2
    finally:
        c.close_sync()


def test_forked_children_draw_distinct_lease_ids(tmp_path: Path) -> None:
    """Each child of a warmed-up parent acquires its own lease name: every id is different."""
    url = f"sqlite://{tmp_path / 'leases.db'}"
    _use_sync(url, "warm")
    _use_async(url, "warm")
    ctx = multiprocessing.get_context("fork")
    q = ctx.SimpleQueue()

    def child(i: int) -> None:
        c = dl.LeaseClient.connect_sync(url)
        lease = c.try_acquire_sync(f"own-{i}")
        assert lease is not None
        q.put(lease.lease_id)
        lease.release_sync()

    procs = [ctx.Process(target=child, args=(i,)) for i in range(CHILDREN)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ids = [q.get() for _ in range(CHILDREN)]
    assert len(set(ids)) == CHILDREN, ids


# -- 2. a deleted SQLite file --------------------------------------------------------------------


NEW_PROCESS_ACQUIRES = """
import sys
import distributed_leasing as dl
try:
    c = dl.LeaseClient.connect_sync(sys.argv[1])
    l = c.try_acquire_sync("job", duration=30, auto_renew=False)
    print(l.fencing_token)
except dl.BackendError as e:
    print("error:", e)
"""


@pytest.mark.parametrize("remove", ["all", "file-alone"])
def test_deleted_sqlite_file_is_reported_lost(tmp_path: Path, remove: str) -> None:
    db = tmp_path / "leases.db"
    url = f"sqlite://{db}"
    c = dl.LeaseClient.connect_sync(url)
    lease = c.try_acquire_sync("job", duration=3, renew_interval=0.2)
    assert lease is not None
    assert lease.fencing_token == 1
    if remove == "all":  # rm leases.db*
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink()
    else:
        db.unlink()
    out = subprocess.run(
        [sys.executable, "-c", NEW_PROCESS_ACQUIRES, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    if remove == "all":
        # Another process starts afresh at that path and is granted the lease, at token 1.
        assert out == "1", out
    else:
        # Beside the old write-ahead log nobody is granted anything; the error says what to do.
        assert out.startswith("error:") and "deleted while in use" in out and "-wal" in out, out
    # The holder on the deleted file is told at its next renewal, long before its 3 s run out.
    deadline = time.monotonic() + 2.0
    while not lease.is_lost and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lease.is_lost
    assert lease.lost_reason in ("held_by_other", "missing")
    c.close_sync()


# -- 6. a loss found at exit -----------------------------------------------------------------


async def test_async_with_raises_when_the_release_finds_another_holder(
    store: StoreUnderTest, unique_name: str
) -> None:
    admin = await dl.LeaseClient.connect(store.url)
    thief = await dl.LeaseClient.connect(store.url)
    c = await dl.LeaseClient.connect(store.url)
    try:
        with pytest.raises(dl.LeaseLost) as err:
            async with c.lease(unique_name, duration=30) as lease:
                assert await admin.force_release(unique_name)
                taken = await thief.try_acquire(unique_name)
                assert taken is not None
        assert err.value.reason == "held_by_other"
        assert lease.is_lost and lease.lost_reason == "held_by_other"
        assert not lease.is_released
        info = await admin.inspect(unique_name)
        assert info is not None and info.lease_id == taken.lease_id, "the successor keeps it"
        await taken.release()
    finally:
        await c.close()
        await thief.close()
        await admin.close()


def test_sync_with_raises_when_the_release_finds_no_lease(
    store: StoreUnderTest, unique_name: str
) -> None:
    c = dl.LeaseClient.connect_sync(store.url)
    try:
        with pytest.raises(dl.LeaseLost) as err, c.lease(unique_name, duration=30) as lease:
            store.make_lost(unique_name)
        assert err.value.reason == "missing"
        assert lease.lost_reason == "missing"
        # on_lost="ignore": no exception, but the handle still says lost, never released.
        with c.lease(unique_name + "-i", duration=30, on_lost="ignore") as quiet:
            store.make_lost(unique_name + "-i")
        assert quiet.lost_reason == "missing" and not quiet.is_released
    finally:
        c.close_sync()


async def test_lease_events_end_with_the_loss_found_at_release(
    store: StoreUnderTest, unique_name: str
) -> None:
    c = await dl.LeaseClient.connect(store.url)
    try:
        lease = await c.acquire(unique_name, duration=30)
        events = lease.events()
        store.make_lost(unique_name)
        assert await lease.release() is False
        kinds = [(e.kind, e.reason) async for e in events]
        assert kinds == [("lost", "missing")]
    finally:
        await c.close()


# -- 7. close() ---------------------------------------------------------------------------------


async def test_close_releases_and_stops_renewing(store: StoreUnderTest, unique_name: str) -> None:
    c = await dl.LeaseClient.connect(store.url)
    other = await dl.LeaseClient.connect(store.url)
    try:
        lease = await c.acquire(unique_name, duration=1.0, renew_interval=0.2)
        await c.close()
        assert lease.lost_reason == "client_closed"
        assert await other.inspect(unique_name) is None
        renewals = lease.renewals
        await asyncio.sleep(0.6)
        assert lease.renewals == renewals
        with pytest.raises(dl.LeaseError):
            await c.try_acquire(unique_name)
        await c.close()  # twice is harmless
    finally:
        await other.close()


async def test_close_cancels_a_body_under_on_lost_cancel(
    store: StoreUnderTest, unique_name: str
) -> None:
    c = await dl.LeaseClient.connect(store.url)
    reached_end = False

    async def closer() -> None:
        await asyncio.sleep(0.2)
        await c.close()

    task = asyncio.ensure_future(closer())
    with pytest.raises(dl.LeaseLost) as err:
        async with c.lease(unique_name, duration=30):
            await asyncio.sleep(30)
            reached_end = True
    await task
    assert not reached_end
    assert err.value.reason == "client_closed"


# -- 4, 5. foreign data ----------------------------------------------------------------------


def test_admin_operations_never_touch_an_application_hash(redis_server: RedisServer) -> None:
    key = f"user:{os.getpid()}-{time.monotonic_ns()}"
    redis_server.cli("HSET", key, "name", "Ada", "email", "ada@example.com")
    c = dl.LeaseClient.connect_sync(redis_server.url, key_prefix="")
    try:
        with pytest.raises(dl.BackendError) as err:
            c.force_release_sync(key)
        assert err.value.kind == "wrong_type"
        assert key in str(err.value)
        with pytest.raises(dl.BackendError) as err:
            c.inspect_sync(key)
        assert err.value.kind == "wrong_type"
        with pytest.raises(dl.BackendError) as err:
            c.try_acquire_sync(key)
        assert err.value.kind == "wrong_type"
        assert key not in [i.name for i in c.list_sync("user:")]
        assert redis_server.cli("HGET", key, "email").strip() == "ada@example.com"
    finally:
        c.close_sync()
        redis_server.cli("DEL", key)


# "-1" and 16 digits: INCR accepts them and the script puts the counter back; "007": INCR
# refuses it.
@pytest.mark.parametrize("value", ["-5", "abc", "1.5", "-1", "1000000000000000", "007"])
def test_foreign_fence_counter_leaves_nothing_behind(
    redis_server: RedisServer, unique_name: str, value: str
) -> None:
    redis_server.cli("SET", f"lease:{unique_name}:fence", value)
    c = dl.LeaseClient.connect_sync(redis_server.url)
    try:
        with pytest.raises(dl.BackendError) as err:
            c.try_acquire_sync(unique_name)
        assert err.value.kind == "wrong_type"
        assert f"lease:{unique_name}:fence" in str(err.value)
        assert "Redis-compatible" not in str(err.value)
        assert redis_server.cli("EXISTS", f"lease:{unique_name}").strip() == "0", "orphan lease"
        assert redis_server.cli("GET", f"lease:{unique_name}:fence").strip() == value
    finally:
        c.close_sync()


def test_fence_counter_of_15_digits_is_used(redis_server: RedisServer, unique_name: str) -> None:
    redis_server.cli("SET", f"lease:{unique_name}:fence", "999999999999999")
    c = dl.LeaseClient.connect_sync(redis_server.url)
    try:
        lease = c.try_acquire_sync(unique_name, auto_renew=False)
        assert lease is not None
        assert lease.fencing_token == 10**15
        assert redis_server.cli("GET", f"lease:{unique_name}:fence").strip() == str(10**15)
        lease.release_sync()
        with pytest.raises(dl.BackendError) as err:
            c.try_acquire_sync(unique_name)
        assert err.value.kind == "wrong_type"
        assert redis_server.cli("GET", f"lease:{unique_name}:fence").strip() == str(10**15)
    finally:
        c.close_sync()


def test_non_utf8_key_under_the_prefix_does_not_break_list(
    redis_server: RedisServer, unique_name: str
) -> None:
    import redis as redis_py

    r = redis_py.Redis(port=redis_server.port)
    bad = b"lease:" + unique_name.encode() + b"-\xff\xfe"
    r.hset(bad, mapping={"leaseId": "x", "acquiredAt": "2025-01-01T00:00:00.000Z"})
    c = dl.LeaseClient.connect_sync(redis_server.url)
    try:
        lease = c.try_acquire_sync(unique_name + "-ok")
        assert lease is not None
        names = [i.name for i in c.list_sync(unique_name)]
        assert names == [unique_name + "-ok"]
        lease.release_sync()
    finally:
        c.close_sync()
        r.delete(bad)
        r.close()


# -- 10. exit while holding -------------------------------------------------------------------

EXIT_HOLDING = """
import asyncio, sys
import distributed_leasing as dl

KEEP = []

async def main(url, name, mode):
    c = await dl.LeaseClient.connect(url)
    lease = await c.acquire(name, duration=60)
    if mode == "keep":
        KEEP.append((c, lease))     # still referenced when the interpreter exits
    # mode "drop": the handle goes out of scope as main returns

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
"""


@pytest.mark.parametrize("mode", ["keep", "drop"])
def test_exit_while_holding_releases_the_lease(
    store: StoreUnderTest, unique_name: str, mode: str
) -> None:
    c = dl.LeaseClient.connect_sync(store.url)
    try:
        for i in range(8):
            name = f"{unique_name}-{i}"
            subprocess.run(
                [sys.executable, "-c", EXIT_HOLDING, store.url, name, mode],
                check=True,
                timeout=60,
            )
            info = c.inspect_sync(name)
            assert info is None, f"run {i}: the exited process still holds {name}: {info}"
    finally:
        c.close_sync()
