"""The Ray executor, for real: a local Ray started by the executor, and Ray's fake multi-node autoscaling cluster.

Ray 2.55's servers listen on every interface even when told 127.0.0.1, so each run happens in
``tests/sim/ray_probe.py`` inside fresh network and PID namespaces (``unshare``, root): the only interface there is
loopback, and every Ray process (head, fake worker nodes, workers) dies with the namespace's first process, which the
test kills by PID if anything goes wrong.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from isolation import can_isolate, run_isolated

pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(420)

PROBE = Path(__file__).with_name("ray_probe.py")

needs_namespaces = pytest.mark.skipif(not can_isolate(), reason="needs unshare with network/PID namespaces (root)")


# Inside the namespace /tmp/ray is a fresh tmpfs (the mount namespace is private), so no Ray session of another test
# or an earlier run is visible. It starts with a stale ray_current_cluster, as a `ray start` that is long gone leaves
# it: a local Ray started by the executor must not try to join that address (it did, and waited for its GCS).
SETUP = ("ip link set lo up && mkdir -p /tmp/ray && mount -t tmpfs -o size=512m fedhive-ray /tmp/ray"
         " && echo 127.0.0.1:1 > /tmp/ray/ray_current_cluster")


def run_probe(mode: str, timeout: float) -> dict:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    res = run_isolated([sys.executable, str(PROBE), mode], env, timeout, setup=SETUP)
    lines = [line for line in res.stdout.splitlines() if line.startswith("PROBE ")]
    assert res.returncode == 0 and lines, res.stdout[-6000:]
    return json.loads(lines[-1][len("PROBE "):])


@needs_namespaces
def test_ray_and_inline_give_the_same_model():
    r = run_probe("local", 300)
    assert not r["ray_left_running"]  # the executor shut down the Ray it started
    assert r["ray"]["version"] == r["inline"]["version"] > 5
    assert r["ray"]["history"] == r["inline"]["history"]
    assert r["ray"]["digest"] == r["inline"]["digest"]


@needs_namespaces
def test_autoscaler_adds_workers_for_waiting_trainings_and_removes_them_after():
    r = run_probe("autoscale", 400)
    # The head holds no trainings: six clients' trainings waiting for CPUs made the autoscaler add worker nodes
    # (2 CPUs each, at most 3), and after the run they went away (idle timeout 6 s).
    assert r["workers_before"] == 0
    assert r["workers_max"] >= 2, r
    assert r["workers_after"] == 0, r
    # Where the training ran does not change the run.
    assert r["ray"]["updates"] == r["inline"]["updates"] > 50
    assert r["ray"]["history"] == r["inline"]["history"]
    assert r["ray"]["digest"] == r["inline"]["digest"]
