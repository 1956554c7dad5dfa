"""Stubs and documentation of the native module (Rust, PyO3). Checked with mypy.stubtest."""

import asyncio
import builtins
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Final, Literal, final

from typing_extensions import disjoint_base

__version__: Final[str]

_LostReasonName = Literal["expired", "missing", "held_by_other", "client_closed"]
_LeaseEventKind = Literal["renewed", "renewal_failed", "lost", "released"]
_BackoffArg = tuple[float, float, int | None]
_BackendErrorKind = Literal["unreachable", "auth", "permission", "timeout", "wrong_type", "other"]

class LeaseError(Exception):
    """Base class of every error of distributed_leasing. Messages never contain secrets."""

class LeaseUnavailable(LeaseError):
    """The lease is held by someone else, or every permit of the semaphore is (after waiting,
    if a wait was asked for)."""

    name: str
    holder: LeaseInfo | None
    """The holder, from the same round trip as the refused acquire (of a semaphore: the permit
    that expires first)."""
    holders: list[LeaseInfo]
    """Every holder the refusal saw: a lease's one holder (or none), or each permit of the
    semaphore (at most 100) with its ``slot``."""

class LimitMismatch(LeaseError):
    """A semaphore was asked for with a limit other than the one stored with it: pass
    ``limit=stored`` or ``limit=None``, or change it with ``set_semaphore_limit``."""

    name: str
    stored: int
    """The limit stored with the semaphore."""
    asked: int
    """The limit asked for."""

class LeaseLost(LeaseError):
    """The lease was lost while held: stop work that relies on it."""

    name: str
    reason: _LostReasonName

class ConfigError(LeaseError):
    """Configuration is missing or invalid; the message names the key, the value's problem
    and its source."""

class BackendError(LeaseError):
    """The store failed: unreachable, authentication, permission (ACL), timeout, WRONGTYPE...

    ``kind``: ``unreachable``, ``auth`` (wrong user, password or token), ``permission`` (the
    server refused a command, key or channel to this user: an ACL rule is missing; the message
    names it), ``timeout``, ``wrong_type`` (the key holds something other than a lease),
    ``other``."""

    kind: _BackendErrorKind

@final
class LeaseInfo:
    """What anyone may see of a lease's holder."""

    @property
    def name(self) -> str: ...
    @property
    def lease_id(self) -> str: ...
    @property
    def acquired_at(self) -> datetime | None:
        """When the holder acquired it (aware, UTC); None if the record lacks it."""
    @property
    def fencing_token(self) -> int | None:
        """The holder's fencing token; None for records written by the .NET origin."""
    @property
    def metadata(self) -> dict[str, str]: ...
    @property
    def ttl(self) -> float | None:
        """Seconds left before the store expires it."""
    @property
    def orphan(self) -> bool:
        """True for an orphan of the .NET origin (Redis): its ``meta_*`` fields left without a
        lease and without a TTL (its key expired before it wrote them). Nobody holds it
        (``lease_id`` is empty; ``metadata`` says who left it); the next acquire takes it over,
        and ``force_release`` deletes it. False for every lease."""
    @property
    def slot(self) -> int | None:
        """The slot of a semaphore's permit (``name`` is then the semaphore's); None for a
        lease."""
    def holder_label(self, escape: Callable[[str], str] | None = None) -> str | None:
        """Who holds it, for people: the ``instanceId`` of its metadata, with its ``region`` in
        brackets when there is one (``"us-east-1 (us-east)"``); None without an instanceId.
        ``escape`` is applied to each part (``repr``, to show someone else's text safely)."""
    def __eq__(self, other: object, /) -> bool: ...

