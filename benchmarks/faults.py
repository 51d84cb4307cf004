"""The fault benchmark (issue 14): hostile replies at three depths, the invariants counted, ``faults.json``.

1. in-process: the real engine and every strategy, a scripted fleet whose hostile clients send every mutation of
   ``fedhive.faults.mutations`` (``hostile_inprocess``);
2. Flower messages: the hostile ClientApp's replies (real Flower ``Message``/record objects) through
   ``GridTransport`` and the engine, SuperLink left out (``hostile_flower_messages``);
3. real SuperNodes: ``flower-superlink`` + ``flower-supernode`` processes on loopback, hostile and honest nodes
   running ``fedhive.faults.hostile_client`` under fedhive's server app (``hostile_replies``).

    .venv/bin/python benchmarks/faults.py [--inprocess 100000] [--flower 2000] [--supernode 100]

Not measured yet (the keys are written as null and listed under ``not_measured``): agent SIGKILLs, ServerApp and
SuperLink restarts with automatic resume, accuracy against a fault-free run, detection latency per fault kind.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from machine import save

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fedhive.faults import hostile_client as H  # noqa: E402
from fedhive.faults import inprocess  # noqa: E402
from fedhive.strategies import STRATEGIES  # noqa: E402

NOT_MEASURED = ["agent_kills", "server_restarts", "superlink_restarts", "accuracy", "accuracy_fault_free",
                "detection_seconds"]


def run_inprocess(total: int, progress: Progress) -> dict:
    per = -(-total // len(STRATEGIES))
    task = progress.add_task("in-process hostile replies", total=per * len(STRATEGIES))
    out, done = [], 0
    for s in STRATEGIES:
        t = inprocess.run(s, per, seed=7, progress=lambda n, base=done: progress.update(task, completed=base + n))
        done += t.hostile
        out.append(t.summary())
    return {"hostile": sum(r["hostile"] for r in out), "by_strategy": out}


def run_flower(per_strategy: int, progress: Progress) -> dict:
    from flwr.supercore.task_identity import TaskIdentity

    from fedhive.engine import Orchestrator, StopCondition
    from fedhive.faults.grid import HostileGrid
    from fedhive.server.grid_transport import GridTransport
    from fedhive.strategies import build

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # messages made outside Flower
    cases = [("fedasync", {}), ("fedbuff", {"buffer_size": 2}), ("fedavg", {}), ("fedcompass", {"q_min": 2, "q_max": 4})]
    task = progress.add_task("hostile Flower messages", total=per_strategy * len(cases))
    out = []
    for i, (s, params) in enumerate(cases):
        grid = HostileGrid()
        t = GridTransport(grid, ["linear.weight", "linear.bias"], poll_interval=0.001, membership_interval=0.01,
                          idle_timeout=5.0, profile_ttl=5.0)
        t.wait_for_clients(3, timeout=10.0)
        tally = inprocess.Tally(s)
        watch = inprocess.Watch(tally)
        strat = build(s, params)
        orch = Orchestrator(strat, t, stop=StopCondition(max_updates=2 * per_strategy, max_time=600.0),
                            observer=watch)
        crashed = 0
        try:
            res = orch.run([np.zeros((10, 60), np.float32), np.zeros(10, np.float32)])
        except Exception:  # noqa: BLE001 - counted
            crashed, res = 1, None
        sent = sum(grid.sent[k] for k in H.REPLIES)
        may = sum(grid.sent[k] for k in H.MAY_APPLY)
        taken = watch.taken_from[3]
        out.append({"strategy": s, "hostile": sent, "rejected": watch.rejected_from[3], "taken": taken,
                    "malformed_taken": max(0, taken - may), "crashes": crashed,
                    "model_changes_from_rejected": tally.model_changes_from_rejected,
                    "non_finite_models": tally.non_finite_models,
                    "honest_updates": watch.taken_from[1] + watch.taken_from[2],
                    "version": strat.version, "counters": dict(res.counters) if res else {}})
        progress.update(task, completed=per_strategy * (i + 1))
    return {"hostile": sum(r["hostile"] for r in out), "by_strategy": out}


def _supernode(replies: int, hostile_nodes: int, progress: Progress) -> dict:
    from fedhive.localcluster import LocalCluster

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "faults"))
    from test_hostile_supernode import _app

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        logs = tmp / "hostile"
        logs.mkdir()
        cluster = LocalCluster(tmp / "c", emulate="none")
        t0 = time.monotonic()
        try:
            cluster.start_superlink()
            cluster.add_supernode({"hostile": 0})
            for _ in range(hostile_nodes):
                cluster.add_supernode({"hostile": 1, "log-dir": str(logs)})
            run_dir = tmp / "run"
            honest = max(4, replies // hostile_nodes)
            task = progress.add_task("hostile replies on real SuperNodes", total=replies)
            run_id = cluster.submit({"strategy": "fedasync", "task": "synthetic", "min-clients": hostile_nodes + 1,
                                     "max-updates": honest, "max-time": 3600.0, "eval-interval": 10.0,
                                     "run-dir": str(run_dir)}, app_dir=_app(tmp / "app"))

            def sent() -> list[list[str]]:
                return [ln.split() for f in logs.glob("*.log") for ln in f.read_text().splitlines()
                        if ln.startswith("train")]
            st = cluster.wait_status(run_dir, run_id=run_id, timeout=3600,
                                     on_status=lambda s: progress.update(task, completed=len(sent())))
            lines = sent()
            h = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").exists() else {}
        finally:
            cluster.close()
        harmful = sum(1 for _, _, k in lines if k not in H.MAY_APPLY)
        c = h.get("counters", {})
        return {"hostile": len(lines), "harmful": harmful, "rejected": c.get("rejected", 0),
                "state": st.get("state"), "crashes": int(st.get("state") != "finished"),
                "client_updates": h.get("final", {}).get("client_updates"), "seconds": time.monotonic() - t0,
                "counters": c, "hostile_nodes": hostile_nodes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inprocess", type=int, default=100_000, help="hostile replies in-process, all strategies")
    ap.add_argument("--flower", type=int, default=2_000, help="hostile Flower messages per strategy (4 strategies)")
    ap.add_argument("--supernode", type=int, default=100, help="hostile replies on real SuperNodes (0: skip)")
    ap.add_argument("--hostile-nodes", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/faults.json")
    args = ap.parse_args()
    import logging

    logging.getLogger("fedhive").setLevel(logging.ERROR)  # thousands of rejections: counted below, not logged
    console = Console()
    with Progress(console=console) as progress:
        ip = run_inprocess(args.inprocess, progress)
        fl = run_flower(args.flower, progress)
        sn = _supernode(args.supernode, args.hostile_nodes, progress) if args.supernode else None
    rows_ip, rows_fl = ip["by_strategy"], fl["by_strategy"]
    crashes = sum(r["crashes"] for r in rows_ip) + sum(r["crashes"] for r in rows_fl) + (sn["crashes"] if sn else 0)
    result = {
        "hostile_inprocess": ip["hostile"],
        "hostile_flower_messages": fl["hostile"],
        "hostile_replies": sn["hostile"] if sn else 0,
        "crashes": crashes,
        "applied_twice": sum(r["applied_twice"] for r in rows_ip),
        "model_changes_from_rejected": sum(r["model_changes_from_rejected"] for r in rows_ip + rows_fl),
        "malformed_taken": sum(r["accepted_malformed"] for r in rows_ip) + sum(r["malformed_taken"] for r in rows_fl),
        "non_finite_models": sum(r["non_finite_models"] for r in rows_ip + rows_fl),
        **{k: None for k in NOT_MEASURED},
        "not_measured": NOT_MEASURED,
        "inprocess": rows_ip, "flower_messages": rows_fl, "supernode": sn,
    }
    table = Table("figure", "value")
    for k in ("hostile_inprocess", "hostile_flower_messages", "hostile_replies", "crashes", "applied_twice",
              "model_changes_from_rejected", "malformed_taken", "non_finite_models"):
        table.add_row(k, f"{result[k]:,}")
    if sn:
        table.add_row("real SuperNodes: rejected / harmful sent", f"{sn['rejected']:,} / {sn['harmful']:,}")
    table.add_row("not measured yet", ", ".join(NOT_MEASURED))
    console.print(table)
    save(console, args.out, [result])


if __name__ == "__main__":
    main()
