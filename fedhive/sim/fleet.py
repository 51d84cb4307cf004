"""The simulated fleet: the virtual-time transport with device profiles, real training, dropouts and FedASMU's fetch.

A dispatched task takes ``(latency + bytes/bandwidth) down + steps × seconds_per_step × cost_factor + (latency +
bytes/bandwidth) up``, times a log-normal jitter drawn for that task (and a per-client speed factor drawn once).
With probability ``dropout`` the device drops out at a uniform moment of the task instead: the task fails, the
device leaves, and it rejoins after an exponential delay. Every random draw comes from a generator seeded with
``(seed, node, task id)``, so nothing depends on the order in which things are computed.

Training is real (``LearningTask.train_batch``) and runs ahead of virtual time: jobs wait in one pool and are sent to
the executor as a chunk once ``chunk_size`` are waiting, or when the simulation needs one of them. Chunks are formed
from the event sequence alone, so the result is the same for every executor and worker count. A chunk asks the
executor for the largest resources of its devices' classes (a chunk with a GPU-class job asks for a GPU share).

FedASMU tasks (``fetch_step`` in their config) follow FedASMU's :class:`DevicePlan`, as the device trainer does: a
job for the first span; then, at the virtual moment the device reaches that step, it asks the server for the newest
model (a function call standing in for the model store; its bytes are counted), fuses it in, and a second job trains
the remaining steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from fedhive.engine.transport import Event, Result
from fedhive.engine.virtual import _DONE, _FAIL, VirtualTransport
from fedhive.strategies.base import ClientInfo, Dispatch, Task, Update
from fedhive.strategies.fedasmu import DevicePlan
from fedhive.strategies.params import integer
from fedhive.tasks import LearningTask
from fedhive.tasks.base import TrainJob

from .executor import Executor, Handle
from .profiles import FleetSpec

_FETCH, _DROP, _REJOIN = 16, 17, 18
_REJOIN_SALT = 0x5EED
_CLIENT_SALT = 1 << 30

GlobalModel = Callable[[], tuple[Sequence[np.ndarray], int]]


@dataclass
class _Job:
    """One training job of a task (a FedASMU task has two)."""

    job: TrainJob
    device_class: str
    handle: Handle | None = None
    index: int = 0


@dataclass
class _Flight:
    """What the fleet adds to the engine's record of a task in flight (``_tasks``): its jitter, its jobs, its
    FedASMU plan."""

    factor: float
    job: _Job | None = None
    phase1: _Job | None = None
    plan: DevicePlan | None = None


def _seed(*parts: int) -> int:
    """A 63-bit training seed from integers (stable across processes and runs)."""
    return int(np.random.default_rng([abs(int(p)) for p in parts]).integers(0, 2**63 - 1))


class SimTransport(VirtualTransport):
    """Virtual-time fleet of ``fleet.size`` devices training ``task`` for real.

    Parameters
    ----------
    task
        The learning task; client ``i`` holds partition ``i``.
    fleet
        Device classes, jitter, dropout.
    seed
        Seed of every timing draw and of every training's mini-batch order.
    executor
        Where chunks train.
    cost_factor
        Seconds per step of this task relative to the reference workload.
    chunk_size
        Jobs per chunk sent to the executor.
    client_config
        Training settings for every job (``lr``, ``batch_size``, ...), under what each task's config says.
    global_model
        ``() -> (params, version)`` of the server now (FedASMU's mid-training fetch).
    """

    def __init__(self, task: LearningTask, fleet: FleetSpec, *, seed: int, executor: Executor,
                 cost_factor: float = 1.0, chunk_size: int = 8, client_config: dict | None = None,
                 global_model: GlobalModel | None = None) -> None:
        if fleet.size != task.num_clients:
            raise ValueError(f"the fleet has {fleet.size} devices but the task is split for {task.num_clients} "
                             "clients; they must match")
        chunk_size = integer("chunk_size", chunk_size, low=1)
        self.task = task
        self.fleet = fleet
        self.seed = int(seed)
        self.executor = executor
        self.cost_factor = float(cost_factor)
        self.chunk_size = chunk_size
        self.global_model = global_model
        self.client_config = dict(client_config or {})
        self.model_bytes = int(task.model_bytes())
        self.classes = fleet.classes()
        self._speed = [self._client_factor(i) for i in range(fleet.size)]
        clients = [ClientInfo(i, task.num_examples(i), c) for i, c in enumerate(self.classes)]
        self._info = {c.node_id: c for c in clients}
        self._flights: dict[int, _Flight] = {}
        self._pool: list[_Job] = []
        self.fetch_count = 0
        self.fetch_bytes = 0
        self.fetch_log: list[tuple[float, int, int]] = []  # (virtual time, task id, version fetched)
        super().__init__(clients, self._duration_unused, self._train_unused)

    # ------------------------------------------------------------------ timing
    def _client_factor(self, node: int) -> float:
        sigma = self.fleet.client_jitter
        if not sigma:
            return 1.0
        return float(np.random.default_rng([self.seed, node, _CLIENT_SALT]).lognormal(0.0, sigma))

    def _draws(self, node: int, task_id: int) -> tuple[float, float, float]:
        """The task's jitter factor, its dropout draw and the moment of a dropout (fraction of the task)."""
        rng = np.random.default_rng([self.seed, node, task_id])
        return float(rng.lognormal(0.0, self.fleet.jitter)), float(rng.random()), float(rng.random())

    def compute_seconds(self, node: int, steps: int) -> float:
        """Seconds of compute for ``steps`` local steps on ``node`` (before the task's jitter)."""
        prof = self.fleet.profile(self.classes[node])
        return steps * prof.seconds_per_step * self.cost_factor * self._speed[node]

    def task_duration(self, node: int, task_id: int, steps: int) -> float:
        """Dispatch to result, without a fetch: (down + compute + up) × the task's jitter."""
        prof = self.fleet.profile(self.classes[node])
        return (2 * prof.transfer(self.model_bytes) + self.compute_seconds(node, steps)) * self._draws(node, task_id)[0]

    def _duration_unused(self, node: int, task_id: int, task: Task) -> float:  # pragma: no cover
        raise AssertionError("SimTransport schedules its own completions")

    def _train_unused(self, node: int, task_id: int, task: Task, params):  # pragma: no cover
        raise AssertionError("SimTransport trains through its executor")

    # ------------------------------------------------------------------ dispatch
    def _schedule(self, sent: Dispatch, *, count_bytes: bool = True) -> None:
        task_id, task, params, sent_at = sent.task_id, sent.task, sent.params, sent.sent_at
        node = task.node_id
        self._tasks[task_id] = sent
        if node not in self._clients:
            self._push(sent_at, _FAIL, task_id)  # sent to a device that has left: it never arrives
            return
        if count_bytes:
            self._bytes += self.model_bytes
        steps = int(task.config.get("local_steps", 1))
        factor, drop, when = self._draws(node, task_id)
        flight = _Flight(factor)
        self._flights[task_id] = flight
        if self.fleet.dropout and drop < self.fleet.dropout:
            self._push(sent_at + when * self.task_duration(node, task_id, steps), _DROP, task_id)
            return
        plan = DevicePlan.of(task.config, task.version) if self.global_model is not None else None
        if plan is not None:
            prof = self.fleet.profile(self.classes[node])
            flight.plan = plan
            flight.phase1 = self._enqueue(node, task_id, params, plan.first_config(), phase=1)
            t_fetch = sent_at + (prof.transfer(self.model_bytes) + self.compute_seconds(node, plan.first)) * factor
            self._push(t_fetch, _FETCH, task_id)
            return
        flight.job = self._enqueue(node, task_id, params, dict(task.config), phase=0)
        self._push(sent_at + self.task_duration(node, task_id, steps), _DONE, task_id)

    def _enqueue(self, node: int, task_id: int, params: Sequence[np.ndarray], config: dict, phase: int) -> _Job:
        config = {**self.client_config, **config}
        config.pop("fetch_step", None)
        job = _Job(TrainJob(params, node, config, _seed(self.seed, node, task_id, phase)), self.classes[node])
        self._pool.append(job)
        if len(self._pool) >= self.chunk_size:
            self._flush()
        return job

    def _flush(self) -> None:
        pool, self._pool = self._pool, []
        if not pool:
            return
        resources: dict[str, float] = {}
        for cls in dict.fromkeys(j.device_class for j in pool):
            for k, v in self.fleet.profile(cls).resources.items():
                resources[k] = max(resources.get(k, 0.0), float(v))
        handle = self.executor.submit([j.job for j in pool], resources)
        for i, j in enumerate(pool):
            j.handle, j.index = handle, i

    def _result(self, job: _Job) -> tuple[list[np.ndarray], dict]:
        if job.handle is None:
            self._flush()
        assert job.handle is not None
        return job.handle.result()[job.index]

    # ------------------------------------------------------------------ events
    def _handle(self, kind: int, payload: object, t: float, events: list[Event]) -> None:
        if kind == _FETCH:
            self._fetch(int(payload), t)
        elif kind == _DROP:
            self._drop(int(payload), t, events)
        elif kind == _REJOIN:
            node = int(payload)
            if node not in self._clients:
                self._join(self._info[node])
        else:
            super()._handle(kind, payload, t, events)

    def _fetch(self, task_id: int, t: float) -> None:
        flight = self._flights.get(task_id)
        if flight is None or task_id not in self._tasks:
            return
        task = self._tasks[task_id].task
        node = task.node_id
        prof = self.fleet.profile(self.classes[node])
        plan = flight.plan
        assert flight.phase1 is not None and plan is not None and self.global_model is not None
        local, metrics1 = self._result(flight.phase1)
        g_params, g_version = self.global_model()
        newer = g_version != task.version
        nbytes = self.model_bytes if newer else 0
        mixed = plan.fuse(local, metrics1, list(g_params) if newer else None, g_version, nbytes)
        self.fetch_count += 1
        self.fetch_log.append((t, task_id, int(g_version)))
        self.fetch_bytes += nbytes
        self._bytes += nbytes
        flight.job = self._enqueue(node, task_id, mixed, plan.rest_config(), phase=2)
        fetch_time = (2 * prof.latency + nbytes / prof.bandwidth) * flight.factor
        done = t + fetch_time + (self.compute_seconds(node, plan.rest) + prof.transfer(self.model_bytes)) \
            * flight.factor
        self._push(done, _DONE, task_id)

    def _drop(self, task_id: int, t: float, events: list[Event]) -> None:
        """The device of ``task_id`` drops out now: the task fails, the device leaves and will rejoin."""
        self._flights.pop(task_id, None)
        if task_id not in self._tasks:
            return
        node = self._tasks[task_id].task.node_id
        self._leave(node, t, events, reason="dropout")
        rejoin = self.fleet.rejoin
        delay = float(np.random.default_rng([self.seed, node, task_id, _REJOIN_SALT]).exponential(rejoin)) \
            if rejoin else 0.0
        self._push(t + delay, _REJOIN, node)

    def _complete(self, task_id: int, t: float) -> list[Event]:
        sent = self._tasks.pop(task_id, None)
        flight = self._flights.pop(task_id, None)
        if sent is None or flight is None or flight.job is None:
            return []
        task = sent.task
        params, metrics = self._result(flight.job)
        metrics = dict(metrics) if flight.plan is None else flight.plan.finish(metrics)
        metrics["seconds"] = t - sent.sent_at
        self._bytes += self.model_bytes
        n = self.task.num_examples(task.node_id)
        return [Result(task_id, Update(task.node_id, task.version, params, n, metrics), t)]

    def close(self) -> None:
        self.executor.close()
