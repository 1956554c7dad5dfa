"""Semaphores from Python (issue 25) on every store: at most ``limit`` holders at once, each
permit a lease of its own (its slot, its fencing token, its expiry, its loss), the stored limit,
refusals that name every holder, and the ``semaphore(...)`` context manager."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator

import distributed_leasing as dl
import pytest
from conftest import StoreUnderTest

MAX_LIMIT = 2**31 - 1


@pytest.fixture
def client(store: StoreUnderTest) -> Iterator[dl.LeaseClient]:
    c = dl.LeaseClient.connect_sync(store.url)
    yield c
    c.close_sync()


def _other(store: StoreUnderTest) -> dl.LeaseClient:
    return dl.LeaseClient.connect_sync(store.url)


def test_ten_threads_at_limit_three_see_exactly_one_two_and_three(
    client: dl.LeaseClient, unique_name: str
) -> None:
    lock = threading.Lock()
    full = threading.Event()
    seen: set[int] = set()
    count = 0
    errors: list[BaseException] = []

    def worker() -> None:
        nonlocal count
        try:
            for _ in range(25):
                with client.semaphore(unique_name, 3, wait=60, duration=30):
                    with lock:
                        count += 1
                        seen.add(count)
                        if count == 3:
                            full.set()
                    # Held until the semaphore was seen full once (10 s at most), then briefly.
                    full.wait(10)
                    time.sleep(0.002)
                    with lock:
                        count -= 1
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert errors == []
    assert seen == {1, 2, 3}
    info = client.semaphore_info_sync(unique_name)
    assert info is not None and info.limit == 3 and info.holders == []


async def test_a_hundred_tasks_at_limit_ten_peak_at_exactly_ten(
    client: dl.LeaseClient, unique_name: str
) -> None:
    full = asyncio.Event()
    count = peak = 0
    slots: set[int] = set()

    async def task() -> None:
        nonlocal count, peak
        async with client.semaphore(unique_name, 10, wait=120) as permit:
            count += 1
            peak = max(peak, count)
            slots.add(permit.slot)
            if count == 10:
                full.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(full.wait(), 10)
            await asyncio.sleep(0.005)
            count -= 1

    await asyncio.wait_for(asyncio.gather(*(task() for _ in range(100))), 240)
    assert peak == 10
    assert slots == set(range(10))


async def test_the_largest_limit_with_a_thousand_character_name(
    client: dl.LeaseClient, store: StoreUnderTest
) -> None:
    name = f"big-{uuid.uuid4().hex}-" + "x" * 1000
    name = name[:1000]
    started = time.monotonic()
    permits = [await client.try_acquire_permit(name, MAX_LIMIT) for _ in range(100)]
    took = time.monotonic() - started
    assert all(p is not None for p in permits)
    held = [p for p in permits if p is not None]
    assert [p.slot for p in held] == list(range(100))
    tokens = [p.fencing_token for p in held]
    assert tokens == sorted(set(tokens))
    assert all(p.name == name for p in held)
    info = await client.semaphore_info(name)
    assert info is not None and info.limit == MAX_LIMIT and len(info.holders) == 100
    assert took < 60, f"100 acquires at limit 2**31-1 took {took:.1f} s"
    for p in held:
        assert await p.release()


def test_two_clients_with_limits_three_and_five_get_limit_mismatch(
    client: dl.LeaseClient, store: StoreUnderTest, unique_name: str
) -> None:
    other = _other(store)
    try:
        first = client.try_acquire_permit_sync(unique_name, 3)
        assert first is not None
        with pytest.raises(dl.LimitMismatch) as e:
            other.try_acquire_permit_sync(unique_name, 5)
        assert isinstance(e.value, dl.LeaseError)
        assert (e.value.name, e.value.stored, e.value.asked) == (unique_name, 3, 5)
        assert "3" in str(e.value) and "5" in str(e.value)
        with pytest.raises(dl.LimitMismatch), other.semaphore(unique_name, 5):
            pass
        # limit=None: the stored one.
        second = other.try_acquire_permit_sync(unique_name, None)
        assert second is not None and second.slot == 1
        assert second.release_sync() and first.release_sync()
    finally:
        other.close_sync()


def test_limit_none_on_a_semaphore_never_used_is_refused(
    client: dl.LeaseClient, unique_name: str
) -> None:
    with pytest.raises(ValueError, match="limit"):
        client.try_acquire_permit_sync(unique_name, None)
    assert client.semaphore_info_sync(unique_name) is None


def test_lowering_the_limit_admits_nobody_until_below_it(
    client: dl.LeaseClient, unique_name: str
) -> None:
    held = [client.try_acquire_permit_sync(unique_name, 5) for _ in range(5)]
    permits = [p for p in held if p is not None]
    assert len(permits) == 5
    assert client.set_semaphore_limit_sync(unique_name, 3) == 5
    with pytest.raises(dl.LimitMismatch) as e:
        client.try_acquire_permit_sync(unique_name, 5)
    assert (e.value.stored, e.value.asked) == (3, 5)
    # 5, 4, then 3 held: nobody gets in (nobody was evicted either).
    for left in (5, 4, 3):
        assert client.try_acquire_permit_sync(unique_name, 3) is None, f"{left} held"
        info = client.semaphore_info_sync(unique_name)
        assert info is not None and info.limit == 3 and len(info.holders) == left
        assert not any(p.is_lost for p in permits)
        assert permits.pop().release_sync()
    # 2 left: one more.
    third = client.try_acquire_permit_sync(unique_name, 3)
    assert third is not None and third.slot < 3
    assert client.try_acquire_permit_sync(unique_name, None) is None
    for p in [*permits, third]:
        assert p.release_sync()


HOLDER = textwrap.dedent(
    """
    import sys, time
    import distributed_leasing as dl
    url, name, mode = sys.argv[1:4]
    client = dl.LeaseClient.connect_sync(url)
    permit = client.acquire_permit_sync(name, 1, duration=2.0)
    print(permit.lease_id, permit.slot, flush=True)
    if mode == "stop":
        sys.stdin.readline()  # SIGSTOPped meanwhile, then told to go on
        print(permit.release_sync(), permit.is_lost, flush=True)
    else:
        time.sleep(600)
    """
)


def _holder_process(store: StoreUnderTest, name: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, store.url, name, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_killed_holders_slot_goes_to_a_waiter_and_its_old_id_removes_nothing(
    client: dl.LeaseClient, store: StoreUnderTest, unique_name: str
) -> None:
    proc = _holder_process(store, unique_name, "sleep")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        dead_id, slot = line.split()
        assert client.try_acquire_permit_sync(unique_name, 1) is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        started = time.monotonic()
        permit = client.acquire_permit_sync(unique_name, 1, wait=60)
        # Its duration is 2 s: well within the wait (generous bound for a loaded machine).
        assert time.monotonic() - started < 30
        assert permit.slot == int(slot)
        assert permit.lease_id != dead_id
        # A release in the dead holder's name removes nothing: the slot changed hands.
        with pytest.raises(dl.LeaseUnavailable) as e:
            client.force_release_permit_sync(unique_name, permit.slot, lease_id=dead_id)
        assert e.value.holder is not None and e.value.holder.lease_id == permit.lease_id
        info = client.semaphore_info_sync(unique_name)
        assert info is not None and [h.lease_id for h in info.holders] == [permit.lease_id]
        assert permit.release_sync()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_stopped_holders_late_release_returns_false_and_frees_nothing(
    client: dl.LeaseClient, store: StoreUnderTest, unique_name: str
) -> None:
    proc = _holder_process(store, unique_name, "stop")
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        old_id = line.split()[0]
        os.kill(proc.pid, signal.SIGSTOP)
        permit = client.acquire_permit_sync(unique_name, 1, wait=60)
        assert permit.lease_id != old_id
        os.kill(proc.pid, signal.SIGCONT)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        released, lost = proc.stdout.readline().split()
        assert (released, lost) == ("False", "True")
        info = client.semaphore_info_sync(unique_name)
        assert info is not None and [h.lease_id for h in info.holders] == [permit.lease_id]
        assert permit.release_sync()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


def test_a_double_release_returns_false_and_adds_no_permit(
    client: dl.LeaseClient, unique_name: str
) -> None:
    first = client.try_acquire_permit_sync(unique_name, 1)
    assert first is not None
    assert first.release_sync() is True
    assert first.release_sync() is False
    second = client.try_acquire_permit_sync(unique_name, 1)
    assert second is not None
    assert first.release_sync() is False
    assert client.try_acquire_permit_sync(unique_name, 1) is None
    info = client.semaphore_info_sync(unique_name)
    assert info is not None and [h.lease_id for h in info.holders] == [second.lease_id]
    assert second.release_sync()


async def test_on_lost_cancel_cancels_the_body_when_the_permit_is_force_released(
    client: dl.LeaseClient, store: StoreUnderTest, unique_name: str
) -> None:
    admin = await dl.LeaseClient.connect(store.url)
    reached_end = False
    started = time.monotonic()
    with pytest.raises(dl.LeaseLost) as e:
        async with client.semaphore(unique_name, 2, duration=3, renew_interval=0.3) as permit:
            assert isinstance(permit, dl.Permit) and isinstance(permit, dl.Lease)
            assert await admin.force_release_permit(
                unique_name, permit.slot, lease_id=permit.lease_id
            )
            await asyncio.sleep(60)
            reached_end = True
    assert not reached_end
    assert time.monotonic() - started < 30
    assert e.value.name == unique_name
    assert permit.is_lost and permit.lost_reason == "missing"
    assert "semaphore" in str(e.value) and f"slot {permit.slot}" in str(e.value)
    await admin.close()


def test_info_of_a_name_never_used_is_none_and_the_limit_stays(
    client: dl.LeaseClient, unique_name: str
) -> None:
    assert client.semaphore_info_sync(unique_name) is None
    with client.semaphore(unique_name, 4, metadata={"instanceId": "w1"}) as permit:
        info = client.semaphore_info_sync(unique_name)
        assert info is not None
        assert (info.name, info.limit) == (unique_name, 4)
        [h] = info.holders
        assert (h.name, h.slot, h.lease_id) == (unique_name, permit.slot, permit.lease_id)
        assert h.fencing_token == permit.fencing_token and h.metadata == {"instanceId": "w1"}
        assert h.ttl is not None and h.ttl > 0
    after = client.semaphore_info_sync(unique_name)
    assert after is not None and after.limit == 4 and after.holders == []
    assert client.set_semaphore_limit_sync(unique_name, 6) == 4


def test_a_lease_and_a_semaphore_of_one_name_never_see_each_other(
    client: dl.LeaseClient, unique_name: str
) -> None:
    lease = client.try_acquire_sync(unique_name)
    assert lease is not None
    permit = client.try_acquire_permit_sync(unique_name, 1)
    assert permit is not None
    info = client.inspect_sync(unique_name)
    assert info is not None and info.lease_id == lease.lease_id and info.slot is None
    sem = client.semaphore_info_sync(unique_name)
    assert sem is not None and [h.lease_id for h in sem.holders] == [permit.lease_id]
    assert [i.name for i in client.list_sync(unique_name)] == [unique_name]
    assert all("\x1e" not in i.name for i in client.list_sync())
    assert client.force_release_sync(unique_name)
    after = client.semaphore_info_sync(unique_name)
    assert after is not None and [h.lease_id for h in after.holders] == [permit.lease_id]
    assert not permit.is_lost
    assert permit.release_sync()
    assert client.inspect_sync(unique_name) is None


async def test_list_semaphores_by_prefix(client: dl.LeaseClient, unique_name: str) -> None:
    permit = await client.try_acquire_permit(unique_name, 3, metadata={"instanceId": "w1"})
    assert permit is not None
    assert await client.set_semaphore_limit(f"{unique_name}-idle", 2) is None
    lease = await client.acquire(f"{unique_name}-lease")
    try:
        listed = await client.list_semaphores(unique_name)
        assert [(s.name, s.limit) for s in listed] == [(unique_name, 3), (f"{unique_name}-idle", 2)]
        [h] = listed[0].holders
        assert (h.name, h.slot, h.lease_id) == (unique_name, permit.slot, permit.lease_id)
        assert h.metadata == {"instanceId": "w1"} and listed[1].holders == []
        assert h.fencing_token == permit.fencing_token
        dashed = await client.list_semaphores(f"{unique_name}-")
        assert [s.name for s in dashed] == [f"{unique_name}-idle"]
        everything = client.list_semaphores_sync()
        assert {unique_name, f"{unique_name}-idle"} <= {s.name for s in everything}
        assert f"{unique_name}-lease" not in {s.name for s in everything}
        assert client.list_semaphores_sync(f"{unique_name}-none") == []
        with pytest.raises(ValueError, match="control character"):
            client.list_semaphores_sync("a\x1e")
        with pytest.raises(TypeError, match=r"prefix=3 is a int"):
            client.list_semaphores_sync(3)  # type: ignore[arg-type]
    finally:
        assert await permit.release()
        await lease.release()


@pytest.mark.parametrize("limit", [0, -1, 2**31])
def test_a_bad_limit_is_a_clear_error_naming_it(
    client: dl.LeaseClient, unique_name: str, limit: int
) -> None:
    for call in (
        lambda: client.try_acquire_permit_sync(unique_name, limit),
        lambda: client.acquire_permit_sync(unique_name, limit, wait=1),
        lambda: client.set_semaphore_limit_sync(unique_name, limit),
        lambda: client.semaphore(unique_name, limit).__enter__(),
    ):
        with pytest.raises(ValueError) as e:
            call()
        assert f"semaphore limit {limit} is out of range" in str(e.value)
        assert "2147483647" in str(e.value)
    with pytest.raises(TypeError, match=r"limit='3' is a str"):
        client.try_acquire_permit_sync(unique_name, "3")  # type: ignore[arg-type]
    assert client.semaphore_info_sync(unique_name) is None


async def test_a_refusal_names_every_holder(client: dl.LeaseClient, unique_name: str) -> None:
    held = [await client.try_acquire_permit(unique_name, 2) for _ in range(2)]
    assert all(p is not None for p in held)
    assert await client.try_acquire_permit(unique_name, 2) is None
    for attempt in (
        client.acquire_permit(unique_name, 2, wait=0.3),
        client.semaphore(unique_name, 2).__aenter__(),
    ):
        with pytest.raises(dl.LeaseUnavailable) as e:
            await attempt
        assert e.value.name == unique_name
        assert sorted((h.slot, h.lease_id) for h in e.value.holders) == sorted(
            (p.slot, p.lease_id) for p in held if p is not None
        )
        assert e.value.holder in e.value.holders
        assert "full" in str(e.value)
    for p in held:
        assert p is not None and await p.release()
    # A plain lease: its one holder.
    lease = await client.try_acquire(unique_name)
    assert lease is not None
    with pytest.raises(dl.LeaseUnavailable) as e:
        await client.acquire(unique_name)
    assert [h.lease_id for h in e.value.holders] == [lease.lease_id]
    assert e.value.holder == e.value.holders[0]
    await lease.release()
