"""``deploy/gateway/fleet-only.conf.template`` under Debian's nginx, in front of a real secure SuperLink.

Flower 1.42's open-source SuperLink serves its control API (``flwr run``, ``flwr supernode register``: no
authentication) on the same port as the fleet API its nodes use. The gateway forwards only ``/v1/fleet/*`` and
``/health``: two agents train through it (TLS both ways, node authentication end to end), while the control and
runtime APIs answer 403 through it and ``flwr`` through it gets nothing.
"""

from __future__ import annotations

import shutil
import ssl
import string
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import dump_logs, read_json, wait_for_none

from fedhive.localcluster import LocalCluster, free_port

pytestmark = pytest.mark.timeout(400)
TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "gateway" / "fleet-only.conf.template"


def nginx_conf(tmp: Path, server_block: str) -> Path:
    """The template's server block inside a minimal main config that runs unprivileged in ``tmp``."""
    temps = " ".join(f"{k}_temp_path {tmp / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = tmp / "nginx.conf"
    conf.write_text(f"daemon off; pid {tmp / 'nginx.pid'}; error_log {tmp / 'error.log'} warn; worker_processes 1;\n"
                    f"events {{ worker_connections 256; }}\n"
                    f"http {{ access_log {tmp / 'access.log'}; {temps}\n{server_block}\n}}\n")
    return conf


def post(url: str, ctx: ssl.SSLContext) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), context=ctx, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_devices_train_through_a_fleet_only_gateway(tmp_path):
    nginx = shutil.which("nginx")
    assert nginx, "Debian's nginx is needed (make test installs it: apt-get install nginx-light)"
    cluster = LocalCluster(tmp_path / "c", emulate="none", data_dir=tmp_path / "data", secure=True)
    gw_port = free_port()
    tls = cluster.tls
    block = string.Template(TEMPLATE.read_text()).substitute(
        GATEWAY_LISTEN=f"127.0.0.1:{gw_port}", SUPERLINK=cluster.address, SUPERLINK_NAME="localhost",
        TLS_CERT=tls.cert, TLS_KEY=tls.key, TLS_CA=tls.ca)
    conf = nginx_conf(tmp_path, block)
    check = subprocess.run([nginx, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    gateway = f"127.0.0.1:{gw_port}"
    try:
        cluster.start_superlink()
        cluster._spawn("nginx", [nginx, "-c", str(conf), "-p", str(tmp_path)])
        for i, cls in enumerate(("gpu", "cpu")):
            cluster.add_agent(cls, i, 2, superlink=gateway)
        run_dir = cluster.run_dir / "runs" / "gw"
        run_id = cluster.submit({"strategy": "fedbuff", "strategy-params": "buffer_size=2", "task": "synthetic",
                                 "local-steps": 5, "min-clients": 2, "wait-clients": 120.0, "max-updates": 6,
                                 "max-time": 120.0, "run-name": "gw", "run-dir": str(run_dir)})
        st = cluster.wait_status(run_dir, run_id=run_id, timeout=240)
        assert st.get("state") == "finished", f"{st}\n{dump_logs(cluster)}"
        h = read_json(run_dir / "history.json")
        assert h["final"]["client_updates"] >= 6 and set(h["updates_by_class"]) == {"gpu", "cpu"}
        access = (tmp_path / "access.log").read_text()
        assert "/v1/fleet/pull-messages" in access and "/v1/fleet/push-messages" in access  # it went through

        ctx = ssl.create_default_context(cafile=str(tls.ca))
        for path in ("/v1/control/start-run", "/v1/control/register-node", "/v1/control/list-runs",
                     "/v1/runtime/acquire-task", "/v1/runtime/pull-task-input", "/docs", "/v1/fleet/../control/x"):
            assert post(f"https://{gateway}{path}", ctx) in (403, 400), path
        (cluster.flwr_home / "config.toml").write_text(
            cluster.flwr_home.joinpath("config.toml").read_text()
            + f'\n[superlink.gw]\naddress = "{gateway}"\nroot-certificates = "{tls.ca}"\n')
        res = cluster.flwr("supernode", "list", "gw", "--format", "json", timeout=60)
        assert '"success": false' in res.stdout and "403" in res.stdout, res.stdout
        res = cluster.flwr("supernode", "list", cluster.connection, "--format", "json", timeout=60)
        assert '"success": true' in res.stdout  # the operator, on the SuperLink's own port, still can
    finally:
        cluster.close()
    assert not wait_for_none(cluster)
