"""The fault benchmark (issue 14): hostile replies at three depths, process faults, the invariants counted.

1. in-process: the real engine and every strategy, a scripted fleet whose hostile clients send every mutation of
   ``fedhive.faults.mutations`` (``hostile_inprocess``);
2. Flower messages: the hostile ClientApp's replies (real Flower ``Message``/record objects) through
   ``GridTransport`` and the engine, SuperLink left out (``hostile_flower_messages``);
3. real SuperNodes: ``flower-superlink`` + ``flower-supernode`` processes on loopback, hostile and honest nodes
   running ``fedhive.faults.hostile_client`` under fedhive's server app (``hostile_replies``);
4. process faults: a FedAsync run on real processes (SuperLink, ``fedhive agent``s, ServerApp) under the "submit or
   resume" supervisor of ``fedhive up``, with agents, the ServerApp and the SuperLink SIGKILLed during it
   (``agent_kills``, ``server_restarts``, ``superlink_restarts``, ``detection_seconds``), then the same run without
   faults on the same cluster (``accuracy`` against ``accuracy_fault_free``).

    .venv/bin/python benchmarks/faults.py [--inprocess 100000] [--flower 2000] [--supernode 1000]
        [--chaos-updates 240 --agents 5 --agent-kills 24 --server-kills 2 --superlink-kills 1]

Writes ``benchmarks/results/faults.json``. Detection of an agent SIGKILL is the time until the server fails a task
(Flower reports the node gone, or its task times out), matched in kill order; of a ServerApp or SuperLink SIGKILL,
the time until the supervisor resubmits the run.
"""

from __future__ import annotations

import argparse
import json
import re
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
    if total <= 0:
        return {"hostile": 0, "by_strategy": []}
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
    for i, (s, params) in enumerate(cases if per_strategy > 0 else []):
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
            task = progress.add_task("hostile replies on real SuperNodes", total=replies)
            run_id = cluster.submit({"strategy": "fedasync", "task": "synthetic", "min-clients": hostile_nodes + 1,
                                     "max-updates": 10_000_000, "max-time": 7200.0, "eval-interval": 10.0,
                                     "run-dir": str(run_dir)}, app_dir=H.write_app(tmp / "app"))
            stopped: list[int] = []

            def sent() -> list[list[str]]:
                return [ln.split() for f in logs.glob("*.log") for ln in f.read_text().splitlines()
                        if ln.startswith("train")]

            def on_status(s: dict) -> None:
                n = len(sent())
                progress.update(task, completed=n)
                if n >= replies and not stopped:  # enough: flwr stop (the run ends cleanly, state "stopped")
                    stopped.append(n)
                    cluster.stop_run(run_id)
            st = cluster.wait_status(run_dir, run_id=run_id, timeout=7200, on_status=on_status)
            lines = sent()
            h = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").exists() else {}
        finally:
            cluster.close()
        harmful = sum(1 for _, _, k in lines if k not in H.MAY_APPLY)
        c = h.get("counters", {})
        return {"hostile": len(lines), "harmful": harmful, "rejected": c.get("rejected", 0),
                "state": st.get("state"), "crashes": int(st.get("state") not in ("finished", "stopped")),
                "client_updates": h.get("final", {}).get("client_updates"), "seconds": time.monotonic() - t0,
                "counters": c, "hostile_nodes": hostile_nodes}




