"""distributed_leasing: leases (locks with a time limit) shared by many processes and machines.

    async with distributed_leasing.lease("critical-section-lock") as lease:
        ...  # one holder everywhere; renewed in the background; cancelled if lost

The engine is Rust (tokio); this package is a thin layer over ``distributed_leasing._native``.
Docstrings of the native classes live in ``_native.pyi``.
"""

from __future__ import annotations

import atexit

from . import _native
from ._client import ConfigWarning, LeaseClient, is_configured, lease
from ._lease import LeaseContext, OnLost
from ._native import (
    BackendError,
    ConfigError,
    Lease,
    LeaseError,
    LeaseInfo,
    LeaseLost,
    LeaseUnavailable,
)

# Before the interpreter finalizes, stop tokio threads from taking the GIL and wait for those
# inside to leave (a tokio thread entering a finalizing interpreter crashes the process).
atexit.register(_native._shutdown)

__version__: str = _native.__version__

__all__ = [
    "BackendError",
    "ConfigError",
    "ConfigWarning",
    "Lease",
    "LeaseClient",
    "LeaseContext",
    "LeaseError",
    "LeaseInfo",
    "LeaseLost",
    "LeaseUnavailable",
    "OnLost",
    "is_configured",
    "lease",
]
