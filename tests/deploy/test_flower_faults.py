"""Faults and foreign clients on a real Flower cluster: a SuperNode killed mid-task and one joining mid-run, stock
Flower ClientApps under fedhive's server app, and ``fedhive up`` end to end."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import dump_logs, read_json, status, wait_for, wait_for_none

from fedhive.localcluster import LocalCluster
from fedhive.server.settings import KEYS

pytestmark = pytest.mark.timeout(900)
HERE = Path(__file__).resolve().parent


def test_killed_supernode_fails_its_task_and_a_new_node_gets_work(tmp_path):
    cluster = LocalCluster(tmp_path / "c", emulate="none", data_dir=tmp_path / "data")
    try:
        cluster.start_superlink()
        for i, cls in enumerate(("cpu", "cpu", "rpi4")):
            cluster.add_agent(cls, i, 3)
        run_dir = tmp_path / "run"
        run_id = cluster.submit({"strategy": "fedasync", "task": "synthetic", "local-steps": 5, "min-clients": 3,
                                 "max-time": 110.0, "eval-interval": 5.0, "run-dir": str(run_dir)})
        wait_for(lambda: status(run_dir).get("client_updates", 0) >= 3, 120, "three updates")
        # SIGKILL the rpi4 agent's SuperNode and its ClientApp runner (with Flower's launcher: its launcher and
        # ClientApp, in the SuperNode's group): no goodbye, as a device losing power.
        victim = cluster.run_dir / "agents" / "agent2" / "supernode.pid"
        old_pid = int(victim.read_text())
        runner = cluster.run_dir / "agents" / "agent2" / "runner.pid"
        for pid in (old_pid, int(runner.read_text()) if runner.exists() else None):
            if pid is not None:
                cluster.stop_pgid(pid, signal.SIGKILL)
        # Its agent starts a new SuperNode, which registers as a new node and must get work.
        wait_for(lambda: victim.exists() and int(victim.read_text()) != old_pid, 30, "the agent to restart it")
        # Flower declares the old node lost after its heartbeat expires (about a minute); once the lost task has
        # failed and an rpi4 update arrived after that (the old node is dead, so from the new one), the run is
        # stopped: waiting for max-time would test nothing more.
        def lost_task_failed():
            s = status(run_dir)
            return s if sum(s.get("failures", {}).values()) else None

        failed = wait_for(lost_task_failed, 150, "the killed node's task to fail")
        rpi_then = failed.get("updates_by_class", {}).get("rpi4", 0)
        wait_for(lambda: status(run_dir).get("updates_by_class", {}).get("rpi4", 0) > rpi_then, 90,
                 "an update from the new rpi4 node")
        cluster.stop_run(run_id)
        st = cluster.wait_status(run_dir, run_id=run_id, timeout=300)
        assert st["state"] in ("finished", "stopped"), dump_logs(cluster)
        h = read_json(run_dir / "history.json")
        assert h["counters"].get("failed_node_lost", 0) >= 1, h["counters"]  # the lost task went to the strategy
        rpi_nodes = {a["node"] for a in h["arrivals"] if a["class"] == "rpi4"}
        assert len(rpi_nodes) == 2, h["arrivals"]  # the old node id and the new one both delivered updates
    finally:
        cluster.close()
    assert not wait_for_none(cluster)


def test_close_stops_a_server_app_it_never_saw(tmp_path):
    """A test that fails before ``wait_status`` (which learns the ServerApp's pid from status.json) must still leave
    no ServerApp behind: close() finds it by this cluster's FLWR_HOME in its environment."""
    import os
    import time

    cluster = LocalCluster(tmp_path / "c", emulate="none", data_dir=tmp_path / "data")
    try:
        cluster.start_superlink()
        # No agents: the ServerApp starts and waits for its clients.
        cluster.submit({"strategy": "fedasync", "task": "synthetic", "min-clients": 1, "wait-clients": 300.0,
                        "run-dir": str(tmp_path / "run")})
        apps = wait_for(lambda: cluster._server_apps(), 120, "the ServerApp to start")
        assert not cluster.server_pids  # never learnt from status.json
        other = LocalCluster(tmp_path / "other", emulate="none")  # another cluster does not claim it
        assert not other._server_apps()
    finally:
        cluster.close()
    assert not wait_for_none(cluster)
    time.sleep(0.5)
    for pid in apps:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"


def _stock_app(dst: Path) -> Path:
    """The stock ClientApp with fedhive's server app, in a Flower app folder declaring fedhive's run config."""
    dst.mkdir(parents=True)
    shutil.copy(HERE / "stock_app" / "stock_client.py", dst / "stock_client.py")
    lines = ['[build-system]', 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', '',
             '[project]', 'name = "stockapp"', 'version = "1.0.0"', '', '[tool.flwr.app]', 'publisher = "someone"', '',
             '[tool.flwr.app.components]', 'serverapp = "fedhive.server.app:app"', 'clientapp = "stock_client:app"',
             '', '[tool.flwr.app.config]']
    lines += [f"{k} = {json.dumps(v)}" for k, (v, _) in KEYS.items()]
    (dst / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return dst


def test_stock_flower_clients_work_with_fedhive(tmp_path):
    app = _stock_app(tmp_path / "app")
    cluster = LocalCluster(tmp_path / "c", emulate="none")
    try:
        cluster.start_superlink()
        for i in range(2):
            cluster.add_supernode({"partition-id": i, "num-partitions": 2})
        # Two runs one after another on the same SuperNodes: an async run ends with tasks in flight, and a
        # SuperNode that pulls one after its run finished gets out of step (README, "The end of a run"); the
        # synchronous FedAvg run after it would then stall. (FedBuff with stock clients: the simulation run of
        # test_flower_dropin.py.)
        for strategy, params in (("fedasync", ""), ("fedavg", "")):
            run_dir = tmp_path / strategy
            run_id = cluster.submit({"strategy": strategy, "strategy-params": params, "task": "synthetic",
                                     "min-clients": 2, "max-updates": 4, "max-time": 200.0, "eval-interval": 2.0,
                                     "run-dir": str(run_dir)}, app_dir=app)
            st = cluster.wait_status(run_dir, run_id=run_id, timeout=240)
            assert st["state"] == "finished", dump_logs(cluster)
            h = read_json(run_dir / "history.json")
            assert h["final"]["client_updates"] >= 4 and h["final"]["version"] >= 1, h["final"]
            assert h["counters"].get("rejected", 0) == 0
            assert set(h["updates_by_class"]) == {"unknown"}  # stock clients do not answer the profile query
            assert all(a["outcome"] in ("applied", "buffered") for a in h["arrivals"])
        # The server app let the nodes take every message while its run was running.
        for log in sorted((cluster.run_dir / "logs").glob("supernode*.log")):
            assert "Ignoring message" not in log.read_text(errors="replace"), log.name
    finally:
        cluster.close()
    assert not wait_for_none(cluster)


def test_fedhive_up_leaves_a_run_folder(tmp_path):
    out = tmp_path / "up"
    proc = subprocess.Popen([sys.executable, "-m", "fedhive.cli", "up", "--agents", "3", "--duration", "20",
                             "--out", str(out), "--metrics-address", ""], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        stdout, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout
    assert "emulated by cgroup" in stdout or "emulated by slowdown" in stdout
    # Secure by default: TLS, and each agent's own key registered with the SuperLink.
    assert "TLS and node authentication" in stdout
    assert len(list((out / "certs" / "nodes").glob("agent*.pub"))) == 3
    h = read_json(out / "history.json")
    assert {"history", "final"} <= set(h)
    assert {"time", "version", "accuracy", "loss", "client_updates"} <= set(h["history"][-1])
    assert h["final"]["client_updates"] > 0 and h["final"]["version"] >= 1
    # The run lasted its duration (the last evaluation may be earlier: the final model is evaluated again only
    # when its version changed since the last scheduled evaluation).
    assert h["final"]["time"] >= 20.0 - 1e-6 and h["history"][-1]["time"] > 12.0
    for f in ("model.safetensors", "accuracy_vs_time.png"):
        assert (out / f).stat().st_size > 0
    assert any((out / "checkpoints").glob("ckpt-*.npz"))
    assert not list(Path("/sys/fs/cgroup/cpu").glob(f"fedhive-{proc.pid}-*"))  # its cgroups were removed
