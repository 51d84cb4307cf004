"""``Driven``: a strategy driven the way the engine drives it, for readable unit tests.

Since the engine owns the work in flight (``fedhive.strategies.base``), a strategy's ``on_update`` and
``on_failure`` take the engine's :class:`~fedhive.strategies.base.Dispatch` record of the task. ``Driven`` keeps
those records for a test, so the test still reads "client 1 asks at t = 0, its update arrives at t = 8"::

    s = Driven(FedBuff(buffer_size=2))
    s.start(params, clients, 0.0)            # anything not below is forwarded to the strategy
    task = s.on_idle(clients[0], 0.0)        # records Dispatch(task_id, task, 0.0, s.params) for node 0
    s.on_update(Update(0, task.version, w, 10), 1.0)   # pops node 0's record, calls on_update(update, sent, 1.0)
    s.on_failure(1, 2.0)                     # pops node 1's record, calls on_failure(sent, 2.0)

It holds what the engine guarantees, so a test cannot build a situation the engine never produces:

- ``on_idle`` is only called for a client with no task in flight; a returned task names that client and the
  current version, and is recorded with the global model as of dispatch (one list per version, shared by every
  task sent at that version, as the engine does);
- ``on_update`` / ``on_failure`` need a task in flight for that node; an update's ``base_version`` (the client's
  claim), when not ``None``, must equal the recorded ``task.version`` (the engine would reject the reply and
  report a failure instead).

Task ids count up from 0 in dispatch order. ``sent(node_id)`` reads a record without ending the task;
``in_flight`` is the set of nodes with a task out; ``resumed(restored)`` carries the tasks in flight over to a
strategy restored from a checkpoint (the engine checkpoints its records with the strategy's state).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from fedhive.strategies.base import ClientInfo, Dispatch, Outcome, Params, Strategy, Task, Update


class Driven:
    """Wraps ``strategy``; keeps the engine's one :class:`Dispatch` per task in flight, keyed by node."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self._records: dict[int, Dispatch] = {}
        self._next_id = 0
        self._sent_version: int | None = None
        self._sent_params: Params = []

    def start(self, params: Sequence[np.ndarray], clients: Iterable[ClientInfo], now: float) -> None:
        """Start the strategy; a fresh start has nothing in flight."""
        self._records, self._sent_version, self._sent_params = {}, None, []
        self.strategy.start(params, clients, now)

    def on_idle(self, client: ClientInfo, now: float) -> Task | None:
        node = client.node_id
        assert node not in self._records, f"on_idle for node {node}, which has task {self._records[node].task_id} out"
        task = self.strategy.on_idle(client, now)
        if task is not None:
            assert task.node_id == node, f"a task for node {task.node_id} returned to node {node}"
            assert task.version == self.strategy.version, (task.version, self.strategy.version)
            if task.version != self._sent_version:
                self._sent_version, self._sent_params = task.version, self.strategy.params
            self._records[node] = Dispatch(self._next_id, task, float(now), self._sent_params)
            self._next_id += 1
        return task

    def on_update(self, update: Update, now: float) -> Outcome:
        sent = self._end(update.node_id)
        claim = update.base_version
        assert claim is None or claim == sent.task.version, (
            f"node {update.node_id} claims version {claim}, its task was sent at {sent.task.version} "
            "(the engine would reject this reply)")
        return self.strategy.on_update(update, sent, now)

    def on_failure(self, node_id: int, now: float) -> None:
        self.strategy.on_failure(self._end(node_id), now)

    def sent(self, node_id: int) -> Dispatch:
        """The record of ``node_id``'s task in flight (the task stays in flight)."""
        return self._records[node_id]

    @property
    def in_flight(self) -> set[int]:
        """Nodes with a task out."""
        return set(self._records)

    def _end(self, node_id: int) -> Dispatch:
        assert node_id in self._records, f"node {node_id} has no task in flight (the engine would reject its reply)"
        return self._records.pop(node_id)

    def resumed(self, strategy: Strategy) -> Driven:
        """A ``Driven`` for ``strategy`` (restored from this one's ``state_dict``) with this one's tasks still in
        flight, as the engine resumes them from its checkpoint; the two then run independently."""
        other = Driven(strategy)
        other._records = dict(self._records)
        other._next_id = self._next_id
        return other

    def __getattr__(self, name: str) -> Any:
        # Only reached for names Driven lacks; dunders and a half-built copy (copy.deepcopy) must not recurse.
        strategy = self.__dict__.get("strategy")
        if strategy is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(strategy, name)
