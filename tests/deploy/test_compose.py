"""The compose cluster, the images and the systemd unit cannot drift from what works.

The files are parsed and cross-checked here (images built from ``docker/`` or pinned, mounted paths exist, ports
agree, TLS files are the ones the generator makes, every command line parses with the program it runs);
``tests/containers/`` builds the images and brings the compose file up for real with podman-compose.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from fedhive.cli import build_parser
from fedhive.server.settings import RunSettings

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


def generated_files() -> set[str]:
    """What deploy/certs/generate.sh writes under deploy/certs/ (read from the script)."""
    gen = (DEPLOY / "certs" / "generate.sh").read_text()
    made = set(re.findall(r"-(?:out|keyout) (\S+)", gen))
    agents = re.search(r'AGENTS="\$\{FEDHIVE_AGENTS:-([^}]*)\}"', gen).group(1).split()
    assert 'ssh-keygen -q -t ecdsa -b 384 -N "" -C "$a" -f "nodes/$a.key"' in gen
    return made | {f"nodes/{a}.key" for a in agents} | {f"nodes/{a}.key.pub" for a in agents}


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
            if src.startswith("./certs/"):  # made by deploy/certs/generate.sh, not in the repository
                assert src[len("./certs/"):] in generated_files(), f"{name}: {src} is not made by generate.sh"
            elif src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: mounted path {src} does not exist"


def test_dockerfiles_are_pinned_non_root_healthy_and_secret_free():
    for path in sorted((ROOT / "docker").glob("*.Dockerfile")):
        df = dockerfile(path)
        base = df["FROM"][0]
        if base == "${BASE}":  # ARG BASE=<default> before FROM: the official image, or the stand-in base built here
            base = next(a.partition("=")[2] for a in df["ARG"] if a.startswith("BASE="))
        assert ":" in base and not base.endswith(":latest"), f"{path.name}: unpinned base {base}"
        assert df.get("USER") and df["USER"][-1] not in ("root", "0"), f"{path.name}: runs as root"
        assert df.get("HEALTHCHECK"), f"{path.name}: no HEALTHCHECK"
        # Only the Ray images leave health to their orchestrator (KubeRay probes the raylet and the GCS).
        assert (df["HEALTHCHECK"][-1] == "NONE") == path.name.startswith("ray"), f"{path.name}: HEALTHCHECK"
        for kw in ("ENV", "ARG"):
            for line in df.get(kw, []):
                assert not re.search(r"(KEY|TOKEN|PASSWORD|SECRET)\s*=", line, re.I), f"{path.name}: {line}"
        if path.name == "prometheus-standin.Dockerfile":  # Debian's prometheus, for tests/containers/ only
            assert any("apt-get install" in r and "prometheus" in r for r in df["RUN"])
            continue
        assert "COPY" in df and any("fedhive" in c for c in df["COPY"])
        if path.name in ("server.Dockerfile", "agent.Dockerfile"):  # a venv, so any Debian python3 base works
            assert any("python3 -m venv /opt/fedhive" in r for r in df["RUN"]) and any(
                "PATH=/opt/fedhive/bin:$PATH" in e for e in df["ENV"]), path.name
            assert base == "python:3.11.11-slim-bookworm", path.name
        if "cuda" not in path.name:
            assert any("download.pytorch.org/whl/cpu" in r for r in df["RUN"] + df.get("ARG", [])), \
                f"{path.name}: torch not from CPU index"


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
    base = compose()["services"]
    agents = [n for n in base if n.startswith("agent-")]
    for name in agents:
        argv = entrypoint(base[name]) + base[name]["command"]
        assert argv[:2] == ["fedhive", "agent"]
        args = parser.parse_args(argv[1:])
        # Secure by default: TLS and this agent's own key.
        assert not args.insecure and args.root_certificates == "/certs/ca.crt" and args.data_dir == "/data"
        assert args.auth_supernode_private_key == "/keys/node.key"
        assert f"./certs/nodes/{name}.key:/keys/node.key:ro" in base[name]["volumes"]
        assert base[name]["depends_on"]["register"]["condition"] == "service_completed_successfully"
    plain = compose("insecure-plaintext.yml")["services"]
    for name in agents:
        args = parser.parse_args(entrypoint(base[name])[1:] + plain[name]["command"])
        assert args.insecure and not args.root_certificates
    assert "--insecure" in plain["superlink"]["command"] and plain["register"]["entrypoint"] == ["true"]
    assert "insecure = true" in (DEPLOY / "flwr" / "config-plaintext.toml").read_text()


def test_register_step_registers_every_agent_key():
    svcs = compose()["services"]
    reg = svcs["register"]
    argv = reg["entrypoint"] + reg["command"]
    args = build_parser().parse_args(argv[1:])
    agents = [n for n in svcs if n.startswith("agent-")]
    assert sorted(args.keys) == sorted(f"/keys/{a}.pub" for a in agents) and args.connection == "compose"
    for a in agents:
        assert f"./certs/nodes/{a}.key.pub:/keys/{a}.pub:ro" in reg["volumes"]
    gen = (DEPLOY / "certs" / "generate.sh").read_text()
    assert set(re.search(r'AGENTS="\$\{FEDHIVE_AGENTS:-([^}]*)\}"', gen).group(1).split()) == set(agents)
    assert svcs["submit"]["depends_on"]["register"]["condition"] == "service_completed_successfully"
    assert reg["depends_on"]["superlink"]["condition"] == "service_healthy"
    assert "--enable-supernode-auth" in svcs["superlink"]["command"]


def test_the_default_file_uses_the_generated_files():
    gen = (DEPLOY / "certs" / "generate.sh").read_text()
    made = set(re.findall(r"-(?:out|keyout) (\S+)", gen))
    assert {"ca.crt", "server.pem", "server.key"} <= made
    svcs = compose()["services"]
    used = set()
    for svc in svcs.values():
        text = " ".join(map(str, svc.get("command", [])))
        used |= set(re.findall(r"/certs/([\w.]+)", text))
    assert used <= made and {"ca.crt", "server.pem", "server.key"} <= used
    assert 'root-certificates = "/certs/ca.crt"' in (DEPLOY / "flwr" / "config.toml").read_text()
    from flwr.common.config import parse_config_args

    cfg = parse_config_args([run_config_of(svcs["submit"]["command"])])
    RunSettings.from_config(cfg)
    assert cfg["tls-certfile"] == "/certs/server.pem" and cfg["store-ca"] == "/certs/ca.crt"


def certificate_mounts(path: str) -> dict[str, set[str]]:
    """Per service of a compose file: the files of deploy/certs/ it mounts (the whole directory: "*")."""
    out = {}
    for name, svc in compose(path)["services"].items():
        files = set()
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.rstrip("/") in ("./certs", "./certs/nodes"):
                files.add("*")
            elif src.startswith("./certs/"):
                files.add(src[len("./certs/"):])
        out[name] = files
    return out


@pytest.mark.parametrize("path", ["compose.yml", "with-fleet-gateway.yml", "insecure-plaintext.yml"])
def test_containers_mount_only_the_certificate_files_they_need(path):
    for name, files in certificate_mounts(path).items():
        assert "*" not in files and "ca.key" not in files, f"{path} {name}: mounts {files}"
        if name.startswith("agent-"):
            assert files <= {"ca.crt", f"nodes/{name}.key"}, f"{path} {name}: an agent mounts {files}"
    base = certificate_mounts("compose.yml")
    for a in (n for n in base if n.startswith("agent-")):
        assert base[a] == {"ca.crt", f"nodes/{a}.key"}
    assert base["superlink"] == base["submit"] == {"ca.crt", "server.pem", "server.key"}
    assert base["register"] - {"ca.crt"} == {f"nodes/{a}.key.pub" for a in base if a.startswith("agent-")}


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
        assert args.auth_supernode_private_key == "/keys/node.key"
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
    agents = [n for n in compose()["services"] if n.startswith("agent-")]
    for f in ("ca.key", "server.key", *(f"nodes/{a}.key" for a in agents)):
        assert stat.S_IMODE((certs / f).stat().st_mode) == 0o600, f
    if os.getuid() == 0:  # the containers' user can read what it mounts
        assert all((certs / f).stat().st_uid == 10001 for f in ("server.key", *(f"nodes/{a}.key" for a in agents)))
    else:
        assert "sudo chown 10001" in res.stdout
    # Node keys are what Flower's node authentication accepts: ECDSA on a NIST curve, OpenSSH form.
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    for a in agents:
        key = load_ssh_private_key((certs / "nodes" / f"{a}.key").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        assert load_ssh_public_key((certs / "nodes" / f"{a}.key.pub").read_bytes()) == key.public_key()
    before = {a: (certs / "nodes" / f"{a}.key").read_bytes() for a in agents}
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
    assert all((certs / "nodes" / f"{a}.key").read_bytes() == before[a] for a in agents)  # registered keys kept
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


def test_build_images_refuses_bad_options_naming_what_is_accepted():
    script = ROOT / "docker" / "build-images.sh"
    for argv, word in ((["--arch", "sparc"], "amd64 or arm64"), (["--base", "alpine"], "debian or official"),
                       (["--frobnicate"], "accepted:")):
        res = subprocess.run(["bash", str(script), *argv], capture_output=True, text=True, timeout=30)
        assert res.returncode == 2 and word in res.stderr, (argv, res.stderr)
    assert "--prometheus" in subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True,
                                            timeout=30).stdout
