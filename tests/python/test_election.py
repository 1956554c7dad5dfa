"""Leader election (issue 24), its Python API and the ``leasing leader`` command, on every store.

An election is the lease of the same name: these tests hold the API to that (the term is the
fencing token, resign is release, loss cancels the body) and to the observer's rules (current
value first, then each change, no repeats, never a lower term, ended by closing the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import distributed_leasing as dl
import pytest
from conftest import StoreUnderTest
from demo_helpers import LEASING, clean_env, leasing
from redis_servers import RedisServer

LIMIT = 30.0  # generous bound for anything that should take well under a second


async def until(predicate: object, what: str, limit: float = LIMIT) -> None:
    """Polls ``predicate()`` (sync or async) until true, failing after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        result = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {limit}s: {what}")


# -- the API -----------------------------------------------------------------------------------


async def test_no_leader_before_anyone_campaigns(store: StoreUnderTest, unique_name: str) -> None:
    async with dl.Election(unique_name, url=store.url, identity="a") as election:
        assert await election.leader() is None
        assert election.leader_sync() is None
        observed = election.observe()
        assert await anext(observed) is None


async def test_campaign_leads_with_its_identity_and_term(
    store: StoreUnderTest, unique_name: str
) -> None:
    client = await dl.LeaseClient.connect(store.url)
    election = client.election(unique_name, identity="node-1", metadata={"endpoint": "h:1"})
    assert (election.name, election.identity) == (unique_name, "node-1")
    async with election.campaign() as term:
        assert isinstance(term.token, int)
        assert (term.identity, term.name, term.is_lost) == ("node-1", unique_name, False)
        assert term.token == term.lease.fencing_token
        assert term.lease_id == term.lease.lease_id
        assert 20 < term.expires_in <= 30
        leader = await election.leader()
        assert leader is not None
        assert (leader.identity, leader.term, leader.lease_id) == (
            "node-1",
            term.token,
            term.lease_id,
        )
        assert leader.metadata == {"endpoint": "h:1"}  # the identity is not repeated there
        assert leader.expires_in is not None and 20 < leader.expires_in <= 30
        assert leader.acquired_at is not None and leader.acquired_at.tzinfo is not None
        # The election is the lease: inspect shows the leader's identity.
        info = await client.inspect(unique_name)
        assert info is not None and info.metadata["instanceId"] == "node-1"
        doc = leader.to_json()
        assert set(doc) == {"identity", "term", "acquired_at", "expires_in", "metadata"}
        assert doc["term"] == term.token and doc["acquired_at"].endswith("Z")
        json.dumps(doc)
        first = term.token
    assert await election.leader() is None, "leadership ends (released) at the exit"
    async with election.campaign(metadata={"endpoint": "h:2"}) as term:
        assert term.token > first
        leader = await election.leader()
        assert leader is not None and leader.metadata == {"endpoint": "h:2"}
    await client.close()


def test_campaign_sync(store: StoreUnderTest, unique_name: str) -> None:
    with dl.Election(unique_name, url=store.url, identity="sync-1") as election:
        with election.campaign() as term:
            leader = election.leader_sync()
            assert leader is not None
            assert (leader.identity, leader.term) == ("sync-1", term.token)
            term.resign_sync()
            assert election.leader_sync() is None
            with pytest.raises(dl.LeaseLost, match="already resigned"):
                term.resign_sync()
        # The exit after a resign is quiet.
        assert election.leader_sync() is None


def test_default_identity_is_host_and_pid() -> None:
    import os

    identity = dl.Election("any").identity
    assert identity.endswith(f":{os.getpid()}") and len(identity) > len(f":{os.getpid()}")
    assert identity == dl._native.default_identity()


def test_bad_arguments_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="identity"):
        dl.Election("x", identity="")
    with pytest.raises(ValueError, match="identity"):
        dl.Election("x", identity="a\nb")
    with pytest.raises(ValueError, match="instanceId"):
        dl.Election("x", identity="a", metadata={"instanceId": "b"})
    with pytest.raises(ValueError, match="url= or client="):
        dl.Election("x", url="sqlite:///tmp/x.db", client=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="wait"):
        dl.Election("x").campaign(wait="5")  # type: ignore[arg-type]


