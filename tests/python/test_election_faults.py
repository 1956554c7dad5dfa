"""Leader election under faults (issue 24), on every store: a leader SIGKILLed or SIGSTOPped past
its lease, the hand-over of fenced writes between two terms, a cancelled campaign.

Leaders, followers and observers are separate processes (``faults_util.Child``) wherever the
property is about processes; writes go through the checker's ``FencedRegister`` (a SQLite file
of its own that refuses a token lower than one it has seen, and logs every operation in order).
Bounds are generous: what is asserted is an order or a bound several times what is expected.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import distributed_leasing as dl
import pytest
from checker import FencedRegister, Who
from conftest import StoreUnderTest
from etcd_server import EtcdCluster
from faults_util import Child, report
from test_waiting import subscriptions

TTL = 2.0  # the lease (leadership) duration of the leaders that are killed or stopped
RENEW = TTL / 2  # their renewal interval, the default (half the duration, under 3 s)
SLACK = 5.0  # on top of an expected bound, for a loaded machine
LIMIT = 60.0  # for anything that should take well under a second


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """Every subprocess a test starts; all are killed (SIGCONT first) and reaped at teardown."""
    started: list[Child] = []
    yield started
    for c in started:
        c.stop()


# -- the processes ---------------------------------------------------------------------------

LEADER = """
import asyncio, json, sys
import distributed_leasing as dl

async def main(url, name, ttl):
    election = dl.Election(name, url=url, identity="doomed", duration=float(ttl))
    async with election.campaign() as term:
        print(json.dumps({"term": term.token}), flush=True)
        await asyncio.sleep(600)

asyncio.run(main(*sys.argv[1:4]))
"""

OBSERVER = """
import asyncio, json, sys, time
import distributed_leasing as dl

async def main(url, name):
    async for leader in dl.Election(name, url=url, identity="observer").observe():
        term = None if leader is None else leader.term
        print(json.dumps({"t": time.monotonic(), "term": term}), flush=True)

asyncio.run(main(*sys.argv[1:3]))
"""

FOLLOWER = """
import json, sys
import distributed_leasing as dl

election = dl.Election(sys.argv[2], url=sys.argv[1], identity="follower")
print(json.dumps({"campaigning": True}), flush=True)
with election.campaign(wait=120) as term:
    print(json.dumps({"term": term.token}), flush=True)
    sys.stdin.readline()  # leads until told
"""


def next_change(observer: Child, after: int | None, timeout: float) -> dict[str, Any]:
    """The observer's next value other than the term ``after`` (which it may not repeat)."""
    value = observer.read_json(timeout=timeout)
    assert value["term"] is None or after is None or value["term"] != after, (
        f"the observer yielded term {after} twice in a row"
    )
    return value


def observe_until(observer: Child, term: int, seen: list[int | None]) -> None:
    """Reads the observer until it yields ``term``; every value read goes to ``seen``."""
    while True:
        value = observer.read_json(timeout=LIMIT)
        seen.append(value["term"])
        if value["term"] == term:
            return


def assert_terms_never_go_down(seen: list[int | None]) -> None:
    terms = [t for t in seen if t is not None]
    assert terms == sorted(terms), f"the observer yielded a lower term after a higher: {seen}"


# -- a leader SIGKILLed ----------------------------------------------------------------------


