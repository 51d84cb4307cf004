"""fedhive's Flower ``ServerApp``: the orchestrator and a strategy over Flower's Grid.

``main`` reads the run config (keys in :mod:`fedhive.server.settings`), builds the task, the strategy and the stop
condition, waits for ``min-clients`` nodes, and runs the orchestrator over a :class:`GridTransport` until the stop
condition. It is a user of :mod:`fedhive.flower`'s engine: :func:`front_door` makes the ``fedhive.flower`` strategy
object that carries the run's options and its :meth:`~fedhive.flower._FedhiveFlowerStrategy.prepare` builds the run
(:class:`fedhive.flower.EngineRun`: run folder, model store, transport, metrics, orchestrator), the same engine a
Flower app's ``strategy.start()`` runs; this module adds fedhive's devices' side of it (profile queries, partition
sizes, the task's evaluation) and the run folder's files, heartbeat and stop signals. With ``num-partitions`` >= 1 it builds the devices' partition too and weights each fedhive node by the size
of the partition its profile names, not by the node's claim (see :class:`GridTransport`'s ``partition_sizes``). It
checkpoints into ``run-dir/checkpoints`` and, with ``resume=true``, continues from the newest checkpoint there. For
FedASMU it also runs the model store (gRPC) and tells the devices where it is.

The run folder receives ``status.json`` (rewritten about once a second while running; ``fedhive up`` shows it),
``history.json`` (``{"history": [...], "final": {...}}``, time in wall seconds, the same shape as ``fedhive sim``'s
``results.json``), ``model.safetensors`` (the final global model, named like the task's ``state_dict()``; written
before the final ``history.json``) and ``accuracy_vs_time.png``.

Every checkpoint carries the run's fingerprint (:func:`run_fingerprint`): ``resume=true`` continues from the newest
checkpoint of *this* run that loads, logging each one skipped and why, and refuses (naming them) when none can be
resumed; ``resume=false`` first moves any checkpoints already in ``run-dir/checkpoints`` into
``checkpoints/previous-<UTC time>/``, so a new run never deletes or resumes another run's files. Temporary files of
interrupted writes are removed at start. Writes of status, history and checkpoints are best effort: an ``OSError``
(disk full, read-only folder) is logged and counted (``write_errors`` in ``status.json`` and ``history.json``,
``checkpoint_write_errors`` in the counters) and the run goes on.

Switching a Flower app to a fedhive strategy: point ``serverapp`` in ``[tool.flwr.app.components]`` at
``fedhive.server.app:app`` and add the keys of :data:`fedhive.server.settings.DEFAULTS` to
``[tool.flwr.app.config]`` (or copy ``fedhive/flower_app/pyproject.toml``); a stock ClientApp that answers ``train``
with ``arrays`` and a ``num-examples`` metric keeps working.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from fedhive.engine import Observer, Orchestrator, RunResult, StopCondition, kernels
from fedhive.engine import checkpoint as ckpt
from fedhive.engine.build import strategy_for_task
from fedhive.proto.modelfile import contiguous
from fedhive.runconfig import HEARTBEAT_FILE, STOP_GRACE
from fedhive.strategies.base import ClientInfo, Outcome, Strategy, Task, Update

from .grid_transport import GridInterrupted, GridTransport
from .settings import RunSettings

if TYPE_CHECKING:
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    from .model_store import ModelStore

log = logging.getLogger("fedhive.server")


_LEFTOVERS = (".status.json.tmp", ".history.json.tmp", ".model.safetensors.tmp")  # what the writers below rename


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename; a failed write leaves no
    temporary file (where the disk lets it be deleted) and the old ``path`` intact."""
    tmp = path.with_name(f".{path.name}.tmp")
    text = json.dumps(data, indent=1, default=_jsonable)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


