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

The lease's own process is the test's; the server is a real ``postgres``. Figures (how long the
server was down, whether the lease was kept) are printed as ``FIGURE`` lines.
"""

from __future__ import annotations

import asyncio
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
