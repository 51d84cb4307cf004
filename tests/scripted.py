"""Scripted clients with scripted timings for driving strategies and the orchestrator in tests."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedhive.engine import Orchestrator, StopCondition, VirtualTransport
from fedhive.strategies import Strategy, build
from fedhive.strategies.base import ClientInfo, Task, Update


def clients(sizes: Sequence[int], device_class: str = "cpu") -> list[ClientInfo]:
    return [ClientInfo(i, n, device_class) for i, n in enumerate(sizes)]


def pull_toward(targets: dict[int, np.ndarray], rate: float = 0.5):
    """Client ``i`` moves every tensor ``rate`` of the way to ``targets[i]`` times (1 + task_id % 3 / 10)."""

    def train(node: int, task_id: int, task: Task, params: Sequence[np.ndarray]) -> Update:
        goal = targets[node] * (1.0 + (task_id % 3) / 10.0)
        out = [(p + rate * (goal.astype(p.dtype) - p)).astype(p.dtype) for p in params]
        n = int(10 * (node + 1))
        return Update(node, task.version, out, n, {"loss": float(np.abs(goal - params[0]).sum())})

    return train


def durations(per_node: dict[int, float], jitter: float = 0.0):
    def duration(node: int, task_id: int, task: Task) -> float:
        base = per_node[node] * task.config.get("local_steps", 1) / 20.0
        return base * (1.0 + jitter * ((task_id * 7919) % 13) / 13.0)

    return duration


def scenario(n: int = 4, dim: int = 3, dtype=np.float32, seed: int = 0):
    """A small heterogeneous fleet: per-node targets, speeds 1..n (slowest is n× the fastest)."""
    rng = np.random.default_rng(seed)
    targets = {i: rng.normal(size=dim).astype(np.float64) for i in range(n)}
    speeds = {i: float(1 + i) for i in range(n)}
    cls = clients([10 * (i + 1) for i in range(n)])
    init = [np.zeros(dim, dtype=dtype), np.ones((2, dim), dtype=dtype)]
    return cls, targets, speeds, init


def run(strategy: Strategy | str, params: dict | None = None, *, stop: StopCondition | None = None,
        n: int = 4, jitter: float = 0.3, transport_kw: dict | None = None, **orch_kw):
    cls, targets, speeds, init = scenario(n)
    strat = build(strategy, params or {}) if isinstance(strategy, str) else strategy
    transport = VirtualTransport(cls, durations(speeds, jitter), pull_toward(targets), **(transport_kw or {}))
    orch = Orchestrator(strat, transport, stop=stop or StopCondition(max_time=30.0), **orch_kw)
    return orch.run(init), strat, transport
