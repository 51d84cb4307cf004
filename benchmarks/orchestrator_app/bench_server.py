"""ServerApp of ``benchmarks/orchestrator.py``: raw Flower round trips and fedhive's orchestrator, in one run.

Phases alternate (raw, fedhive, raw, fedhive), each ``phase-seconds`` long, over the same SuperNodes and the same
payload (a float32 model of ``params`` values). Raw: keep one train message in flight per node with
``push_messages``; poll ``pull_messages`` every ``poll-interval``; push the next as soon as a reply arrives; the
reply's arrays, scaled, become the next payload (a new model after every update, as with an asynchronous strategy,
so that Flower's content-addressed deduplication does not spare the raw path the uploads fedhive pays). fedhive: ``GridTransport`` + ``Orchestrator`` + FedAsync.
Results go to ``out`` as JSON.
"""

import json
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedhive.server.grid_transport import GridTransport
from fedhive.engine import Observer, Orchestrator, StopCondition
from fedhive.strategies import build

app = ServerApp()


def raw_phase(grid: Grid, nodes, params, seconds: float, poll: float) -> dict:
    model = params
    sent = {}
    durations = []
    t_end = time.monotonic() + seconds

    def push(node):
        rec = ArrayRecord({"w": Array(model)})
        msg = Message(RecordDict({"arrays": rec, "config": ConfigRecord({"local_steps": 1})}), dst_node_id=node,
                      message_type="train", ttl=600)
        mid = list(grid.push_messages([msg]))[0]
        sent[mid] = (node, time.monotonic())

    t0 = time.monotonic()
    c0 = time.thread_time()
    for n in nodes:
        push(n)
    updates = 0
    pulls = 0
    server_s = time.monotonic() - t0  # the first pushes count as server time, as they do for fedhive
    server_cpu = time.thread_time() - c0
    while time.monotonic() < t_end:
        replies = list(grid.pull_messages(list(sent)))
        pulls += 1
        for r in replies:
            node, t_sent = sent.pop(r.metadata.reply_to_message_id)
            if r.has_error():
                continue
            t = time.perf_counter()
            c = time.thread_time()
            # A new model after each update, as a strategy makes: Flower deduplicates arrays by content, so
            # pushing back the array the node just sent would skip the upload that every real push pays.
            model = r.content["arrays"]["w"].numpy() * np.float32(1.0001)
            updates += 1
            durations.append(time.monotonic() - t_sent)
            push(node)
            server_s += time.perf_counter() - t
            server_cpu += time.thread_time() - c
        if not replies:
            time.sleep(poll)
    wall = time.monotonic() - t0
    cpu_all = time.thread_time() - c0  # everything this thread did in the phase: pushes, pulls and decoding
    # Drain what is in flight so the next phase starts with idle nodes.
    end = time.monotonic() + 30
    while sent and time.monotonic() < end:
        for r in grid.pull_messages(list(sent)):
            sent.pop(r.metadata.reply_to_message_id, None)
        time.sleep(poll)
    return {"path": "raw flower", "updates": updates, "seconds": wall, "updates_per_s": updates / wall,
            "mean_round_trip_s": float(np.mean(durations)) if durations else None,
            "server_ms_per_update": 1e3 * server_s / max(updates, 1),
            "pulls_per_update": pulls / max(updates, 1),
            "server_cpu_ms_per_update_with_pulls": 1e3 * cpu_all / max(updates, 1),
            "server_cpu_ms_per_update": 1e3 * server_cpu / max(updates, 1)}


class Timing(Observer):
    def __init__(self):
        self.durations = []

    def on_update(self, update, outcome, client, staleness, duration, now):
        self.durations.append(duration)


def fedhive_phase(grid: Grid, params, seconds: float, poll: float, n_nodes: int, backoff: bool = True) -> dict:
    extra = {} if backoff else {"poll_backoff_max": poll}  # without: a pull every `poll` seconds while waiting
    transport = GridTransport(grid, ["w"], poll_interval=poll, profile_ttl=120, **extra)
    # Every node answers the profile query (an error reply from this no-op client) before the clock starts.
    transport.wait_for_clients(n_nodes, 180)
    waited = [0.0, 0.0]
    inner = transport.wait

    def timed_wait(deadline):
        t, c = time.perf_counter(), time.thread_time()
        try:
            return inner(deadline)
        finally:
            waited[0] += time.perf_counter() - t
            waited[1] += time.thread_time() - c

    transport.wait = timed_wait
    obs = Timing()
    orch = Orchestrator(build("fedasync", {"local_steps": 1}), transport, stop=StopCondition(max_time=seconds),
                        observer=obs)
    t0, c0 = time.perf_counter(), time.thread_time()
    push0, pulls0 = transport.push_seconds, transport.pulls
    result = orch.run([params])
    wall = time.perf_counter() - t0
    cpu_all = time.thread_time() - c0
    cpu = cpu_all - waited[1]
    pulls = transport.pulls - pulls0
    updates = result.final["client_updates"]
    # Drain the tasks still in flight.
    end = time.monotonic() + 30
    while transport.in_flight and time.monotonic() < end:
        transport._pull()
        time.sleep(poll)
    server = wall - waited[0]
    push = transport.push_seconds - push0
    return {"path": "fedhive" if backoff else "fedhive, no back-off", "updates": updates, "seconds": wall,
            "updates_per_s": updates / wall, "pulls_per_update": pulls / max(updates, 1),
            "server_cpu_ms_per_update_with_pulls": 1e3 * cpu_all / max(updates, 1),
            "mean_round_trip_s": float(np.mean(obs.durations)) if obs.durations else None,
            "server_ms_per_update": 1e3 * server / max(updates, 1),
            "server_ms_per_update_without_push": 1e3 * (server - push) / max(updates, 1),
            "server_cpu_ms_per_update": 1e3 * cpu / max(updates, 1),
            "rejected": result.counters.get("rejected", 0)}


@app.main()
def main(grid: Grid, context) -> None:
    import torch  # noqa: F401  fedhive's kernel imports torch lazily; a real server app has it loaded with its task

    cfg = context.run_config
    n = int(cfg["nodes"])
    end = time.monotonic() + 120
    while len(list(grid.get_node_ids())) < n and time.monotonic() < end:
        time.sleep(0.5)
    nodes = sorted(grid.get_node_ids())
    rng = np.random.default_rng(0)
    rows = []
    for rep in range(int(cfg["repeats"])):
        params = rng.standard_normal(int(cfg["params"])).astype(np.float32)
        rows.append({"repeat": rep, **raw_phase(grid, nodes, params, float(cfg["phase-seconds"]),
                                                float(cfg["poll-interval"]))})
        params = rng.standard_normal(int(cfg["params"])).astype(np.float32)
        rows.append({"repeat": rep, **fedhive_phase(grid, params, float(cfg["phase-seconds"]),
                                                    float(cfg["poll-interval"]), len(nodes))})
        if cfg.get("compare-backoff", False):
            params = rng.standard_normal(int(cfg["params"])).astype(np.float32)
            rows.append({"repeat": rep, **fedhive_phase(grid, params, float(cfg["phase-seconds"]),
                                                        float(cfg["poll-interval"]), len(nodes), backoff=False)})
    with open(cfg["out"], "w") as f:
        json.dump({"nodes": len(nodes), "rows": rows}, f, indent=1)
