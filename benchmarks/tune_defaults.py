"""How the strategies' defaults were chosen: candidates on tuning scenarios that are *not* the reported one.

The README reports `fedhive bench hetero` (50 clients gpu=5,cpu=20,rpi4=25, Dirichlet(0.5), seed 0). The defaults of
FedAsync, FedCompass and FedASMU are chosen here on other fleets: other client counts, device mixes, label skews and
seeds. For each tuning scenario, synchronous FedAvg runs first to the target (its time is the scenario's budget, as in
the benchmark); then every candidate runs until it reaches the target or the budget ends. The score of a candidate is
its speed-up against FedAvg on each scenario (a candidate that does not reach the target scores budget / (2 × budget)
= 0.5 there), summarised by the geometric mean over the scenarios; the best geometric mean becomes the default.

    .venv/bin/python benchmarks/tune_defaults.py [--workers 2] [--out benchmarks/results/tune_defaults.json]
    .venv/bin/python benchmarks/tune_defaults.py --merge      # only the candidates --out has no runs of yet

With ``--merge`` the FedAvg times and every run already in ``--out`` are kept (virtual time is deterministic, so
running them again would give the same numbers) and only new candidates run; the summary covers all of them.

Virtual-time results are deterministic (the same on any machine with the same torch); wall seconds are this machine's.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from fedhive.sim.profiles import FleetSpec
from fedhive.sim.runner import SimConfig, run_sim_one_thread, time_to_target

# The tuning scenarios: none is the reported one (50 clients, 5/20/25, alpha 0.5, seed 0).
SCENARIOS = {
    "S1: 30 clients 3/12/15, α=0.5, seed 1": {"mix": {"gpu": 3, "cpu": 12, "rpi4": 15}, "alpha": 0.5, "seed": 1},
    "S2: 50 clients 5/10/35 (more Pis), α=0.3, seed 2": {"mix": {"gpu": 5, "cpu": 10, "rpi4": 35}, "alpha": 0.3,
                                                         "seed": 2},
    "S3: 80 clients 5/25/50, α=0.3, seed 3": {"mix": {"gpu": 5, "cpu": 25, "rpi4": 50}, "alpha": 0.3, "seed": 3},
}

# (strategy, label, parameters). "paper" is each strategy's published setting (preset="paper").
CANDIDATES = [
    ("fedasync", "paper: alpha=0.6, polynomial a=0.5", {"preset": "paper"}),
    ("fedasync", "alpha=0.9", {"preset": "paper", "alpha": 0.9}),
    ("fedasync", "alpha=0.9, staleness_a=0.3", {"preset": "paper", "alpha": 0.9, "staleness_a": 0.3}),
    # second round (2026-12-03, with --merge): smaller mixing weights
    ("fedasync", "alpha=0.4", {"preset": "paper", "alpha": 0.4}),
    ("fedasync", "alpha=0.3", {"preset": "paper", "alpha": 0.3}),
    # third round (2026-12-04, with --merge): stronger staleness damping, and the paper's hinge
    ("fedasync", "alpha=0.6, polynomial a=1", {"preset": "paper", "staleness_a": 1.0}),
    ("fedasync", "alpha=0.9, polynomial a=1", {"preset": "paper", "alpha": 0.9, "staleness_a": 1.0}),
    ("fedasync", "alpha=0.6, polynomial a=0.75", {"preset": "paper", "staleness_a": 0.75}),
    ("fedasync", "alpha=0.9, hinge a=10 b=4", {"preset": "paper", "alpha": 0.9, "staleness": "hinge",
                                                 "staleness_a": 10.0, "staleness_b": 4.0}),
    ("fedcompass", "paper: q 20..100, samples, per_step", {"preset": "paper"}),
    ("fedcompass", "q 5..20, group", {"preset": "paper", "q_min": 5, "q_max": 20, "client_weights": "group",
                                      "speed_model": "affine"}),
    ("fedcompass", "q 10..40, group", {"preset": "paper", "q_min": 10, "q_max": 40, "client_weights": "group",
                                       "speed_model": "affine"}),
    ("fedasmu", "paper: mu_alpha=1, mu_beta=1", {"preset": "paper"}),
    ("fedasmu", "mu_alpha=10, mu_beta=1000", {"preset": "paper", "mu_alpha": 10.0, "mu_beta": 1000.0}),
    ("fedasmu", "mu_alpha=10, mu_beta=100", {"preset": "paper", "mu_alpha": 10.0, "mu_beta": 100.0}),
    ("fedasmu", "mu_alpha=3, mu_beta=1000", {"preset": "paper", "mu_alpha": 3.0, "mu_beta": 1000.0}),
]

TARGET = 0.85
FEDAVG_CAP = 3000.0


def _config(scenario: dict, strategy: str, params: dict, budget: float) -> SimConfig:
    return SimConfig(strategy=strategy, strategy_params=params, fleet=FleetSpec(dict(scenario["mix"])),
                     budget=budget, seed=scenario["seed"], task="mnist1d",
                     task_params={"alpha": scenario["alpha"], "partition": "dirichlet"}, target=TARGET,
                     stop_at_target=True, eval_interval=max(budget / 600.0, 0.5))


def _run(args: tuple[str, str, str, dict, dict, float]) -> dict:
    scenario_name, strategy, label, params, scenario, budget = args
    r = run_sim_one_thread(_config(scenario, strategy, params, budget))
    return {"scenario": scenario_name, "strategy": strategy, "label": label, "params": params, "budget": budget,
            "time_to_target": time_to_target(r["history"], TARGET), "final_accuracy": r["final"]["accuracy"],
            "client_updates": r["final"]["client_updates"], "wall_seconds": r["wall_seconds"],
            "strategy_config": r["strategy_config"]}


def score(time: float | None, reference: float) -> float:
    """Speed-up against FedAvg; not reaching the target within the budget counts as taking twice the budget."""
    return reference / (time if time is not None else 2.0 * reference)


def references(workers: int, tuning: str, out: str) -> None:
    """FedBuff and FedFix with their defaults (the papers') on the tuning fleets, against the FedAvg times of a
    finished tuning run: where FedCompass's and FedASMU's chosen defaults stand against them."""
    ref = json.loads(Path(tuning).read_text())["fedavg_time_to_target"]
    jobs = [(n, s, "default", {}, sc, ref[n]) for n, sc in SCENARIOS.items() for s in ("fedbuff", "fedfix")]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        rows = list(pool.map(_run, jobs))
    t = Table(title=f"references on the tuning fleets: speed-up vs FedAvg to {TARGET:.0%}")
    for col in ("strategy", *[n.split(":")[0] for n in SCENARIOS], "geomean"):
        t.add_column(col)
    for s in ("fedbuff", "fedfix"):
        scores = [score(next(r for r in rows if r["strategy"] == s and r["scenario"] == n)["time_to_target"], ref[n])
                  for n in SCENARIOS]
        t.add_row(s, *[f"{x:.2f}×" for x in scores], f"{math.exp(sum(map(math.log, scores)) / len(scores)):.2f}×")
    Console().print(t)
    Path(out).write_text(json.dumps({"command": "python benchmarks/tune_defaults.py --references", "runs": rows},
                                    indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/tune_defaults.json")
    ap.add_argument("--references", action="store_true",
                    help="run FedBuff and FedFix (defaults) on the tuning fleets against --out's FedAvg times")
    ap.add_argument("--references-out", default="benchmarks/results/tune_defaults_references.json")
    ap.add_argument("--merge", action="store_true",
                    help="keep --out's FedAvg times and runs; run only the candidates it has no runs of")
    args = ap.parse_args()
    if args.references:
        references(args.workers, args.out, args.references_out)
        return
    console = Console()
    t0 = time.perf_counter()
    rows: list[dict] = []
    done: set[tuple[str, str, str]] = set()
    earlier_wall = 0.0
    if args.merge:
        old = json.loads(Path(args.out).read_text())
        rows = [r for r in old["runs"] if r["scenario"] in SCENARIOS]
        done = {(r["scenario"], r["strategy"], r["label"]) for r in rows}
        earlier_wall = float(old.get("wall_seconds", 0.0))
    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool, Progress() as bar:
        budgets: dict[str, float] = {r["scenario"]: r["time_to_target"] or FEDAVG_CAP for r in rows
                                     if r["strategy"] == "fedavg"}
        todo = [name for name in SCENARIOS if name not in budgets]
        first = bar.add_task("FedAvg per scenario", total=len(todo))
        futures = {pool.submit(_run, (name, "fedavg", "fedavg", {}, SCENARIOS[name], FEDAVG_CAP)): name
                   for name in todo}
        for fut in as_completed(futures):
            row = fut.result()
            rows.append(row)
            budgets[row["scenario"]] = row["time_to_target"] or FEDAVG_CAP
            bar.advance(first)
        jobs = [(name, s, label, params, sc, budgets[name]) for name, sc in SCENARIOS.items()
                for s, label, params in CANDIDATES if (name, s, label) not in done]
        # the costliest first (FedASMU trains two jobs per task; big fleets make more updates per second)
        jobs.sort(key=lambda j: -sum(j[4]["mix"].values()) * j[5] * (2.0 if j[1] == "fedasmu" else 1.0))
        second = bar.add_task("candidates", total=len(jobs))
        for fut in as_completed([pool.submit(_run, j) for j in jobs]):
            rows.append(fut.result())
            bar.advance(second)
    ref = {r["scenario"]: r["time_to_target"] or FEDAVG_CAP for r in rows if r["strategy"] == "fedavg"}
    summary = []
    for s, label, params in CANDIDATES:
        mine = {r["scenario"]: r for r in rows if r["strategy"] == s and r["label"] == label}
        scores = [score(mine[n]["time_to_target"], ref[n]) for n in SCENARIOS]
        summary.append({"strategy": s, "label": label, "params": params,
                        "speedups": {n: sc for n, sc in zip(SCENARIOS, scores)},
                        "geomean": math.exp(sum(map(math.log, scores)) / len(scores))})
    best = {}
    for row in summary:
        if row["strategy"] not in best or row["geomean"] > best[row["strategy"]]["geomean"]:
            best[row["strategy"]] = row
    t = Table(title=f"tuning the defaults: speed-up vs FedAvg to {TARGET:.0%} (not reached: 0.5)")
    t.add_column("strategy")
    t.add_column("candidate")
    for n in SCENARIOS:
        t.add_column(n.split(":")[0] + f" (FedAvg {ref[n]:.0f} s)", justify="right")
    t.add_column("geomean", justify="right")
    for row in summary:
        mark = " *" if best[row["strategy"]] is row else ""
        t.add_row(row["strategy"], row["label"] + mark, *[f"{row['speedups'][n]:.2f}×" for n in SCENARIOS],
                  f"{row['geomean']:.2f}×")
    console.print(t)
    for n in SCENARIOS:
        console.print(f"  {n}")
    wall = time.perf_counter() - t0
    console.print(f"* = best geometric mean; {wall / 60:.1f} min of wall time on this machine"
                  + (f" (this merge; {earlier_wall / 60:.1f} min before)" if args.merge else ""))
    wall += earlier_wall
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": "python benchmarks/tune_defaults.py", "target": TARGET,
                                          "scenarios": SCENARIOS, "fedavg_time_to_target": ref, "runs": rows,
                                          "summary": summary, "best": {k: v["label"] for k, v in best.items()},
                                          "wall_seconds": wall}, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