def _chaos(updates: int, agents: int, agent_kills: int, server_kills: int, superlink_kills: int,
           progress: Progress, seed: int = 5) -> dict:
    """One FedAsync run on real processes (SuperLink, ``fedhive agent`` x ``agents``, ServerApp) under
    ``LocalCluster.supervise`` ("submit or resume", what ``fedhive up`` runs), with the faults spread over its
    ``updates``: ``agent_kills`` SIGKILLs of a random agent's whole process tree (agent, SuperNode, worker,
    ClientApp; started again at once, as systemd would), ``server_kills`` ServerApp SIGKILLs and ``superlink_kills``
    SuperLink SIGKILLs (both resumed by the supervisor). Then the same run without faults on the same cluster."""
    import os
    import random
    import signal

    from fedhive.engine import checkpoint as ckpt
    from fedhive.localcluster import LocalCluster

    rng = random.Random(seed)
    plan = [(round(updates * (0.05 + 0.9 * k / max(agent_kills - 1, 1))), "agent") for k in range(agent_kills)]
    plan += [(round(updates * f), "server_app") for f in (0.3, 0.55, 0.7, 0.85)[:server_kills]]
    plan += [(round(updates * f), "superlink") for f in (0.8, 0.9, 0.95)[:superlink_kills]]
    plan.sort(key=lambda x: (x[0], x[1] != "agent"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cluster = LocalCluster(tmp / "c", emulate="none", data_dir=tmp / "data")
        base = {"strategy": "fedasync", "task": "synthetic", "local-steps": 20, "min-clients": 2,
                "num-partitions": agents,  # the server builds the devices' partition: its test set, their sizes
                "wait-clients": 180.0, "max-updates": updates, "max-time": 7200.0, "eval-interval": 10.0,
                "checkpoint-every": 1, "seed": 1}
        agent_procs: dict[int, object] = {}
        killed_nodes: list[tuple[float, str | None]] = []  # (wall time of the SIGKILL, the agent's SuperNode id)
        done: list[tuple[str, float]] = []  # (kind, monotonic time of the kill)
        restarts: list[float] = []
        versions: list[int] = []
        task = progress.add_task("faults on real processes", total=updates)
        t0 = time.monotonic()
        try:
            cluster.start_superlink()
            for i in range(agents):
                agent_procs[i] = cluster.add_agent("cpu", i, agents)

            def kill_agent(i: int) -> None:
                proc = agent_procs[i]
                ids = re.findall(r"SuperNode ID: (\d+)", proc.log_path.read_text(errors="replace"))
                killed_nodes.append((time.time(), ids[-1] if ids else None))
                pid_file = cluster.run_dir / "agents" / f"agent{proc.name.split('-')[0][5:]}" / "supernode.pid"
                cluster.stop(proc, signal.SIGKILL)
                try:
                    cluster.stop_pgid(int(pid_file.read_text()), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
                agent_procs[i] = cluster.add_agent("cpu", i, agents)

            def on_status(st: dict) -> None:
                if st.get("state") != "running":
                    return
                now = time.monotonic()
                versions.append(int(st.get("version", 0)))
                pid = int(st.get("pid", 0))
                n = int(st.get("client_updates", 0))
                progress.update(task, completed=n)
                while plan and n >= plan[0][0] and ckpt.checkpoints(Path(base_dir) / "checkpoints"):
                    _, kind = plan.pop(0)
                    done.append((kind, now))
                    if kind == "agent":
                        kill_agent(rng.randrange(agents))
                        continue
                    if kind == "server_app":
                        os.kill(pid, signal.SIGKILL)
                    else:
                        cluster.stop(cluster.superlink, signal.SIGKILL)
                    return  # the run is lost: the next fault waits for the resumed run

            base_dir = tmp / "chaos"
            st, n_restarts = cluster.supervise({**base, "run-dir": str(base_dir)}, timeout=7200,
                                               max_restarts=server_kills + superlink_kills + 3, on_status=on_status,
                                               on_restart=lambda k, s: restarts.append(time.monotonic()))
            chaos_seconds = time.monotonic() - t0
            detect_agent = _node_detection(base_dir / "server.log", killed_nodes)
            h = json.loads((base_dir / "history.json").read_text()) if (base_dir / "history.json").exists() else {}
            progress.update(task, description="the same run without faults", completed=0)
            clean_dir = tmp / "clean"
            t1 = time.monotonic()
            st_clean, _ = cluster.supervise({**base, "run-dir": str(clean_dir)}, timeout=7200, max_restarts=0,
                                            on_status=lambda s: progress.update(task, completed=s.get(
                                                "client_updates", 0)))
            clean_seconds = time.monotonic() - t1
            hc = json.loads((clean_dir / "history.json").read_text()) if (clean_dir / "history.json").exists() \
                else {}
        finally:
            cluster.close()
    # Detection: a killed agent's task is failed by the server (Flower reports the node gone); matched in order.
    lost = [(k, t) for k, t in done if k != "agent"]
    detect_lost: dict[str, list[float]] = {}
    for (kind, t), r in zip(lost, restarts):
        detect_lost.setdefault(kind, []).append(round(r - t, 1))
    c = h.get("counters", {})
    final, final_clean = h.get("final", {}), hc.get("final", {})
    return {
        "agent_kills": sum(1 for k, _ in done if k == "agent"),
        "server_restarts": sum(1 for k, _ in done if k == "server_app"),
        "superlink_restarts": sum(1 for k, _ in done if k == "superlink"),
        "restarts_by_supervisor": n_restarts,
        "state": st.get("state"), "state_fault_free": st_clean.get("state"),
        "crashes": int(st.get("state") != "finished") + int(st_clean.get("state") != "finished"),
        # FedAsync makes one version per applied update: across every resume, versions == applied updates.
        "applied_twice": max(0, int(c.get("update_applied", 0)) - int(final.get("version", 0))),
        "replies_of_ended_tasks_refused": int(c.get("rejected_unknown_task", 0)) + int(c.get("rejected_duplicate", 0)),
        "versions_went_back": sum(1 for a, b in zip(versions, versions[1:]) if b < a),
        "accuracy": final.get("accuracy"), "accuracy_fault_free": final_clean.get("accuracy"),
        "client_updates": final.get("client_updates"), "client_updates_fault_free": final_clean.get("client_updates"),
        "seconds": round(chaos_seconds, 1), "seconds_fault_free": round(clean_seconds, 1),
        "detection_seconds": {
            "agent_sigkill": _spread(detect_agent),
            **{f"{k}_sigkill": _spread(v) for k, v in detect_lost.items()},
        },
        "counters": c,
    }


def _node_detection(server_log: Path, killed: list[tuple[float, str | None]]) -> list[float]:
    """Seconds from each agent SIGKILL to the server's first sign of it: a task of that node failed, or the node
    left (``server.log`` lines naming the killed agent's SuperNode id); kills never noticed are left out."""
    from datetime import datetime

    events = []
    for line in server_log.read_text(errors="replace").splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*node (\d+)( left|: Flower error| failed)", line)
        if m:
            events.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(), m.group(2)))
    out = []
    for t, node in killed:
        seen = [e for e, n in events if n == node and e >= t]
        if node is not None and seen:
            out.append(round(seen[0] - t, 1))
    return out


def _spread(xs: list[float]) -> dict | None:
    if not xs:
        return None
    xs = sorted(xs)
    return {"n": len(xs), "median": xs[len(xs) // 2], "max": xs[-1], "min": xs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inprocess", type=int, default=100_000, help="hostile replies in-process, all strategies")
    ap.add_argument("--flower", type=int, default=2_000, help="hostile Flower messages per strategy (4 strategies)")
    ap.add_argument("--supernode", type=int, default=1_000, help="hostile replies on real SuperNodes (0: skip)")
    ap.add_argument("--hostile-nodes", type=int, default=8, help="hostile SuperNodes (one honest node beside them)")
    ap.add_argument("--chaos-updates", type=int, default=240,
                    help="length (client updates) of the run with process faults, and of its fault-free twin (0: skip)")
    ap.add_argument("--agents", type=int, default=5)
    ap.add_argument("--agent-kills", type=int, default=24)
    ap.add_argument("--server-kills", type=int, default=2)
    ap.add_argument("--superlink-kills", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/faults.json")
    ap.add_argument("--merge", action="store_true", help="phases skipped here (0) keep their figures from --out, "
                    "with the command that measured them")
    args = ap.parse_args()
    import logging

    logging.getLogger("fedhive").setLevel(logging.ERROR)  # thousands of rejections: counted below, not logged
    console = Console()
    with Progress(console=console) as progress:
        ip = run_inprocess(args.inprocess, progress)
        fl = run_flower(args.flower, progress)
        sn = _supernode(args.supernode, args.hostile_nodes, progress) if args.supernode else None
        ch = _chaos(args.chaos_updates, args.agents, args.agent_kills, args.server_kills, args.superlink_kills,
                    progress) if args.chaos_updates else None
    previous: dict = {}
    if args.merge and Path(args.out).exists():  # read at the end: another invocation may have written it meanwhile
        old = json.loads(Path(args.out).read_text())
        previous = {**old["rows"][0], "_command": old.get("command")}
    measured_by: dict[str, str | None] = {}
    if previous:  # phases this invocation skipped keep the figures (and the command) of the run that measured them
        if not args.inprocess:
            ip = {"hostile": previous["hostile_inprocess"], "by_strategy": previous["inprocess"]}
            measured_by["inprocess"] = previous.get("measured_by", {}).get("inprocess", previous["_command"])
        if not args.flower:
            fl = {"hostile": previous["hostile_flower_messages"], "by_strategy": previous["flower_messages"]}
            measured_by["flower_messages"] = previous.get("measured_by", {}).get("flower_messages",
                                                                                previous["_command"])
        if not args.supernode and previous.get("supernode"):
            sn = previous["supernode"]
            measured_by["supernode"] = previous.get("measured_by", {}).get("supernode", previous["_command"])
        if not args.chaos_updates and previous.get("chaos"):
            ch = previous["chaos"]
            measured_by["chaos"] = previous.get("measured_by", {}).get("chaos", previous["_command"])
    rows_ip, rows_fl = ip["by_strategy"], fl["by_strategy"]
    crashes = sum(r["crashes"] for r in rows_ip) + sum(r["crashes"] for r in rows_fl) + (sn["crashes"] if sn else 0) \
        + (ch["crashes"] if ch else 0)
    measured = {k: ch[k] for k in NOT_MEASURED} if ch else {k: None for k in NOT_MEASURED}
    result = {
        "hostile_inprocess": ip["hostile"],
        "hostile_flower_messages": fl["hostile"],
        "hostile_replies": sn["hostile"] if sn else 0,
        "crashes": crashes,
        "applied_twice": sum(r["applied_twice"] for r in rows_ip) + (ch["applied_twice"] if ch else 0),
        "model_changes_from_rejected": sum(r["model_changes_from_rejected"] for r in rows_ip + rows_fl),
        "malformed_taken": sum(r["accepted_malformed"] for r in rows_ip) + sum(r["malformed_taken"] for r in rows_fl),
        "non_finite_models": sum(r["non_finite_models"] for r in rows_ip + rows_fl),
        **measured,
        "not_measured": [] if ch else NOT_MEASURED,
        "measured_by": measured_by,  # phases whose figures come from an earlier invocation (else: this command)
        "inprocess": rows_ip, "flower_messages": rows_fl, "supernode": sn, "chaos": ch,
    }
    table = Table("figure", "value")
    for k in ("hostile_inprocess", "hostile_flower_messages", "hostile_replies", "crashes", "applied_twice",
              "model_changes_from_rejected", "malformed_taken", "non_finite_models"):
        table.add_row(k, f"{result[k]:,}")
    if sn:
        table.add_row("real SuperNodes: rejected / harmful sent", f"{sn['rejected']:,} / {sn['harmful']:,}")
    if ch:
        table.add_row("agent SIGKILLs / ServerApp SIGKILLs / SuperLink SIGKILLs (all resumed)",
                      f"{ch['agent_kills']} / {ch['server_restarts']} / {ch['superlink_restarts']}")
        table.add_row("accuracy with faults / fault-free (same number of updates)",
                      f"{ch['accuracy']} / {ch['accuracy_fault_free']}")
        table.add_row("versions went back", str(ch["versions_went_back"]))
        for kind, d in ch["detection_seconds"].items():
            if d:
                table.add_row(f"detection, {kind} (s)", f"median {d['median']}, max {d['max']} (n={d['n']})")
    else:
        table.add_row("not measured", ", ".join(NOT_MEASURED))
    console.print(table)
    save(console, args.out, [result])


if __name__ == "__main__":
    main()
