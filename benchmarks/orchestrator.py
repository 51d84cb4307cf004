"""Overhead of fedhive on the real Flower path (BENCHMARK.md §3), and the per-task client overhead with and without
the agent's warm worker.

Part 1: a local SuperLink with N SuperNodes whose ClientApp is a no-op (echoes the model). One ServerApp run
alternates raw Flower push/pull round trips and fedhive's orchestrator (FedAsync over GridTransport) with the same
payload; reports client updates per second for each, fedhive's share of Flower's rate, mean round trip, and the
server-side milliseconds per update (validation + strategy + dispatch).

Part 2: four fedhive agents on the mnist1d task (FedAsync), two with the warm worker and two without (every
ClientApp process then imports torch and loads the data itself); reports the mean task round trip of each kind.

    .venv/bin/python benchmarks/orchestrator.py                 # both parts, ~8 minutes
    .venv/bin/python benchmarks/orchestrator.py --part 1 --nodes 20 --phase-seconds 60 --repeats 2
    .venv/bin/python benchmarks/orchestrator.py --part 1 --compare-backoff   # also fedhive without the pull back-off
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import save  # noqa: E402

from fedhive.localcluster import LocalCluster, exit_on_sigterm  # noqa: E402

HERE = Path(__file__).resolve().parent


def part1(args, console: Console, root: Path) -> list[dict]:
    app = root / "app"
    shutil.copytree(HERE / "orchestrator_app", app)
    out = root / "overhead.json"
    with LocalCluster(root / "c1", emulate="none") as cluster:
        cluster.start_superlink()
        for i in range(args.nodes):
            cluster.add_supernode({"partition-id": i, "num-partitions": args.nodes})
        total = (3 if args.compare_backoff else 2) * args.repeats * (args.phase_seconds + 40) + 180
        console.print(f"part 1: {args.nodes} SuperNodes with a no-op ClientApp, {args.params:,} float32 parameters, "
                      f"{args.repeats} x (raw, fedhive) phases of {args.phase_seconds:.0f} s (about {total / 60:.0f} min)")
        cluster.flwr("run", str(app), "up", "--run-config",
                     f"nodes={args.nodes} params={args.params} phase-seconds={args.phase_seconds} "
                     f"repeats={args.repeats} compare-backoff={str(args.compare_backoff).lower()} out='{out}'")
        end = time.monotonic() + total + 300
        while not out.exists() and time.monotonic() < end:
            time.sleep(2)
        if not out.exists():
            raise SystemExit(f"the benchmark ServerApp wrote no result; see {cluster.run_dir / 'logs'}")
    rows = json.loads(out.read_text())["rows"]
    t = Table(title="fedhive orchestrator vs raw Flower round trips (no-op training)")
    for c in ("repeat", "path", "updates", "updates/s", "mean round trip s", "server wall ms/update",
              "server CPU ms/update", "with pulls", "pulls/update"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(str(r["repeat"]), r["path"], str(r["updates"]), f"{r['updates_per_s']:.2f}",
                  f"{r['mean_round_trip_s']:.2f}", f"{r['server_ms_per_update']:.1f}",
                  f"{r['server_cpu_ms_per_update']:.1f}",
                  f"{r['server_cpu_ms_per_update_with_pulls']:.1f}" if "pulls_per_update" in r else "-",
                  f"{r['pulls_per_update']:.1f}" if "pulls_per_update" in r else "-")
    console.print(t)
    raw = sum(r["updates"] for r in rows if r["path"] == "raw flower") / sum(
        r["seconds"] for r in rows if r["path"] == "raw flower")
    fh = sum(r["updates"] for r in rows if r["path"] == "fedhive") / sum(
        r["seconds"] for r in rows if r["path"] == "fedhive")
    rt_raw = statistics.mean(r["mean_round_trip_s"] for r in rows if r["path"] == "raw flower")
    rt_fh = statistics.mean(r["mean_round_trip_s"] for r in rows if r["path"] == "fedhive")
    console.print(f"fedhive {fh:.2f} updates/s vs raw Flower {raw:.2f} updates/s ({fh / raw:.0%}); mean round trip "
                  f"{rt_fh:.2f} s vs {rt_raw:.2f} s: fedhive adds {100 * (rt_fh / rt_raw - 1):+.1f} %")
    return [{"part": 1, **r} for r in rows] + [{"part": 1, "summary": True, "fedhive_updates_per_s": fh,
                                                "raw_updates_per_s": raw, "round_trip_added_pct":
                                                    100 * (rt_fh / rt_raw - 1)}]


def part2(args, console: Console, root: Path) -> list[dict]:
    run_dir = root / "run2"
    console.print(f"part 2: 4 agents on mnist1d for {args.client_seconds:.0f} s: 2 with the warm worker (listed as "
                  f"class gpu), 2 without (class cpu); no CPU quota")
    with LocalCluster(root / "c2", emulate="none") as cluster:
        cluster.start_superlink()
        for i, worker in enumerate((True, True, False, False)):
            cluster.add_agent("gpu" if worker else "cpu", i, 4, worker=worker, quota=None)
        run_id = cluster.submit({"strategy": "fedasync", "task": "mnist1d", "min-clients": 4,
                                 "max-time": args.client_seconds, "eval-interval": 10.0, "run-dir": str(run_dir)})
        st = cluster.wait_status(run_dir, run_id=run_id, timeout=args.client_seconds + 400)
        if st.get("state") != "finished":
            raise SystemExit(f"part 2 run ended as {st.get('state')}; see {cluster.run_dir / 'logs'}")
    arrivals = json.loads((run_dir / "history.json").read_text())["arrivals"]
    rows = []
    t = Table(title="per-task round trip (push to reply) of fedhive's ClientApp, 20 local steps of mnist1d")
    for c in ("ClientApp", "tasks", "mean round trip s", "median s", "mean time in trainer s"):
        t.add_column(c, justify="right")
    for cls, label in (("cpu", "without warm worker"), ("gpu", "with warm worker")):
        xs = [a for a in arrivals if a["class"] == cls]
        d = [a["duration"] for a in xs]
        s = [a["seconds"] for a in xs if a.get("seconds") is not None]
        row = {"part": 2, "variant": label, "tasks": len(xs), "mean_round_trip_s": statistics.mean(d) if d else None,
               "median_round_trip_s": statistics.median(d) if d else None,
               "mean_trainer_s": statistics.mean(s) if s else None}
        rows.append(row)
        t.add_row(label, str(len(xs)), f"{row['mean_round_trip_s']:.2f}", f"{row['median_round_trip_s']:.2f}",
                  f"{row['mean_trainer_s']:.2f}")
    console.print(t)
    if rows[0]["mean_round_trip_s"] and rows[1]["mean_round_trip_s"]:
        console.print(f"the warm worker saves {rows[0]['mean_round_trip_s'] - rows[1]['mean_round_trip_s']:.2f} s "
                      f"per task on average")
    return rows


def main() -> None:
    exit_on_sigterm()  # a stopped benchmark still stops its cluster
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("1", "2", "all"), default="all")
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--params", type=int, default=100_000)
    p.add_argument("--phase-seconds", type=float, default=60.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--compare-backoff", action="store_true",
                   help="part 1: a third phase per repeat, fedhive with a pull every 0.05 s (no back-off)")
    p.add_argument("--client-seconds", type=float, default=90.0)
    p.add_argument("--out", default=str(HERE / "results"), help="folder for orchestrator.json (part 1) and "
                   "orchestrator_client.json (part 2)")
    args = p.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="fedhive-bench-") as tmp:
        root = Path(tmp)
        if args.part in ("1", "all"):
            name = "orchestrator_backoff.json" if args.compare_backoff else "orchestrator.json"
            save(console, Path(args.out) / name, part1(args, console, root))
        if args.part in ("2", "all"):
            save(console, Path(args.out) / "orchestrator_client.json", part2(args, console, root))


if __name__ == "__main__":
    main()
