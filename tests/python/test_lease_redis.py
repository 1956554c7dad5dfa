"""The lease engine on a real Redis: the sample's data model, one-round-trip refusals, loss,
fencing, processes that exit cleanly, and fork."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import distributed_leasing as dl
import pytest
from redis_servers import RedisServer

SAMPLE_META = {
    "instanceId": "us-east-1",
    "region": "us-east",
    "hostname": "MACHINE-NAME",
    "startTime": "2025-12-25T21:00:00Z",
}


def hgetall(srv: RedisServer, key: str) -> dict[str, str]:
    out = srv.cli("HGETALL", key)
    lines = out.splitlines()
    return dict(zip(lines[0::2], lines[1::2], strict=True))


async def test_hash_has_exactly_the_samples_fields_and_ttl(
    redis_server: RedisServer, unique_name: str
) -> None:
    client = await dl.LeaseClient.connect(redis_server.url)
    async with client.lease(unique_name, metadata=SAMPLE_META) as lease:
        fields = hgetall(redis_server, f"lease:{unique_name}")
        assert set(fields) == {
            "leaseId",
            "acquiredAt",
            "fencingToken",
            "meta_instanceId",
            "meta_region",
            "meta_hostname",
            "meta_startTime",
        }
        assert fields["leaseId"] == lease.lease_id
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields["acquiredAt"])
        assert fields["fencingToken"] == str(lease.fencing_token)
        assert fields["meta_instanceId"] == "us-east-1"
        assert fields["meta_startTime"] == "2025-12-25T21:00:00Z"
        ttl = int(redis_server.cli("TTL", f"lease:{unique_name}").strip())
        assert 28 <= ttl <= 30
        assert redis_server.cli("TYPE", f"lease:{unique_name}:fence").strip() == "string"
        assert lease.acquired_at.isoformat(timespec="milliseconds").startswith(
            fields["acquiredAt"][:-1]
        )
    assert redis_server.cli("EXISTS", f"lease:{unique_name}").strip() == "0"


class Monitor:
    """Records what clients send (MONITOR), from a thread, until stopped."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"MONITOR\r\n")
        self.lines: list[str] = []
        self._buf = b""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while chunk := self.sock.recv(65536):
                self._buf += chunk
                *done, self._buf = self._buf.split(b"\r\n")
                self.lines += [d.decode(errors="replace") for d in done]
        except OSError:
            pass

    def stop(self) -> list[str]:
        time.sleep(0.3)
        self.sock.close()
        self.thread.join(5)
        return self.lines


