"""A Flower ClientApp that attacks the server through real Flower messages (``fedhive.faults.hostile_client:app``).

Nodes whose node config has ``hostile = 0`` (or none) behave: they move the received model a little toward a fixed
point and reply as a stock Flower client does. Nodes with ``hostile = 1`` answer each train message with one of
:data:`REPLIES` (chosen by the task id the server sent, so a run is reproducible), and the profile query with one
of :data:`PROFILES`. Each hostile reply is also written, one line each, to ``<log-dir>/<node-id>.log`` when the
node config names a ``log-dir``, so a test can count what was sent against what the server rejected.

Every reply here is built with Flower's own record types: what the server sees is exactly what a hostile device
running Flower could send it.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def write_app(dst: Path) -> Path:
    """A Flower app folder at ``dst`` running this ClientApp under fedhive's server app (every run-config key
    declared), for ``flwr run`` / ``LocalCluster.submit(app_dir=...)``."""
    import json

    from fedhive.runconfig import KEYS

    dst.mkdir(parents=True)
    lines = ['[build-system]', 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', '',
             '[project]', 'name = "hostileapp"', 'version = "1.0.0"', '', '[tool.flwr.app]', 'publisher = "fedhive"',
             '', '[tool.flwr.app.components]', 'serverapp = "fedhive.server.app:app"',
             'clientapp = "fedhive.faults.hostile_client:app"', '', '[tool.flwr.app.config]']
    lines += [f"{k} = {json.dumps(v)}" for k, (v, _) in KEYS.items()]
    (dst / "pyproject.toml").write_text("\n".join(lines) + "\n")
    (dst / "hostile_placeholder.py").write_text("# the ClientApp is fedhive.faults.hostile_client\n")
    return dst


def _arrays(msg: Message) -> "OrderedDict[str, np.ndarray]":
    rec = msg.content["arrays"]
    return OrderedDict((k, rec[k].numpy()) for k in rec.keys())


def _step(arrays: "OrderedDict[str, np.ndarray]") -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((k, (a + 0.1 * (1.0 - a)).astype(a.dtype) if a.dtype.kind == "f" else a)
                       for k, a in arrays.items())


def _reply(msg: Message, arrays, metrics) -> Message:
    rec = arrays if isinstance(arrays, (ArrayRecord, ConfigRecord)) else \
        ArrayRecord(OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in arrays.items()))
    return Message(RecordDict({"arrays": rec, "metrics": metrics}), reply_to=msg)


def _ok_metrics(n=100) -> MetricRecord:
    return MetricRecord({"num-examples": n, "train_loss": 0.5})


def _first(arrays, fn):
    k = next(iter(arrays))
    out = OrderedDict(arrays)
    out[k] = fn(arrays[k])
    return out


def _raw(arrays, dtype=None, shape=None, data=None) -> ArrayRecord:
    """The first tensor as an Array whose declared dtype/shape/bytes disagree (built field by field)."""
    k = next(iter(arrays))
    a = arrays[k]
    rec = ArrayRecord(OrderedDict((n, Array(np.ascontiguousarray(v))) for n, v in arrays.items()))
    good = rec[k]
    rec[k] = Array(dtype or good.dtype, tuple(shape if shape is not None else good.shape), good.stype,
                   data if data is not None else good.data)
    return rec


def _nan(a):
    b = a.astype(a.dtype, copy=True)
    b.flat[0] = np.nan
    return b


ReplyFn = Callable[[Message, "OrderedDict[str, np.ndarray]"], Message]
REPLIES: dict[str, ReplyFn] = {
    "nan": lambda m, a: _reply(m, _first(a, _nan), _ok_metrics()),
    "wrong_shape": lambda m, a: _reply(m, _first(a, lambda x: np.zeros(x.size + 3, x.dtype)), _ok_metrics()),
    "wrong_dtype": lambda m, a: _reply(m, _first(a, lambda x: x.astype(np.float64)), _ok_metrics()),
    "huge_declared_shape": lambda m, a: _reply(m, _raw(a, shape=(1 << 30, 1 << 10)), _ok_metrics()),
    "short_data": lambda m, a: _reply(m, _raw(a, data=b"\x00" * 8), _ok_metrics()),
    "garbage_data": lambda m, a: _reply(m, _raw(a, data=b"not an npy payload" * 10), _ok_metrics()),
    "bad_dtype_name": lambda m, a: _reply(m, _raw(a, dtype="evil"), _ok_metrics()),
    "missing_tensor": lambda m, a: _reply(m, OrderedDict(list(a.items())[:-1]), _ok_metrics()),
    "extra_tensor": lambda m, a: _reply(m, OrderedDict(list(a.items()) + [("intruder", np.zeros(3, np.float32))]),
                                        _ok_metrics()),
    "renamed_tensor": lambda m, a: _reply(m, OrderedDict(("x" + k, v) for k, v in a.items()), _ok_metrics()),
    "no_tensors": lambda m, a: _reply(m, ArrayRecord(), _ok_metrics()),
    "arrays_not_arrays": lambda m, a: _reply(m, ConfigRecord({"w": b"\x00\x01"}), _ok_metrics()),
    "examples_inf": lambda m, a: _reply(m, _step(a), MetricRecord({"num-examples": float("inf")})),
    "examples_nan": lambda m, a: _reply(m, _step(a), MetricRecord({"num-examples": float("nan")})),
    "examples_negative": lambda m, a: _reply(m, _step(a), MetricRecord({"num-examples": -5})),
    "examples_fraction": lambda m, a: _reply(m, _step(a), MetricRecord({"num-examples": 2.5})),
    "examples_2^62": lambda m, a: _reply(m, _step(a), MetricRecord({"num-examples": 2 ** 62})),
    "examples_1e308": lambda m, a: _reply(m, _step(a), MetricRecord({"num-examples": 1e308})),
    "examples_missing": lambda m, a: _reply(m, _step(a), MetricRecord({"train_loss": 0.1})),
    "examples_string": lambda m, a: _reply(m, _step(a), ConfigRecord({"num-examples": "100"})),
    "examples_list": lambda m, a: _reply(m, _step(a), MetricRecord({"num-examples": [1, 2]})),
    "metrics_bytes": lambda m, a: _reply(m, _step(a), ConfigRecord({"num-examples": 100, "loss": b"\xff" * 64,
                                                                    "note": "x" * 5000})),
    "claim_string": lambda m, a: _reply(m, _step(a), ConfigRecord({"num-examples": 100, "fedhive.version": "0"})),
    "claim_future": lambda m, a: _reply(m, _step(a), MetricRecord({"num-examples": 100,
                                                                   "fedhive.version": 10 ** 9})),
    "no_content": lambda m, a: Message(RecordDict({}), reply_to=m),
}
# Replies that are well formed and may be applied (the model must stay finite and the server up).
MAY_APPLY = {"metrics_bytes"}

PROFILES: list[dict] = [
    {"device-class": "gpu", "num-examples": float("inf")},
    {"device-class": "x" * 10_000, "num-examples": 2 ** 62},
    {"device-class": "rpi4", "num-examples": -3},
    {"device-class": b"\x00\x01", "num-examples": "lots"},
    {"device-class": "cpu", "num-examples": 1e308, **{f"k{i}": "v" * 100 for i in range(200)}},
]


def _hostile(context: Context) -> bool:
    return str(context.node_config.get("hostile", "0")).lower() in ("1", "true", "yes")


def _log(context: Context, line: str) -> None:
    d = context.node_config.get("log-dir")
    if d:
        with open(Path(str(d)) / f"{context.node_id}.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = _arrays(msg)
    if not _hostile(context):
        return _reply(msg, _step(arrays), _ok_metrics())
    task = int(msg.content["config"].get("fedhive.task-id", 0))
    names = sorted(REPLIES)
    kind = names[(task * 7919 + int(context.node_id)) % len(names)]
    _log(context, f"train {task} {kind}")
    return REPLIES[kind](msg, arrays)


@app.query("profile")
def profile(msg: Message, context: Context) -> Message:
    if not _hostile(context):
        return Message(RecordDict({"profile": ConfigRecord({"device-class": "cpu", "num-examples": 100})}),
                       reply_to=msg)
    p = PROFILES[int(context.node_id) % len(PROFILES)]
    _log(context, "profile")
    return Message(RecordDict({"profile": ConfigRecord(p)}), reply_to=msg)
