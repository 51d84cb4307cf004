"""The server's Prometheus metrics, driven by a real orchestrator run in virtual time and scraped over HTTP."""

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from fedhive.server.metrics import ServerMetrics
from fedhive.sim.profiles import DeviceProfile, FleetSpec
from fedhive.sim.runner import SimConfig, run_sim


def scrape(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_follow_a_run_and_are_served_over_http():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    m = ServerMetrics.serve(f"127.0.0.1:{port}")
    try:
        _check(m, port)
    finally:
        m.close()


def _check(m, port):
    fleet = FleetSpec({"slow": 2, "fast": 4}, profiles={"slow": DeviceProfile("slow", 0.5, 1e6, 0.1),
                                                        "fast": DeviceProfile("fast", 0.01, 1e7, 0.0)})
    res = run_sim(SimConfig(strategy="fedbuff", strategy_params={"buffer_size": 3}, fleet=fleet, budget=10.0, seed=1,
                            task="synthetic", local_steps=5), observer=m)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        got = scrape(r.read().decode())
    assert got[("fedhive_model_version", ())] == res["final"]["version"] > 0
    applied = sum(v for (n, labels), v in got.items() if n == "fedhive_updates_total" and ("outcome", "applied") in labels)
    buffered = sum(v for (n, labels), v in got.items()
                   if n == "fedhive_updates_total" and ("outcome", "buffered") in labels)
    assert applied == res["counters"]["update_applied"] and buffered == res["counters"]["update_buffered"]
    assert applied + buffered == res["final"]["client_updates"]
    assert got[("fedhive_update_staleness_count", ())] == res["final"]["client_updates"]
    classes = {dict(labels).get("device_class") for (n, labels) in got if n == "fedhive_client_task_duration_seconds_count"}
    assert classes == {"slow", "fast"}
    assert got[("fedhive_eval_accuracy", ())] == res["final"]["accuracy"]
    assert ("fedhive_strategy_state", (("name", "buffer_fill"),)) in got
