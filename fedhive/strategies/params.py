"""Checks and parsing of settings, for every layer of fedhive: errors name the setting, the bad value and what is
accepted.

This is the lowest layer: it imports only the standard library, and the strategies, the server, the clients, the
simulator and the command line all use it, so that one setting is read the same way everywhere.

- :func:`integer` and :func:`number` are *the* integer and number checks (with an optional range);
  :func:`positive_int` and :func:`non_negative_int` are their two common ranges, by name.
- :func:`parse_pairs` is *the* ``KEY=VALUE`` parser, its values typed by :func:`parse_value`.
- :func:`short_repr` shows an untrusted value in an error or log line, cut short and never raising.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any, Callable, Iterable, TypeVar

T = TypeVar("T")


def short_repr(value: object, limit: int = 64) -> str:
    """``repr(value)`` cut to ``limit`` characters, for a log line or an event's detail (a huge int, whose ``repr``
    would raise, and any non-scalar are described by their type)."""
    if type(value) is int and abs(value) >= 10**limit:
        text = f"<int of {value.bit_length()} bits>"
    elif type(value) is str:
        text = repr(value[:limit + 1])
    elif type(value) in (int, float, bool):
        text = repr(value)
    else:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _bounds(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    parts = []
    if low is not None:
        parts.append(f"> {low}" if low_open else f">= {low}")
    if high is not None:
        parts.append(f"< {high}" if high_open else f"<= {high}")
    return "".join(" " + p if i == 0 else " and " + p for i, p in enumerate(parts))


def integer(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high]`` (either end may be left open with ``None``).

    Accepted: Python and numpy integers, and integral floats such as ``20.0`` (configs that went through JSON or
    TOML carry them). Refused: bools (``True`` is an int to Python, never a count), fractions such as ``2.5``,
    NaN and infinities, strings and anything else that is not a real number.

    Raises
    ------
    ValueError
        ``"<name> must be an integer >= <low> and <= <high>, got <value>"``.
    """
    ok = False
    if isinstance(value, bool):
        pass
    elif isinstance(value, numbers.Integral):
        ok = True
    elif isinstance(value, numbers.Real):
        try:
            ok = math.isfinite(value) and value == int(value)
        except (OverflowError, ValueError):
            ok = False
    if ok:
        v = int(value)
        ok = (low is None or v >= low) and (high is None or v <= high)
    if not ok:
        raise ValueError(f"{name} must be an integer{_bounds(low, high)}, got {value!r}")
    return v


def positive_int(name: str, value: Any) -> int:
    """:func:`integer` ``>= 1``."""
    return integer(name, value, low=1)


def non_negative_int(name: str, value: Any) -> int:
    """:func:`integer` ``>= 0``."""
    return integer(name, value, low=0)


def number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite ``float`` in ``[low, high]`` (``low_open``/``high_open``: that end excluded).

    Accepted: any real number (Python or numpy ints and floats, fractions). Refused: bools, NaN and infinities,
    integers too large for a float, strings and anything else.

    Raises
    ------
    ValueError
        ``"<name> must be a finite number > <low> and <= <high>, got <value>"``.
    """
    v = math.nan
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            v = float(value)
        except (OverflowError, ValueError):
            v = math.nan
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v > low or (not low_open and v == low)
    if ok and high is not None:
        ok = v < high or (not high_open and v == high)
    if not ok:
        raise ValueError(f"{name} must be a finite number{_bounds(low, high, low_open, high_open)}, got {value!r}")
    return v


def optional(fn: Callable[..., T], name: str, value: Any, **kw: Any) -> T | None:
    """``None`` stays ``None`` (meaning "no limit" / "choose automatically"); anything else is checked by ``fn``."""
    return None if value is None else fn(name, value, **kw)


def choice(name: str, value: Any, accepted: tuple[str, ...]) -> str:
    if value not in accepted:
        raise ValueError(f"{name} must be one of {', '.join(accepted)}; got {value!r}")
    return value


def parse_value(text: str) -> Any:
    """The value of a ``KEY=VALUE`` pair, typed: JSON where it parses (``3`` an int, ``0.5`` a float, ``true`` and
    ``false`` bools, ``null`` None, ``[1, 2]`` a list, ``"x"`` the string ``x``), else the (stripped) text itself."""
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_pairs(items: Iterable[str] | None, what: str, *, form: str = "KEY=VALUE",
                example: str = "") -> dict[str, Any]:
    """``["a=1", "b=x"]`` → ``{"a": 1, "b": "x"}``: keys stripped, values typed by :func:`parse_value`; a repeated
    key keeps its last value. ``None`` gives ``{}`` (an argparse ``append`` option never given).

    Raises
    ------
    ValueError
        For an item without ``=`` or with an empty key: ``"bad <what> <item>: write <form>, e.g. <example>"``.
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"bad {what} {item!r}: write {form}" + (f", e.g. {example}" if example else ""))
        out[key] = parse_value(raw)
    return out
