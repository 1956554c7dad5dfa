"""The event loop's and the thread's own Redis connections (src/python/inline.rs and
src/python/thread_twin.rs).

On a single Redis server, every one-request operation (an acquire attempt, a renewal, a release,
inspect, list, a forced release) awaited on an event loop runs on the loop's thread, over a
connection the loop polls (opened in the background on first use); blocking ones run on the
calling thread, over that thread's own connection (src/python/executor.rs decides). These
tests watch them on a real server: which connection carries the commands (MONITOR), what a
killed connection or a paused server costs, what a cancelled await leaves, that leases taken
there are renewed and released by the client like any other, and that a loop or thread that
ends closes its connection.
"""

from __future__ import annotations

import asyncio
import gc
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import distributed_leasing as dl
import pytest
from redis_servers import RedisServer

MONITOR_LINE = re.compile(rb'^\+[\d.]+ \[\d+ ([\d.]+:\d+)\] "(\w+)"', re.MULTILINE)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def connections(srv: RedisServer) -> set[str]:
    """Addresses of the server's clients, without the one asking."""
    listing = _text(srv.command("CLIENT", "LIST"))
    out = set()
    for line in listing.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("cmd") != "client|list":
            out.add(fields["addr"])
    return out


async def open_loop_connection(client: dl.LeaseClient, srv: RedisServer, name: str) -> str:
    """Runs acquire+release until the loop's own connection shows up on the server; its address."""
    before = connections(srv)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        lease = await client.acquire(name)
        assert await lease.release() is True
        new = connections(srv) - before
        if new:
            assert len(new) == 1, f"expected one new connection, got {new}"
            return new.pop()
        await asyncio.sleep(0.05)
    raise AssertionError("the event loop's connection never opened")


class Monitor:
    """MONITOR on a raw socket in a thread: which client address sent which command."""

    def __init__(self, srv: RedisServer) -> None:
        self.sock = socket.create_connection((srv.host, srv.port), timeout=5)
        self.sock.sendall(b"MONITOR\r\n")
        self.data = b""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            self.data += chunk

    def senders(self, command: bytes) -> list[str]:
        return [
            m.group(1).decode()
            for m in MONITOR_LINE.finditer(self.data)
            if m.group(2).upper() == command
        ]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def monitor(fresh_redis_server: RedisServer) -> Iterator[Monitor]:
    m = Monitor(fresh_redis_server)
    yield m
    m.close()