async def test_followers_observe_three_successive_leaders(
    store: StoreUnderTest, unique_name: str
) -> None:
    watcher = dl.Election(unique_name, url=store.url, identity="watcher")
    seen: list[dl.LeaderInfo | None] = []

    async def observe() -> None:
        async for leader in watcher.observe():
            seen.append(leader)

    task = asyncio.create_task(observe())
    await until(lambda: len(seen) == 1, "the current value (no leader)")
    assert seen == [None]
    candidates = [dl.Election(unique_name, url=store.url, identity=f"c{i}") for i in range(3)]
    terms = []
    for candidate in candidates:
        async with candidate.campaign() as term:
            terms.append(term.token)
            await until(
                lambda t=term.token: any(s is not None and s.term == t for s in seen),
                f"the observer sees term {term.token}",
            )
        await until(lambda: seen[-1] is None, "the observer sees the resignation")
    for c in candidates:
        await c.close()
    # Closing the observer's client ends its iteration.
    await watcher.close()
    await asyncio.wait_for(task, LIMIT)
    leaders = [s for s in seen if s is not None]
    assert [s.identity for s in leaders] == ["c0", "c1", "c2"], seen
    assert [s.term for s in leaders] == terms and terms == sorted(set(terms)), seen
    for a, b in itertools.pairwise(seen):
        assert a != b, f"a value repeated: {seen}"


async def test_observers_see_a_new_leader_at_once_as_campaigns_announce_themselves(
    store: StoreUnderTest, unique_name: str
) -> None:
    # Where the feed carries only announced acquisitions (Redis, PostgreSQL), an observer with
    # no leader re-reads every 5 s: a campaign that did not announce itself would be seen that
    # late. Elsewhere the feed (etcd) or a poll of at most 1 s (SQLite) sees it.
    async with (
        dl.Election(unique_name, url=store.url, identity="watcher") as watcher,
        dl.Election(unique_name, url=store.url, identity="quick") as candidate,
    ):
        observed = watcher.observe()
        assert await anext(observed) is None
        async with candidate.campaign() as term:
            started = time.monotonic()
            leader = await asyncio.wait_for(anext(observed), LIMIT)
            took = time.monotonic() - started
            assert leader is not None and leader.term == term.token
            assert took < 2.5, f"seen after {took:.1f}s: the campaign was not announced"


def test_observe_sync_sees_changes_and_ends_when_closed(
    store: StoreUnderTest, unique_name: str
) -> None:
    client = dl.LeaseClient.connect_sync(store.url)
    watcher = client.election(unique_name)
    seen: list[dl.LeaderInfo | None] = []
    got = threading.Event()

    def observe() -> None:
        for leader in watcher.observe_sync():
            seen.append(leader)
            got.set()

    thread = threading.Thread(target=observe, daemon=True)
    thread.start()
    assert got.wait(LIMIT) and seen == [None]
    candidate = dl.Election(unique_name, url=store.url, identity="s1")
    with candidate, candidate.campaign() as term:
        deadline = time.monotonic() + LIMIT
        while not any(s is not None and s.term == term.token for s in seen):
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
    client.close_sync()
    thread.join(LIMIT)
    assert not thread.is_alive(), "closing the client did not end observe_sync()"


async def test_a_second_campaign_while_leading_does_not_deadlock(
    store: StoreUnderTest, unique_name: str
) -> None:
    async with dl.Election(unique_name, url=store.url, identity="me") as election:
        async with election.campaign() as first:
            # In the same task: with a wait, it runs out naming this very candidate.
            with pytest.raises(dl.LeaseUnavailable, match="me"):
                async with election.campaign(wait=1.0):
                    raise AssertionError("elected twice")
            assert not first.is_lost
            # From another task, without a wait: it leads once the first term ends.
            second_task = asyncio.create_task(_lead_once(election))
            await asyncio.sleep(1.0)
            assert not second_task.done()
        second = await asyncio.wait_for(second_task, LIMIT)
        assert second > first.token