class RunStatus(Observer):
    """Keeps ``status.json`` (live progress for ``fedhive up``) and ``history.json`` in the run folder current."""

    def __init__(self, run_dir: Path, settings: RunSettings, transport: GridTransport, interval: float = 1.0) -> None:
        self.run_dir = run_dir
        self.settings = settings
        self.transport = transport
        self.interval = interval
        self.strategy: Strategy | None = None
        self.state = "starting"
        self.version = 0
        self.accuracy: float | None = None
        self.loss: float | None = None
        self.updates_by_class: Counter[str] = Counter()
        self.failures_by_reason: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.staleness_sum = 0
        self.staleness_max = 0
        self.updates = 0
        self.arrivals: list[dict] = []
        self.history: list[dict] = []
        self._last = -1e9
        self.t0 = 0.0
        self.orchestrator: Orchestrator | None = None
        self._group: dict[int, Any] = {}
        self.write_errors: Counter[str] = Counter()  # file name -> writes the disk refused
        self._failing: set[str] = set()

    def save(self, name: str, data: Any) -> bool:
        """Write ``data`` as ``run_dir/name``, best effort: an ``OSError`` is logged and counted, never raised."""
        try:
            _write_json(self.run_dir / name, data)
        except OSError as exc:
            self.write_errors[name] += 1
            if name not in self._failing:  # once per streak of failures: status.json is written every second
                self._failing.add(name)
                log.error("could not write %s (%s); the run goes on, and the write is retried", self.run_dir / name,
                          exc)
            return False
        if name in self._failing:
            self._failing.discard(name)
            log.info("%s is written again (%d write(s) failed)", self.run_dir / name, self.write_errors[name])
        return True

    def on_start(self, strategy: Strategy, now: float) -> None:
        self.strategy = strategy
        if self.orchestrator is not None:
            self.t0 = self.orchestrator.start_time
            self.history = self.orchestrator.history  # the same list: on resume it holds the earlier records
            self.updates = self.orchestrator.client_updates  # on resume: the run's, not only this process's
        self.version = strategy.version
        self.state = "running"
        self.write(now, force=True)

    def on_dispatch(self, task: Task, client: ClientInfo, now: float) -> None:
        self._group[task.node_id] = task.config.get("group")

    def on_update(self, update: Update, outcome: Outcome, client: ClientInfo, staleness: int, duration: float,
                  now: float) -> None:
        self.updates += 1
        self.updates_by_class[client.device_class] += 1
        self.staleness_sum += staleness
        self.staleness_max = max(self.staleness_max, staleness)
        self.arrivals.append({"time": round(now - self.t0, 3), "node": update.node_id, "class": client.device_class,
                              "base_version": update.base_version, "staleness": staleness,
                              "duration": round(duration, 3), "steps": update.metrics.get("steps"),
                              "seconds": update.metrics.get("seconds"), "outcome": outcome.status,
                              "group": self._group.pop(update.node_id, None),
                              "fetch_version": update.metrics.get("fetch_version")})
        if self.strategy is not None:
            self.version = self.strategy.version
        self.write(now)

    def on_reject(self, reason: str, node_id: int, now: float) -> None:
        self.rejected[reason] += 1

    def on_failure(self, node_id: int, reason: str, now: float) -> None:
        self.failures_by_reason[reason] += 1

    def on_evaluate(self, record: dict, now: float) -> None:
        if self.orchestrator is None or self.history is not self.orchestrator.history:
            self.history.append(record)
        self.accuracy, self.loss = record["accuracy"], record["loss"]
        self.version = record["version"]
        self.save("history.json", {"history": self.history, "final": None})
        self.write(now, force=True)

    def on_membership(self, clients: Sequence[ClientInfo], now: float) -> None:
        self.write(now, force=True)

    def snapshot(self, now: float) -> dict[str, Any]:
        clients = self.transport.clients()
        return {
            "state": self.state,
            "time": round(now - self.t0, 3),
            "strategy": self.settings["strategy"],
            "version": self.version,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "client_updates": self.updates,
            "updates_by_class": dict(self.updates_by_class),
            "mean_staleness": self.staleness_sum / self.updates if self.updates else 0.0,
            "max_staleness": self.staleness_max,
            "clients": len(clients),
            "clients_by_class": dict(Counter(c.device_class for c in clients)),
            "in_flight": self.transport.in_flight,
            "failures": dict(self.failures_by_reason),
            "rejected": dict(self.rejected),
            # what nodes sent that the edge refused or corrected (fedhive.server.grid_transport)
            "profile_rejections": dict(getattr(self.transport, "profile_rejections", {})),
            "metric_rejections": dict(getattr(self.transport, "metric_rejections", {})),
            "write_errors": self.all_write_errors(),
            "pid": os.getpid(),
        }

    def all_write_errors(self) -> dict[str, int]:
        """Writes the disk refused, by file (``checkpoint`` for all checkpoints, counted across resumes)."""
        out = dict(self.write_errors)
        n = self.orchestrator.counters.get("checkpoint_write_errors", 0) if self.orchestrator is not None else 0
        if n:
            out["checkpoint"] = n
        return out

    def write(self, now: float, force: bool = False) -> None:
        if not force and now - self._last < self.interval:
            return
        self._last = now
        self.save("status.json", self.snapshot(now))


