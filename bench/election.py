"""Leader election figures: failover after a resign or a SIGKILL, and observe latency, per store;
against tooz's Redis driver on the same Redis.

    python bench/election.py [--rounds 200] [--kill-rounds 5] [--duration 2]
                             [--stores redis,redis-cluster,sqlite,postgres,etcd] [--peers]

Starts each store's private server as the other benchmarks and the tests do
(``tests/python/redis_servers.py``, ``postgres_server.py``, ``etcd_server.py``; SQLite: a file in
a temporary directory), one store after the other, and measures with worker processes driven
over stdin/stdout (``_handoff_common``; ``CLOCK_MONOTONIC`` is one clock for the machine):

1. **failover after a resign**: a leader process (``async with election.campaign()``) calls
   ``await term.resign()`` while a follower process is parked in its own campaign (100-200
   ms, at random, after it said it starts campaigning); the time from ``resign()`` returning
   (and from it being called) to the follower's campaign returning, p50/p99 over ``--rounds``
   (in blocks, each after warm-up rounds).
2. **failover after a SIGKILL**: a leader process with a ``--duration`` lease (default 2 s) is
   SIGKILLed while the follower is parked; the time from the kill to the follower's campaign
   returning (about the lease's time left + epsilon: its renewals stop with the process), and
   that time minus the lease's time left as ``election.leader()`` read it just before the kill
   (how late after the expiry the follower leads), p50 over ``--kill-rounds``.
3. **observe latency**: the rounds of 1 again, with an observer process in ``async for leader
   in election.observe()``, the follower leading each time until the observer has yielded it;
   the time from the follower's campaign returning to the observer yielding its term
   (negative when the observer hears of it first), p50/p99.

With ``--peers`` (needs ``pip install tooz``), on the Redis store's server and interleaved
block by block with ours: tooz's Redis driver (``get_coordinator("redis://...")``,
``create_group``, ``join_group``, ``watch_elected_as_leader``). Its election is a redis-py
``Lock`` taken by ``run_watchers()`` (one non-blocking ``SET NX`` per call): a follower learns
of a vacancy only at its next call, so it calls ``run_watchers()`` in a loop with a sleep of
1 ms (the tightest sane loop, ~1,000 ``SET``s per second per follower) and of 100 ms (tooz's
tutorial). The Redis driver has no ``stand_down_group_leader`` (it raises ``NotImplemented``)
and unwatching does not release the leader lock: its leader leaves by ``coordinator.stop()``
(leaves its groups, then releases its locks, and returns about 1 s later, after shutting
its executor down). The tooz rows time as the resign the part of ``stop()`` that ends
leadership, the release of the held leader lock (``RedisLock.release``, one ``EVALSHA``); the rest
of ``stop()`` runs on in a thread, untimed.

A benchmark, not a test; build the wheel with ``--release`` first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _handoff_common import Worker, handoffs, pct, serve, serve_async

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "python"))

from etcd_server import EtcdCluster  # noqa: E402
from postgres_server import PostgresServer  # noqa: E402
from redis_servers import RedisCluster, RedisServer, resp_command  # noqa: E402

STORES = ("redis", "redis-cluster", "sqlite", "postgres", "etcd")
PARK = 0.1  # s (+ 0-100 ms) between the follower saying it campaigns and the leader's resign
TOOZ_CADENCES = (0.001, 0.1)  # s of sleep between a tooz follower's run_watchers() calls


# -- the worker processes ------------------------------------------------------------------------
#
# Kinds: "ours,<duration>,<log>" (a candidate; with a log path it appends "<role> <term> <t_ns>"
# when a campaign returns), "tooz,<cadence>" and "observer". Candidates answer through
# _handoff_common.serve / serve_async: "acquire" (or "wait") campaigns, "release" resigns.


def worker_ours(role: str, url: str, name: str, duration: float, log: str) -> None:
    import distributed_leasing as dl

    async def main() -> None:
        client = await dl.LeaseClient.connect(url)
        election = client.election(name, identity=f"{role}-{os.getpid()}", duration=duration)
        campaign: Any = None  # the campaign whose body we are in (exited at the next one)

        async def lead() -> dl.Term:
            nonlocal campaign
            if campaign is not None:  # resigned already: the exit releases nothing
                await campaign.__aexit__(None, None, None)
            campaign = election.campaign()
            term: dl.Term = await campaign.__aenter__()
            t = time.monotonic_ns()
            if log:
                with open(log, "a") as f:
                    f.write(f"{role} {term.token} {t}\n")
            return term

        await serve_async(role, lead, lambda term: term.resign())

    asyncio.run(main())


def worker_observer(url: str, name: str) -> None:
    """Prints ``<t_ns> <term or ->`` for every value ``observe()`` yields."""
    import distributed_leasing as dl

    async def main() -> None:
        client = await dl.LeaseClient.connect(url)
        async for leader in client.election(name).observe():
            t = time.monotonic_ns()
            term = "-" if leader is None or leader.term is None else leader.term
            print(t, term, flush=True)

    asyncio.run(main())


def worker_tooz(role: str, url: str, name: str, cadence: float) -> None:
    from tooz import coordination

    group = name.encode()

    def lead() -> Any:
        member = f"{role}-{os.getpid()}-{uuid.uuid4().hex[:6]}".encode()
        coord = coordination.get_coordinator(url, member)
        coord.start()
        with contextlib.suppress(coordination.GroupAlreadyExist):
            coord.create_group(group).get()
        coord.join_group(group).get()
        elected: list[object] = []
        coord.watch_elected_as_leader(group, elected.append)
        while True:
            coord.run_watchers()
            if elected:
                return coord
            time.sleep(cadence)

    def resign(coord: Any) -> None:
        # What coordinator.stop() does to leave leadership: release the held leader lock.
        # stop() itself first leaves the groups, and returns about 1 s later (it shuts its
        # executor down): it runs on, untimed, in a thread.
        for lock in list(coord._acquired_locks):
            lock.release()
        threading.Thread(target=coord.stop, daemon=True).start()

    serve(role, lead, resign)


def run_worker(kind: str, role: str, target: str, name: str) -> None:
    what, *args = kind.split(",")
    if what == "ours":
        worker_ours(role, target, name, float(args[0]), args[1])
    elif what == "tooz":
        worker_tooz(role, target, name, float(args[0]))
    else:
        worker_observer(target, name)


# -- the stores ----------------------------------------------------------------------------------


@contextlib.contextmanager
def store_server(store: str) -> Iterator[str]:
    """The store's private server (or file), by URL, for the ``with`` block."""
    if store == "redis":
        with RedisServer() as redis:
            yield redis.url
    elif store == "redis-cluster":
        with RedisCluster(masters=3) as cluster:
            yield cluster.url
    elif store == "postgres":
        with PostgresServer() as pg:
            yield pg.url
    elif store == "etcd":
        with EtcdCluster() as etcd:
            yield etcd.url
    else:
        tmp = tempfile.mkdtemp(prefix="dl-bench-election-")
        try:
            yield f"sqlite://{tmp}/leases.db"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# -- the measurements ----------------------------------------------------------------------------


