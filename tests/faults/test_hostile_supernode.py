"""The hostile ClientApp on real Flower SuperNodes (``flower-superlink`` + ``flower-supernode``, loopback only):
one honest node and one hostile node under fedhive's server app. The run finishes, every hostile reply the node
logged is a counted rejection on the server (or one of the harmless kinds), the model is written and finite."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedhive.faults import hostile_client as H
from fedhive.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(600)


def test_a_hostile_node_on_a_real_supernode_cannot_break_the_run(tmp_path):
    from deploy.conftest import dump_logs, read_json, wait_for_none

    logs = tmp_path / "hostile"
    logs.mkdir()
    app = H.write_app(tmp_path / "app")
    cluster = LocalCluster(tmp_path / "c", emulate="none")
    try:
        cluster.start_superlink()
        cluster.add_supernode({"hostile": 0})
        cluster.add_supernode({"hostile": 1, "log-dir": str(logs)})
        run_dir = tmp_path / "run"
        run_id = cluster.submit({"strategy": "fedasync", "task": "synthetic", "min-clients": 2, "max-updates": 8,
                                 "max-time": 300.0, "eval-interval": 5.0, "run-dir": str(run_dir)}, app_dir=app)
        st = cluster.wait_status(run_dir, run_id=run_id, timeout=400)
        assert st["state"] == "finished", dump_logs(cluster)
        h = read_json(run_dir / "history.json")
        sent = [ln.split() for f in logs.glob("*.log") for ln in f.read_text().splitlines() if ln.startswith("train")]
        assert sent, "the hostile node got no task"
        harmful = [k for _, _, k in sent if k not in H.MAY_APPLY]
        c = h["counters"]
        assert c.get("rejected", 0) >= len(harmful) - 1, (c, sent)  # one may be unread when the run stopped
        assert h["final"]["client_updates"] >= 8
        models = list(run_dir.glob("model*"))
        assert models, "no final model was written"
        json.dumps(h, allow_nan=False)
    finally:
        cluster.close()
    assert not wait_for_none(cluster)
