"""``LeaseClient`` (owns the connection to a store) and the module-level ``lease()``."""

from __future__ import annotations

import asyncio
import builtins
import os
import threading
import warnings
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Unpack

from . import _args, _election, _native
from ._election import Election
from ._lease import LeaseContext
from ._native import Lease, LeaseError, LeaseInfo, Permit, SemaphoreInfo
from ._options import (
    AcquireOptions,
    ClientOptions,
    ContextOptions,
    LeaseOptions,
    client_options,
    lease_options,
)
from ._semaphore import SemaphoreContext, limit_arg


class ConfigWarning(UserWarning):
    """A configuration problem that did not stop loading (an unknown key, an unused option)."""


class LeaseClient:
    """A connection to a lease store (Redis, Redis Cluster or SQLite).

    Create it with ``await LeaseClient.connect(url)``, ``LeaseClient.connect_sync(url)`` or
    ``LeaseClient.from_config(dir)``. Create clients after ``fork()``, not before.
    """

    __slots__ = ("__native",)

    def __init__(self, native: _native._Client) -> None:
        self.__native: _native._Client | None = native

    @property
    def _native(self) -> _native._Client:
        native = self.__native
        if native is None:
            raise LeaseError("this LeaseClient is closed; create a new one")
        return native

    # -- construction ------------------------------------------------------------------------

    @classmethod
    async def connect(cls, url: str, **options: Unpack[ClientOptions]) -> LeaseClient:
        """Connects to ``redis://``, ``rediss://`` (TLS), ``postgresql://user:password@host/db``,
        ``etcd://host1:2379,host2:2379`` (``etcds://`` for TLS) or ``sqlite:///path/leases.db``.

        Options (see ``ClientOptions``): ``duration``, ``renew_interval``, ``auto_renew``
        (the defaults of the leases taken through it), ``key_prefix``, ``connect_timeout``,
        ``operation_timeout``, ``ca_file``, and ``backoff``: the default polling schedule and
        attempt limit of waiting acquires.
        """
        return cls(await _native._Client.connect(url, client_options(url, options)))

    @classmethod
    def connect_sync(cls, url: str, **options: Unpack[ClientOptions]) -> LeaseClient:
        """``connect`` for synchronous code (blocks with the GIL released)."""
        return cls(_native._Client.connect_sync(url, client_options(url, options)))

    @classmethod
    def from_config(cls, dir: str | os.PathLike[str] = ".") -> LeaseClient:
        """Connects as configured: appsettings.json, appsettings.Local.json, environment.

        Raises ``ConfigError`` listing the ways to configure when nothing is configured.
        """
        native, problems = _native._Client.from_config_sync(os.fspath(Path(dir)))
        for problem in problems:
            warnings.warn(problem, ConfigWarning, stacklevel=2)
        return cls(native)

    # -- leases ------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """The store in use: ``redis``, ``redis-cluster``, ``postgres``, ``etcd`` or ``sqlite``."""
        return self._native.kind

    def lease(self, name: str, **options: Unpack[ContextOptions]) -> LeaseContext:
        """A context manager (``async with`` or ``with``) holding the lease while its body runs.

        Options: those of ``acquire`` and ``on_lost`` (see ``ContextOptions``)."""

        return LeaseContext(None, None, name, options, client=self)

    def election(
        self,
        name: str,
        *,
        identity: str | None = None,
        duration: float | None = 30.0,
        metadata: Mapping[str, str] | None = None,
    ) -> Election:
        """The election ``name`` on this client (see ``Election``; closing the election leaves
        this client open)."""
        return Election(name, client=self, identity=identity, duration=duration, metadata=metadata)

    async def try_acquire(self, name: str, **options: Unpack[LeaseOptions]) -> Lease | None:
        """One attempt: the lease, or None if someone else holds it.

        Options (see ``LeaseOptions``): ``duration``, ``renew_interval``, ``auto_renew``,
        ``metadata``; None means the client's default."""
        native = lease_options("try_acquire", "lease", name, options)
        lease, _holder = await self._native.try_acquire(name, native)
        return lease

    def try_acquire_sync(self, name: str, **options: Unpack[LeaseOptions]) -> Lease | None:
        """``try_acquire`` for synchronous code."""
        native = lease_options("try_acquire_sync", "lease", name, options)
        lease, _holder = self._native.try_acquire_sync(name, native)
        return lease

    async def acquire(self, name: str, **options: Unpack[AcquireOptions]) -> Lease:
        """Takes the lease, waiting up to ``wait`` seconds (None: forever; 0, the default: one
        attempt).

        A waiter is woken when the holder releases (a notification, not polling), at the
        holder's expiry, and by polls on ``backoff`` only where notifications may be missed.
        Raises ``LeaseUnavailable`` (with ``.holder``) when the wait or the backoff's attempt
        limit runs out. Cancelling the call leaves no lease and no subscription behind.
        Options (see ``AcquireOptions``): those of ``try_acquire``, ``wait`` and ``backoff``.
        """
        return await self._native.acquire(name, lease_options("acquire", "acquire", name, options))

    def acquire_sync(self, name: str, **options: Unpack[AcquireOptions]) -> Lease:
        """``acquire`` for synchronous code (Ctrl-C interrupts a wait)."""
        return self._native.acquire_sync(
            name, lease_options("acquire_sync", "acquire", name, options)
        )

    async def inspect(self, name: str) -> LeaseInfo | None:
        """The current holder of ``name``, or None. On Redis, an orphan of the .NET origin
        (its metadata without a lease) is a ``LeaseInfo`` with ``orphan`` set."""
        _args.text("name", name, "critical-section-lock")
        return await self._native.inspect(name)

    def inspect_sync(self, name: str) -> LeaseInfo | None:
        """``inspect`` for synchronous code."""
        _args.text("name", name, "critical-section-lock")
        return self._native.inspect_sync(name)

    async def list(self, prefix: str = "") -> builtins.list[LeaseInfo]:
        """Every held lease whose name starts with ``prefix``, sorted by name."""
        _args.text("prefix", prefix, "jobs-")
        return await self._native.list(prefix)

    def list_sync(self, prefix: str = "") -> builtins.list[LeaseInfo]:
        """``list`` for synchronous code."""
        _args.text("prefix", prefix, "jobs-")
        return self._native.list_sync(prefix)

    async def force_release(self, name: str, *, lease_id: str | None = None) -> bool:
        """Deletes a lease (administrators). True if one was deleted, False if none was held.

        Given ``lease_id`` (the holder you were shown), deletes the lease only if that lease id
        still holds it: if it changed hands meanwhile, nothing is deleted and
        ``LeaseUnavailable`` is raised with the current ``.holder``. Without it, deletes
        whoever holds the lease at that moment. An orphan of the .NET origin (``orphan`` set
        by ``inspect``, its ``lease_id`` empty) is deleted as a lease is. A record that is not a
        lease is never deleted (``BackendError``, kind ``wrong_type``).
        """
        _forced_args(name, lease_id)
        return await self._native.force_release(name, lease_id=lease_id)

    def force_release_sync(self, name: str, *, lease_id: str | None = None) -> bool:
        """``force_release`` for synchronous code."""
        _forced_args(name, lease_id)
        return self._native.force_release_sync(name, lease_id=lease_id)

    # -- semaphores --------------------------------------------------------------------------

    def semaphore(
        self, name: str, limit: int | None, **options: Unpack[ContextOptions]
    ) -> SemaphoreContext:
        """A context manager (``async with`` or ``with``) holding a permit of semaphore
        ``name`` while its body runs (see the module's ``semaphore``)."""
        return SemaphoreContext(None, None, name, limit, options, client=self)

    async def try_acquire_permit(
        self, name: str, limit: int | None, **options: Unpack[LeaseOptions]
    ) -> Permit | None:
        """One attempt at a permit of semaphore ``name``: the permit, or None when all
        ``limit`` permits are held.

        ``limit`` is stored with the semaphore by its first acquire; another one raises
        ``LimitMismatch``, None uses the stored one. Options: as ``try_acquire``."""
        limit_arg(limit)
        native = lease_options("try_acquire_permit", "lease", name, options)
        return await self._native.try_acquire_permit(name, limit, native)

    def try_acquire_permit_sync(
        self, name: str, limit: int | None, **options: Unpack[LeaseOptions]
    ) -> Permit | None:
        """``try_acquire_permit`` for synchronous code."""
        limit_arg(limit)
        native = lease_options("try_acquire_permit_sync", "lease", name, options)
        return self._native.try_acquire_permit_sync(name, limit, native)

    async def acquire_permit(
        self, name: str, limit: int | None, **options: Unpack[AcquireOptions]
    ) -> Permit:
        """Takes a permit of semaphore ``name``, waiting up to ``wait`` seconds (None:
        forever; 0, the default: one attempt), woken by the release or expiry of any of its
        permits. Raises ``LeaseUnavailable`` (``.holders``: every permit's holder) when the
        wait runs out, ``LimitMismatch`` for a limit other than the stored one. Options: as
        ``acquire``."""
        limit_arg(limit)
        native = lease_options("acquire_permit", "acquire", name, options)
        return await self._native.acquire_permit(name, limit, native)

    def acquire_permit_sync(
        self, name: str, limit: int | None, **options: Unpack[AcquireOptions]
    ) -> Permit:
        """``acquire_permit`` for synchronous code (Ctrl-C interrupts a wait)."""
        limit_arg(limit)
        native = lease_options("acquire_permit_sync", "acquire", name, options)
        return self._native.acquire_permit_sync(name, limit, native)

    async def semaphore_info(self, name: str) -> SemaphoreInfo | None:
        """Semaphore ``name``: its stored limit and live permits (``holders``, each a
        ``LeaseInfo`` with its ``slot``); None for a name never used."""
        _args.text("name", name, "crawlers")
        return await self._native.semaphore_info(name)

    def semaphore_info_sync(self, name: str) -> SemaphoreInfo | None:
        """``semaphore_info`` for synchronous code."""
        _args.text("name", name, "crawlers")
        return self._native.semaphore_info_sync(name)

    async def list_semaphores(self, prefix: str = "") -> builtins.list[SemaphoreInfo]:
        """Every semaphore whose name starts with ``prefix`` (all by default), sorted by name:
        its stored limit and live permits (``holders``; none once all are released: the limit
        stays). Leases are never listed (``list`` lists them)."""
        _args.text("prefix", prefix, "crawlers-")
        return await self._native.list_semaphores(prefix)

    def list_semaphores_sync(self, prefix: str = "") -> builtins.list[SemaphoreInfo]:
        """``list_semaphores`` for synchronous code."""
        _args.text("prefix", prefix, "crawlers-")
        return self._native.list_semaphores_sync(prefix)

    async def set_semaphore_limit(self, name: str, limit: int) -> int | None:
        """Stores ``limit`` as the limit of semaphore ``name`` (an administrator's act);
        returns the limit it had (None: never used). Lowering it evicts nobody and admits
        nobody until fewer than ``limit`` permits are held."""
        _limit_args(name, limit)
        return await self._native.set_semaphore_limit(name, limit)

    def set_semaphore_limit_sync(self, name: str, limit: int) -> int | None:
        """``set_semaphore_limit`` for synchronous code."""
        _limit_args(name, limit)
        return self._native.set_semaphore_limit_sync(name, limit)

    async def force_release_permit(
        self, name: str, slot: int, *, lease_id: str | None = None
    ) -> bool:
        """Deletes the permit in ``slot`` of semaphore ``name`` (administrators), as
        ``force_release`` deletes a lease: given ``lease_id`` (the holder you were shown), only
        if it still holds that slot, else ``LeaseUnavailable`` with the current ``.holder``.
        True if one was deleted, False if the slot was free. Its holder learns the loss at its
        next renewal."""
        _forced_args(name, lease_id)
        return await self._native.force_release_permit(name, slot, lease_id=lease_id)

    def force_release_permit_sync(
        self, name: str, slot: int, *, lease_id: str | None = None
    ) -> bool:
        """``force_release_permit`` for synchronous code."""
        _forced_args(name, lease_id)
        return self._native.force_release_permit_sync(name, slot, lease_id=lease_id)

    @property
    def key_prefix(self) -> str:
        """The namespace of this client's leases (``lease:`` unless configured): the prefix of
        every key on Redis and etcd, a column of the leases table on PostgreSQL; SQLite ignores
        it (a file is one namespace)."""
        return self._native.key_prefix

    # -- lifetime ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Closes the client: stops renewing its leases and releases them (best effort,
        owner-checked); their handles end as lost with reason ``client_closed``, so a body
        under ``lease(..., on_lost="cancel")`` is cancelled. Then closes every connection the
        client opened (shared, per event loop, per thread, release notifications; the SQLite
        file). Afterwards the client refuses every call. Closing twice is harmless. A client
        dropped without closing closes its connections too, once its last lease is gone."""
        native, self.__native = self.__native, None
        if native is not None:
            await native.close()

    def close_sync(self) -> None:
        """``close`` for synchronous code."""
        native, self.__native = self.__native, None
        if native is not None:
            native.close_sync()

    async def __aenter__(self) -> LeaseClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __enter__(self) -> LeaseClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close_sync()

    def __repr__(self) -> str:
        native = self.__native
        return "LeaseClient(closed)" if native is None else repr(native)


def _limit_args(name: object, limit: object) -> None:
    _args.text("name", name, "crawlers")
    if limit is None:
        raise TypeError("limit=None is not a limit; give an int, e.g. limit=3")
    limit_arg(limit)


def _forced_args(name: object, lease_id: object) -> None:
    _args.text("name", name, "critical-section-lock")
    if lease_id is not None:
        _args.text("lease_id", lease_id, "9b2f0c1e-4f3a-4d61-9a0e-2b7c5d8e1f40")


def is_configured(dir: str | os.PathLike[str] = ".") -> bool:
    """Whether ``dir`` (appsettings.json, appsettings.Local.json) and the ``RedisLeasing__*``
    environment configure a store. Raises ``ConfigError`` when a configuration exists but is
    invalid, so a broken configuration is never mistaken for none."""
    return _native.is_configured(os.fspath(Path(dir)))


# -- the process-wide default client of lease() ------------------------------------------------

_default: tuple[int, LeaseClient] | None = None
_default_lock = threading.Lock()


def _default_client_sync() -> LeaseClient:
    global _default
    with _default_lock:
        if _default is None or _default[0] != os.getpid():
            _default = (os.getpid(), LeaseClient.from_config("."))
        return _default[1]


async def _default_client() -> LeaseClient:
    current = _default
    if current is not None and current[0] == os.getpid():
        return current[1]
    return await asyncio.to_thread(_default_client_sync)


# An Election made without url= or client= uses the default client of lease().
_election.use_default_client(_default_client, _default_client_sync)

_by_url: dict[str, tuple[int, LeaseClient]] = {}


def _url_client_sync(url: str) -> LeaseClient:
    with _default_lock:
        current = _by_url.get(url)
        if current is None or current[0] != os.getpid():
            current = (os.getpid(), LeaseClient.connect_sync(url))
            _by_url[url] = current
        return current[1]


def _getters(
    url: str | None,
) -> tuple[Callable[[], Awaitable[LeaseClient]], Callable[[], LeaseClient]]:
    """How a context without ``client=`` gets its client: the process-wide default one, or the
    one kept for ``url``."""
    if url is None:
        return _default_client, _default_client_sync
    if not isinstance(url, str):
        raise TypeError(
            f"url={url!r} is a {type(url).__name__}: give a store URL string such as "
            "'redis://127.0.0.1:6379' or 'sqlite:///tmp/leases.db'"
        )
    store_url = url

    def get_sync() -> LeaseClient:
        return _url_client_sync(store_url)

    async def get() -> LeaseClient:
        current = _by_url.get(store_url)
        if current is not None and current[0] == os.getpid():
            return current[1]
        return await asyncio.to_thread(get_sync)

    return get, get_sync


def _one_store(url: str | None, client: LeaseClient | None) -> None:
    if url is not None and client is not None:
        raise ValueError("give url= or client=, not both: a client already has its store")


def lease(
    name: str,
    *,
    url: str | None = None,
    client: LeaseClient | None = None,
    **options: Unpack[ContextOptions],
) -> LeaseContext:
    """Hold lease ``name`` while the body of ``async with`` / ``with`` runs.

    ``url`` (``redis://host:port``, ``rediss://...``, ``postgresql://...``, ``etcd://...``,
    ``sqlite:///path/leases.db``) names the
    store; one client per URL is kept for the process. Without ``url`` or ``client``, a
    process-wide client is made from ``appsettings.json`` / ``appsettings.Local.json`` /
    ``RedisLeasing__*`` environment variables in the current directory, and ``ConfigError`` says
    how to configure if nothing is. Options (see ``ContextOptions``): ``wait=0`` (the default)
    tries once and raises ``LeaseUnavailable`` (with ``.holder``), ``wait=5.0`` waits up to
    5 s, ``wait=None`` waits forever; ``backoff`` paces polls and limits attempts while
    waiting; ``duration``, ``renew_interval``, ``auto_renew`` (None: from the client's
    configuration), ``metadata`` and ``on_lost``.
    """
    _one_store(url, client)
    if client is not None:
        return client.lease(name, **options)
    get, get_sync = _getters(url)
    return LeaseContext(get, get_sync, name, options)


def semaphore(
    name: str,
    limit: int | None,
    *,
    url: str | None = None,
    client: LeaseClient | None = None,
    **options: Unpack[ContextOptions],
) -> SemaphoreContext:
    """Hold a permit of semaphore ``name`` (at most ``limit`` holders at once) while the body of
    ``async with`` / ``with`` runs; the ``Permit`` has its ``slot`` and ``fencing_token``.

    ``limit`` is stored with the semaphore by its first acquire: another limit raises
    ``LimitMismatch``, None uses the stored one. ``url``, ``client`` and the options are
    ``lease``'s: ``wait=0`` (the default) tries once and raises ``LeaseUnavailable`` (with
    ``.holders``), ``on_lost="cancel"`` cancels the body if the permit is lost.
    """
    _one_store(url, client)
    if client is not None:
        return client.semaphore(name, limit, **options)
    get, get_sync = _getters(url)
    return SemaphoreContext(get, get_sync, name, limit, options)
