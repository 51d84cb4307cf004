"""Prometheus metrics of the server app (prometheus-client), fed by the orchestrator's observer hooks.

Names carry the ``fedhive_`` prefix and base units; counters end in ``_total``; durations and staleness are
histograms; the only label on per-update series is ``device_class`` (never a client id). Strategy gauges: FedBuff's
buffer fill, FedCompass's open groups and general buffer, FedASMU's last ``α``.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from fedhive.strategies.base import ClientInfo, Outcome, Strategy, Task, Update

from .orchestrator import Observer

log = logging.getLogger("fedhive.metrics")

STALENESS_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300, 600)


class ServerMetrics(Observer):
    """The server's metrics in their own registry (``registry``); :meth:`serve` also exposes them over HTTP."""

    def __init__(self, transport: Any = None, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.transport = transport
        self.strategy: Strategy | None = None
        self.version = Gauge("fedhive_model_version", "Version of the global model", registry=r)
        self.updates = Counter("fedhive_updates_total", "Client updates received, by outcome",
                               ["outcome", "reason", "device_class"], registry=r)
        self.failures = Counter("fedhive_task_failures_total", "Tasks that did not come back, by reason",
                                ["reason"], registry=r)
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
        self._classes: set[str] = set()
        self._http: Any = None

    def close(self) -> None:
        """Stop the HTTP endpoint started by :meth:`serve`."""
        if self._http is not None:
            server, _ = self._http
            server.shutdown()
            server.server_close()
            self._http = None

    @classmethod
    def serve(cls, address: str, transport: Any = None) -> "ServerMetrics":
        """Metrics exposed at ``http://address/metrics`` (``HOST:PORT``)."""
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"metrics-address must be HOST:PORT (e.g. 127.0.0.1:9464), got {address!r}")
        m = cls(transport)
        m._http = start_http_server(int(port), addr=host or "127.0.0.1", registry=m.registry)
        log.info("Prometheus metrics on http://%s/metrics", address)
        return m

    # ------------------------------------------------------------------ observer hooks
    def on_start(self, strategy: Strategy, now: float) -> None:
        self.strategy = strategy
        self.version.set(strategy.version)
        self._strategy_state()
        if self.transport is not None:
            self.on_membership(self.transport.clients(), now)

    def on_dispatch(self, task: Task, client: ClientInfo, now: float) -> None:
        self.dispatched.labels(client.device_class).inc()
        self._after_change()

    def on_update(self, update: Update, outcome: Outcome, client: ClientInfo, staleness: int, duration: float,
                  now: float) -> None:
        self.updates.labels(outcome.status, outcome.reason, client.device_class).inc()
        self.staleness.observe(max(0, staleness))
        self.duration.labels(client.device_class).observe(max(0.0, duration))
        self._after_change()

    def on_reject(self, reason: str, node_id: int, now: float) -> None:
        self.updates.labels("rejected", reason, "unknown").inc()

    def on_failure(self, node_id: int, reason: str, now: float) -> None:
        self.failures.labels(reason).inc()

    def on_evaluate(self, record: dict, now: float) -> None:
        self.accuracy.set(record["accuracy"])
        self.loss.set(record["loss"])

    def on_membership(self, clients: Sequence[ClientInfo], now: float) -> None:
        counts: dict[str, int] = {}
        for c in clients:
            counts[c.device_class] = counts.get(c.device_class, 0) + 1
        for cls in self._classes | set(counts):
            self.clients.labels(cls).set(counts.get(cls, 0))
        self._classes |= set(counts)

    def _after_change(self) -> None:
        if self.strategy is not None:
            self.version.set(self.strategy.version)
            self._strategy_state()

    def _strategy_state(self) -> None:
        s = self.strategy
        name = getattr(s, "name", "")
        if name == "fedbuff":
            self.strategy_gauge.labels("buffer_fill").set(s.buffer_fill)  # type: ignore[union-attr]
        elif name == "fedcompass":
            self.strategy_gauge.labels("open_groups").set(sum(g["open"] for g in s.groups))  # type: ignore[union-attr]
            self.strategy_gauge.labels("buffered").set(s.buffered)  # type: ignore[union-attr]
        elif name == "fedasmu":
            self.strategy_gauge.labels("alpha").set(s.last_alpha)  # type: ignore[union-attr]
