"""Stubs and documentation of the native module (Rust, PyO3). Checked with mypy.stubtest."""

import asyncio
import builtins
from collections.abc import Callable
from datetime import datetime
from typing import Final, Literal, final

__version__: Final[str]

LostReasonName = Literal["expired", "missing", "held_by_other"]
BackendErrorKind = Literal["unreachable", "auth", "timeout", "wrong_type", "other"]

class LeaseError(Exception):
    """Base class of every error of distributed_leasing. Messages never contain secrets."""

class LeaseUnavailable(LeaseError):
    """The lease is held by someone else (after waiting, if a wait was asked for)."""

    name: str
    holder: LeaseInfo | None
    """The holder, from the same round trip as the refused acquire."""

class LeaseLost(LeaseError):
    """The lease was lost while held: stop work that relies on it."""

    name: str
    reason: LostReasonName

class ConfigError(LeaseError):
    """Configuration is missing or invalid; the message names the key, the value's problem
    and its source."""

class BackendError(LeaseError):
    """The store failed: unreachable, authentication, timeout, WRONGTYPE..."""

    kind: BackendErrorKind

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
    def __eq__(self, other: object) -> bool: ...

@final
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
    def lost_reason(self) -> LostReasonName | None: ...
    @property
    def is_released(self) -> bool: ...
    def renew(self) -> asyncio.Future[None]:
        """Renews now. Raises LeaseLost if the lease is no longer held."""
    def renew_blocking(self) -> None: ...
    def release(self) -> asyncio.Future[bool]:
        """Stops renewal and deletes the lease if still held; True if the store still had it."""
    def release_blocking(self) -> bool: ...
    def wait_lost(self) -> asyncio.Future[LostReasonName | None]:
        """Returns when the lease ends: the loss reason, or None if it was released."""
    def _on_end(
        self,
        event_loop: asyncio.AbstractEventLoop,
        callback: Callable[[str | None], object],
    ) -> None: ...

@final
class _Client:
    @staticmethod
    def connect(
        url: str,
        *,
        duration: float | None = None,
        renew_interval: float | None = None,
        auto_renew: bool | None = None,
        key_prefix: str | None = None,
        connect_timeout: float | None = None,
        operation_timeout: float | None = None,
        ca_file: str | None = None,
    ) -> asyncio.Future[_Client]: ...
    @staticmethod
    def connect_blocking(
        url: str,
        *,
        duration: float | None = None,
        renew_interval: float | None = None,
        auto_renew: bool | None = None,
        key_prefix: str | None = None,
        connect_timeout: float | None = None,
        operation_timeout: float | None = None,
        ca_file: str | None = None,
    ) -> _Client: ...
    @staticmethod
    def from_config_blocking(dir: str) -> tuple[_Client, list[str]]: ...
    @property
    def kind(self) -> str: ...
    def try_acquire(
        self,
        name: str,
        *,
        duration: float | None = None,
        renew_interval: float | None = None,
        auto_renew: bool | None = None,
        metadata: dict[str, str] | None = None,
    ) -> asyncio.Future[tuple[Lease | None, LeaseInfo | None]]: ...
    def try_acquire_blocking(
        self,
        name: str,
        *,
        duration: float | None = None,
        renew_interval: float | None = None,
        auto_renew: bool | None = None,
        metadata: dict[str, str] | None = None,
    ) -> tuple[Lease | None, LeaseInfo | None]: ...
    def acquire(
        self,
        name: str,
        *,
        wait: float | None = 0.0,
        duration: float | None = None,
        renew_interval: float | None = None,
        auto_renew: bool | None = None,
        metadata: dict[str, str] | None = None,
    ) -> asyncio.Future[Lease]: ...
    def acquire_blocking(
        self,
        name: str,
        *,
        wait: float | None = 0.0,
        duration: float | None = None,
        renew_interval: float | None = None,
        auto_renew: bool | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Lease: ...
    def inspect(self, name: str) -> asyncio.Future[LeaseInfo | None]: ...
    def inspect_blocking(self, name: str) -> LeaseInfo | None: ...
    def list(self, prefix: str = "") -> asyncio.Future[builtins.list[LeaseInfo]]: ...
    def list_blocking(self, prefix: str = "") -> builtins.list[LeaseInfo]: ...
    def force_release(self, name: str) -> asyncio.Future[bool]: ...
    def force_release_blocking(self, name: str) -> bool: ...

def is_configured(dir: str) -> bool:
    """Whether ``dir`` (appsettings files) and the environment configure a store. Raises
    ConfigError when a configuration exists but is invalid."""

def _shutdown() -> None:
    """atexit hook: keep tokio threads out of a finalizing interpreter."""
