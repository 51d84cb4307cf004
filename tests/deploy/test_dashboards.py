"""Every Grafana panel's query returns data from a real Prometheus scraping a real fedhive run on loopback.

A SuperLink and three fedhive agents run FedBuff with the server's metrics on a free port; Debian's ``prometheus``
(``make test`` installs it when missing) scrapes it every second with ``deploy/prometheus/prometheus.yml``'s job,
retargeted to 127.0.0.1. After the run, each panel's expression is evaluated over the run's time range through
Prometheus's HTTP API and must return samples. A panel naming a metric fedhive does not export fails too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import dump_logs

from fedhive.localcluster import LocalCluster, free_port
from fedhive.server.metrics import ServerMetrics

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))


def panel_queries():
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                yield path.name, panel["title"], target["expr"]


def exported_names() -> set[str]:
    """Every sample name fedhive's server metrics can produce."""
    names = set()
    for fam in ServerMetrics().registry.collect():
        names.add(fam.name)
        for suffix in ("_total", "_bucket", "_count", "_sum", "_created", "_info"):
            names.add(fam.name + suffix)
    return names


def test_dashboards_only_name_exported_metrics():
    names = exported_names()
    assert DASHBOARDS, "no dashboards in deploy/grafana/dashboards"
    for dash, title, expr in panel_queries():
        used = set(re.findall(r"\bfedhive_[a-z_]+", expr))
        assert used, f"{dash} / {title}: the query names no fedhive metric: {expr}"
        assert used <= names, f"{dash} / {title}: not exported: {sorted(used - names)}"


def prom_query_range(base: str, expr: str, start: float, end: float) -> list:
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 1})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{q}", timeout=20) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_every_panel_has_data_from_a_real_run(tmp_path):
    prometheus = shutil.which("prometheus")
    assert prometheus, "Debian's prometheus package is needed (make test installs it: apt-get install prometheus)"
    metrics_port, prom_port = free_port(), free_port()
    cfg = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    cfg["global"]["scrape_interval"] = cfg["global"]["evaluation_interval"] = "1s"
    cfg["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    cluster = LocalCluster(tmp_path / "c", emulate="none", data_dir=tmp_path / "data")
    prom = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
    base = f"http://127.0.0.1:{prom_port}"
    try:
        cluster.wait_http(f"{base}/-/ready", 60)
        cluster.start_superlink()
        for i, cls in enumerate(("gpu", "cpu", "rpi4")):
            cluster.add_agent(cls, i, 3)
        run_dir = tmp_path / "run"
        start = time.time()
        run_id = cluster.submit({"strategy": "fedbuff", "strategy-params": "buffer_size=2", "task": "synthetic",
                                 "local-steps": 5, "min-clients": 3, "max-time": 40.0, "eval-interval": 2.0,
                                 "metrics-address": f"127.0.0.1:{metrics_port}", "run-dir": str(run_dir)})
        st = cluster.wait_status(run_dir, run_id=run_id, timeout=300)
        assert st["state"] == "finished", dump_logs(cluster)
        time.sleep(3)
        end = time.time()
        empty = []
        for dash, title, expr in panel_queries():
            if not prom_query_range(base, expr, start, end):
                empty.append(f"{dash} / {title}: {expr}")
        assert not empty, "panels without data:\n" + "\n".join(empty)
    finally:
        prom.terminate()
        try:
            prom.wait(10)
        except subprocess.TimeoutExpired:
            prom.kill()
        cluster.close()
