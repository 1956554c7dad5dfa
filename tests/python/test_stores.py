"""The Python API against every store (sqlite, redis, redis-cluster), plus what only some
stores have: a cluster master dying, and two OS processes sharing one SQLite file."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import distributed_leasing as dl
import pytest
from conftest import StoreUnderTest
from redis_servers import RedisCluster

TRICKY_META = {
    "instanceId": "us-east-1",
    "empty": "",
    "unicode": "ünïcødé 锁 🔒",
    "k=v,x": "a=b,c=d",
    "multi": "line1\nline2\r\n\ttab",
}


async def test_acquire_release_reacquire(store: StoreUnderTest, unique_name: str) -> None:
    client = await dl.LeaseClient.connect(store.url)
    assert client.kind == store.kind
    async with client.lease(unique_name) as a:
        assert a.expires_in > 25
        assert (await client.inspect(unique_name)) is not None
    assert await client.inspect(unique_name) is None
    async with client.lease(unique_name) as b:
        assert b.fencing_token > a.fencing_token
        assert b.lease_id != a.lease_id


async def test_second_acquirer_gets_the_holder(store: StoreUnderTest, unique_name: str) -> None:
    client = await dl.LeaseClient.connect(store.url)
    other = await dl.LeaseClient.connect(store.url)
    async with client.lease(unique_name, metadata={"instanceId": "w", "region": "r"}) as held:
        assert await other.try_acquire(unique_name) is None
        with pytest.raises(dl.LeaseUnavailable) as info:
            await other.acquire(unique_name)
        holder = info.value.holder
        assert holder is not None
        assert holder.lease_id == held.lease_id
        assert holder.fencing_token == held.fencing_token
        assert holder.metadata == {"instanceId": "w", "region": "r"}
        assert holder.ttl is not None and 20 < holder.ttl <= 30
        assert "w (r)" in str(info.value)


async def test_metadata_round_trips_exactly(store: StoreUnderTest, unique_name: str) -> None:
    client = await dl.LeaseClient.connect(store.url)
    async with client.lease(unique_name, metadata=TRICKY_META):
        info = await client.inspect(unique_name)
        assert info is not None
        assert info.metadata == TRICKY_META
        listed = await client.list(unique_name)
        assert [i.name for i in listed] == [unique_name]
        assert listed[0].metadata == TRICKY_META


async def test_made_lost_raises_lease_lost(store: StoreUnderTest, unique_name: str) -> None:
    client = await dl.LeaseClient.connect(store.url)
    with pytest.raises(dl.LeaseLost) as info:
        async with client.lease(unique_name, duration=5.0, renew_interval=0.3):
            store.make_lost(unique_name)
            await asyncio.sleep(30)
    assert info.value.reason in ("missing", "held_by_other")


async def test_on_lost_ignore_and_wait_lost(store: StoreUnderTest, unique_name: str) -> None:
    client = await dl.LeaseClient.connect(store.url)
    async with client.lease(
        unique_name, duration=5.0, renew_interval=0.3, on_lost="ignore"
    ) as lease:
        store.make_lost(unique_name)
        assert await asyncio.wait_for(lease.wait_lost(), 20) == "missing"
        assert lease.is_lost


async def test_expiry_and_fencing(store: StoreUnderTest, unique_name: str) -> None:
    client = await dl.LeaseClient.connect(store.url)
    first = await client.acquire(unique_name, duration=0.3, auto_renew=False)
    await asyncio.sleep(1.0)
    assert first.is_lost and first.lost_reason == "expired"
    second = await client.acquire(unique_name)
    assert second.fencing_token > first.fencing_token
    assert not await first.release(), "an expired holder must not release its successor"
    assert (await client.inspect(unique_name)).lease_id == second.lease_id  # type: ignore[union-attr]
    assert await client.force_release(unique_name)
    third = await client.acquire(unique_name)
    assert third.fencing_token > second.fencing_token
    await third.release()


def test_sync_api(store: StoreUnderTest, unique_name: str) -> None:
    client = dl.LeaseClient.connect_sync(store.url)
    with client.lease(unique_name) as lease:
        assert client.try_acquire_sync(unique_name) is None
        info = client.inspect_sync(unique_name)
        assert info is not None and info.lease_id == lease.lease_id
        lease.renew_sync()
        assert lease.renewals == 1
    assert client.inspect_sync(unique_name) is None
    assert client.list_sync(unique_name) == []


async def test_fifty_concurrent_tasks_one_winner(store: StoreUnderTest, unique_name: str) -> None:
    client = await dl.LeaseClient.connect(store.url)
    results = await asyncio.gather(*(client.try_acquire(unique_name) for _ in range(50)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    await winners[0].release()


async def test_dropped_handle_is_released(store: StoreUnderTest, unique_name: str) -> None:
    client = await dl.LeaseClient.connect(store.url)
    lease = await client.acquire(unique_name)
    del lease
    for _ in range(100):
        if await client.inspect(unique_name) is None:
            break
        await asyncio.sleep(0.05)
    assert await client.inspect(unique_name) is None


# -- Redis Cluster: one master dies ------------------------------------------------------------


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _name_on(cluster: RedisCluster, node: int, tag: str) -> str:
    """A lease name whose slot (its hash tag) lives on master ``node``."""
    port = cluster.nodes[node].port
    ranges = [(lo, hi) for lo, hi, p in cluster.slot_map(0) if p == port]
    for i in range(100_000):
        name = f"{tag}-{i}"
        slot = _crc16(name.encode()) % 16384
        if any(lo <= slot <= hi for lo, hi in ranges):
            return name
    raise AssertionError("no name found for that node")


async def test_cluster_master_killed_loses_only_its_leases() -> None:
    with RedisCluster(
        masters=3, node_timeout_ms=1000, extra_args=["--cluster-require-full-coverage", "no"]
    ) as cluster:
        client = await dl.LeaseClient.connect(cluster.url, operation_timeout=1.0)
        assert client.kind == "redis-cluster"
        tag = uuid.uuid4().hex[:8]
        doomed_name = _name_on(cluster, 2, f"doomed-{tag}")
        kept_names = [_name_on(cluster, 0, f"kept-{tag}"), _name_on(cluster, 1, f"kept-{tag}")]
        doomed = await client.acquire(doomed_name, duration=3.0, renew_interval=0.5)
        kept = [await client.acquire(n, duration=3.0, renew_interval=0.5) for n in kept_names]
        cluster.kill_node(2)
        reason = await asyncio.wait_for(doomed.wait_lost(), timeout=30)
        assert reason == "expired"
        renewals_before = [k.renewals for k in kept]
        await asyncio.sleep(3.0)
        for k, before in zip(kept, renewals_before, strict=True):
            assert not k.is_lost, k.lost_reason
            assert k.renewals > before
            info = await client.inspect(k.name)
            assert info is not None and info.lease_id == k.lease_id
        for k in kept:
            assert await k.release()


# -- SQLite: two OS processes, one file ---------------------------------------------------------


def _sqlite_rounds(
    url: str,
    name: str,
    rounds: int,
    barrier: multiprocessing.synchronize.Barrier,
    results: multiprocessing.queues.Queue[list[int]],
) -> None:
    client = dl.LeaseClient.connect_sync(url)
    won = []
    for r in range(rounds):
        barrier.wait()
        lease = client.try_acquire_sync(name)
        barrier.wait()
        if lease is not None:
            won.append(r)
            lease.release_sync()
        barrier.wait()
    results.put(won)


def test_two_processes_on_one_sqlite_file_exactly_one_wins_each_round(tmp_path: Path) -> None:
    rounds = 1000
    url = f"sqlite://{tmp_path / 'shared.db'}"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2, timeout=60)
    results: multiprocessing.queues.Queue[list[int]] = ctx.Queue()
    procs = [
        ctx.Process(target=_sqlite_rounds, args=(url, "contested", rounds, barrier, results))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    try:
        won = [results.get(timeout=600) for _ in procs]
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(won[0] + won[1]) == list(range(rounds)), "exactly one winner in every round"
    assert set(won[0]).isdisjoint(won[1])


# -- SQLite: fork while the parent renews -------------------------------------------------------

FORK_WHILE_RENEWING = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys, threading, time
    import distributed_leasing as dl

    url, prefix, mode, children = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if mode == "sync":
        client = dl.LeaseClient.connect_sync(url)
        held = [
            client.try_acquire_sync(f"{prefix}-held-{i}", duration=1.0, renew_interval=0.01)
            for i in range(50)
        ]
    else:
        # The parent's leases live on an event loop in a thread; the main thread forks.
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        def on_loop(coro):
            return asyncio.run_coroutine_threadsafe(coro, loop).result(60)
        client = on_loop(dl.LeaseClient.connect(url))
        held = [
            on_loop(client.try_acquire(f"{prefix}-held-{i}", duration=1.0, renew_interval=0.01))
            for i in range(50)
        ]
    assert all(lease is not None for lease in held)

    def child(n):
        name = f"{prefix}-child-{n}"
        if mode == "sync":
            own = dl.LeaseClient.connect_sync(url)
            lease = own.try_acquire_sync(name, duration=30.0)
            ok = lease is not None and lease.release_sync()
            own.close_sync()
            return ok
        async def main():
            own = await dl.LeaseClient.connect(url)
            lease = await own.try_acquire(name, duration=30.0)
            ok = lease is not None and await lease.release()
            await own.close()
            return ok
        return asyncio.run(main())

    results, lost = [], []
    for n in range(children):
        time.sleep(0.02)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            code = 2
            try:
                code = 0 if child(n) else 1
            except BaseException as e:
                print(f"child {n}: {e!r}", file=sys.stderr, flush=True)
                code = 3
            if n % 2:
                os._exit(code)
            sys.exit(code)  # the ordinary way out, at-exit handlers and all
        status = None
        while time.monotonic() < started + 15:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
                break
            time.sleep(0.005)
        if status is None:  # hung: a failure, not a hang of the test
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = "hung"
        results.append([n, status, round(time.monotonic() - started, 2)])
        lost += [lease.name for lease in held if lease.is_lost]
    # The parent still works, and its leases are its own on the file.
    check = dl.LeaseClient.connect_sync(url)
    still = [check.inspect_sync(lease.name) for lease in held]
    owned = sum(1 for lease, info in zip(held, still) if info and info.lease_id == lease.lease_id)
    if mode == "sync":
        released = sum(lease.release_sync() for lease in held)
        again = client.try_acquire_sync(f"{prefix}-after") is not None
    else:
        async def release(lease):
            return await lease.release()
        released = sum(on_loop(release(lease)) for lease in held)
        again = on_loop(client.try_acquire(f"{prefix}-after")) is not None
    print(json.dumps({"results": results, "lost": lost, "owned": owned,
                      "released": released, "again": again}))
    """
)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_children_forked_while_the_parent_renews_each_acquire_with_their_own_client(
    tmp_path: Path, unique_name: str, mode: str
) -> None:
    # Issue 22 defect 5: 50 leases renewed every 10 ms, 30 children forked one after another,
    # each making its own client to the same file: none may hang or fail, and the parent's
    # leases stay held throughout.
    url = f"sqlite://{tmp_path / 'fork.db'}"
    with subprocess.Popen(
        [sys.executable, "-c", FORK_WHILE_RENEWING, url, unique_name, mode, "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its process group: a timeout kills any child left behind
    ) as proc:
        try:
            out, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out.splitlines()[-1])
    bad = [r for r in report["results"] if r[1] != 0 or r[2] > 10]
    assert bad == [], f"children that hung, failed or took over 10 s: {bad}\n{err[-3000:]}"
    assert report["lost"] == []
    assert report["owned"] == 50
    assert report["released"] == 50
    assert report["again"]


