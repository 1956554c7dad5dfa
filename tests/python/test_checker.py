"""The randomized multi-process safety checker, once per store (issues 12 and 22; engine:
checker.py).

Each test runs ``checker.run_store``: worker processes on every execution path (async, sync on
threads, waiting acquires, children forked after the parent used the library) contend for one
lease under seeded random faults (each store's own: see ``checker.FAULTS``), writing through a
fenced register; the test fails on any violation (a lease left held by nobody at the end is
one), and also if the run did not do what it claims (no protected writes, a fault kind or an
execution path that never happened). Every store runs: Redis, Redis Cluster, SQLite,
PostgreSQL and etcd (the last two on the checker's own servers, since it kills them).

The prefork mode (SQLite and Redis): a parent holding 10 leases renewed every 20 ms forks
children that take part in the fenced workload and leave through ``sys.exit``; none of the
parent's operations may stall (each within ``checker.PREFORK_OP_BOUND``) or fail, and its
leases must stay held.

``CHECKER_SECONDS`` (workload seconds per store; default 12, and 6 for PostgreSQL, etcd and the
prefork mode, whose first round of faults sets most of their length) and ``CHECKER_SEED``
(default 1) make a longer or a different run; given, ``CHECKER_SECONDS`` is every run's::

    CHECKER_SECONDS=600 python -m pytest tests/python/test_checker.py -s

The election mode (Redis Cluster and SQLite; every store with ``CHECKER_ALL=1``): ten
candidates campaign for one election through every campaign path, under the same faults and
checks, while every process observes it; no observer may see a value repeat, a term go down or
a term that was not granted.

The semaphore mode (PostgreSQL and etcd; every store with ``CHECKER_ALL=1``; a store that
answers "does not support semaphores" is skipped, saying so): eight processes share the permits
of one semaphore of limit 3 under the store's faults, each holder writing to the fenced
register of its permit's slot; besides every check above, never more than 3 hold at once by the
holders' own account, the count reaches 3, and no two hold one slot. It runs
``CHECKER_SECONDS`` (default 3) per store: the first round of faults (each kind once) sets most
of its length.

The last tests are the controls: without the lease the same checks must find lost updates, a
worker that leaves a lease behind must be found, and permits taken with one more than the
checker's limit must show as a count above it.
"""

from __future__ import annotations

import os
from pathlib import Path

import checker
import pytest
from faults_util import report

SECONDS = float(os.environ.get("CHECKER_SECONDS", "12"))
SHORT = float(os.environ.get("CHECKER_SECONDS", "6"))
SEED = int(os.environ.get("CHECKER_SEED", "1"))
SEMAPHORE_SECONDS = float(os.environ.get("CHECKER_SECONDS", "3"))
# The election and semaphore modes run on two stores each by default, together the four
# implementations (Redis Cluster and SQLite; PostgreSQL and etcd): 10-15 s per store and mode on
# 2 cores. CHECKER_ALL=1 runs both modes on all five stores.
ALL_STORES = os.environ.get("CHECKER_ALL") == "1"


def _mode_stores(*default: str) -> list[object]:
    every = ["redis", "redis-cluster", "sqlite", "postgres", "etcd"]
    return [
        pytest.param(s, marks=pytest.mark.cluster) if s == "redis-cluster" else s
        for s in every
        if ALL_STORES or s in default
    ]


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
        "held_at_end": ops["held_at_end"],
        "held_excused": ops["held_excused"],
        "prefork": ops.get("prefork"),
        "faults": summary.faults,
        "violations": summary.violations,
    }


@pytest.mark.slow
@pytest.mark.timeout(SECONDS * 2 + 240)
@pytest.mark.parametrize(
    "store",
    ["redis", pytest.param("redis-cluster", marks=pytest.mark.cluster), "sqlite", "postgres",
     "etcd"],
)  # fmt: skip
def test_randomized_checker_finds_no_violation(store: str, tmp_path: Path) -> None:
    seconds = SHORT if store in ("postgres", "etcd") else SECONDS
    summary = checker.run_store(store, seconds=seconds, seed=SEED, workdir=tmp_path)
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


