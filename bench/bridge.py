"""How much one await of a Rust future costs through each bridge, and one lease cycle.

    taskset -c 0 python bench/bridge.py [redis://127.0.0.1:6379]

Prints medians over rounds of: an await of a finished Rust future through this project's
bridge and through pyo3-async-runtimes' stock ``future_into_py``; and, given a Redis URL, one
acquire+release cycle (two round trips) through the library. Build with ``--release`` and the
``bench`` feature first (wheels do not ship the no-op functions):

    maturin develop --release --features bench
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid

import distributed_leasing as dl
from distributed_leasing import _native

ROUNDS = 5


async def per_await(make: object, n: int) -> float:
    f = make  # type: ignore[assignment]
    t = time.perf_counter()
    for _ in range(n):
        await f()  # type: ignore[operator]
    return (time.perf_counter() - t) / n * 1e6


async def lease_cycle(url: str, n: int) -> float:
    client = await dl.LeaseClient.connect(url)
    name = f"bench-{uuid.uuid4()}"
    t = time.perf_counter()
    for _ in range(n):
        lease = await client.acquire(name)
        await lease.release()
    return (time.perf_counter() - t) / n * 1e6


async def main() -> None:
    if not hasattr(_native, "_bench_noop"):
        sys.exit(
            "bench/bridge.py: this build of distributed_leasing has no _bench_noop; build it "
            "with the bench feature: maturin develop --release --features bench"
        )
    url = sys.argv[1] if len(sys.argv) > 1 else None
    rows: dict[str, list[float]] = {
        "direct bridge, no-op await": [],
        "stock bridge, no-op await": [],
    }
    if url:
        rows["acquire+release cycle"] = []
    for _ in range(ROUNDS):
        rows["direct bridge, no-op await"].append(await per_await(_native._bench_noop, 5000))
        rows["stock bridge, no-op await"].append(await per_await(_native._bench_noop_stock, 5000))
        if url:
            rows["acquire+release cycle"].append(await lease_cycle(url, 2000))
    for label, values in rows.items():
        print(
            f"{label:32s} median {statistics.median(values):8.1f} us  (rounds: "
            + ", ".join(f"{v:.1f}" for v in values)
            + ")"
        )
    d = statistics.median(rows["direct bridge, no-op await"])
    s = statistics.median(rows["stock bridge, no-op await"])
    print(f"stock / direct: {s / d:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
