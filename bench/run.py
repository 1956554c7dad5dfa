"""Benchmark: this library against the Python lock libraries people use, in one run.

    python bench/run.py [--rounds 3] [--seconds 2] [--placement same|split]
                        [--leases 1000,10000,100000] [--hold 30] [--skip-peers]

Starts a private redis-server on a free loopback port and measures, per scenario, each library
over ``--rounds`` rounds, printing medians and the ratio of this library to each peer:

  1. one task, sequential acquire+release on one key (async and sync);
  2. 64 asyncio tasks, each on its own key;
  3. 8 processes try-acquiring one key (wins/s; each winner does a non-atomic read-modify-write
     on a counter and the run checks 0 lost updates);
  5. N leases held with auto-renew in one process: time to acquire them all, renewals per second
     on the server, renewals failed or leases lost, RSS and CPU.

Scenario 4 (hand-off latency) is ``bench/handoff.py``. redis-benchmark's single-connection SET
rate is printed as the physical reference. Placement matters more than most code changes on this
2-core machine (see STACK-NOTES): ``same`` pins the server and the benchmark to CPU 0, ``split``
puts the server on CPU 1 and the benchmark on CPU 0. Peers: redis-py ``Lock`` (sync and asyncio,
``blocking=False``, default settings), python-redis-lock ``Lock`` (``blocking=False``),
aioredlock ``Aioredlock`` (default retry settings: a refused lock is retried before failing, so
it only appears in scenarios without contention). Build the wheel with ``--release`` first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import distributed_leasing as dl

try:
    import redis
    import redis.asyncio as aredis
except ImportError:  # pragma: no cover - the peers are optional
    redis = None  # type: ignore[assignment]
    aredis = None  # type: ignore[assignment]

# -- the server ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(cpu: int | None) -> Iterator[int]:
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="dl-bench-")
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", tmp]  # fmt: skip
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.02)
        yield port
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def server_info(port: int, section: str) -> dict[str, str]:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", section], capture_output=True, text=True
    ).stdout
    return dict(
        line.split(":", 1) for line in out.splitlines() if ":" in line and not line.startswith("#")
    )


def evalsha_calls(port: int) -> int:
    stats = server_info(port, "commandstats").get("cmdstat_evalsha", "calls=0")
    return int(stats.split(",")[0].split("=")[1])


# -- measuring ----------------------------------------------------------------------------------


async def rate_async(cycle: Callable[[], Awaitable[None]], seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        await cycle()
        n += 1
    return n / (time.perf_counter() - start)


def rate_sync(cycle: Callable[[], None], seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        cycle()
        n += 1
    return n / (time.perf_counter() - start)


Results = dict[str, list[float]]


def report(title: str, results: Results, unit: str, ours: str) -> None:
    print(f"\n## {title}  ({unit}, median of rounds)")
    base = statistics.median(results[ours]) if results.get(ours) else None
    for label, values in results.items():
        med = statistics.median(values)
        ratio = ""
        if base and label != ours and med:
            ratio = f"  -> distributed-leasing is {base / med:.2f}x"
        rounds = ", ".join(f"{v:,.0f}" for v in values)
        print(f"  {label:34s} {med:>10,.0f}   [{rounds}]{ratio}")


# -- scenario 1 ---------------------------------------------------------------------------------


async def scenario1_async(url: str, port: int, seconds: float, peers: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    client = await dl.LeaseClient.connect(url)
    name = f"s1-{uuid.uuid4()}"

    async def ours() -> None:
        lease = await client.acquire(name)
        await lease.release()

    out["distributed-leasing (async)"] = await rate_async(ours, seconds)
    if peers and aredis is not None:
        r = aredis.Redis(port=port)

        async def redispy() -> None:
            lock = r.lock(name + "-rp", timeout=30)
            assert await lock.acquire(blocking=False)
            await lock.release()

        out["redis-py asyncio Lock"] = await rate_async(redispy, seconds)
        await r.aclose()
        with contextlib.suppress(Exception):
            from aioredlock import Aioredlock

            manager = Aioredlock([{"host": "127.0.0.1", "port": port}])

            async def aioredlock_cycle() -> None:
                lock = await manager.lock(name + "-arl", lock_timeout=30)
                await manager.unlock(lock)

            out["aioredlock"] = await rate_async(aioredlock_cycle, seconds)
            await manager.destroy()
    return out


def scenario1_sync(url: str, port: int, seconds: float, peers: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    client = dl.LeaseClient.connect_sync(url)
    name = f"s1s-{uuid.uuid4()}"

    def ours() -> None:
        lease = client.acquire_sync(name)
        lease.release_sync()

    out["distributed-leasing (sync)"] = rate_sync(ours, seconds)
    if peers and redis is not None:
        r = redis.Redis(port=port)

        def redispy() -> None:
            lock = r.lock(name + "-rp", timeout=30)
            assert lock.acquire(blocking=False)
            lock.release()

        out["redis-py sync Lock"] = rate_sync(redispy, seconds)
        with contextlib.suppress(ImportError):
            import redis_lock

            def prl() -> None:
                lock = redis_lock.Lock(r, name + "-prl", expire=30)
                assert lock.acquire(blocking=False)
                lock.release()

            out["python-redis-lock"] = rate_sync(prl, seconds)
    return out


# -- scenario 2 ---------------------------------------------------------------------------------


async def many_tasks(cycle: Callable[[int], Awaitable[None]], tasks: int, seconds: float) -> float:
    count = [0] * tasks
    end = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        while time.perf_counter() < end:
            await cycle(i)
            count[i] += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(tasks)))
    return sum(count) / (time.perf_counter() - start)


async def scenario2(url: str, port: int, seconds: float, peers: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    client = await dl.LeaseClient.connect(url)
    tag = uuid.uuid4().hex[:8]

    async def ours(i: int) -> None:
        lease = await client.acquire(f"s2-{tag}-{i}")
        await lease.release()

    out["distributed-leasing"] = await many_tasks(ours, 64, seconds)
    if peers and aredis is not None:
        r = aredis.Redis(port=port, max_connections=64)

        async def redispy(i: int) -> None:
            lock = r.lock(f"s2rp-{tag}-{i}", timeout=30)
            assert await lock.acquire(blocking=False)
            await lock.release()

        out["redis-py asyncio Lock"] = await many_tasks(redispy, 64, seconds)
        await r.aclose()
    return out


# -- scenario 3 ---------------------------------------------------------------------------------


def _contender(kind: str, url: str, port: int, name: str, seconds: float, q: Any) -> None:
    r = redis.Redis(port=port)
    counter = f"{name}:counter:{kind}"
    wins = 0
    end = time.time() + seconds
    if kind == "ours":
        client = dl.LeaseClient.connect_sync(url)
        while time.time() < end:
            lease = client.try_acquire_sync(name, auto_renew=False, duration=10)
            if lease is None:
                continue
            value = int(r.get(counter) or 0)  # a non-atomic read-modify-write under the lease
            r.set(counter, value + 1)
            wins += 1
            lease.release_sync()
    else:
        while time.time() < end:
            lock = r.lock(name + "-rp", timeout=10)
            if not lock.acquire(blocking=False):
                continue
            value = int(r.get(counter) or 0)
            r.set(counter, value + 1)
            wins += 1
            lock.release()
    q.put(wins)


def scenario3(url: str, port: int, seconds: float, peers: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    kinds = ["ours"] + (["redis-py"] if peers and redis is not None else [])
    ctx = multiprocessing.get_context("spawn")
    for kind in kinds:
        name = f"s3-{uuid.uuid4()}"
        q = ctx.Queue()
        procs = [
            ctx.Process(target=_contender, args=(kind, url, port, name, seconds, q))
            for _ in range(8)
        ]
        for p in procs:
            p.start()
        wins = sum(q.get(timeout=seconds + 120) for _ in procs)
        for p in procs:
            p.join()
        final = int(redis.Redis(port=port).get(f"{name}:counter:{kind}") or 0)
        lost = wins - final
        label = "distributed-leasing" if kind == "ours" else "redis-py sync Lock"
        out[label] = wins / seconds
        print(f"  ({label}: {wins} wins, counter {final}, lost updates {lost})")
        assert lost == 0, f"{label}: {lost} lost updates"
    return out


# -- scenario 5 ---------------------------------------------------------------------------------


async def scenario5(url: str, port: int, n: int, hold: float) -> None:
    client = await dl.LeaseClient.connect(url)
    tag = uuid.uuid4().hex[:8]
    duration, interval = 30.0, 20.0
    if hold < 45:
        duration, interval = 6.0, 4.0  # short runs: renew often enough to measure
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    leases: list[dl.Lease] = []
    batch = 1000
    for i in range(0, n, batch):
        leases += await asyncio.gather(
            *(
                client.acquire(f"s5-{tag}-{j}", duration=duration, renew_interval=interval)
                for j in range(i, min(n, i + batch))
            )
        )
    took = time.perf_counter() - start
    calls0 = evalsha_calls(port)
    t0 = time.perf_counter()
    await asyncio.sleep(hold)
    elapsed = time.perf_counter() - t0
    calls = evalsha_calls(port) - calls0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    lost = sum(1 for lease in leases if lease.is_lost)
    failures = sum(lease.renewal_failures for lease in leases)
    renewals = sum(lease.renewals for lease in leases)
    expected = n * elapsed / interval
    rss_mb = cpu1.ru_maxrss / 1024
    cpu_s = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    print(
        f"  N={n:>7,}: acquire all {took:6.2f}s ({n / took:,.0f}/s) | held {elapsed:.0f}s, "
        f"renew every {interval:.0f}s | renewals {renewals / elapsed:,.0f}/s "
        f"(expected ~{expected / elapsed:,.0f}/s) in {calls / elapsed:,.0f} EVALSHA/s on the "
        f"server (batched) | "
        f"failed renewals {failures} | lost {lost} | max RSS {rss_mb:,.0f} MB | "
        f"CPU {cpu_s:.1f}s ({100 * cpu_s / (took + elapsed):.0f}% of one core)"
    )
    await asyncio.gather(*(lease.release() for lease in leases))


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--placement", choices=["same", "split"], default="same")
    ap.add_argument("--leases", default="1000,10000,100000")
    ap.add_argument("--hold", type=float, default=30.0, help="seconds to hold the N leases")
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--scenarios", default="1,2,3,5")
    args = ap.parse_args()
    peers = not args.skip_peers and redis is not None
    scenarios = set(args.scenarios.split(","))
    server_cpu = 0 if args.placement == "same" else 1
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    with redis_server(server_cpu) as port:
        url = f"redis://127.0.0.1:{port}"
        print(f"placement: {args.placement} (benchmark on CPU 0, redis-server on CPU {server_cpu})")
        bench = subprocess.run(
            ["redis-benchmark", "-p", str(port), "-c", "1", "-n", "50000", "-t", "set", "-q"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        print(f"redis-benchmark, 1 connection: {bench.splitlines()[-1] if bench else 'n/a'}")
        if "1" in scenarios:
            res_a: Results = {}
            res_s: Results = {}
            for _ in range(args.rounds):
                for k, v in asyncio.run(scenario1_async(url, port, args.seconds, peers)).items():
                    res_a.setdefault(k, []).append(v)
                for k, v in scenario1_sync(url, port, args.seconds, peers).items():
                    res_s.setdefault(k, []).append(v)
            report("Scenario 1 async: one task, acquire+release", res_a, "cycles/s",
                   "distributed-leasing (async)")  # fmt: skip
            report("Scenario 1 sync: one thread, acquire+release", res_s, "cycles/s",
                   "distributed-leasing (sync)")  # fmt: skip
        if "2" in scenarios:
            res2: Results = {}
            for _ in range(args.rounds):
                for k, v in asyncio.run(scenario2(url, port, args.seconds, peers)).items():
                    res2.setdefault(k, []).append(v)
            report("Scenario 2: 64 tasks, own keys", res2, "cycles/s", "distributed-leasing")
        if "3" in scenarios:
            res3: Results = {}
            for _ in range(args.rounds):
                for k, v in scenario3(url, port, args.seconds, peers).items():
                    res3.setdefault(k, []).append(v)
            report("Scenario 3: 8 processes, one key", res3, "wins/s", "distributed-leasing")
        if "5" in scenarios:
            print(f"\n## Scenario 5: N leases held with auto-renew (hold {args.hold:.0f}s)")
            for n in (int(x) for x in args.leases.split(",") if x):
                asyncio.run(scenario5(url, port, n, args.hold))


if __name__ == "__main__":
    sys.exit(main())