FORKED_HOLDER_OUTLIVES_PARENT_CLIENT = textwrap.dedent(
    """
    import os, subprocess, sys
    import distributed_leasing as dl

    url, name = sys.argv[1], sys.argv[2]
    client = dl.LeaseClient.connect_sync(url)
    client.try_acquire_sync(name + "-parent").release_sync()
    to_parent_r, to_parent_w = os.pipe()
    to_child_r, to_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        own = dl.LeaseClient.connect_sync(url)
        own.try_acquire_sync(name + "-child").release_sync()  # its connection is open
        os.write(to_parent_w, b"o")
        os.read(to_child_r, 1)  # the parent has closed its client
        lease = own.try_acquire_sync(name, duration=60.0)
        os.write(to_parent_w, b"1" if lease is not None else b"0")
        os.read(to_child_r, 1)
        os._exit(0 if lease is not None and not lease.is_lost else 1)
    os.read(to_parent_r, 1)
    client.close_sync()  # the parent's last connection to the file
    os.write(to_child_w, b"c")
    print("child holds", os.read(to_parent_r, 1).decode())
    third = subprocess.run(
        [sys.executable, "-c",
         "import sys, distributed_leasing as dl; "
         "c = dl.LeaseClient.connect_sync(sys.argv[1]); "
         "print('third acquired', c.try_acquire_sync(sys.argv[2]) is not None)",
         url, name],
        capture_output=True, text=True, timeout=60,
    )
    print(third.stdout.strip(), third.stderr[-500:])
    os.write(to_child_w, b"x")
    _, status = os.waitpid(pid, 0)
    print("child exit", os.waitstatus_to_exitcode(status))
    """
)