async def _lead_once(election: dl.Election) -> int:
    async with election.campaign() as term:
        return term.token


async def test_names_that_are_prefixes_of_others_are_separate_elections(
    store: StoreUnderTest, unique_name: str
) -> None:
    names = [unique_name, f"{unique_name}/b", f"{unique_name}:b", f"{{{unique_name}}}"]
    client = await dl.LeaseClient.connect(store.url)
    async with (
        client.election(names[0], identity="n0").campaign(wait=0) as t0,
        client.election(names[1], identity="n1").campaign(wait=0) as t1,
        client.election(names[2], identity="n2").campaign(wait=0) as t2,
        client.election(names[3], identity="n3").campaign(wait=0) as t3,
    ):
        for i, (name, term) in enumerate(zip(names, (t0, t1, t2, t3), strict=True)):
            leader = await client.election(name).leader()
            assert leader is not None
            assert (leader.identity, leader.lease_id) == (f"n{i}", term.lease_id)
    for name in names:
        assert await client.election(name).leader() is None
    await client.close()


async def test_a_wait_that_runs_out_names_the_leader(
    store: StoreUnderTest, unique_name: str
) -> None:
    leader = dl.Election(unique_name, url=store.url, identity="leader-a")
    follower = dl.Election(unique_name, url=store.url, identity="follower-b")
    async with leader.campaign() as term:
        started = time.monotonic()
        with pytest.raises(dl.LeaseUnavailable) as info:
            async with follower.campaign(wait=1.0):
                raise AssertionError("two leaders")
        assert time.monotonic() - started >= 0.9
        assert "leader-a" in str(info.value)
        assert info.value.holder is not None
        assert info.value.holder.fencing_token == term.token
        assert not term.is_lost
    await leader.close()
    await follower.close()


