"""Hostile values at the Flower edge of the server: profiles, reply metrics, arrays and device-class labels, through the
real GridTransport over the fake Grid of test_grid_transport (real Flower records), the real decoder, and the real
Prometheus metrics. Nothing a node sends may raise; what is refused is refused with a reason and counted."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_grid_transport import NAMES, join, make, params, profile_reply, train_reply

from fedhive import messages as M
from fedhive.engine import Malformed, Orchestrator, Result, StopCondition
from fedhive.server import grid_transport as G
from fedhive.server.metrics import MAX_DEVICE_CLASS_LABELS, ServerMetrics
from fedhive.strategies import build
from fedhive.strategies.base import APPLIED, ClientInfo, Dispatch, Task, Update


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


# --------------------------------------------------------------------------- profiles
HOSTILE_COUNTS = [float("inf"), float("-inf"), float("nan"), 2**62, 2**31, 1e308, -1, -5.0, 2.5, "100", "lots",
                  [1, 2], [1.0], b"\x00\x01", True, False]


@pytest.mark.parametrize("n", HOSTILE_COUNTS, ids=repr)
def test_a_hostile_profile_example_count_joins_as_zero_and_is_counted(n):
    grid, _, t = make(nodes=(11,))
    join(grid, t, {11: profile_reply("gpu", n)})  # inf raised OverflowError in int(...) before
    (c,) = t.clients()
    assert (c.device_class, c.num_examples) == ("gpu", 0) and type(c.num_examples) is int
    assert t.profile_rejections == {"num-examples": 1}


@pytest.mark.parametrize("n, want", [(0, 0), (7, 7), (7.0, 7), (2**31 - 1, 2**31 - 1)])
def test_an_honest_profile_example_count_is_kept(n, want):
    grid, _, t = make(nodes=(11,))
    join(grid, t, {11: profile_reply("cpu", n)})
    (c,) = t.clients()
    assert c.num_examples == want and type(c.num_examples) is int and not t.profile_rejections


@pytest.mark.parametrize("cls", ["gpu", "cpu", "rpi5", "rpi4", "rpi-zero2", "unknown", "jetson", "jetson_nano-2"])
def test_known_device_classes_and_short_tokens_are_kept(cls):
    grid, _, t = make(nodes=(11,))
    join(grid, t, {11: profile_reply(cls, 5)})
    assert [c.device_class for c in t.clients()] == [cls] and not t.profile_rejections


@pytest.mark.parametrize("cls", ["", "GPU", "a b", "évil", "-lead", "x" * 33, "x" * 10_000, "gpu\n", b"gpu",
                                 3, 1.5, True, ["gpu"]], ids=lambda v: repr(v)[:20])
def test_other_device_classes_join_as_unknown_and_are_counted(cls):
    grid, _, t = make(nodes=(11,))
    join(grid, t, {11: profile_reply(cls, 5)})
    (c,) = t.clients()
    assert (c.device_class, c.num_examples) == ("unknown", 5)
    assert t.profile_rejections == {"device-class": 1}


def test_a_huge_profile_is_cut_to_a_bounded_number_of_short_scalar_entries():
    junk = {f"k{i:03d}": "v" * 100 for i in range(200)}
    prof = {**junk, "long": "y" * (G.MAX_PROFILE_CHARS + 1), "blob": b"\x00" * 1000, "list": [1, 2, 3],
            "bad-float": float("nan"), "x" * (G.MAX_KEY_CHARS + 1): 1,
            "device-class": "rpi4", "num-examples": 12}  # read even after 200 junk entries
    grid, _, t = make(nodes=(11,))
    join(grid, t, {11: RecordDict({M.PROFILE: ConfigRecord(prof)})})
    (c,) = t.clients()
    assert (c.device_class, c.num_examples) == ("rpi4", 12)
    kept = t.profiles[11]
    assert len(kept) == G.MAX_PROFILE_KEYS
    assert all(type(k) is str and len(k) <= G.MAX_KEY_CHARS for k in kept)
    assert all(type(v) in (str, int, float, bool) and (type(v) is not str or len(v) <= G.MAX_PROFILE_CHARS)
               for v in kept.values())
    assert t.profile_rejections == {"entries_dropped": len(prof) - G.MAX_PROFILE_KEYS}
    json.dumps(kept, allow_nan=False)


def test_a_profile_in_the_wrong_record_type_is_read_safely():
    grid, _, t = make(nodes=(11, 12))
    join(grid, t, {11: RecordDict({M.PROFILE: MetricRecord({"num-examples": [1, 2], "x": float("inf")})}),
                   12: RecordDict({M.PROFILE: ArrayRecord({"device-class": Array(np.zeros(2))})})})
    got = {c.node_id: (c.device_class, c.num_examples) for c in t.clients()}
    assert got == {11: ("unknown", 0), 12: ("unknown", 0)}
    assert t.profiles == {11: {}, 12: {}}


def test_the_known_device_classes_are_the_simulators():
    from fedhive.sim.profiles import DEVICE_CLASSES

    assert set(M.KNOWN_DEVICE_CLASSES) == set(DEVICE_CLASSES) | {"unknown"}
    assert all(M.DEVICE_CLASS_TOKEN.fullmatch(c) for c in M.KNOWN_DEVICE_CLASSES)


# --------------------------------------------------------------------------- reply metrics
def _reply_event(content, task_params=None):
    grid, _, t = make(nodes=(11,))
    join(grid, t, {11: profile_reply("cpu", 10)})
    t.dispatch(Dispatch(6, Task(11, 3, {}), 0.0, task_params or params()))
    (mid, _), = grid.of_type("train")
    grid.reply(mid, content)
    (ev,) = t.wait(None)
    return ev, t


def _with_metrics(record, arrays=None) -> RecordDict:
    """A train reply with good arrays and ``record`` (any record type, as a hostile client may send) as metrics."""
    return RecordDict({M.ARRAYS: train_reply(arrays or params(), None)[M.ARRAYS], M.METRICS: record})


HOSTILE_METRICS = [b"\xff" * 64, "0.5", "x" * 5000, [1, 2], [0.5], float("inf"), float("-inf"), float("nan"),
                   2**63, -(2**63) - 1]


@pytest.mark.parametrize("value", HOSTILE_METRICS, ids=lambda v: repr(v)[:20])
def test_hostile_metric_values_are_dropped_and_the_update_kept(value):
    record = ConfigRecord if isinstance(value, (bytes, str, list)) else MetricRecord
    ev, t = _reply_event(_with_metrics(record({"num-examples": 4, "loss": value, "seconds": 1.5})))
    assert isinstance(ev, Result), getattr(ev, "detail", ev)
    assert ev.update.metrics == {"num-examples": 4, "seconds": 1.5}
    assert t.metric_rejections == {"not_a_number": 1}
    json.dumps(ev.update.metrics, allow_nan=False)  # history.json's write raised on bytes before


def test_metrics_are_bounded_in_number_and_name_length_and_bools_become_ints():
    metrics = {"num-examples": 4, "ok": True, "x" * (G.MAX_KEY_CHARS + 1): 1.0,
               **{f"m{i:03d}": float(i) for i in range(100)}}
    ev, t = _reply_event(_with_metrics(ConfigRecord(metrics)))
    m = ev.update.metrics
    assert isinstance(ev, Result) and len(m) == G.MAX_METRICS and m["ok"] == 1 and type(m["ok"]) is int
    assert all(type(k) is str and type(v) in (int, float) and math.isfinite(v) for k, v in m.items())
    assert t.metric_rejections == {"bad_name": 1, "too_many": len(metrics) - 1 - G.MAX_METRICS}


def test_an_honest_replys_metrics_are_unchanged():
    honest = {"num-examples": 33, "train_loss": 0.25, "seconds": 1.5, "steps": 5, M.VERSION: 3}
    ev, t = _reply_event(train_reply(params(), honest))
    assert ev.update.metrics == {"num-examples": 33, "train_loss": 0.25, "seconds": 1.5, "steps": 5, "loss": 0.25}
    assert ev.update.base_version == 3 and not t.metric_rejections


@pytest.mark.parametrize("n", HOSTILE_COUNTS, ids=repr)
def test_a_hostile_reply_example_count_is_malformed_with_a_reason(n):
    record = ConfigRecord if isinstance(n, (bytes, str, bool)) or n == [1, 2] else MetricRecord
    ev, _ = _reply_event(_with_metrics(record({"num-examples": n})))
    assert isinstance(ev, Malformed) and (ev.task_id, ev.node_id) == (6, 11)
    assert f"'num-examples' must be an integer from 0 to {M.MAX_NUM_EXAMPLES}" in ev.detail and len(ev.detail) < 200


@pytest.mark.parametrize("claim, want", [
    (4, 4), (4.0, 4), (4.5, 4.5), ("4", "4"), (True, True), (b"\x00" * 10_000, "<bytes>"), ([4], "<list>"),
    ("v" * 1000, "'" + "v" * 63 + "..."), (2**70, repr(2**70)), (10**100, f"<int of {(10**100).bit_length()} bits>"),
])
def test_the_version_claim_is_passed_on_and_anything_odd_is_made_safe_to_print(claim, want):
    assert G.GridTransport._claim(claim) == want
    got = G.GridTransport._claim(claim)
    assert type(got) is type(want)


def test_a_reply_with_an_odd_version_claim_is_rejected_as_a_version_mismatch_and_the_model_kept():
    def responder(msg):
        if msg.metadata.message_type == M.PROFILE_QUERY:
            return profile_reply("cpu", 20)
        arrays = [msg.content[M.ARRAYS][k].numpy() for k in NAMES]
        task = msg.content[M.CONFIG][M.TASK_ID]
        if task == 0:  # bytes in the metrics and as the claim: rejected, the run goes on
            return _with_metrics(ConfigRecord({"num-examples": 5, M.VERSION: b"\x00" * 100, "x": b"y"}),
                                 [a + 100 for a in arrays])
        return train_reply([a + 1 for a in arrays], {"num-examples": 20, M.VERSION: 0, "train_loss": 0.2})

    grid, _, t = make(nodes=(11,), responder=responder)
    assert t.wait_for_clients(1, timeout=10.0) == 1
    strategy = build("fedasync", {"local_steps": 1})
    initial = [np.zeros((2, 3), np.float32), np.zeros(2, np.float32)]
    res = Orchestrator(strategy, t, stop=StopCondition(max_updates=1)).run(initial)
    assert res.counters["rejected_version_mismatch"] == 1 and res.counters["update_applied"] == 1
    assert all(np.all(a <= 1.0) for a in res.params)


# --------------------------------------------------------------------------- arrays
def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def _raw(a: np.ndarray, *, dtype=None, shape=None, data=None, stype="numpy.ndarray") -> Array:
    return Array(dtype or str(a.dtype), tuple(a.shape if shape is None else shape), stype,
                 _npy(a) if data is None else data)


def _record(**override) -> ArrayRecord:
    p = params()
    arrays = {NAMES[0]: Array(p[0]), NAMES[1]: Array(p[1])}
    arrays.update(override)
    return ArrayRecord({k: v for k, v in arrays.items() if v is not None})


W = params()[0]  # the model's first tensor: float32 (2, 3)
HOSTILE_ARRAYS = {
    "wrong shape": (_record(**{NAMES[0]: Array(np.zeros((3, 2), np.float32))}), "has shape (3, 2)"),
    "wrong dtype": (_record(**{NAMES[0]: Array(W.astype(np.float64))}), "has dtype 'float64'"),
    "huge declared shape": (_record(**{NAMES[0]: _raw(W, shape=(1 << 30, 1 << 10))}), "has shape"),
    "oversized data": (_record(**{NAMES[0]: _raw(W, data=_npy(W) + b"\x00" * (M.NPY_HEADER_MAX + 1))}),
                       "more than the model's tensor needs"),
    "header disagrees with the metadata": (_record(**{NAMES[0]: _raw(W, data=_npy(W.astype(np.float64)))}),
                                           "decodes to float64"),
    "big-endian data": (_record(**{NAMES[0]: _raw(W, data=_npy(W.astype(">f4")))}), "decodes to >f4"),
    "header shape disagrees": (_record(**{NAMES[0]: _raw(W, data=_npy(W.reshape(3, 2)))}), "decodes to float32 (3, 2)"),
    "truncated data": (_record(**{NAMES[0]: _raw(W, data=_npy(W)[:-5])}), "cannot be decoded"),
    "garbage data": (_record(**{NAMES[0]: _raw(W, data=b"not an npy payload" * 3)}), "not in .npy format"),
    "garbage header": (_record(**{NAMES[0]: _raw(W, data=b"\x93NUMPY\x01\x00\x10\x00{'descr': <f4 ...}\n")}),
                       "cannot be decoded"),
    "a pickled object array": (_record(**{NAMES[0]: _raw(np.array([{"a": 1}] * 6, dtype=object).reshape(2, 3),
                                                         dtype="float32")}), "cannot be decoded"),
    "an npz archive": (_record(**{NAMES[0]: _raw(W, data=b"PK\x03\x04" + b"\x00" * 40)}), "not in .npy format"),
    "another serialization": (_record(**{NAMES[0]: _raw(W, stype="torch.Tensor")}), "only 'numpy.ndarray'"),
    "a foreign name": (_record(intruder=Array(np.zeros(3, np.float32))), "not in the model 'intruder'"),
    "a missing name": (_record(**{NAMES[1]: None}), "missing 'layer.bias'"),
    "renamed tensors": (ArrayRecord({"0": Array(params()[0]), "1": Array(params()[1])}),
                        "missing 'layer.weight', 'layer.bias'; not in the model '0', '1'"),
    "no tensors": (ArrayRecord(), "missing 'layer.weight', 'layer.bias'"),
}


@pytest.mark.parametrize("name", list(HOSTILE_ARRAYS))
def test_hostile_arrays_are_malformed_with_a_reason(name):
    record, why = HOSTILE_ARRAYS[name]
    ev, t = _reply_event(train_reply(record, {"num-examples": 5}))
    assert isinstance(ev, Malformed) and (ev.task_id, ev.node_id) == (6, 11), ev
    assert why in ev.detail, ev.detail
    assert len(ev.detail) <= 300


def test_swapped_names_are_mapped_by_name_and_arrays_are_plain_ndarrays():
    p = params()
    out = [p[0] * 3, p[1] - 2]
    record = ArrayRecord({NAMES[1]: Array(out[1]), NAMES[0]: Array(out[0])})
    ev, _ = _reply_event(train_reply(record, {"num-examples": 5}))
    assert isinstance(ev, Result)
    assert all(type(a) is np.ndarray for a in ev.update.params)
    assert [(a.shape, a.dtype) for a in ev.update.params] == [((2, 3), np.float32), ((2,), np.float32)]
    assert all(np.array_equal(a, b) for a, b in zip(ev.update.params, out))


def test_the_decoder_without_names_keeps_the_records_order_for_the_client():
    p = params()
    record = ArrayRecord({"b": Array(p[1]), "a": Array(p[0])})
    got = M.from_array_record(record)
    assert [a.shape for a in got] == [(2,), (2, 3)] and all(type(a) is np.ndarray for a in got)


def test_the_decoder_with_names_and_specs_refuses_before_decoding(monkeypatch):
    calls = []
    monkeypatch.setattr(np, "load", lambda *a, **k: calls.append(1))
    record = _record(**{NAMES[0]: _raw(W, shape=(1 << 30, 1 << 10))})
    with pytest.raises(ValueError, match="has shape"):
        M.from_array_record(record, NAMES, [(W.shape, W.dtype), ((2,), np.float32)])
    assert calls == []


def test_any_other_exception_from_decoding_is_malformed_and_the_loop_goes_on(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("something deep in Flower")

    monkeypatch.setattr(M, "from_array_record", boom)
    ev, t = _reply_event(train_reply(params(), {"num-examples": 5}))
    assert isinstance(ev, Malformed) and "RuntimeError: something deep in Flower" in ev.detail
    assert t.in_flight == 0


# --------------------------------------------------------------------------- Prometheus labels
def _label_values(m: ServerMetrics) -> set[str]:
    out = set()
    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in fam.samples:
            if "device_class" in s.labels:
                out.add(s.labels["device_class"])
    return out


def test_device_class_labels_are_bounded_whatever_the_fleet_calls_itself():
    m = ServerMetrics()
    known = [ClientInfo(i, 1, c) for i, c in enumerate(M.KNOWN_DEVICE_CLASSES)]
    odd = [ClientInfo(100 + i, 1, f"class{i}") for i in range(500)] + [ClientInfo(999, 1, "z" * 10_000)]
    clients = known + odd
    m.on_membership(clients, 0.0)
    p = params()
    for c in clients:
        m.on_dispatch(Task(c.node_id, 0, {"local_steps": 1}), c, 0.0)
        m.on_update(Update(c.node_id, 0, p, 1, {}), APPLIED, c, 0, 1.0, 0.0)
    labels = _label_values(m)
    assert set(M.KNOWN_DEVICE_CLASSES) <= labels and "other" in labels
    assert len(labels) <= len(M.KNOWN_DEVICE_CLASSES) + MAX_DEVICE_CLASS_LABELS + 1
    assert {f"class{i}" for i in range(MAX_DEVICE_CLASS_LABELS)} <= labels  # first come, kept
    assert "z" * 10_000 not in labels


def test_a_few_custom_classes_keep_their_own_labels():
    m = ServerMetrics()
    m.on_membership([ClientInfo(1, 1, "slow"), ClientInfo(2, 1, "fast"), ClientInfo(3, 1, "fast")], 0.0)
    text = generate_latest(m.registry).decode()
    got = {s.labels["device_class"]: s.value for fam in text_string_to_metric_families(text)
           for s in fam.samples if s.name == "fedhive_clients_connected"}
    assert got == {"slow": 1, "fast": 2}
