"""ClientApp of ``benchmarks/roundtrip.py``. The node config's ``rt-kind`` (set by the benchmark) says what a node
does: 1 and 3 (fedhive agents, with the warm runner and with Flower's launcher) send the task through fedhive's own
ClientApp ``train`` (ArrayRecord -> worker socket -> training -> reply); 0 and 4 (bare SuperNodes) and 2 (a fedhive agent
with the warm runner) are Flower's no-op: the arrays echoed at once. Either way the reply carries wall-clock
timestamps of this process: when the OS started it, when this module was imported (both once per process: a warm
runner's are older than the task), when the handler began and ended (``rt-*`` metrics; one machine, one clock:
loopback only)."""

import os
import time

T_IMPORT = time.time()  # this module is imported by flwr-clientapp once Flower itself is loaded

from flwr.app import Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

app = ClientApp()


def _process_start() -> float:
    """Wall time the OS created this process (Linux /proc), else nan."""
    try:
        ticks = int(open(f"/proc/{os.getpid()}/stat").read().rsplit(")", 1)[1].split()[19])
        btime = next(int(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return float("nan")


T_PROCESS = _process_start()


@app.train()
def train(msg: Message, context) -> Message:
    t_in = time.time()
    kind = int(context.node_config.get("rt-kind", 1 if context.node_config.get("worker") else 0))
    if kind in (1, 3):
        from fedhive.client.app import train as fedhive_train

        reply = fedhive_train(msg, context)
        metrics = dict(reply.content["metrics"])
        content = reply.content
    else:
        metrics = {"num-examples": 1}
        content = RecordDict({"arrays": msg.content["arrays"]})
    t_out = time.time()
    metrics.update({"rt-kind": kind, "rt-process": T_PROCESS, "rt-import": T_IMPORT, "rt-in": t_in,
                    "rt-out": t_out, "rt-pid": os.getpid()})
    content["metrics"] = MetricRecord(metrics)
    return Message(content, reply_to=msg)
