"""A frozen device (SIGSTOP of a real SuperNode and its ClientApp): the asynchronous run goes on without it, its
task ends as a failure, and the node delivers again once it thaws (SIGCONT). The detection time is measured."""

from __future__ import annotations

import signal
import time

import pytest

from fedhive.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(600)


@pytest.mark.parametrize("runner", ["flower", "warm"])
def test_a_frozen_node_does_not_stop_an_async_run(tmp_path, runner):
    """With either ClientApp runner. The freeze may land while the node uploads a reply: Flower's own
    ``Grid.pull_messages`` then waited up to two hours for it, holding the whole ServerApp (seen in CI); fedhive's
    ReplyPuller fails that task as ``upload_stalled`` after ``upload-timeout`` and the run goes on."""
    from deploy.conftest import dump_logs, read_json, status, wait_for, wait_for_none

    cluster = LocalCluster(tmp_path / "c", emulate="none", data_dir=tmp_path / "data")
    try:
        cluster.start_superlink()
        for i, cls in enumerate(("cpu", "cpu", "rpi4")):  # (no emulation: the class only names agent2's updates)
            cluster.add_agent(cls, i, 3, extra=["--clientapp-runner", runner])
        run_dir = tmp_path / "run"
        run_id = cluster.submit({"strategy": "fedasync", "task": "synthetic", "local-steps": 5, "min-clients": 3,
                                 "ttl": 15.0, "upload-timeout": 10.0, "max-time": 75.0, "eval-interval": 5.0,
                                 "run-dir": str(run_dir)})
        wait_for(lambda: status(run_dir).get("client_updates", 0) >= 3, 150, "three updates")
        agent_dir = cluster.run_dir / "agents" / "agent2"
        # The SuperNode and the agent's ClientApp runner (with Flower's launcher: its launcher and ClientApp, in
        # the SuperNode's group): a frozen device.
        pids = [int((agent_dir / f).read_text()) for f in ("supernode.pid", "runner.pid") if (agent_dir / f).exists()]
        before = status(run_dir)
        for pid in pids:
            cluster.stop_pgid(pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            wait_for(lambda: sum(status(run_dir).get("failures", {}).values()) > sum(before.get("failures", {})
                                                                                      .values()),
                     120, "the frozen node's task to fail")
            detected = time.monotonic() - frozen_at
            during = status(run_dir)
            # The other two nodes kept delivering while it was frozen.
            assert during["client_updates"] >= before["client_updates"] + 4, (before, during)
        finally:
            for pid in pids:
                cluster.stop_pgid(pid, signal.SIGCONT)
        # Thawed, the node gets work again and delivers; then the run is stopped (max-time is only a bound).
        thawed = status(run_dir).get("updates_by_class", {}).get("rpi4", 0)
        wait_for(lambda: status(run_dir).get("updates_by_class", {}).get("rpi4", 0) > thawed, 60,
                 "an update from the thawed node")
        cluster.stop_run(run_id)
        st = cluster.wait_status(run_dir, run_id=run_id, timeout=300)
        assert st["state"] in ("finished", "stopped"), dump_logs(cluster)
        h = read_json(run_dir / "history.json")
        print(f"frozen node detected after {detected:.1f} s (ttl 15 s): failures {h['counters']}")
        assert detected <= 15.0 + 15.0  # the TTL (code 3) or upload-timeout, plus the poll and reply path
        failed = {k for k, v in h["counters"].items() if k.startswith("failed_") and v}
        assert failed and failed <= {"failed_timeout", "failed_upload_stalled", "failed_node_lost"}, h["counters"]
    finally:
        cluster.close()
    assert not wait_for_none(cluster)
