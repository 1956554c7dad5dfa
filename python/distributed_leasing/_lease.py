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
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from . import _args
from ._native import Lease, LeaseLost

if TYPE_CHECKING:
    from ._backoff import Backoff
    from ._client import LeaseClient

OnLost = Literal["cancel", "ignore"]


def _lost_error(lease: Lease) -> LeaseLost:
    reason = lease.lost_reason or "expired"
    err = LeaseLost(
        f"lease {lease.name!r} was lost while its body ran ({reason}): "
        "work done after the loss was not protected; acquire it again"
    )
    err.name = lease.name
    err.reason = reason
    return err


class LeaseContext:
    """What ``lease(...)`` and ``LeaseClient.lease(...)`` return: an async and a sync
    context manager."""

    __slots__ = (
        "_auto_renew",
        "_backoff",
        "_cancelling",
        "_client",
        "_duration",
        "_get_client",
        "_get_client_sync",
        "_lease",
        "_metadata",
        "_name",
        "_on_lost",
        "_renew_interval",
        "_state",
        "_task",
        "_wait",
    )

    def __init__(
        self,
        get_client: Callable[[], Awaitable[LeaseClient]],
        get_client_sync: Callable[[], LeaseClient],
        name: str,
        *,
        wait: float | None,
        on_lost: OnLost,
        duration: float | None,
        renew_interval: float | None,
        auto_renew: bool | None,
        metadata: Mapping[str, str] | None,
        backoff: Backoff | None = None,
    ) -> None:
        # Checked here, when lease(...) is called, not at the first `with`.
        meta = _args.lease_args(
            name,
            wait=wait,
            duration=duration,
            renew_interval=renew_interval,
            auto_renew=auto_renew,
            metadata_=metadata,
        )
        if on_lost not in ("cancel", "ignore"):
            raise ValueError(f"on_lost={on_lost!r} is not valid: use 'cancel' or 'ignore'")
        self._get_client = get_client
        self._get_client_sync = get_client_sync
        self._name = name
        self._wait = wait
        self._on_lost = on_lost
        self._duration = duration
        self._renew_interval = renew_interval
        self._auto_renew = auto_renew
        self._metadata = meta
        self._backoff = backoff
        self._lease: Lease | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._state = "new"

    # -- async -------------------------------------------------------------------------------

    async def __aenter__(self) -> Lease:
        if self._state != "new":
            raise RuntimeError("a LeaseContext can be entered only once; call lease(...) again")
        client = await self._get_client()
        lease = await client.acquire(
            self._name,
            wait=self._wait,
            duration=self._duration,
            renew_interval=self._renew_interval,
            auto_renew=self._auto_renew,
            metadata=self._metadata,
            backoff=self._backoff,
        )
        self._lease = lease
        self._state = "inside"
        if self._on_lost == "cancel":
            task = asyncio.current_task()
            if task is not None:
                self._task = task
                self._cancelling = task.cancelling()
                lease._on_end(asyncio.get_running_loop(), self._on_end)
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
        # Shielded: a cancellation of the body must not abort the release half-way. A release
        # that finds another holder (or no lease) means the lease was lost during the body
        # before a renewal noticed: the handle is lost, and the loss is reported here.
        released = await asyncio.shield(lease.release())
        lost = lease.lost_reason is not None  # read again: the release may have ended it
        if not released and lost and self._on_lost == "cancel" and exc_type is None:
            raise _lost_error(lease)

    # -- sync --------------------------------------------------------------------------------

    def __enter__(self) -> Lease:
        if self._state != "new":
            raise RuntimeError("a LeaseContext can be entered only once; call lease(...) again")
        client = self._get_client_sync()
        lease = client.acquire_sync(
            self._name,
            wait=self._wait,
            duration=self._duration,
            renew_interval=self._renew_interval,
            auto_renew=self._auto_renew,
            metadata=self._metadata,
            backoff=self._backoff,
        )
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
        released = lease.release_blocking()
        lost = lease.lost_reason is not None  # read again: the release may have ended it
        if not released and lost and self._on_lost == "cancel" and exc_type is None:
            raise _lost_error(lease)
