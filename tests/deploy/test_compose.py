"""The compose cluster, the images and the systemd unit cannot drift from what works.

There is no Docker engine here, so: the files are parsed and cross-checked (images built from ``docker/`` or pinned,
mounted paths exist, ports agree, TLS files are the ones the generator makes, every command line parses with the
program it runs), and every service of ``deploy/compose.yml`` that runs fedhive or Flower is started as a local
process with its own command line (host names and ports mapped to 127.0.0.1, volumes to folders, ``cpus`` limits to
cgroup CPU quotas) until the submitted run finishes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import dump_logs

from fedhive.cli import build_parser
from fedhive.client.agent import flower_command
from fedhive.localcluster import APP_DIR, LocalCluster, free_port
from fedhive.server.settings import RunSettings
from fedhive.tasks import load_task

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def compose(name: str = "compose.yml") -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def dockerfile(path: Path) -> dict:
    """Instructions of a Dockerfile (continuation lines joined): {"FROM": [...], "USER": [...], ...}."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def entrypoint(service: dict) -> list[str]:
    if "entrypoint" in service:
        return list(service["entrypoint"])
    df = dockerfile(ROOT / service["build"]["dockerfile"]) if "build" in service else None
    if df is None:
        image = service["image"]
        built = [s for s in compose()["services"].values() if s.get("image") == image and "build" in s]
        df = dockerfile(ROOT / built[0]["build"]["dockerfile"])
    return json.loads(df["ENTRYPOINT"][-1])


def run_config_of(command: list[str]) -> str:
    return command[command.index("--run-config") + 1]


# --------------------------------------------------------------------------- static checks
def test_images_are_built_here_or_pinned_and_mounts_exist():
    for name, svc in compose()["services"].items():
        if "build" in svc:
            assert (ROOT / svc["build"]["dockerfile"]).exists(), name
            assert (DEPLOY / svc["build"]["context"]).resolve() == ROOT, name
        else:
            image = svc["image"]
            tag = image.rpartition(":")[2]
            local = any(s.get("image") == image and "build" in s for s in compose()["services"].values())
            assert local or (":" in image and tag not in ("", "latest") and re.search(r"\d", tag)), \
                f"{name}: image {image} is neither built from docker/ nor pinned to a version"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: mounted path {src} does not exist"


def test_dockerfiles_are_pinned_non_root_healthy_and_secret_free():
    for path in sorted((ROOT / "docker").glob("*.Dockerfile")):
        df = dockerfile(path)
        base = df["FROM"][0]
        assert ":" in base and not base.endswith(":latest"), f"{path.name}: unpinned base {base}"
        assert df.get("USER") and df["USER"][-1] not in ("root", "0"), f"{path.name}: runs as root"
        assert df.get("HEALTHCHECK"), f"{path.name}: no HEALTHCHECK"
        # Only the Ray images leave health to their orchestrator (KubeRay probes the raylet and the GCS).
        assert (df["HEALTHCHECK"][-1] == "NONE") == path.name.startswith("ray"), f"{path.name}: HEALTHCHECK"
        for kw in ("ENV", "ARG"):
            for line in df.get(kw, []):
                assert not re.search(r"(KEY|TOKEN|PASSWORD|SECRET)\s*=", line, re.I), f"{path.name}: {line}"
        assert "COPY" in df and any("fedhive" in c for c in df["COPY"])
        if "cuda" not in path.name:
            assert any("download.pytorch.org/whl/cpu" in r for r in df["RUN"]), f"{path.name}: torch not from CPU index"


def test_ports_and_addresses_agree():
    svcs = compose()["services"]
    link = svcs["superlink"]["command"]
    port = link[link.index("--port") + 1]
    assert f"127.0.0.1:{port}:{port}" in svcs["superlink"]["ports"]
    flwr_cfg = (DEPLOY / "flwr" / "config.toml").read_text()
    assert f'address = "superlink:{port}"' in flwr_cfg
    agents = [n for n in svcs if n.startswith("agent-")]
    assert len(agents) == 6
    parts = set()
    for n in agents:
        cmd = svcs[n]["command"]
        assert cmd[cmd.index("--superlink") + 1] == f"superlink:{port}", n
        parts.add(int(cmd[cmd.index("--partition-id") + 1]))
        assert int(cmd[cmd.index("--num-partitions") + 1]) == len(agents)
    assert parts == set(range(len(agents)))
    from flwr.common.config import parse_config_args

    cfg = parse_config_args([run_config_of(svcs["submit"]["command"])])
    RunSettings.from_config(cfg)  # every key declared and valid
    metrics_port = cfg["metrics-address"].rpartition(":")[2]
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == [f"superlink:{metrics_port}"]
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090" and "127.0.0.1:9090:9090" in svcs["prometheus"]["ports"]
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "fedhive.yml").read_text())
    mount = [v for v in svcs["grafana"]["volumes"] if v.startswith("./grafana/dashboards:")][0]
    assert mount.split(":")[1] == prov["providers"][0]["options"]["path"]


