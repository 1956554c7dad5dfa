"""The randomized multi-process safety checker (issue 12, "the safety net"; issue 22).

    python tests/python/checker.py --store redis --seconds 60 --seed 1
    python tests/python/checker.py --store all --seconds 20 --seed 7 --json out.json
    python tests/python/checker.py --store sqlite --prefork --seconds 30
    python tests/python/checker.py --store etcd --election --seconds 30
    python tests/python/checker.py --store redis --semaphore --seconds 30

Stores: Redis, Redis Cluster (3 masters), SQLite, PostgreSQL and etcd (3 members), each a
private server (or file) the checker starts, kills and restarts itself. Many worker processes
contend for one lease on one store while faults drawn from a seeded RNG hit them; every
protected write goes to a *fenced register* that is independent of the store under test; at
the end the register's log and the workers' own records are checked.

Workers (each a separate OS process; several "lanes" per process share one ``LeaseClient``):

- ``async_ctx``: ``async with client.lease(...)`` on the process's event loop (on_lost "cancel"
  mostly, sometimes "ignore"), ``wait`` 0 or a few seconds;
- ``async_try``: ``await client.try_acquire(...)`` / ``await client.acquire(..., wait=...)``,
  then ``await lease.release()``;
- ``sync_ctx``: ``with client.lease(...)`` on a thread;
- ``sync_acquire``: ``client.try_acquire_sync`` / ``client.acquire_sync(..., wait=...)`` on a
  thread, then ``lease.release_sync()``;
- forked children: a host process first uses the library (a synchronous and an asynchronous
  acquire and release, on its main thread), then forks children that each make their own
  client (as documented: clients are made after the fork) and start together. The ``os.fork``
  host's 3 children run a sync lane on their main thread (the thread that used the library
  before the fork) and half the time an async lane on an event loop in a thread; the
  multiprocessing host's 2 children ("fork" start method) alternate between that and an event
  loop on the main thread. A SIGKILLed child is replaced by a new fork of the same host.

The processes: 4 started directly (lanes ``async_ctx+async_try``, ``sync_ctx+sync_acquire``,
``async_try+sync_ctx``, ``async_ctx+sync_acquire``) and the 2 fork hosts; a SIGKILLed direct
worker is started again. Half of them reach Redis through a loopback TCP proxy
(``tcp_proxy.TcpProxy``) so that their connections can be black-holed while the others keep
going; on the cluster every node is reached through its own proxy (the nodes announce the
proxy's port), so a black hole cuts everybody off the node it fronts (PostgreSQL, etcd and
SQLite have no proxy). ``--no-fork`` runs the direct workers only; ``--faults sigkill,sigstop``
restricts the fault kinds.

Each iteration of a lane: acquire, read the register (with the fencing token), sometimes sleep
(now and then past a renewal, across a fault), write value+1 with the token, release. The
worker records its own view of every lease handle (token, lease id, ``is_lost`` /
``lost_reason``, ``LeaseLost``, ``wait_lost()``, the ``events()`` stream, the release's result).

Faults (one at a time, the store's kinds, ``FAULTS``; the first round has every kind, in a
seeded order, then kinds are drawn at random). On every store: ``sigkill`` (a worker, often the
holder), ``sigstop`` (the holder, for longer than the lease duration, then SIGCONT) and
``force_release`` (an administrator's ``client.force_release(name)``, with ``lease_id=`` the
inspected holder where the library supports it). Redis and Redis Cluster: ``client_kill``
(``CLIENT KILL`` of some or all connections, pub/sub ones included) and ``blackhole`` (the
proxy stops forwarding for longer than the lease duration, then heals); single Redis also
``restart`` (the server SIGKILLed and restarted with ``appendonly yes`` + ``appendfsync
always``). PostgreSQL: ``pg_restart`` (a fast shutdown, SIGINT) and ``pg_kill`` (the postmaster
and its processes SIGKILLed: crash recovery at the next start), each started again on the same
port and data at once or after a pause of up to the lease's duration + 1 s. etcd:
``member_kill`` (one member, the Raft leader half the time, SIGKILLed and started again after a
pause; the other two keep the quorum) and ``quorum_loss`` (two of the three members stopped,
SIGTERM or SIGKILL, for longer than the lease, then both started again).

The fenced register is a separate SQLite file (every operation one ``BEGIN IMMEDIATE``
transaction). It keeps the highest token it has seen and refuses any lower one, *on reads as
well as writes*: the worker's read-modify-write is then safe for a holder paused between its
read and its write (a stale holder's read would otherwise interleave with its successor's and
lose an update that no lease can prevent). Every operation, accepted or refused, is logged with
pid, worker id, handle id, lease id, token, value read and value written.

Checks (any failure is a *violation*):

(a) no update lost: every accepted write wrote the register's value + 1, and the final value
    equals the number of accepted writes;
(b) fencing: a fencing token is used by one lease handle only (and a lease id by one handle
    only: the forked-children bug shows as both), the register's accepted tokens never
    decrease, and a lease granted after another's acquire returned has a larger token
    (the ordering is taken from CLOCK_MONOTONIC, which all processes on one machine share);
(c) losses are reported exactly once: a handle whose register operation was refused, or whose
    lease an administrator force-released (attributed only when the release was a
    compare-and-delete on its lease id), reports a loss (``is_lost``, ``LeaseLost`` or a release
    that found the lease gone) unless its process was killed (if its release failed with a
    ``BackendError`` and the handle still says ``is_released``, the violation is called
    ``released_despite_failed_release``); ``wait_lost()`` agrees with
    ``lost_reason``; ``LeaseLost`` agrees with ``is_lost``; the ``events()`` stream ends with
    exactly one ``lost`` or ``released``; every handle ends (released or lost); each process's
    ``leasing.leases_lost.total`` and ``leasing.acquisitions.total`` counters moved by exactly
    the number of its handles lost and acquired; and no exception other than the documented
    ones comes out of the library, no worker crashes and none hangs at the end;
(d) nothing held by nobody: once every worker process has ended, a fresh client lists the
    store (the run's own: every lease in it belongs to the run) and inspects every name the
    run is known to have used (the lease's, the prefork parent's).
    Each lease still held is traced to its holder (by its lease id among the handles the
    workers recorded, else by the ``pid``/``wid`` metadata every worker attaches) and is a
    violation (``held_by_nobody``) unless one of these excuses it:
    - its holder's process did not end cleanly (no ``exit`` record: SIGKILLed by a fault,
      crashed, or hung and killed at the stop);
    - its handle's release failed with a ``BackendError`` (the store was unreachable);
    - its handle was lost as ``expired`` (its renewals could not reach the store: the store's
      copy then ends at its own TTL);
    - it is the run's lease name, its lease id is no handle's, and that process saw an acquire
      fail with a ``BackendError`` (an acquire that won on the server but whose answer was
      lost).
    An excused lease must still end by itself: its ``ttl`` must be at most the lease's
    duration + ``HELD_TTL_SLACK`` (``held_past_ttl`` otherwise). A lease whose holder is
    unknown (no such lease id, no metadata) is never excused. The leases of the fork hosts and
    of the prefork parent, released before they exit, are held to the same rule;
(e) the prefork mode (below): no operation of the parent took longer than
    ``PREFORK_OP_BOUND`` (``prefork_parent_stalled``, with the time since the last child's
    exit) or failed (``prefork_parent_op_failed``); each of its leases was never lost, had no
    failed renewal and was released at the end (``prefork_parent_lease_lost``); no child hung
    (``prefork_child_hung``), exited with a code other than 0 or -SIGKILL (a fault)
    (``prefork_child_exit_code``) or saw a ``BackendError`` (nothing hits the store in this
    mode: ``prefork_child_backend_error``).

The prefork mode (``--prefork``, ``run_store(prefork=True)``): instead of the processes above,
one host whose parent takes ``PREFORK_LEASES`` leases renewed every ``PREFORK_RENEW_INTERVAL``
s and then forks (``os.fork``) children, 3 at a time, each living 1-3 s: a child makes its own
client, runs a sync lane on its main thread (half the time an async lane on a loop in a thread
too) in the same fenced workload, then leaves through ``sys.exit`` (atexit hooks and
finalizers run, unlike ``os._exit``), and is replaced; a third of the replacements never use
the library (a worker with no lease to take) and just leave through ``sys.exit``. Meanwhile
the parent runs an operation every 0.2 s and at once after each child's exit
(``inspect_sync`` of a held lease, ``renew_sync``, ``try_acquire_sync`` + ``release_sync`` of a
scratch name, ``list_sync``), each timed. Faults (``PREFORK_FAULTS``) hit the children only:
the parent has no excuse to stall.

The election mode (``--election``, ``run_store(election=True)``): the same workload, the same
faults and the same checks, through leader election instead of the plain lease (an election is
the lease of its name: the term is its fencing token). Five direct processes of two lanes each
(ten candidates) campaign with an identity of their own: ``async_ctx`` and ``sync_ctx`` lead in
``async with`` / ``with election.campaign(wait=...)``, ``async_try`` leads through
``election.run(fn)`` (``fn`` leads once and returns, which resigns; a loss cancels it and
``run`` campaigns again; the run is cancelled after its wait) and ``sync_acquire`` resigns by
hand (``term.resign_sync()``) inside its campaign. A leader holds for 0-5 ms mostly, and now
and then proclaims (new metadata, same term) between its read and its write. Every process
also observes the election (``election.observe()``), and the checks add:

(f) observers: the values one observer sees never repeat (the same lease id, term and
    metadata twice in a row: ``observed_repeat``), never go down in term
    (``observed_term_down``), and each leader seen is one that was elected with that term
    (``observed_term_mismatch``: a lease id a worker recorded with another fencing token).

The semaphore mode (``--semaphore``, ``run_store(semaphore=True)``): the same workload and
checks, through the permits of one semaphore of limit ``SEMAPHORE_LIMIT`` (3) instead of the
lease: ``async with`` / ``with client.semaphore(...)``, ``try_acquire_permit`` /
``acquire_permit(wait=...)`` and their ``_sync`` forms (a tenth of the acquires, once the
process has held a permit, pass ``limit=None``: the stored one). Eight worker processes (six
direct of two lanes each, three of them through the proxy, and the two children of a fork host)
under the store's faults, the forced release being ``force_release_permit(name, slot,
lease_id=...)`` of a holder that ``semaphore_info`` showed. The register keeps one counter per
slot, each fenced by the last token it has seen (the resource side of the fencing recipe), and a
holder writes to its permit's slot; (a) and (b) hold per slot (the tokens come from one counter
per semaphore, so the grant order holds across slots). Before each register operation a holder
*claims* its permit: it records whether it holds it by its own account (not lost, local validity
left), at an instant taken before it looks. The checks add:

(g) every permit's slot is below the limit (``slot_out_of_range``); counting each handle as a
    holder from its acquire's return to its last claim, never more than the limit hold at
    once (``over_limit``) and never two hold one slot at once (``slot_shared``); a
    force-released permit's window ends when its forced release was called. The peak
    count is reported (the test requires it to reach the limit). A store that does not
    support semaphores gives a ``Summary`` with ``unsupported`` set and nothing run.

``--sabotage overlimit`` (semaphore mode) has the workers ask for one permit more than the
checker's limit: (g) must then see a holder count above it and a slot out of range.
``--sabotage nolease`` skips the lease (token 0 for all): the register must then see lost
updates and shared tokens (a control that shows the checks can fail). ``--sabotage noaof``
restarts Redis *without* persistence: the fencing counter restarts at 1 and (b) must flag it.
``--sabotage leak``: each worker, after its exit is recorded, takes one more lease and leaves
through ``os._exit`` (no at-exit release): (d) must flag each of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import faulthandler
import inspect
import json
import os
import random
import selectors
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

LEASE_NAME = "checker"
STORES = ("redis", "redis-cluster", "sqlite", "postgres", "etcd")
FAULTS: dict[str, tuple[str, ...]] = {
    "redis": ("sigkill", "sigstop", "client_kill", "restart", "blackhole", "force_release"),
    "redis-cluster": ("sigkill", "sigstop", "client_kill", "blackhole", "force_release"),
    "sqlite": ("sigkill", "sigstop", "force_release"),
    "postgres": ("sigkill", "sigstop", "force_release", "pg_restart", "pg_kill"),
    "etcd": ("sigkill", "sigstop", "force_release", "member_kill", "quorum_loss"),
}
# The semaphore mode's limit (``--semaphore``)
SEMAPHORE_LIMIT = 3
# The prefork mode's faults: they hit the children only (the parent's operations must then
# never stall or fail, so nothing may hit the store it talks to).
PREFORK_FAULTS = ("sigkill", "sigstop", "force_release")
# A lease left held at the end that is excused (see (d)) must end by itself within this much
# more than the lease's duration.
HELD_TTL_SLACK = 2.0
LANES = ("async_ctx", "async_try", "sync_ctx", "sync_acquire")
EXPECTED_ERRORS = ("LeaseUnavailable", "LeaseLost", "BackendError")


# ============================================================================================
# The fenced register
# ============================================================================================


@dataclass(frozen=True)
class Who:
    """Who performs a register operation: the handle, the token it carries and the register's
    slot it works on (the semaphore mode's permit slot; 0 otherwise)."""

    pid: int
    wid: str
    handle: str
    lease_id: str
    token: int
    slot: int = 0


class FencedRegister:
    """Counters in their own SQLite file, one per slot (``Who.slot``: the semaphore mode's
    permit slots; slot 0 otherwise), each refusing tokens lower than the highest it has seen:
    the resource side of the fencing recipe, which keeps the last token per slot.

    ``read`` and ``write`` each run in one ``BEGIN IMMEDIATE`` transaction (the file's write
    lock is taken first, so two operations never interleave), compare the caller's token with
    the highest one its slot has seen, raise the highest on acceptance, and log the operation
    whatever the outcome. Equal tokens are accepted (the same holder reads, then writes).
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS reg (
        slot INTEGER PRIMARY KEY,
        highest INTEGER NOT NULL,
        value INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        slot INTEGER NOT NULL,
        op TEXT NOT NULL,
        accepted INTEGER NOT NULL,
        pid INTEGER NOT NULL,
        wid TEXT NOT NULL,
        handle TEXT NOT NULL,
        lease_id TEXT NOT NULL,
        token INTEGER NOT NULL,
        highest_before INTEGER NOT NULL,
        value_before INTEGER NOT NULL,
        value_read INTEGER,
        value_written INTEGER,
        t REAL NOT NULL
    );
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._con = sqlite3.connect(self.path, timeout=300.0, isolation_level=None)
        self._con.execute("PRAGMA busy_timeout = 300000")

    @classmethod
    def create(cls, path: str | Path) -> FencedRegister:
        reg = cls(path)
        reg._con.execute("PRAGMA journal_mode = WAL")
        reg._con.executescript(cls.SCHEMA)
        return reg

    def _op(self, op: str, who: Who, value_read: int | None, new: int | None) -> tuple[bool, int]:
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("INSERT OR IGNORE INTO reg VALUES (?, 0, 0)", (who.slot,))
            highest, value = con.execute(
                "SELECT highest, value FROM reg WHERE slot = ?", (who.slot,)
            ).fetchone()
            accepted = who.token >= highest
            if accepted:
                if op == "write":
                    con.execute(
                        "UPDATE reg SET highest = ?, value = ? WHERE slot = ?",
                        (who.token, new, who.slot),
                    )
                elif who.token > highest:
                    con.execute("UPDATE reg SET highest = ? WHERE slot = ?", (who.token, who.slot))
            con.execute(
                "INSERT INTO log (slot, op, accepted, pid, wid, handle, lease_id, token,"
                " highest_before, value_before, value_read, value_written, t)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (who.slot, op, int(accepted), who.pid, who.wid, who.handle, who.lease_id,
                 who.token, highest, value, value if op == "read" else value_read,
                 new if op == "write" else None, time.monotonic()),
            )  # fmt: skip
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            raise
        return accepted, value

    def read(self, who: Who) -> int | None:
        """The counter, or None if ``who.token`` is lower than one already seen."""
        accepted, value = self._op("read", who, None, None)
        return value if accepted else None

    def write(self, who: Who, value_read: int, new: int) -> bool:
        """Sets the counter to ``new`` unless ``who.token`` is lower than one already seen."""
        accepted, _ = self._op("write", who, value_read, new)
        return accepted

    def state(self, slot: int = 0) -> tuple[int, int]:
        """The highest token and the value of ``slot``'s counter ((0, 0) if never used)."""
        row = self._con.execute("SELECT highest, value FROM reg WHERE slot = ?", (slot,)).fetchone()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def total(self) -> int:
        """The sum of every slot's counter."""
        return int(self._con.execute("SELECT coalesce(sum(value), 0) FROM reg").fetchone()[0])

    def log(self) -> list[dict[str, Any]]:
        cur = self._con.execute("SELECT * FROM log ORDER BY seq")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur]

    def close(self) -> None:
        self._con.close()