class StorePublisher(Observer):
    """Publishes every new global model to the model store (after updates and after timer-driven aggregations)."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.strategy: Strategy | None = None

    def on_start(self, strategy: Strategy, now: float) -> None:
        self.strategy = strategy
        self._publish()

    def on_aggregate(self, seconds: float, now: float) -> None:
        self._publish()

    def _publish(self) -> None:
        s = self.strategy
        if s is not None and s.version != self.store.version:
            self.store.publish(s.params, s.version)


def run(grid: Grid, run_config: Mapping[str, Any]) -> RunResult:
    """Run fedhive on ``grid`` with ``run_config``; returns the orchestrator's result.

    fedhive's log lines also go to ``run-dir/server.log`` (appended to across resumes; best effort), besides
    Flower's own log forwarding (``flwr log <run-id>``)."""
    settings = RunSettings.from_config(dict(run_config))
    handler = _file_log(settings.run_dir.resolve() / "server.log")
    try:
        return _run(grid, settings)
    finally:
        if handler is not None:
            logging.getLogger("fedhive").removeHandler(handler)
            handler.close()


def _file_log(path: Path) -> logging.Handler | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        log.warning("cannot write %s (%s): logging to the console only", path, exc)
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
    logging.getLogger("fedhive").addHandler(handler)
    return handler


def front_door(settings: RunSettings) -> Any:
    """The :mod:`fedhive.flower` strategy object that carries this run's options (checkpoints, resume, metrics,
    polling, FedASMU's model store); its ``prepare`` builds the run's :class:`~fedhive.flower.EngineRun`."""
    from fedhive.flower import strategy_class

    cls = strategy_class(settings["strategy"])
    options: dict[str, Any] = {"checkpoint_dir": settings.run_dir.resolve() / "checkpoints",
                               "checkpoint_every": settings["checkpoint-every"], "resume": settings["resume"],
                               "metrics_address": settings["metrics-address"] or None,
                               "poll_interval": settings["poll-interval"]}
    if "store_address" in cls._extra_keywords:
        options.update(store_address=settings["store-address"],
                       store_public_address=settings["store-public-address"] or None,
                       store_certificates=(settings["tls-certfile"], settings["tls-keyfile"])
                       if settings["tls-certfile"] else None, store_ca=settings["store-ca"] or None)
    return cls(**options)


