"""Semaphore figures: a permit against a lease, per store, and against other libraries'
semaphores on Redis and on local files.

    python bench/semaphore.py [--rounds 5] [--seconds 1] [--stores redis,sqlite,postgres,etcd]
                              [--handoff-rounds 100] [--held 100] [--peers] [--instructions]

Each store's private server as the other benchmarks start it (``election.store_server``: the
test harness's Redis, PostgreSQL and etcd; SQLite a file in a temporary directory), one store
after the other; a store that answers that it does not support semaphores is left out, saying
so. Per store:

1. **cycles/s**: sequential acquire+release cycles on one name for ``--seconds`` s, a lease
   (``try_acquire`` + ``release``) against a permit of a semaphore of limit 3
   (``try_acquire_permit`` + ``release``), async and ``_sync``, taking turns within each of
   ``--rounds`` rounds; medians, and the permit's over the lease's.
2. **hand-off**: a semaphore of limit 2 whose one permit the parent holds throughout; a holder
   process releases the other while a waiter process is parked in ``acquire_permit(wait=60)``
   (100-200 ms after it said it waits, ``_handoff_common.handoffs``); the time from the
   holder's ``release()`` returning to the waiter's acquire returning, p50/p99 over
   ``--handoff-rounds`` (after 5 warm-up rounds). ``CLOCK_MONOTONIC`` is one clock for the
   machine.
3. **a huge limit**: ``--held`` permits acquired one after the other and held (each takes the
   next slot), of a semaphore of limit 2^31-1 with a 1,000-character name, against the same
   count at limit ``--held`` with a short name; acquires/s.

With ``--peers`` (``pip install py-redis-semaphore portalocker``), in the same run and with the
same rounds: on the Redis store's server, py-redis-semaphore's ``Semaphore`` (a sorted set of
owners with a TTL per owner, a heartbeat thread or task renewing it, fencing tokens; waiters
blocked in ``BLPOP`` on a signal list, its default), sync (``acquire(blocking=False)`` +
``release()``) and async (``aacquire`` + ``arelease``), limit 3 (hand-off: limit 2, one owner
held by the parent, the waiter in ``acquire(blocking=True)``); on the SQLite store's turn,
portalocker's file-based ``NamedBoundedSemaphore`` (a lock file per slot, ``flock``; waiters
poll every ``check_interval``: its default, 0.25 s, and 10 ms) in the same temporary directory.
(``redis-semaphore`` 0.2.2, the older package, installs the same module ``redis_semaphore`` and
has no expiry: a dead holder's slot is freed only by another client's ``stale_client_timeout``
sweep on its own clock.)

With ``--instructions`` (valgrind): a ``redis-server`` under callgrind (``server_cpu.py``'s
``callgrind_server``) and the instructions it executes in ``processCommand`` per sync cycle:
lease, permit, and with ``--peers`` py-redis-semaphore's; ``--cycles`` cycles each.

A benchmark, not a test; build the wheel with ``--release`` first.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _handoff_common import handoffs, pct, serve, serve_async
from election import store_server
from run import rate_async, rate_sync

STORES = ("redis", "redis-cluster", "sqlite", "postgres", "etcd")
LIMIT = 3
HUGE = 2**31 - 1
PORTALOCKER_INTERVALS = (0.25, 0.01)  # s between a portalocker waiter's sweeps
PARK = 0.1  # s (+ 0-100 ms) between the waiter saying it waits and the holder's release


# -- the worker processes (hand-off) ---------------------------------------------------------------
#
# Kinds: "ours" (target: a store URL), "prs" (py-redis-semaphore; target: a Redis URL) and
# "portalocker,<check_interval>" (target: a directory). Each takes a permit of a semaphore of
# limit 2 on "acquire"/"wait" and gives it back on "release" (_handoff_common.serve).


def worker_ours(role: str, url: str, name: str) -> None:
    import distributed_leasing as dl

    async def main() -> None:
        client = await dl.LeaseClient.connect(url)

        async def acquire() -> Any:
            return await client.acquire_permit(name, limit=2, wait=60)

        await serve_async(role, acquire, lambda permit: permit.release())

    asyncio.run(main())


def worker_prs(role: str, url: str, name: str) -> None:
    import redis
    from redis_semaphore import Semaphore, SemaphoreConfig

    client = redis.Redis.from_url(url)

    def acquire() -> Any:
        sem = Semaphore(client, SemaphoreConfig(name=name, limit=2, acquire_timeout=60))
        assert sem.acquire(blocking=True).success
        return sem

    serve(role, acquire, lambda sem: sem.release())


def worker_portalocker(role: str, directory: str, name: str, interval: float) -> None:
    import portalocker

    def acquire() -> Any:
        sem = portalocker.NamedBoundedSemaphore(
            2, name=name, directory=directory, timeout=60, check_interval=interval
        )
        sem.acquire()
        return sem

    serve(role, acquire, lambda sem: sem.release())


def run_worker(kind: str, role: str, target: str, name: str) -> None:
    what, *args = kind.split(",")
    if what == "ours":
        worker_ours(role, target, name)
    elif what == "prs":
        worker_prs(role, target, name)
    else:
        worker_portalocker(role, target, name, float(args[0]))


def park() -> None:
    time.sleep(PARK + random.uniform(0, 0.1))


# -- cycles ----------------------------------------------------------------------------------------

Cycle = tuple[str, Callable[[float], float]]  # (label, measure(seconds) -> cycles/s)


def ours_cycles(runner: asyncio.Runner, url: str) -> tuple[list[Cycle], Callable[[], None]]:
    import distributed_leasing as dl

    client: dl.LeaseClient = runner.run(dl.LeaseClient.connect(url))
    sync_client = dl.LeaseClient.connect_sync(url)
    tag = uuid.uuid4().hex[:8]

    async def lease_async() -> None:
        lease = await client.try_acquire(f"bench-l-{tag}")
        assert lease is not None
        await lease.release()

    async def permit_async() -> None:
        permit = await client.try_acquire_permit(f"bench-p-{tag}", limit=LIMIT)
        assert permit is not None
        await permit.release()

    def lease_sync() -> None:
        lease = sync_client.try_acquire_sync(f"bench-ls-{tag}")
        assert lease is not None
        lease.release_sync()

    def permit_sync() -> None:
        permit = sync_client.try_acquire_permit_sync(f"bench-ps-{tag}", limit=LIMIT)
        assert permit is not None
        permit.release_sync()

    def on_loop(cycle: Callable[[], Awaitable[None]]) -> Callable[[float], float]:
        return lambda s: runner.run(rate_async(cycle, s))

    def close() -> None:
        runner.run(client.close())
        sync_client.close_sync()

    return [
        ("lease, async", on_loop(lease_async)),
        ("permit, async", on_loop(permit_async)),
        ("lease, sync", lambda s: rate_sync(lease_sync, s)),
        ("permit, sync", lambda s: rate_sync(permit_sync, s)),
    ], close


def prs_cycles(runner: asyncio.Runner, url: str) -> tuple[list[Cycle], Callable[[], None]]:
    """py-redis-semaphore, limit 3, default settings (30 s TTL, a heartbeat every 10 s)."""
    import redis
    import redis.asyncio as aredis
    from redis_semaphore import Semaphore, SemaphoreConfig

    r = redis.Redis.from_url(url)
    ar = aredis.Redis.from_url(url)
    tag = uuid.uuid4().hex[:8]

    def sync_cycle() -> None:
        sem = Semaphore(r, SemaphoreConfig(name=f"prs-s-{tag}", limit=LIMIT))
        assert sem.acquire(blocking=False).success
        assert sem.release()

    async def async_cycle() -> None:
        sem = Semaphore(ar, SemaphoreConfig(name=f"prs-a-{tag}", limit=LIMIT))
        assert (await sem.aacquire(blocking=False)).success
        assert await sem.arelease()

    def close() -> None:
        r.close()
        runner.run(ar.aclose())

    return [
        ("py-redis-semaphore, async", lambda s: runner.run(rate_async(async_cycle, s))),
        ("py-redis-semaphore, sync", lambda s: rate_sync(sync_cycle, s)),
    ], close


def portalocker_cycles(directory: str) -> list[Cycle]:
    """portalocker's file-based NamedBoundedSemaphore, limit 3 (no contention: slot 0 each time)."""
    import portalocker

    sem = portalocker.NamedBoundedSemaphore(
        LIMIT, name=f"pl-{uuid.uuid4().hex[:8]}", directory=directory, timeout=0
    )

    def cycle() -> None:
        sem.acquire()
        sem.release()

    return [("portalocker NamedBoundedSemaphore, sync", lambda s: rate_sync(cycle, s))]


