"""Leader election: ``Election``, its ``campaign()`` (a ``Term`` while leading), ``leader()``,
``observe()`` and ``run()``, and ``LeaderInfo``.

An election is the lease of the same name: a campaign is a waiting acquire of it (through
``LeaseContext``, so with its cancel-safety and its loss handling) with the candidate's identity in
the metadata (key ``instanceId``); the term is the lease's fencing token; losing the lease is losing
leadership; resigning is releasing it. Whoever holds the lease leads, a holder of the .NET origin
too (its identity is its ``instanceId``, and it has no term). See ``src/election.rs``.

This module does not import ``_client`` (which imports it, for ``LeaseClient.election``): the
process-wide default client that an ``Election`` made without ``url`` or ``client`` uses is
registered here by ``_client`` (``use_default_client``).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar, overload

from . import _args, _native
from ._lease import LeaseContext, _HasNative
from ._native import Lease, LeaseLost
from ._options import ContextOptions, client_options

IDENTITY_KEY = "instanceId"
"""The metadata key of a candidate's identity (the .NET sample's ``instanceId``)."""

T = TypeVar("T")


def iso_time(t: datetime) -> str:
    """``t`` (aware, UTC) as ISO 8601 with milliseconds and ``Z``, as the stores write it."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class LeaderInfo:
    """The leader of an election as anyone sees it (``Election.leader()``, ``observe()``)."""

    identity: str | None
    """Its identity (the ``instanceId`` of its metadata); None if it gave none."""
    term: int | None
    """Its term: the fencing token of its lease; None for a holder of the .NET origin."""
    lease_id: str
    """The id of its lease."""
    acquired_at: datetime | None
    """When it was elected, by its clock (aware, UTC)."""
    expires_in: float | None
    """Seconds before its lease expires unless renewed, when read."""
    metadata: dict[str, str] = field(default_factory=dict)
    """What it proclaimed (or campaigned with), without its identity."""

    def to_json(self) -> dict[str, Any]:
        """``{"identity", "term", "acquired_at" (ISO 8601 or None), "expires_in", "metadata"}``:
        what ``leasing leader NAME --json`` prints."""
        return {
            "identity": self.identity,
            "term": self.term,
            "acquired_at": None if self.acquired_at is None else iso_time(self.acquired_at),
            "expires_in": self.expires_in,
            "metadata": dict(sorted(self.metadata.items())),
        }


def _leader(native: _native._LeaderInfo | None) -> LeaderInfo | None:
    if native is None:
        return None
    return LeaderInfo(
        identity=native.identity,
        term=native.term,
        lease_id=native.lease_id,
        acquired_at=native.acquired_at,
        expires_in=native.expires_in,
        metadata=native.metadata,
    )


def _with_identity(metadata: Mapping[str, str] | None, identity: str) -> dict[str, str]:
    """``metadata`` (checked) with the candidate's identity added under ``instanceId``."""
    out = _args.metadata(metadata) or {}
    if IDENTITY_KEY in out:
        raise ValueError(
            f"metadata key {IDENTITY_KEY!r} is the candidate's identity; give it as "
            f"identity= of the Election instead (here: {identity!r})"
        )
    out[IDENTITY_KEY] = identity
    return out


def _not_leader(lease: Lease, identity: str, action: str) -> LeaseLost:
    if lease.is_released:
        why = "it already resigned"
        reason = "missing"
    else:
        reason = lease.lost_reason or "held_by_other"
        why = f"its term {lease.fencing_token} ended ({reason})"
    err = LeaseLost(
        f"{identity!r} cannot {action} in election {lease.name!r}: it is not the leader any more "
        f"({why}); nothing was changed. Campaign again to lead"
    )
    err.name = lease.name
    err.reason = reason  # type: ignore[assignment]
    return err


