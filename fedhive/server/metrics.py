"""Prometheus metrics of the server app (prometheus-client), fed by the orchestrator's observer hooks.

Names carry the ``fedhive_`` prefix and base units; counters end in ``_total``; durations and staleness are
histograms; the only label on per-update series is ``device_class`` (never a client id), whose values are bounded:
the known classes, the first ``MAX_DEVICE_CLASS_LABELS`` others, then ``other``. Strategy gauges are what
``Strategy.gauges()`` returns: FedBuff's buffer fill, FedCompass's open groups and general buffer, FedASMU's last ``α``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily

from fedhive import exposition
from fedhive.messages import KNOWN_DEVICE_CLASSES
from fedhive.engine import Observer
from fedhive.strategies.base import ClientInfo, Outcome, Strategy, Task, Update

if TYPE_CHECKING:
    from fedhive.engine import Transport

    from .model_store import ModelStore

log = logging.getLogger("fedhive.metrics")

FAILURE_REASONS = ("node_lost", "timeout", "client_error", "client_crashed", "rejected", "lost_in_restart",
                   "push_refused", "dropout", "upload_stalled", "upload_lost")
STALENESS_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300, 600)
AGGREGATION_BUCKETS = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3)
BYTES_BUCKETS = tuple(float(4 ** k) for k in range(5, 16))  # 1 KiB .. 1 GiB
STEPS_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 500)
# ``device_class`` label values: the known classes, then at most this many others (first come, names of at most
# MAX_DEVICE_CLASS_CHARS characters); any further class is exported as ``other``, so a fleet cannot make the label's
# values unbounded.
MAX_DEVICE_CLASS_LABELS = 32
MAX_DEVICE_CLASS_CHARS = 64
OTHER_DEVICE_CLASS = "other"


class _StoreCollector:
    """Model-store requests as a counter, read from the store's own tallies at scrape time."""

    def __init__(self) -> None:
        self.store: ModelStore | None = None

    def collect(self):
        c = CounterMetricFamily("fedhive_model_store_requests", "Model store GetModel calls, by result",
                                labels=["result"])
        s = self.store
        if s is not None:
            c.add_metric(["served"], s.served)
            c.add_metric(["not_newer"], s.not_newer)
            c.add_metric(["refused"], s.refused)
        yield c


class _WriteErrorCollector:
    """Writes the disk refused (status, history, model, checkpoints), by file, read at scrape time."""

    def __init__(self) -> None:
        self.source: Any = None  # () -> {file: count}

    def collect(self):
        c = CounterMetricFamily("fedhive_write_errors", "Writes to the run folder that failed (disk full, read-only "
                                "folder), by file; the run goes on", labels=["file"])
        counts = self.source() if self.source is not None else {}
        for name in ("status.json", "history.json", "model.safetensors", "checkpoint"):
            c.add_metric([name], float(counts.get(name, 0)))
        yield c