def test_every_agent_command_parses_with_fedhive():
    parser = build_parser()
    for name, svc in compose()["services"].items():
        if name.startswith("agent-"):
            argv = entrypoint(svc) + svc["command"]
            assert argv[:2] == ["fedhive", "agent"]
            args = parser.parse_args(argv[1:])
            assert args.insecure and args.data_dir == "/data"
    tls = compose("with-tls.yml")["services"]
    for name, svc in tls.items():
        if name.startswith("agent-"):
            args = parser.parse_args(entrypoint(compose()["services"][name])[1:] + svc["command"])
            assert args.root_certificates == "/certs/ca.crt" and not args.insecure


def test_tls_overlay_uses_the_generated_files():
    made = set(re.findall(r"-(?:out|keyout) (\S+)", (DEPLOY / "certs" / "generate.sh").read_text()))
    assert {"ca.crt", "server.pem", "server.key"} <= made
    tls = compose("with-tls.yml")["services"]
    used = set()
    for svc in tls.values():
        text = " ".join(map(str, svc.get("command", [])))
        used |= set(re.findall(r"/certs/([\w.]+)", text))
        assert all(v.split(":")[0] in {f"./certs/{f}" for f in made} | {"agent-data", "superlink-state",
                                                                             "./flwr/config-tls.toml"}
                   for v in svc.get("volumes", []))
    assert used <= made and {"ca.crt", "server.pem", "server.key"} <= used
    assert 'root-certificates = "/certs/ca.crt"' in (DEPLOY / "flwr" / "config-tls.toml").read_text()
    from flwr.common.config import parse_config_args

    cfg = parse_config_args([run_config_of(tls["submit"]["command"])])
    RunSettings.from_config(cfg)
    assert cfg["tls-certfile"] == "/certs/server.pem" and cfg["store-ca"] == "/certs/ca.crt"


def certificate_mounts(path: str) -> dict[str, set[str]]:
    """Per service of an overlay: the files of deploy/certs/ it mounts (a mount of the whole directory: "*")."""
    out = {}
    for name, svc in compose(path)["services"].items():
        files = set()
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.rstrip("/") == "./certs":
                files.add("*")
            elif src.startswith("./certs/"):
                files.add(src[len("./certs/"):])
        out[name] = files
    return out


@pytest.mark.parametrize("overlay", ["with-tls.yml", "with-fleet-gateway.yml"])
def test_containers_mount_only_the_certificate_files_they_need(overlay):
    for name, files in certificate_mounts(overlay).items():
        assert "*" not in files and "ca.key" not in files, f"{overlay} {name}: mounts {files}"
        if name.startswith("agent-"):
            assert files <= {"ca.crt"}, f"{overlay} {name}: an agent mounts {files}"
    tls = certificate_mounts("with-tls.yml")
    assert all(tls[a] == {"ca.crt"} for a in tls if a.startswith("agent-"))
    assert tls["superlink"] == {"ca.crt", "server.pem", "server.key"}


def test_fleet_gateway_overlay_fronts_every_agent():
    gw = compose("with-fleet-gateway.yml")["services"]
    template = (DEPLOY / "gateway" / "fleet-only.conf.template").read_text()
    needed = set(re.findall(r"\$\{(\w+)\}", template))
    assert needed and needed == set(gw["gateway"]["environment"]), "the template's variables and the overlay's differ"
    assert any(v.startswith("./gateway/fleet-only.conf.template:/etc/nginx/templates/") for v in gw["gateway"]["volumes"])
    image = gw["gateway"]["image"]
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+", image), image
    # Every agent of the default file connects through the gateway, over TLS.
    parser = build_parser()
    agents = [n for n in compose()["services"] if n.startswith("agent-")]
    assert agents and set(agents) <= set(gw)
    for name in agents:
        args = parser.parse_args(entrypoint(compose()["services"][name])[1:] + gw[name]["command"])
        assert args.superlink == "gateway:8443" and args.root_certificates == "/certs/ca.crt" and not args.insecure
    # The gateway's certificate (the SuperLink's) is valid for the name the agents use.
    assert "DNS:gateway" in (DEPLOY / "certs" / "generate.sh").read_text()
    assert "location /v1/fleet/" in template and re.search(r"location / \{\s*return 403;", template)