def _run(grid: Grid, settings: RunSettings) -> RunResult:
    from fedhive.tasks import load_task

    kernels.install()  # the fused weighted sum for large tensors (fedhive.engine.kernels)
    run_dir = settings.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    task = load_task(settings["task"], num_clients=max(1, settings["num-partitions"]),
                     partition=settings["partition"], alpha=settings["alpha"], seed=settings["seed"])
    strategy = strategy_for_task(settings["strategy"], settings.strategy_params, task, settings["local-steps"])
    initial = task.initial_params(settings["seed"])
    fingerprint = run_fingerprint(settings, task.param_names(), initial)

    def metrics_failed(exc: OSError) -> None:
        log.error("cannot serve metrics on %s (%s): running without them; set metrics-address to a free HOST:PORT, "
                  "or '' for none", settings["metrics-address"], exc)

    # With num-partitions >= 1 the server's task is the devices' partition, so it knows each node's size (0: each node
    # partitions by its own node config, which the server cannot know; the nodes' claims are taken, capped).
    parts = settings["num-partitions"]
    engine = front_door(settings).prepare(
        grid, task.param_names(), initial, timeout=settings["ttl"], strategy=strategy,
        stop=StopCondition(**settings.stop_condition()), fingerprint=fingerprint, evaluate=task.evaluate,
        eval_interval=settings["eval-interval"], run_dir=run_dir, on_metrics_error=metrics_failed,
        # fedhive's own devices: profiles asked, the run config's training settings, the lenient reply reading
        query_profiles=True, extra_config=settings.client_config(), weight_key=None, alias_loss=True,
        idle_timeout=IDLE_TIMEOUT, upload_timeout=settings["upload-timeout"],
        partition_sizes=[int(task.num_examples(i)) for i in range(parts)] if parts >= 1 else None)
    transport = engine.transport
    status = RunStatus(run_dir, settings, transport)
    engine.observe(status, first=True)
    if engine.metrics is not None:
        engine.metrics.watch_writes(status.all_write_errors)
    status.orchestrator = engine.orchestrator
    status.write(transport.now(), force=True)
    with engine:  # the model store and the metrics endpoint stop however the run ends
        n = engine.wait_for_nodes(settings["min-clients"], settings["wait-clients"])
        if n < settings["min-clients"]:
            status.state = "failed"
            status.write(transport.now(), force=True)
            raise RuntimeError(f"only {n} of min-clients={settings['min-clients']} clients connected within "
                               f"{settings['wait-clients']} s; start more agents or lower min-clients")
        log.info("fedhive %s on %d clients, run folder %s%s", settings["strategy"], n, run_dir,
                 ", resuming from the newest usable checkpoint" if engine.resume_from else "")
        t0 = time.perf_counter()
        # Until the run's files are written: a stop signal meanwhile waits; the heartbeat says the ServerApp lives.
        with _StopOnSignal(engine.orchestrator, transport) as stop_signal, _Heartbeat(run_dir / HEARTBEAT_FILE):
            try:
                result = engine.run()
            except BaseException:
                status.state = "failed"
                status.write(transport.now(), force=True)
                raise
            wall = time.perf_counter() - t0
            if stop_signal.signum:
                log.warning("%s: the run stopped at version %s; writing its final files (resume=true continues it)",
                            signal.Signals(stop_signal.signum).name, result.final["version"])
            engine.settle(limit=3.0 if stop_signal.signum else 20.0)  # a stop signal leaves a few seconds at most
            engine.close()
            _write_results(run_dir, settings, strategy, result, wall, status, transport)
            status.state = "stopped" if stop_signal.signum else "finished"
            status.write(transport.now(), force=True)
            log.info("%s (%s): version %s, accuracy %s, %s client updates", status.state, result.stop_reason,
                     result.final["version"], result.final["accuracy"], result.final["client_updates"])
    stop_signal.redeliver()
    return result


#: How long a run with nothing in flight waits for a change before it gives up (GridTransport's ``idle_timeout``).
IDLE_TIMEOUT = 600.0


