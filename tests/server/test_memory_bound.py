"""Memory does not grow with the number of versions: the orchestrator keeps a global model only while some task in
flight still refers to it, and a strategy only the models of its buffered updates (issue 6). Thousands of versions
with 40 clients, every strategy."""

from __future__ import annotations

import numpy as np
import pytest

from fedhive.engine import Observer, Orchestrator, StopCondition, VirtualTransport
from fedhive.engine.checkpoint import encode
from fedhive.strategies import build
from fedhive.strategies.base import ClientInfo, Task, Update

CLIENTS = 40
PARAMS = {"fedavg": {"local_steps": 5}, "fedbuff": {"buffer_size": 4}, "fedasync": {}, "fedfix": {},
          "fedcompass": {}, "fedasmu": {"server_adaptation": "heuristic"}}


class Census(Observer):
    """After every update: how many model versions the orchestrator holds for tasks in flight, and how many distinct
    arrays (one per model here: the model is one tensor) the strategy's state holds (its global model, buffered
    updates and the models they were sent)."""

    def __init__(self, orch_ref: list) -> None:
        self.orch_ref = orch_ref
        self.held: list[int] = []

    def on_update(self, update, outcome, client, staleness, duration, now) -> None:
        orch = self.orch_ref[0]
        _, arrays = encode(orch.strategy.state_dict())
        self.held.append(max(orch.models_held, len(arrays)))


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_models_held_are_bounded_by_work_in_flight(name):
    clients = [ClientInfo(i, 100, "cpu" if i % 2 else "rpi4") for i in range(CLIENTS)]
    rng = np.random.default_rng(0)
    noise = [rng.normal(0, 1e-3, 8).astype(np.float32) for _ in range(64)]

    def duration(node: int, task_id: int, task: Task) -> float:
        return (1.0 if node % 2 else 5.0) * (1.0 + ((node * 7919 + task_id * 104729) % 100) / 200.0)

    def train(node: int, task_id: int, task: Task, params) -> Update:
        return Update(node, task.version, [params[0] + noise[task_id % 64]], 100,
                      {"loss": 1.0, "loss_before": 1.1, "steps": int(task.config.get("local_steps", 5))})

    strategy = build(name, PARAMS[name])
    orch_ref: list = []
    census = Census(orch_ref)
    orch = Orchestrator(strategy, VirtualTransport(clients, duration, train), stop=StopCondition(max_updates=3000),
                        observer=census)
    orch_ref.append(orch)
    res = orch.run([np.zeros(8, np.float32)])
    assert res.final["client_updates"] == 3000
    held, third = census.held, len(census.held) // 3
    # bounded by the fleet (a buffered update and the model it was sent, per client), not by the versions
    assert res.final["version"] >= 70 and max(held) <= 2 * CLIENTS + 2
    assert max(held[-third:]) <= max(held[:third]) + 2, (max(held[:third]), max(held[-third:]))  # no growth
