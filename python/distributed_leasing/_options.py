"""The keyword options of every entry point, declared once.

A lease's options (``lease()``, ``LeaseClient.lease``, ``acquire``, ``try_acquire`` and their
``_sync`` variants) and a client's (``connect``, ``connect_sync``) are declared by the native
classes ``_native._Options`` and ``_native._ClientOptions``, which convert and range-check them;
the ``TypedDict`` s here give type checkers the same names (a test holds the two equal), and
the type checks of ``_args`` are chosen from their annotations. Every entry point takes
``**options`` and builds the native object with :func:`lease_options` or
:func:`client_options`, so an option is added in one place on each side.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypedDict, get_type_hints

from . import _args, _native
from ._backoff import Backoff, _native_backoff

OnLost = Literal["cancel", "ignore"]


class LeaseOptions(TypedDict, total=False):
    """The options of one attempt (``try_acquire``); None means the client's default."""

    duration: float | None
    """Seconds the lease lasts unless renewed (default: the client's, 30 s)."""
    renew_interval: float | None
    """Seconds between background renewals (default: two thirds of the duration, half of it under
    3 s; at most the duration minus max(10 %, min(1 s, half)), as ``AutoRenewInterval``)."""
    auto_renew: bool | None
    """Whether Rust renews the lease in the background (default: the client's, True)."""
    metadata: Mapping[str, str] | None
    """Stored with the lease and shown to whoever is refused (e.g. ``instanceId``)."""


class AcquireOptions(LeaseOptions, total=False):
    """The options of ``acquire``: those of an attempt, and how to wait."""

    wait: float | None
    """Seconds to wait for a held lease: 0 (the default) tries once, None waits forever."""
    backoff: Backoff | None
    """How a waiter paces its polls and how many attempts it makes (see ``Backoff``)."""


class ContextOptions(AcquireOptions, total=False):
    """The options of ``lease(...)``: those of ``acquire``, and what a loss does."""

    on_lost: OnLost
    """``"cancel"`` (default): a loss cancels the body and raises ``LeaseLost``;
    ``"ignore"``: only ``lease.is_lost`` tells."""


class ClientOptions(TypedDict, total=False):
    """The options of ``LeaseClient.connect``; None means the default."""

    duration: float | None
    """Default lease duration in seconds (30)."""
    renew_interval: float | None
    """Default renewal interval in seconds (two thirds of the duration, half of it under 3 s; at
    most the duration minus max(10 %, min(1 s, half)), as ``AutoRenewInterval``)."""
    auto_renew: bool | None
    """Whether leases are renewed in the background by default (True)."""
    key_prefix: str | None
    """Prefix of the Redis keys of leases (``lease:``)."""
    connect_timeout: float | None
    """Seconds to wait for a connection (5)."""
    operation_timeout: float | None
    """Seconds to wait for one reply (5); on SQLite, for another process's lock on the file."""
    ca_file: str | os.PathLike[str] | None
    """A PEM file of CA certificates to trust for ``rediss://``."""
    backoff: Backoff | None
    """The default ``Backoff`` of waiting acquires."""


def _no_check(param: str, value: object) -> None:
    del param, value


def _text(param: str, value: object) -> None:
    if value is not None:
        _args.text(param, value, "lease:")


def _path(param: str, value: object) -> None:
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"{param}={value!r} is a {type(value).__name__}; give a path (str or os.PathLike)"
        )


def _on_lost(param: str, value: object) -> None:
    if value not in ("cancel", "ignore"):
        raise ValueError(f"{param}={value!r} is not valid: use 'cancel' or 'ignore'")


def _backoff(param: str, value: object) -> None:
    if value is not None and not isinstance(value, Backoff):
        raise TypeError(
            f"{param} must be a distributed_leasing.Backoff, not {type(value).__name__}"
        )


def _check_of(hint: object) -> Callable[[str, object], None]:
    """The type check of an option, from its annotation."""
    text = repr(hint)
    if "Mapping" in text:
        return _no_check  # converted by _args.metadata, which checks it
    if "Backoff" in text:
        return _backoff
    if "PathLike" in text:
        return _path
    if "Literal" in text:
        return _on_lost
    if "bool" in text:
        return _args.flag
    if "float" in text:
        return _args.seconds
    if "str" in text:
        return _text
    raise AssertionError(f"no check for an option of type {text}")


def _checks(kind: type) -> dict[str, Callable[[str, object], None]]:
    hints = get_type_hints(kind)
    return {key: _check_of(hint) for key, hint in hints.items()}


_LEASE = _checks(LeaseOptions)
_ACQUIRE = _checks(AcquireOptions)
_CONTEXT = _checks(ContextOptions)
_CLIENT = _checks(ClientOptions)
_KINDS = {"lease": _LEASE, "acquire": _ACQUIRE, "context": _CONTEXT, "client": _CLIENT}


def _check(
    call: str, checks: Mapping[str, Callable[[str, object], None]], options: Mapping[str, object]
) -> None:
    for key, value in options.items():
        check = checks.get(key)
        if check is None:
            close = difflib.get_close_matches(key, list(checks), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(
                f"{call}() got an unexpected keyword argument {key!r}{hint}; "
                f"its options are: {', '.join(sorted(checks))}"
            )
        check(key, value)


_DEFAULT = _native._Options()


def lease_options(
    call: str,
    kind: Literal["lease", "acquire", "context"],
    name: object,
    options: Mapping[str, object],
    *,
    announce: bool = False,
) -> _native._Options:
    """Checks ``name`` and the keyword ``options`` of ``call`` (an entry point taking the
    options of ``kind``) and builds the native options (``on_lost`` is left out).
    ``announce`` is no option of the entry points: an election's campaign sets it, so that
    observers are told of its acquisition at once."""
    if not options and not announce and type(name) is str and name.isascii():
        # The common call (an ASCII name, no options): one shared, frozen default, built once
        # (the checks and a native object per acquire were a tenth of a cycle's instructions).
        # An ASCII str is valid text; any other name is checked below.
        return _DEFAULT
    _args.text("name", name, "critical-section-lock")
    if not options and not announce:
        return _DEFAULT
    _check(call, _KINDS[kind], options)
    native: dict[str, Any] = {k: v for k, v in options.items() if k != "on_lost"}
    if announce:
        native["announce"] = True
    if "metadata" in native:
        native["metadata"] = _args.metadata(native["metadata"])
    if "backoff" in native:
        native["backoff"] = _native_backoff(native["backoff"])
    return _native._Options(**native)


def client_options(url: object, options: Mapping[str, object]) -> _native._ClientOptions:
    """Checks the URL and the keyword ``options`` of ``connect`` and builds the native ones."""
    _args.text("url", url, "redis://127.0.0.1:6379")
    _check("connect", _CLIENT, options)
    native: dict[str, Any] = dict(options)
    if native.get("ca_file") is not None:
        native["ca_file"] = os.fspath(native["ca_file"])
    if "backoff" in native:
        native["backoff"] = _native_backoff(native["backoff"])
    return _native._ClientOptions(**native)