def park() -> None:
    # The follower's first attempt is refused and its wake-up (or loop) is set; a random extra
    # so that the resign falls at any point of a polling follower's cadence.
    time.sleep(PARK + random.uniform(0, 0.1))


def new_name() -> str:
    return f"bench-election-{uuid.uuid4().hex[:8]}"


class Handoffs:
    """Failovers after a resign, in ms: from the resign returning, and from it being called."""

    def __init__(self) -> None:
        self.from_return: list[float] = []
        self.from_call: list[float] = []

    def add(self, kind: str, target: str, rounds: int, warmup: int, name: str) -> None:
        from_call, from_return = handoffs(__file__, kind, target, name, rounds, warmup, park)
        self.from_call += from_call
        self.from_return += from_return


class Observer:
    """An observer process; ``seen(term)`` waits for the time it first yielded ``term``."""

    def __init__(self, url: str, name: str) -> None:
        self.worker = Worker(__file__, "observer", "-", url, name)
        self.first: dict[int | None, int] = {}  # term (None: no leader) -> t_ns first yielded
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(RuntimeError, ValueError):
            while True:
                t, term = self.worker.read().split()
                with self.changed:
                    self.first.setdefault(None if term == "-" else int(term), int(t))
                    self.changed.notify_all()

    def seen(self, term: int | None, timeout: float) -> int | None:
        """When ``term`` was first yielded (any value for None: the first); None if not within
        ``timeout`` s."""
        with self.changed:
            self.changed.wait_for(
                lambda: term in self.first or (term is None and self.first), timeout
            )
            return (
                self.first.get(term) if term is not None else min(self.first.values(), default=None)
            )

    def stop(self) -> None:
        self.worker.proc.terminate()
        try:
            self.worker.proc.wait(10)
        except Exception:
            self.worker.proc.kill()
            self.worker.proc.wait()
        self.thread.join(5)


