"""The randomized multi-process safety checker, once per store (issue 12; engine: checker.py).

Each test runs ``checker.run_store``: worker processes on every execution path (async, sync on
threads, waiting acquires, children forked after the parent used the library) contend for one
lease under seeded random faults, writing through a fenced register; the test fails on any
violation, and also if the run did not do what it claims (no protected writes, a fault kind or
an execution path that never happened).

``CHECKER_SECONDS`` (workload seconds per store, default 12) and ``CHECKER_SEED`` (default 1)
make a longer or a different run::

    CHECKER_SECONDS=600 python -m pytest tests/python/test_checker.py -s

The last test is the control: without the lease the same checks must find lost updates.
"""

from __future__ import annotations

import os
from pathlib import Path

import checker
import pytest
from faults_util import report

SECONDS = float(os.environ.get("CHECKER_SECONDS", "12"))
SEED = int(os.environ.get("CHECKER_SEED", "1"))


def _figures(summary: checker.Summary) -> dict[str, object]:
    ops = summary.operations
    return {
        "store": summary.store,
        "seed": summary.seed,
        "seconds": summary.seconds,
        "elapsed_s": round(summary.elapsed, 1),
        "acquisitions": ops["acquisitions"],
        "writes_accepted": ops["writes_accepted"],
        "writes_refused": ops["writes_refused"],
        "reads_refused": ops["reads_refused"],
        "losses": ops["losses"],
        "faults": summary.faults,
        "violations": summary.violations,
    }


@pytest.mark.slow
@pytest.mark.timeout(SECONDS * 2 + 240)
@pytest.mark.parametrize(
    "store",
    ["redis", pytest.param("redis-cluster", marks=pytest.mark.cluster), "sqlite"],
)
def test_randomized_checker_finds_no_violation(store: str, tmp_path: Path) -> None:
    summary = checker.run_store(store, seconds=SECONDS, seed=SEED, workdir=tmp_path)
    print(summary.text())
    report(f"checker_{store}", **_figures(summary))

    assert summary.total_violations == 0, summary.text()

    ops = summary.operations
    # The run did what it claims: protected writes happened, on every execution path ...
    assert ops["writes_accepted"] >= 20, summary.text()
    assert ops["final_counter"] == ops["writes_accepted"]
    assert set(ops["wins_by_lane"]) == set(checker.LANES), summary.text()
    assert set(ops["wins_by_kind"]) == {"direct", "fork", "mpfork"}, summary.text()
    # ... and every fault kind of this store was injected.
    assert set(summary.faults) == set(checker.FAULTS[store]), summary.text()


def test_checker_sees_lost_updates_without_the_lease(tmp_path: Path) -> None:
    """The control: the same workload, the lease skipped (every write carries token 0, which
    the register accepts). Overlapping read-modify-writes must show as lost updates and as a
    token shared by many handles, or the checks above could not fail."""
    summary = checker.run_store(
        "sqlite", seconds=3, seed=SEED, workdir=tmp_path, sabotage="nolease", fork=False
    )
    print(summary.text())
    assert summary.operations["writes_accepted"] >= 20, summary.text()
    assert summary.violations.get("lost_update", 0) > 0, summary.text()
    assert summary.violations.get("final_counter", 0) == 1, summary.text()
    assert summary.violations.get("token_shared", 0) > 0, summary.text()
