"""The ``lease(...)`` context manager: acquire on enter, release on exit, and what happens on loss.

``on_lost="cancel"`` (the default) works as ``asyncio.timeout`` does: when the lease is lost while
the body runs, the body's task is cancelled, and the ``CancelledError`` that comes out of the body
is turned into ``LeaseLost``. A cancellation from anywhere else still propagates as a
cancellation. ``on_lost="ignore"`` only sets ``lease.is_lost`` and resolves ``lease.wait_lost()``.

The same object works with ``with`` in synchronous code; a synchronous body cannot be
interrupted, so with ``on_lost="cancel"`` a loss during the body raises ``LeaseLost`` at exit.
A loss that only the release at exit finds (the lease was force-released and taken by another
holder before a renewal noticed) is reported the same way, async and sync.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol

from ._native import Lease, LeaseLost, Permit
from ._native import _Client as _NativeClient
from ._options import ContextOptions, OnLost, lease_options


class _HasNative(Protocol):
    """What a context needs of a ``LeaseClient``: its native client (named structurally, so that
    this module does not import ``_client``, which imports this one)."""

    @property
    def _native(self) -> _NativeClient: ...


def _lost_error(lease: Lease) -> LeaseLost:
    reason = lease.lost_reason or "expired"
    what = (
        f"the permit (slot {lease.slot}) of semaphore {lease.name!r}"
        if isinstance(lease, Permit)
        else f"lease {lease.name!r}"
    )
    err = LeaseLost(
        f"{what} was lost while its body ran ({reason}): "
        "work done after the loss was not protected; acquire it again"
    )
    err.name = lease.name
    err.reason = reason
    return err


def _weak_callback(method: Callable[[str | None], None]) -> Callable[[str | None], None]:
    """``method`` (bound) through a weak reference to its object: a no-op once it is gone.
    (What ``weakref.WeakMethod`` does, without its Python-level object: one per ``async with``.)
    """
    ref = weakref.ref(method.__self__)  # type: ignore[attr-defined]
    func = method.__func__  # type: ignore[attr-defined]

    def call(reason: str | None) -> None:
        target = ref()
        if target is not None:
            func(target, reason)

    return call


class LeaseContext:
    """What ``lease(...)`` and ``LeaseClient.lease(...)`` return: an async and a sync
    context manager. A subclass takes something else than the lease ``name`` (a semaphore's
    permit, see ``_semaphore``) by overriding ``_acquire`` and ``_acquire_sync``."""

    __slots__ = (
        "__weakref__",  # the loss hook holds the context weakly (see `__aenter__`)
        "_cancelling",
        "_client",
        "_get_client",
        "_get_client_sync",
        "_lease",
        "_name",
        "_on_lost",
        "_options",
        "_state",
        "_task",
    )

    def __init__(
        self,
        get_client: Callable[[], Awaitable[_HasNative]] | None,
        get_client_sync: Callable[[], _HasNative] | None,
        name: str,
        options: ContextOptions,
        client: _HasNative | None = None,
        *,
        announce: bool = False,
        call: str = "lease",
    ) -> None:
        """The client is ``client``, else the one the getters give at the first ``with``;
        ``announce``: an election's campaign (see ``lease_options``); ``call``: the entry
        point, named by errors in the options."""
        # Checked here, when lease(...) is called, not at the first `with`.
        self._options = lease_options(call, "context", name, options, announce=announce)
        self._on_lost: OnLost = options.get("on_lost", "cancel")
        self._client = client
        self._get_client = get_client
        self._get_client_sync = get_client_sync
        self._name = name
        self._lease: Lease | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._state = "new"

    async def _acquire(self, client: _HasNative) -> Lease:
        return await client._native.acquire(self._name, self._options)

    def _acquire_sync(self, client: _HasNative) -> Lease:
        return client._native.acquire_sync(self._name, self._options)

    # -- async -------------------------------------------------------------------------------

    async def __aenter__(self) -> Lease:
        if self._state != "new":
            raise RuntimeError("a LeaseContext can be entered only once; call lease(...) again")
        client = self._client
        if client is None:
            assert self._get_client is not None
            client = await self._get_client()
        lease = await self._acquire(client)
        self._lease = lease
        self._state = "inside"
        # A loop closed while this body still waits (its task kept alive by a reference)
        # never runs it again: the lease is then released instead of renewed forever.
        loop = asyncio.get_running_loop()
        lease._release_if_loop_closed(loop)
        if self._on_lost == "cancel":
            task = asyncio.current_task()
            if task is not None:
                self._task = task
                self._cancelling = task.cancelling()
                # Held weakly: the Rust lease keeps its end hooks, where Python's collector
                # cannot see them, so a strong reference back to this context would keep an
                # abandoned context (its task left pending by a closed loop) and its lease
                # alive, and renewed, for as long as the process lives.
                lease._on_end(loop, _weak_callback(self._on_end))
        return lease

    def _on_end(self, reason: str | None) -> None:
        # Runs on the event loop thread, between steps of the body's task.
        if reason is not None and self._state == "inside" and self._task is not None:
            self._state = "cancelling"
            self._task.cancel(msg=f"lease {self._name!r} lost: {reason}")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease = self._lease
        assert lease is not None
        we_cancelled = self._state == "cancelling"
        self._state = "exited"
        if exc_type is GeneratorExit:
            # The coroutine is being closed without a loop to run it (abandoned with its closed
            # loop, and now collected): nothing may be awaited here. The lease was released when
            # its loop was found closed, or is when this handle is dropped.
            return
        if we_cancelled:
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and (
                exc_type is None or issubclass(exc_type, asyncio.CancelledError)
            ):
                raise _lost_error(lease) from exc
            return
        if lease.is_lost:
            if self._on_lost == "cancel" and exc_type is None:
                raise _lost_error(lease)
            return
        # A cancellation while this awaits does not abort the release: a release is one request,
        # which runs to its end once started (src/python/executor.rs), so no shield is needed.
        # A release that finds another holder (or no lease) means the lease was lost during the
        # body before a renewal noticed: the handle is lost, and the loss is reported here.
        released = await lease.release()
        # Not released: read the loss again, the release may have ended the lease as lost.
        if not released and self._on_lost == "cancel" and exc_type is None and lease.is_lost:
            raise _lost_error(lease)

    # -- sync --------------------------------------------------------------------------------

    def __enter__(self) -> Lease:
        if self._state != "new":
            raise RuntimeError("a LeaseContext can be entered only once; call lease(...) again")
        client = self._client
        if client is None:
            assert self._get_client_sync is not None
            client = self._get_client_sync()
        lease = self._acquire_sync(client)
        self._lease = lease
        self._state = "inside"
        return lease

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease = self._lease
        assert lease is not None
        self._state = "exited"
        if lease.is_lost:
            if self._on_lost == "cancel" and exc_type is None:
                raise _lost_error(lease)
            return
        released = lease.release_sync()
        if not released and self._on_lost == "cancel" and exc_type is None and lease.is_lost:
            raise _lost_error(lease)