@disjoint_base
class Lease:
    """A held lease, renewed in the background by Rust until released or lost."""

    @property
    def name(self) -> str: ...
    @property
    def lease_id(self) -> str:
        """This holder's id (uuid4)."""
    @property
    def fencing_token(self) -> int:
        """Strictly greater than every earlier holder's token for this name: pass it to the
        resource you protect, and have it refuse tokens lower than one it has seen."""
    @property
    def acquired_at(self) -> datetime:
        """Wall-clock time of acquisition (aware, UTC)."""
    @property
    def duration(self) -> float:
        """The lease duration in seconds (the store's TTL, reset at each renewal)."""
    @property
    def renewals(self) -> int:
        """Successful renewals so far."""
    @property
    def renewal_failures(self) -> int:
        """Failed renewal attempts so far (each retried until the deadline)."""
    @property
    def expires_in(self) -> float:
        """Seconds of local validity left (0 once lost or released)."""
    @property
    def is_lost(self) -> bool:
        """True once the lease is lost (also when its deadline passed while the process slept)."""
    @property
    def lost_reason(self) -> _LostReasonName | None: ...
    @property
    def is_released(self) -> bool: ...
    def renew(self) -> asyncio.Future[None]:
        """Renews now. Raises LeaseLost if the lease is no longer held."""
    def renew_sync(self) -> None:
        """``renew`` for synchronous code."""
    def proclaim(self, metadata: dict[str, str]) -> asyncio.Future[None]:
        """Replaces the lease's metadata in the store as a whole (keys not given are gone),
        keeping its lease id, fencing token and expiry (it does not extend the lease); observers
        of the name are told. Raises LeaseLost, changing nothing, if it is no longer held."""
    def proclaim_sync(self, metadata: dict[str, str]) -> None:
        """``proclaim`` for synchronous code."""
    def release(self) -> asyncio.Future[bool]:
        """Stops renewal and deletes the lease if still held; True if it was ours. False if
        another holder had it or it was gone: the lease is then lost (``lost_reason``)."""
    def release_sync(self) -> bool:
        """``release`` for synchronous code."""
    def wait_lost(self) -> asyncio.Future[_LostReasonName | None]:
        """Returns when the lease ends: the loss reason, or None if it was released."""
    def events(self) -> LeaseEvents:
        """The lease's events from now on: ``async for event in lease.events(): ...``.

        ``renewed``, ``renewal_failed`` (with ``attempt``, ``error``, ``will_retry``), then one
        of ``lost`` (with ``reason``) or ``released``, after which the iteration stops. Opened
        after the end, it yields just the end. A reader more than 64 events behind skips the
        oldest (the end is always delivered).
        """
    def _on_end(
        self,
        event_loop: asyncio.AbstractEventLoop,
        callback: Callable[[str | None], object],
    ) -> None: ...
    def _release_if_loop_closed(self, event_loop: asyncio.AbstractEventLoop) -> None: ...

@final
class Permit(Lease):
    """A held permit of a semaphore: a lease of its own over its slot (its own lease id,
    renewal, expiry on the store's clock, events and loss), with its semaphore's ``name`` and
    its ``slot``. ``fencing_token`` comes from the semaphore's one counter: keep the last token
    seen per slot and refuse a lower one to fence a stale holder. ``release()`` returns False
    (and adds no permit) the second time."""

    @property
    def slot(self) -> int:
        """The slot this permit occupies (``0..limit``)."""

@final
class SemaphoreInfo:
    """A semaphore as anyone may see it (``LeaseClient.semaphore_info``,
    ``LeaseClient.list_semaphores``)."""

    @property
    def name(self) -> str: ...
    @property
    def limit(self) -> int:
        """The limit stored with the semaphore."""
    @property
    def holders(self) -> list[LeaseInfo]:
        """The live permits by slot, each a ``LeaseInfo`` with its ``slot``."""
    def __eq__(self, other: object, /) -> bool: ...

@final
class LeaseEvent:
    """Something that happened to a held lease (see ``Lease.events``)."""

    @property
    def kind(self) -> _LeaseEventKind: ...
    @property
    def renewals(self) -> int | None:
        """For ``renewed``: successful renewals so far, this one included."""
    @property
    def attempt(self) -> int | None:
        """For ``renewal_failed``: failures in a row since the last success (1 for the first)."""
    @property
    def error(self) -> str | None:
        """For ``renewal_failed``: what went wrong (never a secret)."""
    @property
    def will_retry(self) -> bool | None:
        """For ``renewal_failed``: whether another attempt comes before the lease's deadline."""
    @property
    def reason(self) -> _LostReasonName | None:
        """For ``lost``: why."""
    def __eq__(self, other: object, /) -> bool: ...

@final
class LeaseEvents(AsyncIterator[LeaseEvent]):
    """The async iterator of ``Lease.events()``; stops after the lease's end."""

    def __aiter__(self) -> LeaseEvents: ...
    def __anext__(self) -> asyncio.Future[LeaseEvent]: ...

@final
class _LeaderInfo:
    """The leader of an election (the package's ``LeaderInfo`` is made from it)."""

    @property
    def identity(self) -> str | None: ...
    @property
    def term(self) -> int | None: ...
    @property
    def lease_id(self) -> str: ...
    @property
    def acquired_at(self) -> datetime | None: ...
    @property
    def expires_in(self) -> float | None: ...
    @property
    def metadata(self) -> dict[str, str]: ...

@final
class _Observer:
    """The leader of one election as it changes (``_Client.observe``)."""

    def next(self) -> asyncio.Future[tuple[bool, _LeaderInfo | None]]:
        """``(True, leader or None)``: the current leader at the first call, then the next
        change; ``(False, None)`` once the client was closed (the iteration ends)."""
    def next_sync(self) -> tuple[bool, _LeaderInfo | None]:
        """``next`` for synchronous code (Ctrl-C interrupts it)."""

@final
class _Options:
    """A lease's options, checked (see ``_options.py``, whose TypedDicts mirror this)."""

    def __new__(
        cls,
        *,
        wait: float | None = ...,
        duration: float | None = None,
        renew_interval: float | None = None,
        auto_renew: bool | None = None,
        metadata: dict[str, str] | None = None,
        backoff: _BackoffArg | None = None,
        announce: bool = False,
    ) -> _Options: ...