def observe_latencies(url: str, rounds: int, warmup: int) -> tuple[list[float], int]:
    """Failovers after a resign with an observer watching: ms from each follower's campaign
    returning to the observer yielding its term. The follower leads until the observer has
    yielded it (or for 10 s: then it counts as skipped, the second figure returned)."""
    name = new_name()
    fd, log = tempfile.mkstemp(prefix="dl-bench-terms-")
    os.close(fd)
    observer = Observer(url, name)
    holder = Worker(__file__, f"ours,30,{log}", "holder", url, name)
    waiter = Worker(__file__, f"ours,30,{log}", "waiter", url, name)
    out: list[float] = []
    skipped = 0
    try:
        if observer.seen(None, 30) is None:
            raise RuntimeError("the observer yielded nothing in 30 s")
        assert holder.ask("acquire") == "ok"
        for i in range(warmup + rounds):
            waiter.send("wait")
            assert waiter.read() == "waiting"
            park()
            holder.ask("release")
            waiter.read()
            role, term, t = Path(log).read_text().splitlines()[-1].split()
            assert role == "waiter"
            seen = observer.seen(int(term), 10)
            if i >= warmup:
                if seen is None:
                    skipped += 1
                else:
                    out.append((seen - int(t)) / 1e6)
            assert waiter.ask("release") == "ok"
            assert holder.ask("acquire") == "ok"
    finally:
        holder.close()
        waiter.close()
        observer.stop()
        os.unlink(log)
    return out, skipped


def kill_failovers(url: str, rounds: int, duration: float) -> tuple[list[float], list[float]]:
    """Failovers after the leader's SIGKILL: ms from the kill to the follower leading, and that
    minus the lease's time left as read just before the kill."""
    import distributed_leasing as dl

    name = new_name()
    kind = f"ours,{duration},"
    follower = Worker(__file__, kind, "waiter", url, name)
    reader = dl.Election(name, url=url)
    from_kill: list[float] = []
    after_expiry: list[float] = []
    try:
        for _ in range(rounds):
            leader = Worker(__file__, kind, "holder", url, name)
            try:
                assert leader.ask("acquire") == "ok"
                follower.send("wait")
                assert follower.read() == "waiting"
                park()
                info = reader.leader_sync()
                assert info is not None and info.expires_in is not None
                t_read = time.monotonic_ns()
                leader.proc.send_signal(signal.SIGKILL)
                t_kill = time.monotonic_ns()
                t_lead = int(follower.read())
            finally:
                leader.close()
            from_kill.append((t_lead - t_kill) / 1e6)
            after_expiry.append((t_lead - t_read) / 1e6 - info.expires_in * 1000)
            assert follower.ask("release") == "ok"
    finally:
        follower.close()
        reader.close_sync()
    return from_kill, after_expiry


def parked_load(kind: str, url: str, seconds: float = 3.0) -> float:
    """Commands per second the Redis server at ``url`` processes while a follower of ``kind`` is
    parked behind a leader (the leader's own renewals included: one per 10 s for ours)."""
    host, port = url.removeprefix("redis://").rsplit(":", 1)

    def processed() -> int:
        info = resp_command(host, int(port), "INFO", "stats")
        assert isinstance(info, bytes)
        line = next(x for x in info.decode().splitlines() if x.startswith("total_commands_"))
        return int(line.split(":")[1])

    name = new_name()
    leader = Worker(__file__, kind, "holder", url, name)
    follower = Worker(__file__, kind, "waiter", url, name)
    try:
        assert leader.ask("acquire") == "ok"
        follower.send("wait")
        assert follower.read() == "waiting"
        time.sleep(0.5)
        before = processed()
        time.sleep(seconds)
        count = processed() - before - 1  # less the INFO itself
        leader.ask("release")
        follower.read()
        follower.ask("release")
    finally:
        leader.close()
        follower.close()
    return count / seconds


# -- the report ----------------------------------------------------------------------------------


def tooz_label(cadence: float) -> str:
    return f"tooz, run_watchers() every {cadence * 1000:g} ms"


