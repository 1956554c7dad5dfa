"""PostgreSQL killed and restarted while a lease is held (issue 16), on a real server process.

The server is stopped with a fast shutdown (SIGINT: sessions ended, checkpoint, exit) or crashed
(SIGKILL to the postmaster and every process it started; the next start replays the write-ahead
log), then started again on the same port and data, either at once or after more than the
lease's duration. Meanwhile a second client tries to take the lease every 50 ms. What must hold:

- never two holders: whenever the second client wins, the first holder's own view already says
  the lease is over (lost, or its deadline passed);
- the holder either keeps the lease (its renewals resume on fresh connections) or learns that it
  lost it; down for longer than the lease, it must have lost it (``expired``);
- the fencing counter survives: every token after the restart is above every token before it
  (never 1 again, as on a Redis without persistence).

Also a crash right after a release, which commits asynchronously and so may be lost: never two
holders, and a durable acquire made after the release keeps the release too.

The lease's own process is the test's; the server is a real ``postgres``. Figures (how long the
server was down, whether the lease was kept) are printed as ``FIGURE`` lines.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import distributed_leasing as dl
import pytest
from faults_util import report
from postgres_server import PostgresServer, postgres_bin_dir


@pytest.fixture
def fresh_postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for one test: free to kill and restart. Stopped at teardown."""
    if postgres_bin_dir() is None:
        pytest.fail("PostgreSQL binaries not found (apt-get install postgresql)")
    with PostgresServer() as srv:
        yield srv


async def connect(url: str) -> dl.LeaseClient:
    return await dl.LeaseClient.connect(url, operation_timeout=2.0, connect_timeout=2.0)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["fast-shutdown", "SIGKILL"])
@pytest.mark.parametrize(
    ("duration", "down"),
    [(8.0, 0.0), (2.0, 4.0)],
    ids=["restarted-at-once", "down-past-the-lease"],
)
async def test_postgres_restarted_while_a_lease_is_held(
    fresh_postgres_server: PostgresServer,
    unique_name: str,
    sig: signal.Signals,
    duration: float,
    down: float,
) -> None:
    srv = fresh_postgres_server
    holder_client = await connect(srv.url)
    other = await connect(srv.url)
    name = unique_name
    # A few tokens before the one held, so that "restarted at 1" cannot pass by chance.
    for _ in range(3):
        assert await (await holder_client.acquire(name)).release()
    lease = await holder_client.acquire(name, duration=duration, renew_interval=0.5)
    assert lease.fencing_token == 4

    # The second client: tries every 50 ms; when it wins, notes whether the holder still
    # believed it held the lease at that moment (two holders), and keeps the lease.
    won: list[tuple[dl.Lease, bool]] = []
    errors = 0

    async def contend() -> None:
        nonlocal errors
        while True:
            try:
                got = await other.try_acquire(name, duration=30.0)
            except dl.BackendError:
                errors += 1  # the server is down or starting up
                got = None
            if got is not None:
                won.append((got, not lease.is_lost and lease.expires_in > 0))
                return
            await asyncio.sleep(0.05)

    contender = asyncio.create_task(contend())
    try:
        await asyncio.sleep(0.3)
        assert not won, "took a lease that was held"
        renewals_before = lease.renewals
        stopped_at = time.monotonic()
        await asyncio.to_thread(srv.kill, sig)
        await asyncio.sleep(down)
        await asyncio.to_thread(srv.start_again)
        down_s = time.monotonic() - stopped_at
        if sig == signal.SIGKILL:  # really a crash: the restart replayed the log
            assert "automatic recovery in progress" in (srv.dir / "server.log").read_text()

        # Either renewals resume (kept) or the holder learns it lost the lease.
        deadline = time.monotonic() + 30
        while not lease.is_lost and lease.renewals < renewals_before + 2:
            assert time.monotonic() < deadline, "neither renewed nor lost after the restart"
            await asyncio.sleep(0.05)
        kept = not lease.is_lost
        if kept:
            info = await other.inspect(name)
            assert info is not None and info.lease_id == lease.lease_id
            assert info.fencing_token == lease.fencing_token
            assert not won, "the second client won while the lease was kept"
            assert await lease.release()
        else:
            assert lease.lost_reason in ("expired", "missing", "held_by_other"), lease.lost_reason
        if down > duration:
            # Down for longer than the lease: no renewal could land before the deadline.
            assert not kept
            assert lease.lost_reason == "expired"
        # The second client gets it now (released, or expired on the server's clock).
        await asyncio.wait_for(contender, timeout=duration + 30)
    finally:
        contender.cancel()
    (successor, overlapped) = won[0]
    assert not overlapped, "two holders: the second client won while the first still held"
    # The fence survived the restart: the next token continues upward, never back to 1.
    assert successor.fencing_token == lease.fencing_token + 1
    assert await successor.release()
    again = await holder_client.acquire(name)
    assert again.fencing_token == successor.fencing_token + 1
    assert await again.release()
    await holder_client.close()
    await other.close()
    report(
        "postgres_restart",
        signal=sig.name,
        lease_s=duration,
        down_s=round(down_s, 2),
        kept=kept,
        reason=lease.lost_reason,
        contender_errors=errors,
    )


