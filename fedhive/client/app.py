"""fedhive's Flower ``ClientApp``: local training and evaluation on the device, and its profile.

- ``train``: the message's ``arrays`` and ``config`` (``local_steps``, ``lr``, ... and FedASMU's ``fetch_step``);
  replies with the trained ``arrays`` and ``metrics`` (``num-examples``, ``loss``, ``steps``, ``seconds``, ...).
- ``evaluate``: replies with ``loss`` and ``accuracy`` of the received model on the task's test set.
- ``query.profile``: replies with the device class and number of examples (the server asks each new node once).

The node config (set by ``fedhive agent``) gives ``partition-id``, ``num-partitions``, ``device-class``,
``data-dir`` and ``worker``: the Unix socket of the agent's warm worker, which holds torch, the data and the model
between messages. Without a worker (a SuperNode started by hand) everything runs in this process, which Flower
starts anew for each message. This module imports neither torch nor the task unless it trains in-process.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import TYPE_CHECKING

from fedhive import messages as M
from fedhive.runconfig import task_settings

if TYPE_CHECKING:  # for the annotations only; the runtime imports of Flower stay inside the functions
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

log = logging.getLogger("fedhive.clientapp")

# Node config entries the profile reply carries. ``partition-id`` and ``num-partitions`` let a server that builds the
# same partition (fedhive's ServerApp with ``num-partitions`` >= 1) weight this node by the size it knows, not a claim.
_PROFILE_KEYS = ("device-class", "arch", "cores", "memory-gb", "accelerator", "board", "cpu-quota", "slowdown",
                 "partition-id", "num-partitions")
_local_trainer = None


def _call_timeout(msg: Message | None) -> float | None:
    """Seconds the call to the worker may take: the message's TTL (None when it has no usable one).

    The TTL is taken relative to now rather than to ``created_at``, which is the server's clock: a device clock
    that runs ahead (a board without a real-time clock) must not cut the work short.
    """
    ttl = getattr(getattr(msg, "metadata", None), "ttl", None)
    try:
        ttl = float(ttl)
    except (TypeError, ValueError):
        return None
    return ttl if math.isfinite(ttl) and ttl > 0 else None


def _trainer_call(node: dict, header: dict, arrays: list, msg: Message | None = None) -> tuple[dict, list]:
    """Run a request on the agent's warm worker if the node config names one, else in this process.

    The worker call is bounded by the message's TTL (:func:`_call_timeout`); a worker that does not answer in
    time, or breaks off, is a :class:`~fedhive.client.worker.WorkerError` (Flower reports it to the server). Only
    a worker that cannot be reached at all (nothing was sent) makes the ClientApp train in its own process.
    """
    worker = node.get("worker")
    if worker:
        from .worker import call

        try:
            return call(str(worker), header, arrays, timeout=_call_timeout(msg))
        except OSError as exc:
            log.warning("warm worker %s unreachable (%s); training in the ClientApp process", worker, exc)
    global _local_trainer
    if _local_trainer is None:
        from .trainer import Trainer

        _local_trainer = Trainer(device=node.get("training-device") or None,
                                 slowdown=float(node.get("slowdown", 1.0) or 1.0),
                                 threads=node.get("torch-threads") or None)
    return _local_trainer.handle(header, arrays)


def _seed(node_id: int, task_id: object) -> int:
    digest = hashlib.blake2b(f"{node_id}/{task_id}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") >> 1


def _base(context: Context) -> tuple[dict, dict]:
    return dict(context.node_config), task_settings(dict(context.run_config))


def train(msg: Message, context: Context) -> Message:
    from flwr.app import Message, RecordDict

    node, settings = _base(context)
    params = M.from_array_record(msg.content[M.ARRAYS])
    names = list(msg.content[M.ARRAYS].keys())
    config = dict(msg.content[M.CONFIG]) if M.CONFIG in msg.content else {}
    header = {"op": "train", "settings": settings, "node": node, "config": config,
              "seed": _seed(context.node_id, config.get(M.TASK_ID, msg.metadata.message_id))}
    metrics, out = _trainer_call(node, header, params, msg)
    content = RecordDict({M.ARRAYS: M.to_array_record(out, names), M.METRICS: M.metric_record(metrics)})
    return Message(content, reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    from flwr.app import Message, RecordDict

    node, settings = _base(context)
    params = M.from_array_record(msg.content[M.ARRAYS])
    metrics, _ = _trainer_call(node, {"op": "evaluate", "settings": settings, "node": node}, params, msg)
    return Message(RecordDict({M.METRICS: M.metric_record(metrics)}), reply_to=msg)


def profile(msg: Message, context: Context) -> Message:
    from flwr.app import ConfigRecord, Message, RecordDict

    node, settings = _base(context)
    reply, _ = _trainer_call(node, {"op": "profile", "settings": settings, "node": node}, [], msg)
    prof = {k: node[k] for k in _PROFILE_KEYS if k in node}
    prof.setdefault("device-class", "unknown")
    prof.update(reply)
    return Message(RecordDict({M.PROFILE: ConfigRecord(prof)}), reply_to=msg)


def _make_app() -> ClientApp:
    from flwr.clientapp import ClientApp

    client_app = ClientApp()
    client_app.train()(train)
    client_app.evaluate()(evaluate)
    client_app.query("profile")(profile)
    return client_app


app = _make_app()
