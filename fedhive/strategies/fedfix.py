"""FedFix: aggregation at fixed times (Fraboni, Vidal, Kameni, Lorenzi; JMLR 2023, arXiv 2206.10189).

Source [AUTH]: ``Accenture/Labs-Federated-Learning``, branch ``asynchronous_FL``, ``FL/server.py`` and
``FL/clients_schedule.py`` (commit 1c896f0).

The server aggregates at ``t = Δt, 2Δt, …``. ``S_n`` is every client that returned since the previous aggregation;
``w ← w + η_g · Σ_{i∈S_n} d_i · (w_i − w_sent,i)`` with ``d_i = ceil(τ_i/Δt) · p_i`` and ``τ_i`` the client's
duration per task. Only the clients in ``S_n`` receive the new ``w`` and restart; a returned client waits for the
next aggregation.

[OURS] choices:
- ``τ_i`` is estimated as an exponential moving average of observed durations (dispatch to return),
  ``τ ← (1 − β)·τ + β·observed`` with ``β = duration_momentum``; the first estimate is the first observation.
  ``ceil`` is taken with a 1e-9 relative tolerance so that a duration equal to ``Δt`` up to rounding counts as one
  interval.
- Without an explicit ``interval``, ``Δt`` = 0.5 × the median duration of the first ``N`` returns (``N`` = clients
  known at start, less those that failed before returning). Until then returned clients wait; the first aggregation
  happens when the ``N``-th return arrives and the fixed schedule starts from there.
- An interval with no return changes nothing and does not count as a version.
- Non-trainable tensors take the plain mean of the returned clients' values.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from . import params as P
from .base import (BUFFERED, DEFAULT_MAX_WEIGHT_RATIO, ClientInfo, Dispatch, Outcome, Params, Strategy, Task, Update,
                   frozen_config, presets)
from .weighted_sum import mean_of, weighted_sum

_CEIL_TOLERANCE = 1e-9


def interval_weight(duration: float, interval: float, p: float) -> float:
    """``d_i = ceil(τ_i / Δt) · p_i``."""
    return max(1, math.ceil(duration / interval - _CEIL_TOLERANCE)) * p


@presets(paper={})
class FedFix(Strategy):
    """Fixed-interval aggregation with unbiasing weights ``d_i = ceil(τ_i/Δt)·p_i``.

    Parameters
    ----------
    local_steps : int
        Local steps per task.
    interval : float or None
        ``Δt`` in seconds; ``None`` picks 0.5 × the median of the first ``N`` observed durations.
    server_lr : float
        ``η_g`` (the paper's is 1; ``Σ d_i`` can exceed 1, hence configurable).
    duration_momentum : float
        ``β`` of the duration estimate, in (0, 1]; weighs the newest observation.
    """

    name = "fedfix"
    tracks_wakeups = True  # returned clients wait for the next aggregation, which pokes

    def __init__(self, *, local_steps: int = 20, interval: float | None = None, server_lr: float = 1.0,
                 duration_momentum: float = 0.9, max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO,
                 non_trainable: Sequence[int] = ()) -> None:
        super().__init__(non_trainable=non_trainable, max_weight_ratio=max_weight_ratio)
        self.local_steps = P.positive_int("local_steps", local_steps)
        self._task_config = frozen_config({"local_steps": self.local_steps})  # shared by every task
        self.interval = P.optional(P.number, "interval", interval, low=0.0, low_open=True)
        self.server_lr = P.number("server_lr", server_lr, low=0.0, low_open=True)
        self.duration_momentum = P.number("duration_momentum", duration_momentum, low=0.0, high=1.0, low_open=True)
        self._dt: float | None = self.interval
        self._next: float | None = None
        self._duration: dict[int, float] = {}
        # (node, version sent, model sent, client's model) of each return since the last aggregation
        self._returned: list[tuple[int, int, Params, Params]] = []
        self._waiting: set[int] = set()
        self._warmup_needed = 0
        self._warmup: list[float] = []

    def config(self) -> dict[str, Any]:
        return {"local_steps": self.local_steps, "interval": self.interval, "server_lr": self.server_lr,
                "duration_momentum": self.duration_momentum, "max_weight_ratio": self.max_weight_ratio}

    @property
    def current_interval(self) -> float | None:
        """``Δt`` in use (``None`` while it is still being estimated)."""
        return self._dt

    def _on_start(self, now: float) -> None:
        if self._dt is not None:
            self._next = now + self._dt
        else:
            self._warmup_needed = max(len(self._clients), 1)

    def on_idle(self, client: ClientInfo, now: float) -> Task | None:
        self._adopt(client)
        node = client.node_id
        if node in self._waiting:
            return None
        return Task(node, self._version, self._task_config)

    def on_update(self, update: Update, sent: Dispatch, now: float) -> Outcome:
        node = update.node_id
        observed = max(now - sent.sent_at, 0.0)
        old = self._duration.get(node)
        b = self.duration_momentum
        self._duration[node] = observed if old is None else (1.0 - b) * old + b * observed
        self._returned.append((node, sent.task.version, sent.params, update.params))
        self._waiting.add(node)
        if self._dt is None:
            self._warmup.append(observed)
            if len(self._warmup) >= self._warmup_needed:
                self._dt = 0.5 * float(np.median(self._warmup))
                if self._dt <= 0.0:
                    self._dt = max(self._warmup) or 1.0
                self._next = now + self._dt
                return self._aggregate()
        return BUFFERED

    def _aggregate(self) -> Outcome:
        returned, self._returned = self._returned, []
        self._waiting.clear()
        self._poke()
        if not returned:
            return BUFFERED
        assert self._dt is not None
        terms: list[tuple[float, Sequence[np.ndarray]]] = [(1.0, self._params)]
        coefs: dict[int, float] = {}
        models: dict[int, Params] = {}
        for node, base, base_params, params in returned:
            d = self.server_lr * interval_weight(self._duration[node], self._dt, self._weight(node))
            terms.append((d, params))
            coefs[base] = coefs.get(base, 0.0) - d
            models[base] = base_params
        terms.extend((coef, models[base]) for base, coef in sorted(coefs.items()))
        new = weighted_sum(terms, indices=self._trainable)
        for i in self._fixed:
            new[i] = mean_of([params[i] for _, _, _, params in returned])
        return Outcome("applied") if self._commit(new) else Outcome("rejected", "diverged")

    def next_timer(self) -> float | None:
        return self._next

    def on_timer(self, now: float) -> None:
        if self._next is None or now < self._next:
            return
        assert self._dt is not None
        while self._next <= now:
            self._next += self._dt
        self._aggregate()

    def on_failure(self, sent: Dispatch, now: float) -> None:
        if self._dt is None and sent.task.node_id not in self._duration:
            self._warmup_needed = max(self._warmup_needed - 1, 1)

    def _state(self) -> dict[str, Any]:
        return {
            "dt": self._dt,
            "next": self._next,
            "duration": dict(self._duration),
            "returned": [[n, v, base, p] for n, v, base, p in self._returned],
            "waiting": sorted(self._waiting),
            "warmup_needed": self._warmup_needed,
            "warmup": list(self._warmup),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self._dt = None if state["dt"] is None else float(state["dt"])
        self._next = None if state["next"] is None else float(state["next"])
        self._duration = {int(n): float(d) for n, d in state["duration"].items()}
        self._returned = [(int(n), int(v), list(base), list(p)) for n, v, base, p in state["returned"]]
        self._waiting = {int(n) for n in state["waiting"]}
        self._warmup_needed = int(state["warmup_needed"])
        self._warmup = [float(x) for x in state["warmup"]]
