"""The device-side trainer: runs a task's local training and evaluation for the ClientApp.

A :class:`Trainer` keeps built tasks (data loaded, partitioned, on the device) between requests. The ClientApp
process is new for every message, so the agent keeps one Trainer alive in its own process (the warm worker,
:mod:`fedhive.client.worker`) and the ClientApp forwards to it; without an agent the ClientApp runs a Trainer
in-process, and only the on-disk data cache helps.

Requests and replies are plain dicts (JSON-able) plus a list of arrays, so they cross a socket without pickle.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fedhive import messages as M
from fedhive.strategies.fedasmu import DevicePlan
from fedhive.strategies.params import number, short_repr

log = logging.getLogger("fedhive.trainer")


def best_device() -> str:
    """``cuda`` if torch sees a CUDA device, else ``mps`` on Apple silicon, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


_DEVICE_FORMS = "auto, cpu, cuda, cuda:N (a GPU index) or mps"


def training_device(value: object, *, check: bool = True) -> str | None:
    """A training device as the agent's ``--training-device`` or a node config's ``training-device`` gives it:
    ``None`` for ``auto`` (or empty: :func:`best_device` at the first task), else the torch device string.

    With ``check`` (default), a device torch cannot use here is refused at once, naming what to pass instead,
    rather than at the first task. On a GPU node a small model can train faster on one CPU core than on the card
    (the mnist1d CNN on an H200: 0.72 ms per step on its CPU, 1.62 on the GPU; README), hence the choice.
    """
    if value is None or value == "" or value == "auto":
        return None
    if not isinstance(value, str) or not re.fullmatch(r"cpu|mps|cuda(:\d{1,3})?", value):
        raise ValueError(f"training device must be one of {_DEVICE_FORMS}, got {short_repr(value, 40)}")
    if check and value != "cpu":
        import torch

        if value.startswith("cuda"):
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = int(value.split(":")[1]) if ":" in value else 0
            if index >= count:
                raise ValueError(f"training device {value!r}: torch sees {count} CUDA device(s) here; pass "
                                 "--training-device cpu or auto")
        else:
            mps = getattr(torch.backends, "mps", None)
            if mps is None or not mps.is_available():
                raise ValueError("training device 'mps': torch sees no Apple GPU here; pass --training-device cpu "
                                 "or auto")
    return value


def _int(value: Any, what: str, low: int = 0) -> int:
    """:func:`fedhive.strategies.params.integer` ``>= low`` (integral floats and numpy integers in, an int out)."""
    from fedhive.strategies.params import integer

    return integer(what, value, low=low)


def default_threads(cores: int | None = None, quota: float | None = None) -> int:
    """torch intra-op threads for local training: the whole cores this process may use, at least 1.

    That is the cores of its CPU affinity (``cores``), and no more than its cgroup CPU quota (``quota``, cores)
    rounded down. More threads than that do not make a step faster: with a quota of half a core, or beside other
    processes on the same cores, torch's OpenMP threads wait for each other at every operation. Measured here with
    six agents on two cores (mnist1d CNN): 83-91 ms per step with two threads each against 3.0-3.6 ms with one.
    """
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
    if quota is None:
        from .profile import _cpu_quota

        quota = _cpu_quota(Path("/"))
    n = max(1, int(cores))
    if quota is not None and quota > 0:
        n = min(n, max(1, int(quota)))
    return n