class Term:
    """One term of leadership, while a ``campaign()`` body runs: its ``token`` is the term
    number (the lease's fencing token: pass it to what the leader writes to, which refuses
    tokens lower than one it has seen)."""

    __slots__ = ("_identity", "_lease")

    def __init__(self, lease: Lease, identity: str) -> None:
        self._lease = lease
        self._identity = identity

    @property
    def token(self) -> int:
        """The term: strictly greater than every earlier leader's."""
        return self._lease.fencing_token

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def name(self) -> str:
        """The election's name."""
        return self._lease.name

    @property
    def is_lost(self) -> bool:
        """True once leadership is lost (the lease lost; also once its deadline passed while
        the process slept). A synchronous body (``run`` with a plain function) should watch it."""
        return self._lease.is_lost

    @property
    def lease_id(self) -> str:
        return self._lease.lease_id

    @property
    def expires_in(self) -> float:
        """Seconds of local validity left (0 once lost or resigned)."""
        return self._lease.expires_in

    @property
    def lease(self) -> Lease:
        """The lease this term is."""
        return self._lease

    async def proclaim(self, metadata: Mapping[str, str]) -> None:
        """Replaces the leader's metadata (e.g. ``{"endpoint": "10.0.0.7:8080"}``) as a whole:
        keys not given are gone; the identity and the term stay, and the lease is not extended.
        Observers see it. Raises ``LeaseLost``, changing nothing, if this candidate no longer
        leads (an async campaign body is then cancelled, as on any loss)."""
        await self._lease.proclaim(_with_identity(metadata, self._identity))

    def proclaim_sync(self, metadata: Mapping[str, str]) -> None:
        """``proclaim`` for synchronous code."""
        self._lease.proclaim_sync(_with_identity(metadata, self._identity))

    async def resign(self) -> None:
        """Ends the term now: releases the lease (owner-checked). Raises ``LeaseLost``, changing
        nothing, if this candidate no longer leads (or already resigned); an async campaign
        body is then cancelled, as on any loss."""
        if not await self._lease.release():
            raise _not_leader(self._lease, self._identity, "resign")

    def resign_sync(self) -> None:
        """``resign`` for synchronous code."""
        if not self._lease.release_sync():
            raise _not_leader(self._lease, self._identity, "resign")

    def __repr__(self) -> str:
        return (
            f"Term(name={self.name!r}, token={self.token}, identity={self._identity!r}, "
            f"is_lost={self.is_lost})"
        )


class Campaign:
    """What ``Election.campaign()`` returns: ``async with`` (or ``with``) it to lead while the
    body runs (see ``Election.campaign``)."""

    __slots__ = ("_context", "_identity")

    def __init__(self, election: Election, metadata: Mapping[str, str] | None, wait: float | None):
        options: ContextOptions = {
            "metadata": _with_identity(metadata, election.identity),
            "wait": wait,
            "duration": election._duration,
        }
        self._identity = election.identity
        # Announced: observers on Redis and PostgreSQL see the new leader at once.
        self._context = LeaseContext(
            election._client_async, election._client_sync, election.name, options, announce=True
        )

    async def __aenter__(self) -> Term:
        return Term(await self._context.__aenter__(), self._identity)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._context.__aexit__(exc_type, exc, tb)

    def __enter__(self) -> Term:
        return Term(self._context.__enter__(), self._identity)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._context.__exit__(exc_type, exc, tb)


class _Observation:
    """``async for leader in election.observe()``."""

    __slots__ = ("_election", "_observer")

    def __init__(self, election: Election) -> None:
        self._election = election
        self._observer: _native._Observer | None = None

    def __aiter__(self) -> _Observation:
        return self

    async def __anext__(self) -> LeaderInfo | None:
        if self._observer is None:
            client = await self._election._client_async()
            self._observer = client._native.observe(self._election.name)
        more, leader = await self._observer.next()
        if not more:
            raise StopAsyncIteration
        return _leader(leader)


class _SyncObservation:
    """``for leader in election.observe_sync()``."""

    __slots__ = ("_election", "_observer")

    def __init__(self, election: Election) -> None:
        self._election = election
        self._observer: _native._Observer | None = None

    def __iter__(self) -> _SyncObservation:
        return self

    def __next__(self) -> LeaderInfo | None:
        if self._observer is None:
            self._observer = self._election._client_sync()._native.observe(self._election.name)
        more, leader = self._observer.next_sync()
        if not more:
            raise StopIteration
        return _leader(leader)