# -- a huge limit ----------------------------------------------------------------------------------


def huge_limit(url: str, held: int) -> dict[str, float]:
    """Acquires/s taking ``held`` permits one after the other (each the next slot), at limit
    2^31-1 with a 1,000-character name and at limit ``held`` with a short name."""
    import distributed_leasing as dl

    client = dl.LeaseClient.connect_sync(url)
    out: dict[str, float] = {}
    try:
        for label, name, limit in (
            (f"limit {held}, short name", f"bench-h-{uuid.uuid4().hex[:8]}", held),
            ("limit 2^31-1, 1,000-character name", "h" * 992 + uuid.uuid4().hex[:8], HUGE),
        ):
            permits = []
            t0 = time.perf_counter()
            for _ in range(held):
                permit = client.try_acquire_permit_sync(name, limit=limit)
                assert permit is not None
                permits.append(permit)
            out[label] = held / (time.perf_counter() - t0)
            assert sorted(p.slot for p in permits) == list(range(held))
            for p in permits:
                p.release_sync()
    finally:
        client.close_sync()
    return out


# -- instructions (callgrind) ----------------------------------------------------------------------


def instructions(cycles: int, peers: bool) -> dict[str, float]:
    """Redis-server instructions in processCommand per sync cycle (server_cpu's method)."""
    import distributed_leasing as dl
    import redis
    from server_cpu import callgrind_server

    out: dict[str, float] = {}
    with callgrind_server() as (port, cg):
        url = f"redis://127.0.0.1:{port}"
        client = dl.LeaseClient.connect_sync(url)
        tag = uuid.uuid4().hex[:8]

        def lease() -> None:
            lease = client.try_acquire_sync(f"cg-l-{tag}")
            assert lease is not None
            lease.release_sync()

        def permit() -> None:
            permit = client.try_acquire_permit_sync(f"cg-p-{tag}", limit=LIMIT)
            assert permit is not None
            permit.release_sync()

        runs: dict[str, Callable[[], None]] = {"lease": lease, "permit": permit}
        if peers:
            from redis_semaphore import Semaphore, SemaphoreConfig

            r = redis.Redis(port=port)

            def prs() -> None:
                sem = Semaphore(r, SemaphoreConfig(name=f"cg-prs-{tag}", limit=LIMIT))
                assert sem.acquire(blocking=False).success
                assert sem.release()

            runs["py-redis-semaphore"] = prs
        for label, cycle in runs.items():
            for _ in range(50):  # warm-up: connections open, scripts loaded
                cycle()
            cg.dump()
            for _ in range(cycles):
                cycle()
            out[label] = cg.dump() / cycles
        client.close_sync()
    return out


