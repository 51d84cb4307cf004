"""ServerApp of tests/client/test_runner.py: to each node, one train message per comma-separated ``modes`` entry,
in turn; writes each reply (error or pid and version) to ``out`` as JSON."""

import json
import time

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context) -> None:
    cfg = context.run_config
    end = time.monotonic() + 60
    while not list(grid.get_node_ids()) and time.monotonic() < end:
        time.sleep(0.2)
    out = []
    for node in sorted(grid.get_node_ids()):
        for mode in str(cfg["modes"]).split(","):
            msg = Message(RecordDict({"config": ConfigRecord({"mode": mode})}), dst_node_id=node,
                          message_type="train", ttl=120)
            (reply,) = grid.send_and_receive([msg], timeout=120)
            if reply.has_error():
                out.append({"mode": mode, "error": reply.error.code, "reason": reply.error.reason})
            else:
                m = reply.content["metrics"]
                out.append({"mode": mode, "pid": int(m["pid"]), "version": int(m["version"])})
    with open(cfg["out"], "w") as f:
        json.dump(out, f)