# ============================================================================================
# Worker side (runs in the worker processes)
# ============================================================================================


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG=SIGKILL: this process dies when the thread that forked it ends."""
    if _PRCTL is not None:
        _PRCTL(1, int(signal.SIGKILL), 0, 0, 0)


def pick_wait(rng: random.Random) -> float:
    return 0.0 if rng.random() < 0.5 else round(rng.uniform(0.2, 3.0), 3)


def pick_hold(rng: random.Random, duration: float) -> float:
    """How long to sleep between the read and the write: mostly nothing or a few ms, now and
    then long enough for faults to land in it, rarely past a renewal and close to the lease's
    duration (only a working renewal keeps the lease then)."""
    r = rng.random()
    if r < 0.6:
        return 0.0
    if r < 0.9:
        return rng.uniform(0.0, 0.005)
    if r < 0.985:
        return rng.uniform(0.01, 0.1)
    return rng.uniform(0.3, duration * 1.2)


@dataclass
class Handle:
    hid: str
    lane: str
    lease: Any
    lease_id: str
    token: int
    t_call: float
    t_ret: float
    wait: float | None
    on_lost: str = "cancel"
    lease_lost_exc: str | None = None
    release_result: bool | None = None
    release_error: str | None = None
    read: str = "none"  # none | accepted | refused
    write: str = "none"
    wait_lost: str | None = None
    events: dict[str, Any] | None = None
    t_end_deadline: float = 0.0
    slot: int = 0  # the semaphore mode's permit slot


class Leaf:
    """One worker process: its lanes, its client, its record file."""

    def __init__(self, cfg: dict[str, Any], lanes: list[str], seed: str, kind: str) -> None:
        self.cfg = cfg
        self.lanes = lanes
        self.seed = seed
        self.kind = kind
        self.pid = os.getpid()
        self.wid = os.urandom(6).hex()  # the OS's random source: fork-safe
        self.name: str = cfg["name"]
        self.duration: float = cfg["duration"]
        self.sabotage: str | None = cfg.get("sabotage")
        self.election_mode: bool = bool(cfg.get("election"))
        self.election: Any = None  # this process's Election in the election mode
        # The semaphore mode: the limit this process's permits ask for (the checker's limit;
        # one more under the sabotage "overlimit")
        self.limit: int | None = cfg.get("limit") if cfg.get("semaphore") else None
        self._permits_won = 0
        self.end_timeout = self.duration * 3 + 10.0
        out = Path(cfg["outdir"]) / f"w-{self.pid}-{self.wid}.jsonl"
        self._out = open(out, "a", buffering=1)  # noqa: SIM115 - closed in run()
        self._lock = threading.Lock()
        self._seq = 0
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)
        self.handles: list[Handle] = []
        self._pending: list[Handle] = []
        self._pending_cv = threading.Condition()
        self._stop_file = Path(cfg["stop_file"])
        self._hard_deadline = time.monotonic() + cfg["max_seconds"]

    # -- records ----------------------------------------------------------------------------

    def emit(self, **rec: Any) -> None:
        rec.setdefault("pid", self.pid)
        rec.setdefault("wid", self.wid)
        line = json.dumps(rec, sort_keys=True, default=str)
        with self._lock:
            self._out.write(line + "\n")

    def stopping(self) -> bool:
        return self._stop_file.exists() or time.monotonic() > self._hard_deadline

    def metadata(self, lane: str) -> dict[str, str]:
        return {"pid": str(self.pid), "wid": self.wid, "lane": lane}

    def who(self, h: Handle) -> Who:
        return Who(self.pid, self.wid, h.hid, h.lease_id, h.token, h.slot)

    def acquired(self, lane: str, lease: Any, t_call: float, wait: float | None) -> Handle:
        t_ret = time.monotonic()
        with self._lock:
            self._seq += 1
            hid = f"{self.wid}:{self._seq}"
        if lease is None:  # sabotage "nolease"
            h = Handle(hid, lane, None, f"nolease-{hid}", 0, t_call, t_ret, wait)
        else:
            h = Handle(hid, lane, lease, lease.lease_id, lease.fencing_token, t_call, t_ret, wait)
        rec: dict[str, Any] = {}
        if self.limit is not None and lease is not None:
            h.slot = lease.slot
            rec["slot"] = h.slot
            self._permits_won += 1
        with self._lock:
            self.handles.append(h)
        self.counts[lane]["wins"] += 1
        self.emit(ev="acq", h=hid, lane=lane, lease_id=h.lease_id, token=h.token,
                  t_call=t_call, t_ret=t_ret, wait=wait, **rec)  # fmt: skip
        return h

    def claim(self, h: Handle) -> None:
        """The semaphore mode: records whether the holder holds its permit by its own account
        (not lost, local validity left), at an instant taken *before* it looks, so that a
        holder that says yes held the permit at that instant if the library is right (a
        validity that still holds later held then too). The analysis counts the holders whose
        windows (from the acquire's return to the last "yes") overlap: never more than the
        limit. The sabotage "overlimit" asks for one permit more than the checker's limit."""
        if self.limit is None or h.lease is None:
            return
        t = time.monotonic()
        lease = h.lease
        self.emit(ev="claim", h=h.hid, t=t, slot=h.slot,
                  ok=not lease.is_lost and (lease.expires_in or 0.0) > 0.0)  # fmt: skip

    # -- acquire calls: a lease, or a permit in the semaphore mode ---------------------------

    def _limit(self, rng: random.Random) -> int | None:
        """The limit an acquire passes: the process's, or now and then (once this process has
        held a permit, so the semaphore exists) None, "the stored one"."""
        if self._permits_won and rng.random() < 0.1 and self.sabotage != "overlimit":
            return None
        return self.limit

    def held_ctx(
        self, client: Any, wait: float, on_lost: str, kw: dict[str, Any], rng: random.Random
    ) -> Any:
        """``client.lease(...)``, or in the semaphore mode ``client.semaphore(...)``."""
        if self.limit is None:
            return client.lease(self.name, wait=wait, on_lost=on_lost, **kw)
        limit = self._limit(rng)
        return client.semaphore(self.name, limit=limit, wait=wait, on_lost=on_lost, **kw)

    def try_sync(self, client: Any, kw: dict[str, Any], rng: random.Random) -> Any:
        if self.limit is None:
            return client.try_acquire_sync(self.name, **kw)
        return client.try_acquire_permit_sync(self.name, limit=self._limit(rng), **kw)

    def acquire_sync(self, client: Any, wait: float, kw: dict[str, Any], rng: random.Random) -> Any:
        if self.limit is None:
            return client.acquire_sync(self.name, wait=wait, **kw)
        return client.acquire_permit_sync(self.name, limit=self._limit(rng), wait=wait, **kw)

    async def try_async(self, client: Any, kw: dict[str, Any], rng: random.Random) -> Any:
        if self.limit is None:
            return await client.try_acquire(self.name, **kw)
        return await client.try_acquire_permit(self.name, limit=self._limit(rng), **kw)

    async def acquire_async(
        self, client: Any, wait: float, kw: dict[str, Any], rng: random.Random
    ) -> Any:
        if self.limit is None:
            return await client.acquire(self.name, wait=wait, **kw)
        return await client.acquire_permit(self.name, limit=self._limit(rng), wait=wait, **kw)

    def unexpected(self, lane: str, where: str, exc: BaseException) -> None:
        self.counts[lane]["unexpected"] += 1
        self.emit(ev="unexpected", lane=lane, where=where, error=type(exc).__name__,
                  detail="".join(traceback.format_exception(exc))[-2000:])  # fmt: skip

    def backend_error(self, lane: str, where: str, exc: BaseException) -> None:
        kind = getattr(exc, "kind", "?")
        self.counts[lane][f"backend_error:{where}:{kind}"] += 1

    # -- handle ends ------------------------------------------------------------------------

    def end(self, h: Handle) -> None:
        lease = h.lease
        rec: dict[str, Any] = {
            "ev": "end", "h": h.hid, "lane": h.lane, "on_lost": h.on_lost,
            "lease_lost_exc": h.lease_lost_exc, "release_result": h.release_result,
            "release_error": h.release_error, "read": h.read, "write": h.write,
            "wait_lost": h.wait_lost, "events": h.events,
        }  # fmt: skip
        if lease is not None:
            rec.update(
                is_lost=lease.is_lost, lost_reason=lease.lost_reason,
                is_released=lease.is_released, renewals=lease.renewals,
                renewal_failures=lease.renewal_failures,
            )  # fmt: skip
        else:
            rec.update(is_lost=False, lost_reason=None, is_released=True, renewals=0,
                       renewal_failures=0)  # fmt: skip
        self.emit(**rec)

    def finish_sync(self, h: Handle) -> None:
        """Records the handle's end once it has ended (released or lost), from a thread that
        polls: a handle whose release failed ends at its deadline."""
        lease = h.lease
        if lease is None or lease.is_lost or lease.is_released:
            self.end(h)
            return
        h.t_end_deadline = time.monotonic() + self.end_timeout
        with self._pending_cv:
            self._pending.append(h)
            self._pending_cv.notify()

    def _finisher(self, done: threading.Event) -> None:
        while True:
            with self._pending_cv:
                if not self._pending and done.is_set():
                    return
                self._pending_cv.wait(timeout=0.05)
                pending = list(self._pending)
            for h in pending:
                lease = h.lease
                ended = lease.is_lost or lease.is_released
                if ended or time.monotonic() > h.t_end_deadline:
                    if not ended:
                        h.wait_lost = "pending"
                    with self._pending_cv:
                        self._pending.remove(h)
                    self.end(h)

    # -- bodies -----------------------------------------------------------------------------

    def body_sync(
        self, reg: FencedRegister, h: Handle, rng: random.Random, term: Any = None
    ) -> None:
        who = self.who(h)
        self.claim(h)
        v = reg.read(who)
        if v is None:
            h.read = "refused"
            return
        h.read = "accepted"
        hold = self.pick_hold(rng)
        if hold:
            time.sleep(hold)
        if term is not None and rng.random() < 0.3:
            # A proclaim between the read and the write (LeaseLost when no longer leader).
            term.proclaim_sync({**self.metadata(h.lane), "value": str(v)})
        self.claim(h)
        h.write = "accepted" if reg.write(who, v, v + 1) else "refused"

    async def body_async(
        self, reg: FencedRegister, h: Handle, rng: random.Random, term: Any = None
    ) -> None:
        who = self.who(h)
        self.claim(h)
        v = reg.read(who)
        if v is None:
            h.read = "refused"
            return
        h.read = "accepted"
        hold = self.pick_hold(rng)
        if hold:
            await asyncio.sleep(hold)
        if term is not None and rng.random() < 0.3:
            await term.proclaim({**self.metadata(h.lane), "value": str(v)})
        self.claim(h)
        h.write = "accepted" if reg.write(who, v, v + 1) else "refused"

    def pick_hold(self, rng: random.Random) -> float:
        """How long a holder sleeps between its read and its write: in the election mode a
        leader leads for 0-5 ms, but now and then (as the plain mode) across a renewal or a
        fault."""
        if self.election_mode and rng.random() < 0.9:
            return rng.uniform(0.0, 0.005)
        if self.limit is not None and rng.random() < 0.7:
            # Permits are held for up to 30 ms mostly, so that several overlap.
            return rng.uniform(0.0, 0.03)
        return pick_hold(rng, self.duration)

    def lease_kwargs(self, rng: random.Random, lane: str) -> dict[str, Any]:
        kw: dict[str, Any] = {"duration": self.duration, "metadata": self.metadata(lane)}
        if rng.random() < 0.2:
            kw["renew_interval"] = round(self.duration / 4, 3)
        return kw

    # -- sync lanes -------------------------------------------------------------------------

    def sync_once(self, client: Any, reg: FencedRegister, lane: str, rng: random.Random) -> bool:
        """One iteration; False if the lease was not obtained."""
        import distributed_leasing as dl

        if self.sabotage == "nolease":
            fake = self.acquired(lane, None, time.monotonic(), 0.0)
            self.body_sync(reg, fake, rng)
            self.end(fake)
            return True
        wait = pick_wait(rng)
        kw = self.lease_kwargs(rng, lane)
        box: list[Handle] = []  # the handle, once acquired
        t_call = time.monotonic()
        if self.election_mode:
            return self.sync_campaign(reg, lane, rng, wait, box, t_call)
        if lane == "sync_ctx":
            on_lost = "cancel" if rng.random() < 0.8 else "ignore"
            try:
                with self.held_ctx(client, wait, on_lost, kw, rng) as lease:
                    box.append(self.acquired(lane, lease, t_call, wait))
                    box[0].on_lost = on_lost
                    self.body_sync(reg, box[0], rng)
            except dl.LeaseUnavailable:
                self.counts[lane]["unavailable" if not wait else "unavailable_after_wait"] += 1
                return False
            except dl.LeaseLost as e:
                if not box:
                    raise
                box[0].lease_lost_exc = str(e.reason)
            except dl.BackendError as e:
                if not box:
                    self.backend_error(lane, "acquire", e)
                    return False
                box[0].release_error = str(e.kind)
            self.finish_sync(box[0])
            return True
        # sync_acquire
        try:
            if not wait and rng.random() < 0.5:
                lease = self.try_sync(client, kw, rng)
            else:
                lease = self.acquire_sync(client, wait, kw, rng)
        except dl.LeaseUnavailable:
            self.counts[lane]["unavailable" if not wait else "unavailable_after_wait"] += 1
            return False
        except dl.BackendError as e:
            self.backend_error(lane, "acquire", e)
            return False
        if lease is None:
            self.counts[lane]["unavailable"] += 1
            return False
        h = self.acquired(lane, lease, t_call, wait)
        try:
            self.body_sync(reg, h, rng)
        finally:
            try:
                h.release_result = bool(lease.release_sync())
            except dl.BackendError as e:
                h.release_error = str(e.kind)
            self.finish_sync(h)
        return True

    def sync_campaign(
        self,
        reg: FencedRegister,
        lane: str,
        rng: random.Random,
        wait: float,
        box: list[Handle],
        t_call: float,
    ) -> bool:
        """One term in the election mode, from a thread: ``with election.campaign(...)``; the
        ``sync_acquire`` lane resigns by hand inside it."""
        import distributed_leasing as dl

        try:
            with self.election.campaign(metadata=self.metadata(lane), wait=wait) as term:
                box.append(self.acquired(lane, term.lease, t_call, wait))
                self.body_sync(reg, box[0], rng, term)
                if lane == "sync_acquire":
                    term.resign_sync()
                    box[0].release_result = True
        except dl.LeaseUnavailable:
            self.counts[lane]["unavailable" if not wait else "unavailable_after_wait"] += 1
            return False
        except dl.LeaseLost as e:
            if not box:
                raise
            box[0].lease_lost_exc = str(e.reason)
        except dl.BackendError as e:
            if not box:
                self.backend_error(lane, "acquire", e)
                return False
            box[0].release_error = str(e.kind)
        self.finish_sync(box[0])
        return True

    def sync_lane(self, client: Any, lane: str, rng: random.Random) -> None:
        reg = FencedRegister(self.cfg["register"])
        try:
            while not self.stopping():
                try:
                    got = self.sync_once(client, reg, lane, rng)
                except Exception as e:  # recorded; the checker flags it
                    self.unexpected(lane, "sync", e)
                    got = False
                    time.sleep(0.05)
                time.sleep(rng.uniform(0, 0.01) if got else rng.uniform(0.002, 0.02))
        finally:
            reg.close()

    # -- async lanes ------------------------------------------------------------------------

    @staticmethod
    async def _collect_events(it: Any) -> dict[str, Any]:
        c: dict[str, Any] = {"renewed": 0, "renewal_failed": 0, "lost": [], "released": 0}
        async for e in it:
            if e.kind == "lost":
                c["lost"].append(e.reason)
            else:
                c[e.kind] += 1
        c["complete"] = True
        return c

    def watch(self, lease: Any) -> tuple[asyncio.Future[Any], asyncio.Task[Any]]:
        wl = asyncio.ensure_future(lease.wait_lost())
        ev = asyncio.ensure_future(self._collect_events(lease.events()))
        return wl, ev

    async def finish_async(
        self, h: Handle, watch: tuple[asyncio.Future[Any], asyncio.Task[Any]] | None
    ) -> None:
        if watch is not None:
            wl, ev = watch
            try:
                reason = await asyncio.wait_for(asyncio.shield(wl), self.end_timeout)
                h.wait_lost = "released" if reason is None else str(reason)
            except TimeoutError:
                h.wait_lost = "pending"
            try:
                h.events = await asyncio.wait_for(asyncio.shield(ev), 5.0)
            except TimeoutError:
                h.events = {"complete": False}
            ev.cancel()
            wl.cancel()
        self.end(h)

    async def async_once(
        self,
        client: Any,
        reg: FencedRegister,
        lane: str,
        rng: random.Random,
        finishers: list[asyncio.Task[None]],
    ) -> bool:
        import distributed_leasing as dl

        if self.sabotage == "nolease":
            fake = self.acquired(lane, None, time.monotonic(), 0.0)
            await self.body_async(reg, fake, rng)
            self.end(fake)
            return True
        wait = pick_wait(rng)
        kw = self.lease_kwargs(rng, lane)
        box: list[Handle] = []  # the handle, once acquired
        watch = None
        t_call = time.monotonic()
        if self.election_mode:
            return await self.async_campaign(reg, lane, rng, wait, t_call, finishers)
        if lane == "async_ctx":
            on_lost = "cancel" if rng.random() < 0.8 else "ignore"
            try:
                async with self.held_ctx(client, wait, on_lost, kw, rng) as lease:
                    box.append(self.acquired(lane, lease, t_call, wait))
                    box[0].on_lost = on_lost
                    watch = self.watch(lease)
                    await self.body_async(reg, box[0], rng)
            except dl.LeaseUnavailable:
                self.counts[lane]["unavailable" if not wait else "unavailable_after_wait"] += 1
                return False
            except dl.LeaseLost as e:
                if not box:
                    raise
                box[0].lease_lost_exc = str(e.reason)
            except dl.BackendError as e:
                if not box:
                    self.backend_error(lane, "acquire", e)
                    return False
                box[0].release_error = str(e.kind)
            finishers.append(asyncio.ensure_future(self.finish_async(box[0], watch)))
            return True
        # async_try
        try:
            if not wait and rng.random() < 0.6:
                lease = await self.try_async(client, kw, rng)
            else:
                lease = await self.acquire_async(client, wait, kw, rng)
        except dl.LeaseUnavailable:
            self.counts[lane]["unavailable" if not wait else "unavailable_after_wait"] += 1
            return False
        except dl.BackendError as e:
            self.backend_error(lane, "acquire", e)
            return False
        if lease is None:
            self.counts[lane]["unavailable"] += 1
            return False
        h = self.acquired(lane, lease, t_call, wait)
        watch = self.watch(lease)
        try:
            await self.body_async(reg, h, rng)
        finally:
            try:
                h.release_result = bool(await lease.release())
            except dl.BackendError as e:
                h.release_error = str(e.kind)
            finishers.append(asyncio.ensure_future(self.finish_async(h, watch)))
        return True

    async def async_campaign(
        self,
        reg: FencedRegister,
        lane: str,
        rng: random.Random,
        wait: float,
        t_call: float,
        finishers: list[asyncio.Task[None]],
    ) -> bool:
        """One campaign in the election mode, on the event loop: ``async with
        election.campaign(...)`` (``async_ctx``) or ``election.run(fn)`` (``async_try``: each
        term ``fn`` is given is a handle; ``fn`` returns after one write, which resigns; the
        run is cancelled after its wait, which resigns too)."""
        import distributed_leasing as dl

        handles: list[tuple[Handle, Any]] = []
        if lane == "async_try":

            async def lead(term: Any) -> None:
                h = self.acquired(lane, term.lease, t_call, wait)
                handles.append((h, self.watch(term.lease)))
                try:
                    await self.body_async(reg, h, rng, term)
                except dl.LeaseLost as e:
                    h.lease_lost_exc = str(e.reason)

            try:
                await asyncio.wait_for(self.election.run(lead), max(wait, 0.05) + 0.5)
            except TimeoutError:
                if not handles:
                    self.counts[lane]["unavailable_after_wait"] += 1
            except dl.LeaseLost as e:  # the resign after a term that was lost
                if not handles:
                    raise
                if handles[-1][0].lease_lost_exc is None:
                    handles[-1][0].lease_lost_exc = str(e.reason)
            except dl.BackendError as e:
                if not handles:
                    self.backend_error(lane, "acquire", e)
                else:
                    handles[-1][0].release_error = str(e.kind)
            for h, watch in handles:
                finishers.append(asyncio.ensure_future(self.finish_async(h, watch)))
            return bool(handles)
        box: list[Handle] = []
        watch = None
        try:
            async with self.election.campaign(metadata=self.metadata(lane), wait=wait) as term:
                box.append(self.acquired(lane, term.lease, t_call, wait))
                watch = self.watch(term.lease)
                await self.body_async(reg, box[0], rng, term)
        except dl.LeaseUnavailable:
            self.counts[lane]["unavailable" if not wait else "unavailable_after_wait"] += 1
            return False
        except dl.LeaseLost as e:
            if not box:
                raise
            box[0].lease_lost_exc = str(e.reason)
        except dl.BackendError as e:
            if not box:
                self.backend_error(lane, "acquire", e)
                return False
            box[0].release_error = str(e.kind)
        finishers.append(asyncio.ensure_future(self.finish_async(box[0], watch)))
        return True

    async def observe_lane(self) -> None:
        """The election mode's observer: records every value ``election.observe()`` yields
        until the run stops."""

        async def record() -> None:
            async for leader in self.election.observe():
                self.emit(
                    ev="observed",
                    t=time.monotonic(),
                    lease_id=None if leader is None else leader.lease_id,
                    term=None if leader is None else leader.term,
                    identity=None if leader is None else leader.identity,
                    metadata=None if leader is None else leader.metadata,
                )

        task = asyncio.ensure_future(record())
        try:
            while not self.stopping() and not task.done():
                await asyncio.sleep(0.1)
        finally:
            task.cancel()
            results = await asyncio.gather(task, return_exceptions=True)
        if isinstance(results[0], Exception):
            self.unexpected("observe", "observe", results[0])

    async def async_lane(self, client: Any, lane: str, rng: random.Random) -> None:
        reg = FencedRegister(self.cfg["register"])
        finishers: list[asyncio.Task[None]] = []
        try:
            while not self.stopping():
                try:
                    got = await self.async_once(client, reg, lane, rng, finishers)
                except Exception as e:  # recorded; the checker flags it
                    self.unexpected(lane, "async", e)
                    got = False
                    await asyncio.sleep(0.05)
                await asyncio.sleep(rng.uniform(0, 0.01) if got else rng.uniform(0.002, 0.02))
                finishers = [f for f in finishers if not f.done()]
            if finishers:
                await asyncio.gather(*finishers)
        finally:
            reg.close()

    # -- the process ------------------------------------------------------------------------

    def connect(self) -> Any:
        """A client of this process (None if the run stopped before one could connect)."""
        import distributed_leasing as dl

        while not self.stopping():
            try:
                return dl.LeaseClient.connect_sync(
                    self.cfg["url"], connect_timeout=2.0, operation_timeout=2.0
                )
            except dl.BackendError as e:
                self.backend_error("connect", "connect", e)
                time.sleep(0.2)
        return None

    def run(self, main: str) -> int:
        """Runs the lanes until the stop file appears. ``main="async"``: the async lanes on an
        event loop on this (the main) thread, each sync lane on a thread of its own.
        ``main="sync"``: the first sync lane on this thread, the other sync lanes on threads,
        the async lanes on an event loop in a thread."""
        import distributed_leasing as dl

        code = 0
        try:
            client = self.connect()
            if client is None:
                self.emit(ev="no_start", counts={ln: dict(c) for ln, c in self.counts.items()})
                return 0
            base = dl.metrics()
            if self.election_mode:
                self.election = client.election(
                    self.name, identity=f"{self.pid}:{self.wid}", duration=self.duration
                )
            async_lanes = [ln for ln in self.lanes if ln.startswith("async")]
            if self.election_mode:
                async_lanes.append("observe")
            sync_lanes = [ln for ln in self.lanes if ln.startswith("sync")]
            on_main = sync_lanes.pop(0) if main == "sync" and sync_lanes else None
            self.emit(ev="start", kind=self.kind, lanes=self.lanes, ppid=os.getppid(),
                      main_thread=on_main or "event loop", t=time.monotonic())  # fmt: skip
            done = threading.Event()
            finisher = threading.Thread(target=self._finisher, args=(done,), daemon=True)
            finisher.start()

            async def all_async() -> None:
                await asyncio.gather(
                    *(
                        self.observe_lane()
                        if ln == "observe"
                        else self.async_lane(client, ln, random.Random(f"{self.seed}:a{i}:{ln}"))
                        for i, ln in enumerate(async_lanes)
                    )
                )

            threads = [
                threading.Thread(
                    target=self.sync_lane,
                    args=(client, ln, random.Random(f"{self.seed}:{i}:{ln}")),
                    name=f"lane-{ln}",
                )
                for i, ln in enumerate(sync_lanes)
            ]
            if async_lanes and on_main is not None:
                threads.append(
                    threading.Thread(target=asyncio.run, args=(all_async(),), name="lane-loop")
                )
            for t in threads:
                t.start()
            if on_main is not None:
                self.sync_lane(client, on_main, random.Random(f"{self.seed}:m:{on_main}"))
            elif async_lanes:
                asyncio.run(all_async())
            for t in threads:
                t.join()
            done.set()
            with self._pending_cv:
                self._pending_cv.notify()
            finisher.join()
            after = dl.metrics()
            delta = {
                k.removeprefix("leasing."): after.get(k, 0) - base.get(k, 0)
                for k in ("leasing.acquisitions.total", "leasing.leases_lost.total",
                          "leasing.active_leases.current")
            }  # fmt: skip
            handles = [h for h in self.handles if h.lease is not None]
            self.emit(
                ev="exit",
                counts={ln: dict(c) for ln, c in self.counts.items()},
                metrics=delta,
                handles=len(handles),
                lost=sum(1 for h in handles if h.lease.is_lost),
                ended=sum(1 for h in handles if h.lease.is_lost or h.lease.is_released),
            )
            if self.sabotage == "leak":
                # The control of (d): a process that ends normally (its exit recorded) but
                # leaves a lease held, skipping the library's at-exit release (os._exit).
                client.try_acquire_sync(f"{self.name}-leak-{self.wid}", duration=60.0,
                                        metadata=self.metadata("leak"))  # fmt: skip
                self._out.close()
                os._exit(0)
        except BaseException as e:
            code = 3
            self.unexpected("process", "run", e)
        finally:
            self._out.close()
        return code


# -- direct host: the leaf is the process the orchestrator started ------------------------------


def run_direct(cfg: dict[str, Any]) -> int:
    die_with_parent()
    leaf = Leaf(cfg, list(cfg["lanes"]), cfg["seed"], "direct")
    return leaf.run(main="async")


# -- fork host: uses the library, then forks children ----------------------------------------


def use_library_before_fork(cfg: dict[str, Any]) -> Any:
    """A synchronous and an asynchronous acquire (and release) in this process, on its main
    thread, before any fork: whatever per-process or per-thread state the library keeps is
    then set up and copied into every child."""
    import distributed_leasing as dl

    pre = f"{cfg['name']}-forkhost-{os.getpid()}"
    deadline = time.monotonic() + 120
    while True:
        try:
            client = dl.LeaseClient.connect_sync(cfg["url"], connect_timeout=2.0,
                                                 operation_timeout=2.0)  # fmt: skip
            lease = client.try_acquire_sync(pre, duration=cfg["duration"])
            assert lease is not None, "nobody else uses this name"
            lease.release_sync()

            async def once(client: Any = client) -> None:
                lease = await client.try_acquire(pre, duration=cfg["duration"])
                assert lease is not None, "nobody else uses this name"
                await lease.release()

            asyncio.run(once())
            return client
        except dl.BackendError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _child_main(
    cfg: dict[str, Any], lanes: list[str], main: str, seed: str, kind: str, go: tuple[int, int]
) -> int:
    """A forked child: waits until its siblings are forked too (EOF on the "go" pipe once the
    parent and every child closed its write end), then runs as a leaf."""
    die_with_parent()
    go_r, go_w = go
    if go_w >= 0:
        os.close(go_w)
    with contextlib.suppress(OSError):
        os.read(go_r, 1)
    with contextlib.suppress(OSError):
        os.close(go_r)
    leaf = Leaf(cfg, lanes, seed, kind)
    return leaf.run(main=main)


def _mp_child(
    cfg: dict[str, Any], lanes: list[str], main: str, seed: str, go: tuple[int, int]
) -> None:
    code = _child_main(cfg, lanes, main, seed, "mpfork", go)
    sys.stdout.flush()
    os._exit(code)


# -- prefork host: a parent that holds leases and keeps using its client while children come
#    and go, each leaving through sys.exit ---------------------------------------------------

PREFORK_LEASES = 10
PREFORK_RENEW_INTERVAL = 0.02
# An operation of the parent must finish within this (its client's operation_timeout is 5 s:
# an operation that waits for it has stalled; a normal one takes milliseconds).
PREFORK_OP_BOUND = 2.5
PREFORK_OPS = ("inspect", "renew", "try_acquire", "list")
# A prefork child still running this long past its life (its workload stops then; a handle's
# end is awaited at most duration * 3 + 10 s) has hung.
PREFORK_HUNG = 30.0


class PreforkParent:
    """The parent of the prefork mode: holds ``PREFORK_LEASES`` leases renewed every
    ``PREFORK_RENEW_INTERVAL`` s and, every 0.2 s, runs one operation on its client (inspect
    of a held lease, renew_sync, try_acquire_sync + release_sync of a scratch name, list_sync)
    and times it. An operation slower than ``PREFORK_OP_BOUND``, or failing, is recorded with
    the time since the last child's exit; at the end every held lease must still be held (not
    lost, no failed renewal) and be released."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        import distributed_leasing as dl

        self.pid = os.getpid()
        self.wid = os.urandom(6).hex()
        self.name = f"{cfg['name']}-prefork-{self.pid}"
        self.duration: float = cfg["duration"]
        out = Path(cfg["outdir"]) / f"w-{self.pid}-{self.wid}.jsonl"
        self._out = open(out, "a", buffering=1)  # noqa: SIM115 - closed in finish()
        self.client = dl.LeaseClient.connect_sync(
            cfg["url"], connect_timeout=5.0, operation_timeout=5.0
        )
        self.meta = meta = {"pid": str(self.pid), "wid": self.wid, "lane": "prefork_parent"}
        self.leases = []
        for i in range(PREFORK_LEASES):
            lease = self.client.try_acquire_sync(
                f"{self.name}-{i}", duration=self.duration,
                renew_interval=PREFORK_RENEW_INTERVAL, metadata=meta,
            )  # fmt: skip
            assert lease is not None, "nobody else uses this name"
            self.leases.append(lease)
            self.emit(ev="prefork_lease", name=lease.name, lease_id=lease.lease_id)
        self.ops: Counter[str] = Counter()
        self.max_s: dict[str, float] = defaultdict(float)
        self.slow: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.last_child_exit: float | None = None
        self.child_exits = 0
        self._next = time.monotonic()
        self._k = 0

    def emit(self, **rec: Any) -> None:
        rec.setdefault("pid", self.pid)
        rec.setdefault("wid", self.wid)
        self._out.write(json.dumps(rec, sort_keys=True, default=str) + "\n")

    def child_exited(self) -> None:
        self.last_child_exit = time.monotonic()
        self.child_exits += 1
        self._next = 0.0  # the parent's next operation comes at once

    def _op(self, op: str) -> None:
        c, k = self.client, self._k
        lease = self.leases[k % len(self.leases)]
        if op == "inspect":
            info = c.inspect_sync(lease.name)
            if info is None or info.lease_id != lease.lease_id:
                raise AssertionError(f"inspect of its own lease {lease.name!r} gave {info!r}")
        elif op == "renew":
            lease.renew_sync()
        elif op == "try_acquire":
            scratch = c.try_acquire_sync(
                f"{self.name}-scratch", duration=self.duration, metadata=self.meta
            )
            if scratch is None:
                raise AssertionError("its own scratch name was held")
            if not scratch.release_sync():
                raise AssertionError("the release of its scratch lease found it gone")
        else:
            names = {i.name for i in c.list_sync(self.name)}
            if not {x.name for x in self.leases} <= names:
                raise AssertionError(f"list_sync misses its leases: {sorted(names)}")

    def tick(self) -> None:
        """Runs the next operation if it is due, and times it."""
        now = time.monotonic()
        if now < self._next:
            return
        op = PREFORK_OPS[self._k % len(PREFORK_OPS)]
        self._k += 1
        since = None if self.last_child_exit is None else round(now - self.last_child_exit, 3)
        t0 = time.monotonic()
        error = None
        try:
            self._op(op)
        except Exception as e:  # recorded: the checker flags it
            error = f"{type(e).__name__}: {e}"[:300]
        took = time.monotonic() - t0
        self.ops[op] += 1
        self.max_s[op] = max(self.max_s[op], took)
        rec = {"op": op, "seconds": round(took, 3), "since_child_exit": since,
               "child_exits": self.child_exits}  # fmt: skip
        if took > PREFORK_OP_BOUND:  # stalled, whether it then failed or not
            self.slow.append({**rec, "error": error})
            self.emit(ev="prefork_op_slow", **rec, error=error)
        elif error is not None:
            self.failed.append({**rec, "error": error})
            self.emit(ev="prefork_op_failed", **rec, error=error)
        self._next = time.monotonic() + 0.2

    def finish(self, hung: list[dict[str, Any]], exit_codes: list[int]) -> None:
        """Checks and releases its leases, closes its client, writes its record."""
        leases = []
        for lease in self.leases:
            state = {
                "name": lease.name, "is_lost": lease.is_lost, "lost_reason": lease.lost_reason,
                "renewals": lease.renewals, "renewal_failures": lease.renewal_failures,
            }  # fmt: skip
            try:
                state["released"] = bool(lease.release_sync())
            except Exception as e:
                state["released"] = f"{type(e).__name__}: {e}"[:300]
            leases.append(state)
        self.client.close_sync()
        self.emit(ev="prefork_parent", ops=dict(self.ops),
                  max_s={k: round(v, 3) for k, v in self.max_s.items()}, slow=self.slow,
                  failed=self.failed, leases=leases, child_exits=self.child_exits,
                  exit_codes=dict(Counter(exit_codes)), hung=hung)  # fmt: skip
        self._out.close()


def _dump_stacks(pid: int) -> None:
    """Writes a hung child's stacks to stderr: its Python threads' (faulthandler, registered
    in the child, on SIGUSR1), then every native thread's (gdb, when installed)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGUSR1)
    time.sleep(1.0)
    gdb = shutil.which("gdb")
    if gdb is None:
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [gdb, "-batch", "-p", str(pid), "-ex", "thread apply all bt 40"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("#", "Thread"))]
        sys.stderr.write(f"gdb, hung child {pid}:\n" + "\n".join(lines) + "\n")
        sys.stderr.flush()


