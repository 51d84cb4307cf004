"""Where the simulator's local training runs: in this process, in a pool of processes, or as Ray tasks.

The simulator hands an executor *chunks* of training jobs; a chunk is trained by ``LearningTask.train_batch``. Which
jobs form a chunk is decided by the simulator from the run's events alone, never by the executor, and each chunk is
computed the same way wherever it runs. So a run's result does not depend on the executor or on how many workers it
has: only the wall time does.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import multiprocessing as mp

from fedhive.tasks import LearningTask, load_task
from fedhive.tasks.base import TrainJob

Result = tuple[list, dict]


@dataclass(frozen=True)
class TaskSpec:
    """How to rebuild the learning task in another process: ``load_task(name, **kwargs)``."""

    name: str
    kwargs: dict = field(default_factory=dict)

    def build(self) -> LearningTask:
        return load_task(self.name, **self.kwargs)


class Handle(ABC):
    @abstractmethod
    def result(self) -> list[Result]:
        """Block until the chunk is trained; one ``(params, metrics)`` per job, in order."""


class _Done(Handle):
    def __init__(self, value: list[Result]) -> None:
        self._value = value

    def result(self) -> list[Result]:
        return self._value


class _FutureHandle(Handle):
    def __init__(self, future: Future) -> None:
        self._future = future

    def result(self) -> list[Result]:
        return self._future.result()


class Executor(ABC):
    """Trains chunks of jobs."""

    name = "executor"

    @abstractmethod
    def submit(self, jobs: Sequence[TrainJob], resources: dict[str, float]) -> Handle:
        """Start training ``jobs``; ``resources`` is what one training of their device class asks for."""

    def close(self) -> None:
        """Stop workers."""


class InlineExecutor(Executor):
    """Trains each chunk at once, in this process."""

    name = "inline"

    def __init__(self, task: LearningTask) -> None:
        self.task = task

    def submit(self, jobs: Sequence[TrainJob], resources: dict[str, float]) -> Handle:
        return _Done(self.task.train_batch(list(jobs)))


_WORKER_TASK: LearningTask | None = None


def _init_worker(spec: TaskSpec) -> None:
    global _WORKER_TASK
    import torch

    torch.set_num_threads(1)
    _WORKER_TASK = spec.build()


def _train_in_worker(jobs: list[TrainJob]) -> list[Result]:
    assert _WORKER_TASK is not None
    return _WORKER_TASK.train_batch(jobs)


class ProcessExecutor(Executor):
    """A pool of worker processes (spawned, so no torch state is shared), each with its own copy of the task."""

    name = "process"

    def __init__(self, spec: TaskSpec, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                         initargs=(spec,))

    def submit(self, jobs: Sequence[TrainJob], resources: dict[str, float]) -> Handle:
        return _FutureHandle(self._pool.submit(_train_in_worker, list(jobs)))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def ray_task_options(resources: dict[str, float], *, use_gpus: bool) -> dict[str, Any]:
    """Ray task options for one training of a device class: ``{"CPU": 1, "GPU": 0.25}`` → ``num_cpus=1`` and, only
    with ``use_gpus``, ``num_gpus=0.25``; other keys are Ray custom resources."""
    opts: dict[str, Any] = {"num_cpus": float(resources.get("CPU", 1)), "max_retries": 3}
    gpus = float(resources.get("GPU", 0))
    if gpus and use_gpus:
        opts["num_gpus"] = gpus
    extra = {k: float(v) for k, v in resources.items() if k not in ("CPU", "GPU")}
    if extra:
        opts["resources"] = extra
    return opts


def _ray_train(spec: TaskSpec, jobs: list[TrainJob]) -> list[Result]:
    global _WORKER_TASK
    if _WORKER_TASK is None or getattr(_WORKER_TASK, "_fedhive_spec", None) != spec:
        import torch

        torch.set_num_threads(1)
        _WORKER_TASK = spec.build()
        _WORKER_TASK._fedhive_spec = spec  # type: ignore[attr-defined]
    return _WORKER_TASK.train_batch(jobs)


class _RayHandle(Handle):
    def __init__(self, ref: Any) -> None:
        self._ref = ref

    def result(self) -> list[Result]:
        import ray

        return ray.get(self._ref)


class RayExecutor(Executor):
    """Each chunk is a Ray task asking for its device class's resources (``{"CPU": 1}``, ``{"GPU": 0.25}``, ...).

    Chunks that do not fit wait in Ray's queue: that pending demand is what Ray's autoscaler adds nodes for.
    ``address=None`` starts a local Ray bound to 127.0.0.1 with the dashboard and usage stats off (always a new one:
    never the cluster a stale ``/tmp/ray/ray_current_cluster`` or ``RAY_ADDRESS`` names, which made ``ray.init()``
    wait for a GCS that is long gone); ``"auto"`` or an address joins an existing cluster.
    """

    name = "ray"

    def __init__(self, spec: TaskSpec, address: str | None = None, *, num_cpus: int | None = None,
                 ignore_gpus: bool | None = None) -> None:
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - depends on the extra being installed
            raise RuntimeError("the Ray executor needs Ray: pip install 'fedhive[ray]'") from exc
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            if address is None:
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                         configure_logging=False, log_to_driver=False)
            else:
                ray.init(address=address, configure_logging=False, log_to_driver=False)
            self._started = True
        self._spec_ref = ray.put(spec)
        self._remote = ray.remote(_ray_train)
        # A simulated GPU-class device needs no real GPU: by default ask for GPU shares only where the cluster has
        # GPUs now. An autoscaling cluster whose GPU workers start at zero needs ignore_gpus=False (--ray-gpus
        # always), or GPU-class trainings never create the demand that brings GPU workers up.
        self.ignore_gpus = (ray.cluster_resources().get("GPU", 0) == 0) if ignore_gpus is None else ignore_gpus

    def submit(self, jobs: Sequence[TrainJob], resources: dict[str, float]) -> Handle:
        opts = ray_task_options(resources, use_gpus=not self.ignore_gpus)
        ref = self._remote.options(**opts).remote(self._spec_ref, list(jobs))
        return _RayHandle(ref)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()


RAY_GPUS = {"auto": None, "always": False, "never": True}  # --ray-gpus → RayExecutor's ignore_gpus


def make_executor(kind: str, task: LearningTask, spec: TaskSpec, *, workers: int | None = None,
                  ray_address: str | None = None, ray_gpus: str = "auto") -> Executor:
    """``inline`` (default), ``process`` (``workers`` processes) or ``ray``.

    ``ray_gpus``: ``auto`` asks for the GPU class's GPU share only if the Ray cluster has GPUs at the start,
    ``always`` asks for it anyway (autoscaling clusters whose GPU workers start at zero), ``never`` does not.
    """
    if ray_gpus not in RAY_GPUS:
        raise ValueError(f"ray_gpus must be one of {', '.join(RAY_GPUS)}, got {ray_gpus!r}")
    if kind == "inline":
        return InlineExecutor(task)
    if kind == "process":
        return ProcessExecutor(spec, workers)
    if kind == "ray":
        return RayExecutor(spec, ray_address, ignore_gpus=RAY_GPUS[ray_gpus])
    raise ValueError(f"unknown executor {kind!r}; accepted: inline, process, ray")