def p(values: list[float], q: float) -> str:
    return f"{pct(values, q):.2f}" if values else "—"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=200, help="failovers after a resign, per kind")
    ap.add_argument("--warmup", type=int, default=5, help="untimed rounds before each block")
    ap.add_argument("--blocks", type=int, default=4, help="blocks the rounds are split into")
    ap.add_argument("--kill-rounds", type=int, default=5, help="failovers after a SIGKILL")
    ap.add_argument("--duration", type=float, default=2.0, help="lease duration for the SIGKILL")
    ap.add_argument("--stores", default=",".join(STORES), help="comma-separated, of " + str(STORES))
    ap.add_argument("--peers", action="store_true", help="tooz's Redis driver on the Redis store")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        run_worker(*args.worker)
        return
    stores = [s for s in args.stores.split(",") if s]
    for s in stores:
        if s not in STORES:
            ap.error(f"--stores: unknown store {s!r}; choose among {', '.join(STORES)}")
    if args.peers:
        try:
            import tooz  # noqa: F401
        except ImportError:
            ap.error("--peers needs tooz: pip install tooz")
    import distributed_leasing as dl

    per_block = max(1, args.rounds // args.blocks)
    print(
        f"distributed-leasing {dl.__version__}, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {per_block * args.blocks} "
        f"failovers per kind in {args.blocks} blocks (each after {args.warmup} warm-up), "
        f"{args.kill_rounds} SIGKILLs with a {args.duration:g} s lease; ms\n",
        flush=True,
    )
    rows: list[str] = []
    peers: dict[str, Handoffs] = {}
    loads: dict[str, float] = {}
    ours_redis: Handoffs | None = None
    for store in stores:
        with store_server(store) as url:
            ours = Handoffs()
            with_peers = store == "redis" and args.peers
            tooz_runs = {c: Handoffs() for c in TOOZ_CADENCES} if with_peers else {}
            name, tooz_name = new_name(), new_name()
            for _ in range(args.blocks):  # interleaved: ours, tooz 1 ms, tooz 100 ms, ours ...
                ours.add("ours,30,", url, per_block, args.warmup, name)
                for cadence, h in tooz_runs.items():
                    h.add(f"tooz,{cadence}", url, per_block, args.warmup, tooz_name)
            if with_peers:
                loads["ours"] = parked_load("ours,30,", url)
                for cadence in TOOZ_CADENCES:
                    loads[tooz_label(cadence)] = parked_load(f"tooz,{cadence}", url)
            seen, skipped = observe_latencies(url, per_block * args.blocks, args.warmup)
            from_kill, after_expiry = kill_failovers(url, args.kill_rounds, args.duration)
        row = (
            f"| {store} | {p(ours.from_return, 50)} | {p(ours.from_return, 99)} | "
            f"{p(ours.from_call, 50)} | {p(from_kill, 50)} | {p(after_expiry, 50)} | "
            f"{p(seen, 50)} | {p(seen, 99)} |"
        )
        rows.append(row)
        print(row + (f"  (observer skipped {skipped} terms)" if skipped else ""), flush=True)
        if store == "redis":
            ours_redis = ours
            for cadence, h in tooz_runs.items():
                peers[tooz_label(cadence)] = h

    print(
        "\n| store | resign → follower leads p50 | p99 | from resign() called p50 | "
        f"SIGKILL → follower leads p50 ({args.duration:g} s lease) | after the expiry p50 | "
        "observe p50 | p99 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)
    if peers and ours_redis is not None:
        print("\nSame Redis, same run, interleaved blocks: resign → follower leads, ms")
        print(
            "\n| library | p50 | p99 | from resign called p50 | p50 / ours: from the return, "
            "from the call | Redis commands/s, one follower parked |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        mine, mine_call = ours_redis.from_return, ours_redis.from_call
        print(
            f"| ours | {p(mine, 50)} | {p(mine, 99)} | {p(mine_call, 50)} | 1, 1 | "
            f"{loads['ours']:,.1f} |"
        )
        for label, h in peers.items():
            ratio = statistics.median(h.from_return) / statistics.median(mine)
            ratio_call = statistics.median(h.from_call) / statistics.median(mine_call)
            print(
                f"| {label} | {p(h.from_return, 50)} | {p(h.from_return, 99)} | "
                f"{p(h.from_call, 50)} | {ratio:.2f}x, {ratio_call:.2f}x | {loads[label]:,.1f} |"
            )


if __name__ == "__main__":
    main()
