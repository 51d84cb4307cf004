"""ServerApp of ``benchmarks/roundtrip.py``: one train message in flight per node, ``tasks`` per node; for each
round trip it records the server's push and pull wall times and the client's timestamps from the reply, then writes
everything to ``out`` as JSON. Nodes with a fedhive agent get the task's real model and ``local-steps``; bare
SuperNodes (Flower's no-op) get the same arrays."""

import json
import time

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedhive import messages as M
from fedhive.tasks import load_task

app = ServerApp()


@app.main()
def main(grid: Grid, context) -> None:
    cfg = context.run_config
    n, tasks, poll = int(cfg["nodes"]), int(cfg["tasks"]), float(cfg["poll-interval"])
    task = load_task(str(cfg["task"]), num_clients=int(cfg["num-partitions"]))
    names, params = task.param_names(), task.initial_params(0)
    end = time.monotonic() + 180
    while len(list(grid.get_node_ids())) < n and time.monotonic() < end:
        time.sleep(0.5)
    nodes = sorted(grid.get_node_ids())
    sent, done, rows, count = {}, {}, [], {}

    def push(node: int) -> None:
        k = count.get(node, 0)
        count[node] = k + 1
        conf = M.to_config_record({"local_steps": int(cfg["local-steps"]), M.TASK_ID: f"{node}-{k}"})
        msg = Message(RecordDict({M.ARRAYS: M.to_array_record(params, names), M.CONFIG: conf}), dst_node_id=node,
                      message_type="train", ttl=600)
        t = time.time()
        mid = list(grid.push_messages([msg]))[0]
        sent[mid] = (node, t, time.time())

    for node in nodes:
        push(node)
    pulls = 0
    deadline = time.monotonic() + 60 * tasks + 300
    while sent and time.monotonic() < deadline:
        pulls += 1
        replies = list(grid.pull_messages(list(sent)))
        t_pull = time.time()
        for r in replies:
            node, t_push, t_pushed = sent.pop(r.metadata.reply_to_message_id)
            row = {"node": node, "push": t_push, "pushed": t_pushed, "pulled": t_pull, "error": r.has_error()}
            if not r.has_error():
                m = dict(r.content["metrics"])
                row.update({k: v for k, v in m.items() if k.startswith("rt-")})
                row["train_seconds"] = m.get("seconds")
                row["reply_created"] = r.metadata.created_at
            rows.append(row)
            if count[node] < tasks:
                push(node)
        if not replies:
            time.sleep(poll)
    with open(cfg["out"], "w") as f:
        json.dump({"nodes": len(nodes), "pulls": pulls, "rows": rows}, f, indent=1)
