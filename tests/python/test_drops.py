"""Connections the server drops, and connections the client closes (issue 13).

Drops: the server closes every client connection (``CLIENT KILL TYPE normal``, or a server
started with ``timeout 1`` that closes idle connections) between operations and while a lease
is held, on every path an operation can take: the event loop's own connection, the calling
thread's own connection, the client's shared connection (sync and async), and a waiting
acquire. A drop must cost the caller nothing (the operation is retried once on a fresh
connection), must never wedge the client (a connection that failed is never used again), and
leases with a short renew interval must keep renewing throughout.

Closing: ``close()`` and dropping a client close every connection it opened (shared, per-loop,
per-thread, the release-notification subscription), checked on the server
(``connected_clients``) and, in a subprocess limited to 256 file descriptors, over thousands of
connect/acquire/release/close cycles on Redis and on SQLite (``/proc/self/fd``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import distributed_leasing as dl
import pytest
from faults_util import report, subprocess_env
from redis_servers import RedisCluster, RedisServer
from test_inline import open_loop_connection, open_thread_connection

# Lost within 1.5 s if renewals stop: a wedged connection shows as a lost lease.
HELD = {"duration": 1.5, "renew_interval": 0.2}
# Generous bounds: these only end a test that has already failed.
LIMIT = 20.0


def kill_all(srv: RedisServer) -> int:
    """Closes every client connection of the server but the one asking; how many it closed."""
    killed = srv.command("CLIENT", "KILL", "TYPE", "normal")
    assert isinstance(killed, int)
    return killed


def our_connections(srv: RedisServer) -> int:
    """The server's client connections, without the one asking."""
    return int(srv.info("clients")["connected_clients"]) - 1


def wait_until(cond: Callable[[], bool], what: str, limit: float = LIMIT) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"not within {limit}s: {what}"
        time.sleep(0.05)


async def await_until(cond: Callable[[], bool], what: str, limit: float = LIMIT) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"not within {limit}s: {what}"
        await asyncio.sleep(0.05)


def renewing(lease: dl.Lease, since: int) -> Callable[[], bool]:
    """Whether ``lease`` was renewed three more times since ``since`` renewals; a lost lease
    fails at once."""

    def check() -> bool:
        assert not lease.is_lost, f"the held lease was lost: {lease.lost_reason}"
        return lease.renewals >= since + 3

    return check


@pytest.fixture
def idle_closing_server(
    redis_server_factory: Callable[..., RedisServer],
) -> RedisServer:
    """A server that closes connections idle for more than a second."""
    return redis_server_factory(extra_args=["--timeout", "1"])


# -- CLIENT KILL on each path -----------------------------------------------------------------


