"""The Python API against every store (sqlite, redis, redis-cluster), plus what only some
stores have: a cluster master dying, and two OS processes sharing one SQLite file."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
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