def stop_wal_writer(srv: PostgresServer) -> None:
    """Stops (SIGSTOP) the server's WAL writer, which otherwise writes an asynchronously
    committed transaction's log out within ``wal_writer_delay``: until the crash, only a
    synchronous commit then gets the log out of the server's memory."""
    pid = int(srv.psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'"))
    os.kill(pid, signal.SIGSTOP)


@pytest.mark.parametrize("wal_writer", ["running", "stopped"])
@pytest.mark.parametrize("then", ["crash", "acquire-then-crash"])
async def test_a_crash_right_after_a_release_never_admits_two_holders(
    fresh_postgres_server: PostgresServer, unique_name: str, wal_writer: str, then: str
) -> None:
    """A release commits asynchronously (it does not wait for the disk): a crash right after it
    may lose it. Whatever the row is after recovery, released or still the first holder's with
    its TTL, nobody holds the lease twice: a second client gets it with a greater fencing
    token, or is refused (the holder named) until the first holder's TTL; the handle that
    released never believes it holds the lease. A durable acquire made after the release is
    kept, and with it the release (the log is flushed in order). With the WAL writer stopped
    the release is lost in the crash (the case where the row comes back), unless a later
    acquire flushed it."""
    srv = fresh_postgres_server
    a = await connect(srv.url)
    b = await connect(srv.url)
    name = unique_name
    for _ in range(2):  # tokens before the one released, so that a fence reset shows
        assert await (await a.acquire(name)).release()
    duration = 4.0
    lease = await a.acquire(name, duration=duration)
    token = lease.fencing_token
    assert token == 3
    if wal_writer == "stopped":
        stop_wal_writer(srv)
    assert await lease.release()
    successor = None
    if then == "acquire-then-crash":
        successor = await b.try_acquire(name, duration=30.0)
        assert successor is not None and successor.fencing_token == token + 1
    await asyncio.to_thread(srv.kill, signal.SIGKILL)
    await asyncio.to_thread(srv.start_again)
    assert "automatic recovery in progress" in (srv.dir / "server.log").read_text()

    # The released handle never comes back, whatever the row says.
    assert lease.is_released and not lease.is_lost and lease.expires_in == 0
    with pytest.raises(dl.LeaseLost):
        await lease.renew()

    info = await b.inspect(name)
    if successor is not None:
        # The acquire's durable commit came after the release in the log: both were kept.
        state = "taken"
        assert info is not None, "the acquire after the release was lost"
        assert info.lease_id == successor.lease_id
        assert info.fencing_token == token + 1
        assert await successor.release()
        nxt = await b.acquire(name)
        assert nxt.fencing_token == token + 2
    else:
        if info is None:
            state = "released"
        else:
            # The release was lost: the row is the first holder's again, live until its TTL.
            state = "release-lost"
            assert info.lease_id == lease.lease_id
            assert info.fencing_token == token
            assert info.ttl is not None and info.ttl <= duration
        started = time.monotonic()
        refused = 0
        while (nxt := await b.try_acquire(name, duration=30.0)) is None:
            refused += 1
            held = await b.inspect(name)
            assert held is None or held.lease_id == lease.lease_id
            await asyncio.sleep(0.05)
        waited = time.monotonic() - started
        if info is not None and info.ttl is not None and info.ttl > 1.0:
            # Refused until the first holder's TTL (the server's clock; generous slack).
            assert refused > 0, "took a lease whose release was lost before its TTL"
            assert waited > info.ttl - 1.0, (waited, info.ttl)
        # Never back to an old token: the fence only grows.
        assert nxt.fencing_token == token + 1
        if wal_writer == "stopped":
            assert state == "release-lost", (
                "with the WAL writer stopped, the crash kept the release: was it committed "
                "synchronously?"
            )
    assert await nxt.release()
    again = await a.acquire(name)
    assert again.fencing_token == nxt.fencing_token + 1
    assert await again.release()
    await a.close()
    await b.close()
    report(
        "postgres_crash_after_release",
        wal_writer=wal_writer,
        then=then,
        state=state,
        waited_s=round(waited, 2) if successor is None else 0.0,
    )
