"""distributed_leasing: leases (locks with a time limit) shared by many processes and machines.

    async with distributed_leasing.lease("critical-section-lock") as lease:
        ...  # one holder everywhere; renewed in the background; cancelled if lost

    async with distributed_leasing.semaphore("crawlers", limit=3) as permit:
        ...  # at most 3 holders at once; permit.slot and permit.fencing_token fence each

    async with distributed_leasing.Election("scheduler").campaign() as term:
        ...  # the leader, term.token its term; cancelled if leadership is lost

The engine is Rust (tokio); this package is a thin layer over ``distributed_leasing._native``.
Docstrings of the native classes live in ``_native.pyi``.
"""

from __future__ import annotations

import atexit
import logging
import signal
from types import FrameType

from . import _native
from ._backoff import Backoff
from ._client import ConfigWarning, LeaseClient, is_configured, lease, semaphore
from ._election import Campaign, Election, LeaderInfo, Term
from ._lease import LeaseContext
from ._native import (
    BackendError,
    ConfigError,
    Lease,
    LeaseError,
    LeaseEvent,
    LeaseEvents,
    LeaseInfo,
    LeaseLost,
    LeaseUnavailable,
    LimitMismatch,
    Permit,
    SemaphoreInfo,
)
from ._options import AcquireOptions, ClientOptions, ContextOptions, LeaseOptions, OnLost
from ._semaphore import SemaphoreContext

# The library's records go to the logger "distributed_leasing" (acquire, renew, release, wait
# and loss, from the Rust core); as a library it prints nothing unless the application
# configures logging (e.g. logging.basicConfig(level=logging.DEBUG)).
logging.getLogger("distributed_leasing").addHandler(logging.NullHandler())


def metrics() -> dict[str, int]:
    """The process's lease counters, named as the .NET origin's metrics: ``leasing.*``.

    ``leasing.acquisitions.total``, ``leasing.acquisitions.refused.total``,
    ``leasing.renewals.total``, ``leasing.renewal.failures.total``,
    ``leasing.leases_lost.total``, ``leasing.releases.total``,
    ``leasing.wait.notifications.total`` (release notifications received) and the gauge
    ``leasing.active_leases.current``.
    """
    return dict(_native.metrics())


def refresh_logging() -> None:
    """Re-reads the level of the ``distributed_leasing`` logger now.

    The library checks it at every call into it, so that a level that is off costs nothing;
    call this after changing logging levels if no call into the library follows (for example
    to see the renewals of a lease already held).
    """
    _native._refresh_logging()


def release_on_sigterm() -> None:
    """Opt in: SIGTERM (``docker stop``, systemd, Kubernetes) ends the process as
    ``sys.exit(143)`` would, so ``with`` and ``async with`` bodies unwind and every lease
    still held is released at exit, instead of being left to expire.

    Python's default SIGTERM ends the process at once, skipping that release: the lease
    then keeps everyone else out until its duration passes. A library must not install
    signal handlers by itself, hence this one line. Call it from the main thread; a handler
    installed before is still called first.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if callable(previous):
            previous(signum, frame)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)


# Before the interpreter finalizes, stop tokio threads from taking the GIL and wait for those
# inside to leave (a tokio thread entering a finalizing interpreter crashes the process).
atexit.register(_native._shutdown)

# The version of Cargo.toml's [package], the one place it is set: compiled into the native
# module, and the wheel's metadata version (PEP 440 spelling) that pip shows.
__version__: str = _native.__version__

__all__ = [
    "AcquireOptions",
    "BackendError",
    "Backoff",
    "Campaign",
    "ClientOptions",
    "ConfigError",
    "ConfigWarning",
    "ContextOptions",
    "Election",
    "LeaderInfo",
    "Lease",
    "LeaseClient",
    "LeaseContext",
    "LeaseError",
    "LeaseEvent",
    "LeaseEvents",
    "LeaseInfo",
    "LeaseLost",
    "LeaseOptions",
    "LeaseUnavailable",
    "LimitMismatch",
    "OnLost",
    "Permit",
    "SemaphoreContext",
    "SemaphoreInfo",
    "Term",
    "is_configured",
    "lease",
    "metrics",
    "refresh_logging",
    "release_on_sigterm",
    "semaphore",
]
