"""Where one task's round trip goes on the real Flower path (issue 17): fedhive beside Flower's own, in one run.

A local SuperLink (TLS and node authentication, as ``fedhive up`` runs it) and ``--per-kind`` nodes of each kind,
all in one run of ``benchmarks/roundtrip_app`` (no CPU quota: this measures overhead, not compute):

- ``flower no-op``: a bare ``flower-supernode`` (Flower's launcher, a new ``flwr-clientapp`` process per message)
  whose ClientApp echoes the arrays: Flower's own floor;
- ``no-op, fedhive runner``: a ``fedhive agent`` (SuperNode in ``--isolation process`` with fedhive's warm ClientApp
  runner) running the same no-op;
- ``mnist1d, fedhive runner``: a ``fedhive agent`` as ``fedhive up`` starts it: fedhive's ClientApp ``train``
  (arrays -> warm worker -> training -> reply arrays) in the warm runner;
- ``mnist1d, Flower launcher``: the same agent with ``--clientapp-runner flower`` (a process per message);
- ``flower no-op, short polls`` (only with ``--kinds ...,4``): Flower's SuperNode with its hard-coded 3-s idle
  sleep and 0.5-s reply poll shortened in memory (``benchmarks/fast_supernode.py``): what upstream could win.

The ServerApp keeps one train message in flight per node and records push and pull times; each reply carries the
ClientApp process's own timestamps (OS start, app import: once per process; handler in and out; one machine, one
clock). Segments, p50 and p95 over the tasks of each kind:

- ``push -> handler start``: the message waits in the SuperLink until the SuperNode polls (Flower: every 3 s when
  idle), is pulled, a launcher or the warm runner claims the task (Flower's launcher polls every 1 s), and, with
  Flower's launcher, a new process starts, imports Flower and the app and pulls the message;
- ``of it process start -> app imported``: with a new process per message only;
- ``handler``: fedhive's train, or the no-op's echo; ``training`` is the worker's own measure of compute;
- ``handler out -> server pulled``: the reply goes ClientApp -> SuperNode (which looks every 0.5 s) -> SuperLink
  and the server's next pull (every ``--poll`` seconds when nothing came back).

    .venv/bin/python benchmarks/roundtrip.py                    # 4 kinds x 2 nodes, 8 tasks each, ~3 minutes
    .venv/bin/python benchmarks/roundtrip.py --per-kind 1 --tasks 12 --local-steps 20
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

from fedhive.client.agent import node_config_string  # noqa: E402
from fedhive.localcluster import LocalCluster, exit_on_sigterm, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
KINDS = {0: "flower no-op", 2: "no-op, fedhive runner", 1: "mnist1d, fedhive runner", 3: "mnist1d, Flower launcher",
         4: "flower no-op, short polls"}


def _new_process(r: dict) -> bool:
    """The ClientApp process was started for this task (its start is after the push), not a warm runner."""
    return r.get("rt-process", -math.inf) >= r["push"] - 0.5


SEGMENTS = [
    ("round trip (server push -> pull)", lambda r: r["pulled"] - r["push"]),
    ("push -> handler start", lambda r: r["rt-in"] - r["push"]),
    ("  of it process start -> app imported",
     lambda r: r["rt-import"] - r["rt-process"] if _new_process(r) else math.nan),
    ("handler", lambda r: r["rt-out"] - r["rt-in"]),
    ("  of it training (worker's measure)", lambda r: r.get("train_seconds") if r.get("train_seconds") is not None
     else math.nan),
    ("handler out -> server pulled", lambda r: r["pulled"] - r["rt-out"]),
]


def segment_values(rows: list[dict], f) -> list[float]:
    out = []
    for r in rows:
        if r.get("error"):
            continue
        try:
            v = float(f(r))
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(v):
            out.append(v)
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
    for flag, kind in KINDS.items():
        rs = [r for r in kept if r.get("rt-kind") == flag]
        if not rs:
            continue
        out[kind] = {}
        for name, f in SEGMENTS:
            v = segment_values(rs, f)
            if v:
                out[kind][name] = {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
                                   "mean": float(np.mean(v)), "n": len(v)}
        out[kind]["processes"] = {"distinct ClientApp processes": len({r.get("rt-pid") for r in rs}),
                                  "tasks": len(rs)}
    return out


def run_phase(root: Path, app: Path, kinds: list[int], args: argparse.Namespace) -> dict:
    """One SuperLink, ``args.per_kind`` nodes of each of ``kinds``, one run of the benchmark app; its rows."""
    result = root / "rows.json"
    k = args.per_kind
    with LocalCluster(root / "c", emulate="none", data_dir=root.parent / "data", secure=not args.insecure) as cluster:
        cluster.start_superlink()
        for i in range(k):
            for kind in kinds:
                if kind == 0:
                    cluster.add_supernode({"partition-id": i, "num-partitions": k, "rt-kind": 0}, name=f"noop{i}")
                elif kind == 4:  # Flower's SuperNode with its 3-s idle and 0.5-s reply polls shortened in memory
                    name = f"fastnoop{i}"
                    cluster._spawn(name, [sys.executable, str(HERE / "fast_supernode.py"), "0.2", "0.05",
                                          *cluster.node_security(name), "--superlink", cluster.address,
                                          "--port", str(free_port()), "--node-config",
                                          node_config_string({"partition-id": i, "num-partitions": k, "rt-kind": 4})])
                else:
                    extra = ["--node-config", f"rt-kind={kind}",
                             "--clientapp-runner", "flower" if kind == 3 else "warm"]
                    cluster.add_agent("gpu", i, k, quota=None, extra=extra)
        res = cluster.flwr("run", str(app), cluster.connection, "--run-config",
                           f"nodes={k * len(kinds)} tasks={args.tasks} local-steps={args.local_steps} "
                           f"poll-interval={args.poll} num-partitions={k} out='{result}'")
        if res.returncode != 0:
            raise SystemExit(f"flwr run failed: {res.stdout} {res.stderr}")
        end = time.monotonic() + 60 * args.tasks + 400
        while not result.exists() and time.monotonic() < end:
            time.sleep(2)
        if not result.exists():
            raise SystemExit(f"the benchmark ServerApp wrote no result; see {cluster.run_dir / 'logs'}")
        time.sleep(1)
        return json.loads(result.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-kind", type=int, default=2, help="nodes of each kind")
    p.add_argument("--kinds", default="0,2,1,3", help="which kinds: 0 flower no-op, 2 no-op with fedhive's runner, "
                   "1 mnist1d with fedhive's runner, 3 mnist1d with Flower's launcher, 4 flower no-op with the "
                   "SuperNode's idle and reply polls shortened in memory (0.2 s, 0.05 s: what upstream could win)")
    p.add_argument("--sequential", action="store_true", help="one kind at a time, each with its own SuperLink "
                   "(the kinds do not load the machine for each other: a Flower launcher's process start takes a "
                   "core for ~2 s)")
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
    kinds = [int(x) for x in args.kinds.split(",")]
    if not kinds or any(x not in KINDS for x in kinds):
        raise SystemExit(f"--kinds {args.kinds!r}: a comma-separated list of {', '.join(map(str, KINDS))}")
    phases = [[x] for x in kinds] if args.sequential else [kinds]
    console.print(f"{args.per_kind} node(s) of each kind ({', '.join(KINDS[x] for x in kinds)}), "
                  f"{'one kind at a time' if args.sequential else 'all at once'}, {args.tasks} tasks each, "
                  f"{args.local_steps} local steps, {'plain text' if args.insecure else 'TLS + node auth'}")
    t0 = time.monotonic()
    data: dict = {"rows": [], "pulls": 0}
    try:
        for i, phase in enumerate(phases):
            got = run_phase(root / f"phase{i}", app, phase, args)
            data["rows"] += got["rows"]
            data["pulls"] += got["pulls"]
            console.print(f"phase {i + 1}/{len(phases)} ({', '.join(KINDS[x] for x in phase)}): "
                          f"{len(got['rows'])} tasks")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = summarise(data["rows"], args.skip)
    t = Table(title="one task's round trip on the real Flower path, seconds (p50 / p95)")
    t.add_column("segment")
    for kind in summary:
        t.add_column(kind, justify="right")
    for name, _ in SEGMENTS:
        cells = []
        for kind in summary:
            s = summary[kind].get(name)
            cells.append(f"{s['p50']:.3f} / {s['p95']:.3f}" if s else "-")
        t.add_row(name, *cells)
    t.add_row("distinct ClientApp processes / tasks",
              *(f"{summary[k]['processes']['distinct ClientApp processes']} / {summary[k]['processes']['tasks']}"
                for k in summary))
    console.print(t)
    rt = "round trip (server push -> pull)"
    tr = "  of it training (worker's measure)"
    p50 = {kind: summary[kind][rt]["p50"] for kind in summary if rt in summary[kind]}
    goals = {}
    floor = p50.get(KINDS[0])
    if floor and KINDS[2] in p50:
        goals["no-op ratio (fedhive runner / Flower)"] = p50[KINDS[2]] / floor
        console.print(f"no-op ClientApp: fedhive's runner {p50[KINDS[2]]:.2f} s against Flower's own {floor:.2f} s "
                      f"(ratio {p50[KINDS[2]] / floor:.2f}; goal <= 1.10)")
    if floor and KINDS[1] in p50:
        over = p50[KINDS[1]] - summary[KINDS[1]].get(tr, {"p50": 0.0})["p50"]
        goals["mnist1d round trip minus training, s"] = over
        console.print(f"mnist1d with the warm path: round trip minus training {over:.2f} s, against Flower's no-op "
                      f"round trip {floor:.2f} s (goal: at most the no-op + 0.5 s)")
    if KINDS[1] in p50 and KINDS[3] in p50:
        goals["mnist1d round trip, warm runner / Flower launcher"] = p50[KINDS[1]] / p50[KINDS[3]]
        console.print(f"mnist1d: warm runner {p50[KINDS[1]]:.2f} s, Flower's launcher {p50[KINDS[3]]:.2f} s "
                      f"per round trip")
    save(console, args.out, [{"wall_seconds": time.monotonic() - t0, "args": vars(args), "pulls": data["pulls"],
                              "summary": summary, "goals": goals, "rows": data["rows"]}])

if __name__ == "__main__":
    main()
