"""The asyncio bridge under load: every completion reaches its future (no lost wake-up), and
the stock pyo3-async-runtimes bridge still works as the measured baseline."""

from __future__ import annotations

import asyncio

from distributed_leasing import _native


async def test_bursts_of_completions_all_arrive() -> None:
    # Completions race with the loop draining its inbox: a lost wake-up would leave a round
    # hanging until wait_for gives up.
    for _ in range(200):
        await asyncio.wait_for(asyncio.gather(*(_native._bench_noop() for _ in range(200))), 30)
    for _ in range(2000):
        await asyncio.wait_for(_native._bench_noop(), 30)


async def test_stock_bridge_baseline_works() -> None:
    await asyncio.wait_for(_native._bench_noop_stock(), 30)


def test_each_event_loop_gets_its_own_inbox() -> None:
    async def once() -> None:
        await asyncio.wait_for(_native._bench_noop(), 30)

    for _ in range(20):
        asyncio.run(once())