def _write_results(run_dir: Path, settings: RunSettings, strategy: Strategy, result: RunResult, wall: float,
                   status: "RunStatus", transport: GridTransport) -> None:
    """``model.safetensors``, ``history.json`` and ``accuracy_vs_time.png``; best effort (errors logged, counted)."""
    final = dict(result.final)
    final["wall_seconds"] = wall
    final["stop_reason"] = result.stop_reason
    out = {"strategy": settings["strategy"], "task": settings["task"], "seed": settings["seed"],
           "strategy_config": strategy.config(), "history": result.history, "final": final,
           "counters": result.counters, "updates_by_class": dict(status.updates_by_class),
           "arrivals": status.arrivals, "groups": _group_spread(status.arrivals),
           "grid": {"pull_seconds": transport.pull_seconds, "push_seconds": transport.push_seconds,
                    "pulls": transport.pulls, "profile_rejections": dict(transport.profile_rejections),
                    "metric_rejections": dict(transport.metric_rejections)}}
    try:  # before the history that reports it; best effort (the final checkpoint holds the model too)
        save_model(run_dir / "model.safetensors", result.params, transport.param_names)
    except OSError as exc:
        status.write_errors["model.safetensors"] += 1
        log.error("could not write %s (%s); the final checkpoint holds the model", run_dir / "model.safetensors", exc)
    out["write_errors"] = status.all_write_errors()
    status.save("history.json", out)
    try:
        plot_history(result.history, run_dir / "accuracy_vs_time.png", settings["strategy"])
    except Exception as exc:  # a plot is a convenience; never fail a finished run over it
        log.warning("could not draw accuracy_vs_time.png: %s", exc)


HEARTBEAT_SECONDS = 2.0  # how often run-dir/HEARTBEAT_FILE is touched while the run runs


class _Heartbeat:
    """Touches ``path`` every :data:`HEARTBEAT_SECONDS` from a daemon thread while the run runs, so a watcher on
    another host or container (``fedhive submit``), which cannot see this pid, notices a killed ServerApp within
    seconds instead of Flower's ~60-s heartbeat. Best effort: a write error is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedhive-heartbeat", daemon=True)

    def _run(self) -> None:
        while True:
            try:
                self.path.touch()
            except OSError:
                pass
            if self._stop.wait(HEARTBEAT_SECONDS):
                return

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _force_exit() -> None:
    os._exit(1)  # no logging: a log lock may be what keeps the main thread from finishing


class _StopOnSignal:
    """SIGTERM and SIGINT (what ``flwr stop`` makes Flower send the ServerApp itself) end the run cleanly.

    Flower's own handler exits at once, from wherever the loop is: the last checkpoint could be many versions old.
    While the orchestrator runs, this handler only asks it to stop (:meth:`Orchestrator.request_stop`): the loop
    ends at the next event boundary, writes its final checkpoint, and the server app writes the model, the history
    and ``status.json`` (state ``stopped``); then :meth:`redeliver` hands the signal to the handler that was there
    before (Flower's, which exits as it would have). Later signals are ignored: after ``flwr stop`` Flower sends
    SIGINT once from each of its retrying clients. A signal that arrives while the main thread is inside a call
    into Flower's Grid ends that call (see ``GridInterrupted``; the replies it was pulling are lost, their tasks
    are failed on resume like any task in flight). If the files are not written within ``grace`` seconds the
    process exits with code 1, as Flower's own force-exit would. Only in the main thread (where Python delivers
    signals); elsewhere nothing is installed.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, orch: Orchestrator, transport: GridTransport | None = None, grace: float = STOP_GRACE) -> None:
        self.orch = orch
        self.transport = transport
        self.grace = grace
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._watchdog: threading.Timer | None = None
        self.repeats = 0  # signals after the first (ignored)

    def __enter__(self) -> "_StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _handle(self, signum: int, frame: Any) -> None:
        # No logging here: the handler runs between two bytecodes of the main thread, which may hold a log
        # handler's lock (Flower's log forwarding one is not reentrant): logging here can deadlock the process.
        if self.signum is not None:
            self.repeats += 1
            return
        self.signum = signum
        self._watchdog = threading.Timer(self.grace, _force_exit)
        self._watchdog.daemon = True
        self._watchdog.start()
        self.orch.request_stop(f"signal_{signal.Signals(signum).name}")
        if self.transport is not None and self.transport.in_grid_call:
            # The main thread is inside Flower's Grid (no fedhive state half-changed there): a call that may never
            # return after ``flwr stop`` is left by this exception, which GridTransport catches.
            raise GridInterrupted(signum)

    def redeliver(self) -> None:
        """After the run's files are written: hand the signal that stopped it to the previous handler."""
        if self.signum is not None:
            self._deliver(self.signum, None)

    def _deliver(self, signum: int, frame: Any) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)


