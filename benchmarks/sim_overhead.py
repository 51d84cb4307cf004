"""The virtual-time engine's own overhead: events per second with no-op training (BENCHMARK.md §4).

The scripted virtual transport, the orchestrator (with full update validation) and a real strategy, on a
10-parameter model whose "training" returns the model it was sent: what is left is the engine. An event is one
client result handled (validated, aggregated, the client re-dispatched).

    .venv/bin/python benchmarks/sim_overhead.py [--clients 1000,10000] [--updates 100000] [--strategy fedasync]

Each setting runs ``--repeat`` times and the table shows every run: events per second of wall time (the figure the
goal is stated in) and per second of the process's CPU time (steadier on a shared VM, where wall time also counts
the moments another tenant has the core).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from fedhive.engine import Orchestrator, StopCondition, VirtualTransport
from fedhive.strategies import build
from fedhive.strategies.base import ClientInfo, Task, Update

from machine import save


def run(clients: int, updates: int, strategy: str) -> dict:
    cls = [ClientInfo(i, 100, "cpu") for i in range(clients)]

    def duration(node: int, task_id: int, task: Task) -> float:
        return 1.0 + ((node * 7919 + task_id * 104729) % 1000) / 1000.0  # spread arrivals deterministically

    def train(node: int, task_id: int, task: Task, params) -> Update:
        return Update(node, task.version, list(params), 100, {})

    transport = VirtualTransport(cls, duration, train)
    params = {"buffer_size": 10} if strategy == "fedbuff" else {}
    orch = Orchestrator(build(strategy, params), transport, stop=StopCondition(max_updates=updates))
    t0, c0 = time.perf_counter(), time.process_time()
    res = orch.run([np.zeros(10, np.float32)])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    events = res.final["client_updates"]
    return {"clients": clients, "strategy": strategy, "events": events, "wall_s": wall, "cpu_s": cpu,
            "events_per_s": events / wall, "events_per_cpu_s": events / cpu, "virtual_s": res.final["time"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="1000,10000")
    ap.add_argument("--updates", type=int, default=100_000)
    ap.add_argument("--strategy", default="fedasync,fedbuff")
    ap.add_argument("--repeat", type=int, default=3, help="runs per setting (this VM's speed varies between runs)")
    ap.add_argument("--out", default="benchmarks/results/sim_overhead.json")
    args = ap.parse_args()
    console = Console()
    rows = []
    for strategy in args.strategy.split(","):
        for n in (int(c) for c in args.clients.split(",")):
            for rep in range(args.repeat):
                with console.status(f"{strategy}, {n} clients, run {rep + 1} of {args.repeat}"):
                    rows.append(run(n, args.updates, strategy) | {"run": rep + 1})
    t = Table(title=f"Engine overhead, no-op training, {args.updates:,} client updates per run")
    for col in ("strategy", "clients", "run", "events/s (wall)", "events per CPU s", "wall s"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["strategy"], f"{r['clients']:,}", str(r["run"]), f"{r['events_per_s']:,.0f}",
                  f"{r['events_per_cpu_s']:,.0f}", f"{r['wall_s']:.2f}")
    console.print(t)
    save(console, args.out, rows)


if __name__ == "__main__":
    main()
