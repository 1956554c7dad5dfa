"""Nothing held by nobody, and prefork parents unharmed (issue 22, defects 1-4).

A lease is *held by nobody* when the store still holds it for a holder that can never use it
again (its handle dropped, its client closed, its task's loop closed): everyone else is kept
out for its whole duration. Each test below ends with the lease looked up through a client of
its own, so it fails if anything is left held; every duration is long (30 s) so that nothing
expires by itself while the test looks.

- ``close()`` waits for the background releases of the handles dropped just before it.
- ``close()`` while an acquire is on the wire: the acquire is waited for and what it won is
  given back (the server is held up for real: Redis paused, PostgreSQL's table locked, SQLite's
  file locked by another process).
- an ``async with`` whose loop was closed while its task was kept alive is released, not
  renewed forever.
- a forked child that exits normally (``sys.exit``) leaves its parent's connections alone:
  the parent's next operations answer at once, not after ``operation_timeout``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import distributed_leasing as dl
import pytest
from conftest import StoreUnderTest
from postgres_server import POSTGRES_PASSWORD, PostgresServer
from redis_servers import RedisServer

# Long enough that nothing held by nobody expires while a test looks at it.
DURATION = 30.0


def held(url: str, names: list[str]) -> list[str]:
    """The names of ``names`` still held, seen through a client of our own."""
    with dl.LeaseClient.connect_sync(url) as c:
        return [n for n in names if c.inspect_sync(n) is not None]


# -- 1. a handle dropped just before close() -------------------------------------------------


def test_a_handle_dropped_just_before_close_is_released(
    store: StoreUnderTest, unique_name: str
) -> None:
    names = [f"{unique_name}-{i}" for i in range(30)]
    for name in names:
        with dl.LeaseClient.connect_sync(store.url, duration=DURATION) as c:
            # The handle is dropped at once (nothing keeps it), then close() runs.
            if c.try_acquire_sync(name):
                pass
    assert held(store.url, names) == []


async def test_a_handle_dropped_just_before_async_close_is_released(
    store: StoreUnderTest, unique_name: str
) -> None:
    names = [f"{unique_name}-{i}" for i in range(30)]
    for name in names:
        async with await dl.LeaseClient.connect(store.url, duration=DURATION) as c:
            if await c.try_acquire(name):
                pass
    assert held(store.url, names) == []


# -- 2. close() while an acquire is on the wire ----------------------------------------------


@contextmanager
def _redis_paused(srv: RedisServer) -> Iterator[Callable[[], None]]:
    srv.pause()
    try:
        yield srv.resume
    finally:
        srv.resume()


_HOLD_SQLITE = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
con.execute("ROLLBACK")
"""

_HOLD_POSTGRES = """
BEGIN;
LOCK TABLE distributed_leasing.leases IN ACCESS EXCLUSIVE MODE;
\\echo locked
"""


