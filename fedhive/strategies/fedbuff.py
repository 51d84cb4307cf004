"""FedBuff: buffered asynchronous aggregation (Nguyen et al., AISTATS 2022, arXiv 2106.06639).

Up to ``max_concurrency`` clients train at once, each starting from the newest ``w``. On each arrival
``acc += s(τ_i)·Δ_i`` with ``Δ_i = w(o_i) − w_i``; once ``K`` updates are buffered, ``w ← w − η_g·acc/K`` (with
optional server momentum ``m ← β_g·m + acc/K``, ``w ← w − η_g·m``), ``v += 1``.

Sources and [OURS] choices:
- [ORG] Meta FLSim ``flsim/optimizers/async_aggregators.py`` sums weighted deltas and leaves the scale to the
  server learning rate; dividing by ``K`` is [OURS], so that ``η_g = 1``, ``K = 1``, ``τ = 0`` is a plain FedAvg step.
- Updates staler than ``max_staleness`` versions are rejected (reason ``stale``) and never enter the buffer.
- Non-trainable tensors take the plain mean of the buffered clients' values.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import params as P
from .base import APPLIED, BUFFERED, ClientInfo, Dispatch, Outcome, Strategy, Task, Update, frozen_config, presets
from .staleness import STALENESS_KINDS, make_staleness, staleness_parameters
from .weighted_sum import mean_of, weighted_sum


@presets(paper={})
class FedBuff(Strategy):
    """Buffered asynchronous aggregation of staleness-weighted deltas.

    Parameters
    ----------
    local_steps : int
        Local steps per task.
    buffer_size : int
        ``K``, updates per aggregation.
    server_lr : float
        ``η_g``.
    server_momentum : float
        ``β_g`` in [0, 1); 0 disables momentum.
    staleness, staleness_a, staleness_b
        ``s(τ)``; FedBuff's own choice is polynomial with ``a = 0.5``.
        ``staleness_a``, ``staleness_b`` ``None``: the kind's default (polynomial ``a = 0.5``;
        hinge ``a = 10``, ``b = 4``).
    max_staleness : int or None
        Updates with ``τ`` above this are rejected; ``None`` accepts any.
    max_concurrency : int or None
        Clients training at once; ``None`` lets every client train.
    max_update_norm : float or None
        Reject an update whose change exceeds this many times the model's norm (see ``Strategy``); ``None``: off.
    """

    name = "fedbuff"

    def __init__(self, *, local_steps: int = 20, buffer_size: int = 10, server_lr: float = 1.0,
                 server_momentum: float = 0.0, staleness: str = "polynomial", staleness_a: float | None = None,
                 staleness_b: float | None = None, max_staleness: int | None = None,
                 max_concurrency: int | None = None, max_update_norm: float | None = None,
                 non_trainable: Sequence[int] = ()) -> None:
        super().__init__(non_trainable=non_trainable, max_update_norm=max_update_norm)
        self.local_steps = P.positive_int("local_steps", local_steps)
        self._task_config = frozen_config({"local_steps": self.local_steps})  # shared by every task
        self.buffer_size = P.positive_int("buffer_size", buffer_size)
        self.server_lr = P.number("server_lr", server_lr, low=0.0, low_open=True)
        self.server_momentum = P.number("server_momentum", server_momentum, low=0.0)
        if self.server_momentum >= 1.0:
            raise ValueError(f"server_momentum must be in [0, 1), got {server_momentum!r}")
        self.staleness = P.choice("staleness", staleness, STALENESS_KINDS)
        self.staleness_a, self.staleness_b = staleness_parameters(self.staleness, staleness_a, staleness_b)
        self._s = make_staleness(self.staleness, self.staleness_a, self.staleness_b)
        self.max_staleness = P.optional(P.non_negative_int, "max_staleness", max_staleness)
        self.max_concurrency = P.optional(P.positive_int, "max_concurrency", max_concurrency)
        self._running = 0  # tasks in flight, for max_concurrency
        self._acc: list[np.ndarray] | None = None
        self._k = 0
        self._fixed_vals: list[list[np.ndarray]] = []
        self._momentum: list[np.ndarray] | None = None

    def config(self) -> dict[str, Any]:
        return {"local_steps": self.local_steps, "buffer_size": self.buffer_size, "server_lr": self.server_lr,
                "server_momentum": self.server_momentum, "staleness": self.staleness,
                "staleness_a": self.staleness_a, "staleness_b": self.staleness_b, "max_staleness": self.max_staleness,
                "max_concurrency": self.max_concurrency, "max_update_norm": self.max_update_norm}

    @property
    def buffer_fill(self) -> int:
        """Updates waiting in the buffer (``k``)."""
        return self._k

    @property
    def tracks_wakeups(self) -> bool:  # only a concurrency cap parks clients
        return self.max_concurrency is not None

    def gauges(self) -> dict[str, float]:
        return {**super().gauges(), "buffer_fill": float(self._k)}

    def _on_start(self, now: float) -> None:
        self._running = 0

    def on_idle(self, client: ClientInfo, now: float) -> Task | None:
        self._adopt(client)
        if self.max_concurrency is not None:
            if self._running >= self.max_concurrency:
                return None
            self._running += 1
        return Task(client.node_id, self._version, self._task_config)

    def _end_task(self) -> None:
        if self.max_concurrency is not None:
            self._running -= 1
            self._poke()

    def on_update(self, update: Update, sent: Dispatch, now: float) -> Outcome:
        self._end_task()
        tau = self._version - sent.task.version
        if self.max_staleness is not None and tau > self.max_staleness:
            return Outcome("rejected", "stale")
        refused = self._norm_rejection(update, sent)
        if refused is not None:
            return refused
        c = self._s(tau)
        # acc (+)= s·w(o) − s·w_i, in place, trainable tensors only.
        self._acc = weighted_sum([(c, sent.params), (-c, update.params)], out=self._acc, indices=self._trainable,
                                 accumulate=self._k > 0)
        if self._fixed:
            self._fixed_vals.append([update.params[i].copy() for i in self._fixed])
        self._k += 1
        if self._k < self.buffer_size:
            return BUFFERED
        return self._flush()

    def _flush(self) -> Outcome:
        assert self._acc is not None
        inv_k = 1.0 / self._k
        if self.server_momentum > 0.0:
            if self._momentum is None:
                self._momentum = weighted_sum([(inv_k, self._acc)], indices=self._trainable)
            else:
                weighted_sum([(self.server_momentum, self._momentum), (inv_k, self._acc)], out=self._momentum,
                             indices=self._trainable)
            new = weighted_sum([(1.0, self._params), (-self.server_lr, self._momentum)], indices=self._trainable)
        else:
            new = weighted_sum([(1.0, self._params), (-self.server_lr * inv_k, self._acc)], indices=self._trainable)
        for j, i in enumerate(self._fixed):
            new[i] = mean_of([vals[j] for vals in self._fixed_vals])
        self._k = 0
        self._fixed_vals = []
        return APPLIED if self._commit(new) else Outcome("rejected", "diverged")

    def on_failure(self, sent: Dispatch, now: float) -> None:
        self._end_task()

    def _state(self) -> dict[str, Any]:
        return {
            "running": self._running,
            "acc": self._acc if self._k > 0 else None,
            "k": self._k,
            "fixed_vals": self._fixed_vals,
            "momentum": self._momentum,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self._running = int(state["running"])
        self._k = int(state["k"])
        self._acc = None if state["acc"] is None else [np.array(a) for a in state["acc"]]
        self._fixed_vals = [[np.array(a) for a in vals] for vals in state["fixed_vals"]]
        self._momentum = None if state["momentum"] is None else [np.array(a) for a in state["momentum"]]
