"""The secure local cluster (``fedhive up``'s default): TLS plus Flower's node authentication, for real.

A registered node joins; a node with an unregistered key, a plain-text node and a node trusting another CA do not.
(A whole run over TLS with the model store on TLS: ``test_flower_runs.py``, whose cluster is secure.)
"""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest
from conftest import wait_for, wait_for_none

from fedhive.client.agent import flower_command
from fedhive.localcluster import LocalCluster, free_port
from fedhive.security import make_node_key, make_tls

pytestmark = pytest.mark.timeout(300)


def online_nodes(cluster: LocalCluster) -> list[dict]:
    res = cluster.flwr("supernode", "list", cluster.connection, "--format", "json", timeout=60)
    try:
        nodes = json.loads(res.stdout[res.stdout.index("{"):]).get("nodes", [])
    except ValueError:
        return []
    return [n for n in nodes if n.get("status") == "online"]


def test_only_registered_nodes_over_tls_join(tmp_path):
    cluster = LocalCluster(tmp_path / "c", emulate="none", secure=True)
    try:
        tls = cluster.tls
        assert stat.S_IMODE(os.stat(tls.key).st_mode) == 0o600
        assert not (tmp_path / "c" / "certs" / "ca.key").exists()  # nothing left that could sign another certificate
        assert 'root-certificates = "' in (cluster.flwr_home / "config.toml").read_text()
        cluster.start_superlink()
        good = cluster.add_supernode({"partition-id": 0, "num-partitions": 1}, name="registered")
        assert stat.S_IMODE(os.stat(tmp_path / "c" / "certs" / "nodes" / "registered").st_mode) == 0o600
        wait_for(lambda: len(online_nodes(cluster)) == 1, 60, "the registered node online")

        # A key nobody registered: Flower refuses it and the SuperNode exits.
        private, _ = make_node_key(tmp_path / "stranger", "key")
        stranger = cluster._spawn("stranger", [flower_command("flower-supernode"), "--superlink", cluster.address,
                                               "--root-certificates", str(tls.ca), "--auth-supernode-private-key",
                                               str(private), "--port", str(free_port())])
        wait_for(lambda: not stranger.alive(), 60, "the unregistered node to be refused")
        assert "Failed to activate SuperNode" in stranger.log_path.read_text(errors="replace")
        # Plain text, and TLS trusting another CA: neither gets a connection.
        other = make_tls(tmp_path / "other")
        plain = cluster._spawn("plain", [flower_command("flower-supernode"), "--insecure", "--superlink",
                                         cluster.address, "--max-retries", "2", "--port", str(free_port())])
        wrong_ca = cluster._spawn("wrong-ca", [flower_command("flower-supernode"), "--superlink", cluster.address,
                                               "--root-certificates", str(other.ca), "--auth-supernode-private-key",
                                               str(cluster.run_dir / "certs" / "nodes" / "registered"),
                                               "--max-retries", "2", "--port", str(free_port())])
        wait_for(lambda: not plain.alive() and not wrong_ca.alive(), 120, "the plain-text and wrong-CA nodes to give up")
        assert plain.popen.returncode != 0 and wrong_ca.popen.returncode != 0
        assert len(online_nodes(cluster)) == 1 and good.alive()
        # The control API is on TLS too: flwr with plain text does not get an answer.
        (cluster.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "plain"\n\n[superlink.plain]\naddress = "{cluster.address}"\ninsecure = true\n')
        res = subprocess.run([flower_command("flwr"), "supernode", "list", "plain", "--format", "json"],
                             env=cluster.env, capture_output=True, text=True, timeout=60)
        assert '"success": false' in res.stdout and "unavailable" in res.stdout, res.stdout
    finally:
        cluster.close()
    assert not wait_for_none(cluster)
