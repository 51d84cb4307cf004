"""Every strategy on a real SuperLink with four real SuperNodes (fedhive agents), and a killed-and-resumed run."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import dump_logs, read_json, status, wait_for

from fedhive.engine import checkpoint as ckpt

pytestmark = pytest.mark.timeout(900)

BASE = {"task": "synthetic", "local-steps": 5, "eval-interval": 2.0, "min-clients": 4, "wait-clients": 120.0,
        "max-time": 120.0}


def run_and_wait(cluster, name, timeout=240, **config):
    run_dir = cluster.run_dir / "runs" / name
    run_id = cluster.submit({**BASE, "run-name": name, "run-dir": str(run_dir), **config})
    st = cluster.wait_status(run_dir, run_id=run_id, timeout=timeout)
    assert st.get("state") == "finished", f"{name}: {st}\n{dump_logs(cluster)}"
    return read_json(run_dir / "history.json"), run_dir


@pytest.mark.parametrize("strategy, params", [
    ("fedavg", ""),
    ("fedasync", ""),
    ("fedbuff", "buffer_size=2"),
    ("fedfix", "interval=3.0"),
    ("fedcompass", "q_min=5,q_max=20"),
    ("fedasmu", ""),
])
def test_strategy_completes_on_real_flower(cluster4, strategy, params):
    h, run_dir = run_and_wait(cluster4, strategy, strategy=strategy, **{"strategy-params": params, "max-updates": 6})
    final = h["final"]
    assert final["stop_reason"] == "max_updates"
    assert final["client_updates"] >= 6
    assert final["version"] >= 1
    assert h["counters"].get("rejected", 0) == 0
    # Updates came from more than one device class, with their profiles (the server asked each node).
    assert len(h["updates_by_class"]) >= 2 and "unknown" not in h["updates_by_class"]
    assert (run_dir / "model.safetensors").stat().st_size > 0
    assert (run_dir / "accuracy_vs_time.png").stat().st_size > 0
    assert ckpt.latest(run_dir / "checkpoints") is not None
    times = [r["time"] for r in h["history"]]
    assert times == sorted(times) and {"time", "version", "accuracy", "loss", "client_updates"} <= set(h["history"][0])
    if strategy == "fedasmu":
        # Devices fetched from the model store part-way through training (fetch_version >= 0).
        fetched = [a["fetch_version"] for a in h["arrivals"] if a.get("fetch_version") is not None]
        assert fetched and max(fetched) >= 0, h["arrivals"]
    if strategy == "fedcompass":
        assert all(a["group"] is not None for a in h["arrivals"][4:])


def test_killed_server_app_resumes_from_its_checkpoint(cluster4):
    name = "resume"
    run_dir = cluster4.run_dir / "runs" / name
    config = {**BASE, "run-name": name, "run-dir": str(run_dir), "strategy": "fedasync", "checkpoint-every": 1,
              "max-versions": 10, "max-time": 300.0}
    cluster4.submit(config)
    first = wait_for(lambda: status(run_dir).get("version", 0) >= 4 and status(run_dir), 180, "version 4")
    pid = first["pid"]
    os.kill(pid, signal.SIGKILL)  # the ServerApp process dies mid-run
    time.sleep(1.0)
    saved = ckpt.load(ckpt.latest(run_dir / "checkpoints"))
    v_saved = saved["strategy"]["version"] if "version" in saved["strategy"] else None
    updates_saved = saved["client_updates"]
    run_id = cluster4.submit({**config, "resume": True})
    st = cluster4.wait_status(run_dir, run_id=run_id, timeout=240)
    assert st["state"] == "finished", dump_logs(cluster4)
    h = read_json(run_dir / "history.json")
    versions = [r["version"] for r in h["history"]]
    assert versions == sorted(versions), versions  # the version never went back
    assert h["final"]["version"] >= 10 and h["final"]["stop_reason"] == "max_versions"
    # The old run's in-flight work was failed, never applied: every update after the resume is counted once,
    # on top of those in the checkpoint, and FedAsync applies each update as one version.
    assert h["counters"].get("failed_lost_in_restart", 0) >= 1
    assert h["final"]["client_updates"] == h["counters"]["update_applied"]
    assert h["final"]["version"] == h["counters"]["update_applied"]
    assert updates_saved >= 4 and (v_saved is None or v_saved >= 4)
    assert h["history"][0]["time"] == 0.0 and h["history"][0]["version"] == 0  # records from before the kill kept
