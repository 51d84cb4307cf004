"""Do FedCompass groups really arrive together on real devices? Spread of arrival times within each group, with the
affine speed model (fedhive's default: per-task overhead + steps x seconds per step) and the paper's per-step rule.

Each variant is one run on a local Flower cluster (``fedhive up``'s machinery: SuperLink, six agents 1 gpu / 2 cpu /
3 rpi4 with a real cgroup CPU quota per class, mnist1d), one after the other on the same machine.

    .venv/bin/python benchmarks/compass_groups.py [--seconds 150]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import save  # noqa: E402

from fedhive.localcluster import LocalCluster, exit_on_sigterm  # noqa: E402

MIX = ("gpu", "cpu", "cpu", "rpi4", "rpi4", "rpi4")


def one(model: str, seconds: float, root: Path, console: Console) -> dict:
    run_dir = root / f"run-{model}"
    with LocalCluster(root / f"c-{model}") as cluster:
        console.print(f"{model}: {len(MIX)} agents, device speed by {cluster.emulation}, {seconds:.0f} s")
        cluster.start_superlink()
        for i, cls in enumerate(MIX):
            cluster.add_agent(cls, i, len(MIX))
        run_id = cluster.submit({"strategy": "fedcompass", "strategy-params": f"speed_model={model}",
                                 "task": "mnist1d", "min-clients": len(MIX), "max-time": seconds,
                                 "eval-interval": 10.0, "run-dir": str(run_dir)})
        st = cluster.wait_status(run_dir, run_id=run_id, timeout=seconds + 600)
        if st.get("state") != "finished":
            raise SystemExit(f"{model} run ended as {st.get('state')}; see {cluster.run_dir / 'logs'}")
        emulation = cluster.emulation
    h = json.loads((run_dir / "history.json").read_text())
    by_group: dict = {}
    for a in h["arrivals"]:
        if a.get("group") is not None:
            by_group.setdefault(a["group"], []).append(a["time"])
    spreads = [max(t) - min(t) for t in by_group.values() if len(t) > 1]
    durations = [a["duration"] for a in h["arrivals"]]
    return {"speed_model": model, "emulation": emulation, "groups_with_2_or_more": len(spreads),
            "median_spread_s": statistics.median(spreads) if spreads else None,
            "mean_spread_s": statistics.mean(spreads) if spreads else None,
            "max_spread_s": max(spreads) if spreads else None,
            "mean_task_s": statistics.mean(durations) if durations else None,
            "updates": h["final"]["client_updates"], "versions": h["final"]["version"],
            "final_accuracy": h["final"]["accuracy"]}


def main() -> None:
    exit_on_sigterm()  # a stopped benchmark still stops its cluster
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=150.0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "compass_groups.json"))
    args = p.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="fedhive-compass-") as tmp:
        rows = [one(m, args.seconds, Path(tmp), console) for m in ("affine", "per_step")]
    t = Table(title="FedCompass on a local Flower cluster: arrival spread within a group")
    for c in ("speed model", "groups", "median spread s", "max spread s", "mean task s", "updates", "accuracy"):
        t.add_column(c, justify="right")
    for r in rows:
        f = (lambda x: "-" if x is None else f"{x:.2f}")
        t.add_row(r["speed_model"], str(r["groups_with_2_or_more"]), f(r["median_spread_s"]), f(r["max_spread_s"]),
                  f(r["mean_task_s"]), str(r["updates"]), f(r["final_accuracy"]))
    console.print(t)
    save(console, args.out, rows)


if __name__ == "__main__":
    main()