@contextmanager
def _held_up(kind: str, target: Any, tmp: Path) -> Iterator[Callable[[], None]]:
    """Holds the store up (requests reach it and wait); yields the function that lets go."""
    if kind == "redis":
        with _redis_paused(target) as go:
            yield go
        return
    if kind == "sqlite":
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD_SQLITE, str(target)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "locked"
        stdin = proc.stdin

        def go_sqlite() -> None:
            if not stdin.closed:
                stdin.write("\n")
                stdin.close()

        try:
            yield go_sqlite
        finally:
            go_sqlite()
            proc.wait(30)
        return
    assert kind == "postgres"
    pg: PostgresServer = target
    psql = pg.bin / "psql"
    proc = subprocess.Popen(
        [
            str(psql),
            "-X",
            "-q",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            str(pg.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PGPASSWORD": POSTGRES_PASSWORD},
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(_HOLD_POSTGRES)
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "locked"

    stdin = proc.stdin

    def go_postgres() -> None:
        # The transaction ends, and its lock with it (a killed psql would leave its backend).
        if not stdin.closed:
            stdin.write("ROLLBACK;\n")
            stdin.close()

    try:
        yield go_postgres
    finally:
        go_postgres()
        proc.wait(30)


@pytest.fixture(params=["redis", "sqlite", "postgres"])
def held_up_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, Any]]:
    """(kind, url, target): a store of our own that ``_held_up`` can hold up."""
    if request.param == "redis":
        srv: RedisServer = request.getfixturevalue("fresh_redis_server")
        yield "redis", srv.url, srv
    elif request.param == "sqlite":
        db = tmp_path / "leases.db"
        url = f"sqlite://{db}"
        with dl.LeaseClient.connect_sync(url) as c:  # creates the file and its schema
            c.inspect_sync("warm-up")
        yield "sqlite", url, db
    else:
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        with dl.LeaseClient.connect_sync(pg.url) as c:  # creates the schema
            c.inspect_sync("warm-up")
        yield "postgres", pg.url, pg


def _close_while_on_the_wire(
    kind: str, url: str, target: Any, tmp: Path, name: str, asynchronous: bool
) -> BaseException | object:
    """Sends an acquire to a held-up store, closes the client while it waits there, then lets
    the store go: the acquire wins on the server after the close began. Returns what the
    acquire returned or raised."""
    client = dl.LeaseClient.connect_sync(url, duration=DURATION, operation_timeout=20)
    client.inspect_sync(name)  # connections open before the store is held up
    outcome: list[BaseException | object] = []
    closed = threading.Event()

    def acquire_sync() -> None:
        try:
            outcome.append(client.try_acquire_sync(name))
        except BaseException as e:
            outcome.append(e)

    async def both() -> None:
        async def acquire() -> None:
            try:
                outcome.append(await client.try_acquire(name))
            except BaseException as e:
                outcome.append(e)

        task = asyncio.create_task(acquire())
        await asyncio.sleep(0.5)  # the request is out, waiting in the store
        closing = asyncio.create_task(client.close())
        await asyncio.sleep(0.5)
        closed.set()
        await asyncio.gather(task, closing)

    with _held_up(kind, target, tmp) as let_go:
        if asynchronous:
            runner = threading.Thread(target=asyncio.run, args=(both(),))
            runner.start()
            assert closed.wait(30)
            let_go()
            runner.join(60)
        else:
            t = threading.Thread(target=acquire_sync)
            t.start()
            time.sleep(0.5)  # the request is out, waiting in the store
            closer = threading.Thread(target=client.close_sync)
            closer.start()
            time.sleep(0.5)
            let_go()
            closer.join(60)
            t.join(60)
    assert len(outcome) == 1, outcome
    return outcome[0]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_close_while_an_acquire_is_on_the_wire_gives_back_what_it_won(
    held_up_store: tuple[str, str, Any], tmp_path: Path, unique_name: str, asynchronous: bool
) -> None:
    kind, url, target = held_up_store
    result = _close_while_on_the_wire(kind, url, target, tmp_path, unique_name, asynchronous)
    # Whatever the caller got, the store does not keep the lease for nobody.
    assert held(url, [unique_name]) == [], f"left held; the acquire gave {result!r}"
    if isinstance(result, dl.Lease):
        assert result.is_lost
    elif result is not None:
        assert isinstance(result, dl.LeaseError), result
        assert "closed" in str(result), result


async def test_close_ends_a_waiting_acquire(store: StoreUnderTest, unique_name: str) -> None:
    """A waiter (wait=None) of a closed client stops at once instead of waiting forever."""
    async with await dl.LeaseClient.connect(store.url, duration=DURATION) as holder:
        lease = await holder.acquire(unique_name)
        waiter_client = await dl.LeaseClient.connect(store.url)
        waiter = asyncio.create_task(waiter_client.acquire(unique_name, wait=None))
        await asyncio.sleep(0.5)
        assert not waiter.done()
        await waiter_client.close()
        with pytest.raises(dl.ConfigError, match="closed"):
            await asyncio.wait_for(waiter, 30)
        await lease.release()


# -- 3. an async with whose loop was closed --------------------------------------------------


def test_a_lease_whose_loop_was_closed_is_released(store: StoreUnderTest, unique_name: str) -> None:
    client = dl.LeaseClient.connect_sync(store.url)
    entered = threading.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def body() -> None:
        async with client.lease(unique_name, duration=DURATION, renew_interval=0.2):
            entered.set()
            await asyncio.Event().wait()  # never resumes once its loop is closed

    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(body())
        tasks.add(task)  # kept, as the asyncio docs tell users to keep background tasks
        loop.run_until_complete(asyncio.sleep(0.5))
        assert entered.is_set()
    finally:
        loop.close()
    try:
        # Released at its next renewal (0.2 s); without it, held for as long as we live.
        with dl.LeaseClient.connect_sync(store.url) as other:
            lease = other.acquire_sync(unique_name, wait=15)
            lease.release_sync()
    finally:
        client.close_sync()
        # Closed here rather than by the collector at some later point of the session: the
        # body's `async with` exits on GeneratorExit without awaiting anything.
        task.get_coro().close()
        task._log_destroy_pending = False  # type: ignore[attr-defined] # never runs again
        tasks.clear()
        del task
        gc.collect()


# -- 4. a forked child that exits normally ---------------------------------------------------

FORK_EXIT = textwrap.dedent(
    """
    import asyncio, os, sys, time
    import distributed_leasing as dl

    url, name = sys.argv[1], sys.argv[2]
    client = dl.LeaseClient.connect_sync(url, operation_timeout=8, renew_interval=0.2, duration=5)
    lease = client.try_acquire_sync(name)
    assert lease is not None

    async def use_async():
        await client.inspect(name)  # opens the loop's own connection (Redis)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(use_async())
    slowest = 0.0
    for i in range(3):
        pid = os.fork()
        if pid == 0:
            if i == 1:  # a child that uses the library of its own before leaving
                with dl.LeaseClient.connect_sync(url) as mine:
                    mine.try_acquire_sync(f"{name}-child")
            sys.exit(0)  # a normal exit: at-exit hooks, thread locals and the GC all run
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        for op in (
            lambda: client.inspect_sync(name),
            lambda: client.try_acquire_sync(name + "-other").release_sync(),
            lease.renew_sync,
            lambda: loop.run_until_complete(use_async()),
        ):
            t0 = time.monotonic()
            op()
            slowest = max(slowest, time.monotonic() - t0)
    assert not lease.is_lost, lease.lost_reason
    lease.release_sync()
    loop.close()
    client.close_sync()
    print(f"slowest {slowest:.3f}")
    """
)


@pytest.mark.parametrize("kind", ["redis", "sqlite", "postgres", "etcd"])
def test_a_forked_childs_normal_exit_leaves_the_parent_alone(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique_name: str
) -> None:
    if kind == "redis":
        url = request.getfixturevalue("redis_server").url
    elif kind == "sqlite":
        url = f"sqlite://{tmp_path / 'leases.db'}"
    elif kind == "postgres":
        url = request.getfixturevalue("postgres_server").url
    else:
        url = request.getfixturevalue("etcd_cluster").url
    r = subprocess.run(
        [sys.executable, "-c", FORK_EXIT, url, unique_name],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    slowest = float(r.stdout.split()[-1])
    # A stalled call waits out the operation timeout (8 s); a healthy one answers at once. The
    # bound is generous for a loaded machine and still far below the stall.
    assert slowest < 4.0, r.stdout


# -- SIGTERM ---------------------------------------------------------------------------------

SIGTERMED = textwrap.dedent(
    """
    import asyncio, sys, time
    import distributed_leasing as dl

    url, name, opt_in, mode = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
    if opt_in:
        dl.release_on_sigterm()
    if mode == "sync":
        with dl.LeaseClient.connect_sync(url, duration=30) as c, c.lease(name):
            print("holding", flush=True)
            time.sleep(120)
    else:
        async def main():
            async with await dl.LeaseClient.connect(url, duration=30) as c:
                async with c.lease(name):
                    print("holding", flush=True)
                    await asyncio.sleep(120)
        asyncio.run(main())
    """
)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("opt_in", [True, False], ids=["release_on_sigterm", "default"])
def test_sigterm_releases_only_with_the_opt_in(
    tmp_path: Path, unique_name: str, mode: str, opt_in: bool
) -> None:
    url = f"sqlite://{tmp_path / 'leases.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERMED, url, unique_name, "1" if opt_in else "0", mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "holding"
        proc.terminate()
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if opt_in:
        assert code == 143, proc.stderr.read() if proc.stderr else code
        assert held(url, [unique_name]) == []
    else:
        # Python's default: killed by the signal, the lease left to expire (docs/safety.md).
        assert code == -15, code
        assert held(url, [unique_name]) == [unique_name]