COMPETITOR = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import distributed_leasing as dl

    async def main() -> None:
        url, name, me, start_at = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
        client = await dl.LeaseClient.connect(url)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        try:
            async with client.lease(name, metadata={"instanceId": me, "region": me + "-region"}):
                print(json.dumps({"won": True}), flush=True)
                await asyncio.sleep(1.5)
        except dl.LeaseUnavailable as e:
            assert e.holder is not None
            print(json.dumps({"won": False, "holder": e.holder.metadata}), flush=True)

    asyncio.run(main())
    """
)


def test_two_processes_one_winner_holder_from_the_same_round_trip(
    redis_server: RedisServer, unique_name: str
) -> None:
    # Load the scripts first, so that each competitor sends exactly one command for the lease.
    warm = dl.LeaseClient.connect_sync(redis_server.url)
    warm.acquire_sync(unique_name + "-warm").release_sync()
    monitor = Monitor(redis_server.port)
    start_at = time.time() + 2.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", COMPETITOR, redis_server.url, unique_name, me, str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in ("alpha", "beta")
    ]
    results = {}
    for me, p in zip(("alpha", "beta"), procs, strict=True):
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results[me] = json.loads(out.strip().splitlines()[-1])
    lines = monitor.stop()
    winners = [me for me, r in results.items() if r["won"]]
    assert len(winners) == 1, results
    loser = "beta" if winners == ["alpha"] else "alpha"
    assert results[loser]["holder"] == {
        "instanceId": winners[0],
        "region": winners[0] + "-region",
    }
    # Client commands (not the script's own, which MONITOR marks "lua") naming the lease key:
    # one acquire each, then the winner's release. The loser learnt the holder with no second
    # query.
    key = f'"lease:{unique_name}"'
    sent = [ln for ln in lines if key in ln and "lua]" not in ln]
    assert len(sent) == 3, sent
    assert sum(1 for ln in sent if '"EVALSHA"' in ln) == 3


async def test_deleting_the_key_raises_lease_lost_from_async_with(
    redis_server: RedisServer, unique_name: str
) -> None:
    client = await dl.LeaseClient.connect(redis_server.url)
    reached_end = False
    started = time.monotonic()
    with pytest.raises(dl.LeaseLost) as info:
        async with client.lease(unique_name, duration=5.0, renew_interval=0.5):
            redis_server.cli("DEL", f"lease:{unique_name}")
            await asyncio.sleep(30)
            reached_end = True
    assert not reached_end
    assert info.value.reason == "missing"
    assert time.monotonic() - started < 20  # generous: one renew interval is 0.5 s
    assert isinstance(info.value.__cause__, asyncio.CancelledError)


async def test_on_lost_ignore_flips_the_flag_and_wait_lost_returns(
    redis_server: RedisServer, unique_name: str
) -> None:
    client = await dl.LeaseClient.connect(redis_server.url)
    async with client.lease(
        unique_name, duration=5.0, renew_interval=0.5, on_lost="ignore"
    ) as lease:
        assert not lease.is_lost
        redis_server.cli("DEL", f"lease:{unique_name}")
        reason = await asyncio.wait_for(lease.wait_lost(), timeout=20)
        assert reason == "missing"
        assert lease.is_lost
        assert lease.lost_reason == "missing"
        assert lease.expires_in == 0.0
    # Leaving the block after a loss with on_lost="ignore" raises nothing.


async def test_foreign_cancellation_still_propagates_and_releases(
    redis_server: RedisServer, unique_name: str
) -> None:
    client = await dl.LeaseClient.connect(redis_server.url)
    entered = asyncio.Event()

    async def body() -> None:
        async with client.lease(unique_name):
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(body())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await client.inspect(unique_name) is None


async def test_a_cancellation_during_the_exits_release_does_not_abort_it(
    fresh_redis_server: RedisServer, unique_name: str
) -> None:
    # The release at exit is one request: it runs to its end even when the task is cancelled
    # while awaiting it (src/python/executor.rs), on the loop's own connection or the shared one.
    srv = fresh_redis_server
    client = await dl.LeaseClient.connect(srv.url, operation_timeout=20.0)
    for _ in range(3):  # the loop's own connection opens in the background on first use
        async with client.lease(unique_name):
            pass
    leaving = asyncio.Event()
    held: list[dl.Lease] = []

    async def body() -> None:
        async with client.lease(unique_name) as lease:
            held.append(lease)
            srv.pause()  # the release at exit now waits for the server
            leaving.set()

    task = asyncio.create_task(body())
    await leaving.wait()
    await asyncio.sleep(0.2)  # the task is awaiting its release
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    srv.resume()
    lease = held[0]
    deadline = time.monotonic() + 15
    while not lease.is_released and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert lease.is_released and not lease.is_lost
    assert await client.inspect(unique_name) is None
    await client.close()


async def test_fencing_tokens_increase_across_acquire_release_and_expiry(
    redis_server: RedisServer, unique_name: str
) -> None:
    client = await dl.LeaseClient.connect(redis_server.url)
    tokens = []
    async with client.lease(unique_name) as a:
        tokens.append(a.fencing_token)
    b = await client.acquire(unique_name, duration=0.3, auto_renew=False)
    tokens.append(b.fencing_token)
    await asyncio.sleep(1.0)
    assert b.is_lost
    async with client.lease(unique_name) as c:
        tokens.append(c.fencing_token)
    assert tokens == sorted(set(tokens)), tokens
    assert len(tokens) == 3


def test_sync_with_and_unavailable(redis_server: RedisServer, unique_name: str) -> None:
    client = dl.LeaseClient.connect_sync(redis_server.url)
    with client.lease(unique_name, metadata={"instanceId": "sync"}) as lease:
        assert lease.renewals == 0
        with pytest.raises(dl.LeaseUnavailable) as info, client.lease(unique_name):
            pass
        assert info.value.holder is not None
        assert info.value.holder.metadata == {"instanceId": "sync"}
        assert info.value.holder.lease_id == lease.lease_id
    assert client.inspect_sync(unique_name) is None


async def test_wait_acquires_after_the_holder_releases(
    redis_server: RedisServer, unique_name: str
) -> None:
    client = await dl.LeaseClient.connect(redis_server.url)
    holder = await client.acquire(unique_name)

    async def release_soon() -> None:
        await asyncio.sleep(0.5)
        await holder.release()

    releaser = asyncio.create_task(release_soon())
    async with client.lease(unique_name, wait=20.0) as lease:
        assert lease.fencing_token > holder.fencing_token
    await releaser


SHORT_PROCESS = textwrap.dedent(
    """
    import asyncio, sys
    import distributed_leasing as dl

    async def main() -> None:
        client = await dl.LeaseClient.connect(sys.argv[1])
        async with client.lease(sys.argv[2]) as lease:
            assert lease.fencing_token > 0
        if sys.argv[3] == "keep":
            # End with a lease still held and a renewal task alive: exit must still be clean.
            await client.acquire(sys.argv[2] + "-kept", duration=1.0)

    asyncio.run(main())
    """
)


def test_fifty_short_processes_exit_cleanly(redis_server: RedisServer, unique_name: str) -> None:
    failures = []
    for i in range(50):
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                SHORT_PROCESS,
                redis_server.url,
                f"{unique_name}-{i}",
                "keep" if i % 5 == 0 else "release",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode != 0 or r.stderr.strip():
            failures.append((i, r.returncode, r.stderr[-500:]))
    assert failures == []


FORK_CHILD = textwrap.dedent(
    """
    import os, sys
    import distributed_leasing as dl

    client = dl.LeaseClient.connect_sync(sys.argv[1])
    client.acquire_sync(sys.argv[2]).release_sync()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            client.inspect_sync(sys.argv[2])
            code = 10  # must not work silently on the parent's connections
        except dl.BackendError as e:
            if "fork" not in str(e):
                code = 11
        # A client made in the child works.
        fresh = dl.LeaseClient.connect_sync(sys.argv[1])
        with fresh.lease(sys.argv[2] + "-child") as lease:
            if lease.fencing_token < 1:
                code = 12
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status))
    with client.lease(sys.argv[2]) as lease:
        print("parent ok", lease.fencing_token)
    """
)


def test_fork_child_refuses_parent_client_and_can_make_its_own(
    redis_server: RedisServer, unique_name: str
) -> None:
    r = subprocess.run(
        [sys.executable, "-c", FORK_CHILD, redis_server.url, unique_name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[0] == "0", r.stdout
    assert "parent ok" in r.stdout


FORK_HOLDER = textwrap.dedent(
    """
    import os, sys
    import distributed_leasing as dl

    client = dl.LeaseClient.connect_sync(sys.argv[1])
    other_client = dl.LeaseClient.connect_sync(sys.argv[1])
    lease = client.try_acquire_sync(sys.argv[2], duration=10.0)
    assert lease is not None
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(go_r, 1)
        seen = f"{lease.is_lost} {lease.expires_in} {lease.lost_reason}"
        os.write(out_w, seen.encode())
        os._exit(0)
    print("parent before", lease.is_lost, lease.expires_in > 5)
    lease.release_sync()
    other = other_client.try_acquire_sync(sys.argv[2], duration=10.0)
    assert other is not None
    os.write(go_w, b"x")
    print("child", os.read(out_r, 200).decode())
    os.waitpid(pid, 0)
    other.release_sync()
    """
)


def test_a_forked_child_never_believes_it_holds_its_parents_lease(
    redis_server: RedisServer, unique_name: str
) -> None:
    """A child forked while its parent holds a lease inherits the handle: its methods refuse
    (the client is the parent's), and its properties read it as lost, even after the parent
    released it and another process took it."""
    r = subprocess.run(
        [sys.executable, "-c", FORK_HOLDER, redis_server.url, unique_name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "parent before False True", r.stdout
    assert lines[1] == "child True 0.0 client_closed", r.stdout


ABANDONED_CONTEXT = textwrap.dedent(
    """
    import asyncio, gc, sys, time
    import distributed_leasing as dl

    url, name, on_lost = sys.argv[1:4]
    client = dl.LeaseClient.connect_sync(url)

    entered = []

    async def holder():
        async with client.lease(name, duration=2.0, on_lost=on_lost):
            entered.append(True)
            await asyncio.sleep(3600)

    async def main():
        asyncio.get_running_loop().create_task(holder())
        for _ in range(200):
            if entered:
                break
            await asyncio.sleep(0.05)
        assert entered, "the body was never entered"

    loop = asyncio.new_event_loop()
    loop.run_until_complete(main())
    loop.close()  # the holder task is left pending ("Task was destroyed but it is pending!")
    del loop
    gc.collect()
    print("ready", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("on_lost", ["ignore", "cancel"])
def test_a_lease_context_abandoned_with_its_loop_is_given_back(
    redis_server: RedisServer, unique_name: str, on_lost: str
) -> None:
    """A task inside ``async with client.lease(...)`` left pending when its loop is closed: the
    context, its task and its lease are garbage, so the lease is released (in the background),
    not renewed for as long as the process lives. With ``on_lost="cancel"`` (the default) the
    context's loss hook is kept by the Rust lease, where Python's collector cannot see it: it
    must not keep the context alive. A plain child process (pytest keeps frames alive)."""
    child = subprocess.Popen(
        [sys.executable, "-c", ABANDONED_CONTEXT, redis_server.url, unique_name, on_lost],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        key = f"lease:{unique_name}"
        until = time.monotonic() + 20  # a 2 s lease, renewed every 2/3 s while a handle lives
        while redis_server.cli("EXISTS", key).strip() != "0":
            assert time.monotonic() < until, (
                f"on_lost={on_lost!r}: the abandoned context's lease is still held and renewed"
                f" (pttl {redis_server.cli('PTTL', key).strip()} ms) with no handle reachable"
            )
            time.sleep(0.1)
        assert child.poll() is None  # gone while the process lives on
    finally:
        child.kill()
        child.wait(timeout=30)


# Keeps the server busy for ARGV[1] seconds, so that a request sent meanwhile waits for its reply.
BUSY_SCRIPT = (
    "local t=redis.call('TIME'); local s=t[1]+t[2]/1e6; "
    "while true do local n=redis.call('TIME'); if n[1]+n[2]/1e6-s > tonumber(ARGV[1]) "
    "then break end end return 1"
)


def wait_until_free(client: dl.LeaseClient, name: str, what: str) -> None:
    """Returns once nobody holds ``name``; fails after 20 s, naming the holder and its TTL."""
    until = time.monotonic() + 20
    while (holder := client.inspect_sync(name)) is not None:
        assert time.monotonic() < until, (
            f"lease {holder.lease_id}, {what} with no handle anywhere (ttl {holder.ttl} s)"
        )
        time.sleep(0.1)


def test_an_acquire_won_after_its_event_loop_ended_is_given_back(
    redis_server: RedisServer, unique_name: str
) -> None:
    """``asyncio.run`` returns while a ``try_acquire`` is on the wire: its task is cancelled and
    the loop closed, then the server grants the lease. Nobody holds a handle, so the lease is
    released, not queued for a loop that never runs again (and renewed meanwhile)."""
    c = dl.LeaseClient.connect_sync(redis_server.url)
    try:
        warm = c.try_acquire_sync(unique_name + "-warm-up", duration=2.0)  # loads the scripts
        assert warm is not None
        warm.release_sync()

        async def main() -> None:
            asyncio.get_running_loop().create_task(c.try_acquire(unique_name, duration=2.0))
            await asyncio.sleep(0.1)  # on the wire; returning cancels it

        busy = threading.Thread(target=lambda: redis_server.cli("EVAL", BUSY_SCRIPT, "0", "0.5"))
        busy.start()
        time.sleep(0.05)
        asyncio.run(main())
        busy.join()
        # A 2 s lease: renewed every 2/3 s while a handle lives.
        wait_until_free(c, unique_name, "won by an acquire whose loop ended, is still renewed")
    finally:
        c.close_sync()


class _Interrupted(Exception):
    pass


def _raise_interrupted(signum: int, frame: object) -> None:
    raise _Interrupted


def test_an_interrupted_blocking_acquire_gives_back_what_it_won(
    redis_server: RedisServer, unique_name: str
) -> None:
    """A blocking acquire on the thread's own connection, interrupted (Ctrl-C, a SIGALRM
    timeout that raises) after its request was sent: the server grants the lease to nobody
    holding a handle, and it is given back, not left held for its whole duration."""
    previous = signal.signal(signal.SIGALRM, _raise_interrupted)
    c = dl.LeaseClient.connect_sync(redis_server.url)
    try:
        c.inspect_sync(unique_name + "-warm-up")  # opens this thread's own connection
        warm = c.try_acquire_sync(unique_name + "-warm-up", duration=10.0)  # loads the scripts
        assert warm is not None
        warm.release_sync()
        busy = threading.Thread(target=lambda: redis_server.cli("EVAL", BUSY_SCRIPT, "0", "1.0"))
        busy.start()
        time.sleep(0.1)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(_Interrupted):
            c.try_acquire_sync(unique_name, duration=30.0)
        busy.join()
        # Well under its 30 s duration.
        wait_until_free(c, unique_name, "won by the interrupted acquire, is still held")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        c.close_sync()


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"duration": float("nan")}, ValueError, "duration=NaN"),
        ({"duration": -1.0}, ValueError, "duration=-1 "),
        ({"duration": float("inf")}, ValueError, "duration=inf"),
        ({"duration": 0.0}, ValueError, "out of range"),
        ({"duration": 1e300}, ValueError, "too large"),
        ({"duration": 10.0, "renew_interval": 10.0}, ValueError, "renew interval"),
        ({"wait": -1.0}, ValueError, "wait=-1 "),
        ({"metadata": {"k": 1}}, TypeError, "must be str"),
        ({"metadata": {1: "v"}}, TypeError, "keys must be str"),
        ({"on_lost": "explode"}, ValueError, "on_lost"),
    ],
)
async def test_bad_arguments_are_refused_clearly(
    redis_server: RedisServer,
    unique_name: str,
    kwargs: dict[str, object],
    error: type[Exception],
    needle: str,
) -> None:
    client = await dl.LeaseClient.connect(redis_server.url)
    with pytest.raises(error, match=re.escape(needle)):
        async with client.lease(unique_name, **kwargs):  # type: ignore[arg-type]
            pass
    assert await client.inspect(unique_name) is None