@pytest.mark.slow
@pytest.mark.timeout(SHORT * 2 + 240)
@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_prefork_parent_keeps_its_leases_while_children_exit(store: str, tmp_path: Path) -> None:
    """Issue 22: a prefork parent's children leave through ``sys.exit``; the parent's
    operations never stall or fail, its leases (renewed every 20 ms) stay held, the children
    exit with 0 and never hang, and their fenced workload finds no violation."""
    summary = checker.run_store(store, seconds=SHORT, seed=SEED, workdir=tmp_path, prefork=True)
    print(summary.text())
    report(f"checker_prefork_{store}", **_figures(summary))

    assert summary.total_violations == 0, summary.text()

    ops = summary.operations
    pf = ops["prefork"]
    # The run did what it claims: children took the lease and wrote, and exited normally ...
    assert ops["writes_accepted"] >= 10, summary.text()
    assert ops["final_counter"] == ops["writes_accepted"]
    assert set(ops["wins_by_kind"]) == {"prefork"}, summary.text()
    assert pf["exit_codes"].get("0", 0) >= 3, summary.text()
    # ... while the parent kept operating and renewing ...
    assert pf["parent_ops"] >= 10, summary.text()
    assert pf["parent_renewals"] >= 10, summary.text()
    # ... and every fault kind of the mode was injected.
    assert set(summary.faults) == set(checker.PREFORK_FAULTS), summary.text()


@pytest.mark.slow
@pytest.mark.timeout(SHORT * 2 + 240)
@pytest.mark.parametrize("store", _mode_stores("redis-cluster", "sqlite"))
def test_election_mode_finds_no_violation(store: str, tmp_path: Path) -> None:
    """Issue 24: ten candidates in five processes campaign for one election (``async with`` /
    ``with`` campaign, ``run(fn)``, resign by hand), lead for 0-5 ms mostly, proclaim now and
    then, and write through the fenced register under the store's faults, while every process
    observes the election: no two terms overlap (the register), terms strictly increase with
    the grants, losses are reported once, nothing is left held, and no observer sees a value
    twice in a row, a term go down or a term that was not granted to that leader."""
    summary = checker.run_store(store, seconds=SHORT, seed=SEED, workdir=tmp_path, election=True)
    print(summary.text())
    report(
        f"checker_election_{store}", **_figures(summary), observed=summary.operations["observed"]
    )

    assert summary.total_violations == 0, summary.text()

    ops = summary.operations
    # The run did what it claims: terms were led on every path, and observed ...
    assert ops["writes_accepted"] >= 20, summary.text()
    assert ops["final_counter"] == ops["writes_accepted"]
    assert set(ops["wins_by_lane"]) == set(checker.LANES), summary.text()
    observed = ops["observed"]
    # every process observed (a respawned one too)
    assert observed["observers"] >= len(checker.host_plan(election=True)), summary.text()
    assert observed["leaders"] >= 10 and observed["no_leader"] >= 1, summary.text()
    assert observed["proclaims_seen"] >= 1, summary.text()
    # ... under every fault kind of this store.
    assert set(summary.faults) == set(checker.FAULTS[store]), summary.text()


@pytest.mark.slow
@pytest.mark.timeout(SEMAPHORE_SECONDS * 2 + 240)
@pytest.mark.parametrize("store", _mode_stores("postgres", "etcd"))
def test_semaphore_mode_finds_no_violation(store: str, tmp_path: Path) -> None:
    """Issue 25: eight processes take permits of one semaphore of limit 3 on every path
    (``async with`` / ``with client.semaphore``, ``try_acquire_permit`` / ``acquire_permit``
    and their ``_sync`` forms, forked children) under the store's faults (SIGKILL, SIGSTOP
    past the lease, dropped connections, server restarts, forced releases) and write through
    a register fenced per slot: no update lost, tokens never go back on a slot, losses
    reported once, nothing left held, and by the holders' own account never more than 3 at
    once (the peak reaching 3) and never two in one slot."""
    summary = checker.run_store(
        store, seconds=SEMAPHORE_SECONDS, seed=SEED, workdir=tmp_path, semaphore=True
    )
    if summary.unsupported is not None:
        pytest.skip(f"{store}: {summary.unsupported}")
    print(summary.text())
    sem = summary.operations["semaphore"]
    report(f"checker_semaphore_{store}", **_figures(summary), semaphore=sem)

    assert summary.total_violations == 0, summary.text()

    ops = summary.operations
    # The run did what it claims: permits were held on every path, up to the limit at once ...
    assert ops["writes_accepted"] >= 20, summary.text()
    assert ops["final_counter"] == ops["writes_accepted"]
    assert set(ops["wins_by_lane"]) == set(checker.LANES), summary.text()
    assert set(ops["wins_by_kind"]) == {"direct", "fork"}, summary.text()
    assert sem["peak"] == checker.SEMAPHORE_LIMIT, summary.text()
    assert sem["slots"] == list(range(checker.SEMAPHORE_LIMIT)), summary.text()
    # ... under every fault kind of this store.
    assert set(summary.faults) == set(checker.FAULTS[store]), summary.text()