def test_generate_sh_makes_readable_keys_and_a_grafana_password(tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "grafana").mkdir()
    shutil.copy(DEPLOY / "certs" / "generate.sh", tmp_path / "certs" / "generate.sh")
    res = subprocess.run(["bash", str(tmp_path / "certs" / "generate.sh"), "IP:10.0.0.5"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    certs = tmp_path / "certs"
    for f in ("ca.key", "server.key"):
        assert stat.S_IMODE((certs / f).stat().st_mode) == 0o600, f
    if os.getuid() == 0:
        assert (certs / "server.key").stat().st_uid == 10001  # the containers' user can read it
    else:
        assert "sudo chown 10001" in res.stdout
    text = subprocess.run(["openssl", "x509", "-in", str(certs / "server.pem"), "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True).stdout
    for name in ("DNS:superlink", "DNS:gateway", "IP Address:127.0.0.1", "IP Address:10.0.0.5"):
        assert name in text, text
    env = (tmp_path / "grafana" / "admin.env").read_text()
    password = env.strip().split("=", 1)[1]
    assert env.startswith("GF_SECURITY_ADMIN_PASSWORD=") and len(password) >= 32 and password != "admin"
    assert stat.S_IMODE((tmp_path / "grafana" / "admin.env").stat().st_mode) == 0o600
    # Kept when it exists: a second run does not change the password Grafana already stored.
    subprocess.run(["bash", str(tmp_path / "certs" / "generate.sh")], capture_output=True, check=True, timeout=120)
    assert (tmp_path / "grafana" / "admin.env").read_text() == env
    graf = compose()["services"]["grafana"]
    assert graf["env_file"] == ["./grafana/admin.env"]
    assert not any("PASSWORD" in k for k in graf.get("environment", {}))


def test_systemd_unit_runs_a_valid_agent_command():
    unit = (DEPLOY / "systemd" / "fedhive-agent.service").read_text()
    env = dict(line.split("=", 1) for line in (DEPLOY / "systemd" / "agent.env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.M).group(1)
    expanded = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env[m.group(1) or m.group(2)], exec_start)
    argv = shlex.split(expanded)
    assert argv[0].endswith("/fedhive") and argv[1] == "agent"
    args = build_parser().parse_args(argv[1:])
    assert args.root_certificates and args.auth_supernode_private_key and not args.insecure
    assert "Restart=always" in unit and re.search(r"^User=fedhive$", unit, re.M)
    assert "install -m 0644 \"$HERE/systemd/fedhive-agent.service\"" in (DEPLOY / "install-agent.sh").read_text()


# --------------------------------------------------------------------------- the services as local processes
def test_compose_services_run_as_local_processes(tmp_path):
    svcs = compose()["services"]
    cluster = LocalCluster(tmp_path / "c", emulate="auto")
    port, metrics = free_port(), free_port()
    state, data = tmp_path / "state", tmp_path / "data"
    state.mkdir()

    def local(argv: list[str]) -> list[str]:
        out = []
        for a in argv:
            a = a.replace("superlink:8000", f"127.0.0.1:{port}").replace("'/state/", f"'{state}/")
            a = re.sub(r"^/state(?=/|$)", str(state), a)
            a = re.sub(r"^/data$", str(data), a).replace("0.0.0.0:9400", f"127.0.0.1:{metrics}")
            a = a.replace("max-time=600.0", "max-time=40.0")
            out.append(a)
        return out

    try:
        link = local(entrypoint(svcs["superlink"]) + svcs["superlink"]["command"])
        link = [flower_command(link[0])] + link[1:]
        link[link.index("--host") + 1] = "127.0.0.1"
        link[link.index("--port") + 1] = str(port)
        proc = cluster._spawn("superlink", link)
        cluster.wait_http(f"http://127.0.0.1:{port}/health", 60, proc)
        agents = [n for n in svcs if n.startswith("agent-")]
        import os

        os.environ["FEDHIVE_CACHE"] = str(data)  # fill the agents' data cache once, before they start
        try:
            load_task("mnist1d", num_clients=len(agents)).num_examples(0)
        finally:
            del os.environ["FEDHIVE_CACHE"]
        for n in agents:
            argv = [a.replace("/home/fedhive/state", str(tmp_path / n)) for a in entrypoint(svcs[n]) + svcs[n]["command"]]
            argv = local(argv)
            argv = [sys.executable, "-m", "fedhive.cli"] + argv[1:]
            argv += ["--port", str(free_port())]  # one host for all: distinct SuperNode ports
            cpus = svcs[n].get("cpus")
            cgroup = cluster.cgroups.create(n, float(cpus) if cpus else None) if cluster.cgroups else None
            cluster._spawn(n, argv, cgroup=cgroup)
        flwr_home = tmp_path / "flwr"
        flwr_home.mkdir()
        (flwr_home / "config.toml").write_text(
            (DEPLOY / "flwr" / "config.toml").read_text().replace("superlink:8000", f"127.0.0.1:{port}"))
        # The submit service: `fedhive submit` ("submit or resume"), which follows the run to its end.
        submit = local(svcs["submit"]["entrypoint"] + svcs["submit"]["command"])
        assert submit[:2] == ["fedhive", "submit"]
        submit = [sys.executable, "-m", "fedhive.cli"] + [str(APP_DIR) if a == "/app/flower_app" else a
                                                          for a in submit[1:]]
        submit[submit.index("--work-dir") + 1] = str(tmp_path / "submit")
        env = {**cluster.env, "FLWR_HOME": str(flwr_home), "FEDHIVE_CACHE": str(data)}
        res = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout + res.stderr + dump_logs(cluster)
        out = json.loads(res.stdout.strip().splitlines()[-1])
        run_dir = state / "runs" / "compose"
        assert out["state"] == "finished" and out["restarts"] == 0, out
        h = json.loads((run_dir / "history.json").read_text())
        assert h["final"]["client_updates"] > 0 and set(h["updates_by_class"]) <= {"gpu", "cpu", "rpi4"}
    finally:
        cluster.close()
