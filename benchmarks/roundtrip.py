"""Where one task's round trip goes on the real Flower path (issue 17), fedhive's ClientApp beside Flower's no-op.

A local SuperLink (TLS and node authentication, as ``fedhive up`` runs it), ``--agents`` fedhive agents (warm worker,
no CPU quota: this measures overhead, not compute) and as many bare SuperNodes whose ClientApp is Flower's no-op,
all in one run of ``benchmarks/roundtrip_app``: the ServerApp keeps one train message in flight per node and
records push and pull times; each reply carries the ClientApp process's own timestamps (OS start, app import,
handler in/out; one machine, one clock). Segments, p50 and p95 over the tasks of each kind:

- ``push -> process start``: the message waits in the SuperLink until the SuperNode polls, is pulled, and the
  SuperNode starts a ``flwr-clientapp`` process for it;
- ``process start -> app imported``: Python and Flower start up in that process, then import the app module;
- ``app imported -> handler``: the ClientApp pulls the message from its SuperNode (ClientAppIo) and decodes it;
- ``handler``: fedhive's train (ArrayRecord -> warm worker over its socket -> training -> reply arrays), or the
  no-op's echo; ``training`` is the worker's own measure of compute, and ``handler - training`` fedhive's overhead;
- ``handler out -> server pulled``: the reply goes ClientApp -> SuperNode -> SuperLink and the server's next pull
  (every ``--poll`` seconds when nothing came back).

    .venv/bin/python benchmarks/roundtrip.py                    # 2 + 2 nodes, 8 tasks each, ~3 minutes
    .venv/bin/python benchmarks/roundtrip.py --agents 3 --tasks 12 --local-steps 20
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import save  # noqa: E402

from fedhive.localcluster import LocalCluster, exit_on_sigterm  # noqa: E402

HERE = Path(__file__).resolve().parent
SEGMENTS = [
    ("round trip (server push -> pull)", "push", "pulled"),
    ("push -> process start", "pushed", "rt-process"),
    ("process start -> app imported", "rt-process", "rt-import"),
    ("app imported -> handler", "rt-import", "rt-in"),
    ("handler", "rt-in", "rt-out"),
    ("  of it training (worker's measure)", None, "train_seconds"),
    ("handler out -> server pulled", "rt-out", "pulled"),
]


def segment_values(rows: list[dict], a: str | None, b: str) -> list[float]:
    out = []
    for r in rows:
        if r.get("error"):
            continue
        v = r.get(b) if a is None else (r.get(b, math.nan) - r.get(a, math.nan))
        if v is not None and math.isfinite(v):
            out.append(float(v))
    return out


def summarise(rows: list[dict], skip_first: int) -> dict[str, dict[str, dict[str, float]]]:
    """p50/p95/mean per segment and kind, leaving out each node's first ``skip_first`` tasks (start-up)."""
    seen: dict[int, int] = {}
    kept = []
    for r in sorted(rows, key=lambda r: r["push"]):
        k = seen.get(r["node"], 0)
        seen[r["node"]] = k + 1
        if k >= skip_first:
            kept.append(r)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for kind, flag in (("fedhive", 1), ("flower no-op", 0)):
        rs = [r for r in kept if r.get("rt-fedhive") == flag]
        out[kind] = {}
        for name, a, b in SEGMENTS:
            v = segment_values(rs, a, b)
            if v:
                out[kind][name] = {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
                                   "mean": float(np.mean(v)), "n": len(v)}
        out[kind]["processes"] = {"distinct ClientApp processes": len({r.get("rt-pid") for r in rs}),
                                  "tasks": len(rs)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=2, help="fedhive agents, and as many bare no-op SuperNodes")
    p.add_argument("--tasks", type=int, default=8, help="tasks per node")
    p.add_argument("--local-steps", type=int, default=20)
    p.add_argument("--poll", type=float, default=0.05, help="the ServerApp's pull interval when nothing came back")
    p.add_argument("--skip", type=int, default=1, help="first tasks per node left out (start-up)")
    p.add_argument("--insecure", action="store_true", help="plain text, no node authentication")
    p.add_argument("--out", default=str(HERE / "results" / "roundtrip.json"))
    args = p.parse_args()
    exit_on_sigterm()
    console = Console()
    root = Path(tempfile.mkdtemp(prefix="fedhive-roundtrip-"))
    app = root / "app"
    shutil.copytree(HERE / "roundtrip_app", app)
    result = root / "rows.json"
    n = 2 * args.agents
    t0 = time.monotonic()
    try:
        with LocalCluster(root / "c", emulate="none", data_dir=root / "data", secure=not args.insecure) as cluster:
            cluster.start_superlink()
            for i in range(args.agents):
                cluster.add_agent("gpu", i, args.agents, quota=None)
                cluster.add_supernode({"partition-id": i, "num-partitions": args.agents}, name=f"noop{i}")
            console.print(f"{args.agents} fedhive agents + {args.agents} Flower no-op SuperNodes, {args.tasks} tasks "
                          f"each, {args.local_steps} local steps, {'plain text' if args.insecure else 'TLS + node auth'}")
            res = cluster.flwr("run", str(app), cluster.connection, "--run-config",
                               f"nodes={n} tasks={args.tasks} local-steps={args.local_steps} "
                               f"poll-interval={args.poll} num-partitions={args.agents} out='{result}'")
            if res.returncode != 0:
                raise SystemExit(f"flwr run failed: {res.stdout} {res.stderr}")
            end = time.monotonic() + 60 * args.tasks + 400
            while not result.exists() and time.monotonic() < end:
                time.sleep(2)
            if not result.exists():
                raise SystemExit(f"the benchmark ServerApp wrote no result; see {cluster.run_dir / 'logs'}")
            time.sleep(1)
        data = json.loads(result.read_text())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = summarise(data["rows"], args.skip)
    t = Table(title="one task's round trip on the real Flower path, seconds (p50 / p95)")
    t.add_column("segment")
    for kind in summary:
        t.add_column(kind, justify="right")
    for name, _, _ in SEGMENTS:
        cells = []
        for kind in summary:
            s = summary[kind].get(name)
            cells.append(f"{s['p50']:.3f} / {s['p95']:.3f}" if s else "-")
        t.add_row(name, *cells)
    t.add_row("distinct ClientApp processes / tasks",
              *(f"{summary[k]['processes']['distinct ClientApp processes']} / {summary[k]['processes']['tasks']}"
                for k in summary))
    console.print(t)
    f, o = summary["fedhive"], summary["flower no-op"]
    rt = "round trip (server push -> pull)"
    tr = "  of it training (worker's measure)"
    if rt in f and rt in o:
        over = f[rt]["p50"] - f.get(tr, {"p50": 0.0})["p50"]
        console.print(f"fedhive's median round trip minus its median training: {over:.2f} s, against Flower's no-op "
                      f"round trip {o[rt]['p50']:.2f} s (ratio {over / o[rt]['p50']:.2f}); goal: at most the no-op "
                      f"+ 0.5 s")
    save(console, args.out, [{"wall_seconds": time.monotonic() - t0, "args": vars(args), "pulls": data["pulls"],
                              "summary": summary, "rows": data["rows"]}])

if __name__ == "__main__":
    main()