# -- the run ---------------------------------------------------------------------------------------


def supported(url: str) -> str | None:
    """None if the store has semaphores, else its refusal."""
    import distributed_leasing as dl

    client = dl.LeaseClient.connect_sync(url)
    try:
        client.semaphore_info_sync("bench-probe")
    except dl.ConfigError as e:
        if "does not support semaphores" in str(e):
            return str(e)
        raise
    finally:
        client.close_sync()
    return None


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of cycles/s")
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds per measurement")
    ap.add_argument("--stores", default="redis,sqlite,postgres,etcd", help="of " + str(STORES))
    ap.add_argument("--handoff-rounds", type=int, default=100, help="hand-offs per library")
    ap.add_argument("--held", type=int, default=100, help="permits held in the huge-limit run")
    ap.add_argument("--peers", action="store_true", help="py-redis-semaphore and portalocker")
    ap.add_argument("--instructions", action="store_true", help="callgrind (needs valgrind)")
    ap.add_argument("--cycles", type=int, default=1000, help="cycles under callgrind")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    # py-redis-semaphore warns on every Semaphore whose BLPOP wait it caps
    logging.getLogger("redis_semaphore").setLevel(logging.ERROR)
    if args.worker:
        run_worker(*args.worker)
        return
    stores = [s for s in args.stores.split(",") if s]
    for s in stores:
        if s not in STORES:
            ap.error(f"--stores: unknown store {s!r}; choose among {', '.join(STORES)}")
    if args.peers:
        try:
            import portalocker  # noqa: F401
            import redis_semaphore  # noqa: F401
        except ImportError:
            ap.error("--peers needs py-redis-semaphore and portalocker: "
                     "pip install py-redis-semaphore portalocker")  # fmt: skip
    import distributed_leasing as dl

    print(
        f"distributed-leasing {dl.__version__}, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {args.rounds} rounds of "
        f"{args.seconds:g} s; {args.handoff_rounds} hand-offs per library\n",
        flush=True,
    )
    script = str(Path(__file__).resolve())
    cycle_rows: list[str] = []
    handoff_rows: list[str] = []
    huge_rows: list[str] = []
    skipped: list[str] = []
    for store in stores:
        with store_server(store) as url:
            why = supported(url)
            if why is not None:
                skipped.append(f"{store}: {why}")
                print(f"{store}: skipped ({why})", flush=True)
                continue
            with asyncio.Runner() as runner, tempfile.TemporaryDirectory() as tmp:
                cycles, close = ours_cycles(runner, url)
                closers = [close]
                if args.peers and store == "redis":
                    extra, close_prs = prs_cycles(runner, url)
                    cycles += extra
                    closers.append(close_prs)
                if args.peers and store == "sqlite":
                    cycles += portalocker_cycles(tmp)
                rates: dict[str, list[float]] = {label: [] for label, _ in cycles}
                for _, measure in cycles:
                    measure(0.2)  # warm-up
                for _ in range(args.rounds):
                    for label, measure in cycles:
                        rates[label].append(measure(args.seconds))
                for c in closers:
                    c()
                m = {label: med(v) for label, v in rates.items()}
                for label in rates:
                    against = {
                        "permit, async": m["lease, async"],
                        "permit, sync": m["lease, sync"],
                    }.get(label)
                    if label.startswith("py-redis") or label.startswith("portalocker"):
                        mine = m["permit, async" if "async" in label else "permit, sync"]
                        ratio = f"ours (permit) {mine / m[label]:.2f}x"
                    else:
                        ratio = f"{m[label] / against:.2f}x the lease" if against else ""
                    row = (f"| {store} | {label} | {m[label]:,.0f} | {ratio} | "
                           + ", ".join(f"{x:,.0f}" for x in rates[label]) + " |")  # fmt: skip
                    cycle_rows.append(row)
                    print(row, flush=True)

                kinds = [("ours (permit)", "ours", url)]
                if args.peers and store == "redis":
                    kinds.append(("py-redis-semaphore", "prs", url))
                if args.peers and store == "sqlite":
                    kinds += [
                        (f"portalocker, check_interval {ci * 1000:g} ms", f"portalocker,{ci}", tmp)
                        for ci in PORTALOCKER_INTERVALS
                    ]
                for label, kind, target in kinds:
                    name = f"bench-ho-{uuid.uuid4().hex[:8]}"
                    release = hold_one(kind, target, name)
                    try:
                        _, from_return = handoffs(
                            script, kind, target, name, args.handoff_rounds, 5, park
                        )
                    finally:
                        release()
                    row = (f"| {store} | {label} | {pct(from_return, 50):.2f} | "
                           f"{pct(from_return, 99):.2f} |")  # fmt: skip
                    handoff_rows.append(row)
                    print(row, flush=True)
            for label, rate in huge_limit(url, args.held).items():
                row = f"| {store} | {args.held} permits, {label} | {rate:,.0f} |"
                huge_rows.append(row)
                print(row, flush=True)

    print(f"\n## Acquire+release cycles/s (median of {args.rounds} rounds of {args.seconds:g} s)")
    print("| store | what | cycles/s | ratio | rounds |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(cycle_rows))
    print("\n## Hand-off: release() returned → the waiter's acquire returned (ms; limit 2, one"
          " permit held throughout)")  # fmt: skip
    print("| store | library | p50 | p99 |")
    print("| --- | --- | --- | --- |")
    print("\n".join(handoff_rows))
    print(f"\n## Acquires/s, {args.held} permits taken one after the other and held")
    print("| store | what | acquires/s |")
    print("| --- | --- | --- |")
    print("\n".join(huge_rows))
    for s in skipped:
        print(f"\nnot measured: {s}")
    if args.instructions:
        counts = instructions(args.cycles, args.peers)
        print(f"\n## Redis-server instructions per sync acquire+release cycle (processCommand,"
              f" callgrind, {args.cycles} cycles)")  # fmt: skip
        print("| what | instructions/cycle | / lease |")
        print("| --- | --- | --- |")
        for label, n in counts.items():
            print(f"| {label} | {n:,.0f} | {n / counts['lease']:.2f}x |")


def hold_one(kind: str, target: str, name: str) -> Callable[[], None]:
    """Takes one permit of the hand-off's semaphore (limit 2) for the whole run, in this
    process; returns how to give it back."""
    if kind == "ours":
        import distributed_leasing as dl

        client = dl.LeaseClient.connect_sync(target)
        permit = client.try_acquire_permit_sync(name, limit=2)
        assert permit is not None

        def release() -> None:
            permit.release_sync()
            client.close_sync()

        return release
    if kind == "prs":
        import redis
        from redis_semaphore import Semaphore, SemaphoreConfig

        r = redis.Redis.from_url(target)
        sem = Semaphore(r, SemaphoreConfig(name=name, limit=2))
        assert sem.acquire(blocking=False).success

        def release_prs() -> None:
            sem.release()
            r.close()

        return release_prs
    import portalocker

    lock = portalocker.NamedBoundedSemaphore(2, name=name, directory=target, timeout=0)
    lock.acquire()
    return lock.release


if __name__ == "__main__":
    main()