@final
class _ClientOptions:
    """A client's options, checked (see ``_options.py``)."""

    def __new__(
        cls,
        *,
        duration: float | None = None,
        renew_interval: float | None = None,
        auto_renew: bool | None = None,
        key_prefix: str | None = None,
        connect_timeout: float | None = None,
        operation_timeout: float | None = None,
        ca_file: str | None = None,
        backoff: _BackoffArg | None = None,
    ) -> _ClientOptions: ...

@final
class _Client:
    @staticmethod
    def connect(url: str, options: _ClientOptions) -> asyncio.Future[_Client]: ...
    @staticmethod
    def connect_sync(url: str, options: _ClientOptions) -> _Client: ...
    @staticmethod
    def from_config_sync(dir: str) -> tuple[_Client, list[str]]: ...
    @property
    def kind(self) -> str: ...
    @property
    def key_prefix(self) -> str: ...
    def try_acquire(
        self, name: str, options: _Options
    ) -> asyncio.Future[tuple[Lease | None, LeaseInfo | None]]: ...
    def try_acquire_sync(
        self, name: str, options: _Options
    ) -> tuple[Lease | None, LeaseInfo | None]: ...
    def acquire(self, name: str, options: _Options) -> asyncio.Future[Lease]: ...
    def acquire_sync(self, name: str, options: _Options) -> Lease: ...
    def inspect(self, name: str) -> asyncio.Future[LeaseInfo | None]: ...
    def inspect_sync(self, name: str) -> LeaseInfo | None: ...
    def list(self, prefix: str = ...) -> asyncio.Future[builtins.list[LeaseInfo]]: ...
    def list_sync(self, prefix: str = ...) -> builtins.list[LeaseInfo]: ...
    def force_release(self, name: str, *, lease_id: str | None = None) -> asyncio.Future[bool]: ...
    def force_release_sync(self, name: str, *, lease_id: str | None = None) -> bool: ...
    def try_acquire_permit(
        self, name: str, limit: int | None, options: _Options
    ) -> asyncio.Future[Permit | None]: ...
    def try_acquire_permit_sync(
        self, name: str, limit: int | None, options: _Options
    ) -> Permit | None: ...
    def acquire_permit(
        self, name: str, limit: int | None, options: _Options
    ) -> asyncio.Future[Permit]: ...
    def acquire_permit_sync(self, name: str, limit: int | None, options: _Options) -> Permit: ...
    def semaphore_info(self, name: str) -> asyncio.Future[SemaphoreInfo | None]: ...
    def semaphore_info_sync(self, name: str) -> SemaphoreInfo | None: ...
    def list_semaphores(
        self, prefix: str = ...
    ) -> asyncio.Future[builtins.list[SemaphoreInfo]]: ...
    def list_semaphores_sync(self, prefix: str = ...) -> builtins.list[SemaphoreInfo]: ...
    def set_semaphore_limit(self, name: str, limit: int) -> asyncio.Future[int | None]: ...
    def set_semaphore_limit_sync(self, name: str, limit: int) -> int | None: ...
    def force_release_permit(
        self, name: str, slot: int, *, lease_id: str | None = None
    ) -> asyncio.Future[bool]: ...
    def force_release_permit_sync(
        self, name: str, slot: int, *, lease_id: str | None = None
    ) -> bool: ...
    def close(self) -> asyncio.Future[None]: ...
    def close_sync(self) -> None: ...
    def leader(self, name: str) -> asyncio.Future[_LeaderInfo | None]: ...
    def leader_sync(self, name: str) -> _LeaderInfo | None: ...
    def observe(self, name: str) -> _Observer: ...

def is_configured(dir: str) -> bool:
    """Whether ``dir`` (appsettings files) and the environment configure a store. Raises
    ConfigError when a configuration exists but is invalid."""

def default_identity() -> str:
    """The default identity of an election candidate: ``host:pid``."""

def _check_identity(identity: str) -> None:
    """Raises ValueError when the core refuses a candidate's identity (empty, or with a
    control character)."""

def _shutdown() -> None:
    """atexit hook: keep tokio threads out of a finalizing interpreter."""

def _refresh_logging() -> int:
    """Re-reads the ``distributed_leasing`` logger's level; returns records dropped so far."""

def metrics() -> dict[str, int]:
    """The process's ``leasing.*`` counters."""

def _check_backoff(min: float, max: float, max_attempts: int | None) -> None:
    """Raises ValueError when the core refuses this backoff (``Backoff::new``): ``min`` below
    0.1 s, ``max`` below ``min``, or ``max_attempts`` below 1."""

def _before_fork() -> None:
    """os.register_at_fork hook: waits (bounded) until no SQLite call is in progress."""

def _after_fork_in_parent() -> None:
    """os.register_at_fork hook: SQLite calls go on."""

def _after_fork_in_child() -> None:
    """os.register_at_fork hook: closes the child's copies of the parent's SQLite connections."""
