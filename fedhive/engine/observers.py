"""What the orchestrator reports as a run goes: the :class:`Observer` hooks, and :class:`Fanout` to several at once.

Metrics, the status file, progress bars and the model-store publisher are observers. Every hook is a no-op by
default, so an observer overrides only what it records.
"""

from __future__ import annotations

from typing import Sequence

from fedhive.strategies.base import ClientInfo, Outcome, Strategy, Task, Update


class Observer:
    """Hooks the orchestrator calls. Every method is a no-op by default."""

    def on_start(self, strategy: Strategy, now: float) -> None:
        """The run (or a resumed run) starts with ``strategy``."""

    def on_dispatch(self, task: Task, client: ClientInfo, now: float) -> None:
        """``task`` was sent to ``client``."""

    def on_update(self, update: Update, outcome: Outcome, client: ClientInfo, staleness: int, duration: float,
                  now: float) -> None:
        """A validated update reached the strategy, which did ``outcome`` with it."""

    def on_reject(self, reason: str, node_id: int, now: float) -> None:
        """The engine rejected a reply from ``node_id`` (``reason``: malformed, version_mismatch, ...)."""

    def on_failure(self, node_id: int, reason: str, now: float) -> None:
        """A task on ``node_id`` ended without a usable reply."""

    def on_evaluate(self, record: dict, now: float) -> None:
        """The global model was evaluated (``record``: time, version, accuracy, loss, client_updates)."""

    def on_membership(self, clients: Sequence[ClientInfo], now: float) -> None:
        """The connected clients changed."""

    def on_aggregate(self, seconds: float, now: float) -> None:
        """The global model changed, whatever caused it (an update, a timer, a failure, a client leaving);
        ``seconds`` is how long the strategy's handler took (for metrics only)."""


class Fanout(Observer):
    """Forwards every observer call to each of ``observers`` in order."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = list(observers)

    def on_start(self, strategy: Strategy, now: float) -> None:
        for o in self.observers:
            o.on_start(strategy, now)

    def on_dispatch(self, task: Task, client: ClientInfo, now: float) -> None:
        for o in self.observers:
            o.on_dispatch(task, client, now)

    def on_update(self, update: Update, outcome: Outcome, client: ClientInfo, staleness: int, duration: float,
                  now: float) -> None:
        for o in self.observers:
            o.on_update(update, outcome, client, staleness, duration, now)

    def on_reject(self, reason: str, node_id: int, now: float) -> None:
        for o in self.observers:
            o.on_reject(reason, node_id, now)

    def on_failure(self, node_id: int, reason: str, now: float) -> None:
        for o in self.observers:
            o.on_failure(node_id, reason, now)

    def on_evaluate(self, record: dict, now: float) -> None:
        for o in self.observers:
            o.on_evaluate(record, now)

    def on_membership(self, clients: Sequence[ClientInfo], now: float) -> None:
        for o in self.observers:
            o.on_membership(clients, now)

    def on_aggregate(self, seconds: float, now: float) -> None:
        for o in self.observers:
            o.on_aggregate(seconds, now)