def prepare_run_folder(run_dir: Path, ckpt_dir: Path, *, resume: bool) -> Path | None:
    """Tidy the run folder before a run; the folder to resume from (``ckpt_dir``), or ``None`` for a new run.

    Removes the temporary files interrupted writes left (here and in ``ckpt_dir``). ``resume``: ``ckpt_dir`` if it
    holds checkpoints (the orchestrator picks the newest of this run that loads), else ``None`` with a warning.
    Not ``resume``: checkpoints already there (an earlier run's) are moved into ``ckpt_dir/previous-<UTC time>``
    and that is logged, so the new run never resumes or prunes them; ``RuntimeError`` if they cannot be moved.
    """
    for name in _LEFTOVERS:
        leftover = run_dir / name
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
            log.warning("removed %s, the temporary file of an interrupted write", leftover)
    for leftover in ckpt.remove_leftovers(ckpt_dir):
        log.warning("removed %s, the temporary file of an interrupted checkpoint write", leftover)
    if resume:
        if ckpt.checkpoints(ckpt_dir):
            return ckpt_dir
        log.warning("resume=true but %s holds no checkpoint: starting a new run", ckpt_dir)
        return None
    try:
        moved = ckpt.set_aside(ckpt_dir)
    except OSError as exc:
        raise RuntimeError(f"{ckpt_dir} holds checkpoints of an earlier run and they cannot be moved aside ({exc}): "
                           "move them yourself, use another run-dir, or continue that run with resume=true") from exc
    if moved is not None:
        log.warning("resume=false: moved the checkpoints already in %s (an earlier run's) to %s; this new run never "
                    "resumes or deletes them", ckpt_dir, moved)
    return None


def run_fingerprint(settings: RunSettings, names: Sequence[str], params: Sequence[np.ndarray]) -> dict[str, Any]:
    """What identifies a run in its checkpoints, beyond the strategy and its config (which the orchestrator adds).

    The task, its tensors (name, shape, dtype, in ``state_dict()`` order), the seed and the partitioning: a resume
    with any of these changed would send devices a model of another shape or train on other data.
    """
    return {"task": settings["task"],
            "tensors": [[str(n), list(np.shape(p)), str(np.asarray(p).dtype)] for n, p in zip(names, params)],
            "seed": settings["seed"],
            "partitioning": {"num_partitions": settings["num-partitions"], "partition": settings["partition"],
                             "alpha": settings["alpha"]}}


def _group_spread(arrivals: Sequence[dict]) -> dict[str, Any]:
    """How closely the members of each FedCompass group arrived: spread (last minus first arrival) per group."""
    by_group: dict[Any, list[float]] = {}
    for a in arrivals:
        if a.get("group") is not None:
            by_group.setdefault(a["group"], []).append(float(a["time"]))
    spreads = [max(ts) - min(ts) for ts in by_group.values() if len(ts) > 1]
    return {"groups": len(spreads), "median_spread": float(np.median(spreads)) if spreads else None,
            "max_spread": max(spreads) if spreads else None}


def save_model(path: Path, params: Sequence[np.ndarray], names: Sequence[str]) -> None:
    """The model as a safetensors file keyed by ``names``."""
    from safetensors.numpy import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file({n: contiguous(p) for n, p in zip(names, params)}, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def plot_history(history: Sequence[dict], path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([h["time"] for h in history], [h["accuracy"] for h in history], label=label)
    ax.set_xlabel("wall seconds")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _make_app() -> ServerApp:
    from flwr.serverapp import ServerApp

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per pull otherwise
        run(grid, dict(context.run_config))

    return server_app


app = _make_app()