def run_fork_host(cfg: dict[str, Any]) -> int:
    """Forks ``cfg['children']`` children (``os.fork`` or multiprocessing's "fork" context),
    replaces a child that dies before the stop, reports child pids on stdout, and signals a
    child on the orchestrator's request (``sig <pid> <signum>`` on stdin): the parent knows
    which of its children are still unreaped, so it never signals a recycled pid.

    ``kind="prefork"``: the parent is a ``PreforkParent`` (leases renewed often, an operation
    timed every 0.2 s); its ``os.fork`` children live ``1-3`` s each, leave through
    ``sys.exit`` and are replaced, and one still running ``PREFORK_HUNG`` s past its life is
    SIGKILLed and reported as hung."""
    import multiprocessing

    die_with_parent()
    kind = cfg["kind"]
    rng = random.Random(cfg["seed"])
    parent = PreforkParent(cfg) if kind == "prefork" else None
    # kept open: the parent keeps using the library
    client = parent.client if parent is not None else use_library_before_fork(cfg)
    stop_file = Path(cfg["stop_file"])
    mp = multiprocessing.get_context("fork")
    children: dict[int, Any] = {}  # pid -> Process (mpfork) or None (os.fork)
    hung_at: dict[int, float] = {}  # prefork: pid -> when it is called hung
    hung: list[dict[str, Any]] = []
    idle_pids: set[int] = set()
    exit_codes: list[int] = []
    generation = 0

    def say(**rec: Any) -> None:
        sys.stdout.write(json.dumps(rec) + "\n")
        sys.stdout.flush()

    def spawn(go: tuple[int, int]) -> int:
        # os.fork children run a sync lane on their main thread (the thread that used the
        # library before the fork), and half the time an async lane on a loop in a thread;
        # multiprocessing children alternate between that and an event loop on the main
        # thread (and half the time a sync lane on a thread).
        nonlocal generation
        generation += 1
        sync_lane = rng.choice(["sync_ctx", "sync_acquire"])
        async_lane = rng.choice(["async_ctx", "async_try"])
        extra = rng.random() < 0.5
        if kind != "mpfork" or generation % 2 == 1:
            main, lanes = "sync", [sync_lane] + ([async_lane] if extra else [])
        else:
            main, lanes = "async", [async_lane] + ([sync_lane] if extra else [])
        seed = f"{cfg['seed']}:child{generation}"
        if kind == "mpfork":
            p = mp.Process(target=_mp_child, args=(cfg, lanes, main, seed, go), daemon=False)
            p.start()
            assert p.pid is not None
            children[p.pid] = p
            return p.pid
        sys.stdout.flush()
        sys.stderr.flush()
        life = rng.uniform(1.0, 3.0) if kind == "prefork" else 0.0
        # prefork: a third of the replacements never use the library (a worker that had no
        # lease to take); the first children all do (each writes the record awaited at start)
        idle = kind == "prefork" and generation > cfg["children"] and rng.random() < 1 / 3
        pid = os.fork()
        if pid == 0:
            if kind == "prefork":
                faulthandler.register(signal.SIGUSR1, all_threads=True)  # if it hangs
                # Leaves as a prefork server's worker does: through sys.exit (atexit hooks,
                # finalizers, the library's own at-exit work), never os._exit.
                if idle:
                    die_with_parent()
                    time.sleep(life)
                    sys.exit(0)
                sys.exit(_child_main({**cfg, "max_seconds": life}, lanes, main, seed, kind, go))
            code = 1
            try:
                code = _child_main(cfg, lanes, main, seed, "fork", go)
            finally:
                os._exit(code)
        children[pid] = None
        if kind == "prefork":
            hung_at[pid] = time.monotonic() + life + PREFORK_HUNG
            if idle:
                idle_pids.add(pid)
        return pid

    go_r, go_w = os.pipe()
    for _ in range(cfg["children"]):
        say(ev="child", pid=spawn((go_r, go_w)))
    os.close(go_w)  # all children start now, together
    os.close(go_r)

    # stdin is read with os.read, never through a buffered file: two requests that arrived
    # together (a SIGSTOP and its SIGCONT, while this loop was busy) must not leave the second
    # in a buffer that select() does not see.
    stdin = sys.stdin.fileno()
    sel = selectors.DefaultSelector()
    sel.register(stdin, selectors.EVENT_READ)
    unread = b""
    stopping = False
    stop_deadline = 0.0
    while children or not stopping:
        if parent is not None:
            parent.tick()
        for _ in sel.select(timeout=0.1):
            chunk = os.read(stdin, 4096)
            if not chunk:
                sel.unregister(stdin)
                stopping = True
                stop_deadline = time.monotonic() + 60
                continue
            *lines, unread = (unread + chunk).split(b"\n")
            for line in lines:
                parts = line.split()
                if parts[:1] == [b"sig"] and len(parts) == 3:
                    pid, sig = int(parts[1]), int(parts[2])
                    if pid in children:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, sig)
        for pid, proc in list(children.items()):
            if proc is None:
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done, status = pid, 0
                if done == 0:
                    continue
                code = os.waitstatus_to_exitcode(status)
            else:
                if proc.exitcode is None:
                    continue
                code = proc.exitcode
                proc.join()
            del children[pid]
            say(ev="child_exit", pid=pid, code=code)
            exit_codes.append(code)
            if parent is not None:
                parent.child_exited()
            if not stopping and not stop_file.exists():
                r, w = os.pipe()
                os.close(w)
                say(ev="child", pid=spawn((r, -1)))
                os.close(r)
        for pid, at in list(hung_at.items()):
            if pid not in children:
                del hung_at[pid]
            elif time.monotonic() > at:
                del hung_at[pid]
                hung.append({"pid": pid, "idle": pid in idle_pids})
                _dump_stacks(pid)
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
        if not stopping and stop_file.exists():
            stopping = True
            stop_deadline = time.monotonic() + 60
        if stopping and time.monotonic() > stop_deadline:
            for pid in children:
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            stop_deadline = time.monotonic() + 3600
    if parent is not None:
        parent.finish(hung, exit_codes)
    else:
        client.close_sync()
    return 0


