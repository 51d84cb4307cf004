"""The agent's own Prometheus metrics (``fedhive agent --metrics-address``): what the device itself sees.

``fedhive_agent_task_duration_seconds`` (training time of each task in the warm worker), ``fedhive_agent_steps_per_second``
(of the last task), ``fedhive_agent_tasks_total{op}``, ``fedhive_agent_resident_memory_bytes`` (the agent process),
``fedhive_agent_cpu_temperature_celsius`` (where ``/sys/class/thermal`` is readable) and
``fedhive_agent_supernode_restarts_total``; all labelled with the device class through ``fedhive_agent_info``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from fedhive import exposition

DURATION_BUCKETS = (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300)


def _rss_bytes() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("nan")


def _cpu_temperature() -> float:
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*")):
        try:
            return int((zone / "temp").read_text()) / 1000.0
        except (OSError, ValueError):
            continue
    return float("nan")


class AgentMetrics:
    def __init__(self, device_class: str, profile: dict[str, Any], registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        info = Info("fedhive_agent", "The device's profile", registry=r)
        info.info({"device_class": device_class, **{k: str(v) for k, v in profile.items()}})
        self.duration = Histogram("fedhive_agent_task_duration_seconds", "Training time per task in the worker",
                                  buckets=DURATION_BUCKETS, registry=r)
        self.steps_per_second = Gauge("fedhive_agent_steps_per_second", "Local steps per second of the last task",
                                      registry=r)
        self.tasks = Counter("fedhive_agent_tasks", "Requests the warm worker answered", ["op"], registry=r)
        self.restarts = Counter("fedhive_agent_supernode_restarts", "Times the agent restarted its SuperNode",
                                registry=r)
        Gauge("fedhive_agent_resident_memory_bytes", "Resident memory of the agent process",
              registry=r).set_function(_rss_bytes)
        Gauge("fedhive_agent_cpu_temperature_celsius", "CPU temperature (NaN where not readable)",
              registry=r).set_function(_cpu_temperature)
        self._http: Any = None

    def serve(self, address: str) -> None:
        self._http = exposition.serve(address, self.registry, "--metrics-address")

    def observe(self, op: str, reply: dict[str, Any]) -> None:
        self.tasks.labels(op).inc()
        if op == "train":
            seconds = float(reply.get("compute_seconds", reply.get("seconds", 0.0)))
            self.duration.observe(seconds)
            steps = reply.get("steps")
            if isinstance(steps, (int, float)) and seconds > 0:
                self.steps_per_second.set(steps / seconds)

    def close(self) -> None:
        exposition.stop(self._http)
        self._http = None