def test_checker_sees_a_permit_over_the_limit(tmp_path: Path) -> None:
    """The control of (g): the workers ask for 4 permits where the checker allows 3. The
    holders' own account must then show 4 at once and a slot out of range, or the semaphore
    runs above could not fail on them."""
    summary = checker.run_store(
        "sqlite", seconds=3, seed=SEED, workdir=tmp_path, semaphore=True, sabotage="overlimit",
        fork=False, faults=(),
    )  # fmt: skip
    print(summary.text())
    assert summary.operations["semaphore"]["peak"] == checker.SEMAPHORE_LIMIT + 1, summary.text()
    assert summary.violations.get("over_limit", 0) > 0, summary.text()
    assert summary.violations.get("slot_out_of_range", 0) > 0, summary.text()
    assert set(summary.violations) == {"over_limit", "slot_out_of_range"}, summary.text()


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


def test_checker_sees_a_lease_held_by_nobody(tmp_path: Path) -> None:
    """The control of "nothing held by nobody": each worker process, once its exit is
    recorded, takes one more lease and leaves without the library's at-exit release
    (``os._exit``). Each such lease must be found, and nothing else."""
    summary = checker.run_store(
        "sqlite", seconds=2, seed=SEED, workdir=tmp_path, sabotage="leak", fork=False, faults=()
    )
    print(summary.text())
    exited = summary.operations["processes"]["exited_cleanly"]
    assert exited == len(checker.host_plan(fork=False)), summary.text()
    assert summary.violations == {"held_by_nobody": exited}, summary.text()


def test_checker_sees_what_an_observer_must_never_yield(tmp_path: Path) -> None:
    """The control of (f): an observer's log with a value repeated, a term that goes down and
    a leader seen with another term than it was granted must give one violation each (the
    election runs above could not fail on these otherwise)."""
    import json

    records = tmp_path / "records"
    records.mkdir()
    grant = {"pid": 1, "wid": "w", "lane": "async_ctx", "t_call": 0.0, "t_ret": 0.1, "wait": 0}
    seen = [
        (None, None, None),
        ("lease-a", 1, {"k": "1"}),
        ("lease-a", 1, {"k": "1"}),  # the same value twice in a row
        ("lease-b", 2, {}),
        ("lease-a", 1, {"k": "2"}),  # a term lower than one yielded
        ("lease-c", 7, {}),  # granted with token 3
    ]
    lines = [
        {"ev": "acq", "h": f"w:{i}", "lease_id": lid, "token": tok, **grant}
        for i, (lid, tok) in enumerate([("lease-a", 1), ("lease-b", 2), ("lease-c", 3)])
    ] + [
        {"ev": "observed", "pid": 2, "wid": "o", "t": float(i), "lease_id": lid, "term": term,
         "identity": None, "metadata": meta}
        for i, (lid, term, meta) in enumerate(seen)
    ]  # fmt: skip
    (records / "w-1-w.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    summary = checker.analyze(
        store="sqlite", seed=0, seconds=0, records_dir=records, reg_log=[], final_value=0,
        faults=[], stuck=[], crashed=[],
    )  # fmt: skip
    got = summary.violations
    assert got.get("observed_repeat") == 1, summary.text()
    assert got.get("observed_term_down") == 1, summary.text()
    assert got.get("observed_term_mismatch") == 1, summary.text()


