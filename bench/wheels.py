"""Builds side by side: the same measurements for two or more installed wheels, interleaved.

    python bench/wheels.py --python before=/tmp/venv-old/bin/python --python after=.venv/bin/python
        [--rounds 5] [--seconds 2] [--scenarios async,with,try,sync,tasks64,peers]

Each build is a Python executable with `distributed_leasing` installed (a virtual environment
per wheel). Every round runs every scenario once per build, in turn (build A, build B, A, B
...), each in a fresh process pinned to CPU 0 with `taskset`, so that a change of the machine's
load hits every build alike; medians of the rounds are reported with the ratio to the first
build. Two private `redis-server`s: one pinned to CPU 0 beside the client (`same`: the rate is
then a measure of CPU per operation, client and server together, as in bench/run.py) and one on
CPU 1 (`split`: the client's own CPU per cycle, from its process time, all threads counted).

Scenarios (one lease name per process; auto-renew on, the default):
- `async`: one task, `await client.acquire(name)` + `await lease.release()`, `same` and `split`
- `with`: one task, `async with client.lease(name)`, `same` and `split`
- `try`: one task, `await client.try_acquire(name)` + `await lease.release()`, `split`
- `sync`: one thread, `acquire_sync` + `release_sync`, `same` and `split`
- `tasks64`: 64 asyncio tasks on one client, own names, `split` (client CPU per cycle)
- `peers`: redis-py's asyncio and sync `Lock` (`blocking=False`, `timeout=30`) on `same`,
  run with the first build's Python (they do not depend on the wheel)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

# The server: bench/run.py's (pinned to a CPU when taskset exists).
from run import redis_server

# -- the child: one measurement ----------------------------------------------------------------


async def _measure_async(cycle: Callable[[], Awaitable[None]], seconds: float) -> dict[str, float]:
    for _ in range(200):  # warm-up: connections, the loop's own connection, caches
        await cycle()
    n = 0
    cpu0, start = time.process_time(), time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        await cycle()
        n += 1
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return {"rate": n / wall, "cpu_us": 1e6 * cpu / n}


def _measure_sync(cycle: Callable[[], None], seconds: float) -> dict[str, float]:
    for _ in range(200):
        cycle()
    n = 0
    cpu0, start = time.process_time(), time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        cycle()
        n += 1
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return {"rate": n / wall, "cpu_us": 1e6 * cpu / n}


async def _child_async(scenario: str, url: str, seconds: float) -> dict[str, float]:
    import distributed_leasing as dl

    client = await dl.LeaseClient.connect(url)
    name = f"w-{uuid.uuid4()}"
    if scenario == "async":

        async def cycle() -> None:
            lease = await client.acquire(name)
            await lease.release()

    elif scenario == "with":

        async def cycle() -> None:
            async with client.lease(name):
                pass

    elif scenario == "try":

        async def cycle() -> None:
            lease = await client.try_acquire(name)
            assert lease is not None
            await lease.release()

    else:  # tasks64
        count = [0] * 64

        async def worker(i: int, end: float) -> None:
            while time.perf_counter() < end:
                lease = await client.acquire(f"{name}-{i}")
                await lease.release()
                count[i] += 1

        await asyncio.gather(*(worker(i, time.perf_counter() + 0.3) for i in range(64)))
        count = [0] * 64
        cpu0, start = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(i, start + seconds) for i in range(64)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
        await client.close()
        return {"rate": sum(count) / wall, "cpu_us": 1e6 * cpu / sum(count)}
    out = await _measure_async(cycle, seconds)
    await client.close()
    return out


def _child_sync(url: str, seconds: float) -> dict[str, float]:
    import distributed_leasing as dl

    client = dl.LeaseClient.connect_sync(url)
    name = f"w-{uuid.uuid4()}"

    # Older builds (a865b03) spelled the blocking release `release_blocking`.
    blocking = "release_sync" if hasattr(dl.Lease, "release_sync") else "release_blocking"

    def cycle() -> None:
        lease = client.acquire_sync(name)
        getattr(lease, blocking)()

    out = _measure_sync(cycle, seconds)
    client.close_sync()
    return out


def _child_peer(scenario: str, port: int, seconds: float) -> dict[str, float]:
    name = f"w-{uuid.uuid4()}"
    if scenario == "redis-py-async":
        import redis.asyncio as aredis

        async def run() -> dict[str, float]:
            r = aredis.Redis(port=port)

            async def cycle() -> None:
                lock = r.lock(name, timeout=30)
                assert await lock.acquire(blocking=False)
                await lock.release()

            out = await _measure_async(cycle, seconds)
            await r.aclose()
            return out

        return asyncio.run(run())
    import redis

    r = redis.Redis(port=port)

    def cycle() -> None:
        lock = r.lock(name, timeout=30)
        assert lock.acquire(blocking=False)
        lock.release()

    return _measure_sync(cycle, seconds)


def child(scenario: str, port: int, seconds: float) -> None:
    url = f"redis://127.0.0.1:{port}"
    if scenario.startswith("redis-py"):
        out = _child_peer(scenario, port, seconds)
    elif scenario == "sync":
        out = _child_sync(url, seconds)
    else:
        out = asyncio.run(_child_async(scenario, url, seconds))
    print(json.dumps(out))


# -- the parent: rounds, interleaved -----------------------------------------------------------


def run_child(python: str, scenario: str, port: int, seconds: float) -> dict[str, float]:
    cmd = [python, __file__, "--child", scenario, "--port", str(port), "--seconds", str(seconds)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd="/", timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"{python} {scenario}: exit {done.returncode}\n{done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# (scenario, placement, what to report)
PLAN: dict[str, list[tuple[str, str, str]]] = {
    "async": [("async", "same", "rate"), ("async", "split", "cpu_us")],
    "with": [("with", "same", "rate"), ("with", "split", "cpu_us")],
    "try": [("try", "split", "cpu_us")],
    "sync": [("sync", "same", "rate"), ("sync", "split", "cpu_us")],
    "tasks64": [("tasks64", "split", "cpu_us")],
    "peers": [("redis-py-async", "same", "rate"), ("redis-py-sync", "same", "rate")],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--python", action="append", default=[], help="LABEL=PATH, one per build")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--scenarios", default="async,with,try,sync,tasks64,peers")
    ap.add_argument("--child")
    ap.add_argument("--port", type=int)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.port, args.seconds)
        return
    builds = [tuple(p.split("=", 1)) for p in args.python] or [("installed", sys.executable)]
    scenarios = [s for s in args.scenarios.split(",") if s]
    results: dict[tuple[str, str, str, str], list[float]] = {}
    with redis_server(0) as same, redis_server(1) as split:
        ports = {"same": same, "split": split}
        for rnd in range(args.rounds):
            for scenario in scenarios:
                for what in PLAN[scenario]:
                    sc, placement, metric = what
                    targets = builds[:1] if scenario == "peers" else builds
                    for label, python in targets:
                        out = run_child(python, sc, ports[placement], args.seconds)
                        key = (sc, placement, metric, "peer" if scenario == "peers" else label)
                        results.setdefault(key, []).append(out[metric])
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
    print(f"builds: {', '.join(f'{label}={path}' for label, path in builds)}")
    print(
        f"rounds: {args.rounds} x {args.seconds:g} s; client on CPU 0;"
        " server on CPU 0 (same) or 1 (split)"
    )
    print(
        "| scenario | placement | metric | "
        + " | ".join(b[0] for b in builds)
        + " | ratio to first |"
    )
    print("| --- | --- | --- | " + " | ".join("---" for _ in builds) + " | --- |")
    for (sc, placement, metric, label), values in results.items():
        if label != builds[0][0] and label != "peer":
            continue
        if label == "peer":
            print(f"| {sc} | {placement} | {metric} | {statistics.median(values):,.1f} | | |")
            continue
        meds = [statistics.median(results[(sc, placement, metric, b[0])]) for b in builds]
        ratios = " / ".join(f"{m / meds[0]:.3f}" for m in meds[1:])
        rounds = "; ".join(
            ", ".join(f"{v:,.1f}" for v in results[(sc, placement, metric, b[0])]) for b in builds
        )
        print(
            f"| {sc} | {placement} | {metric} | "
            + " | ".join(f"{m:,.1f}" for m in meds)
            + f" | {ratios} |  <!-- {rounds} -->"
        )


if __name__ == "__main__":
    main()