class _Owned:
    """A client an ``Election`` made from its ``url`` (and closes)."""

    __slots__ = ("_native",)

    def __init__(self, native: _native._Client) -> None:
        self._native = native


_ClientSource = tuple[Callable[[], Awaitable[_HasNative]], Callable[[], _HasNative]]
_default_source: _ClientSource | None = None


def use_default_client(
    get: Callable[[], Awaitable[_HasNative]], get_sync: Callable[[], _HasNative]
) -> None:
    """Registers the process-wide default client (``_client`` does, at import)."""
    global _default_source
    _default_source = (get, get_sync)


class Election:
    """The election ``name``: the lease of that name, led by whoever holds it.

    ``url`` or ``client`` as for ``lease()``: with neither, the process-wide default client
    (the configuration in the current directory and the environment). An ``Election`` made
    from a ``url`` owns its client: close it with ``async with election:``, ``with election:``,
    ``await election.close()`` or ``election.close_sync()``. ``identity`` names this candidate
    (default ``host:pid``); ``duration`` is the lease's (seconds; None: the client's);
    ``metadata`` what campaigns store by default (e.g. an endpoint), besides the identity.
    """

    __slots__ = (
        "_client",
        "_duration",
        "_identity",
        "_lock",
        "_metadata",
        "_name",
        "_url",
    )

    def __init__(
        self,
        name: str,
        *,
        url: str | None = None,
        client: _HasNative | None = None,
        identity: str | None = None,
        duration: float | None = 30.0,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        _args.text("name", name, "scheduler-leader")
        if url is not None and client is not None:
            raise ValueError("give url= or client=, not both: a client already has its store")
        if url is not None:
            _args.text("url", url, "redis://127.0.0.1:6379")
        if identity is None:
            identity = _native.default_identity()
        else:
            _args.text("identity", identity, "us-east-1")
            _native._check_identity(identity)
        _args.seconds("duration", duration)
        self._name = name
        self._identity = identity
        self._duration = duration
        self._metadata = _args.metadata(metadata)
        _with_identity(self._metadata, identity)  # refuses an instanceId key now
        self._url = url
        self._client: _HasNative | None = client
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def identity(self) -> str:
        """This candidate's identity, stored in its lease's metadata as ``instanceId``."""
        return self._identity

    # -- the client --------------------------------------------------------------------------

    def _client_sync(self) -> _HasNative:
        client = self._client
        if client is not None:
            return client
        if self._url is None:
            assert _default_source is not None
            return _default_source[1]()
        with self._lock:
            if self._client is None:
                native = _native._Client.connect_sync(self._url, client_options(self._url, {}))
                self._client = _Owned(native)
            return self._client

    async def _client_async(self) -> _HasNative:
        client = self._client
        if client is not None:
            return client
        if self._url is None:
            assert _default_source is not None
            return await _default_source[0]()
        native = await _native._Client.connect(self._url, client_options(self._url, {}))
        with self._lock:
            if self._client is None:
                self._client = _Owned(native)
                return self._client
        await native.close()  # another task connected first
        return self._client

    async def close(self) -> None:
        """Closes the client this election made from its ``url`` (its terms end as lost with
        reason ``client_closed``, its observers stop); nothing for a client it was given."""
        owned = self._take_owned()
        if owned is not None:
            await owned.close()

    def close_sync(self) -> None:
        """``close`` for synchronous code."""
        owned = self._take_owned()
        if owned is not None:
            owned.close_sync()

    def _take_owned(self) -> _native._Client | None:
        with self._lock:
            client = self._client
            if self._url is None or not isinstance(client, _Owned):
                return None
            self._client = None
            return client._native

    async def __aenter__(self) -> Election:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __enter__(self) -> Election:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close_sync()

    # -- leading -----------------------------------------------------------------------------

    def campaign(
        self, metadata: Mapping[str, str] | None = None, wait: float | None = None
    ) -> Campaign:
        """Leads while the body of ``async with election.campaign() as term:`` (or ``with``)
        runs.

        Waits until elected: ``wait=None`` (the default) with no time limit, woken when the
        leader resigns (a notification) or at its expiry; ``wait=5.0`` raises
        ``LeaseUnavailable`` after 5 s, its message naming the leader (``.holder`` is its
        lease). ``metadata`` (default: the election's) is stored with the identity. A cancelled
        campaign leaves nothing behind. When leadership is lost while the body runs, the body
        is cancelled and ``LeaseLost`` raised (``with``: raised at exit, a synchronous body
        cannot be interrupted). Leadership ends only after the body returned: the exit
        resigns.

        A second campaign of the same candidate while it leads is a candidate like any other:
        it waits until the first term ends (in the same task, give it a ``wait``: it then
        raises ``LeaseUnavailable`` naming this very identity, and the first term goes on).
        """
        _args.seconds("wait", wait)
        return Campaign(self, self._metadata if metadata is None else metadata, wait)

    @overload
    async def run(self, fn: Callable[[Term], Awaitable[T]]) -> T: ...
    @overload
    async def run(self, fn: Callable[[Term], T]) -> T: ...
    async def run(self, fn: Callable[[Term], Any]) -> Any:
        """Campaigns, then runs ``fn(term)`` while leading, and returns its result.

        ``fn`` is a coroutine function or a plain function (run in a thread; when it returns
        an awaitable, as ``lambda term: work(term, 5)`` does, that is awaited). When it returns,
        leadership is resigned and ``run`` returns what it returned; when it raises, leadership
        is resigned and the exception propagates. When leadership is lost while it runs, it is
        cancelled and ``run`` campaigns again. A thread cannot be cancelled: a plain function
        should watch ``term.is_lost`` and return soon after it turns True; ``run`` waits for
        it to return before it campaigns again (or, cancelled, before it resigns). Cancelling
        ``run`` resigns.
        """
        while True:
            try:
                async with self.campaign() as term:
                    if inspect.iscoroutinefunction(fn):
                        result = await fn(term)
                    else:
                        result = await _in_thread(fn, term)
                        if inspect.isawaitable(result):
                            # A plain callable that returns an awaitable (a lambda or a
                            # partial around a coroutine function): awaited while leading.
                            result = await result
            except LeaseLost:
                continue  # lost while fn ran: campaign again
            return result

    # -- seeing ------------------------------------------------------------------------------

    async def leader(self) -> LeaderInfo | None:
        """The current leader, or None."""
        client = await self._client_async()
        return _leader(await client._native.leader(self._name))

    def leader_sync(self) -> LeaderInfo | None:
        """``leader`` for synchronous code."""
        return _leader(self._client_sync()._native.leader_sync(self._name))

    def observe(self) -> AsyncIterator[LeaderInfo | None]:
        """``async for leader in election.observe():`` the current leader (or None) first, then
        every change: a new term, new metadata (a proclaim), no leader (resigned, expired,
        force-released). It may skip intermediate values, but never yields the same value twice
        in a row nor a lower term than one it yielded. It ends when the client is closed."""
        return _Observation(self)

    def observe_sync(self) -> Iterator[LeaderInfo | None]:
        """``observe`` as a plain iterator (each step blocks; Ctrl-C interrupts it)."""
        return _SyncObservation(self)

    def __repr__(self) -> str:
        return f"Election(name={self._name!r}, identity={self._identity!r})"


async def _in_thread(fn: Callable[[Term], Any], term: Term) -> Any:
    """``fn(term)`` in a thread; when cancelled (leadership lost, or ``run`` cancelled), waits
    for the thread to return (it cannot be killed) and then propagates the cancellation."""
    done = asyncio.ensure_future(asyncio.to_thread(fn, term))
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        while not done.done():
            try:
                await asyncio.shield(done)
            except asyncio.CancelledError:
                continue
            except BaseException:
                break
        if not done.cancelled():
            done.exception()  # retrieved: no "never retrieved" warning
        raise
