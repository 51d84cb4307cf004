"""Footprint of ``fedhive agent`` on a device (BENCHMARK.md §5, issue 17): resident memory and CPU, idle and training.

A local SuperLink (TLS and node authentication, as ``fedhive up`` runs it) and one agent with no CPU quota. The agent
is a local process (``--agent local``, this machine's architecture) or the arm64 agent image run through
qemu-user-static with podman (``--agent arm64``, from ``benchmarks/arm64_image.sh --keep``; emulated, so CPU figures
are qemu's and far above a real board's, and memory includes qemu's translation cache: an upper bound). Every second
it sums, over the agent's process tree read from /proc, the resident set (VmRSS) and the CPU time, by part: the agent
(its Python process with the warm worker), Flower's SuperNode, and either fedhive's warm ClientApp runner (the
default: one long-lived process) or, with ``--clientapp-runner flower``, Flower's SuperExec (``flower-superexec``)
and the ``flwr-clientapp`` processes it starts per task. First ``--idle`` seconds connected with no run, then a FedAsync run of ``--train`` seconds on
mnist1d (20 local steps of batch 32 per task, the agent the only client).

    .venv/bin/python benchmarks/footprint.py                     # local agent, ~2 minutes
    sudo benchmarks/arm64_image.sh --keep && .venv/bin/python benchmarks/footprint.py --agent arm64
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import save  # noqa: E402

from fedhive.localcluster import LocalCluster, exit_on_sigterm, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PARTS = ("agent", "supernode", "superexec", "runner", "clientapp", "other")


def part_of(cmdline: str) -> str:
    if "fedhive.client.runner" in cmdline:
        return "runner"
    if "flwr-clientapp" in cmdline:
        return "clientapp"
    if "flower-supernode" in cmdline:
        return "supernode"
    if "flower-superexec" in cmdline:
        return "superexec"
    if "fedhive" in cmdline and "agent" in cmdline:
        return "agent"
    return "other"


def tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def sample(root: int) -> dict[str, dict[str, float]]:
    """RSS (bytes) and CPU seconds by part, summed over ``root``'s process tree now."""
    out = {p: {"rss": 0.0, "cpu": 0.0, "procs": 0} for p in PARTS}
    out["other"]["names"] = []
    for pid in tree(root):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
        part = part_of(cmd)
        out[part]["rss"] += rss
        out[part]["cpu"] += (int(fields[11]) + int(fields[12])) / TICK  # utime + stime
        out[part]["procs"] += 1
        if part == "other":
            out["other"]["names"].append(cmd[:120])
        if part in ("supernode", "superexec"):  # the flwr-clientapp processes they started and reaped
            out["clientapp"]["cpu"] += (int(fields[13]) + int(fields[14])) / TICK
    return out


class Sampler(threading.Thread):
    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.phase, self.rows, self.halt = root, "connect", [], threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.rows.append({"t": time.monotonic(), "phase": self.phase, "parts": sample(self.root)})
            self.halt.wait(1.0)


def summarize(rows: list[dict], phase: str) -> dict[str, dict[str, float]]:
    rs = [r for r in rows if r["phase"] == phase]
    if len(rs) < 2:
        return {}
    wall = rs[-1]["t"] - rs[0]["t"]
    out = {}
    for part in PARTS + ("total",):
        def val(r, k, part=part):
            return sum(r["parts"][p][k] for p in PARTS) if part == "total" else r["parts"][part][k]
        rss = [val(r, "rss") for r in rs]
        cpu = val(rs[-1], "cpu") - val(rs[0], "cpu")
        out[part] = {"rss_mean_mib": sum(rss) / len(rss) / 2**20, "rss_peak_mib": max(rss) / 2**20,
                     "cpu_percent": 100.0 * cpu / wall if wall > 0 else 0.0}
    return out


def podman_env() -> dict[str, str]:
    """podman with the repository's settings (docker/podman/*.conf) unless the caller set its own."""
    return {**os.environ,
            "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(ROOT / "docker/podman/containers.conf")),
            "CONTAINERS_STORAGE_CONF": os.environ.get("CONTAINERS_STORAGE_CONF",
                                                      str(ROOT / "docker/podman/storage.conf"))}


