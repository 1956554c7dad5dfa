"""The ``semaphore(...)`` context manager: a permit of a semaphore held while the body runs.

It is ``LeaseContext`` taking a permit instead of a lease (a permit is a lease of its own over
its slot), so acquire on enter, release on exit and ``on_lost="cancel"`` are the lease's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from . import _args
from ._lease import LeaseContext, _HasNative
from ._native import Permit
from ._options import ContextOptions


def limit_arg(limit: object) -> None:
    """``limit`` must be an int (its range is the core's to check) or None."""
    if limit is None or (isinstance(limit, int) and not isinstance(limit, bool)):
        return
    raise TypeError(
        f"limit={_args._shown(limit)} is a {type(limit).__name__}; give an int, the number "
        "of permits held at once (e.g. limit=3), or None to use the stored limit"
    )


class SemaphoreContext(LeaseContext):
    """What ``semaphore(...)`` and ``LeaseClient.semaphore(...)`` return: an async and a sync
    context manager yielding the ``Permit``."""

    __slots__ = ("_limit",)

    def __init__(
        self,
        get_client: Callable[[], Awaitable[_HasNative]] | None,
        get_client_sync: Callable[[], _HasNative] | None,
        name: str,
        limit: int | None,
        options: ContextOptions,
        client: _HasNative | None = None,
    ) -> None:
        limit_arg(limit)
        super().__init__(get_client, get_client_sync, name, options, client, call="semaphore")
        self._limit = limit

    async def _acquire(self, client: _HasNative) -> Permit:
        return await client._native.acquire_permit(self._name, self._limit, self._options)

    def _acquire_sync(self, client: _HasNative) -> Permit:
        return client._native.acquire_permit_sync(self._name, self._limit, self._options)

    async def __aenter__(self) -> Permit:
        permit = await super().__aenter__()
        assert isinstance(permit, Permit)
        return permit

    def __enter__(self) -> Permit:
        permit = super().__enter__()
        assert isinstance(permit, Permit)
        return permit