@pytest.mark.parametrize("name", ["", "x" * 1025, "a:fence", "bad\nname"])
def test_bad_names_are_refused(redis_server: RedisServer, name: str) -> None:
    client = dl.LeaseClient.connect_sync(redis_server.url)
    with pytest.raises(ValueError, match="lease name"):
        client.acquire_sync(name)


def test_wrong_type_key_is_a_clear_error_and_left_untouched(
    redis_server: RedisServer, unique_name: str
) -> None:
    redis_server.cli("SET", f"lease:{unique_name}", "someone else's data")
    client = dl.LeaseClient.connect_sync(redis_server.url)
    with pytest.raises(dl.BackendError) as info:
        client.acquire_sync(unique_name)
    assert info.value.kind == "wrong_type"
    assert f"lease:{unique_name}" in str(info.value)
    assert redis_server.cli("GET", f"lease:{unique_name}").strip() == "someone else's data"
    assert redis_server.cli("EXISTS", f"lease:{unique_name}:fence").strip() == "0"


# -- foreign data over a held lease, and the .NET origin's orphans (issue 22) ----------------


@pytest.mark.parametrize("foreign", ["string", "hash_without_lease_id"])
@pytest.mark.parametrize("leases", [1, 4])
async def test_a_held_lease_overwritten_by_foreign_data_is_missing_at_its_first_renewal(
    redis_server: RedisServer, unique_name: str, foreign: str, leases: int
) -> None:
    # Alone (the one-lease renewal script) and among others renewed with it (the batch script).
    client = await dl.LeaseClient.connect(redis_server.url)
    held = [await client.acquire(f"{unique_name}-{i}", duration=5.0, renew_interval=0.3)
            for i in range(leases)]  # fmt: skip
    key = f"lease:{held[0].name}"
    if foreign == "string":
        redis_server.cli("SET", key, "someone else's data")
    else:
        redis_server.cli("DEL", key)
        redis_server.cli("HSET", key, "owner", "app")
    # Before: five failed renewals, then `expired` at the deadline (5 s).
    reason = await asyncio.wait_for(held[0].wait_lost(), timeout=20)
    assert reason == "missing"
    assert held[0].renewal_failures == 0
    # Someone else's data is left as it is; the other leases keep renewing.
    if foreign == "string":
        assert redis_server.cli("GET", key).strip() == "someone else's data"
    else:
        assert hgetall(redis_server, key) == {"owner": "app"}
    for lease in held[1:]:
        assert not lease.is_lost and lease.renewal_failures == 0
        assert await lease.release() is True
    redis_server.cli("DEL", key)
    await client.close()


