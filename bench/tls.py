"""Benchmark: acquire+release over TLS (``rediss://``, Azure Cache's only port) at loopback.

    python bench/tls.py [--rounds 5] [--seconds 2]

Starts a TLS-only redis-server with a throwaway CA (the test harness's ``RedisServer(tls=True)``)
and measures, per round, one task doing sequential acquire+release on one key:
``async with client.lease()`` and ``try_acquire()`` + ``release()`` of this library, and
redis-py's asyncio ``Lock`` over ``ssl``; then the same in synchronous code against redis-py's
sync ``Lock``. Prints cycles/s and client CPU µs per cycle (process time of this process: the
server runs in another), medians of the rounds, and the ratios against redis-py from the same
run. Build the wheel with ``--release`` first.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import distributed_leasing as dl
import redis
import redis.asyncio as aredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))
from redis_servers import RedisServer  # the harness, reused for its TLS material

Row = tuple[float, float]  # cycles/s, client CPU µs per cycle


async def measure_async(cycle: Callable[[], Awaitable[None]], seconds: float) -> Row:
    for _ in range(50):
        await cycle()  # warm-up: connections open, scripts loaded
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        await cycle()
        n += 1
    wall, used = time.perf_counter() - start, time.process_time() - cpu
    return n / wall, used / n * 1e6


def measure_sync(cycle: Callable[[], None], seconds: float) -> Row:
    for _ in range(50):
        cycle()
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        cycle()
        n += 1
    wall, used = time.perf_counter() - start, time.process_time() - cpu
    return n / wall, used / n * 1e6


async def round_async(srv: RedisServer, seconds: float) -> dict[str, Row]:
    name = f"tls-{uuid.uuid4()}"
    out: dict[str, Row] = {}
    async with await dl.LeaseClient.connect(srv.url, ca_file=srv.ca_file) as client:

        async def context() -> None:
            async with client.lease(name):
                pass

        async def explicit() -> None:
            lease = await client.try_acquire(name)
            assert lease is not None
            await lease.release()

        out["distributed-leasing async with lease()"] = await measure_async(context, seconds)
        out["distributed-leasing try_acquire+release"] = await measure_async(explicit, seconds)
    r = aredis.Redis(host=srv.host, port=srv.port, ssl=True, ssl_ca_certs=str(srv.ca_file))

    async def redispy() -> None:
        lock = r.lock(name + "-rp", timeout=30)
        assert await lock.acquire(blocking=False)
        await lock.release()

    out["redis-py asyncio Lock (ssl)"] = await measure_async(redispy, seconds)
    await r.aclose()
    return out


def round_sync(srv: RedisServer, seconds: float) -> dict[str, Row]:
    name = f"tls-sync-{uuid.uuid4()}"
    out: dict[str, Row] = {}
    with dl.LeaseClient.connect_sync(srv.url, ca_file=srv.ca_file) as client:

        def ours() -> None:
            with client.lease(name):
                pass

        out["distributed-leasing sync with lease()"] = measure_sync(ours, seconds)
    r = redis.Redis(host=srv.host, port=srv.port, ssl=True, ssl_ca_certs=str(srv.ca_file))

    def redispy() -> None:
        lock = r.lock(name + "-rp", timeout=30)
        assert lock.acquire(blocking=False)
        lock.release()

    out["redis-py sync Lock (ssl)"] = measure_sync(redispy, seconds)
    r.close()
    return out


def report(title: str, rounds: list[dict[str, Row]], peer: str) -> None:
    print(f"\n## {title} (median of {len(rounds)} rounds)")
    print(f"  {'':42s} {'cycles/s':>10s} {'CPU µs/cycle':>13s}   vs {peer}")
    med = {
        label: (
            statistics.median(r[label][0] for r in rounds),
            statistics.median(r[label][1] for r in rounds),
        )
        for label in rounds[0]
    }
    rate0, cpu0 = med[peer]
    for label, (rate, cpu) in med.items():
        ratio = f"   {rate / rate0:.2f}x the rate, {cpu / cpu0:.2f}x the CPU"
        if label == peer:
            ratio = ""
        print(f"  {label:42s} {rate:>10,.0f} {cpu:>13.1f}{ratio}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    with RedisServer(tls=True) as srv:
        print(f"redis-server TLS on {srv.url}, distributed-leasing {dl.__version__}")
        async_rounds = [asyncio.run(round_async(srv, args.seconds)) for _ in range(args.rounds)]
        sync_rounds = [round_sync(srv, args.seconds) for _ in range(args.rounds)]
    report("async, TLS at loopback", async_rounds, "redis-py asyncio Lock (ssl)")
    report("sync, TLS at loopback", sync_rounds, "redis-py sync Lock (ssl)")


if __name__ == "__main__":
    main()
