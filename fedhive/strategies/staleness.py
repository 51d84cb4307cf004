"""Staleness functions ``s(τ)`` (FedAsync's definitions, Xie et al. 2019), shared by every strategy.

``τ`` is counted in server versions. Every function is 1 at ``τ = 0`` and never increases with ``τ``: stale updates
weigh less. (The FedCompass repository and legacy APPFL use ``(τ+1)^(+a)``, which makes stale updates weigh more;
that is a bug, and a test pins the sign here.)
"""

from __future__ import annotations

from typing import Callable

from .params import number

StalenessFn = Callable[[int], float]

STALENESS_KINDS = ("constant", "polynomial", "hinge")


def constant(tau: int) -> float:
    """``s(τ) = 1``."""
    return 1.0


def polynomial(tau: int, a: float = 0.5) -> float:
    """``s(τ) = (τ + 1)^(−a)``."""
    return (tau + 1.0) ** (-a)


def hinge(tau: int, a: float = 10.0, b: float = 4.0) -> float:
    """``s(τ) = 1`` if ``τ ≤ b``, else ``1 / (a·(τ − b) + 1)``."""
    if tau <= b:
        return 1.0
    return 1.0 / (a * (tau - b) + 1.0)


#: Each kind's ``(a, b)`` when a strategy is not given them (FedAsync's definitions).
DEFAULTS: dict[str, tuple[float | None, float | None]] = {"constant": (None, None), "polynomial": (0.5, None),
                                                          "hinge": (10.0, 4.0)}


def staleness_parameters(kind: str, a: float | None, b: float | None) -> tuple[float | None, float | None]:
    """``(a, b)`` as ``s(τ)`` uses them: ``None`` takes ``kind``'s default (polynomial ``a = 0.5``; hinge ``a = 10``,
    ``b = 4``), so ``staleness="hinge"`` alone is FedAsync's hinge, not a hinge with the polynomial's ``a``. What a
    strategy's ``config()`` reports."""
    da, db = DEFAULTS.get(kind, (None, None))
    return (da if a is None else a), (db if b is None else b)


def make_staleness(kind: str = "polynomial", a: float | None = None, b: float | None = None) -> StalenessFn:
    """Build ``s(τ)`` from a strategy's ``staleness``, ``staleness_a`` and ``staleness_b`` settings.

    Defaults follow FedAsync: polynomial ``a = 0.5``; hinge ``a = 10``, ``b = 4``.
    """
    if kind == "constant":
        return constant
    if kind == "polynomial":
        pa = 0.5 if a is None else number("staleness_a (of polynomial staleness)", a, low=0)
        return lambda tau: polynomial(tau, pa)
    if kind == "hinge":
        ha = 10.0 if a is None else number("staleness_a (of hinge staleness)", a, low=0)
        hb = 4.0 if b is None else number("staleness_b (of hinge staleness)", b, low=0)
        return lambda tau: hinge(tau, ha, hb)
    raise ValueError(f"unknown staleness function {kind!r}; accepted: {', '.join(STALENESS_KINDS)}")
