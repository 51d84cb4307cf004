"""One virtual-time run: task + fleet + strategy + orchestrator, with progress and a JSON result.

``fedhive sim`` and ``fedhive bench`` are thin layers over ``run_sim``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence


from fedhive.engine import Fanout, Observer, Orchestrator, StopCondition, kernels
from fedhive.engine.build import strategy_for_task
from fedhive.strategies.base import Strategy
from fedhive.tasks import LearningTask

from .executor import TaskSpec, make_executor
from .fleet import SimTransport
from .profiles import FleetSpec

log = logging.getLogger("fedhive.sim")


@dataclass
class SimConfig:
    """Everything that defines a virtual-time run (and so its result, given the seed).

    ``local_steps`` goes to every strategy that takes it (FedCompass picks its own from ``q_min``..``q_max``);
    ``client_config`` (``lr``, ``batch_size``, ...) goes into every task's training config under what the strategy
    sets. ``executor``, ``workers``, ``chunk_size`` and ``ray_address`` change only the wall time... except
    ``chunk_size``, which decides how jobs are grouped and so the float rounding of training: keep it fixed when
    comparing runs.
    """

    strategy: str
    fleet: FleetSpec
    budget: float
    seed: int = 0
    task: str = "mnist1d"
    task_params: dict = field(default_factory=dict)
    strategy_params: dict = field(default_factory=dict)
    client_config: dict = field(default_factory=dict)
    local_steps: int = 20
    target: float | None = None
    stop_at_target: bool = False
    max_updates: int | None = None
    eval_interval: float | None = None
    cost_factor: float = 1.0
    chunk_size: int = 8
    executor: str = "inline"
    workers: int | None = None
    ray_address: str | None = None
    ray_gpus: str = "auto"

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["fleet"] = {"mix": self.fleet.mix, "jitter": self.fleet.jitter, "dropout": self.fleet.dropout,
                      "rejoin": self.fleet.rejoin, "client_jitter": self.fleet.client_jitter}
        for k in ("executor", "workers", "ray_address", "ray_gpus"):
            d.pop(k)
        return d


def make_task(cfg: SimConfig) -> tuple[LearningTask, TaskSpec]:
    kwargs = {"num_clients": cfg.fleet.size, "seed": cfg.seed, **cfg.task_params}
    spec = TaskSpec(cfg.task, kwargs)
    return spec.build(), spec


def make_strategy(cfg: SimConfig, task: LearningTask) -> Strategy:
    return strategy_for_task(cfg.strategy, cfg.strategy_params, task, cfg.local_steps, trusted_sizes=True)


class Progress(Observer):
    """A rich progress bar in virtual seconds, with the version, accuracy and client updates."""

    def __init__(self, label: str, budget: float) -> None:
        from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeElapsedColumn

        self.bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(),
                       TextColumn("{task.completed:>7.0f}/{task.total:.0f} virtual s"), TextColumn("{task.fields[info]}"),
                       TimeElapsedColumn(), transient=False)
        self.task = self.bar.add_task(label, total=budget, info="")
        self.version = 0
        self.updates = 0
        self.accuracy = float("nan")
        self._last = 0.0

    def __enter__(self) -> "Progress":
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def _show(self, now: float) -> None:
        self.bar.update(self.task, completed=now,
                        info=f"v{self.version}  acc {self.accuracy:.3f}  {self.updates} updates")

    def on_update(self, update, outcome, client, staleness, duration, now):  # noqa: D102
        self.updates += 1
        if now - self._last >= 1.0:
            self._last = now
            self._show(now)

    def on_evaluate(self, record, now):  # noqa: D102
        self.version = record["version"]
        self.accuracy = record["accuracy"]
        self._show(now)


def run_sim(cfg: SimConfig, *, progress: bool = False, observer: Observer | None = None,
            checkpoint_dir: str | None = None, checkpoint_every: int | None = None,
            resume_from: str | None = None) -> dict[str, Any]:
    """Run ``cfg`` and return the results JSON (``fedhive sim --out`` writes the same)."""
    if not cfg.budget > 0:
        raise ValueError(f"budget must be a number of virtual seconds > 0, got {cfg.budget!r}")
    kernels.install()  # the fused weighted sum for large tensors (fedhive.engine.kernels)
    task, spec = make_task(cfg)
    strategy = make_strategy(cfg, task)
    executor = make_executor(cfg.executor, task, spec, workers=cfg.workers, ray_address=cfg.ray_address,
                             ray_gpus=cfg.ray_gpus)
    transport = SimTransport(task, cfg.fleet, seed=cfg.seed, executor=executor, cost_factor=cfg.cost_factor,
                             chunk_size=cfg.chunk_size, client_config=cfg.client_config,
                             global_model=lambda: (strategy.params, strategy.version))
    stop = StopCondition(max_time=cfg.budget, target_accuracy=cfg.target if cfg.stop_at_target else None,
                         max_updates=cfg.max_updates)
    interval = cfg.eval_interval or max(cfg.budget / 200.0, 1e-3)
    observers: list[Observer] = [o for o in (observer,) if o is not None]
    bar = Progress(f"{cfg.strategy}", cfg.budget) if progress else None
    if bar is not None:
        observers.append(bar)
    orch = Orchestrator(strategy, transport, stop=stop, evaluate=task.evaluate, eval_interval=interval,
                        observer=Fanout(observers), checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every)
    t0 = time.perf_counter()
    import torch

    threads = torch.get_num_threads()
    if cfg.executor != "inline":
        torch.set_num_threads(1)  # evaluation here, training in workers: leave the other cores to them
    try:
        if bar is not None:
            with bar:
                result = orch.run(None if resume_from else task.initial_params(cfg.seed), resume_from=resume_from)
        else:
            result = orch.run(None if resume_from else task.initial_params(cfg.seed), resume_from=resume_from)
    finally:
        transport.close()
        torch.set_num_threads(threads)
    wall = time.perf_counter() - t0
    final = dict(result.final)
    final["bytes"] = transport.bytes_moved
    final["fetch_bytes"] = transport.fetch_bytes
    out = {
        "strategy": cfg.strategy,
        "task": cfg.task,
        "seed": cfg.seed,
        "config": cfg.describe(),
        "strategy_config": strategy.config(),
        "history": result.history,
        "final": final,
        "stop_reason": result.stop_reason,
        "counters": result.counters,
        "diverged": strategy.diverged,
        "wall_seconds": wall,
    }
    if cfg.target is not None:
        out["time_to_target"] = time_to_target(result.history, cfg.target)
    out["_params"] = result.params
    return out


def run_sim_one_thread(cfg: SimConfig) -> dict[str, Any]:
    """``run_sim`` with torch limited to one thread: for runs side by side in a process pool.

    Two processes each running torch's default two threads on two cores spend most of their time waiting for each
    other (measured here: over 10x slower); one thread each keeps both cores busy.
    """
    import torch

    torch.set_num_threads(1)
    return run_sim(cfg)


def time_to_target(history: Sequence[dict], target: float) -> float | None:
    """Virtual seconds of the first evaluation at or above ``target``, or ``None``."""
    for h in history:
        if h["accuracy"] >= target:
            return float(h["time"])
    return None