async def test_acquire_and_release_go_over_the_loops_own_connection(
    fresh_redis_server: RedisServer, monitor: Monitor, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = await dl.LeaseClient.connect(srv.url)
    shared = connections(srv)
    own = await open_loop_connection(client, srv, unique_name)
    assert own not in shared
    monitor.data = b""
    for _ in range(20):
        lease = await client.acquire(unique_name)
        assert await lease.release() is True
    time.sleep(0.3)  # MONITOR output is asynchronous
    senders = monitor.senders(b"EVALSHA")
    assert len(senders) == 40, senders
    assert set(senders) == {own}
    # Every one-request operation takes the same path (src/python/executor.rs): a renewal,
    # inspect, list and a forced release too. A waiting acquire runs on the runtime.
    lease = await client.acquire(unique_name, auto_renew=False)
    monitor.data = b""
    await lease.renew()
    assert (await client.inspect(unique_name)) is not None
    assert [i.name for i in await client.list(unique_name)] == [unique_name]
    assert await client.force_release(unique_name, lease_id=lease.lease_id) is True
    time.sleep(0.3)
    senders = monitor.senders(b"EVALSHA")  # (list's SCAN uses the shared connection)
    assert len(senders) >= 4 and set(senders) == {own}, (senders, own)


async def test_a_killed_loop_connection_costs_no_operation_and_is_reopened(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = await dl.LeaseClient.connect(srv.url)
    own = await open_loop_connection(client, srv, unique_name)
    srv.command("CLIENT", "KILL", "ADDR", own)
    after_kill = connections(srv)
    assert own not in after_kill
    for _ in range(30):
        lease = await client.acquire(unique_name)
        assert await lease.release() is True
    # A new one opens (at the earliest a second after the old one closed).
    deadline = time.monotonic() + 15
    while not connections(srv) - after_kill:
        assert time.monotonic() < deadline, "the loop's connection was not reopened"
        await asyncio.sleep(0.2)
        lease = await client.acquire(unique_name)
        assert await lease.release() is True


async def test_a_paused_server_times_out_on_the_loops_connection_then_recovers(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = await dl.LeaseClient.connect(srv.url, operation_timeout=0.5)
    await open_loop_connection(client, srv, unique_name)
    srv.pause()
    try:
        started = time.monotonic()
        with pytest.raises(dl.BackendError) as err:
            await client.acquire(unique_name, duration=2)
        assert time.monotonic() - started < 10
        assert "time" in str(err.value).lower()
    finally:
        srv.resume()
    deadline = time.monotonic() + 15
    while True:
        try:
            lease = await client.acquire(unique_name)
            break
        except dl.LeaseUnavailable:
            # The timed-out acquire may have landed after all: its lease expires on its own.
            assert time.monotonic() < deadline, "the lease never became free again"
            await asyncio.sleep(0.2)
    assert await lease.release() is True


async def test_a_cancelled_acquire_on_the_loops_connection_leaves_no_lease(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = await dl.LeaseClient.connect(srv.url)
    await open_loop_connection(client, srv, unique_name)
    task = asyncio.ensure_future(client.acquire(unique_name, duration=30))
    await asyncio.sleep(0)  # the request is on the wire; the reply is not in yet
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 10
    while srv.command("EXISTS", f"lease:{unique_name}") != 0:
        assert time.monotonic() < deadline, "the lease won by the cancelled acquire was kept"
        await asyncio.sleep(0.05)
    lease = await client.acquire(unique_name)
    assert await lease.release() is True


def test_a_loop_that_ends_closes_its_connection(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = dl.LeaseClient.connect_sync(srv.url)
    baseline = connections(srv)
    found: list[str] = []

    def in_a_thread() -> None:
        found.append(asyncio.run(open_loop_connection(client, srv, unique_name)))

    for _ in range(2):
        t = threading.Thread(target=in_a_thread)
        t.start()
        t.join(60)
    assert len(found) == 2 and found[0] != found[1]
    gc.collect()
    deadline = time.monotonic() + 10
    while connections(srv) - baseline:
        assert time.monotonic() < deadline, (
            f"connections of ended loops still open: {connections(srv) - baseline}"
        )
        gc.collect()
        time.sleep(0.1)
    # The client itself still works, synchronously and on a new loop.
    lease = client.acquire_sync(unique_name)
    assert lease.release_sync() is True


def open_thread_connection(client: dl.LeaseClient, srv: RedisServer, name: str) -> str:
    """The blocking twin of ``open_loop_connection``: the calling thread's connection."""
    before = connections(srv)
    lease = client.acquire_sync(name)
    assert lease.release_sync() is True
    new = connections(srv) - before
    assert len(new) == 1, f"expected this thread's connection to open, got {new}"
    return new.pop()


def test_blocking_calls_go_over_the_threads_own_connection(
    fresh_redis_server: RedisServer, monitor: Monitor, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = dl.LeaseClient.connect_sync(srv.url)
    own = open_thread_connection(client, srv, unique_name)
    monitor.data = b""
    for _ in range(20):
        lease = client.acquire_sync(unique_name)
        assert lease.release_sync() is True
    held = client.try_acquire_sync(unique_name)
    assert held is not None
    assert held.release_sync() is True
    time.sleep(0.3)  # MONITOR output is asynchronous
    senders = monitor.senders(b"EVALSHA")
    assert len(senders) == 42, senders
    assert set(senders) == {own}


def test_a_killed_thread_connection_costs_no_operation_and_is_reopened(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = dl.LeaseClient.connect_sync(srv.url)
    own = open_thread_connection(client, srv, unique_name)
    srv.command("CLIENT", "KILL", "ADDR", own)
    after_kill = connections(srv)
    for _ in range(30):
        lease = client.acquire_sync(unique_name)
        assert lease.release_sync() is True
    deadline = time.monotonic() + 15
    while not connections(srv) - after_kill:
        assert time.monotonic() < deadline, "the thread's connection was not reopened"
        time.sleep(0.2)
        lease = client.acquire_sync(unique_name)
        assert lease.release_sync() is True


def test_a_paused_server_times_out_on_the_threads_connection_then_recovers(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = dl.LeaseClient.connect_sync(srv.url, operation_timeout=0.5)
    open_thread_connection(client, srv, unique_name)
    srv.pause()
    try:
        started = time.monotonic()
        with pytest.raises(dl.BackendError) as err:
            client.acquire_sync(unique_name, duration=2)
        assert time.monotonic() - started < 10
        assert "time" in str(err.value).lower()
    finally:
        srv.resume()
    deadline = time.monotonic() + 15
    while True:
        try:
            lease = client.acquire_sync(unique_name)
            break
        except dl.LeaseUnavailable:
            assert time.monotonic() < deadline, "the lease never became free again"
            time.sleep(0.2)
    assert lease.release_sync() is True


def test_leases_taken_on_a_threads_connection_are_renewed_and_released_by_the_client(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = dl.LeaseClient.connect_sync(srv.url)
    open_thread_connection(client, srv, unique_name)
    lease = client.acquire_sync(unique_name, duration=1.0, renew_interval=0.2)
    # No call on this thread meanwhile: the renewals run on the client's runtime.
    time.sleep(2.5)
    assert not lease.is_lost
    assert lease.renewals >= 5
    assert srv.command("EXISTS", f"lease:{unique_name}") == 1
    # Dropped without a release: released in the background, by the client's runtime.
    del lease
    gc.collect()
    deadline = time.monotonic() + 10
    while srv.command("EXISTS", f"lease:{unique_name}") != 0:
        assert time.monotonic() < deadline, "a dropped lease was not released"
        time.sleep(0.05)


async def test_leases_taken_on_a_loops_connection_are_renewed_by_the_client(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = await dl.LeaseClient.connect(srv.url)
    await open_loop_connection(client, srv, unique_name)
    lease = await client.acquire(unique_name, duration=1.0, renew_interval=0.2)
    await asyncio.sleep(2.5)
    assert not lease.is_lost
    assert lease.renewals >= 5
    assert await lease.release() is True


SLOW_POLL = dl.Backoff.fixed(60.0)
"""A waiter that polls once a minute: only a release notice (or the TTL) wakes it in time."""


def release_later(lease: dl.Lease, after: float, released: list[bool]) -> threading.Timer:
    timer = threading.Timer(after, lambda: released.append(lease.release_sync()))
    timer.start()
    return timer


def test_a_blocking_wait_runs_on_the_threads_connection_woken_by_the_shared_feed(
    fresh_redis_server: RedisServer, monitor: Monitor, unique_name: str
) -> None:
    """A blocking acquire with a wait sends its attempts over the thread's own connection and
    is woken by the release notice (the holder keeps its lease 30 s, the waiter polls once a
    minute: 20 s would be missed without the notice). The notices' feed runs on the client's
    runtime, not on the runtime of the thread that first waited: a second thread's wait, while
    that first thread makes no call, is woken by its release too."""
    srv = fresh_redis_server
    holder = dl.LeaseClient.connect_sync(srv.url)
    client = dl.LeaseClient.connect_sync(srv.url)
    own = open_thread_connection(client, srv, unique_name)
    held = holder.acquire_sync(unique_name, duration=30)
    released: list[bool] = []
    monitor.data = b""
    timer = release_later(held, 0.5, released)
    started = time.monotonic()
    lease = client.acquire_sync(unique_name, wait=50, backoff=SLOW_POLL)
    assert time.monotonic() - started < 20, "the waiter was not woken by the release"
    timer.join(10)
    assert released == [True]
    time.sleep(0.3)  # MONITOR output is asynchronous
    # One attempt, one more once the subscription is confirmed (a release may have come
    # between the two), one after the release: all three on this thread's connection.
    attempts = monitor.senders(b"EVALSHA").count(own)
    assert attempts == 3, f"{attempts} attempts on this thread's connection (expected 3)"
    assert lease.release_sync() is True

    # Another thread waits while this one makes no call.
    other = unique_name + "-2"
    held = holder.acquire_sync(other, duration=30)
    got: list[float] = []

    def wait_in_another_thread() -> None:
        t0 = time.monotonic()
        lease = client.acquire_sync(other, wait=50, backoff=SLOW_POLL)
        got.append(time.monotonic() - t0)
        assert lease.release_sync() is True

    waiter = threading.Thread(target=wait_in_another_thread)
    waiter.start()
    timer = release_later(held, 1.0, released)
    waiter.join(60)
    timer.join(10)
    assert released == [True, True]
    assert len(got) == 1 and got[0] < 20, f"the second thread's wait took {got} s"
    client.close_sync()
    holder.close_sync()


def test_a_thread_that_ends_closes_its_connection(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = dl.LeaseClient.connect_sync(srv.url)
    baseline = connections(srv)
    found: list[str] = []
    t = threading.Thread(
        target=lambda: found.append(open_thread_connection(client, srv, unique_name))
    )
    t.start()
    t.join(60)
    assert len(found) == 1
    deadline = time.monotonic() + 10
    while connections(srv) - baseline:
        assert time.monotonic() < deadline, "the ended thread's connection is still open"
        time.sleep(0.1)


def last_commands(srv: RedisServer) -> dict[str, str]:
    """Each client's address and the last command it sent, without the one asking."""
    out = {}
    for line in _text(srv.command("CLIENT", "LIST")).splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("cmd") != "client|list":
            out[fields["addr"]] = fields.get("cmd", "")
    return out


def test_tls_calls_go_over_the_callers_own_connection_too(
    redis_server_factory: Callable[..., RedisServer], unique_name: str
) -> None:
    # rediss:// (Azure's only port) takes the same path as plain TCP: TLS with the store's
    # trust over the thread's and the loop's own sockets (store/redis/inline.rs).
    srv = redis_server_factory(tls=True)
    client = dl.LeaseClient.connect_sync(srv.url, ca_file=srv.ca_file)
    shared = set(last_commands(srv))
    own = open_thread_connection(client, srv, unique_name)
    for _ in range(5):
        lease = client.acquire_sync(unique_name)
        assert lease.release_sync() is True
    last = last_commands(srv)
    assert last[own] == "evalsha", last
    assert all(last[a] != "evalsha" for a in shared if a in last), (last, shared)

    async def on_a_loop() -> None:
        aclient = await dl.LeaseClient.connect(srv.url, ca_file=srv.ca_file)
        async with aclient:
            loop_own = await open_loop_connection(aclient, srv, unique_name)
            for _ in range(5):
                async with aclient.lease(unique_name) as held:
                    assert held.fencing_token > 0
            assert last_commands(srv)[loop_own] == "evalsha"

    asyncio.run(on_a_loop())
    client.close_sync()
    deadline = time.monotonic() + 10  # the server notices closed sockets on its next turn
    while last_commands(srv) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert last_commands(srv) == {}, "closing the clients closes every connection"
