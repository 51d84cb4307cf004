"""FedAvg: the synchronous baseline (McMahan et al., AISTATS 2017, arXiv 1602.05629).

Round ``r``: sample ``ceil(C·N)`` clients (all by default) among the known clients that are idle; send each ``w`` and
the same ``local_steps``; wait until every client that got a task replied or failed, or the round deadline passed;
then ``w ← Σ_{i∈S} p_i^S · w_i`` with ``p_i^S = n_i / Σ_{j∈S} n_j`` over the replies (``num_examples`` of each
update, as Flower's ``aggregate_arrayrecords`` weights by ``num-examples``). Late replies are rejected as ``late``.

[OURS] choices, since an event-driven engine has no "sample, then wait" barrier:
- a round admits clients until its first reply arrives; a client that joins before then takes part;
- with ``fraction < 1`` the sample is drawn at the start of the round from the known idle clients with a seeded
  generator; sampled clients that never ask for work (gone) are dropped from the round at its first reply;
- a round in which nobody replied (all failed or the deadline passed) leaves ``w`` unchanged and starts the next one.
- every floating-point tensor, trainable or not, is averaged with the same weights, as in FedAvg and Flower;
  integer tensors (counters) take the replies' plain mean, rounded.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from . import params as P
from .base import APPLIED, BUFFERED, DEFAULT_MAX_WEIGHT_RATIO, ClientInfo, Dispatch, Outcome, Strategy, Task, Update
from .weighted_sum import mean_of, weighted_sum


class FedAvg(Strategy):
    """Synchronous rounds with example-weighted averaging.

    Parameters
    ----------
    local_steps : int
        Local steps per task.
    fraction : float
        Fraction ``C`` of clients sampled per round, in (0, 1].
    round_timeout : float or None
        Seconds after a round starts when it is closed with the replies it has; ``None`` waits for all.
    seed : int
        Seed of the client sampler (used only when ``fraction < 1``).
    max_weight_ratio : float
        A reply's ``n_i`` is clamped to this many times the live fleet's median claim (see ``Strategy``; 0: off).
    """

    name = "fedavg"
    tracks_wakeups = True  # clients wait for the next round: poked when a round (re)starts

    def __init__(self, *, local_steps: int = 20, fraction: float = 1.0, round_timeout: float | None = None,
                 seed: int = 0, max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO,
                 non_trainable: Sequence[int] = ()) -> None:
        super().__init__(non_trainable=non_trainable, max_weight_ratio=max_weight_ratio)
        self.local_steps = P.positive_int("local_steps", local_steps)
        self.fraction = P.number("fraction", fraction, low=0.0, high=1.0, low_open=True)
        self.round_timeout = P.optional(P.number, "round_timeout", round_timeout, low=0.0, low_open=True)
        self.seed = P.non_negative_int("seed", seed)
        self._rng = np.random.default_rng(self.seed)
        self._round = 0
        self._round_start = 0.0
        self._accepting = True
        self._sample: set[int] | None = None
        self._late: set[int] = set()  # clients whose task of an earlier round is still out (not sampled)
        self._pending: set[int] = set()
        self._acc: list[np.ndarray] | None = None
        self._acc_examples = 0
        self._int_vals: list[list[np.ndarray]] = []
        self._replies = 0

    def config(self) -> dict[str, Any]:
        return {"local_steps": self.local_steps, "fraction": self.fraction, "round_timeout": self.round_timeout,
                "max_weight_ratio": self.max_weight_ratio}

    @property
    def round(self) -> int:
        return self._round

    @property
    def _floats(self) -> list[int]:
        return [i for i, p in enumerate(self._params) if np.issubdtype(p.dtype, np.floating)]

    @property
    def _ints(self) -> list[int]:
        return [i for i, p in enumerate(self._params) if not np.issubdtype(p.dtype, np.floating)]

    def _on_start(self, now: float) -> None:
        self._late = set()
        self._open_round(now)

    def _open_round(self, now: float) -> None:
        self._late |= self._pending  # a round closed by its deadline leaves these clients still training
        self._round += 1
        self._round_start = now
        self._accepting = True
        self._pending = set()
        self._acc = None
        self._acc_examples = 0
        self._int_vals = []
        self._replies = 0
        self._sample = None
        if self.fraction < 1.0:
            idle = sorted(n for n in self._clients if n not in self._late and n not in self._gone)
            k = min(len(idle), max(1, math.ceil(self.fraction * len(idle))))
            chosen = self._rng.choice(len(idle), size=k, replace=False) if idle else []
            self._sample = {idle[int(i)] for i in chosen}
        self._poke()

    def on_idle(self, client: ClientInfo, now: float) -> Task | None:
        self._adopt(client)
        node = client.node_id
        if not self._accepting:
            return None
        if self._sample is not None and node not in self._sample:
            return None
        if self._sample is not None:
            self._sample.discard(node)
        self._pending.add(node)
        return Task(node, self._version, {"local_steps": self.local_steps, "round": self._round})

    def on_update(self, update: Update, sent: Dispatch, now: float) -> Outcome:
        node = update.node_id
        self._late.discard(node)
        if sent.task.config["round"] != self._round or node not in self._pending:
            self._poke()
            return Outcome("rejected", "late")
        self._pending.discard(node)
        self._accepting = False
        # The reply's claim, clamped to max_weight_ratio × the live fleet's median claim (see Strategy).
        n = self._clamp(max(int(update.num_examples), 0))
        if n > 0:
            # Σ n_i·w_i, accumulated in place; divided by Σ n_i when the round closes.
            self._acc = weighted_sum([(float(n), update.params)], out=self._acc, indices=self._floats,
                                     accumulate=self._acc is not None)
            self._acc_examples += n
            if len(self._floats) < len(self._params):
                self._int_vals.append([update.params[i].copy() for i in self._ints])
        self._replies += 1
        if not self._pending:
            return self._close_round(now)
        return BUFFERED

    def _close_round(self, now: float) -> Outcome:
        outcome = BUFFERED
        if self._acc is not None and self._acc_examples > 0:
            scale = 1.0 / self._acc_examples
            new = weighted_sum([(scale, self._acc)], out=self._acc, indices=self._floats)
            for j, i in enumerate(self._ints):
                new[i] = mean_of([vals[j] for vals in self._int_vals])
            self._acc = None
            self._int_vals = []
            outcome = APPLIED if self._commit(new) else Outcome("rejected", "diverged")
        self._open_round(now)
        return outcome

    def on_failure(self, sent: Dispatch, now: float) -> None:
        node_id = sent.task.node_id
        self._late.discard(node_id)
        if sent.task.config["round"] == self._round and node_id in self._pending:
            self._pending.discard(node_id)
            if not self._pending and not self._accepting:
                self._close_round(now)
            elif not self._pending and self._replies == 0:
                # Everyone who took part failed: start over with whoever is left.
                self._open_round(now)
        self._poke()

    def next_timer(self) -> float | None:
        if self.round_timeout is None or not self._pending:
            return None
        return self._round_start + self.round_timeout

    def on_timer(self, now: float) -> None:
        t = self.next_timer()
        if t is not None and now >= t:
            self._close_round(now)

    def _state(self) -> dict[str, Any]:
        return {
            "rng": self._rng.bit_generator.state,
            "round": self._round,
            "round_start": self._round_start,
            "accepting": self._accepting,
            "sample": None if self._sample is None else sorted(self._sample),
            "late": sorted(self._late),
            "pending": sorted(self._pending),
            "acc": self._acc,
            "acc_examples": self._acc_examples,
            "int_vals": self._int_vals,
            "replies": self._replies,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]
        self._round = int(state["round"])
        self._round_start = float(state["round_start"])
        self._accepting = bool(state["accepting"])
        self._sample = None if state["sample"] is None else {int(n) for n in state["sample"]}
        self._late = {int(n) for n in state["late"]}
        self._pending = {int(n) for n in state["pending"]}
        self._acc = None if state["acc"] is None else [np.array(a) for a in state["acc"]]
        self._acc_examples = float(state["acc_examples"])  # a clamped claim is a float
        self._int_vals = [[np.array(a) for a in vals] for vals in state["int_vals"]]
        self._replies = int(state["replies"])
