"""FedAsync: every arrival is mixed into the global model with a staleness-discounted weight.

Source: Xie, Koyejo, Gupta, "Asynchronous Federated Optimization", arXiv 1903.03934 (2019).

On each arrival of ``w_i`` trained from version ``o_i``: ``τ = v − o_i``, ``α_t = α · s(τ)``,
``w ← (1 − α_t)·w + α_t·w_i``, ``v += 1``.

[OURS] choices:
- default ``α = 0.6`` with polynomial staleness ``a = 0.5`` (the paper's common setting);
- ``c_i = 1``: APPFL also multiplies ``α`` by ``1/N``; the paper does not, and neither does fedhive;
- the paper's regularised local objective is the client-side proximal term ``proximal_mu`` (default 0), sent in
  the task config; its value in the paper was not found.
"""

from __future__ import annotations

from typing import Any, Sequence

from . import params as P
from .base import APPLIED, ClientInfo, Dispatch, Outcome, Strategy, Task, Update, frozen_config, presets
from .staleness import STALENESS_KINDS, make_staleness, staleness_parameters
from .weighted_sum import weighted_sum


@presets(paper={"alpha": 0.6, "staleness": "polynomial", "staleness_a": 0.5})
class FedAsync(Strategy):
    """Fully asynchronous mixing, ``w ← (1 − α·s(τ))·w + α·s(τ)·w_i``.

    Parameters
    ----------
    local_steps : int
        Local steps per task (``Q``).
    alpha : float
        Mixing weight ``α`` in (0, 1].
    staleness, staleness_a, staleness_b
        The staleness function ``s(τ)`` (see ``fedhive.strategies.staleness``).
        ``staleness_a``, ``staleness_b`` ``None``: the kind's default (polynomial ``a = 0.5``;
        hinge ``a = 10``, ``b = 4``).
    proximal_mu : float
        Proximal term ``ρ`` the client adds to its loss, ``(ρ/2)·‖x − x_start‖²``.
    max_update_norm : float or None
        Reject an update whose change exceeds this many times the model's norm (see ``Strategy``); ``None``: off.
    """

    name = "fedasync"

    def __init__(self, *, local_steps: int = 20, alpha: float = 0.6, staleness: str = "polynomial",
                 staleness_a: float | None = None, staleness_b: float | None = None, proximal_mu: float = 0.0,
                 max_update_norm: float | None = None, non_trainable: Sequence[int] = ()) -> None:
        super().__init__(non_trainable=non_trainable, max_update_norm=max_update_norm)
        self.local_steps = P.positive_int("local_steps", local_steps)
        self.alpha = P.number("alpha", alpha, low=0.0, high=1.0, low_open=True)
        self.staleness = P.choice("staleness", staleness, STALENESS_KINDS)
        self.staleness_a, self.staleness_b = staleness_parameters(self.staleness, staleness_a, staleness_b)
        self._s = make_staleness(self.staleness, self.staleness_a, self.staleness_b)
        self.proximal_mu = P.number("proximal_mu", proximal_mu, low=0.0)
        config: dict[str, Any] = {"local_steps": self.local_steps}
        if self.proximal_mu:
            config["proximal_mu"] = self.proximal_mu
        self._task_config = frozen_config(config)  # shared by every task

    def config(self) -> dict[str, Any]:
        return {"local_steps": self.local_steps, "alpha": self.alpha, "staleness": self.staleness,
                "staleness_a": self.staleness_a, "staleness_b": self.staleness_b, "proximal_mu": self.proximal_mu,
                "max_update_norm": self.max_update_norm}

    def _on_start(self, now: float) -> None:
        pass

    def on_idle(self, client: ClientInfo, now: float) -> Task | None:
        self._adopt(client)
        return Task(client.node_id, self._version, self._task_config)

    def on_update(self, update: Update, sent: Dispatch, now: float) -> Outcome:
        refused = self._norm_rejection(update, sent)
        if refused is not None:
            return refused
        tau = self._version - sent.task.version
        a = self.alpha * self._s(tau)
        new = weighted_sum([(1.0 - a, self._params), (a, update.params)], indices=self._trainable)
        for i in self._fixed:
            new[i] = update.params[i].copy()
        return APPLIED if self._commit(new) else Outcome("rejected", "diverged")

    # FedAsync's rule needs no state beyond the model and its version (the engine knows which tasks are in flight),
    # and a failed task has nothing to release (the base class's on_failure).
    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        pass
