"""The asyncio bridge under load: every completion reaches its future (no lost wake-up), and
the stock pyo3-async-runtimes bridge still works as the measured baseline.

The no-op awaits (``_native._bench_noop*``) exist only in a build with the ``bench`` feature
(``maturin develop --release --features bench``), which wheels do not ship. Without it the load
tests await a real operation (an SQLite ``inspect``) through the same bridge, fewer times, and
the baseline test is skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import distributed_leasing as dl
import pytest
from distributed_leasing import _native

BENCH = hasattr(_native, "_bench_noop")
NO_BENCH = "built without the `bench` feature (maturin develop --release --features bench)"
# Rounds of bursts and single awaits: a real operation costs more than a no-op.
ROUNDS, SINGLES = (200, 2000) if BENCH else (25, 500)


async def awaiter(db: Path) -> tuple[Callable[[], Awaitable[object]], dl.LeaseClient | None]:
    """Something cheap to await through the bridge, and the client to close after."""
    if BENCH:
        return _native._bench_noop, None
    client = await dl.LeaseClient.connect(f"sqlite://{db}")
    return (lambda: client.inspect("bridge-noop")), client


async def test_bursts_of_completions_all_arrive(tmp_path: Path) -> None:
    # Completions race with the loop draining its inbox: a lost wake-up would leave a round
    # hanging until wait_for gives up.
    once, client = await awaiter(tmp_path / "leases.db")
    try:
        for _ in range(ROUNDS):
            await asyncio.wait_for(asyncio.gather(*(once() for _ in range(200))), 30)
        for _ in range(SINGLES):
            await asyncio.wait_for(once(), 30)
    finally:
        if client is not None:
            await client.close()


@pytest.mark.skipif(not BENCH, reason=NO_BENCH)
async def test_stock_bridge_baseline_works() -> None:
    await asyncio.wait_for(_native._bench_noop_stock(), 30)


def test_each_event_loop_gets_its_own_inbox(tmp_path: Path) -> None:
    async def run_once() -> None:
        once, client = await awaiter(tmp_path / "leases.db")
        try:
            await asyncio.wait_for(once(), 30)
        finally:
            if client is not None:
                await client.close()

    for _ in range(20):
        asyncio.run(run_once())