def start_arm64_agent(cluster: LocalCluster, image: str, name: str) -> subprocess.Popen:
    args = cluster.node_security(name)
    key = Path(args[args.index("--auth-supernode-private-key") + 1])
    os.chmod(key, 0o644)  # the container's user (uid 10001) reads it; a throwaway key in a temporary folder
    cmd = ["podman", "run", "--rm", "--name", f"fedhive-footprint-{os.getpid()}", "--network", "host",
           "--platform", "linux/arm64", "-v", f"{cluster.tls.ca}:/certs/ca.crt:ro", "-v", f"{key}:/keys/node.key:ro",
           image, "--superlink", cluster.address, "--root-certificates", "/certs/ca.crt",
           "--auth-supernode-private-key", "/keys/node.key", "--partition-id", "0", "--num-partitions", "1",
           "--device-class", "rpi4", "--port", str(free_port())]
    log = open(cluster.run_dir / "logs" / "arm64-agent.log", "w")
    return subprocess.Popen(cmd, env=podman_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def container_pid(name: str, timeout: float = 120) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        res = subprocess.run(["podman", "inspect", "--format", "{{.State.Pid}}", name], env=podman_env(), capture_output=True,
                             text=True)
        if res.returncode == 0 and res.stdout.strip() not in ("", "0"):
            return int(res.stdout.strip())
        time.sleep(1.0)
    raise SystemExit(f"container {name} did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agent", choices=["local", "arm64"], default="local")
    ap.add_argument("--image", default="fedhive/agent:0.1.0-arm64")
    ap.add_argument("--clientapp-runner", choices=["warm", "flower"], default="warm", help="the local agent's runner")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds connected, no run")
    ap.add_argument("--train", type=float, default=60.0, help="seconds of the FedAsync run")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    exit_on_sigterm()
    console = Console()
    out = args.out or str(ROOT / "benchmarks" / "results" / f"footprint_{args.agent}.json")
    root = Path(tempfile.mkdtemp(prefix="fedhive-footprint-"))
    podman_proc = None
    try:
        with LocalCluster(root / "c", emulate="none", data_dir=root / "data", secure=True) as cluster:
            cluster.start_superlink()
            if args.agent == "local":
                agent = cluster.add_agent("cpu", 0, 1, quota=None, extra=["--clientapp-runner", args.clientapp_runner])
                pid = agent.pid
            else:
                if shutil.which("podman") is None:
                    raise SystemExit("--agent arm64 needs podman and the image: sudo benchmarks/arm64_image.sh --keep")
                podman_proc = start_arm64_agent(cluster, args.image, "arm64")
                pid = container_pid(f"fedhive-footprint-{os.getpid()}")
            sampler = Sampler(pid)
            sampler.start()
            end = time.monotonic() + 600
            while time.monotonic() < end and not any(r["parts"]["supernode"]["procs"] for r in sampler.rows[-1:]):
                time.sleep(1.0)
            time.sleep(15.0 if args.agent == "local" else 60.0)  # connected, worker warm (torch imported)
            sampler.phase = "idle"
            time.sleep(args.idle)
            run_dir = root / "run"
            sampler.phase = "starting"
            run_id = cluster.submit({"strategy": "fedasync", "task": "mnist1d", "local-steps": 20, "batch-size": 32,
                                     "num-partitions": 1, "min-clients": 1, "max-time": args.train,
                                     "eval-interval": 10.0, "run-dir": str(run_dir), "run-name": "footprint"})
            t0 = time.monotonic()
            while time.monotonic() - t0 < 300 and not (run_dir / "status.json").exists():
                time.sleep(0.5)
            sampler.phase = "training"
            st = cluster.wait_status(run_dir, run_id=run_id, timeout=args.train + 300)
            sampler.phase = "done"
            sampler.halt.set()
            sampler.join()
            if st.get("state") != "finished":
                raise SystemExit(f"the run did not finish: {st}; logs in {cluster.run_dir / 'logs'}")
            updates = st.get("client_updates")
    finally:
        if podman_proc is not None:
            subprocess.run(["podman", "rm", "-f", f"fedhive-footprint-{os.getpid()}"], capture_output=True,
                           env=podman_env())
            podman_proc.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)
    rows = []
    others = sorted({n for r in sampler.rows for n in r["parts"]["other"]["names"]})
    table = Table(title=f"fedhive agent footprint ({args.agent}), {updates} updates in the training phase")
    for col in ("phase", "part", "RSS mean MiB", "RSS peak MiB", "CPU % of one core"):
        table.add_column(col)
    for phase in ("idle", "training"):
        s = summarize(sampler.rows, phase)
        for part, v in s.items():
            rows.append({"agent": args.agent, "phase": phase, "part": part, **{k: round(x, 1) for k, x in v.items()}})
            table.add_row(phase, part, f"{v['rss_mean_mib']:.0f}", f"{v['rss_peak_mib']:.0f}", f"{v['cpu_percent']:.1f}")
    rows.append({"agent": args.agent, "other_processes": others, "updates": updates})
    console.print(table)
    console.print(f"other processes in the agent's tree: {others}")
    save(console, out, rows)
    console.print("clientapp: the per-task flwr-clientapp processes (live ones, plus those the SuperNode reaped); "
                  "the agent's CPU includes training (its warm worker).")
    print(json.dumps({"updates": updates}))


if __name__ == "__main__":
    main()
