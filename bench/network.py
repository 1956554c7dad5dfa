"""Benchmark over a network: this library and its peers through a latency-injecting proxy.

    python bench/network.py [--rtts 0,0.5,1] [--rounds 3] [--seconds 2] [--handoff-rounds 200]
                            [--tasks 64,256] [--proxy PATH] [--libs ours-with,ours-async,...]

Per round trip time (ms) in ``--rtts``: starts a private ``redis-server`` (the test harness's
``RedisServer``, as ``bench/tls.py`` does) and ``bench/latency_proxy.rs`` in front of it with a
one-way delay of RTT/2 (built with ``cargo build --release --example latency_proxy``, in
``CARGO_TARGET_DIR`` if set, unless ``--proxy`` names the binary; this machine's kernel has no
netem), then measures every library through the proxy:

- **cycles/s**: one task (or thread), sequential acquire+release on one key, ``--seconds`` per
  round; medians of ``--rounds`` rounds, the libraries taking turns within a round;
- **% of limit**: an acquire+release is two round trips whatever the library, so the limit is
  half the rate of single-connection ``redis-benchmark -c 1 EVALSHA`` (a script returning 1)
  through the same proxy;
- **client µs/cycle**: this process's CPU time (all its threads) per cycle;
- **server µs/cycle**: ``INFO commandstats`` of the commands the client sends, as
  ``bench/server_cpu.py`` counts them (its functions, imported);
- **hand-off p50/p99**: ``bench/handoff.py``'s measurement (imported): release() returning
  in one process to acquire(wait=None) returning in another (and "from release() call": from
  release() being called), both through the proxy (ours async on the ``async with`` row, ours
  sync, python-redis-lock's BLPOP, and redis-py's sync ``Lock`` with ``sleep=0.001``: it polls).

- **many tasks** (``--tasks``, scenario 2 of ``bench/run.py`` through the proxy): N asyncio
  tasks, each acquiring and releasing its own key, ours (``async with client.lease()``) against
  redis-py's asyncio ``Lock`` (``blocking=False``, a pool of N connections); cycles/s of all
  tasks together, medians of ``--rounds``.

Peers: redis-py's ``Lock`` (asyncio and sync, ``blocking=False``, ``timeout=30``),
python-redis-lock (``blocking=False``, ``expire=30``; BLPOP hand-off), aioredlock (if
installed). Ratios are against peers of the same run. Build the wheel with ``--release`` first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import distributed_leasing as dl
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))
import handoff  # bench/handoff.py: the hand-off measurement
from redis_servers import RedisServer, free_port  # the test harness
from run import many_tasks  # bench/run.py's scenario 2 driver
from server_cpu import SCRIPT_ENTRIES, TOP_LEVEL, commandstats, make_runners

ROOT = Path(__file__).resolve().parent.parent

# label, commands the client sends itself (commandstats), hand-off worker of bench/handoff.py
LIBS: dict[str, tuple[str, set[str], str | None]] = {
    "ours-with": ("ours: async with lease()", TOP_LEVEL["ours-with"], "ours-async"),
    "ours-async": ("ours: try_acquire()+release()", TOP_LEVEL["ours-async"], None),
    "ours-sync": ("ours: sync try_acquire+release", TOP_LEVEL["ours-sync"], "ours-sync"),
    "redis-py-async": ("redis-py asyncio Lock", TOP_LEVEL["redis-py-async"], None),
    "redis-py-sync": ("redis-py sync Lock", TOP_LEVEL["redis-py-sync"], "redis-py-lock-1ms"),
    "python-redis-lock": ("python-redis-lock", SCRIPT_ENTRIES | {"set"}, "python-redis-lock"),
    "aioredlock": ("aioredlock", SCRIPT_ENTRIES, None),
}
# ours against the peers of the same kind
RATIOS = {
    "ours-with": ["redis-py-async", "aioredlock"],
    "ours-async": ["redis-py-async", "aioredlock"],
    "ours-sync": ["redis-py-sync", "python-redis-lock"],
}
DEFAULT_LIBS = "ours-with,ours-async,ours-sync,redis-py-async,redis-py-sync,python-redis-lock"

Cycle = Callable[[int], None]  # runs n acquire+release cycles


@contextlib.contextmanager
def latency_proxy(binary: Path, target_port: int, one_way_us: int) -> Iterator[int]:
    """The proxy on a free port in front of 127.0.0.1:target_port; yields its port."""
    port = free_port()
    cmd = [str(binary), str(port), f"127.0.0.1:{target_port}", str(one_way_us)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening"):
            raise RuntimeError(f"latency_proxy did not start: {line!r}")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def build_proxy() -> Path:
    out = subprocess.run(
        ["cargo", "build", "--release", "--example", "latency_proxy", "--message-format=json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("target", {}).get("name") == "latency_proxy" and msg.get("executable"):
            return Path(msg["executable"])
    raise RuntimeError("cargo built no latency_proxy executable")


def evalsha_rate(port: int, seconds: float) -> float:
    """Requests/s of single-connection ``redis-benchmark`` EVALSHA through ``port``."""
    sha = redis.Redis(port=port).script_load("return 1")
    n = 200
    while True:
        t0 = time.perf_counter()
        out = subprocess.run(
            [
                "redis-benchmark",
                "-p",
                str(port),
                "-c",
                "1",
                "-n",
                str(n),
                "--csv",
                "EVALSHA",
                sha,
                "0",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        took = time.perf_counter() - t0
        if took >= seconds / 2 or n >= 1_000_000:
            # "test","rps",...: the second field of the last line
            return float(out.strip().splitlines()[-1].split(",")[1].strip('"'))
        n = min(1_000_000, int(n * seconds / max(took, 0.01)))


def make_cycles(
    runner: asyncio.Runner, port: int, libs: list[str]
) -> tuple[dict[str, Cycle], Callable[[], None]]:
    """Per library, run(n) doing n cycles through ``port``; and a close() for them all. Ours and
    redis-py's are ``bench/server_cpu.py``'s (the same cycles it measures)."""
    runners = make_runners(runner, port, {})
    out: dict[str, Cycle] = {mode: run for mode, (run, _) in runners.items()}
    closers: list[Callable[[], object]] = [close for _, close in runners.values()]
    tag = uuid.uuid4().hex[:8]
    if "python-redis-lock" in libs:
        import redis_lock

        r = redis.Redis(port=port)
        closers.append(r.close)

        def prl(n: int) -> None:
            for _ in range(n):
                lock = redis_lock.Lock(r, f"net-prl-{tag}", expire=30)
                assert lock.acquire(blocking=False)
                lock.release()

        out["python-redis-lock"] = prl
    if "aioredlock" in libs:
        from aioredlock import Aioredlock

        manager = Aioredlock([{"host": "127.0.0.1", "port": port}])

        async def aioredlock_cycles(n: int) -> None:
            for _ in range(n):
                lock = await manager.lock(f"net-arl-{tag}", lock_timeout=30)
                await manager.unlock(lock)

        out["aioredlock"] = lambda n: runner.run(aioredlock_cycles(n))
        closers.append(lambda: runner.run(manager.destroy()))

    def close() -> None:
        for c in closers:
            c()

    return out, close


Row = tuple[float, float, float]  # cycles/s, client CPU µs/cycle, server µs/cycle


def measure(ctl: redis.Redis, run: Cycle, top: set[str], seconds: float) -> Row:
    run(20)  # warm-up: connections open, scripts loaded
    # A batch of about 0.1 s, from a first estimate of the rate.
    t0 = time.perf_counter()
    run(20)
    batch = max(5, int(0.1 * 20 / max(time.perf_counter() - t0, 1e-6)))
    ctl.config_resetstat()
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        run(batch)
        n += batch
    wall, used = time.perf_counter() - start, time.process_time() - cpu
    stats = commandstats(ctl)
    server = sum(s["usec"] for c, s in stats.items() if c in top)
    return n / wall, used / n * 1e6, server / n


def many_task_rates(
    runner: asyncio.Runner, port: int, tasks: int, args: argparse.Namespace
) -> dict[str, float]:
    """Cycles/s of ``tasks`` concurrent tasks on their own keys, ours and redis-py's asyncio
    Lock, medians of ``args.rounds`` rounds taking turns."""
    import redis.asyncio as aredis

    tag = uuid.uuid4().hex[:8]

    async def run() -> dict[str, list[float]]:
        client = await dl.LeaseClient.connect(f"redis://127.0.0.1:{port}")
        r = aredis.Redis(port=port, max_connections=tasks)

        async def ours(i: int) -> None:
            async with client.lease(f"net-s2-{tag}-{i}"):
                pass

        async def redispy(i: int) -> None:
            lock = r.lock(f"net-s2rp-{tag}-{i}", timeout=30)
            assert await lock.acquire(blocking=False)
            await lock.release()

        out: dict[str, list[float]] = {"ours": [], "redis-py": []}
        try:
            await many_tasks(ours, tasks, 0.3)  # warm-up: connections open, scripts loaded
            await many_tasks(redispy, tasks, 0.3)
            for _ in range(args.rounds):
                out["ours"].append(await many_tasks(ours, tasks, args.seconds))
                out["redis-py"].append(await many_tasks(redispy, tasks, args.seconds))
        finally:
            await client.close()
            await r.aclose()
        return out

    rates = runner.run(run())
    return {k: statistics.median(v) for k, v in rates.items()}


class ViaProxy:
    """What ``handoff.measure`` needs of a server: clients use ``url``, and the parent checks
    subscriptions on ``port`` (the server itself)."""

    def __init__(self, proxy_port: int, server_port: int) -> None:
        self.url = f"redis://127.0.0.1:{proxy_port}"
        self.port = server_port


def run_rtt(
    rtt_ms: float, proxy: Path, libs: list[str], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    with (
        RedisServer() as srv,
        latency_proxy(proxy, srv.port, round(rtt_ms * 500)) as pport,
        asyncio.Runner() as runner,
    ):
        ctl = redis.Redis(port=srv.port)
        limit = evalsha_rate(pport, args.seconds) / 2
        cycles, close = make_cycles(runner, pport, libs)
        rows: dict[str, list[Row]] = {lib: [] for lib in libs}
        for _ in range(args.rounds):
            for lib in libs:
                rows[lib].append(measure(ctl, cycles[lib], LIBS[lib][1], args.seconds))
        close()
        res: dict[str, dict[str, Any]] = {}
        for lib in libs:
            med = [statistics.median(r[i] for r in rows[lib]) for i in range(3)]
            res[lib] = {"rate": med[0], "client": med[1], "server": med[2], "limit": limit}
        for n in args.task_counts:
            res[f"tasks-{n}"] = {"limit": limit, **many_task_rates(runner, pport, n, args)}
        if args.handoff_rounds:
            via = ViaProxy(pport, srv.port)
            for lib in libs:
                kind = LIBS[lib][2]
                if kind is None:
                    continue
                m = handoff.measure(kind, via, args.handoff_rounds, 20, (None, None))  # type: ignore[arg-type]
                res[lib]["p50"] = handoff.pct(m.after_return, 50)
                res[lib]["p99"] = handoff.pct(m.after_return, 99)
                res[lib]["c50"] = handoff.pct(m.after_call, 50)
                res[lib]["c99"] = handoff.pct(m.after_call, 99)
        return res


def report(rtt_ms: float, res: dict[str, dict[str, Any]]) -> None:
    limit = next(iter(res.values()))["limit"]
    print(
        f"\n## RTT {rtt_ms:g} ms (proxy one-way delay {rtt_ms * 500:.0f} µs); limit "
        f"{limit:,.0f} cycles/s (redis-benchmark -c 1 EVALSHA rate / 2)\n"
    )
    print(
        "| library | cycles/s | % of limit | client µs/cycle | server µs/cycle "
        "| hand-off p50 ms | p99 ms | from release() call: p50 ms | p99 ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    tasks = {k: r for k, r in res.items() if k.startswith("tasks-")}
    res = {k: r for k, r in res.items() if not k.startswith("tasks-")}
    for lib, r in res.items():
        hand = " | ".join(f"{r[k]:.3f}" if k in r else "—" for k in ("p50", "p99", "c50", "c99"))
        print(
            f"| {LIBS[lib][0]} | {r['rate']:,.0f} | {100 * r['rate'] / limit:.0f}% "
            f"| {r['client']:.1f} | {r['server']:.2f} | {hand} |"
        )
    for ours, peers in RATIOS.items():
        if ours not in res:
            continue
        for peer in (p for p in peers if p in res):
            a, b = res[ours], res[peer]
            parts = [
                f"{a['rate'] / b['rate']:.2f}x the rate",
                f"{a['client'] / b['client']:.2f}x the client CPU",
                f"{a['server'] / b['server']:.2f}x the server CPU",
            ]
            print(f"- {LIBS[ours][0]} vs {LIBS[peer][0]}: " + ", ".join(parts))
    for key, r in tasks.items():
        n = key.removeprefix("tasks-")
        print(
            f"- {n} tasks, own keys: ours (`async with`) {r['ours']:,.0f} cycles/s, redis-py "
            f"asyncio Lock {r['redis-py']:,.0f}: {r['ours'] / r['redis-py']:.2f}x"
        )
    handed = {lib: r for lib, r in res.items() if "p50" in r}
    if "python-redis-lock" in handed:
        base = handed["python-redis-lock"]
        for lib, r in handed.items():
            if lib.startswith("ours"):
                print(
                    f"- hand-off {LIBS[lib][0]} vs python-redis-lock: p50 "
                    f"{r['p50'] - base['p50']:+.3f} ms, p99 {r['p99'] - base['p99']:+.3f} ms; "
                    f"from the release() call: p50 {r['c50'] - base['c50']:+.3f} ms, "
                    f"p99 {r['c99'] - base['c99']:+.3f} ms"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rtts", default="0,0.5,1", help="round trip times to add, ms")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--handoff-rounds", type=int, default=200, help="0: no hand-off figures")
    ap.add_argument(
        "--tasks", default="64,256", help="concurrent task counts to measure ('' for none)"
    )
    ap.add_argument("--proxy", type=Path, help="the latency_proxy binary (default: cargo builds)")
    ap.add_argument("--libs", default=DEFAULT_LIBS + ",aioredlock")
    args = ap.parse_args()
    args.task_counts = [int(n) for n in args.tasks.split(",") if n]
    libs = [lib for lib in args.libs.split(",") if lib]
    unknown = set(libs) - set(LIBS)
    if unknown:
        ap.error(f"unknown libraries: {', '.join(sorted(unknown))}")
    for lib, module in (("python-redis-lock", "redis_lock"), ("aioredlock", "aioredlock")):
        if lib in libs:
            try:
                __import__(module)
            except ImportError:
                print(f"{lib}: not installed, skipped", file=sys.stderr)
                libs.remove(lib)
    proxy = args.proxy or build_proxy()
    print(
        f"distributed-leasing {dl.__version__} ({dl.__file__}), redis-py {redis.__version__}, "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, unpinned; proxy {proxy}; "
        f"{args.rounds} rounds of {args.seconds:g} s, {args.handoff_rounds} hand-offs"
    )
    for rtt in (float(x) for x in args.rtts.split(",") if x):
        report(rtt, run_rtt(rtt, proxy, libs, args))


if __name__ == "__main__":
    main()
