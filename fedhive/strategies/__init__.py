"""fedhive's strategies: pure, event-driven, numpy only (no Flower, no clock, no I/O).

``build(name, params)`` makes one from its name and snake_case keywords, as in ``shared/ALGORITHMS.md`` §8.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from .base import APPLIED, BUFFERED, ClientInfo, Dispatch, Outcome, Strategy, Task, Update
from .fedasmu import FedASMU
from .fedasync import FedAsync
from .fedavg import FedAvg
from .fedbuff import FedBuff
from .fedcompass import FedCompass
from .fedfix import FedFix

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedasync": FedAsync,
    "fedbuff": FedBuff,
    "fedfix": FedFix,
    "fedcompass": FedCompass,
    "fedasmu": FedASMU,
}


def parameters(name: str) -> dict[str, Any]:
    """The keywords a strategy accepts, with their defaults."""
    cls = _lookup(name)
    sig = inspect.signature(cls.__init__)
    return {p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def build(name: str, params: Mapping[str, Any] | None = None) -> Strategy:
    """Make the strategy called ``name`` with keyword ``params``.

    Raises
    ------
    ValueError
        For an unknown strategy name or parameter (the message lists the valid ones) or a bad value.
    """
    cls = _lookup(name)
    params = dict(params or {})
    valid = parameters(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for strategy {name!r}; valid: {', '.join(sorted(valid))}"
        )
    return cls(**params)


def _lookup(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}") from None


__all__ = [
    "APPLIED", "BUFFERED", "ClientInfo", "FedASMU", "FedAsync", "FedAvg", "FedBuff", "FedCompass", "FedFix",
    "Dispatch", "Outcome", "STRATEGIES", "Strategy", "Task", "Update", "build", "parameters",
]
