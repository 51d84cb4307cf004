"""Fleet scale in virtual time: 1,000 and 10,000 simulated devices, in-process and on Ray (issue 6, BENCHMARK.md §4).

Each configuration runs in a fresh process until 10,000 client updates on the ``synthetic`` task (the hetero mix
scaled to the fleet size, FedBuff, 5 local steps). Reported: wall seconds per 10,000 client updates (the run
itself; Ray's start is reported apart), the peak RSS of the whole process tree (the run's process plus, for Ray, its
GCS, raylet and workers; shared pages count once per process), and the run's own RSS after 2,000 and after 10,000
updates, which shows whether memory grows with the number of versions.

    .venv/bin/python benchmarks/scale.py [--clients 1000,10000] [--executors inline,ray] [--updates 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_rss(pid: int) -> int:
    kids, total, todo = _children(), 0, [pid]
    while todo:
        p = todo.pop()
        total += _rss(p)
        todo.extend(kids.get(p, []))
    return total


def one(clients: int, executor: str, updates: int, strategy: str, seed: int) -> dict:
    """One configuration, in this process: prints its figures as JSON."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from fedhive.engine import Observer
    from fedhive.sim.profiles import PRESETS, scale_mix
    from fedhive.sim.runner import SimConfig, run_sim

    marks = {2_000: None, updates // 2: None, updates: None}

    class Memory(Observer):
        def __init__(self) -> None:
            self.n = 0

        def on_update(self, update, outcome, client, staleness, duration, now) -> None:
            self.n += 1
            if self.n in marks:
                marks[self.n] = _rss(os.getpid())

    fleet = PRESETS["hetero"].with_mix(scale_mix(PRESETS["hetero"].mix, clients))
    params = {"buffer_size": 10} if strategy == "fedbuff" else {}
    cfg = SimConfig(strategy=strategy, fleet=fleet, budget=1e9, seed=seed, task="synthetic", local_steps=5,
                    strategy_params=params, max_updates=updates, eval_interval=1e9, executor=executor)
    t0 = time.perf_counter()
    res = run_sim(cfg, observer=Memory())
    total = time.perf_counter() - t0
    done = res["final"]["client_updates"]
    return {"clients": clients, "executor": executor, "strategy": strategy, "updates": done,
            "versions": res["final"]["version"], "virtual_s": res["final"]["time"],
            "run_s": res["wall_seconds"], "startup_s": total - res["wall_seconds"],
            "s_per_10k_updates": res["wall_seconds"] * 10_000 / max(done, 1),
            "rss_by_updates_mib": {str(k): (v or 0) / 2**20 for k, v in sorted(marks.items())}}


def measure(clients: int, executor: str, updates: int, strategy: str, seed: int) -> dict:
    """Run ``one`` in a fresh process, sampling its process tree's RSS every 0.2 s."""
    cmd = [sys.executable, __file__, "--one", str(clients), executor, "--updates", str(updates),
           "--strategy", strategy, "--seed", str(seed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, _ = proc.communicate(timeout=3600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{clients} clients on {executor} failed (exit {proc.returncode}): {out[-2000:]}")
    row = json.loads(out.strip().splitlines()[-1])
    row["peak_tree_rss_mib"] = peak[0] / 2**20
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="1000,10000")
    ap.add_argument("--executors", default="inline,ray")
    ap.add_argument("--updates", type=int, default=10_000)
    ap.add_argument("--strategy", default="fedbuff")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/scale.json")
    ap.add_argument("--one", nargs=2, metavar=("CLIENTS", "EXECUTOR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1], args.updates, args.strategy, args.seed)))
        return

    sys.path.insert(0, str(Path(__file__).parent))
    from machine import save
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console()
    configs = [(int(c), e) for c in args.clients.split(",") for e in args.executors.split(",")]
    rows = []
    with Progress(console=console) as bar:
        task = bar.add_task("scale", total=len(configs))
        for clients, executor in configs:
            bar.update(task, description=f"{clients:,} clients, {executor}")
            rows.append(measure(clients, executor, args.updates, args.strategy, args.seed))
            bar.advance(task)
    t = Table(title=f"{args.strategy}, synthetic task, {args.updates:,} client updates per run")
    for col in ("clients", "executor", "s / 10k updates", "startup s", "versions", "peak tree RSS MiB",
                "run RSS MiB @2k", "@end"):
        t.add_column(col, justify="right")
    for r in rows:
        rss = r["rss_by_updates_mib"]
        t.add_row(f"{r['clients']:,}", r["executor"], f"{r['s_per_10k_updates']:.1f}", f"{r['startup_s']:.1f}",
                  f"{r['versions']:,}", f"{r['peak_tree_rss_mib']:.0f}", f"{rss['2000']:.0f}",
                  f"{rss[str(args.updates)]:.0f}")
    console.print(t)
    save(console, args.out, rows)


if __name__ == "__main__":
    main()