class Trainer:
    """Builds and caches tasks; answers ``profile``, ``train`` and ``evaluate`` requests.

    Parameters
    ----------
    device : str, optional
        Torch device for training: ``cpu``, ``cuda``, ``cuda:N``, ``mps``, or ``None``/``auto`` for
        :func:`best_device` (see :func:`training_device`).
    slowdown : float
        Emulated slow device: after training, wait ``(slowdown - 1) ×`` the compute time (1: none).
    threads : int, optional
        torch intra-op threads for training and evaluation (default :func:`default_threads`: the cores this process
        may use). Set in the thread that serves each request, since torch keeps the count partly per thread.
    """

    def __init__(self, device: str | None = None, slowdown: float = 1.0, threads: int | None = None) -> None:
        slowdown = number("slowdown", slowdown, low=1)
        self.device = training_device(device)
        self.slowdown = slowdown
        from fedhive.strategies.params import integer

        # (the high end: torch's own count is a C int, and no machine has more cores than this)
        self.threads = default_threads() if threads is None or threads == 0 else integer("threads", threads, low=1,
                                                                                          high=4096)
        self._tasks: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self.requests = 0
        self.metrics: Any = None  # an AgentMetrics, when the agent serves metrics

    # ------------------------------------------------------------------ tasks
    def task(self, settings: Mapping[str, Any], node: Mapping[str, Any]) -> tuple[Any, int]:
        """The task of these run settings and node config, and this node's partition id."""
        from fedhive.tasks import load_task

        parts = node.get("num-partitions") or settings.get("num-partitions") or 0
        parts = _int(parts, "num-partitions (node config or run config)", 1)
        pid = _int(node.get("partition-id", 0), "partition-id (node config)")
        if pid >= parts:
            raise ValueError(f"partition-id {pid} must be < num-partitions {parts}")
        if self.device is None:
            self.device = best_device()
        key = (settings["task"], parts, settings["partition"], float(settings["alpha"]), int(settings["seed"]),
               self.device)
        with self._lock:
            task = self._tasks.get(key)
            if task is None:
                data_dir = node.get("data-dir")
                if data_dir:
                    os.environ["FEDHIVE_CACHE"] = str(data_dir)
                task = load_task(settings["task"], num_clients=parts, partition=settings["partition"],
                                 alpha=settings["alpha"], seed=settings["seed"], device=self.device)
                self._tasks[key] = task
        return task, pid

    # ------------------------------------------------------------------ requests
    def handle(self, req: Mapping[str, Any], params: Sequence[np.ndarray]) -> tuple[dict[str, Any], list[np.ndarray]]:
        """Answer one request: ``{"op": "profile" | "train" | "evaluate", "settings", "node", ...}``."""
        reply, out = self._handle(req, params)
        if self.metrics is not None:
            self.metrics.observe(str(req.get("op")), reply)
        return reply, out

    def _handle(self, req: Mapping[str, Any], params: Sequence[np.ndarray]) -> tuple[dict[str, Any], list[np.ndarray]]:
        self.requests += 1
        op = req.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}, []
        settings, node = req["settings"], req["node"]
        import torch

        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        if op == "profile":
            task, pid = self.task(settings, node)
            return {"num-examples": int(task.num_examples(pid)), "partition-id": pid,
                    "training-device": str(self.device)}, []
        if op == "train":
            return self._train(req, params, settings, node)
        if op == "evaluate":
            task, _ = self.task(settings, node)
            metrics = task.evaluate(params)
            return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, []
        raise ValueError(f"unknown trainer op {op!r}; valid: ping, profile, train, evaluate")

    def _train(self, req: Mapping[str, Any], params: Sequence[np.ndarray], settings: Mapping[str, Any],
               node: Mapping[str, Any]) -> tuple[dict[str, Any], list[np.ndarray]]:
        t0 = time.perf_counter()
        task, pid = self.task(settings, node)
        config = dict(req["config"])
        seed = int(req.get("seed", 0))
        claim = config.get(M.VERSION)
        base_version = _int(claim if claim is not None else 0, f"config {M.VERSION}")
        store = config.get(M.STORE_ADDRESS)
        plan = DevicePlan.of(config, base_version) if store else None
        compute = 0.0
        if plan is not None:
            # FedASMU: train the first span, fetch the newest global model, mix it in, train the rest.
            from .fetch import FetchError, fetch_model

            c = time.perf_counter()
            local, m1 = task.train(params, pid, plan.first_config(), seed=seed)
            compute += time.perf_counter() - c
            try:
                version, fetched, nbytes = fetch_model(store, str(config.get(M.STORE_TOKEN, "")), base_version,
                                                       root_certificates=config.get(M.STORE_CA) or None)
            except FetchError as exc:
                log.warning("FedASMU fetch failed, training on without it: %s", exc)
                version, fetched, nbytes = base_version, None, 0
            mixed = plan.fuse(local, m1, fetched, version, nbytes)
            c = time.perf_counter()
            out, metrics = task.train(mixed, pid, plan.rest_config(), seed=seed + 1)
            compute += time.perf_counter() - c
            metrics = plan.finish(metrics)
        else:
            config.pop("fetch_step", None)
            c = time.perf_counter()
            out, metrics = task.train(params, pid, config, seed=seed)
            compute += time.perf_counter() - c
        if self.slowdown > 1:
            time.sleep((self.slowdown - 1.0) * compute)
        reply = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if claim is not None:
            reply[M.VERSION] = base_version  # the server checks it against the version it sent
        reply["num-examples"] = int(task.num_examples(pid))
        reply["compute_seconds"] = compute
        reply["seconds"] = time.perf_counter() - t0
        return reply, out
