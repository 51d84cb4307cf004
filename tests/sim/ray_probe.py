"""Ray runs for tests/sim/test_ray.py, in a process of their own (the test starts it in fresh network and PID
namespaces, so every Ray server listens on loopback only and every Ray process dies with the namespace).

    python ray_probe.py local       # a seed's run inline and on a local Ray started by the executor
    python ray_probe.py autoscale   # the same run on Ray's fake multi-node autoscaling cluster

Prints one JSON line: what the test asserts on.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from fedhive.sim.profiles import DeviceProfile, FleetSpec  # noqa: E402
from fedhive.sim.runner import SimConfig, run_sim  # noqa: E402


def digest(result: dict) -> str:
    h = hashlib.sha256()
    for a in result["_params"]:
        h.update(a.tobytes())
    return h.hexdigest()


def summary(result: dict) -> dict:
    return {"digest": digest(result), "version": result["final"]["version"],
            "updates": result["final"]["client_updates"], "history": result["history"]}


def local() -> dict:
    import ray

    fleet = FleetSpec({"slow": 2, "fast": 4}, profiles={"slow": DeviceProfile("slow", 0.5, 1e6, 0.1),
                                                        "fast": DeviceProfile("fast", 0.01, 1e7, 0.0)})
    base = dict(strategy="fedbuff", strategy_params={"buffer_size": 3}, fleet=fleet, budget=15.0, seed=5,
                task="synthetic", local_steps=5)
    inline = run_sim(SimConfig(**base))
    on_ray = run_sim(SimConfig(**base, executor="ray"))
    return {"inline": summary(inline), "ray": summary(on_ray), "ray_left_running": ray.is_initialized()}


def autoscale() -> dict:
    import ray
    from ray.cluster_utils import AutoscalingCluster

    class FakeCluster(AutoscalingCluster):
        """Ray's fake multi-node autoscaling cluster. Its base config file (fake_multi_node/example.yaml) is not
        in Ray's wheel, so the config is written out here: the same fake provider, no updaters, no SSH."""

        def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
            config = {
                "cluster_name": "fedhive-fake", "max_workers": 8, "upscaling_speed": 1.0,
                "idle_timeout_minutes": 0.1,
                "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                             "disable_launch_config_check": True},
                "available_node_types": dict(worker_node_types), "head_node_type": "ray.head.default",
                "auth": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
                "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
                "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
            }
            config["available_node_types"]["ray.head.default"] = {"resources": head_resources, "node_config": {},
                                                                  "max_workers": 0}
            config.update(config_kwargs)
            return config

    # Trainings ask for {"CPU": 1}; the head has no CPU for tasks (as Ray recommends for a head), so every training
    # waits until the autoscaler has added a worker node.
    fleet = FleetSpec({"cpu": 6}, jitter=0.2)
    base = dict(strategy="fedasync", fleet=fleet, budget=20.0, seed=3, task="synthetic", local_steps=5,
                chunk_size=1)
    inline = run_sim(SimConfig(**base))

    cluster = FakeCluster(head_resources={"CPU": 0},
                          worker_node_types={"cpu-worker": {"resources": {"CPU": 2}, "node_config": {},
                                                            "min_workers": 0, "max_workers": 3}},
                          idle_timeout_minutes=0.1)
    cluster.start(override_env={"RAY_USAGE_STATS_ENABLED": "0"})
    try:
        ray.init(address="auto", configure_logging=False, log_to_driver=False)

        def workers() -> int:
            return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0)

        seen = {"max": 0, "before": workers()}
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                seen["max"] = max(seen["max"], workers())
                time.sleep(0.25)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t0 = time.monotonic()
        on_ray = run_sim(SimConfig(**base, executor="ray", ray_address="auto"))
        run_s = time.monotonic() - t0
        stop.set()
        watcher.join()
        seen["max"] = max(seen["max"], workers())
        t1 = time.monotonic()
        while workers() and time.monotonic() - t1 < 120:
            time.sleep(0.5)
        down_s = time.monotonic() - t1
        after = workers()
        ray.shutdown()
    finally:
        cluster.shutdown()
    return {"inline": summary(inline), "ray": summary(on_ray), "workers_before": seen["before"],
            "workers_max": seen["max"], "workers_after": after, "run_s": run_s, "scale_down_s": down_s}


if __name__ == "__main__":
    out = {"local": local, "autoscale": autoscale}[sys.argv[1]]()
    print("PROBE " + json.dumps(out))
