"""Mutual exclusion under contention, and a holder paused past its lease (issue #7).

Contention: 8 OS processes take one lease over and over (``try_acquire``, no wait) until each
has won its quota, and under the lease do a deliberately non-atomic read-modify-write of a
shared record (count, last fencing token). Two holders at once would lose an update (final count
below the number of wins) or see a token regression. The stores are ``STORE_URLS`` (Redis,
SQLite, PostgreSQL, etcd). ``CONTENTION_TOTAL`` sets the total number of wins per store (default
20,000; the documented long run is 100,000, see docs/reliability.md), except on etcd, where every
win is two consensus rounds (~100-150 wins/s here): ``CONTENTION_TOTAL_ETCD`` (default 2,000,
~20 s; 4,000 took 30-48 s and 20,000 took 131 s). A control run without the lease proves that
the check does catch overlapping holders.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import distributed_leasing as dl
import pytest
from faults_util import Child, FencedResource, report
from redis_servers import RedisServer

HERE = Path(__file__).resolve().parent
WORKER = HERE / "contention_worker.py"
PROCESSES = 8
CONTENTION_TOTAL = int(os.environ.get("CONTENTION_TOTAL", "20000"))
# Wins per store: etcd's default is smaller (see the module's docstring).
CONTENTION_TOTALS = {
    "etcd": int(os.environ.get("CONTENTION_TOTAL_ETCD", str(min(CONTENTION_TOTAL, 2000))))
}


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """Every subprocess a test starts; all are killed and reaped at teardown."""
    started: list[Child] = []
    yield started
    for c in started:
        c.stop()


@pytest.fixture
def sqlite_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the contention test keeps its SQLite file: tmpfs when there is one.

    Mutual exclusion does not depend on the file system (the same WAL locks), but each acquire
    and release is a `synchronous=FULL` commit, and an fsync per commit on a small CI disk would
    make 20,000 rounds take minutes. ``CONTENTION_SQLITE_DIR`` overrides it. Removed afterwards.
    """
    base = os.environ.get("CONTENTION_SQLITE_DIR")
    if base is None and Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK):
        base = "/dev/shm"
    if base is None:
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="dl-contention-", dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_contenders(
    children: list[Child], url: str, name: str, record: str, total: int, *flags: str
) -> tuple[list[dict[str, Any]], float]:
    quota = -(-total // PROCESSES)
    procs = [Child(WORKER, url, name, str(quota), record, *flags) for _ in range(PROCESSES)]
    children.extend(procs)
    for p in procs:
        assert p.read_json(timeout=60) == {"ready": True}
    started = time.monotonic()
    for p in procs:
        p.send("go")
    # Generous: 20,000 rounds take about 30 s here; a stuck contender fails the test long
    # before pytest's own timeout.
    results = [p.read_json(timeout=max(240.0, total / 50)) for p in procs]
    elapsed = time.monotonic() - started
    for p in procs:
        assert p.wait(timeout=30) == 0, p.stderr
    return results, elapsed


# How each store of the contention test is reached: its URL, given the test's request and a
# directory of its own. Adding a store is one line here (the record is a file for all but Redis).
STORE_URLS: dict[str, Callable[[pytest.FixtureRequest, Path], str]] = {
    "redis": lambda request, _: request.getfixturevalue("redis_server").url,
    "sqlite": lambda _, directory: f"sqlite://{directory / 'leases.db'}",
    "postgres": lambda request, _: request.getfixturevalue("postgres_server").url,
    "etcd": lambda request, _: request.getfixturevalue("etcd_cluster").url,
}


def store_and_record(
    store: str, request: pytest.FixtureRequest, name: str, directory: Path
) -> tuple[str, str, Any]:
    """The lease store's URL, the record's address, and a function reading the record."""
    url = STORE_URLS[store](request, directory)
    if store == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        key = f"{name}:record"

        def read_redis() -> str:
            return redis_server.cli("GET", key).strip()

        return url, f"{redis_server.url}/{key}", read_redis
    counter = directory / "counter.txt"
    return url, str(counter), counter.read_text


@pytest.mark.slow
@pytest.mark.parametrize("store", list(STORE_URLS))
def test_eight_processes_never_hold_one_lease_at_once(
    store: str,
    request: pytest.FixtureRequest,
    unique_name: str,
    sqlite_dir: Path,
    children: list[Child],
) -> None:
    url, record, read_record = store_and_record(store, request, unique_name, sqlite_dir)
    total = CONTENTION_TOTALS.get(store, CONTENTION_TOTAL)
    results, elapsed = run_contenders(children, url, unique_name, record, total)

    wins = sum(r["wins"] for r in results)
    count, last = (int(x) for x in read_record().split(":"))
    tokens = [t for r in results for t in r["tokens"]]
    figures = {
        "store": store,
        "processes": PROCESSES,
        "wins": wins,
        "attempts": sum(r["attempts"] for r in results),
        "seconds": round(elapsed, 1),
        "wins_per_second": round(wins / elapsed),
        "busy_errors": sum(r["errors"] for r in results),
    }
    report("contention", **figures)
    # Every process finished its quota.
    assert all(r["wins"] == -(-total // PROCESSES) for r in results)
    assert wins >= total
    # 0 lost updates: every win's write survived.
    assert count == wins, figures
    # 0 token regressions: each holder saw only smaller tokens before its own.
    assert sum(r["regressions"] for r in results) == 0
    assert sum(r["torn_reads"] for r in results) == 0
    assert sum(r["lost_before_write"] for r in results) == 0
    assert sum(r["release_refused"] for r in results) == 0
    # Every win had its own token, and the last write carried the largest one.
    assert len(set(tokens)) == wins
    assert last == max(tokens)


def test_control_without_the_lease_the_check_sees_lost_updates(
    request: pytest.FixtureRequest, unique_name: str, tmp_path: Path, children: list[Child]
) -> None:
    """The same contenders without the lease: the record must come up short. Proves that the
    test above would notice two holders at once."""
    url, record, read_record = store_and_record("redis", request, unique_name, tmp_path)
    results, _ = run_contenders(children, url, unique_name, record, 4000, "--no-lease")
    wins = sum(r["wins"] for r in results)
    count, _ = (int(x) for x in read_record().split(":"))
    assert wins == 4000
    assert count < wins, "no lost update without a lease: the contention check is blind"
    report("contention_control_without_lease", wins=wins, recorded=count, lost=wins - count)


# ------------------------------------------------------------------------------------------
# A holder paused (SIGSTOP) for longer than its lease
# ------------------------------------------------------------------------------------------

PAUSED_HOLDER = """
import json, sys
import distributed_leasing as dl
from faults_util import FencedResource

url, name, resource_url = sys.argv[1:4]
client = dl.LeaseClient.connect_sync(url)
resource = FencedResource(resource_url, name)
lease = client.acquire_sync(name, duration=2.0, renew_interval=0.5)
accepted = resource.write(lease.fencing_token, "holder-before-pause")
print(json.dumps({"token": lease.fencing_token, "accepted": accepted}), flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "check":
        # The first thing a careful holder does before each piece of protected work.
        out = {"is_lost": lease.is_lost, "reason": lease.lost_reason,
               "expires_in": lease.expires_in}
    elif cmd == "write":
        # A holder that checked just before it was paused, and writes right after it resumes.
        out = {"accepted": resource.write(lease.fencing_token, "holder-after-pause")}
    else:
        break
    print(json.dumps(out), flush=True)
"""


@pytest.mark.parametrize("store", ["redis", "sqlite"])
def test_paused_holder_learns_it_lost_and_its_stale_token_is_refused(
    store: str,
    redis_server: RedisServer,
    unique_name: str,
    tmp_path: Path,
    children: list[Child],
) -> None:
    url = redis_server.url if store == "redis" else f"sqlite://{tmp_path / 'leases.db'}"
    holder = Child(PAUSED_HOLDER, url, unique_name, redis_server.url)
    children.append(holder)
    first = holder.read_json()
    assert first["accepted"] is True
    old_token = first["token"]

    holder.signal(signal.SIGSTOP)
    paused_at = time.monotonic()
    client = dl.LeaseClient.connect_sync(url)
    # The server lets someone else in once the paused holder's lease expires (2 s).
    successor = client.acquire_sync(unique_name, wait=30.0, duration=30.0)
    takeover = time.monotonic() - paused_at
    resource = FencedResource(redis_server.url, unique_name)
    try:
        assert successor.fencing_token > old_token
        assert resource.write(successor.fencing_token, "successor")

        holder.signal(signal.SIGCONT)
        holder.send("check")
        check = holder.read_json()
        assert check["is_lost"] is True, check
        assert check["reason"] in ("expired", "held_by_other"), check
        assert check["expires_in"] == 0.0

        holder.send("write")
        assert holder.read_json() == {"accepted": False}
        assert resource.writes() == [
            f"{old_token} holder-before-pause",
            f"{successor.fencing_token} successor",
        ]
        assert not successor.is_lost
        report("paused_holder_takeover", store=store, seconds=round(takeover, 2))
    finally:
        holder.send("quit")
        successor.release_sync()
        resource.close()
    assert holder.wait() == 0, holder.stderr
