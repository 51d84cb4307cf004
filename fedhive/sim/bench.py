"""``fedhive bench hetero``: every strategy on the same unequal fleet, in virtual time (BENCHMARK.md §1).

Synchronous FedAvg runs first, until it reaches the target accuracy (or the ``--budget`` cap); the virtual time it
needed is the budget for every other strategy, so all are compared over the same span. ``--long`` runs them all to
the long budget instead (plateau accuracies). The table reports virtual seconds to the target, speed-up against
FedAvg, final accuracy at the budget, client updates and bytes moved; ``results.json`` and
``accuracy_vs_time.png`` go to ``--out``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from .profiles import PRESETS, FleetSpec
from .runner import SimConfig, run_sim, run_sim_one_thread, time_to_target

ORDER = ("fedavg", "fedasync", "fedbuff", "fedfix", "fedcompass", "fedasmu")

# Relative wall time per virtual second on the hetero scenario (measured), to start the longest runs first.
_COST = {"fedasmu": 4.5, "fedasync": 2.4, "fedbuff": 2.4, "fedcompass": 1.3, "fedfix": 1.0}

# BENCHMARK.md §1 defaults.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "mix": dict(PRESETS["hetero"].mix),
    "alpha": 0.5,
    "target": 0.85,
    "budget": 3000.0,
    "long_budget": 2000.0,
    "local_steps": 20,
}


def hetero(*, seed: int = 0, mix: dict | None = None, alpha: float = 0.5, target: float = 0.85,
           budget: float = 3000.0, long: bool = False, long_budget: float = 2000.0, out: str | Path | None = None,
           strategies: Sequence[str] = ORDER, strategy_params: dict[str, dict] | None = None,
           executor: str = "inline", workers: int | None = None, ray_address: str | None = None,
           ray_gpus: str = "auto", jitter: float = 0.3, local_steps: int = 20, client_config: dict | None = None,
           eval_interval: float | None = None, progress: bool = True,
           console: Console | None = None) -> dict[str, Any]:
    """Run the hetero benchmark; returns what ``results.json`` holds.

    With the in-process executor (the default), the strategies after FedAvg run side by side in ``workers``
    processes (default: one per core). With ``process`` or ``ray`` they run one after another, each spreading its
    training over that executor. The result is the same either way.
    """
    console = console or Console()
    fleet = FleetSpec(dict(mix or DEFAULTS["mix"]), jitter=jitter)
    strategy_params = strategy_params or {}
    names = [s for s in ORDER if s in strategies] + [s for s in strategies if s not in ORDER]
    if "fedavg" not in names and not long:
        raise ValueError("the hetero benchmark needs fedavg (its time to the target sets the budget), or --long")
    base = SimConfig(strategy="fedavg", fleet=fleet, budget=budget, seed=seed, task="mnist1d",
                     task_params={"alpha": alpha, "partition": "dirichlet"}, local_steps=local_steps,
                     client_config=dict(client_config or {}), target=target, executor=executor,
                     workers=workers if workers is not None else (os.cpu_count() or 1),
                     ray_address=ray_address, ray_gpus=ray_gpus, eval_interval=eval_interval)
    runs: dict[str, dict] = {}
    span = long_budget if long else budget
    if "fedavg" in names:
        cfg = replace(base, strategy="fedavg", strategy_params=strategy_params.get("fedavg", {}),
                      budget=span, stop_at_target=not long,
                      eval_interval=eval_interval or max(span / 600.0, 0.5))
        if executor == "inline" and (base.workers or 1) > 1:
            # FedAvg runs alone (its time sets everyone's budget): its rounds' chunks train in a pool of worker
            # processes instead, so every core works. The executor never changes the result, only the wall time.
            cfg = replace(cfg, executor="process")
        runs["fedavg"] = run_sim(cfg, progress=progress)
        if not long:
            t_avg = runs["fedavg"].get("time_to_target")
            span = t_avg if t_avg is not None else budget
            if t_avg is None:
                console.print(f"[yellow]FedAvg did not reach {target:.0%} within {budget:.0f} virtual s; every "
                              "strategy gets that budget[/]")
    rest = [replace(base, strategy=name, strategy_params=strategy_params.get(name, {}), budget=span,
                    eval_interval=eval_interval or max(span / 600.0, 0.5)) for name in names if name != "fedavg"]
    parallel = min(base.workers or 1, len(rest)) if executor == "inline" else 1
    if parallel > 1:
        # The runs are independent once the budget is known: one process per run, each run in-process (so its
        # result is exactly what a sequential run gives), the longest first.
        console.print(f"running {', '.join(c.strategy for c in rest)} in {parallel} processes, "
                      f"{span:.0f} virtual s each")
        order = sorted(rest, key=lambda c: -_COST.get(c.strategy, 1.0))
        with ProcessPoolExecutor(parallel, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(run_sim_one_thread, c): c.strategy for c in order}
            for fut in as_completed(futures):
                name = futures[fut]
                runs[name] = fut.result()
                r = runs[name]
                console.print(f"  {name}: final accuracy {r['final']['accuracy']:.3f}, "
                              f"{r['final']['client_updates']:,} updates, {r['wall_seconds']:.0f} s")
    else:
        for cfg in rest:
            runs[cfg.strategy] = run_sim(cfg, progress=progress)
    runs = {name: runs[name] for name in names if name in runs}

    t_ref = runs["fedavg"].get("time_to_target") if "fedavg" in runs else None
    table: dict[str, dict] = {}
    for name, r in runs.items():
        ttt = time_to_target(r["history"], target)
        table[name] = {
            "time_to_target": ttt,
            "speedup": (t_ref / ttt) if (t_ref is not None and ttt) else None,
            "final_accuracy": r["final"]["accuracy"],
            "client_updates": r["final"]["client_updates"],
            "bytes": r["final"]["bytes"],
            "versions": r["final"]["version"],
            "diverged_aggregations": r["diverged"],
            "strategy_config": r["strategy_config"],
            "wall_seconds": r["wall_seconds"],
        }
    results = {
        "scenario": {"task": "mnist1d", "clients": fleet.size, "mix": fleet.mix, "alpha": alpha, "seed": seed,
                     "jitter": jitter, "local_steps": local_steps, "client_config": client_config or {},
                     "budget": span, "long": long,
                     "profiles": {k: {"seconds_per_step": p.seconds_per_step, "bandwidth": p.bandwidth,
                                      "latency": p.latency} for k, p in fleet.profiles.items() if k in fleet.mix}},
        "target_accuracy": target,
        "strategies": table,
        "history": {name: r["history"] for name, r in runs.items()},
    }
    print_table(results, console)
    if out is not None:
        write(results, Path(out))
        console.print(f"wrote {Path(out) / 'results.json'} and {Path(out) / 'accuracy_vs_time.png'}")
    return results


def print_table(results: dict, console: Console) -> None:
    sc = results["scenario"]
    t = Table(title=f"hetero: {sc['clients']} clients {sc['mix']}, Dirichlet({sc['alpha']}), seed {sc['seed']}, "
                    f"budget {sc['budget']:.0f} virtual s, target {results['target_accuracy']:.0%}")
    for col in ("strategy", "time to target (s)", "speed-up vs FedAvg", "final accuracy", "client updates",
                "MB moved", "wall s"):
        t.add_column(col, justify="right" if col != "strategy" else "left")
    for name, r in results["strategies"].items():
        ttt, sp = r["time_to_target"], r["speedup"]
        t.add_row(name, f"{ttt:.0f}" if ttt is not None else "not reached", f"{sp:.1f}×" if sp else "-",
                  f"{r['final_accuracy']:.3f}", f"{r['client_updates']:,}", f"{r['bytes'] / 1e6:,.0f}",
                  f"{r['wall_seconds']:.0f}")
    console.print(t)


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "accuracy_vs_time.png")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for name, hist in results["history"].items():
        ax.plot([h["time"] for h in hist], [h["accuracy"] for h in hist], label=name, lw=1.6)
    ax.axhline(results["target_accuracy"], color="grey", ls="--", lw=1, label=f"target {results['target_accuracy']:.0%}")
    sc = results["scenario"]
    ax.set_xlabel("virtual seconds")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"mnist1d, {sc['clients']} unequal clients {sc['mix']}")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
