"""ClientApp of ``benchmarks/roundtrip.py``: on a node whose config names a warm worker (a ``fedhive agent``), the
task goes through fedhive's own ClientApp ``train`` (ArrayRecord -> worker socket -> training -> reply); on a bare
SuperNode it is Flower's no-op (the arrays echoed at once). Either way the reply carries wall-clock timestamps of
this process: when the OS started it, when this module was imported, when the handler began and ended
(``rt-*`` metrics; one machine, one clock: loopback only)."""

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
    fedhive = bool(context.node_config.get("worker"))
    if fedhive:
        from fedhive.client.app import train as fedhive_train

        reply = fedhive_train(msg, context)
        metrics = dict(reply.content["metrics"])
        content = reply.content
    else:
        metrics = {"num-examples": 1}
        content = RecordDict({"arrays": msg.content["arrays"]})
    t_out = time.time()
    metrics.update({"rt-fedhive": int(fedhive), "rt-process": T_PROCESS, "rt-import": T_IMPORT, "rt-in": t_in,
                    "rt-out": t_out, "rt-pid": os.getpid()})
    content["metrics"] = MetricRecord(metrics)
    return Message(content, reply_to=msg)