# ============================================================================================
# Stores under test
# ============================================================================================


class ProxiedCluster:
    """A 3-master Redis Cluster whose nodes announce the port of a loopback proxy in front of
    each of them, so that clients reach every node through a proxy that can be black-holed
    (the cluster bus between nodes is direct)."""

    def __init__(self, masters: int = 3) -> None:
        from redis_servers import RedisCluster

        self.inner = RedisCluster(masters)
        self.proxies: list[Any] = []

    def start(self) -> ProxiedCluster:
        from redis_servers import REDIS_CLI_BIN, RedisServer, free_port, free_port_with_bus
        from tcp_proxy import TcpProxy

        inner = self.inner
        try:
            for _ in range(inner.masters):
                port = free_port_with_bus()
                proxy_port = free_port()
                proxy = TcpProxy(port, listen_port=proxy_port).start()
                self.proxies.append(proxy)
                node = RedisServer(
                    port,
                    extra_args=[
                        "--cluster-enabled", "yes",
                        "--cluster-node-timeout", str(inner.node_timeout_ms),
                        "--cluster-require-full-coverage", "yes",
                        "--cluster-announce-ip", "127.0.0.1",
                        "--cluster-announce-port", str(proxy.port),
                        "--cluster-announce-bus-port", str(port + 10000),
                    ],
                )  # fmt: skip
                inner.nodes.append(node)
                node.start()
            cmd = [REDIS_CLI_BIN, "--cluster", "create",
                   *(f"127.0.0.1:{n.port}" for n in inner.nodes),
                   "--cluster-replicas", "0", "--cluster-yes"]  # fmt: skip
            r = subprocess.run(
                cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
            )
            if r.returncode != 0 or "[OK] All 16384 slots covered" not in r.stdout:
                raise RuntimeError(f"cluster create failed:\n{r.stdout}\n{r.stderr}")
            inner.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.proxies[0].port}"

    def node_of(self, key: str) -> int:
        slot = self.inner.nodes[0].command("CLUSTER", "KEYSLOT", key)
        assert isinstance(slot, int)
        for first, last, port in self.inner.slot_map(0):
            if first <= slot <= last:
                for i, p in enumerate(self.proxies):
                    if p.port == port:
                        return i
        raise RuntimeError(f"no node owns slot {slot}")

    def stop(self) -> None:
        self.inner.stop()
        for p in self.proxies:
            p.close()
        self.proxies = []