@pytest.mark.parametrize("follower", ["none", "parked"])
def test_observers_see_a_sigkilled_leader_go_within_its_ttl(
    store: StoreUnderTest, follower: str, unique_name: str, children: list[Child]
) -> None:
    """The leader's process is SIGKILLed: its renewals stop, and observers (another process) see
    no leader, or the next term, within the TTL + a renewal interval; then the next leader,
    with a higher term. ``none``: nobody else campaigns, so the observer has only the expiry
    to go by (no keyspace notifications: its timer at the leader's expiry); ``parked``: a
    follower waits in its campaign and takes over at the expiry."""
    observer = Child(OBSERVER, store.url, unique_name)
    children.append(observer)
    assert observer.read_json(timeout=LIMIT)["term"] is None
    leader = Child(LEADER, store.url, unique_name, str(TTL))
    children.append(leader)
    first = leader.read_json(timeout=LIMIT)["term"]
    seen: list[int | None] = [None]
    observe_until(observer, first, seen)
    if follower == "parked":
        waiting = Child(FOLLOWER, store.url, unique_name)
        children.append(waiting)
        assert waiting.read_json(timeout=LIMIT) == {"campaigning": True}
        time.sleep(0.5)  # parked in its campaign: its first attempt refused

    leader.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    change = next_change(observer, first, timeout=LIMIT)
    seen.append(change["term"])
    took = change["t"] - killed_at
    assert change["term"] is None or change["term"] > first, change
    assert took <= TTL + RENEW + SLACK, f"the observer saw the change {took:.2f}s after the kill"
    assert leader.wait() == -signal.SIGKILL

    if follower == "parked":
        second = waiting.read_json(timeout=LIMIT)["term"]
        if second not in seen:  # seen before it resigns: a value held briefly may be skipped
            observe_until(observer, second, seen)
        waiting.send("resign")
        assert waiting.wait() == 0, waiting.stderr
    else:
        election = dl.Election(unique_name, url=store.url, identity="next")
        with election, election.campaign(wait=LIMIT) as term:
            second = term.token
            observe_until(observer, second, seen)
    assert second > first
    assert_terms_never_go_down(seen)
    report("election_sigkill_seen", store=store.kind, follower=follower, seconds=round(took, 2))


# -- a leader SIGSTOPped past its lease ------------------------------------------------------

STOPPED = """
import asyncio, json, os, sys
import distributed_leasing as dl
from checker import FencedRegister, Who

async def main(url, name, register, ttl):
    reg = FencedRegister(register)
    election = dl.Election(name, url=url, identity="stopped", duration=float(ttl))
    loop = asyncio.get_running_loop()
    out = {"writes": 0, "saw_lost": False}
    term = None
    try:
        async with election.campaign() as term:
            who = Who(os.getpid(), "stopped", "old", term.lease_id, term.token)
            print(json.dumps({"term": term.token}), flush=True)
            # One write per line on stdin, as long as it leads by its own account.
            while await loop.run_in_executor(None, sys.stdin.readline):
                if term.is_lost:
                    out["saw_lost"] = True
                    await asyncio.sleep(60)  # the loss cancels the body
                reg.write(who, out["writes"], out["writes"] + 1)
                out["writes"] += 1
                print(json.dumps({"wrote": out["writes"]}), flush=True)
        out["outcome"] = "completed"
    except dl.LeaseLost:
        out["outcome"] = "LeaseLost"
    out["is_lost"] = term.is_lost
    for action in ("proclaim", "resign"):
        try:
            if action == "proclaim":
                await term.proclaim({"endpoint": "stale"})
            else:
                await term.resign()
            out[action] = "done"
        except dl.LeaseLost:
            out[action] = "LeaseLost"
    print(json.dumps(out), flush=True)
    await election.close()

asyncio.run(main(*sys.argv[1:5]))
"""