class ServerMetrics(Observer):
    """The server's metrics in their own registry (``registry``); :meth:`serve` also exposes them over HTTP."""

    def __init__(self, transport: Transport | None = None, registry: CollectorRegistry | None = None, *,
                 simulated: bool = False) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.transport = transport
        self.strategy: Strategy | None = None
        self.simulated = simulated
        from fedhive import __version__

        self.build = Info("fedhive_build", "fedhive version, strategy and mode of this run", registry=r)
        self.build.info({"version": __version__, "strategy": "", "mode": "simulated" if simulated else "deployment"})
        self.version = Gauge("fedhive_model_version", "Version of the global model", registry=r)
        self.updates = Counter("fedhive_updates_total", "Client updates received, by outcome",
                               ["outcome", "reason", "device_class"], registry=r)
        self.failures = Counter("fedhive_task_failures_total", "Tasks that did not come back, by reason",
                                ["reason"], registry=r)
        for reason in FAILURE_REASONS:  # exported as 0 from the start, so rates and alerts see the series
            self.failures.labels(reason)
        self.dispatched = Counter("fedhive_tasks_dispatched_total", "Tasks sent to clients", ["device_class"],
                                  registry=r)
        self.staleness = Histogram("fedhive_update_staleness", "Versions between a task's model and the global "
                                   "model when its update arrived", buckets=STALENESS_BUCKETS, registry=r)
        self.duration = Histogram("fedhive_client_task_duration_seconds", "Dispatch to reply, per device class",
                                  ["device_class"], buckets=DURATION_BUCKETS, registry=r)
        self.clients = Gauge("fedhive_clients_connected", "Connected clients by device class", ["device_class"],
                             registry=r)
        self.accuracy = Gauge("fedhive_eval_accuracy", "Test accuracy of the global model (last evaluation)",
                              registry=r)
        self.loss = Gauge("fedhive_eval_loss", "Test loss of the global model (last evaluation)", registry=r)
        self.bytes = Gauge("fedhive_model_bytes_moved", "Model bytes sent to and received from clients so far",
                           registry=r)
        self.bytes.set_function(lambda: float(getattr(self.transport, "bytes_moved", 0) or 0))
        self.strategy_gauge = Gauge("fedhive_strategy_state", "Strategy-specific state: fedbuff buffer_fill, "
                                    "fedcompass open_groups and buffered, fedasmu alpha", ["name"], registry=r)
        self.aggregation = Histogram("fedhive_aggregation_duration_seconds", "Time the strategy took for an "
                                     "update, timer or failure that changed the global model", buckets=AGGREGATION_BUCKETS, registry=r)
        self.update_bytes = Histogram("fedhive_update_size_bytes", "Model bytes in each client update",
                                      buckets=BYTES_BUCKETS, registry=r)
        self.bytes_received = Counter("fedhive_received_bytes", "Model bytes received in client updates",
                                      registry=r)
        self.bytes_sent = Counter("fedhive_sent_bytes", "Model bytes sent with tasks", registry=r)
        self.steps = Histogram("fedhive_assigned_steps", "Local steps assigned per task (FedCompass varies them)",
                               buckets=STEPS_BUCKETS, registry=r)
        self._store = _StoreCollector()
        r.register(self._store)
        self._writes = _WriteErrorCollector()
        r.register(self._writes)
        self._classes: set[str] = set()
        self._labels: set[str] = set()  # device_class label values other than the known classes
        self._http: Any = None

    def watch_writes(self, source: Any) -> None:
        """Export ``source()`` (``{file: failed writes}``, as ``RunStatus.all_write_errors``) as
        ``fedhive_write_errors_total{file}``."""
        self._writes.source = source

    def watch_store(self, store: ModelStore) -> None:
        """Export the model store's request tallies."""
        self._store.store = store

    def close(self) -> None:
        """Stop the HTTP endpoint started by :meth:`serve`."""
        exposition.stop(self._http)
        self._http = None

    @classmethod
    def serve(cls, address: str, transport: Transport | None = None, *, simulated: bool = False) -> "ServerMetrics":
        """Metrics exposed at ``http://address/metrics`` (``HOST:PORT``).

        Raises
        ------
        ValueError
            A malformed address. OSError: the port is taken.
        """
        m = cls(transport, simulated=simulated)
        m._http = exposition.serve(address, m.registry, "metrics-address")
        log.info("Prometheus metrics on http://%s/metrics", address)
        return m

    # ------------------------------------------------------------------ observer hooks
    def on_start(self, strategy: Strategy, now: float) -> None:
        from fedhive import __version__

        self.strategy = strategy
        self.build.info({"version": __version__, "strategy": strategy.name,
                         "mode": "simulated" if self.simulated else "deployment"})
        self._model_bytes = sum(int(p.nbytes) for p in strategy.params)
        self.version.set(strategy.version)
        self._strategy_state()
        if self.transport is not None:
            self.on_membership(self.transport.clients(), now)

    def on_dispatch(self, task: Task, client: ClientInfo, now: float) -> None:
        self.dispatched.labels(self._label(client.device_class)).inc()
        self.bytes_sent.inc(getattr(self, "_model_bytes", 0))
        steps = task.config.get("local_steps")
        if isinstance(steps, (int, float)):
            self.steps.observe(steps)
        self._after_change()

    def on_update(self, update: Update, outcome: Outcome, client: ClientInfo, staleness: int, duration: float,
                  now: float) -> None:
        label = self._label(client.device_class)
        self.updates.labels(outcome.status, outcome.reason, label).inc()
        self.staleness.observe(max(0, staleness))
        self.duration.labels(label).observe(max(0.0, duration))
        size = sum(int(p.nbytes) for p in update.params)
        self.update_bytes.observe(size)
        self.bytes_received.inc(size)
        self._after_change()

    def on_aggregate(self, seconds: float, now: float) -> None:
        self.aggregation.observe(seconds)
        self._after_change()

    def on_reject(self, reason: str, node_id: int, now: float) -> None:
        self.updates.labels("rejected", reason, "unknown").inc()

    def on_failure(self, node_id: int, reason: str, now: float) -> None:
        self.failures.labels(reason).inc()
        self._after_change()

    def on_evaluate(self, record: dict, now: float) -> None:
        self.accuracy.set(record["accuracy"])
        self.loss.set(record["loss"])

    def on_membership(self, clients: Sequence[ClientInfo], now: float) -> None:
        counts: dict[str, int] = {}
        for c in clients:
            label = self._label(c.device_class)
            counts[label] = counts.get(label, 0) + 1
        for cls in self._classes | set(counts):
            self.clients.labels(cls).set(counts.get(cls, 0))
        self._classes |= set(counts)

    def _label(self, device_class: object) -> str:
        """The ``device_class`` label for a client's class: the class itself if it is a known one or one of the
        first MAX_DEVICE_CLASS_LABELS others seen (strings of at most MAX_DEVICE_CLASS_CHARS), else ``other``."""
        if type(device_class) is not str:
            return OTHER_DEVICE_CLASS
        if device_class in KNOWN_DEVICE_CLASSES or device_class in self._labels:
            return device_class
        if 0 < len(device_class) <= MAX_DEVICE_CLASS_CHARS and len(self._labels) < MAX_DEVICE_CLASS_LABELS:
            self._labels.add(device_class)
            return device_class
        return OTHER_DEVICE_CLASS

    def _after_change(self) -> None:
        if self.strategy is not None:
            self.version.set(self.strategy.version)
            self._strategy_state()

    def _strategy_state(self) -> None:
        for name, value in self.strategy.gauges().items():  # type: ignore[union-attr]
            self.strategy_gauge.labels(name).set(value)