ORPHAN_META = {"instanceId": "dotnet-1", "region": "eu-west"}


class RawRedis:
    """A server or cluster seen through ``redis-cli``, with the key of a lease name."""

    def __init__(self, url: str, node: RedisServer, cluster: bool) -> None:
        self.url, self.node, self.cluster = url, node, cluster

    def key(self, name: str) -> str:
        return f"lease:{{{name}}}" if self.cluster else f"lease:{name}"

    def cli(self, *args: str) -> str:
        cmd = [*self.node.cli_args(), *(["-c"] if self.cluster else []), *args]
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=True
        )
        return out.stdout.strip()

    def hgetall(self, name: str) -> dict[str, str]:
        lines = self.cli("HGETALL", self.key(name)).splitlines()
        return dict(zip(lines[0::2], lines[1::2], strict=True))

    def write_orphan(self, name: str) -> None:
        """What the .NET origin leaves when its key expired before its second round trip (the
        ``meta_*`` fields): a hash of ``meta_*`` fields only, with no TTL."""
        pairs = [x for k, v in ORPHAN_META.items() for x in (f"meta_{k}", v)]
        self.cli("HSET", self.key(name), *pairs)


@pytest.fixture(params=["redis", "redis-cluster"])
def raw(request: pytest.FixtureRequest) -> RawRedis:
    if request.param == "redis":
        srv: RedisServer = request.getfixturevalue("redis_server")
        return RawRedis(srv.url, srv, cluster=False)
    cluster = request.getfixturevalue("redis_cluster")
    return RawRedis(cluster.url, cluster.nodes[0], cluster=True)