def test_a_leader_stopped_past_its_ttl_learns_it_lost_before_any_write(
    store: StoreUnderTest, unique_name: str, tmp_path: Path, children: list[Child]
) -> None:
    """A leader SIGSTOPped past its lease, then continued with a write to do at once: by its own
    clock it knows it lost (``term.is_lost``, or its body already cancelled) before that write,
    so the fenced register never sees it; its proclaim and resign raise ``LeaseLost`` and
    leave the new leader's record as it was; the new term is higher."""
    path = tmp_path / "register.db"
    reg = FencedRegister.create(path)
    stopped = Child(STOPPED, store.url, unique_name, str(path), str(TTL))
    children.append(stopped)
    old_term = stopped.read_json(timeout=LIMIT)["term"]
    stopped.send("write")
    assert stopped.read_json(timeout=LIMIT) == {"wrote": 1}

    stopped.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    with (
        dl.Election(
            unique_name, url=store.url, identity="new", metadata={"endpoint": "new:1"}
        ) as election,
        election.campaign(wait=LIMIT) as term,
    ):
        took = time.monotonic() - stopped_at
        assert term.token > old_term
        assert reg.write(Who(os.getpid(), "new", "new", term.lease_id, term.token), 1, 2)
        before = election.leader_sync()
        assert before is not None and before.term == term.token

        stopped.send("write")  # waiting in its pipe when it wakes up
        stopped.signal(signal.SIGCONT)
        out = stopped.read_json(timeout=LIMIT)
        assert "wrote" not in out, f"it wrote after it was stopped past its lease: {out}"
        assert stopped.wait() == 0, stopped.stderr
        assert out["writes"] == 1, out
        assert out["outcome"] == "LeaseLost" and out["is_lost"], out
        assert (out["proclaim"], out["resign"]) == ("LeaseLost", "LeaseLost"), out
        after = election.leader_sync()
        assert after is not None and same_record(after, before), (after, before)
        assert not term.is_lost
    # The register's log: the old term's one write, then the new term's; nothing refused.
    log = reg.log()
    assert [(op["token"], op["accepted"]) for op in log] == [(old_term, 1), (term.token, 1)], log
    report("election_stopped_leader_takeover", store=store.kind, seconds=round(took, 2))


def same_record(a: dl.LeaderInfo, b: dl.LeaderInfo) -> bool:
    """The same leader record (``expires_in`` moves with the clock)."""
    return (a.identity, a.term, a.lease_id, a.acquired_at, a.metadata) == (
        b.identity,
        b.term,
        b.lease_id,
        b.acquired_at,
        b.metadata,
    )


# -- the hand-over of fenced writes ----------------------------------------------------------

FIRST = """
import asyncio, json, os, sys
import distributed_leasing as dl
from checker import FencedRegister, Who

async def main(url, name, register):
    reg = FencedRegister(register)
    election = dl.Election(name, url=url, identity="first")
    async with election.campaign() as term:
        who = Who(os.getpid(), "first", "first", term.lease_id, term.token)
        print(json.dumps({"term": term.token}), flush=True)
        sys.stdin.readline()  # the follower is parked
        reg.write(who, 0, 1)
        await asyncio.sleep(0.5)  # the body's tail: it still leads
        reg.write(who, 1, 2)  # its last write
    print(json.dumps({"done": True}), flush=True)
    await election.close()

asyncio.run(main(*sys.argv[1:4]))
"""

SECOND = """
import json, os, sys
import distributed_leasing as dl
from checker import FencedRegister, Who

reg = FencedRegister(sys.argv[3])
with dl.Election(sys.argv[2], url=sys.argv[1], identity="second") as election:
    print(json.dumps({"campaigning": True}), flush=True)
    with election.campaign(wait=120) as term:
        who = Who(os.getpid(), "second", "second", term.lease_id, term.token)
        reg.write(who, 2, 3)  # its first write, as soon as it leads
        print(json.dumps({"term": term.token}), flush=True)
"""


def test_the_last_fenced_write_of_a_term_lands_before_the_successors_first(
    store: StoreUnderTest, unique_name: str, tmp_path: Path, children: list[Child]
) -> None:
    """Leadership ends only after the body returned: a leader whose body writes, works on for
    a moment and writes again, then leaves its campaign; a follower parked in its campaign
    writes as soon as it leads. Per the register's log, every write of the first term is
    accepted and comes before the second term's first, which carries a higher token."""
    path = tmp_path / "register.db"
    reg = FencedRegister.create(path)
    first = Child(FIRST, store.url, unique_name, str(path))
    children.append(first)
    first_term = first.read_json(timeout=LIMIT)["term"]
    second = Child(SECOND, store.url, unique_name, str(path))
    children.append(second)
    assert second.read_json(timeout=LIMIT) == {"campaigning": True}
    time.sleep(0.5)  # parked in its campaign
    first.send("go")
    second_term = second.read_json(timeout=LIMIT)["term"]
    assert first.read_json(timeout=LIMIT) == {"done": True}
    assert first.wait() == 0, first.stderr
    assert second.wait() == 0, second.stderr

    assert second_term > first_term
    log = reg.log()
    assert [(op["wid"], op["token"], op["accepted"]) for op in log] == [
        ("first", first_term, 1),
        ("first", first_term, 1),
        ("second", second_term, 1),
    ], log