def test_a_forked_childs_lease_survives_its_parent_closing_its_client(
    tmp_path: Path, unique_name: str
) -> None:
    # The child's own connection must hold its own locks on the file: if it shared the records
    # of the connection inherited from the parent, the parent's close (its last connection)
    # would find the file unused, fold the write-ahead log into it and delete it, and the
    # child would go on writing into the deleted log: a third process would not see the lease
    # the child takes afterwards, and would take it too.
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            FORKED_HOLDER_OUTLIVES_PARENT_CLIENT,
            f"sqlite://{tmp_path / 'fork.db'}",
            unique_name,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "child holds 1" in r.stdout, r.stdout
    assert "third acquired False" in r.stdout, r.stdout + r.stderr[-3000:]
    assert "child exit 0" in r.stdout, r.stdout


HOLD_EXCLUSIVE = textwrap.dedent(
    """
    import sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    db.execute("COMMIT")
    """
)


def test_sqlite_operation_timeout_bounds_the_wait_for_another_processs_lock(
    tmp_path: Path, unique_name: str
) -> None:
    path = tmp_path / "locked.db"
    quick = dl.LeaseClient.connect_sync(f"sqlite://{path}", operation_timeout=0.5)
    patient = dl.LeaseClient.connect_sync(f"sqlite://{path}")  # 5 s by default
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_EXCLUSIVE, str(path), "3"], stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            started = time.monotonic()
            with pytest.raises(dl.BackendError) as info:
                quick.try_acquire_sync(unique_name)
            assert time.monotonic() - started < 2.5, "failed only when the lock was released"
            assert info.value.kind == "timeout"
            assert str(path) in str(info.value) and "operation_timeout" in str(info.value)
            # The default waits the lock out.
            lease = patient.try_acquire_sync(unique_name)
            assert lease is not None
            assert time.monotonic() - started > 2.0
            assert lease.release_sync()
        finally:
            holder.kill()
    quick.close_sync()
    patient.close_sync()
    # Longer than SQLite can count (a C int of milliseconds): no limit, not a crash.
    endless = dl.LeaseClient.connect_sync(f"sqlite://{path}", operation_timeout=1e7)
    assert endless.try_acquire_sync(unique_name) is not None
    endless.close_sync()