def test_an_orphan_of_the_dotnet_origin_is_shown_and_taken_over(
    raw: RawRedis, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="distributed_leasing")
    dl.refresh_logging()
    raw.write_orphan(unique_name)
    client = dl.LeaseClient.connect_sync(raw.url)
    # Shown as what it is: nobody holds it, and its metadata says who left it.
    info = client.inspect_sync(unique_name)
    assert info is not None and info.orphan
    assert (info.lease_id, info.fencing_token, info.acquired_at, info.ttl) == ("", None, None, None)
    assert info.metadata == ORPHAN_META
    assert client.list_sync(unique_name) == [info]
    # Before: refused as "not a lease ... choose another lease name", for ever.
    lease = client.try_acquire_sync(unique_name, metadata={"instanceId": "py-1"})
    assert lease is not None
    # Taken over whole: none of the orphan's fields is left in the new lease's hash.
    assert raw.hgetall(unique_name) == {
        "leaseId": lease.lease_id,
        "acquiredAt": raw.hgetall(unique_name)["acquiredAt"],
        "fencingToken": str(lease.fencing_token),
        "meta_instanceId": "py-1",
    }
    assert int(raw.cli("PTTL", raw.key(unique_name))) > 0
    now = client.inspect_sync(unique_name)
    assert now is not None and not now.orphan and now.lease_id == lease.lease_id

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "orphan" in r.getMessage()]

    deadline = time.monotonic() + 10  # records reach Python from a Rust thread
    while not warnings() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(warnings()) == 1, warnings()
    assert raw.key(unique_name) in warnings()[0] and "dotnet-1" in warnings()[0]
    assert lease.release_sync() is True
    client.close_sync()


