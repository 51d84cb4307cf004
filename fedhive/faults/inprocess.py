"""The real engine and strategies, with clients of which some send hostile replies; the invariants checked.

A fleet of ``clients`` in virtual time: honest clients pull the model toward their own targets, hostile ones reply
to each task with one mutation of an honest reply (:mod:`fedhive.faults.mutations`, chosen by the task id) or with
forged replies (the same reply twice, one for a task never sent). An observer checks, at every event:

- ``crashes``: an exception out of the engine (the run is restarted and the count goes up);
- ``model_changes_from_rejected``: a rejection after which the model or its version differs from before it;
- ``applied_twice``: a reply taken (applied or buffered) more than once;
- ``accepted_malformed``: a reply of a must-reject kind that the engine took;
- ``non_finite_models``: a model change that left a NaN or an infinity in the model.
"""

from __future__ import annotations

import logging
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedhive.engine import Observer, Orchestrator, StopCondition, VirtualTransport
from fedhive.strategies import build
from fedhive.strategies.base import ClientInfo, Task, Update

from . import mutations as M

PARAMS: dict[str, dict[str, Any]] = {
    "fedavg": {}, "fedasync": {}, "fedbuff": {"buffer_size": 3}, "fedfix": {},
    "fedcompass": {"q_min": 5, "q_max": 20, "speed_model": "per_step"},
    "fedasmu": {"server_adaptation": "heuristic"},
}


@dataclass
class Tally:
    """What one strategy's hostile run saw."""

    strategy: str
    hostile: int = 0
    by_kind: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    accepted_malformed: Counter = field(default_factory=Counter)
    crashes: int = 0
    crash_traces: list[str] = field(default_factory=list)
    applied_twice: int = 0
    model_changes_from_rejected: int = 0
    non_finite_models: int = 0
    honest_applied: int = 0
    versions: int = 0

    def summary(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "hostile": self.hostile, "crashes": self.crashes,
                "applied_twice": self.applied_twice, "model_changes_from_rejected": self.model_changes_from_rejected,
                "accepted_malformed": sum(self.accepted_malformed.values()),
                "accepted_malformed_kinds": dict(self.accepted_malformed),
                "non_finite_models": self.non_finite_models, "honest_applied": self.honest_applied,
                "versions": self.versions, "rejected": dict(self.rejected), "kinds": len(self.by_kind),
                "crash_traces": self.crash_traces[:3]}


class Watch(Observer):
    """Checks the invariants at every event (see the module docstring) and counts what each node got taken or
    rejected; ``marks`` maps ``id(reply)`` to ``(kind, reply)`` for the hostile replies of a scripted fleet."""

    def __init__(self, tally: Tally, marks: dict[int, tuple[str, Update]] | None = None) -> None:
        self.t, self.marks = tally, {} if marks is None else marks
        self.taken_from: Counter = Counter()
        self.rejected_from: Counter = Counter()
        self.refused_from: Counter = Counter()  # updates the strategy refused (Outcome "rejected": late, diverged, ...)
        self.strategy = None
        self.last: tuple[int, list[bytes]] | None = None
        self.taken: Counter = Counter()

    def _snap(self) -> None:
        s = self.strategy
        self.last = (s.version, [np.asarray(p).tobytes() for p in s.params])

    def on_start(self, strategy, now):
        self.strategy = strategy
        self._snap()

    def on_update(self, update, outcome, client, staleness, duration, now):
        if outcome.status == "rejected":
            self.refused_from[update.node_id] += 1
        if outcome.status in ("applied", "buffered"):
            self.taken_from[update.node_id] += 1
            mark = self.marks.get(id(update))  # marked replies are held in ``marks``, so their ids are unique
            if mark is None:
                self.t.honest_applied += 1
            else:
                self.taken[id(update)] += 1
                if self.taken[id(update)] > 1:
                    self.t.applied_twice += 1
                if mark[0] in M.MUST_REJECT:
                    self.t.accepted_malformed[mark[0]] += 1
        self._changed()

    def on_failure(self, node_id, reason, now):
        self._changed()

    def on_aggregate(self, seconds, now):
        self._changed()

    def _changed(self) -> None:
        s = self.strategy
        if self.last is not None and s.version != self.last[0]:
            if not all(np.isfinite(np.asarray(p, dtype=np.float64)).all() for p in s.params if p.dtype.kind == "f"):
                self.t.non_finite_models += 1
        self._snap()

    def on_reject(self, reason, node_id, now):
        self.t.rejected[reason] += 1
        self.rejected_from[node_id] += 1
        s = self.strategy
        version, params = self.last
        if s.version != version or [np.asarray(p).tobytes() for p in s.params] != params:
            self.t.model_changes_from_rejected += 1


