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


def _newest_version(run_dir):
    newest = ckpt.latest(run_dir / "checkpoints")
    return None if newest is None else int(newest.stem.split("-")[1])


def test_flwr_stop_and_sigterm_write_a_final_checkpoint_that_the_next_run_resumes(tmp_path):
    """``flwr stop`` (Flower makes the ServerApp SIGINT itself, then refuses its calls) and a SIGTERM to the ServerApp
    each end the run at once with a checkpoint of its last version (``checkpoint-every`` is far off) and status
    ``stopped``; the run resubmitted with ``resume=true`` continues from that version."""
    from deploy.conftest import dump_logs, read_json, status, wait_for, wait_for_none

    cluster = LocalCluster(tmp_path / "c", emulate="none", data_dir=tmp_path / "data")
    run_dir = tmp_path / "run"
    config = {"strategy": "fedasync", "task": "synthetic", "local-steps": 5, "min-clients": 2, "max-updates": 1000,
              "max-time": 400.0, "eval-interval": 5.0, "checkpoint-every": 10_000, "run-dir": str(run_dir)}
    try:
        cluster.start_superlink()
        for i in range(2):
            cluster.add_agent("cpu", i, 2)
        run_id = cluster.submit(config)
        wait_for(lambda: status(run_dir).get("version", 0) >= 3, 180, "three versions")
        cluster.stop_run(run_id)
        st = cluster.wait_status(run_dir, run_id=run_id, timeout=120)
        assert st["state"] == "stopped", (st, dump_logs(cluster))
        first = read_json(run_dir / "history.json")["final"]
        assert first["stop_reason"] == "signal_SIGINT" and first["version"] >= 3, first
        assert _newest_version(run_dir) == first["version"]

        run_id = cluster.submit({**config, "resume": True})
        wait_for(lambda: status(run_dir).get("state") == "running"
                 and status(run_dir).get("version", 0) >= first["version"] + 2, 180, "two more versions")
        os.kill(int(status(run_dir)["pid"]), signal.SIGTERM)
        st = cluster.wait_status(run_dir, run_id=run_id, timeout=120)
        assert st["state"] == "stopped", (st, dump_logs(cluster))
        second = read_json(run_dir / "history.json")["final"]
        assert second["stop_reason"] == "signal_SIGTERM" and second["version"] >= first["version"] + 2, second
        assert _newest_version(run_dir) == second["version"]
    finally:
        cluster.close()
    assert not wait_for_none(cluster)


def test_fedhive_submit_resubmits_a_lost_run_on_a_superlink_it_did_not_start(tmp_path):
    """``fedhive submit`` (compose's submit step) against a running SuperLink: the ServerApp SIGKILLed is noticed
    without its pid (another container's there) by its stale heartbeat file, within about 10 s, and the run is
    resubmitted with ``resume=true``; the command exits 0 once it finished."""
    import json
    import subprocess
    import sys
    import time

    from deploy.conftest import dump_logs, read_json, status, wait_for, wait_for_none

    cluster = LocalCluster(tmp_path / "c", emulate="none", data_dir=tmp_path / "data")
    run_dir = tmp_path / "run"
    run_config = (f"strategy='fedasync' task='synthetic' local-steps=5 min-clients=2 max-updates=8 max-time=400.0 "
                  f"eval-interval=5.0 checkpoint-every=1 run-dir='{run_dir}'")
    submit = None
    try:
        cluster.start_superlink()
        for i in range(2):
            cluster.add_agent("cpu", i, 2)
        submit = subprocess.Popen([sys.executable, "-m", "fedhive.cli", "submit", "--connection", "up",
                                   "--flwr-home", str(cluster.flwr_home), "--work-dir", str(tmp_path / "submit"),
                                   "--run-config", run_config], env=cluster.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        wait_for(lambda: status(run_dir).get("client_updates", 0) >= 3
                 and ckpt.checkpoints(run_dir / "checkpoints"), 240, "three updates")
        killed = int(status(run_dir)["pid"])
        os.kill(killed, signal.SIGKILL)
        t0 = time.monotonic()
        out, _ = submit.communicate(timeout=600)
        assert submit.returncode == 0, out + dump_logs(cluster)
        result = json.loads(out.strip().splitlines()[-1])
        assert result["state"] == "finished" and result["restarts"] == 1, out
        assert "resuming from its newest checkpoint" in out
        h = read_json(run_dir / "history.json")
        assert h["final"]["client_updates"] >= 8 and h["final"]["version"] == h["counters"]["update_applied"]
        print(f"lost run finished {time.monotonic() - t0:.0f} s after the SIGKILL")
    finally:
        if submit is not None and submit.poll() is None:
            os.killpg(submit.pid, signal.SIGKILL)
            submit.wait()
        cluster.close()
    assert not wait_for_none(cluster)