def test_a_forced_release_removes_an_orphan_and_only_the_orphan_shown(
    raw: RawRedis, unique_name: str
) -> None:
    client = dl.LeaseClient.connect_sync(raw.url)
    raw.write_orphan(unique_name)
    assert client.force_release_sync(unique_name) is True
    assert raw.cli("EXISTS", raw.key(unique_name)) == "0"
    # Shown an orphan (its lease id is empty): removed if it is still that orphan...
    raw.write_orphan(unique_name)
    shown = client.inspect_sync(unique_name)
    assert shown is not None and shown.orphan
    assert client.force_release_sync(unique_name, lease_id=shown.lease_id) is True
    assert raw.cli("EXISTS", raw.key(unique_name)) == "0"
    # ... never a lease that took it over meanwhile.
    raw.write_orphan(unique_name)
    lease = client.try_acquire_sync(unique_name)
    assert lease is not None
    with pytest.raises(dl.LeaseUnavailable) as info:
        client.force_release_sync(unique_name, lease_id=shown.lease_id)
    assert info.value.holder is not None and info.value.holder.lease_id == lease.lease_id
    assert "not by the orphan (no lease id) that was shown" in str(info.value)
    assert lease.release_sync() is True
    client.close_sync()


@pytest.mark.parametrize(
    "hash_",
    [
        pytest.param({"meta_instanceId": "dotnet-1", "owner": "app"}, id="meta_and_another_field"),
        pytest.param({"meta_instanceId": "dotnet-1", "meta_region": "eu"}, id="meta_with_a_ttl"),
        pytest.param({"leaseId": "abc", "meta_region": "eu"}, id="lease_id_without_acquired_at"),
    ],
)
def test_any_other_hash_is_still_refused_and_left_untouched(
    raw: RawRedis, unique_name: str, hash_: dict[str, str]
) -> None:
    key = raw.key(unique_name)
    raw.cli("HSET", key, *(x for kv in hash_.items() for x in kv))
    if "owner" not in hash_ and "leaseId" not in hash_:
        raw.cli("EXPIRE", key, "300")
    ttl_before = int(raw.cli("TTL", key))
    client = dl.LeaseClient.connect_sync(raw.url)
    for call in (
        lambda: client.try_acquire_sync(unique_name),
        lambda: client.inspect_sync(unique_name),
        lambda: client.force_release_sync(unique_name),
        lambda: client.force_release_sync(unique_name, lease_id=""),
    ):
        with pytest.raises(dl.BackendError) as info:
            call()
        assert info.value.kind == "wrong_type" and "not a lease" in str(info.value)
    assert client.list_sync(unique_name) == []
    assert raw.hgetall(unique_name) == hash_
    assert int(raw.cli("TTL", key)) in (ttl_before, ttl_before - 1)
    assert raw.cli("EXISTS", f"{key}:fence") == "0"
    raw.cli("DEL", key)
    client.close_sync()


@pytest.fixture
def unreachable_url() -> Iterator[str]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    yield f"redis://127.0.0.1:{port}"


def test_unreachable_server_is_a_backend_error(unreachable_url: str) -> None:
    with pytest.raises(dl.BackendError) as info:
        dl.LeaseClient.connect_sync(unreachable_url, connect_timeout=2.0)
    assert info.value.kind == "unreachable"
    assert "127.0.0.1" in str(info.value)


def test_wrong_password_says_authentication_failed_without_the_secret(
    redis_server_factory: object,
) -> None:
    secret = "s3cr3t-Pa55word-9f1c"
    srv = redis_server_factory(acl_users={"alice": secret})  # type: ignore[operator]
    with pytest.raises(dl.BackendError) as info:
        dl.LeaseClient.connect_sync(srv.url_for("alice", "wrong-" + secret))
    assert info.value.kind == "auth"
    assert "authentication" in str(info.value)
    assert secret not in str(info.value) and secret not in repr(info.value)
    client = dl.LeaseClient.connect_sync(srv.url_for("alice", secret))
    assert secret not in repr(client)
    with client.lease("acl-lease") as lease:
        assert secret not in repr(lease)
