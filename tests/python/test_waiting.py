"""Waiting for a lease from Python: woken by a release (not by polling), by the holder's expiry,
timeouts, cancellation (asyncio and Ctrl-C), a hundred waiters, one pub/sub connection for all
waiters, and the backoff values.

Bounds are generous: each test makes the slow path (a poll once a minute, or a 30 s TTL) far
slower than its bound, so it fails when the fast path is broken and passes on a loaded machine
when it is not.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import distributed_leasing as dl
import pytest
from conftest import StoreUnderTest
from redis_servers import RedisCluster, RedisServer

SLOW_POLL = dl.Backoff.fixed(60.0)
"""A waiter that polls once a minute: only a notification (or the TTL) wakes it in time."""


def released_channel(kind: str, name: str) -> str:
    return f"lease:{{{name}}}:released" if kind == "redis-cluster" else f"lease:{name}:released"


async def test_release_wakes_a_waiter(store: StoreUnderTest, unique_name: str) -> None:
    holder_client = await dl.LeaseClient.connect(store.url)
    waiter_client = await dl.LeaseClient.connect(store.url)
    holder = await holder_client.acquire(unique_name)
    waiter = asyncio.create_task(waiter_client.acquire(unique_name, wait=50.0, backoff=SLOW_POLL))
    await asyncio.sleep(0.5)
    assert not waiter.done()
    await holder.release()
    released = time.monotonic()
    lease = await asyncio.wait_for(waiter, timeout=30)
    took = time.monotonic() - released
    assert took < 10, f"woken {took:.1f}s after the release: not by notification"
    assert lease.fencing_token > holder.fencing_token
    await lease.release()


async def test_force_release_wakes_a_waiter(store: StoreUnderTest, unique_name: str) -> None:
    client = await dl.LeaseClient.connect(store.url)
    holder = await client.acquire(unique_name)
    waiter = asyncio.create_task(client.acquire(unique_name, wait=50.0, backoff=SLOW_POLL))
    await asyncio.sleep(0.5)
    t = time.monotonic()
    assert await client.force_release(unique_name)
    lease = await asyncio.wait_for(waiter, timeout=30)
    assert time.monotonic() - t < 10
    assert holder.fencing_token < lease.fencing_token
    await lease.release()


async def test_several_waiters_one_winner_per_release(
    store: StoreUnderTest, unique_name: str
) -> None:
    clients = [await dl.LeaseClient.connect(store.url) for _ in range(3)]
    first = await clients[0].acquire(unique_name)
    spans: list[tuple[int, float, float]] = []

    async def waiter(i: int) -> None:
        c = clients[i % len(clients)]
        async with c.lease(unique_name, wait=100.0, backoff=SLOW_POLL) as lease:
            start = time.monotonic()
            await asyncio.sleep(0.2)
            spans.append((lease.fencing_token, start, time.monotonic()))

    tasks = [asyncio.create_task(waiter(i)) for i in range(5)]
    await asyncio.sleep(0.5)
    await first.release()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=100)
    spans.sort()
    assert len({token for token, _, _ in spans}) == 5
    for (_, _, end), (_, start, _) in itertools.pairwise(spans):
        assert end <= start, f"two holders at once: {spans}"


async def test_expiry_wakes_a_waiter(store: StoreUnderTest, unique_name: str) -> None:
    client = await dl.LeaseClient.connect(store.url)
    # A holder that stops renewing (as if it had crashed): nobody releases, the TTL runs out.
    stale = await client.acquire(unique_name, duration=1.5, auto_renew=False)
    t = time.monotonic()
    lease = await client.acquire(unique_name, wait=50.0, backoff=SLOW_POLL)
    took = time.monotonic() - t
    assert 1.2 <= took < 20, took
    assert stale.is_lost
    await lease.release()


async def test_wait_runs_out_with_the_holder(store: StoreUnderTest, unique_name: str) -> None:
    client = await dl.LeaseClient.connect(store.url)
    async with client.lease(unique_name, metadata={"instanceId": "holder-1"}):
        t = time.monotonic()
        with pytest.raises(dl.LeaseUnavailable) as info:
            async with client.lease(unique_name, wait=1.0):
                pass
        took = time.monotonic() - t
        assert 0.9 <= took < 15, took
        assert info.value.holder is not None
        assert info.value.holder.metadata == {"instanceId": "holder-1"}


def test_sync_wait_is_woken_by_a_release(store: StoreUnderTest, unique_name: str) -> None:
    client = dl.LeaseClient.connect_sync(store.url)
    holder = client.acquire_sync(unique_name)
    timer = threading.Timer(0.5, holder.release_sync)
    timer.start()
    t = time.monotonic()
    try:
        with client.lease(unique_name, wait=50.0, backoff=SLOW_POLL) as lease:
            assert time.monotonic() - t < 10
            assert lease.fencing_token > holder.fencing_token
    finally:
        timer.join()


def test_backoff_limit_caps_the_attempts(store: StoreUnderTest, unique_name: str) -> None:
    client = dl.LeaseClient.connect_sync(store.url)
    # Renewed, with at most a second left at any time: an unlimited waiter would wait a minute.
    with client.lease(unique_name, duration=1.0, renew_interval=0.25):
        t = time.monotonic()
        with pytest.raises(dl.LeaseUnavailable):
            client.acquire_sync(unique_name, wait=60.0, backoff=dl.Backoff.fixed(0.1).limit(3))
        assert time.monotonic() - t < 30


def test_client_backoff_is_the_default_of_its_calls(
    store: StoreUnderTest, unique_name: str
) -> None:
    limited = dl.LeaseClient.connect_sync(store.url, backoff=dl.Backoff.fixed(0.1).limit(1))
    with limited.lease(unique_name):
        t = time.monotonic()
        with pytest.raises(dl.LeaseUnavailable):
            limited.acquire_sync(unique_name, wait=60.0)
        assert time.monotonic() - t < 5, "one attempt only"


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: dl.Backoff.fixed(0.05), "below 0.1"),
        (lambda: dl.Backoff.exponential(0.2, 0.1), "max"),
        (lambda: dl.Backoff.fixed(1.0).limit(0), "at least 1"),
        (lambda: dl.Backoff.fixed(float("nan")), "finite"),
    ],
)
def test_bad_backoffs_are_refused(make: object, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        make()  # type: ignore[operator]


def test_backoff_must_be_a_backoff(redis_server: RedisServer, unique_name: str) -> None:
    client = dl.LeaseClient.connect_sync(redis_server.url)
    with pytest.raises(TypeError, match="Backoff"):
        client.acquire_sync(unique_name, backoff=(0.1, 1.0, None))  # type: ignore[arg-type]


def subscriptions(store: StoreUnderTest, request: pytest.FixtureRequest, name: str) -> int:
    """How many connections are subscribed to the release channel of ``name`` (0 for sqlite,
    postgres and etcd, which have no channel per name)."""
    channel = released_channel(store.kind, name)
    if store.kind == "redis":
        srv: RedisServer = request.getfixturevalue("redis_server")
        reply = srv.command("PUBSUB", "NUMSUB", channel)
        assert isinstance(reply, list)
        return int(reply[1])  # type: ignore[arg-type]
    if store.kind == "redis-cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        total = 0
        for node in cluster.nodes:
            reply = node.command("PUBSUB", "SHARDNUMSUB", channel)
            assert isinstance(reply, list)
            total += int(reply[1])  # type: ignore[arg-type]
        return total
    return 0


async def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())  # type: ignore[operator]


async def test_cancelled_waiter_leaves_no_lease_and_no_subscription(
    store: StoreUnderTest, unique_name: str, request: pytest.FixtureRequest
) -> None:
    client = await dl.LeaseClient.connect(store.url)
    holder = await client.acquire(unique_name)
    waiter = asyncio.create_task(client.acquire(unique_name, wait=None))
    # Subscriptions per name exist on Redis only: PostgreSQL's one LISTEN covers every name.
    if store.kind in ("redis", "redis-cluster"):
        assert await wait_until(lambda: subscriptions(store, request, unique_name) == 1)
    else:
        await asyncio.sleep(0.3)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await wait_until(lambda: subscriptions(store, request, unique_name) == 0)
    await holder.release()
    await asyncio.sleep(0.5)
    assert await client.inspect(unique_name) is None, "a cancelled waiter took the lease"
    # Cancelled right at the release (its attempt may be on the wire): whatever it won is given
    # back at once, so the lease is free again within moments, not after its 30 s TTL.
    for delay in (0.0, 0.0005, 0.001, 0.002, 0.005):
        holder = await client.acquire(unique_name, wait=10.0)
        waiter = asyncio.create_task(client.acquire(unique_name, wait=None))
        await asyncio.sleep(0.2)
        await holder.release()
        await asyncio.sleep(delay)
        waiter.cancel()
        try:
            lease = await waiter
        except asyncio.CancelledError:
            pass
        else:
            await lease.release()
        freed = time.monotonic() + 10
        while await client.inspect(unique_name) is not None:
            assert time.monotonic() < freed, f"cancel after {delay}s kept the lease"
            await asyncio.sleep(0.02)
    assert await wait_until(lambda: subscriptions(store, request, unique_name) == 0)


CTRL_C_WAITER = textwrap.dedent(
    """
    import sys, time
    import distributed_leasing as dl

    client = dl.LeaseClient.connect_sync(sys.argv[1])
    print("waiting", flush=True)
    try:
        client.acquire_sync(sys.argv[2], wait=None)
        print("acquired", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        time.sleep(1.0)  # the lease, had it been won, is released in the background meanwhile
    """
)


def test_ctrl_c_interrupts_a_sync_wait_and_leaves_nothing_behind(
    redis_server: RedisServer, unique_name: str
) -> None:
    client = dl.LeaseClient.connect_sync(redis_server.url)
    holder = client.acquire_sync(unique_name)
    proc = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_WAITER, redis_server.url, unique_name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "waiting"
        channel = released_channel("redis", unique_name)
        until = time.monotonic() + 20
        while int(redis_server.command("PUBSUB", "NUMSUB", channel)[1]) != 1:  # type: ignore[index,arg-type]
            assert time.monotonic() < until, "the waiter never subscribed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.strip() == "interrupted", (out, err)
    assert int(redis_server.command("PUBSUB", "NUMSUB", channel)[1]) == 0  # type: ignore[index,arg-type]
    holder.release_sync()
    time.sleep(0.3)
    assert client.inspect_sync(unique_name) is None


@pytest.mark.slow
async def test_hundred_waiters_each_acquire_once(store: StoreUnderTest, unique_name: str) -> None:
    clients = [await dl.LeaseClient.connect(store.url) for _ in range(4)]
    first = await clients[0].acquire(unique_name)
    tokens: list[int] = []
    waits: list[float] = []

    async def waiter(i: int) -> None:
        t = time.monotonic()
        async with clients[i % 4].lease(unique_name, wait=240.0) as lease:
            waits.append(time.monotonic() - t)
            tokens.append(lease.fencing_token)
            await asyncio.sleep(0.002)

    tasks = [asyncio.create_task(waiter(i)) for i in range(100)]
    await asyncio.sleep(0.3)
    await first.release()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=250)
    assert len(tokens) == 100, "every waiter acquired exactly once"
    assert len(set(tokens)) == 100
    assert min(tokens) > first.fencing_token
    # None starved: all were served well within their wait (not merely before its end).
    assert max(waits) < 120, max(waits)


def client_list(srv: RedisServer) -> list[dict[str, str]]:
    text = srv.command("CLIENT", "LIST")
    assert isinstance(text, (str, bytes))
    if isinstance(text, bytes):
        text = text.decode()
    rows = []
    for line in text.strip().splitlines():
        rows.append(dict(kv.split("=", 1) for kv in line.split(" ") if "=" in kv))
    return rows


async def test_all_waiters_share_one_connection(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = await dl.LeaseClient.connect(srv.url)
    names = [f"{unique_name}-{i}" for i in range(10)]
    holders = [await client.acquire(n) for n in names]
    waiters = [asyncio.create_task(client.acquire(names[i % 10], wait=60.0)) for i in range(50)]

    def subscribed() -> int:
        return sum(
            int(srv.command("PUBSUB", "NUMSUB", released_channel("redis", n))[1])  # type: ignore[index,arg-type]
            for n in names
        )

    assert await wait_until(lambda: subscribed() == 10), subscribed()
    # One subscription connection for all 50 waiters; besides it only the command connection
    # and the event loop's own (see test_inline.py). CLIENT LIST's own is ours.
    rows = [r for r in client_list(srv) if r.get("cmd") != "client|list"]
    pubsub = [r for r in rows if r.get("sub", "0") != "0"]
    assert len(pubsub) == 1 and pubsub[0]["sub"] == "10", rows
    assert len(rows) - len(pubsub) <= 2, rows
    during = {r["addr"] for r in rows}
    for h in holders:
        await h.release()
    # One winner per name; the other 40 keep waiting, then are cancelled.
    assert await wait_until(lambda: sum(w.done() for w in waiters) == 10, timeout=30)
    done = [w for w in waiters if w.done()]
    for w in waiters:
        if not w.done():
            w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    for w in done:
        await w.result().release()
    assert await wait_until(lambda: subscribed() == 0), subscribed()
    rows = [r for r in client_list(srv) if r.get("cmd") != "client|list"]
    assert {r["addr"] for r in rows} <= during, rows


async def test_a_dropped_subscription_connection_recovers(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    srv = fresh_redis_server
    client = await dl.LeaseClient.connect(srv.url)
    holder = await client.acquire(unique_name)
    waiter = asyncio.create_task(client.acquire(unique_name, wait=60.0, backoff=SLOW_POLL))
    channel = released_channel("redis", unique_name)

    def numsub() -> int:
        return int(srv.command("PUBSUB", "NUMSUB", channel)[1])  # type: ignore[index,arg-type]

    assert await wait_until(lambda: numsub() == 1)
    victim = [r for r in client_list(srv) if r.get("sub", "0") != "0"]
    assert len(victim) == 1
    srv.command("CLIENT", "KILL", "ID", victim[0]["id"])
    # Resubscribed on a new connection, by itself.
    assert await wait_until(lambda: numsub() == 1, timeout=20), "not resubscribed"
    assert not waiter.done()
    t = time.monotonic()
    await holder.release()
    lease = await asyncio.wait_for(waiter, timeout=30)
    assert time.monotonic() - t < 10, "the release was not notified after the reconnect"
    await lease.release()


CROSS_PROCESS_HOLDER = textwrap.dedent(
    """
    import sys, time
    import distributed_leasing as dl

    client = dl.LeaseClient.connect_sync(sys.argv[1])
    lease = client.acquire_sync(sys.argv[2])
    print("held", flush=True)
    sys.stdin.readline()
    lease.release_sync()
    print("released", flush=True)
    """
)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_release_in_another_process_wakes_a_waiter(
    kind: str, tmp_path: object, request: pytest.FixtureRequest, unique_name: str
) -> None:
    """Redis notifies across processes; SQLite polls across processes (default backoff: at
    least every second), so both wake well before the holder's 30 s TTL."""
    if kind == "redis":
        url = request.getfixturevalue("redis_server").url
        backoff = SLOW_POLL
    else:
        url = f"sqlite://{tmp_path}/leases.db"
        backoff = None
    holder = subprocess.Popen(
        [sys.executable, "-c", CROSS_PROCESS_HOLDER, url, unique_name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        client = dl.LeaseClient.connect_sync(url)
        result: list[float] = []

        def wait() -> None:
            with client.lease(unique_name, wait=50.0, backoff=backoff):
                result.append(time.monotonic())

        t = threading.Thread(target=wait)
        t.start()
        time.sleep(1.0)
        assert not result
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        released = time.monotonic()
        t.join(60)
        assert result, "the waiter never acquired"
        assert result[0] - released < 10, result[0] - released
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate(timeout=30)
    assert holder.returncode in (0, -9)


def test_waiting_does_not_leak_threads_or_fail_at_exit(
    redis_server: RedisServer, unique_name: str
) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        import distributed_leasing as dl

        async def main():
            c = await dl.LeaseClient.connect(sys.argv[1])
            h = await c.acquire(sys.argv[2])
            w = asyncio.create_task(c.acquire(sys.argv[2], wait=None))
            await asyncio.sleep(0.2)
            await h.release()
            lease = await w
            # exit while a subscription connection is open and a lease is held
        asyncio.run(main())
        """
    )
    for i in range(5):
        r = subprocess.run(
            [sys.executable, "-c", script, redis_server.url, f"{unique_name}-{i}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr


async def test_without_channel_rights_waiting_falls_back_to_polling(
    redis_server_factory: Callable[..., RedisServer],
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A user that may not use pub/sub channels (Redis 7's default for new ACL users) still
    releases (publishing is best effort) and still waits (by polling, with a warning)."""
    srv = redis_server_factory(acl_users={"bob": ["on", ">bob-pw", "~*", "resetchannels", "+@all"]})
    url = srv.url_for("bob", "bob-pw")
    caplog.set_level(logging.WARNING, logger="distributed_leasing")
    dl.refresh_logging()
    holder_client = await dl.LeaseClient.connect(url)
    waiter_client = await dl.LeaseClient.connect(url)
    holder = await holder_client.acquire(unique_name)
    waiter = asyncio.create_task(waiter_client.acquire(unique_name, wait=50.0))
    await asyncio.sleep(1.0)
    assert await holder.release(), "the release itself must not fail"
    t = time.monotonic()
    lease = await asyncio.wait_for(waiter, timeout=30)
    assert time.monotonic() - t < 10, "polling (at most every second) should find it"
    await lease.release()
    for _ in range(100):
        if any("release notifications" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.05)
    warnings = [r for r in caplog.records if "release notifications" in r.getMessage()]
    assert warnings and warnings[0].levelno == logging.WARNING
    assert "bob-pw" not in warnings[0].getMessage()


async def test_release_wakes_a_waiter_over_tls(
    tls_redis_server: RedisServer, unique_name: str
) -> None:
    """The subscription connection uses the client's TLS settings (here: a private CA)."""
    srv = tls_redis_server
    holder_client = await dl.LeaseClient.connect(srv.url, ca_file=srv.ca_file)
    waiter_client = await dl.LeaseClient.connect(srv.url, ca_file=srv.ca_file)
    holder = await holder_client.acquire(unique_name)
    waiter = asyncio.create_task(waiter_client.acquire(unique_name, wait=50.0, backoff=SLOW_POLL))
    channel = released_channel("redis", unique_name)
    assert await wait_until(
        lambda: int(srv.command("PUBSUB", "NUMSUB", channel)[1]) == 1,  # type: ignore[index,arg-type]
        timeout=20,
    ), "the waiter did not subscribe over TLS"
    await holder.release()
    t = time.monotonic()
    lease = await asyncio.wait_for(waiter, timeout=30)
    assert time.monotonic() - t < 10
    await lease.release()
