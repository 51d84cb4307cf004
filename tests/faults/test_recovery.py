"""Recovery without a human, on real processes: the ServerApp SIGKILLed mid-run, then the SuperLink SIGKILLed and
started again on its database. ``LocalCluster.supervise`` ("submit or resume", what ``fedhive up`` runs) resumes the
run from its newest checkpoint each time; the run finishes, versions never go back, nothing is applied twice."""

from __future__ import annotations

import os
import signal

import pytest

from fedhive.engine import checkpoint as ckpt
from fedhive.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(900)


def test_server_app_and_superlink_kills_are_resumed(tmp_path):
    from deploy.conftest import dump_logs, read_json, wait_for_none

    cluster = LocalCluster(tmp_path / "c", emulate="none", data_dir=tmp_path / "data")
    run_dir = tmp_path / "run"
    seen: list[tuple[int, int]] = []  # (attempt, version) from every status.json read
    kills: list[str] = []
    restarts: list[int] = []

    def on_status(st):
        if st.get("state") != "running":  # ("starting": no model loaded yet)
            return
        seen.append((len(restarts), int(st.get("version", 0))))
        if not ckpt.checkpoints(run_dir / "checkpoints"):
            return
        if not kills and st.get("client_updates", 0) >= 6:
            kills.append("server_app")
            os.kill(int(st["pid"]), signal.SIGKILL)
        elif len(kills) == 1 and restarts and st.get("client_updates", 0) >= 12:
            kills.append("superlink")
            cluster.stop(cluster.superlink, signal.SIGKILL)

    try:
        cluster.start_superlink()
        for i in range(3):
            cluster.add_agent("cpu", i, 3)
        status, n = cluster.supervise(
            {"strategy": "fedasync", "task": "synthetic", "local-steps": 5, "min-clients": 3, "max-updates": 18,
             "max-time": 400.0, "eval-interval": 5.0, "checkpoint-every": 1, "run-dir": str(run_dir)},
            timeout=800, max_restarts=3, on_status=on_status, on_restart=lambda k, st: restarts.append(k))
        assert status["state"] == "finished", (status, dump_logs(cluster))
        assert kills == ["server_app", "superlink"] and n == 2, (kills, n)
        h = read_json(run_dir / "history.json")
        assert h["final"]["client_updates"] >= 18
        versions = [v for _, v in seen]
        assert versions == sorted(versions), [(a, v) for a, v in seen if a or v]  # never back to an older version
        # Nothing applied twice: every applied update made exactly one version (FedAsync), across the resumes.
        assert h["final"]["version"] == h["counters"].get("update_applied", 0), h["counters"]
    finally:
        cluster.close()
    assert not wait_for_none(cluster)
