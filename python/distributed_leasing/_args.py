"""Type checks of the public API's arguments, before anything is sent.

Each refusal is a ``TypeError`` that names the argument, the type of the value given and what
to give instead. Types are strict: ``"5"`` is not five seconds, ``"yes"`` is not True, ``1`` is
not a flag and a list of pairs is not a mapping. Ranges (negative or NaN durations, metadata
above its limits, bad names) are checked by the Rust core, which raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_SECONDS_HINTS = {
    "wait": "a number of seconds (e.g. wait=5.0), 0 to try once, or None to wait forever",
}


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    # Other real numbers (numpy scalars, Fraction, Decimal) convert with float(); str and bytes
    # have no __float__ and are refused.
    kind = type(value)
    return hasattr(kind, "__float__") or hasattr(kind, "__index__")


def seconds(param: str, value: object) -> None:
    """``value`` must be None or a real number (not a bool, not a string)."""
    if value is None or _is_number(value):
        return
    what = _SECONDS_HINTS.get(
        param, f"a number of seconds (e.g. {param}=30.0), or None for the configured default"
    )
    raise TypeError(f"{param}={_shown(value)} is a {type(value).__name__}; give {what}")


def flag(param: str, value: object) -> None:
    """``value`` must be None, True or False (not 1, not "yes")."""
    if value is None or isinstance(value, bool):
        return
    raise TypeError(
        f"{param}={_shown(value)} is a {type(value).__name__}; give True or False "
        "(or None for the configured default)"
    )


def _encodable(param: str, value: str, example: str) -> None:
    """``value`` must be valid Unicode text (no lone surrogate, which UTF-8 cannot hold)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{param}={_shown(value)} has a lone surrogate ({value[e.start]!r} at position "
            f"{e.start}), which is not text that can be stored; give valid characters, "
            f"e.g. {example!r}"
        ) from None


def text(param: str, value: object, example: str) -> None:
    """``value`` must be a str of valid Unicode text."""
    if isinstance(value, str):
        _encodable(param, value, example)
        return
    raise TypeError(
        f"{param}={_shown(value)} is a {type(value).__name__}; give a str, e.g. {example!r}"
    )


def metadata(value: object) -> dict[str, str] | None:
    """``value`` must be None or a mapping (its keys and values are checked by the core);
    returns a dict copy."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(
            f"metadata={_shown(value)} is a {type(value).__name__}; give a dict of str to str, "
            "e.g. metadata={'instanceId': 'us-east-1'} (or None)"
        )
    out: dict[Any, Any] = dict(value)
    for k, v in out.items():
        # Types are the core's to check (it names the key); text that cannot be encoded is ours.
        if isinstance(k, str):
            _encodable("metadata key", k, "instanceId")
        if isinstance(v, str):
            _encodable(f"metadata[{_shown(k)}]", v, "us-east-1")
    return out