def test_checker_sees_two_holders_of_one_slot(tmp_path: Path) -> None:
    """The control of (g) on records: two holders whose windows (acquire's return to last
    claim) overlap in one slot give ``slot_shared``; four overlapping at limit 3 give
    ``over_limit``; a slot at the limit gives ``slot_out_of_range``; a claim that the holder
    disowned (lost) does not extend its window."""
    import json

    records = tmp_path / "records"
    records.mkdir()
    grant = {"pid": 1, "wid": "w", "lane": "async_ctx", "wait": 0}
    # (handle, slot, token, acquire returned, claims (t, ok))
    held = [
        ("w:1", 0, 1, 0.0, [(1.0, True), (5.0, False)]),  # window 0-1
        ("w:2", 0, 2, 2.0, [(3.0, True)]),  # slot 0 again after w:1's window: fine
        ("w:3", 1, 3, 2.5, [(4.0, True)]),
        ("w:4", 2, 4, 2.6, [(4.0, True)]),
        ("w:5", 1, 5, 2.7, [(3.5, True)]),  # slot 1 while w:3 claims it; the 4th holder at 2.7
        ("w:6", 3, 6, 6.0, [(6.5, True)]),  # slot 3 of limit 3
    ]
    lines: list[dict[str, object]] = []
    for h, slot, token, t_ret, claims in held:
        lines.append({"ev": "acq", "h": h, "lease_id": f"id-{h}", "token": token, "slot": slot,
                      "t_call": t_ret - 0.1, "t_ret": t_ret, **grant})  # fmt: skip
        lines += [{"ev": "claim", "pid": 1, "wid": "w", "h": h, "t": t, "slot": slot, "ok": ok}
                  for t, ok in claims]  # fmt: skip
    (records / "w-1-w.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    summary = checker.analyze(
        store="sqlite", seed=0, seconds=0, records_dir=records, reg_log=[], final_value=0,
        faults=[], stuck=[], crashed=[], semaphore_limit=3,
    )  # fmt: skip
    got = summary.violations
    assert got.get("slot_shared") == 1, summary.text()
    assert got.get("over_limit") == 1, summary.text()
    assert got.get("slot_out_of_range") == 1, summary.text()
    sem = summary.operations["semaphore"]
    assert sem["peak"] == 4 and sem["claims_disowned"] == 1, summary.text()


def test_an_orphan_permit_is_excused_only_by_a_dropped_connection_at_its_grant(
    tmp_path: Path,
) -> None:
    """A permit left held at the end whose lease id no handle has (the Redis store retried its
    acquire after a dropped connection: the first request's permit is nobody's and expires by
    itself) is excused only if a fault that drops connections was under way when it was
    granted (inferred from its ttl); otherwise it is held by nobody."""
    import json

    records = tmp_path / "records"
    records.mkdir()
    metrics = {"acquisitions.total": 0, "leases_lost.total": 0}
    exit_rec = {"ev": "exit", "pid": 1, "wid": "w", "counts": {}, "handles": 0, "lost": 0,
                "ended": 0, "metrics": metrics}  # fmt: skip
    (records / "w-1-w.jsonl").write_text(json.dumps(exit_rec) + "\n")
    # listed at t=100 with 0.5 s left of a 2 s permit: granted at 98.5
    orphan = {"name": "checker", "lease_id": "nobodys", "token": 9, "ttl": 0.5, "t": 100.0,
              "permit": True, "metadata": {"pid": "1", "wid": "w", "lane": "sync_ctx"}}  # fmt: skip

    def held_by_nobody(faults: list[dict[str, object]]) -> int:
        summary = checker.analyze(
            store="redis", seed=0, seconds=0, records_dir=records, reg_log=[], final_value=0,
            faults=faults, stuck=[], crashed=[], held=[orphan], duration=2.0,
            semaphore_limit=3,
        )  # fmt: skip
        return summary.violations.get("held_by_nobody", 0)

    assert held_by_nobody([]) == 1
    assert held_by_nobody([{"kind": "client_kill", "t": 98.4, "t_end": 98.45}]) == 0
    assert held_by_nobody([{"kind": "restart", "t": 90.0, "t_end": 91.0}]) == 1
    assert held_by_nobody([{"kind": "sigstop", "t": 98.4, "t_end": 98.45}]) == 1
