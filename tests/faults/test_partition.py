"""A device cut off the network (a real agent in its own network namespace, joined by a veth pair): over a slow
link it still trains; when the link is cut its task ends as a failure within the TTL while the other devices go on,
and when the link comes back it delivers again. The SuperLink binds the host side of that private veth network only
(a network this test made; nothing else can reach it). ``tc netem`` is not in this kernel, so a slow link is ``tbf``
and a partition is the veth set down (see ``fedhive.faults.netns``)."""

from __future__ import annotations

import time

import pytest

from fedhive.faults import netns
from fedhive.localcluster import LocalCluster

pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(bool(netns.available()), reason=netns.available() or "available")]


def _failures(st: dict) -> int:
    return sum(st.get("failures", {}).values())


def _rpi(st: dict) -> int:
    return st.get("updates_by_class", {}).get("rpi4", 0)


def test_a_partitioned_node_fails_its_task_and_delivers_again_once_healed(tmp_path):
    from deploy.conftest import dump_logs, status, wait_for, wait_for_none

    with netns.Netns() as ns:
        cluster = LocalCluster(tmp_path / "c", emulate="none", data_dir=tmp_path / "data", host=ns.host_ip)
        try:
            cluster.start_superlink()
            cluster.add_agent("cpu", 0, 3)
            cluster.add_agent("cpu", 1, 3)
            cluster.add_agent("rpi4", 2, 3, prefix=ns.exec_prefix)  # the device behind the cable
            run_dir = tmp_path / "run"
            run_id = cluster.submit({"strategy": "fedasync", "task": "synthetic", "local-steps": 5, "min-clients": 3,
                                     "ttl": 15.0, "max-time": 400.0, "eval-interval": 5.0, "run-dir": str(run_dir)})
            wait_for(lambda: _rpi(status(run_dir)) >= 1, 150, "an update from the namespaced node")
            ns.throttle("2mbit")  # a slow link: it still trains
            slow = _rpi(status(run_dir))
            wait_for(lambda: _rpi(status(run_dir)) > slow, 90, "an update over the slow link")
            ns.throttle(None)

            before = status(run_dir)
            ns.cut()
            cut_at = time.monotonic()
            try:
                wait_for(lambda: _failures(status(run_dir)) > _failures(before), 90, "the cut-off node's task to fail")
                detected = time.monotonic() - cut_at
                during = status(run_dir)
                assert during["client_updates"] - _rpi(during) >= before["client_updates"] - _rpi(before) + 3, \
                    (before, during)  # the two other nodes kept delivering
                assert _rpi(during) == _rpi(before) or _rpi(during) == _rpi(before) + 1, (before, during)
            finally:
                ns.heal()
            back = _rpi(status(run_dir))
            wait_for(lambda: _rpi(status(run_dir)) > back, 150, "an update from the node once the link is back")
            print(f"partition detected after {detected:.1f} s (ttl 15 s); failures {status(run_dir)['failures']}")
            assert detected <= 15.0 + 15.0
            cluster.stop_run(run_id)
            st = cluster.wait_status(run_dir, run_id=run_id, timeout=120)
            assert st["state"] == "stopped", (st, dump_logs(cluster))
        finally:
            cluster.close()
        assert not wait_for_none(cluster)