def run(strategy: str, hostile: int, *, clients: int = 8, hostile_clients: int = 4, seed: int = 0,
        progress=None) -> Tally:
    """Drive ``strategy`` until its hostile clients have sent ``hostile`` replies; ``progress(n)`` after each run."""
    tally = Tally(strategy)
    engine_log = logging.getLogger("fedhive")
    level = engine_log.level
    engine_log.setLevel(logging.ERROR)  # thousands of rejections are the point; they are counted, not logged
    try:
        return _run(tally, strategy, hostile, clients, hostile_clients, seed, progress)
    finally:
        engine_log.setLevel(level)


def _run(tally: Tally, strategy: str, hostile: int, clients: int, hostile_clients: int, seed: int, progress) -> Tally:
    rng0 = np.random.default_rng(seed)
    targets = {i: rng0.normal(size=4) for i in range(clients)}
    kinds = M.KINDS + ["forged"]
    bad = set(range(clients - hostile_clients, clients))
    attempt = 0
    while tally.hostile < hostile:
        attempt += 1
        marks: dict[int, tuple[str, Update]] = {}  # id(reply) -> (kind, reply): holds the reply so the id stays its own
        watch = Watch(tally, marks)
        budget = hostile - tally.hostile

        def train(node: int, task_id: int, task: Task, params):
            goal = targets[node]
            out = [(p + 0.5 * (goal[: p.shape[-1]].astype(p.dtype) - p)).astype(p.dtype) if p.dtype.kind == "f"
                   else p.copy() for p in params]
            honest = Update(node, task.version, out, 10 * (node % 5 + 1), {"loss": float(np.abs(out[0]).sum())})
            if node not in bad or tally.hostile >= hostile:
                return honest
            rng = np.random.default_rng((seed, attempt, task_id))
            kind = kinds[int(rng.integers(len(kinds)))]
            tally.hostile += 1
            tally.by_kind[kind] += 1
            if kind == "forged":
                replies = M.forged(honest, task_id, rng)
                marks[id(honest)] = ("forged", honest)
                return replies
            reply = M.mutate(kind, honest, task_id, rng)
            marks[id(reply)] = (kind, reply)
            return reply

        cls = [ClientInfo(i, 10 * (i % 5 + 1), "cpu") for i in range(clients)]
        transport = VirtualTransport(cls, lambda n, t, task: 1.0 + ((n * 7919 + t * 104729) % 997) / 997.0, train)
        strat = build(strategy, PARAMS.get(strategy, {}))
        init = [np.zeros(4, np.float32), np.ones((2, 4), np.float32), np.zeros(3, np.int64)]
        orch = Orchestrator(strat, transport, stop=StopCondition(max_updates=max(10, 2 * budget)), observer=watch)
        try:
            orch.run(init)
        except Exception:  # noqa: BLE001 - counting crashes is the point
            tally.crashes += 1
            tally.crash_traces.append(traceback.format_exc(limit=6))
            if tally.crashes > 20:
                break
        tally.versions += strat.version
        if progress is not None:
            progress(tally.hostile)
    return tally
