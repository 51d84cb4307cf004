"""The agent's own metrics follow what its warm worker does."""

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fedhive.client.metrics import AgentMetrics
from fedhive.client.trainer import Trainer
from fedhive.runconfig import task_settings
from fedhive.tasks import load_task


def test_agent_metrics_count_tasks_and_speed():
    m = AgentMetrics("rpi4", {"arch": "aarch64", "cores": 4})
    trainer = Trainer(device="cpu")
    trainer.metrics = m
    model = load_task("synthetic", num_clients=2).initial_params(0)
    req = {"op": "train", "settings": task_settings({"task": "synthetic"}), "node": {"partition-id": 0,
           "num-partitions": 2}, "config": {"local_steps": 4}, "seed": 1}
    for _ in range(2):
        trainer.handle(req, model)
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for fam in text_string_to_metric_families(generate_latest(m.registry).decode()) for s in fam.samples}
    assert got[("fedhive_agent_tasks_total", (("op", "train"),))] == 2
    assert got[("fedhive_agent_task_duration_seconds_count", ())] == 2
    assert got[("fedhive_agent_steps_per_second", ())] > 0
    assert got[("fedhive_agent_resident_memory_bytes", ())] > 10e6
    assert got[("fedhive_agent_info", (("arch", "aarch64"), ("cores", "4"), ("device_class", "rpi4")))] == 1
