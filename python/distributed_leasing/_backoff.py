"""``Backoff``: how a waiting acquire paces its polls, and how many attempts it makes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from . import _native

MIN_POLL = 0.1
"""The shortest delay between two polls of a waiter, in seconds."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """A retry schedule for waiting on a held lease: a value, composable.

    ``Backoff.exponential(0.1, 1.0)`` (the default: 0.1 s doubling to 1 s, with jitter),
    ``Backoff.fixed(0.5)``, and either ``.limit(attempts)``::

        client = await LeaseClient.connect(url, backoff=Backoff.exponential(0.2, 2.0))
        lease = await client.acquire("job", wait=30, backoff=Backoff.fixed(0.5).limit(5))

    A waiter is woken by release notifications and at the holder's expiry; the delays only pace
    *polling*, which it does when notifications may be missed (SQLite across processes, a
    dropped Redis pub/sub connection). The limit caps the acquire attempts of one call, the
    first one included; when it is reached, ``LeaseUnavailable`` is raised as for a timeout.
    """

    kind: Literal["fixed", "exponential"]
    min: float
    """First (or every, for ``fixed``) delay between polls, in seconds."""
    max: float
    """Longest delay between polls, in seconds."""
    max_attempts: int | None = None
    """Acquire attempts allowed per call; None: as many as the wait allows."""

    def __post_init__(self) -> None:
        # Python's types here; the ranges are the core's (Backoff::new), with its messages.
        for label, value in (("min", self.min), ("max", self.max)):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"Backoff {label}={value!r} is not a finite number of seconds")
        if self.kind == "fixed" and self.max != self.min:
            raise ValueError("a fixed Backoff has min == max; use Backoff.fixed(delay)")
        if self.max_attempts is not None and (
            isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int)
        ):
            raise ValueError(
                f"Backoff limit {self.max_attempts!r} is not valid: give at least 1 attempt"
            )
        _native._check_backoff(self.min, self.max, self.max_attempts)

    @classmethod
    def fixed(cls, delay: float) -> Backoff:
        """The same delay between polls every time (at least 0.1 s)."""
        return cls("fixed", float(delay), float(delay))

    @classmethod
    def exponential(cls, min: float = MIN_POLL, max: float = 1.0) -> Backoff:
        """``min`` doubling up to ``max``; each delay drawn between half and all of its value,
        never below ``min``."""
        return cls("exponential", float(min), float(max))

    def limit(self, attempts: int) -> Backoff:
        """The same schedule, giving up after ``attempts`` acquire attempts."""
        return Backoff(self.kind, self.min, self.max, attempts)

    def _native(self) -> tuple[float, float, int | None]:
        return (self.min, self.max, self.max_attempts)


def _native_backoff(backoff: Backoff | None) -> tuple[float, float, int | None] | None:
    if backoff is None:
        return None
    if not isinstance(backoff, Backoff):
        raise TypeError(
            f"backoff must be a distributed_leasing.Backoff, not {type(backoff).__name__}"
        )
    return backoff._native()