# -- a cancelled campaign --------------------------------------------------------------------


def etcd_watchers(etcd: EtcdCluster) -> int:
    """The watchers every member of the cluster keeps (``etcd_debugging_mvcc_watcher_total``)."""
    total = 0
    for port in etcd.client_ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("etcd_debugging_mvcc_watcher_total "):
                    total += int(float(line.split()[1]))
    return total


def listeners(store: StoreUnderTest, request: pytest.FixtureRequest, name: str) -> int:
    """What a parked campaign of ``name`` keeps on the server: Redis, the subscriptions to its
    release channel (``PUBSUB NUMSUB``, sharded on the cluster); etcd, the members' watchers;
    0 elsewhere (SQLite polls; PostgreSQL's one LISTEN per client covers every name)."""
    if store.kind == "etcd":
        return etcd_watchers(request.getfixturevalue("etcd_cluster"))
    return subscriptions(store, request, name)


async def until(predicate: Any, what: str, limit: float = LIMIT) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {limit}s: {what}")
        await asyncio.sleep(0.05)


async def test_a_cancelled_campaign_leaves_no_record_subscription_or_watch(
    store: StoreUnderTest, unique_name: str, request: pytest.FixtureRequest
) -> None:
    """Campaigns parked behind a leader, then cancelled, three times: each leaves no
    subscription on Redis (the count goes back to what it was), and on etcd no watch but the
    client's one watch stream for every name, gone with its client; after the leader resigns,
    no record: nobody leads, and no cancelled candidate took it even for a moment (this
    process's acquisitions counter did not move)."""
    client = await dl.LeaseClient.connect(store.url)
    leader = client.election(unique_name, identity="leader")
    before = listeners(store, request, unique_name)
    candidate = dl.Election(unique_name, url=store.url, identity="candidate")

    def count() -> int:
        return listeners(store, request, unique_name)

    async def campaign() -> None:
        async with candidate.campaign():
            raise AssertionError("the candidate led while the leader held")

    async with leader.campaign():
        acquisitions = dl.metrics()["leasing.acquisitions.total"]  # this process's
        for _ in range(3):
            parked = asyncio.create_task(campaign())
            if store.kind in ("redis", "redis-cluster", "etcd"):
                # The count sees a parked campaign's subscription or watch...
                await until(lambda: count() > before, "the parked campaign's listener")
            else:
                await asyncio.sleep(0.5)
            assert not parked.done()
            parked.cancel()
            with pytest.raises(asyncio.CancelledError):
                await parked
            if store.kind == "etcd":
                # ...one watch stream per client, shared by every name, kept while it lives...
                assert count() == before + 1
            else:
                # ...and the subscription is gone once the campaign is cancelled.
                await until(lambda: count() == before, "no subscription left")
    await asyncio.sleep(1.0)  # a campaign still running would have taken it by now
    # Not even for a moment (a lease won and then dropped would be released at once):
    assert dl.metrics()["leasing.acquisitions.total"] == acquisitions, "a cancelled one led"
    assert await client.election(unique_name).leader() is None
    assert await client.inspect(unique_name) is None
    names = [info.name for info in await client.list()]
    assert unique_name not in names, names
    await candidate.close()
    await until(lambda: count() == before, "no subscription or watch once its client closed")
    await client.close()