class StoreEnv:
    """The store under test, its proxies, and how to inject the store-side faults."""

    def __init__(self, store: str, workdir: Path, sabotage: str | None) -> None:
        self.store = store
        self.workdir = workdir
        self.sabotage = sabotage
        self.server: Any = None
        self.proxy: Any = None
        self.cluster: ProxiedCluster | None = None
        self.pg: Any = None
        self.etcd: Any = None
        self.url_direct = ""
        self.url_proxied = ""

    def start(self) -> StoreEnv:
        if self.store == "redis":
            from redis_servers import RedisServer
            from tcp_proxy import TcpProxy

            persist = [] if self.sabotage == "noaof" else [
                "--appendonly", "yes", "--appendfsync", "always"]  # fmt: skip
            self.server = RedisServer(extra_args=persist).start()
            self.proxy = TcpProxy(self.server.port).start()
            self.url_direct = self.server.url
            self.url_proxied = f"redis://127.0.0.1:{self.proxy.port}"
        elif self.store == "redis-cluster":
            self.cluster = ProxiedCluster().start()
            self.url_direct = self.url_proxied = self.cluster.url
        elif self.store == "sqlite":
            self.url_direct = self.url_proxied = f"sqlite://{self.workdir / 'leases.db'}"
        elif self.store == "postgres":
            from postgres_server import PostgresServer

            self.pg = PostgresServer().start()
            self.url_direct = self.url_proxied = self.pg.url
        elif self.store == "etcd":
            from etcd_server import EtcdCluster

            self.etcd = EtcdCluster().start()
            self.url_direct = self.url_proxied = self.etcd.url
        else:
            raise ValueError(f"unknown store {self.store!r}")
        return self

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        if self.server is not None:
            self.server.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self.pg is not None:
            self.pg.stop()
        if self.etcd is not None:
            self.etcd.stop()

    def lease_key(self, name: str) -> str:
        return f"lease:{{{name}}}" if self.store == "redis-cluster" else f"lease:{name}"

    def nodes(self) -> list[Any]:
        if self.cluster is not None:
            return list(self.cluster.inner.nodes)
        return [self.server]

    def lease_node(self, name: str) -> int:
        return self.cluster.node_of(self.lease_key(name)) if self.cluster is not None else 0

    def proxies(self) -> list[Any]:
        if self.cluster is not None:
            return list(self.cluster.proxies)
        return [self.proxy]


# ============================================================================================
# Orchestrator
# ============================================================================================


