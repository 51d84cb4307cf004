"""The images built for real and the compose cluster brought up for real, with podman and podman-compose.

``docker/build-images.sh --prometheus`` builds the stand-in Debian base (debootstrap + import), the server and agent
images from ``docker/*.Dockerfile`` and a stand-in Prometheus from Debian's package (prom/prometheus and Grafana's
images cannot be pulled here; Grafana's provisioning is checked by tests/deploy/test_dashboards.py against a real
Prometheus). Then ``deploy/compose.yml``, secure as shipped (TLS, node authentication, the register step, per-agent
keys from ``deploy/certs/generate.sh``), runs under podman-compose, from a copy that changes two values only (the
Prometheus image to the stand-in, the run's max-time): SuperLink, register, submit, six agents with their ``cpus``
limits, Prometheus. The run
must finish with updates from every agent, and Prometheus inside the compose network must hold fedhive's series.
A node with an unregistered key, and one speaking plain text, are refused by the same SuperLink.

Everything this module makes (containers, the compose network and volumes, the images) is removed at its end. It
needs root and podman (``make test`` installs podman, buildah, runc, podman-compose and debootstrap as root); without
them it is skipped, saying why. FEDHIVE_REUSE_IMAGES=1 (a developer's reruns) keeps the images and reuses them.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROJECT = "fedhive-ctest"
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
# The stand-in base last: the images built on it go first.
IMAGES = ["fedhive/agent:0.1.0", "fedhive/server:0.1.0", "fedhive-standin/prometheus:debian",
          f"localhost/fedhive-base:bookworm-{ARCH}"]
RUN_SECONDS = 45.0
pytestmark = pytest.mark.timeout(1800)

ENV = {**os.environ,
       "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(ROOT / "docker" / "podman" / "containers.conf")),
       "CONTAINERS_STORAGE_CONF": os.environ.get("CONTAINERS_STORAGE_CONF",
                                                 str(ROOT / "docker" / "podman" / "storage.conf"))}


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    res = subprocess.run(["podman", *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {res.returncode}: {res.stderr[-2000:]}")
    return res


def why_not() -> str | None:
    missing = [p for p in ("podman", "podman-compose", "debootstrap", "runc") if shutil.which(p) is None]
    if missing:
        return (f"needs {', '.join(missing)}: `make test` installs podman, buildah, runc, podman-compose and "
                f"debootstrap as root (apt-get install podman buildah runc podman-compose debootstrap)")
    if os.geteuid() != 0:
        return "needs root (podman with runc and vfs storage, debootstrap for the stand-in base)"
    return None


@pytest.fixture(scope="module")
def images():
    reason = why_not()
    if reason:
        pytest.skip(reason)
    before = {i for i in IMAGES if podman("image", "exists", i, check=False).returncode == 0}
    if os.environ.get("FEDHIVE_REUSE_IMAGES") == "1" and len(before) == len(IMAGES):  # a developer's rerun
        yield "reused"
        return
    t0 = time.monotonic()
    res = subprocess.run(["bash", str(ROOT / "docker" / "build-images.sh"), "--prometheus"], env=ENV,
                         capture_output=True, text=True, timeout=1500)
    print(res.stdout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    print(f"images built in {time.monotonic() - t0:.0f} s")
    try:
        yield res.stdout
    finally:
        for image in IMAGES:
            if image not in before and os.environ.get("FEDHIVE_REUSE_IMAGES") != "1":
                podman("rmi", "-f", image, check=False)
        podman("image", "prune", "-f", check=False, timeout=300)


def test_images_run_as_the_container_user_with_healthchecks(images):
    for image, entry in (("fedhive/agent:0.1.0", ["fedhive", "agent"]), ("fedhive/server:0.1.0", ["flower-superlink"])):
        info = json.loads(podman("image", "inspect", image).stdout)[0]
        cfg = info["Config"]
        assert cfg["User"] == "fedhive" and cfg["Entrypoint"][:len(entry)] == entry, cfg
        assert info.get("Healthcheck", {}).get("Test"), f"{image}: HEALTHCHECK lost (build --format docker)"
    # torch is the CPU build, fedhive and Flower import, and the process is uid 10001, not root.
    out = podman("run", "--rm", "--entrypoint", "python", "fedhive/agent:0.1.0", "-c",
                 "import os, torch, flwr, fedhive; print(os.getuid(), torch.__version__, torch.cuda.is_available())")
    uid, version, cuda = out.stdout.split()
    assert uid == "10001" and version.startswith("2.13.0") and cuda == "False", out.stdout
    out = podman("run", "--rm", "--entrypoint", "ls", "fedhive/server:0.1.0", "/app/flower_app")
    assert "pyproject.toml" in out.stdout.split(), "the submit step's app folder /app/flower_app is missing"


def compose_files(tmp: Path) -> list[str]:
    """A copy of deploy/ with its secrets made by generate.sh; its compose.yml with two values changed, the Prometheus
    image (the stand-in) and the run's max-time. Not an overlay: Debian's podman-compose 1.0.3 appends a list it
    merges (an overlay's `command` would be added to the base's, not replace it)."""
    deploy = tmp / "deploy"
    shutil.copytree(DEPLOY, deploy, ignore=shutil.ignore_patterns("*.key", "*.crt", "*.pem", "admin.env", "nodes"))
    res = subprocess.run(["bash", str(deploy / "certs" / "generate.sh")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    text = (deploy / "compose.yml").read_text()
    changed = text.replace("max-time=600.0", f"max-time={RUN_SECONDS}").replace(
        "image: prom/prometheus:v2.53.2", "image: fedhive-standin/prometheus:debian")
    assert changed.count("\n") == text.count("\n") and len(changed) != len(text), "max-time or the Prometheus image moved"
    assert "fedhive-standin/prometheus" in changed and f"max-time={RUN_SECONDS}" in changed
    (deploy / "compose.yml").write_text(changed)
    return [str(deploy / "compose.yml")]


def compose_cmd(files: list[str], *args: str) -> list[str]:
    cmd = ["podman-compose", "-p", PROJECT]
    for f in files:
        cmd += ["-f", f]
    return cmd + list(args)


def project_containers() -> list[str]:
    out = podman("ps", "-a", "--format", "{{.Names}}", "--filter", f"label=io.podman.compose.project={PROJECT}",
                 check=False)
    return out.stdout.split()


def logs(name: str, tail: int = 40) -> str:
    out = podman("logs", "--tail", str(tail), name, check=False)
    return f"--- {name}\n{out.stdout}{out.stderr}"


@pytest.fixture(scope="module")
def cluster(images, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compose")
    files = compose_files(tmp)
    spec = yaml.safe_load(Path(files[0]).read_text())["services"]
    services = [s for s in spec if s != "grafana"]
    ca = Path(files[0]).parent / "certs" / "ca.crt"
    started = time.monotonic()

    def up(*names: str) -> None:
        res = subprocess.run(compose_cmd(files, "up", "-d", "--no-build", *names), env=ENV, capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    try:
        # podman-compose 1.0.3 ignores depends_on conditions, so the test starts the stages they declare itself:
        # the SuperLink healthy, then the register step exited 0, then the agents and the run (Docker Compose does
        # this from the file alone). Started all at once it also works, only slower: agents whose key is not
        # registered yet back off, as do SuperNodes that found no SuperLink.
        assert spec["register"]["depends_on"]["superlink"]["condition"] == "service_healthy"
        assert all(spec[a]["depends_on"]["register"]["condition"] == "service_completed_successfully"
                   for a in spec if a.startswith("agent-") or a == "submit")
        up("superlink", "prometheus")
        ctx = ssl.create_default_context(cafile=str(ca))
        end = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen("https://localhost:8000/health", timeout=2, context=ctx):
                    break
            except OSError:
                assert time.monotonic() < end, "the SuperLink's /health did not answer in 120 s\n" + "".join(
                    logs(n) for n in project_containers())
                time.sleep(1)
        up("register")
        res = podman("wait", f"{PROJECT}_register_1", timeout=180)
        assert res.stdout.strip() == "0", logs(f"{PROJECT}_register_1")
        up(*services)
        names = project_containers()
        yield {"files": files, "tmp": tmp, "names": names, "started": started}
    finally:  # everything at once (podman-compose down stops and removes one container after the other)
        names = project_containers()
        volumes = set()  # the named ones and the anonymous ones (an image VOLUME no service mounts)
        for name in names:
            for m in json.loads(podman("inspect", name, check=False).stdout or "[{}]")[0].get("Mounts", []):
                if m.get("Type") == "volume" and m.get("Name"):
                    volumes.add(m["Name"])
        if names:
            podman("rm", "-f", "-v", "-t", "0", *names, check=False, timeout=300)
        for kind in ("network", "volume"):
            for n in podman(kind, "ls", "--format", "{{.Name}}", check=False).stdout.split():
                if n.startswith(PROJECT) or (kind == "volume" and n in volumes):
                    podman(kind, "rm", "-f", n, check=False)


def name_of(cluster, service: str) -> str:
    found = [n for n in cluster["names"] if n.startswith(f"{PROJECT}_{service}_")]
    assert found, f"no container for {service} in {cluster['names']}"
    return found[0]


def volume_path(volume: str) -> Path:
    out = podman("volume", "inspect", f"{PROJECT}_{volume}")
    return Path(json.loads(out.stdout)[0]["Mountpoint"])


def test_compose_cluster_runs_to_the_end_with_every_agent_and_prometheus(cluster):
    submit = name_of(cluster, "submit")
    deadline = time.monotonic() + RUN_SECONDS + 420
    state = {}
    while time.monotonic() < deadline:
        state = json.loads(podman("inspect", submit).stdout)[0]["State"]
        if state["Status"] == "exited" and state.get("RestartCount", 0) >= 0 and not state.get("Restarting"):
            break
        time.sleep(3)
    names = cluster["names"]
    assert state.get("Status") == "exited" and state.get("ExitCode") == 0, \
        f"submit: {state}\n" + "".join(logs(n) for n in names)
    print(f"compose up to the run's end: {time.monotonic() - cluster['started']:.0f} s")
    out = json.loads(podman("logs", submit).stdout.strip().splitlines()[-1])
    assert out["state"] == "finished", out
    run_dir = volume_path("superlink-state") / "runs" / "compose"
    h = json.loads((run_dir / "history.json").read_text())
    nodes = {a["node"] for a in h["arrivals"]}
    by_class = h["updates_by_class"]
    print(f"updates by class {by_class} from {len(nodes)} nodes, final {h['final']}")
    assert len(nodes) == 6, f"updates from {len(nodes)} of 6 agents: {by_class}\n" + "".join(logs(n) for n in names)
    if set(by_class) != {"gpu", "cpu", "rpi4"}:  # e.g. a node joined as unknown: the server's word on each join
        res = podman("logs", name_of(cluster, "superlink"), check=False)
        joins = [ln for ln in (res.stdout + res.stderr).splitlines() if "joined" in ln or "profile" in ln]
        raise AssertionError(f"device classes {by_class}, expected gpu, cpu and rpi4; the server said:\n"
                             + "\n".join(joins[-40:]))
    assert h["final"]["client_updates"] >= 6 and h["history"], h["final"]
    # The CPU limits are the compose file's: the agents' containers carry them.
    for service, cpus in (("agent-cpu-1", 0.5), ("agent-rpi4-1", 0.2), ("agent-gpu", None)):
        host = json.loads(podman("inspect", name_of(cluster, service)).stdout)[0]["HostConfig"]
        quota = host.get("CpuQuota", 0) / host["CpuPeriod"] if host.get("CpuQuota", 0) > 0 else None
        assert quota == cpus or (cpus and abs(quota - cpus) < 1e-6), (service, host.get("CpuQuota"))
    # Prometheus, inside the compose network, scraped superlink:9400 (the server app's metrics).
    q = urllib.parse.urlencode({"match[]": '{__name__=~"fedhive_.+"}', "start": "0"})
    with urllib.request.urlopen(f"http://127.0.0.1:9090/api/v1/series?{q}", timeout=10) as r:
        series = json.loads(r.read())["data"]
    names_seen = {s["__name__"] for s in series}
    assert "fedhive_updates_total" in names_seen and {s.get("job") for s in series} == {"fedhive-server"}, \
        sorted(names_seen)[:20]


def test_unregistered_and_plain_text_nodes_are_refused(cluster, tmp_path):
    link = name_of(cluster, "superlink")
    network = next(n for n in podman("network", "ls", "--format", "{{.Name}}").stdout.split()
                   if n.startswith(PROJECT))
    assert json.loads(podman("inspect", link).stdout)[0]["State"]["Status"] == "running"
    key = tmp_path / "stranger.key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(key)], check=True)
    os.chown(key, 10001, -1)
    ca = Path(cluster["files"][0]).parent / "certs" / "ca.crt"
    common = ["run", "--rm", "--network", network, "--entrypoint", "flower-supernode", "-v", f"{ca}:/certs/ca.crt:ro",
              "-v", f"{key}:/keys/node.key:ro", "fedhive/agent:0.1.0", "--superlink", "superlink:8000",
              "--port", "9094"]
    t0 = time.monotonic()
    res = podman(*common, "--root-certificates", "/certs/ca.crt", "--auth-supernode-private-key", "/keys/node.key",
                 check=False, timeout=180)
    assert res.returncode != 0 and time.monotonic() - t0 < 150, (res.returncode, res.stderr[-1500:])
    assert "Failed to activate SuperNode" in res.stdout + res.stderr, res.stderr[-1500:]
    print(f"unregistered node: exit {res.returncode} after {time.monotonic() - t0:.1f} s")
    res = podman(*common, "--insecure", "--max-retries", "2", check=False, timeout=180)
    assert res.returncode != 0, (res.returncode, res.stderr[-1500:])
    print(f"plain-text node: exit {res.returncode}")