def test_sync_calls_on_the_threads_connection_survive_kills_and_never_wedge(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = dl.LeaseClient.connect_sync(srv.url, operation_timeout=1.0)
    open_thread_connection(client, srv, unique_name)
    held = client.acquire_sync(f"{unique_name}-held", **HELD)
    for _ in range(3):
        renewals = held.renewals
        assert kill_all(srv) >= 2
        # Thread's connection: the first call finds it dead; no call may see the drop.
        for _ in range(3):
            lease = client.try_acquire_sync(unique_name)
            assert lease is not None
            assert lease.release_sync() is True
        # The shared connection answers, and keeps renewing the held lease (it wedged here:
        # the thread's calls had stranded its reconnection on the thread's runtime).
        for _ in range(3):
            info = client.inspect_sync(f"{unique_name}-held")
            assert info is not None and info.lease_id == held.lease_id
        wait_until(renewing(held, renewals), "the held lease renews after the kill")
    assert held.release_sync() is True
    client.close_sync()


async def test_async_calls_on_the_loops_connection_survive_kills(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = await dl.LeaseClient.connect(srv.url, operation_timeout=1.0)
    await open_loop_connection(client, srv, unique_name)
    held = await client.acquire(f"{unique_name}-held", **HELD)
    for _ in range(3):
        renewals = held.renewals
        assert kill_all(srv) >= 2
        # At once, before the loop has seen its connection close: no call may see the drop.
        for _ in range(3):
            lease = await client.try_acquire(unique_name)
            assert lease is not None
            assert await lease.release() is True
        info = await client.inspect(f"{unique_name}-held")
        assert info is not None and info.lease_id == held.lease_id
        await await_until(renewing(held, renewals), "the held lease renews after the kill")
        await open_loop_connection(client, srv, unique_name)
    assert await held.release() is True
    await client.close()


def test_sync_calls_on_the_shared_connection_survive_kills(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = dl.LeaseClient.connect_sync(srv.url, operation_timeout=1.0)
    held = client.acquire_sync(f"{unique_name}-held", **HELD)
    for _ in range(3):
        renewals = held.renewals
        assert kill_all(srv) >= 1
        # A waiting acquire (wait > 0), inspect, list and force-release use the shared one.
        lease = client.acquire_sync(unique_name, wait=5.0)
        info = client.inspect_sync(unique_name)
        assert info is not None and info.lease_id == lease.lease_id
        assert [i.name for i in client.list_sync(unique_name)] == [
            unique_name,
            f"{unique_name}-held",
        ]
        assert client.force_release_sync(unique_name, lease_id=lease.lease_id) is True
        wait_until(renewing(held, renewals), "the held lease renews after the kill")
    assert held.release_sync() is True
    client.close_sync()


async def test_async_calls_on_the_shared_connection_survive_kills(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = await dl.LeaseClient.connect(srv.url, operation_timeout=1.0)
    held = await client.acquire(f"{unique_name}-held", **HELD)
    for _ in range(3):
        renewals = held.renewals
        assert kill_all(srv) >= 1
        lease = await client.acquire(unique_name, wait=5.0)
        info = await client.inspect(unique_name)
        assert info is not None and info.lease_id == lease.lease_id
        assert len(await client.list(unique_name)) == 2
        assert await client.force_release(unique_name, lease_id=lease.lease_id) is True
        await await_until(renewing(held, renewals), "the held lease renews after the kill")
    assert await held.release() is True
    await client.close()


def test_calls_on_a_cluster_survive_kills_on_every_node(
    redis_cluster: RedisCluster, unique_name: str
) -> None:
    # The cluster client's connections (one per node, plus the notifications'): every node
    # drops all of them between operations, sync and async, while a lease is held.
    cluster = redis_cluster
    client = dl.LeaseClient.connect_sync(cluster.url, operation_timeout=2.0)
    held = client.acquire_sync(f"{unique_name}-held", **HELD)

    async def on_a_loop(name: str) -> None:
        lease = await client.acquire(name, wait=5.0)
        assert (await client.inspect(name)) is not None
        assert await lease.release() is True

    for round_ in range(3):
        renewals = held.renewals
        assert sum(kill_all(node) for node in cluster.nodes) >= 1
        lease = client.acquire_sync(f"{unique_name}-{round_}", wait=5.0)
        info = client.inspect_sync(lease.name)
        assert info is not None and info.lease_id == lease.lease_id
        assert lease.release_sync() is True
        for node in cluster.nodes:  # and again before the async calls
            kill_all(node)
        asyncio.run(on_a_loop(f"{unique_name}-async-{round_}"))
        wait_until(renewing(held, renewals), "the held lease renews after the kills")
    assert held.release_sync() is True
    client.close_sync()


async def test_a_waiting_acquire_survives_kills_and_gets_the_released_lease(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    holder = await dl.LeaseClient.connect(srv.url, operation_timeout=1.0)
    waiter = await dl.LeaseClient.connect(srv.url, operation_timeout=1.0)
    held = await holder.acquire(unique_name, **HELD)
    waiting = asyncio.ensure_future(waiter.acquire(unique_name, wait=LIMIT, **HELD))
    # Killed while the waiter subscribes, and again while it waits (its subscription included).
    for _ in range(2):
        renewals = held.renewals
        kill_all(srv)
        await await_until(renewing(held, renewals), "the held lease renews after the kill")
        assert not waiting.done()
    assert await held.release() is True
    lease = await asyncio.wait_for(waiting, LIMIT)
    assert lease.fencing_token > held.fencing_token
    assert await lease.release() is True
    await holder.close()
    await waiter.close()


def test_a_sync_waiting_acquire_survives_kills_and_gets_the_released_lease(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    holder = dl.LeaseClient.connect_sync(srv.url, operation_timeout=1.0)
    waiter = dl.LeaseClient.connect_sync(srv.url, operation_timeout=1.0)
    held = holder.acquire_sync(unique_name, **HELD)
    got: list[dl.Lease | BaseException] = []

    def wait() -> None:
        try:
            got.append(waiter.acquire_sync(unique_name, wait=LIMIT, **HELD))
        except BaseException as e:  # reported by the assertion below
            got.append(e)

    thread = threading.Thread(target=wait)
    thread.start()
    for _ in range(2):
        renewals = held.renewals
        kill_all(srv)
        wait_until(renewing(held, renewals), "the held lease renews after the kill")
        assert not got
    assert held.release_sync() is True
    thread.join(LIMIT)
    assert len(got) == 1 and isinstance(got[0], dl.Lease), got
    assert got[0].release_sync() is True
    holder.close_sync()
    waiter.close_sync()


def test_a_paused_server_times_out_then_every_path_recovers(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = dl.LeaseClient.connect_sync(srv.url, operation_timeout=0.5, connect_timeout=0.5)
    open_thread_connection(client, srv, unique_name)
    srv.pause()
    try:
        # The thread's connection, then the shared one twice (the second time on the new
        # connection that replaced the timed-out one, which cannot connect either).
        calls: list[Callable[[], object]] = [
            lambda: client.try_acquire_sync(f"{unique_name}-paused", duration=1.0),
            lambda: client.inspect_sync(unique_name),
            lambda: client.inspect_sync(unique_name),
        ]
        for call in calls:
            with pytest.raises(dl.BackendError) as err:
                call()
            assert err.value.kind == "timeout", err.value
    finally:
        srv.resume()
    # Timed-out connections are not used again: new ones answer on every path.
    lease = client.try_acquire_sync(unique_name)
    assert lease is not None and lease.release_sync() is True
    assert client.inspect_sync(unique_name) is None

    async def on_a_loop() -> None:
        for _ in range(3):
            lease = await client.try_acquire(unique_name)
            assert lease is not None and await lease.release() is True

    asyncio.run(on_a_loop())
    held = client.acquire_sync(f"{unique_name}-held", **HELD)
    wait_until(renewing(held, 0), "a lease taken after the pause renews")
    client.close_sync()


# -- a server that closes idle connections ----------------------------------------------------


def test_sync_calls_after_the_server_closed_idle_connections(
    idle_closing_server: RedisServer, unique_name: str
) -> None:
    srv = idle_closing_server
    client = dl.LeaseClient.connect_sync(srv.url, operation_timeout=1.0)
    # Nothing held: the shared and the thread's connections both go idle and are closed.
    for _ in range(3):
        lease = client.try_acquire_sync(unique_name)
        assert lease is not None and lease.release_sync() is True
        assert client.inspect_sync(unique_name) is None
        wait_until(lambda: our_connections(srv) == 0, "the server closes idle connections")
    # A lease renewed every 0.2 s keeps the shared connection busy; the thread's idles out.
    held = client.acquire_sync(f"{unique_name}-held", **HELD)
    for _ in range(3):
        renewals = held.renewals
        lease = client.try_acquire_sync(unique_name)
        assert lease is not None and lease.release_sync() is True
        busy = our_connections(srv)
        wait_until(
            lambda busy=busy: our_connections(srv) < busy, "the thread's idle connection closes"
        )
        wait_until(renewing(held, renewals), "the held lease keeps renewing")
    assert held.release_sync() is True
    client.close_sync()


async def test_async_calls_after_the_server_closed_idle_connections(
    idle_closing_server: RedisServer, unique_name: str
) -> None:
    srv = idle_closing_server
    client = await dl.LeaseClient.connect(srv.url, operation_timeout=1.0)
    for _ in range(3):
        lease = await client.try_acquire(unique_name)
        assert lease is not None and await lease.release() is True
        assert await client.inspect(unique_name) is None
        await await_until(lambda: our_connections(srv) == 0, "idle connections close")
    held = await client.acquire(f"{unique_name}-held", **HELD)
    for _ in range(3):
        renewals = held.renewals
        lease = await client.try_acquire(unique_name)
        assert lease is not None and await lease.release() is True
        await await_until(renewing(held, renewals), "the held lease keeps renewing")
    assert await held.release() is True
    await client.close()


# -- list() after a drop (issue 22, defect 6) ------------------------------------------------

# Held without renewals: nothing keeps a connection busy, so the idle timeout closes them all.
QUIET = {"duration": 30.0, "auto_renew": False}


def drop_every_connection(srv: RedisServer, how: str) -> None:
    """Has the server close every client connection: ``CLIENT KILL``, or its idle ``timeout``
    (set to a second, as cloud services do to idle clients), waited out."""
    if how == "client_kill":
        assert kill_all(srv) >= 1
    else:
        srv.command("CONFIG", "SET", "timeout", "1")
        wait_until(lambda: our_connections(srv) == 0, "the server closes idle connections")


@pytest.mark.parametrize("how", ["client_kill", "idle_timeout"])
def test_sync_list_after_the_server_dropped_every_connection(
    fresh_redis_server: RedisServer, unique_name: str, how: str
) -> None:
    # The thread's own connection (its inspects) and the shared one (its SCAN) both dropped,
    # each time right before the list: no list may see the drop.
    srv = fresh_redis_server
    client = dl.LeaseClient.connect_sync(srv.url, operation_timeout=1.0)
    open_thread_connection(client, srv, unique_name)
    names = [f"{unique_name}-{i}" for i in range(3)]
    leases = [client.acquire_sync(name, **QUIET) for name in names]
    for _ in range(3):
        drop_every_connection(srv, how)
        assert [i.name for i in client.list_sync(unique_name)] == names
    for lease in leases:
        assert lease.release_sync() is True
    client.close_sync()


@pytest.mark.parametrize("how", ["client_kill", "idle_timeout"])
async def test_async_list_after_the_server_dropped_every_connection(
    fresh_redis_server: RedisServer, unique_name: str, how: str
) -> None:
    srv = fresh_redis_server
    client = await dl.LeaseClient.connect(srv.url, operation_timeout=1.0)
    names = [f"{unique_name}-{i}" for i in range(3)]
    leases = [await client.acquire(name, **QUIET) for name in names]
    # First over the shared connection (the loop's own is not open yet), then over the loop's.
    drop_every_connection(srv, how)
    assert [i.name for i in await client.list(unique_name)] == names
    await open_loop_connection(client, srv, unique_name)
    for _ in range(3):
        drop_every_connection(srv, how)
        assert [i.name for i in await client.list(unique_name)] == names
    for lease in leases:
        assert await lease.release() is True
    await client.close()


def test_list_on_a_cluster_after_kills_on_every_node(
    redis_cluster: RedisCluster, unique_name: str
) -> None:
    # SCAN on every master, then the leases: every node drops every connection first.
    cluster = redis_cluster
    client = dl.LeaseClient.connect_sync(cluster.url, operation_timeout=2.0)
    names = [f"{unique_name}-{i}" for i in range(6)]  # spread over the masters
    leases = [client.acquire_sync(name, **QUIET) for name in names]

    async def on_a_loop() -> list[str]:
        return [i.name for i in await client.list(unique_name)]

    for _ in range(3):
        assert sum(kill_all(node) for node in cluster.nodes) >= 1
        assert [i.name for i in client.list_sync(unique_name)] == names
        for node in cluster.nodes:
            kill_all(node)
        assert asyncio.run(on_a_loop()) == names
    for lease in leases:
        assert lease.release_sync() is True
    client.close_sync()


# -- close() and dropped clients --------------------------------------------------------------


class LoopInThread:
    """An event loop running in a thread of its own until ``stop()``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(LIMIT)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(LIMIT)
        self.loop.close()


@pytest.fixture
def loop_in_thread() -> Iterator[LoopInThread]:
    lit = LoopInThread()
    yield lit
    lit.stop()


def test_close_closes_every_connection_the_client_opened(
    fresh_redis_server: RedisServer, loop_in_thread: LoopInThread, unique_name: str
) -> None:
    srv = fresh_redis_server
    other = dl.LeaseClient.connect_sync(srv.url)
    blocker = other.acquire_sync(f"{unique_name}-blocked", duration=30)
    baseline = our_connections(srv)
    client = dl.LeaseClient.connect_sync(srv.url)
    # Its shared connection; this thread's; another thread's (still alive); another running
    # loop's; the release-notification subscription (a wait that times out leaves it open).
    open_thread_connection(client, srv, unique_name)
    other_thread = threading.Event()
    opened = threading.Event()

    def in_a_thread() -> None:
        open_thread_connection(client, srv, f"{unique_name}-thread")
        opened.set()
        other_thread.wait(LIMIT)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    assert opened.wait(LIMIT)
    loop_in_thread.run(open_loop_connection(client, srv, f"{unique_name}-loop"))
    with pytest.raises(dl.LeaseUnavailable):
        client.acquire_sync(f"{unique_name}-blocked", wait=0.3)
    held = client.acquire_sync(f"{unique_name}-held", duration=30)
    wait_until(lambda: our_connections(srv) - baseline == 5, "five connections open")
    client.close_sync()
    # Closed on the server right away (bounded generously: only a failure waits for it).
    wait_until(lambda: our_connections(srv) == baseline, "close() closes every connection")
    assert held.is_lost and held.lost_reason == "client_closed"
    assert srv.command("EXISTS", f"lease:{unique_name}-held") == 0
    other_thread.set()
    thread.join(LIMIT)
    assert blocker.release_sync() is True
    other.close_sync()


async def test_async_close_closes_every_connection_the_client_opened(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    baseline = our_connections(srv)
    client = await dl.LeaseClient.connect(srv.url)
    await open_loop_connection(client, srv, unique_name)
    await asyncio.to_thread(open_thread_connection, client, srv, f"{unique_name}-thread")
    assert our_connections(srv) - baseline == 3
    await client.close()
    await await_until(lambda: our_connections(srv) == baseline, "close() closes everything")


def test_a_dropped_client_closes_its_connections(
    fresh_redis_server: RedisServer, loop_in_thread: LoopInThread, unique_name: str
) -> None:
    srv = fresh_redis_server
    baseline = our_connections(srv)
    client = dl.LeaseClient.connect_sync(srv.url)
    open_thread_connection(client, srv, unique_name)
    loop_in_thread.run(open_loop_connection(client, srv, f"{unique_name}-loop"))
    lease = client.acquire_sync(f"{unique_name}-held")
    assert lease.release_sync() is True
    assert our_connections(srv) - baseline == 3
    del client, lease
    gc.collect()
    wait_until(lambda: our_connections(srv) == baseline, "a dropped client closes everything")


# The cycles run in a subprocess limited to 256 open files, as an application under
# `ulimit -n 256` would: every cycle that left a socket or file open would exhaust it.
_CYCLES = r"""
import asyncio, gc, json, os, resource, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
import distributed_leasing as dl
from redis_servers import resp_command

url, sync_n, async_n, dropped_n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
port = int(url.rsplit(":", 1)[1]) if url.startswith("redis") else None


def fds():
    return len(os.listdir("/proc/self/fd"))


def clients():
    if port is None:
        return 0
    info = resp_command("127.0.0.1", port, "INFO", "clients").decode()
    return int(info.split("connected_clients:")[1].split()[0]) - 1


def settled(baseline):
    # Back to the baseline right after: polled briefly, with a generous bound.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = (fds(), clients())
        if now[0] <= baseline[0] and now[1] <= baseline[1]:
            break
        gc.collect()
        time.sleep(0.02)
    return [fds(), clients()]


def sync_cycle(i):
    with dl.LeaseClient.connect_sync(url) as c:
        lease = c.try_acquire_sync(f"fd-sync-{i % 7}")
        assert lease is not None and lease.release_sync()


def sync_dropped(i):
    c = dl.LeaseClient.connect_sync(url)
    lease = c.try_acquire_sync(f"fd-sync-dropped-{i % 7}")
    assert lease is not None and lease.release_sync()


async def async_cycle(i):
    async with await dl.LeaseClient.connect(url) as c:
        lease = await c.try_acquire(f"fd-async-{i % 7}")
        assert lease is not None and await lease.release()


async def async_dropped(i):
    c = await dl.LeaseClient.connect(url)
    lease = await c.try_acquire(f"fd-async-dropped-{i % 7}")
    assert lease is not None and await lease.release()


out = {}
sync_cycle(-1)
sync_dropped(-1)
gc.collect()
baseline = (fds(), clients())
out["sync_baseline"] = list(baseline)
for i in range(sync_n):
    sync_cycle(i)
out["sync_closed"] = settled(baseline)
for i in range(dropped_n):
    sync_dropped(i)
out["sync_dropped"] = settled(baseline)


async def main():
    await async_cycle(-1)
    await async_dropped(-1)
    gc.collect()
    baseline = (fds(), clients())
    out["async_baseline"] = list(baseline)
    for i in range(async_n):
        await async_cycle(i)
    out["async_closed"] = settled(baseline)
    for i in range(dropped_n):
        await async_dropped(i)
    out["async_dropped"] = settled(baseline)


asyncio.run(main())
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_thousands_of_cycles_under_ulimit_256_leave_nothing_open(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if kind == "redis":
        # A server of its own: its connection count is this test's alone.
        url = request.getfixturevalue("fresh_redis_server").url
    else:
        url = f"sqlite://{tmp_path / 'leases.db'}"
    # Each count is above the 256 descriptors the script allows itself, so one leaked per
    # cycle runs out; SQLite's cycles (a file opened and its schema checked) cost more, so fewer.
    counts = ["2000", "1000", "300"] if kind == "redis" else ["300", "300", "300"]
    run = subprocess.run(
        [sys.executable, "-c", _CYCLES, url, *counts],
        capture_output=True,
        text=True,
        timeout=600,
        env=subprocess_env(),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for mode in ("sync", "async"):
        baseline = out[f"{mode}_baseline"]
        # [open file descriptors, connections on the server]: back to the baseline after the
        # closed clients, and after the dropped ones.
        for phase in ("closed", "dropped"):
            fds, conns = out[f"{mode}_{phase}"]
            assert fds <= baseline[0] and conns <= baseline[1], (mode, phase, out)
    report(f"cycles_under_ulimit_256_{kind}", **out)