class Host:
    """A worker process started by the orchestrator: a direct leaf or a fork host."""

    def __init__(self, spec: dict[str, Any], cfg: dict[str, Any], workdir: Path, gen: int):
        self.spec = spec
        self.kind: str = spec["kind"]
        self.gen = gen
        self.children: set[int] = set()
        self.child_exits: list[tuple[int, int]] = []
        self._lock = threading.Lock()
        cfg = dict(cfg)
        cfg["seed"] = f"{cfg['seed']}:{spec['id']}:{gen}"
        cfg["url"] = cfg["urls"][spec.get("via", "direct")]
        if self.kind == "direct":
            cfg["lanes"] = spec["lanes"]
        else:
            cfg["kind"] = self.kind
            cfg["children"] = spec["children"]
        self.stderr_path = workdir / f"host-{spec['id']}-{gen}.stderr"
        stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - owned by the child
        try:
            self.popen = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)],
                stdin=subprocess.PIPE if self.kind != "direct" else subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.kind != "direct" else subprocess.DEVNULL,
                stderr=stderr,
                text=True,
                env=_worker_env(),
                preexec_fn=die_with_parent
                if threading.current_thread() is threading.main_thread()
                else None,
            )
        finally:
            stderr.close()
        self.pid = self.popen.pid
        self._reader: threading.Thread | None = None
        if self.kind != "direct":
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                if rec.get("ev") == "child":
                    self.children.add(int(rec["pid"]))
                elif rec.get("ev") == "child_exit":
                    self.children.discard(int(rec["pid"]))
                    self.child_exits.append((int(rec["pid"]), int(rec["code"])))

    def alive(self) -> bool:
        return self.popen.poll() is None

    def leaves(self) -> list[int]:
        if not self.alive():
            return []
        if self.kind == "direct":
            return [self.pid]
        with self._lock:
            return sorted(self.children)

    def signal(self, pid: int, sig: int) -> bool:
        """Signals one of this host's leaves; False if it is gone."""
        if self.kind == "direct":
            if pid != self.pid or self.popen.poll() is not None:
                return False
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            return True
        with self._lock:
            if pid not in self.children:
                return False
        try:
            assert self.popen.stdin is not None
            self.popen.stdin.write(f"sig {pid} {int(sig)}\n")
            self.popen.stdin.flush()
        except (OSError, ValueError):
            return False
        return True

    def request_stop(self) -> None:
        if self.kind != "direct" and self.popen.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self.popen.stdin.close()

    def kill(self) -> None:
        """SIGCONT + SIGKILL the host and (through PDEATHSIG) its children; reaps it."""
        if self.kind != "direct":
            for pid in self.leaves():
                self.signal(pid, signal.SIGCONT)
        if self.popen.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)
        for f in (self.popen.stdin, self.popen.stdout):
            if f is not None:
                with contextlib.suppress(OSError, ValueError):
                    f.close()

    def stderr_tail(self, n: int = 3000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return env


def host_plan(
    fork: bool = True, prefork: bool = False, election: bool = False, semaphore: bool = False
) -> list[dict[str, Any]]:
    """The worker processes of a run: 4 direct (two through the proxy) and 2 fork hosts; in
    the prefork mode, one prefork host with 3 children at a time; in the election mode, 5
    direct processes of 2 lanes each (ten candidates), two through the proxy; in the
    semaphore mode, 8 worker processes: 6 direct of 2 lanes each (three through the proxy) and
    the 2 children of a fork host."""
    if semaphore:
        return [
            {"id": "A", "kind": "direct", "lanes": ["async_ctx", "async_try"], "via": "direct"},
            {"id": "B", "kind": "direct", "lanes": ["sync_ctx", "sync_acquire"], "via": "direct"},
            {"id": "C", "kind": "direct", "lanes": ["async_try", "sync_ctx"], "via": "proxied"},
            {"id": "D", "kind": "direct", "lanes": ["async_ctx", "sync_acquire"], "via": "proxied"},
            {"id": "E", "kind": "direct", "lanes": ["async_ctx", "sync_ctx"], "via": "direct"},
            {"id": "G", "kind": "direct", "lanes": ["async_try", "sync_acquire"], "via": "proxied"},
            {"id": "F", "kind": "fork", "children": 2, "via": "direct"},
        ][: None if fork else -1]
    if prefork:
        return [{"id": "P", "kind": "prefork", "children": 3, "via": "direct"}]
    if election:
        return [
            {"id": "A", "kind": "direct", "lanes": ["async_ctx", "async_try"], "via": "direct"},
            {"id": "B", "kind": "direct", "lanes": ["sync_ctx", "sync_acquire"], "via": "direct"},
            {"id": "C", "kind": "direct", "lanes": ["async_try", "sync_ctx"], "via": "proxied"},
            {"id": "D", "kind": "direct", "lanes": ["async_ctx", "sync_acquire"], "via": "proxied"},
            {"id": "E", "kind": "direct", "lanes": ["async_ctx", "sync_ctx"], "via": "direct"},
        ]
    plan: list[dict[str, Any]] = [
        {"id": "A", "kind": "direct", "lanes": ["async_ctx", "async_try"], "via": "direct"},
        {"id": "B", "kind": "direct", "lanes": ["sync_ctx", "sync_acquire"], "via": "direct"},
        {"id": "C", "kind": "direct", "lanes": ["async_try", "sync_ctx"], "via": "proxied"},
        {"id": "D", "kind": "direct", "lanes": ["async_ctx", "sync_acquire"], "via": "proxied"},
        {"id": "F", "kind": "fork", "children": 3, "via": "direct"},
        {"id": "M", "kind": "mpfork", "children": 2, "via": "proxied"},
    ]
    return plan if fork else [h for h in plan if h["kind"] == "direct"]


@dataclass
class Summary:
    store: str
    seed: int
    seconds: float
    elapsed: float = 0.0
    operations: dict[str, Any] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    violations: dict[str, int] = field(default_factory=dict)
    details: dict[str, list[Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fault_log: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # Why the run did not happen (the store refused the mode: semaphores it does not support)
    unsupported: str | None = None

    @property
    def total_violations(self) -> int:
        return sum(self.violations.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.store, "seed": self.seed, "seconds": self.seconds,
            "elapsed": round(self.elapsed, 1), "timings": self.timings,
            "operations": self.operations,
            "faults": self.faults, "violations": self.violations,
            "violation_details": self.details, "notes": self.notes,
            "fault_log": self.fault_log,
        }  # fmt: skip

    def text(self) -> str:
        ops = self.operations
        lines = [
            f"== checker: store={self.store} seed={self.seed} seconds={self.seconds} "
            f"(elapsed {self.elapsed:.1f} s: {self.timings})",
            f"   operations: {ops.get('acquisitions', 0)} acquisitions, "
            f"{ops.get('writes_accepted', 0)} writes accepted, "
            f"{ops.get('writes_refused', 0)} writes refused, "
            f"{ops.get('reads_refused', 0)} reads refused, final counter "
            f"{ops.get('final_counter')}; unavailable {ops.get('unavailable', 0)}, "
            f"backend errors {ops.get('backend_errors', 0)}",
            f"   losses: {ops.get('losses', {})}; LeaseLost raised "
            f"{ops.get('lease_lost_raised', 0)}; releases that found the lease gone "
            f"{ops.get('release_false', 0)}",
            f"   wins by lane: {ops.get('wins_by_lane', {})}; by process kind: "
            f"{ops.get('wins_by_kind', {})}",
            f"   processes: {ops.get('processes', {})}; held at the end "
            f"{ops.get('held_at_end', 0)} (excused: {ops.get('held_excused', {})})",
            f"   faults: {sum(self.faults.values())} {dict(sorted(self.faults.items()))}",
            f"   violations: {self.total_violations} {dict(sorted(self.violations.items()))}",
        ]
        if "prefork" in ops:
            lines.insert(-2, f"   prefork: {ops['prefork']}")
        if "observed" in ops:
            lines.insert(-2, f"   observed: {ops['observed']}")
        if "semaphore" in ops:
            lines.insert(-2, f"   semaphore: {ops['semaphore']}")
        if self.unsupported is not None:
            lines.insert(1, f"   not run: {self.unsupported}")
        for kind, items in sorted(self.details.items()):
            for item in items[:5]:
                lines.append(f"     {kind}: {json.dumps(item, default=str)[:400]}")
        lines.extend(f"   note: {n}" for n in self.notes)
        return "\n".join(lines)


class Orchestrator:
    def __init__(
        self,
        store: str,
        seconds: float,
        seed: int,
        workdir: Path,
        *,
        duration: float = 2.0,
        sabotage: str | None = None,
        faults: tuple[str, ...] | None = None,
        fork: bool = True,
        prefork: bool = False,
        election: bool = False,
        semaphore: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.fork = fork
        self.prefork = prefork
        self.election = election
        self.semaphore = semaphore
        self.store = store
        self.seconds = seconds
        self.seed = seed
        self.workdir = workdir
        self.duration = duration
        self.sabotage = sabotage
        self.rng = random.Random(f"{seed}:{store}")
        if faults is None:
            faults = PREFORK_FAULTS if prefork else FAULTS[store]
        self.fault_kinds = faults
        self.log = log or (lambda s: None)
        self.hosts: list[Host] = []
        self.dead_hosts: list[Host] = []
        self.fault_log: list[dict[str, Any]] = []
        self.env: StoreEnv | None = None
        self.admin: Any = None
        self.name = LEASE_NAME
        # The lease name whose Redis key the store-side faults aim at: in the semaphore mode
        # the record of the semaphore's slot 0 (src/store/mod.rs, permit_record: every key of
        # one semaphore is in its hash slot)
        self.key_name = f"\x1e{{{LEASE_NAME}}}\x1e{0:010}" if semaphore else LEASE_NAME
        self.notes: list[str] = []

    # -- processes --------------------------------------------------------------------------

    def _cfg(self) -> dict[str, Any]:
        assert self.env is not None
        return {
            "urls": {"direct": self.env.url_direct, "proxied": self.env.url_proxied},
            "name": self.name,
            "duration": self.duration,
            "register": str(self.workdir / "register.db"),
            "outdir": str(self.workdir / "records"),
            "stop_file": str(self.workdir / "stop"),
            "max_seconds": self.seconds + 600,
            "seed": str(self.seed),
            "sabotage": self.sabotage,
            "election": self.election,
            "semaphore": self.semaphore,
            "limit": SEMAPHORE_LIMIT + (self.sabotage == "overlimit"),
        }

    def plan(self) -> list[dict[str, Any]]:
        return host_plan(self.fork, self.prefork, self.election, self.semaphore)

    def start_hosts(self) -> None:
        for spec in self.plan():
            self.hosts.append(Host(spec, self._cfg(), self.workdir, 0))

    def respawn_dead(self) -> None:
        for i, h in enumerate(self.hosts):
            if not h.alive():
                self.dead_hosts.append(h)
                self.hosts[i] = Host(h.spec, self._cfg(), self.workdir, h.gen + 1)
                self.log(f"respawned host {h.spec['id']} (exit {h.popen.returncode})")

    def leaves(self) -> list[tuple[int, Host]]:
        return [(pid, h) for h in self.hosts for pid in h.leaves()]

    def holder(self) -> Any:
        """The holder of the lease, or in the semaphore mode one of the permits' holders at
        random (``LeaseInfo``), or None."""
        if not self.semaphore:
            return self.admin.inspect_sync(self.name)
        sem = self.admin.semaphore_info_sync(self.name)
        holders = [] if sem is None else list(sem.holders)
        return self.rng.choice(holders) if holders else None

    def holder_pid(self) -> int | None:
        try:
            info = self.holder()
        except Exception:  # the store may be down: then no holder is known
            return None
        if info is None:
            return None
        try:
            return int(info.metadata.get("pid", ""))
        except ValueError:
            return None

    def pick_leaf(self, prefer_holder: bool) -> tuple[int, Host] | None:
        leaves = self.leaves()
        if not leaves:
            return None
        if prefer_holder:
            pid = self.holder_pid()
            for leaf in leaves:
                if leaf[0] == pid:
                    return leaf
        return self.rng.choice(leaves)

    # -- faults -----------------------------------------------------------------------------

    def inject(self, kind: str) -> dict[str, Any]:
        assert self.env is not None
        rec: dict[str, Any] = {"kind": kind, "t": time.monotonic()}
        d = self.duration
        if kind == "sigkill":
            leaf = self.pick_leaf(prefer_holder=self.rng.random() < 0.6)
            if leaf is None:
                return {**rec, "skipped": "no worker"}
            pid, host = leaf
            rec.update(pid=pid, host=host.spec["id"], ok=host.signal(pid, signal.SIGKILL))
        elif kind == "sigstop":
            leaf = self.pick_leaf(prefer_holder=True)
            if leaf is None:
                return {**rec, "skipped": "no worker"}
            pid, host = leaf
            pause = d + self.rng.uniform(0.5, 1.5)
            ok = host.signal(pid, signal.SIGSTOP)
            time.sleep(pause)
            host.signal(pid, signal.SIGCONT)
            rec.update(pid=pid, host=host.spec["id"], ok=ok, paused_s=round(pause, 2))
        elif kind == "client_kill":
            nodes = self.env.nodes()
            i = (
                self.env.lease_node(self.key_name)
                if self.rng.random() < 0.7
                else self.rng.randrange(len(nodes))
            )
            node = nodes[i]
            if self.rng.random() < 0.25:
                n = node.command("CLIENT", "KILL", "TYPE", "pubsub")
                rec.update(node=i, what="pubsub", killed=n)
            else:
                raw = node.command("CLIENT", "LIST")
                assert isinstance(raw, bytes)
                ids = [
                    dict(kv.split("=", 1) for kv in line.split() if "=" in kv).get("id")
                    for line in raw.decode().splitlines()
                ]
                ids = [x for x in ids if x]
                share = 1.0 if self.rng.random() < 0.3 else 0.5
                chosen = [x for x in ids if self.rng.random() < share]
                killed = 0
                for cid in chosen:
                    with contextlib.suppress(Exception):
                        reply = node.command("CLIENT", "KILL", "ID", cid)
                        killed += reply if isinstance(reply, int) else 0
                rec.update(node=i, what="normal", killed=killed, of=len(ids))
        elif kind == "restart":
            self.env.server.restart()
            rec.update(port=self.env.server.port, persistence=self.sabotage != "noaof")
        elif kind == "blackhole":
            proxies = self.env.proxies()
            i = (
                self.env.lease_node(self.key_name)
                if self.rng.random() < 0.7
                else self.rng.randrange(len(proxies))
            )
            pause = d + self.rng.uniform(0.5, 2.0)
            proxies[i].blackhole()
            try:
                time.sleep(pause)
            finally:
                proxies[i].heal()
            rec.update(proxy=i, seconds=round(pause, 2))
        elif kind in ("pg_restart", "pg_kill"):
            # A fast shutdown (sessions ended, checkpoint) or a crash (the postmaster and its
            # processes SIGKILLed; the next start replays the WAL), then the server started
            # again on the same port and data: at once half the time, else after a pause
            # that may outlast the lease.
            pg = self.env.pg
            sig = signal.SIGINT if kind == "pg_restart" else signal.SIGKILL
            pause = 0.0 if self.rng.random() < 0.5 else self.rng.uniform(0.2, d + 1.0)
            t0 = time.monotonic()
            pg.kill(sig)
            time.sleep(pause)
            pg.start_again()
            rec.update(signal=sig.name, paused_s=round(pause, 2),
                       down_s=round(time.monotonic() - t0, 2))  # fmt: skip
        elif kind == "member_kill":
            # One etcd member SIGKILLed (the Raft leader half the time), started again after
            # a pause: the other two keep the quorum.
            etcd = self.env.etcd
            leader = etcd.leader()
            i = leader if leader is not None and self.rng.random() < 0.5 else self.rng.randrange(3)
            pause = self.rng.uniform(0.2, d + 1.0)
            t0 = time.monotonic()
            etcd.kill_member(i)
            time.sleep(pause)
            etcd.start_member(i)
            rec.update(member=i, was_leader=i == leader, paused_s=round(pause, 2),
                       down_s=round(time.monotonic() - t0, 2))  # fmt: skip
        elif kind == "quorum_loss":
            # Two of the three etcd members stopped (SIGTERM or SIGKILL) for longer than the
            # lease: nothing can be written, every holder must lose its lease; then both are
            # started again.
            etcd = self.env.etcd
            members = sorted(self.rng.sample(range(3), 2))
            sig = signal.SIGTERM if self.rng.random() < 0.5 else signal.SIGKILL
            pause = d + self.rng.uniform(0.5, 1.5)
            t0 = time.monotonic()
            for i in members:
                etcd.kill_member(i, sig)
            time.sleep(pause)
            etcd.start_member(members[0], wait=False)
            etcd.start_member(members[1])
            rec.update(members=members, signal=sig.name, paused_s=round(pause, 2),
                       down_s=round(time.monotonic() - t0, 2))  # fmt: skip
        elif kind == "force_release":
            info = None
            # Leaders of the election mode hold for milliseconds: look often, and longer.
            until = time.monotonic() + (6.0 if self.election else 3.0)
            while info is None and time.monotonic() < until:
                info = self.holder()
                if info is None:
                    time.sleep(0.005 if self.election else 0.05)
            if info is None:
                return {**rec, "skipped": "no holder"}
            t0 = time.monotonic()
            if self.semaphore:  # the permit's slot, compare-and-delete on its lease id
                result = bool(self.admin.force_release_permit_sync(
                    self.name, info.slot, lease_id=info.lease_id))  # fmt: skip
                checked = True
                rec.update(slot=info.slot)
            else:
                result, checked = self._force_release(info.lease_id)
            rec.update(lease_id=info.lease_id, token=info.fencing_token, result=result,
                       compare_and_delete=checked, t0=t0, t1=time.monotonic())  # fmt: skip
        else:
            raise ValueError(kind)
        rec["t_end"] = time.monotonic()
        return rec

    def _force_release(self, lease_id: str) -> tuple[bool, bool]:
        """``force_release(name, lease_id=...)`` (compare-and-delete) where the library has
        it, else ``force_release(name)``; returns (released, compare_and_delete)."""
        admin = self.admin
        if "lease_id" in inspect.signature(admin.force_release_sync).parameters:
            return bool(admin.force_release_sync(self.name, lease_id=lease_id)), True
        if "lease_id" in inspect.signature(admin.force_release).parameters:

            async def once() -> bool:
                return bool(await admin.force_release(self.name, lease_id=lease_id))

            return asyncio.run(once()), True
        return bool(admin.force_release_sync(self.name)), False

    def fault_loop(self, deadline: float) -> None:
        first_round = list(self.fault_kinds)
        self.rng.shuffle(first_round)
        retries: Counter[str] = Counter()
        while True:
            if self.sabotage == "nolease" or not self.fault_kinds:
                time.sleep(max(0.0, deadline - time.monotonic()))
                return
            # The first round (every kind once) completes even past the deadline.
            if not first_round and time.monotonic() >= deadline:
                return
            time.sleep(self.rng.uniform(0.3, 1.0))
            self.respawn_dead()
            first = bool(first_round)
            kind = first_round.pop(0) if first else self.rng.choice(self.fault_kinds)
            try:
                rec = self.inject(kind)
            except Exception as e:  # a fault that could not be applied
                rec = {"kind": kind, "skipped": f"{type(e).__name__}: {e}"[:300]}
            if first and "skipped" in rec and retries[kind] < 3:
                retries[kind] += 1
                first_round.append(kind)  # every kind lands at least once if it can
            self.fault_log.append(rec)
            self.log(f"fault {json.dumps(rec, default=str)[:300]}")

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> Summary:
        import distributed_leasing as dl

        started = time.monotonic()
        (self.workdir / "records").mkdir(parents=True, exist_ok=True)
        stuck: list[dict[str, Any]] = []
        with contextlib.ExitStack() as stack:
            self.env = StoreEnv(self.store, self.workdir, self.sabotage).start()
            stack.callback(self.env.stop)
            reg = FencedRegister.create(self.workdir / "register.db")
            stack.callback(reg.close)
            self.admin = dl.LeaseClient.connect_sync(
                self.env.url_direct, connect_timeout=5.0, operation_timeout=5.0
            )
            stack.callback(self.admin.close_sync)
            if self.semaphore and (why := self._semaphores_unsupported()) is not None:
                s = Summary(self.store, self.seed, self.seconds, unsupported=why)
                s.elapsed = time.monotonic() - started
                return s
            stack.callback(self._kill_all)
            self.start_hosts()
            self._wait_started(timeout=60.0)
            t_running = time.monotonic()
            self.log(f"{len(self.leaves())} worker processes running")
            self.fault_loop(t_running + self.seconds)
            t_stopping = time.monotonic()
            stuck = self._stop_all()
            t_stopped = time.monotonic()
            held, held_error = self.held_at_end()
            final = reg.total()
            log_rows = reg.log()
        t_cleaned = time.monotonic()
        summary = analyze(
            store=self.store, seed=self.seed, seconds=self.seconds,
            records_dir=self.workdir / "records", reg_log=log_rows, final_value=final,
            faults=self.fault_log, stuck=stuck, held=held, held_error=held_error,
            duration=self.duration, name=self.name,
            semaphore_limit=SEMAPHORE_LIMIT if self.semaphore else None,
            crashed=[(h.spec["id"], h.popen.returncode, h.stderr_tail())
                     for h in [*self.dead_hosts, *self.hosts]
                     if h.popen.returncode not in (0, -signal.SIGKILL, None)],
            sabotage=self.sabotage,
        )  # fmt: skip
        summary.elapsed = time.monotonic() - started
        summary.timings = {
            "start": round(t_running - started, 1),
            "run": round(t_stopping - t_running, 1),
            "stop": round(t_stopped - t_stopping, 1),
            "cleanup": round(t_cleaned - t_stopped, 1),
        }
        summary.notes.extend(self.notes)
        if "prefork_child_hung" in summary.violations:
            for h in [*self.dead_hosts, *self.hosts]:
                if h.kind == "prefork":
                    summary.notes.append(
                        f"stderr of prefork host {h.spec['id']} (the hung children's stacks):\n"
                        + h.stderr_tail(20000)
                    )
        return summary

    def _semaphores_unsupported(self) -> str | None:
        """The store's refusal of semaphores (a ``ConfigError`` saying so), or None."""
        import distributed_leasing as dl

        try:
            self.admin.semaphore_info_sync(self.name)
        except dl.ConfigError as e:
            if "does not support semaphores" in str(e):
                return str(e)
            raise
        return None

    def held_at_end(self) -> tuple[list[dict[str, Any]], str | None]:
        """Every lease the store still shows held once every worker has ended, through a
        fresh client: ``list_sync()`` of the whole namespace (the store is the run's own) and
        ``inspect_sync`` of every name the run is known to have used (its lease, the prefork
        parent's). Retried for 30 s while the store answers with errors (etcd may still be
        electing a leader after a fault); then the error."""
        import distributed_leasing as dl

        assert self.env is not None
        names = {self.name} | {
            r["name"]
            for r in load_records(self.workdir / "records")
            if r.get("ev") == "prefork_lease"
        }
        deadline = time.monotonic() + 30.0
        while True:
            try:
                client = dl.LeaseClient.connect_sync(
                    self.env.url_direct, connect_timeout=5.0, operation_timeout=5.0
                )
                try:
                    infos = {i.name: i for i in client.list_sync()}
                    for name in sorted(names - set(infos)):
                        if (i := client.inspect_sync(name)) is not None:
                            infos[name] = i
                    # the semaphore's permits (which no lease listing shows)
                    sem = client.semaphore_info_sync(self.name) if self.semaphore else None
                    permits = [] if sem is None else list(sem.holders)
                finally:
                    client.close_sync()
            except dl.LeaseError as e:
                if time.monotonic() > deadline:
                    return [], f"{type(e).__name__}: {e}"[:300]
                time.sleep(0.5)
                continue
            t = time.monotonic()
            return [
                {"name": i.name, "lease_id": i.lease_id, "token": i.fencing_token,
                 "ttl": i.ttl, "metadata": dict(i.metadata), "t": t,
                 "permit": getattr(i, "slot", None) is not None}
                for i in [*infos.values(), *permits]
            ], None  # fmt: skip

    def _wait_started(self, timeout: float) -> None:
        # a record file per leaf, and one of the prefork parent
        expected = sum(
            1 if s["kind"] == "direct" else s["children"] + (s["kind"] == "prefork")
            for s in self.plan()
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = len(list((self.workdir / "records").glob("w-*.jsonl")))
            if n >= expected:
                return
            time.sleep(0.1)
        self.notes.append("not every worker had started within 60 s")

    def _stop_all(self) -> list[dict[str, Any]]:
        (self.workdir / "stop").touch()
        for h in self.hosts:
            h.request_stop()
        deadline = time.monotonic() + 90.0
        stuck = []
        for h in self.hosts:
            try:
                h.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                stuck.append({"host": h.spec["id"], "leaves": h.leaves()})
                h.kill()
        for h in self.hosts:
            h.kill()  # reaps, closes pipes (all have exited by now)
        return stuck

    def _kill_all(self) -> None:
        for h in [*self.hosts, *self.dead_hosts]:
            h.kill()


# ============================================================================================
# Analysis
# ============================================================================================


def load_records(records_dir: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in sorted(records_dir.glob("w-*.jsonl")):
        for line in p.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # the last line of a SIGKILLed worker
    return out


def analyze(
    *,
    store: str,
    seed: int,
    seconds: float,
    records_dir: Path,
    reg_log: list[dict[str, Any]],
    final_value: int,
    faults: list[dict[str, Any]],
    stuck: list[dict[str, Any]],
    crashed: list[tuple[str, int | None, str]],
    sabotage: str | None = None,
    held: list[dict[str, Any]] | None = None,
    held_error: str | None = None,
    duration: float = 2.0,
    name: str = LEASE_NAME,
    semaphore_limit: int | None = None,
) -> Summary:
    s = Summary(store, seed, seconds)
    v: dict[str, list[Any]] = defaultdict(list)
    records = load_records(records_dir)
    acqs = {r["h"]: r for r in records if r.get("ev") == "acq"}
    ends = {r["h"]: r for r in records if r.get("ev") == "end"}
    starts = {r["wid"]: r for r in records if r.get("ev") == "start"}
    exits = {r["wid"]: r for r in records if r.get("ev") == "exit"}

    # (a) no update lost ---------------------------------------------------------------------
    writes = [r for r in reg_log if r["op"] == "write"]
    accepted_writes = [r for r in writes if r["accepted"]]
    for r in accepted_writes:
        if r["value_written"] != r["value_before"] + 1:
            v["lost_update"].append(
                {"seq": r["seq"], "pid": r["pid"], "handle": r["handle"], "token": r["token"],
                 "value_read": r["value_read"], "register_had": r["value_before"],
                 "wrote": r["value_written"]})  # fmt: skip
    if final_value != len(accepted_writes):
        v["final_counter"].append({"final": final_value, "accepted_writes": len(accepted_writes)})

    # (b) fencing ----------------------------------------------------------------------------
    token_handles: dict[int, set[str]] = defaultdict(set)
    token_ids: dict[int, set[tuple[int, str, str]]] = defaultdict(set)
    for a in acqs.values():
        token_handles[a["token"]].add(a["h"])
        token_ids[a["token"]].add((a["pid"], a["h"], a["lease_id"]))
    for r in reg_log:
        if r["accepted"]:
            token_handles[r["token"]].add(r["handle"])
            token_ids[r["token"]].add((r["pid"], r["handle"], r["lease_id"]))
    for token, hs in sorted(token_handles.items()):
        if len(hs) > 1:
            v["token_shared"].append({"token": token, "holders": sorted(token_ids[token])[:6],
                                      "handles": len(hs)})  # fmt: skip
    id_handles: dict[str, set[str]] = defaultdict(set)
    for a in acqs.values():
        id_handles[a["lease_id"]].add(a["h"])
    for lid, hs in sorted(id_handles.items()):
        if len(hs) > 1:
            v["lease_id_reused"].append(
                {"lease_id": lid, "handles": sorted(hs)[:6],
                 "pids": sorted({acqs[h]["pid"] for h in hs})[:6]})  # fmt: skip
    last: dict[int, int] = defaultdict(int)  # per slot of the register
    for r in reg_log:
        if r["accepted"]:
            slot = r.get("slot", 0)
            if r["token"] < last[slot]:
                v["token_regression"].append(
                    {"seq": r["seq"], "slot": slot, "token": r["token"], "after": last[slot]}
                )
            last[slot] = max(last[slot], r["token"])
    # Grant order: a lease acquired after another's acquire returned has a larger token.
    real = [a for a in acqs.values() if not a["lease_id"].startswith("nolease-")]
    by_call = sorted(real, key=lambda a: a["t_call"])
    by_ret = sorted(real, key=lambda a: a["t_ret"])
    j = 0
    best: dict[str, Any] | None = None
    for b in by_call:
        while j < len(by_ret) and by_ret[j]["t_ret"] < b["t_call"]:
            if best is None or by_ret[j]["token"] > best["token"]:
                best = by_ret[j]
            j += 1
        if best is not None and best["token"] >= b["token"] and best["h"] != b["h"]:
            v["token_order"].append(
                {"earlier": [best["pid"], best["h"], best["token"]],
                 "later": [b["pid"], b["h"], b["token"]]})  # fmt: skip

    # (c) losses reported, exactly once ------------------------------------------------------
    refused_handles: set[str] = {r["handle"] for r in reg_log if not r["accepted"]}
    # A force release is attributed to the handle it removed only when it was a
    # compare-and-delete on that handle's lease id; any force release that inspected the
    # handle's lease id is mentioned in the details, as a hint.
    handles_of_id: dict[str, list[str]] = defaultdict(list)
    for h, a in acqs.items():
        handles_of_id[a["lease_id"]].append(h)
    forced: dict[str, dict[str, Any]] = {}
    inspected: set[str] = set()
    for f in faults:
        if f.get("kind") != "force_release" or "lease_id" not in f:
            continue
        for h in handles_of_id.get(f["lease_id"], []):
            inspected.add(h)
            if f.get("result") and f.get("compare_and_delete"):
                forced[h] = f
    losses: Counter[str] = Counter()
    lease_lost_raised = release_false = 0
    for h, e in ends.items():
        acq = acqs.get(h)
        if acq is None or acq["lease_id"].startswith("nolease-"):
            continue
        if e["is_lost"]:
            losses[str(e["lost_reason"])] += 1
        if e["lease_lost_exc"] is not None:
            lease_lost_raised += 1
        if e["release_result"] is False:
            release_false += 1
        who = {"pid": acq["pid"], "handle": h, "lane": e["lane"], "token": acq["token"]}
        reported = e["is_lost"] or e["lease_lost_exc"] is not None or e["release_result"] is False
        if (h in refused_handles or h in forced) and not reported:
            why = "refused by the register" if h in refused_handles else "force-released"
            # A release that failed (store unreachable, timeout) and still left the handle
            # "released" is told apart: the handle claims a release that never happened, for a
            # lease that was no longer its own.
            kind = (
                "released_despite_failed_release"
                if e["release_error"] is not None and e["is_released"]
                else "loss_not_reported"
            )
            v[kind].append(
                {**who, "why": why, "admin_force_released_its_id": h in inspected,
                 "end": _brief(e)}
            )  # fmt: skip
        if not (e["is_lost"] or e["is_released"]):
            v["handle_not_ended"].append({**who, "end": _brief(e)})
        if e["lease_lost_exc"] is not None and (
            not e["is_lost"] or e["lease_lost_exc"] != e["lost_reason"]
        ):
            v["lease_lost_mismatch"].append({**who, "end": _brief(e)})
        wl = e.get("wait_lost")
        if wl is not None and wl != "pending":
            expected = e["lost_reason"] if e["is_lost"] else "released"
            if wl != expected:
                v["wait_lost_mismatch"].append({**who, "wait_lost": wl, "end": _brief(e)})
        ev = e.get("events")
        if ev is not None:
            n_lost, n_rel = len(ev.get("lost", [])), ev.get("released", 0)
            if not ev.get("complete"):
                v["events_not_ended"].append({**who, "events": ev})
            elif n_lost + n_rel != 1 or (n_lost == 1) != bool(e["is_lost"]):
                v["events_end_not_once"].append({**who, "events": ev, "end": _brief(e)})
    # per process: counters moved by exactly the handles acquired and lost
    for wid, x in exits.items():
        m = x["metrics"]
        mine = [
            h
            for h, a in acqs.items()
            if a["wid"] == wid and not a["lease_id"].startswith("nolease-")
        ]
        moved = (m["acquisitions.total"], m["leases_lost.total"])
        if moved != (x["handles"], x["lost"]) and x["ended"] == x["handles"]:
            v["metrics_mismatch"].append(
                {"pid": x["pid"], "metrics": m, "handles": x["handles"], "lost": x["lost"]}
            )
        if len(mine) != x["handles"]:
            v["records_mismatch"].append({"pid": x["pid"], "acq_records": len(mine),
                                          "handles": x["handles"]})  # fmt: skip
    for r in records:
        if r.get("ev") == "unexpected":
            v["unexpected_exception"].append(
                {"pid": r["pid"], "lane": r["lane"], "error": r["error"],
                 "detail": r["detail"][-600:]})  # fmt: skip
    for host, code, tail in crashed:
        v["worker_crash"].append({"host": host, "code": code, "stderr": tail[-800:]})

    # (d) nothing held by nobody ------------------------------------------------------------
    parents = [r for r in records if r.get("ev") == "prefork_parent"]
    ended_cleanly = set(exits) | {r["wid"] for r in parents}
    acq_by_id = {a["lease_id"]: a for a in acqs.values()}
    acquire_failed = {
        wid
        for wid, x in exits.items()
        if any(k.startswith("backend_error:acquire") for c in x["counts"].values() for k in c)
    }
    excused: Counter[str] = Counter()
    if held_error is not None:
        v["held_check_failed"].append({"error": held_error})
    for info in held or []:
        a = acq_by_id.get(info["lease_id"])
        e = ends.get(a["h"]) if a is not None else None
        wid = a["wid"] if a is not None else info["metadata"].get("wid")
        excuse = None
        if wid is not None and wid not in ended_cleanly:
            excuse = "its process did not end cleanly"
        elif e is not None and e["release_error"] is not None:
            excuse = "its release failed"
        elif e is not None and e["is_lost"] and e["lost_reason"] == "expired":
            excuse = "its renewals could not reach the store"
        elif a is None and wid in acquire_failed and info["name"] == name:
            excuse = "an acquire of its process failed"
        elif a is None and info.get("permit") and _dropped_then(info, faults, duration):
            # The Redis store retries a permit acquire whose connection dropped; the first
            # request's permit, if it won, is nobody's and expires by itself (its lease id is
            # never seen: src/store/redis/semaphore.rs)
            excuse = "a permit acquire retried after its connection dropped"
        item = {**info, "excuse": excuse,
                "holder": a and {"pid": a["pid"], "handle": a["h"], "lane": a["lane"]},
                "end": e and _brief(e)}  # fmt: skip
        if excuse is None:
            v["held_by_nobody"].append(item)
        else:
            excused[excuse] += 1
            if info["ttl"] is None or info["ttl"] > duration + HELD_TTL_SLACK:
                v["held_past_ttl"].append(item)

    # (e) the prefork parent ----------------------------------------------------------------
    for r in parents:
        who = {"pid": r["pid"]}
        for op in r["slow"]:
            v["prefork_parent_stalled"].append({**who, **op, "bound_s": PREFORK_OP_BOUND})
        for op in r["failed"]:
            v["prefork_parent_op_failed"].append({**who, **op})
        for st in r["leases"]:
            if st["is_lost"] or st["renewal_failures"] or st["released"] is not True:
                v["prefork_parent_lease_lost"].append({**who, **st})
        for child in r["hung"]:
            v["prefork_child_hung"].append({**who, **child, "after_life_s": PREFORK_HUNG})
        odd = {c: n for c, n in r["exit_codes"].items() if int(c) not in (0, -signal.SIGKILL)}
        if odd:
            v["prefork_child_exit_code"].append({**who, "exit_codes": r["exit_codes"]})
    if parents:
        # Nothing hits the store in the prefork mode: a child's BackendError has no excuse.
        for x in exits.values():
            errors = {k: n for c in x["counts"].values() for k, n in c.items()
                      if k.startswith("backend_error")}  # fmt: skip
            if errors:
                v["prefork_child_backend_error"].append({"pid": x["pid"], "errors": errors})
    for st in stuck:
        v["stuck_worker"].append(st)

    # (f) observers (the election mode) ------------------------------------------------------
    observed = [r for r in records if r.get("ev") == "observed"]
    token_of = {a["lease_id"]: a["token"] for a in acqs.values()}
    by_observer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in observed:
        by_observer[r["wid"]].append(r)
    unknown_leaders = 0
    for wid, seen in by_observer.items():
        top: int | None = None
        prev: tuple[Any, ...] | None = None
        for r in seen:
            value = (r["lease_id"], r["term"], json.dumps(r["metadata"], sort_keys=True))
            if prev is not None and value == prev:
                v["observed_repeat"].append({"observer": wid, "value": r})
            prev = value
            if r["term"] is not None:
                if top is not None and r["term"] < top:
                    v["observed_term_down"].append({"observer": wid, "term": r["term"],
                                                    "after": top})  # fmt: skip
                top = r["term"] if top is None else max(top, r["term"])
            if r["lease_id"] is not None:
                granted = token_of.get(r["lease_id"])
                if granted is None:
                    unknown_leaders += 1  # elected by a process killed before it recorded it
                elif granted != r["term"]:
                    v["observed_term_mismatch"].append({"observer": wid, "seen": r,
                                                        "granted": granted})  # fmt: skip

    # (g) the semaphore mode ----------------------------------------------------------------
    sem_figures = None
    if semaphore_limit is not None:
        sem_figures = _check_semaphore(records, acqs, semaphore_limit, forced, v)

    # figures --------------------------------------------------------------------------------
    wins_by_lane: Counter[str] = Counter()
    wins_by_kind: Counter[str] = Counter()
    for a in acqs.values():
        wins_by_lane[a["lane"]] += 1
        start = starts.get(a["wid"])
        wins_by_kind[start["kind"] if start else "?"] += 1
    counts: Counter[str] = Counter()
    for x in exits.values():
        for c in x["counts"].values():
            counts.update(c)
    killed_leaves = [w for w in starts if w not in exits]
    prefork = {
        "children_exited": sum(r["child_exits"] for r in parents),
        "exit_codes": dict(sum((Counter(r["exit_codes"]) for r in parents), Counter())),
        "parent_ops": sum(sum(r["ops"].values()) for r in parents),
        "parent_max_s": max((t for r in parents for t in r["max_s"].values()), default=0.0),
        "parent_renewals": sum(st["renewals"] for r in parents for st in r["leases"]),
    }
    s.operations = {
        "acquisitions": len(acqs),
        "writes_accepted": len(accepted_writes),
        "writes_refused": len(writes) - len(accepted_writes),
        "reads_refused": sum(1 for r in reg_log if r["op"] == "read" and not r["accepted"]),
        "final_counter": final_value,
        "unavailable": counts["unavailable"] + counts["unavailable_after_wait"],
        "unavailable_after_wait": counts["unavailable_after_wait"],
        "backend_errors": sum(n for k, n in counts.items() if k.startswith("backend_error")),
        "losses": dict(sorted(losses.items())),
        "lease_lost_raised": lease_lost_raised,
        "release_false": release_false,
        "handles_ended": len(ends),
        "wins_by_lane": dict(sorted(wins_by_lane.items())),
        "wins_by_kind": dict(sorted(wins_by_kind.items())),
        "processes": {
            "started": len(starts),
            "exited_cleanly": len(exits),
            "killed_or_lost": len(killed_leaves),
        },
        "held_at_end": len(held or []),
        "held_excused": dict(excused),
    }
    if parents:
        s.operations["prefork"] = prefork
    if sem_figures is not None:
        s.operations["semaphore"] = sem_figures
    if observed:
        s.operations["observed"] = {
            "observers": len(by_observer),
            "values": len(observed),
            "leaders": sum(1 for r in observed if r["lease_id"] is not None),
            "no_leader": sum(1 for r in observed if r["lease_id"] is None),
            "proclaims_seen": sum(
                1 for r in observed if r["metadata"] is not None and "value" in r["metadata"]
            ),
            "unknown_leaders": unknown_leaders,
        }
    s.faults = dict(Counter(f["kind"] for f in faults if "skipped" not in f))
    s.fault_log = list(faults)
    skipped = Counter(f["kind"] for f in faults if "skipped" in f)
    if skipped:
        s.notes.append(f"faults skipped (nothing to apply them to, or store down): {dict(skipped)}")
    if sabotage:
        s.notes.append(f"sabotage {sabotage!r}: violations are expected")
    dup_hids = {h for hs in id_handles.values() if len(hs) > 1 for h in hs}
    if dup_hids:
        related = sum(
            1
            for items in v.values()
            for item in items
            if any(h in json.dumps(item, default=str) for h in dup_hids)
        )
        total = sum(len(items) for items in v.values())
        s.notes.append(
            f"{related} of the {total} violations involve a lease handle whose lease id another"
            f" handle also had ({len(dup_hids)} such handles); {total - related} do not"
        )
    s.violations = {k: len(items) for k, items in v.items() if items}
    s.details = {k: items[:10] for k, items in v.items() if items}
    return s


# The faults that drop a store's connections (a request then on the wire may have won)
DROPS = ("client_kill", "restart", "blackhole", "pg_restart", "pg_kill", "member_kill",
         "quorum_loss")  # fmt: skip


def _dropped_then(info: dict[str, Any], faults: list[dict[str, Any]], duration: float) -> bool:
    """Whether a fault that drops connections was under way when a held record left at the end
    was granted (its grant inferred from its ttl at the end: ``duration - ttl`` before the
    listing, within 1 s)."""
    if info.get("ttl") is None or "t" not in info:
        return False
    granted = info["t"] - (duration - info["ttl"])
    return any(
        f.get("kind") in DROPS and f["t"] - 1.0 <= granted <= f.get("t_end", f["t"]) + 1.0
        for f in faults
        if "skipped" not in f
    )


def _check_semaphore(
    records: list[dict[str, Any]],
    acqs: dict[str, dict[str, Any]],
    limit: int,
    forced: dict[str, dict[str, Any]],
    v: dict[str, list[Any]],
) -> dict[str, Any]:
    """(g): every permit's slot is below the limit; from the holders' own view (each handle's
    window runs from its acquire's return to its last claim of holding, see ``Leaf.claim``)
    no more than ``limit`` hold at any instant and no two hold one slot at once. A permit an
    administrator force-released (``forced``: handle -> the fault) is its holder's until the
    forced release was called: its holder learns of it at its next renewal, so its later
    claims do not count. Returns the figures: the peak count of holders, how long each count
    lasted, the slots used."""
    claims: dict[str, list[float]] = defaultdict(list)
    disowned = 0
    for r in records:
        if r.get("ev") == "claim":
            if r["h"] in forced and r["t"] > forced[r["h"]]["t0"]:
                continue
            if r["ok"]:
                claims[r["h"]].append(r["t"])
            else:
                disowned += 1
    windows: list[tuple[float, float, str]] = []
    by_slot: dict[int, list[tuple[float, float, str]]] = defaultdict(list)
    for h, a in acqs.items():
        slot = a.get("slot")
        if not isinstance(slot, int) or not 0 <= slot < limit:
            v["slot_out_of_range"].append(
                {"pid": a["pid"], "handle": h, "slot": slot, "limit": limit})  # fmt: skip
        if claims.get(h):
            w = (a["t_ret"], max(claims[h]), h)
            windows.append(w)
            by_slot[slot].append(w)
    # A sweep over the windows' ends (an end before a start at the same instant).
    events = sorted([(t0, 1, h) for t0, _, h in windows] + [(t1, -1, h) for _, t1, h in windows],
                    key=lambda e: (e[0], e[1]))  # fmt: skip
    holding: set[str] = set()
    peak = 0
    time_at: Counter[int] = Counter()
    last_t: float | None = None
    for t, step, h in events:
        if last_t is not None:
            time_at[len(holding)] += t - last_t
        last_t = t
        if step > 0:
            holding.add(h)
            if len(holding) > limit:
                v["over_limit"].append(
                    {"t": t, "holders": len(holding), "limit": limit,
                     "handles": sorted(holding)[:8]})  # fmt: skip
            peak = max(peak, len(holding))
        else:
            holding.discard(h)
    for slot, ws in by_slot.items():
        ws.sort()
        latest = ws[0]  # the window that ends last among those started so far
        for w in ws[1:]:
            if w[0] < latest[1]:
                v["slot_shared"].append({"slot": slot, "first": list(latest), "second": list(w)})
            latest = max(latest, w, key=lambda x: x[1])
    return {
        "limit": limit,
        "peak": peak,
        "windows": len(windows),
        "claims_disowned": disowned,
        "seconds_at": {n: round(x, 3) for n, x in sorted(time_at.items())},
        "slots": sorted({a.get("slot") for a in acqs.values()}, key=str),
    }


def _brief(e: dict[str, Any]) -> dict[str, Any]:
    keys = ("is_lost", "lost_reason", "is_released", "lease_lost_exc", "release_result",
            "release_error", "read", "write", "wait_lost", "on_lost")  # fmt: skip
    return {k: e.get(k) for k in keys}


# ============================================================================================
# Entry points
# ============================================================================================


@contextlib.contextmanager
def _workdir(keep: bool, base: Path | None) -> Iterator[Path]:
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
        yield base
        return
    shm = Path("/dev/shm")
    d = Path(tempfile.mkdtemp(prefix="dl-checker-", dir=shm if shm.is_dir() else None))
    try:
        yield d
    finally:
        if not keep:
            shutil.rmtree(d, ignore_errors=True)


def run_store(
    store: str,
    *,
    seconds: float,
    seed: int,
    workdir: Path | None = None,
    duration: float = 2.0,
    sabotage: str | None = None,
    faults: tuple[str, ...] | None = None,
    fork: bool = True,
    prefork: bool = False,
    election: bool = False,
    semaphore: bool = False,
    keep: bool = False,
    verbose: bool = False,
) -> Summary:
    """One run of the checker on one store; never raises for a violation (see ``Summary``;
    ``Summary.unsupported`` says why a semaphore run did not happen)."""
    with _workdir(keep, workdir) as wd:
        orch = Orchestrator(
            store, seconds, seed, wd, duration=duration, sabotage=sabotage, faults=faults,
            fork=fork, prefork=prefork, election=election, semaphore=semaphore,
            log=(lambda m: print(f"[{store}] {m}", file=sys.stderr, flush=True))
            if verbose else None,
        )  # fmt: skip
        summary = orch.run()
        if keep:
            summary.notes.append(f"records kept in {wd}")
        return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        cfg = json.loads(argv[1])
        if cfg.get("kind") in ("fork", "mpfork", "prefork"):
            return run_fork_host(cfg)
        return run_direct(cfg)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", choices=[*STORES, "all"], default="all")
    p.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("CHECKER_SECONDS", 12)),
        help="workload seconds per store (default $CHECKER_SECONDS or 12)",
    )
    p.add_argument("--seed", type=int, default=int(os.environ.get("CHECKER_SEED", 1)))
    p.add_argument("--duration", type=float, default=2.0, help="lease duration, seconds")
    p.add_argument("--sabotage", choices=["nolease", "noaof", "leak", "overlimit"], default=None)
    p.add_argument("--faults", default=None, help="comma-separated fault kinds (default: all)")
    p.add_argument("--no-fork", action="store_true", help="no forked children")
    p.add_argument("--prefork", action="store_true", help="the prefork mode (see above)")
    p.add_argument("--election", action="store_true", help="the election mode (see above)")
    p.add_argument("--semaphore", action="store_true", help="the semaphore mode (see above)")
    p.add_argument("--json", type=Path, default=None, help="write the summaries here")
    p.add_argument("--keep", action="store_true", help="keep the records directory")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    stores = list(STORES) if args.store == "all" else [args.store]
    summaries = []
    for store in stores:
        faults = None
        if args.faults is not None:
            wanted = [f for f in args.faults.split(",") if f]
            faults = tuple(
                f for f in wanted if f in (PREFORK_FAULTS if args.prefork else FAULTS[store])
            )
        summary = run_store(
            store, seconds=args.seconds, seed=args.seed, duration=args.duration,
            sabotage=args.sabotage, faults=faults, fork=not args.no_fork, prefork=args.prefork,
            election=args.election, semaphore=args.semaphore, keep=args.keep,
            verbose=args.verbose,
        )  # fmt: skip
        print(summary.text(), flush=True)
        summaries.append(summary)
    total = sum(x.total_violations for x in summaries)
    print(f"== total: {sum(x.operations.get('writes_accepted', 0) for x in summaries)} "
          f"protected writes, {sum(sum(x.faults.values()) for x in summaries)} faults, "
          f"{total} violations")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps([x.as_dict() for x in summaries], indent=2, default=str))
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