async def test_a_cancelled_campaign_leaves_nothing_behind(
    store: StoreUnderTest, unique_name: str
) -> None:
    leader = dl.Election(unique_name, url=store.url, identity="leader")
    follower = dl.Election(unique_name, url=store.url, identity="follower")
    async with leader.campaign():
        waiting = asyncio.create_task(_lead_once(follower))
        await asyncio.sleep(1.0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    # The cancelled candidate does not take the lease after the leader resigned.
    await asyncio.sleep(2.0)
    assert await leader.leader() is None
    await leader.close()
    await follower.close()


def test_resign_by_a_candidate_no_longer_leading_raises_lease_lost(
    store: StoreUnderTest, unique_name: str
) -> None:
    # Synchronous: an async body would be cancelled by the loss the refused resign finds.
    admin = dl.LeaseClient.connect_sync(store.url)
    old = dl.Election(unique_name, url=store.url, identity="old")
    new = dl.Election(unique_name, url=store.url, identity="new")
    # The campaign's exit reports the loss as well (the body ended without being told).
    with pytest.raises(dl.LeaseLost, match="lost while its body ran"), old.campaign() as old_term:
        assert admin.force_release_sync(unique_name)
        with new.campaign(wait=LIMIT) as new_term:
            with pytest.raises(dl.LeaseLost, match="not the leader") as refused:
                old_term.resign_sync()
            assert refused.value.name == unique_name
            leader = new.leader_sync()
            assert leader is not None
            assert (leader.identity, leader.lease_id) == ("new", new_term.lease_id)
            assert new_term.token > old_term.token
            assert old_term.is_lost and not new_term.is_lost
    admin.close_sync()
    old.close_sync()
    new.close_sync()


async def test_proclaim_replaces_the_metadata_keeping_identity_term_and_expiry(
    store: StoreUnderTest, unique_name: str
) -> None:
    async with dl.Election(
        unique_name, url=store.url, identity="p1", metadata={"endpoint": "a:1", "zone": "z"}
    ) as election:
        watcher = election.observe()
        assert await anext(watcher) is None
        async with election.campaign() as term:
            first = await anext(watcher)
            assert first is not None and first.metadata == {"endpoint": "a:1", "zone": "z"}
            await asyncio.sleep(2.0)  # then a proclaim that extended the lease would show
            before = term.expires_in
            await term.proclaim({"endpoint": "b:2"})
            leader = await election.leader()
            assert leader is not None
            assert (leader.identity, leader.term, leader.lease_id) == (
                "p1",
                term.token,
                term.lease_id,
            )
            assert leader.metadata == {"endpoint": "b:2"}, "replaced as a whole: zone is gone"
            assert leader.expires_in is not None and leader.expires_in <= before + 1.0
            seen = await asyncio.wait_for(anext(watcher), LIMIT)
            assert seen is not None and (seen.term, seen.metadata) == (
                term.token,
                {"endpoint": "b:2"},
            )
            with pytest.raises(ValueError, match="instanceId"):
                await term.proclaim({"instanceId": "someone-else"})


def test_proclaim_by_a_candidate_no_longer_leading_raises_lease_lost(
    store: StoreUnderTest, unique_name: str
) -> None:
    admin = dl.LeaseClient.connect_sync(store.url)
    old = dl.Election(unique_name, url=store.url, identity="old")
    new = dl.Election(unique_name, url=store.url, identity="new", metadata={"endpoint": "n"})
    with pytest.raises(dl.LeaseLost), old.campaign() as old_term:
        old_term.proclaim_sync({"endpoint": "o"})
        assert admin.force_release_sync(unique_name)
        with new.campaign(wait=LIMIT):
            with pytest.raises(dl.LeaseLost):
                old_term.proclaim_sync({"endpoint": "stolen"})
            leader = new.leader_sync()
            assert leader is not None
            assert (leader.identity, leader.metadata) == ("new", {"endpoint": "n"})
    admin.close_sync()
    old.close_sync()
    new.close_sync()


async def test_run_returns_the_result_of_an_async_fn_and_resigns(
    store: StoreUnderTest, unique_name: str
) -> None:
    async with dl.Election(unique_name, url=store.url, identity="runner") as election:

        async def work(term: dl.Term) -> str:
            leader = await election.leader()
            assert leader is not None and leader.term == term.token
            return f"done in term {term.token}"

        result = await election.run(work)
        assert result.startswith("done in term ")
        assert await election.leader() is None


async def test_run_runs_a_plain_fn_in_a_thread(store: StoreUnderTest, unique_name: str) -> None:
    async with dl.Election(unique_name, url=store.url, identity="runner") as election:
        main = threading.get_ident()

        def work(term: dl.Term) -> tuple[int, int]:
            leader = election.leader_sync()
            assert leader is not None and leader.term == term.token
            return threading.get_ident(), term.token

        ident, token = await election.run(work)
        assert ident != main and token > 0
        assert await election.leader() is None


async def test_run_awaits_what_a_plain_fn_returns(store: StoreUnderTest, unique_name: str) -> None:
    # A lambda around a coroutine function is a plain function that returns a coroutine: run
    # awaits it while leading (it returned the coroutine unawaited before, resigning at once).
    async with dl.Election(unique_name, url=store.url, identity="runner") as election:

        async def work(term: dl.Term, label: str) -> str:
            leader = await election.leader()
            assert leader is not None and leader.term == term.token
            return f"{label} {term.token}"

        result = await election.run(lambda term: work(term, "led"))
        assert isinstance(result, str) and result.startswith("led "), result
        assert await election.leader() is None


async def test_run_campaigns_again_after_a_loss(store: StoreUnderTest, unique_name: str) -> None:
    admin = await dl.LeaseClient.connect(store.url)
    # A short lease: its renewal (every 2 s) finds the forced release.
    async with dl.Election(unique_name, url=store.url, identity="r", duration=3.0) as election:
        terms: list[int] = []
        cancelled: list[int] = []
        leading = asyncio.Event()

        async def work(term: dl.Term) -> int:
            terms.append(term.token)
            if len(terms) > 1:
                return term.token
            leading.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(term.token)
                raise
            return -1

        task = asyncio.create_task(election.run(work))
        await asyncio.wait_for(leading.wait(), LIMIT)
        assert await admin.force_release(unique_name)
        result = await asyncio.wait_for(task, LIMIT)
        assert cancelled == terms[:1], "the first run of fn was cancelled by the loss"
        assert result == terms[1] > terms[0], "run campaigned again, into a higher term"
        assert await election.leader() is None
    await admin.close()


async def test_run_waits_for_a_plain_fn_that_watches_is_lost_then_campaigns_again(
    store: StoreUnderTest, unique_name: str
) -> None:
    admin = await dl.LeaseClient.connect(store.url)
    async with dl.Election(unique_name, url=store.url, identity="t", duration=3.0) as election:
        order: list[str] = []
        leading = threading.Event()

        def work(term: dl.Term) -> int:
            order.append(f"start {term.token}")
            if len(order) > 1:
                return term.token
            leading.set()
            deadline = time.monotonic() + LIMIT
            while not term.is_lost:  # a thread cannot be cancelled: it watches the loss
                assert time.monotonic() < deadline, "the loss was never seen"
                time.sleep(0.05)
            time.sleep(0.5)  # run must wait for this thread before it campaigns again
            order.append("first returned")
            return -1

        task = asyncio.create_task(election.run(work))
        assert await asyncio.to_thread(leading.wait, LIMIT)
        assert await admin.force_release(unique_name)
        result = await asyncio.wait_for(task, LIMIT)
        first, second = (int(o.split()[1]) for o in order if o.startswith("start"))
        assert order == [f"start {first}", "first returned", f"start {second}"], order
        assert result == second > first
    await admin.close()


async def test_cancelling_run_resigns(store: StoreUnderTest, unique_name: str) -> None:
    async with dl.Election(unique_name, url=store.url, identity="r") as election:
        leading = asyncio.Event()

        async def work(term: dl.Term) -> None:
            leading.set()
            await asyncio.sleep(3600)

        task = asyncio.create_task(election.run(work))
        await asyncio.wait_for(leading.wait(), LIMIT)
        assert await election.leader() is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Resigned at once, not left to expire (the lease lasts 30 s).
        assert await election.leader() is None


def test_a_holder_of_the_dotnet_origin_leads_without_a_term(
    redis_server: RedisServer, unique_name: str
) -> None:
    key = f"lease:{unique_name}"
    redis_server.cli(
        "HSET", key, "leaseId", "abc123", "acquiredAt", "2025-12-25T21:00:00.000Z",
        "meta_instanceId", "dotnet-1", "meta_region", "eu-west",
    )  # fmt: skip
    redis_server.cli("EXPIRE", key, "30")
    try:
        with dl.Election(unique_name, url=redis_server.url) as election:
            leader = election.leader_sync()
            assert leader is not None
            assert (leader.identity, leader.term, leader.lease_id) == ("dotnet-1", None, "abc123")
            assert leader.metadata == {"region": "eu-west"}
            assert leader.to_json()["acquired_at"] == "2025-12-25T21:00:00.000Z"
            observed = next(iter(election.observe_sync()))
            assert observed is not None
            assert (observed.identity, observed.term, observed.metadata) == (
                "dotnet-1",
                None,
                {"region": "eu-west"},
            )
        result = leasing("--url", redis_server.url, "leader", unique_name, "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert (doc["identity"], doc["term"]) == ("dotnet-1", None)
        # Without an instanceId it still leads, with no identity.
        redis_server.cli("HDEL", key, "meta_instanceId")
        with dl.Election(unique_name, url=redis_server.url) as election:
            leader = election.leader_sync()
            assert leader is not None and (leader.identity, leader.term) == (None, None)
    finally:
        redis_server.cli("DEL", key)


# -- the command -------------------------------------------------------------------------------


def test_cli_leader_plain_and_json(store: StoreUnderTest, unique_name: str) -> None:
    result = leasing("--url", store.url, "leader", unique_name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Election {unique_name!r} has no leader."
    result = leasing("--url", store.url, "leader", unique_name, "--json")
    assert (result.returncode, json.loads(result.stdout)) == (0, None)
    e = dl.Election(unique_name, url=store.url, identity="cli-1", metadata={"port": "80"})
    with e, e.campaign() as term:
        result = leasing("--url", store.url, "leader", unique_name)
        assert result.returncode == 0, result.stderr
        lines = dict(
            (k.strip(), v.strip())
            for k, v in (line.split(":", 1) for line in result.stdout.splitlines())
        )
        assert lines["Leader"] == "cli-1"
        assert lines["Term"] == str(term.token)
        assert lines["Metadata"] == "port=80"
        assert lines["Time left"].endswith("s")
        result = leasing("--url", store.url, "leader", unique_name, "--json")
        doc = json.loads(result.stdout)
        assert set(doc) == {"identity", "term", "acquired_at", "expires_in", "metadata"}
        assert (doc["identity"], doc["term"], doc["metadata"]) == (
            "cli-1",
            term.token,
            {"port": "80"},
        )
        assert 0 < doc["expires_in"] <= 30


@contextlib.contextmanager
def watching(url: str, name: str, *more: str) -> Iterator[LineReader]:
    """``leasing leader NAME --watch`` running, its lines read by a thread; killed at the end."""
    proc = subprocess.Popen(
        [str(LEASING), "--url", url, "leader", name, "--watch", *more],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env=clean_env(),
    )
    try:
        yield LineReader(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


@pytest.fixture
def watch_json(store: StoreUnderTest, unique_name: str) -> Iterator[LineReader]:
    with watching(store.url, unique_name, "--json") as reader:
        yield reader


class LineReader:
    """The lines a subprocess prints, read by a thread, taken with a time limit."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def line(self) -> str:
        line = self.lines.get(timeout=LIMIT)
        if line is None:
            stderr = self.proc.stderr.read() if self.proc.stderr is not None else ""
            raise AssertionError(f"the watch ended: {stderr}")
        return line

    def next(self) -> object:
        return json.loads(self.line())


def test_cli_leader_watch_json_prints_each_change_until_sigint(
    store: StoreUnderTest, unique_name: str, watch_json: LineReader
) -> None:
    assert watch_json.next() is None, "the current value first: no leader"
    tokens = []
    for identity in ("w1", "w2"):
        e = dl.Election(unique_name, url=store.url, identity=identity)
        with e, e.campaign() as term:
            tokens.append(term.token)
            doc = watch_json.next()
            assert isinstance(doc, dict)
            assert (doc["identity"], doc["term"]) == (identity, term.token)
        assert watch_json.next() is None, "resigned: no leader"
    assert tokens[1] > tokens[0]
    watch_json.proc.send_signal(signal.SIGINT)
    assert watch_json.proc.wait(LIMIT) == 0
    assert watch_json.lines.get(timeout=LIMIT) is None, "nothing more after the SIGINT"


def test_cli_leader_watch_prints_one_line_per_change(
    store: StoreUnderTest, unique_name: str
) -> None:
    with watching(store.url, unique_name) as watch:
        assert watch.line().rstrip().endswith("  no leader")
        e = dl.Election(unique_name, url=store.url, identity="plain-1", metadata={"k": "v"})
        with e, e.campaign() as term:
            line = watch.line()
            assert f"leader plain-1  term {term.token}  " in line and line.rstrip().endswith("k=v")
            term.proclaim_sync({"k": "w"})
            assert watch.line().rstrip().endswith("k=w"), "a proclaim is a change"
        assert watch.line().rstrip().endswith("  no leader")
        watch.proc.send_signal(signal.SIGINT)
        assert watch.proc.wait(LIMIT) == 0
