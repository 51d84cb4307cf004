"""The model store (real gRPC on 127.0.0.1) and the Grid transport over a fake Grid holding real Flower messages."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedhive import messages as M
from fedhive.client.fetch import FetchError, fetch_model
from fedhive.proto.modelfile import decode, encode
from fedhive.server.grid_transport import GridTransport
from fedhive.server.model_store import ModelStore
from fedhive.server.orchestrator import Orchestrator, StopCondition
from fedhive.server.transport import Failure, Result
from fedhive.strategies import build
from fedhive.strategies.base import Task


# --------------------------------------------------------------------------- model store
def test_store_serves_newer_models_only(store):
    assert fetch_model(store.address, store.token, -1) == (-1, None, 0)  # nothing published yet
    model = [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([7], dtype=np.int64)]
    store.publish(model, 3)
    version, got, nbytes = fetch_model(store.address, store.token, 1)
    assert version == 3 and nbytes > 0
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(got, model))
    assert fetch_model(store.address, store.token, 3) == (3, None, 0)
    store.publish([model[0] + 1, model[1]], 4)
    version, got, _ = fetch_model(store.address, store.token, 3)
    assert version == 4 and np.array_equal(got[0], model[0] + 1)


def test_store_refuses_a_wrong_or_missing_token(store):
    store.publish([np.zeros(3, np.float32)], 1)
    for token in ("not-the-token", ""):
        with pytest.raises(FetchError, match="UNAUTHENTICATED"):
            fetch_model(store.address, token, -1)
    assert store.refused == 2 and store.served == 0


def test_large_model_arrives_intact_in_chunks(store):
    import grpc

    from fedhive.proto import model_store_pb2 as pb
    from fedhive.proto import model_store_pb2_grpc as pb_grpc

    model = [np.random.default_rng(0).standard_normal(750_000).astype(np.float32)]  # 3 MB
    store.publish(model, 1)
    with grpc.insecure_channel(store.address) as ch:
        chunks = list(pb_grpc.ModelStoreStub(ch).GetModel(pb.GetModelRequest(min_version=0, chunk_bytes=1 << 20),
                                                          metadata=(("x-fedhive-token", store.token),)))
    assert len(chunks) == 3 and chunks[0].total_bytes == sum(len(c.data) for c in chunks)
    assert np.array_equal(decode(b"".join(c.data for c in chunks))[0], model[0])
    _, got, _ = fetch_model(store.address, store.token, 0)
    assert np.array_equal(got[0], model[0])


def test_model_file_round_trip_and_garbage():
    arrays = [np.float32(2.5) * np.ones((2, 3), np.float32), np.array(3, dtype=np.int64), np.zeros(0, np.float64)]
    back = decode(encode(arrays))
    assert [a.shape for a in back] == [(2, 3), (), (0,)] and all(np.array_equal(a, b) for a, b in zip(arrays, back))
    with pytest.raises(ValueError, match="safetensors"):
        decode(b"\x00garbage")


# --------------------------------------------------------------------------- grid transport
@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


class FakeGrid:
    """Holds pushed messages; the test answers them with real Flower reply messages."""

    def __init__(self, nodes):
        self.nodes = list(nodes)
        self.pushed: dict[str, Message] = {}
        self.replies: list[Message] = []

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, msgs):
        ids = []
        for m in msgs:
            m.metadata.__dict__["_message_id"] = m.object_id
            self.pushed[m.object_id] = m
            ids.append(m.object_id)
        return ids

    def pull_messages(self, ids):
        ready = [r for r in self.replies if r.metadata.reply_to_message_id in ids]
        self.replies = [r for r in self.replies if r not in ready]
        return ready

    def reply(self, mid, content):
        m = self.pushed[mid]
        r = Message(content, reply_to=m)
        r.metadata.__dict__["_src_node_id"] = m.metadata.dst_node_id
        self.replies.append(r)

    def of_type(self, kind):
        return [(i, m) for i, m in self.pushed.items() if m.metadata.message_type == kind]


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, dt):
        self.t += max(dt, 1e-3)


def make(nodes=(11, 12)):
    grid, clock = FakeGrid(nodes), Clock()
    t = GridTransport(grid, ["w", "b"], ttl=30.0, clock=clock, sleep=clock.sleep, idle_timeout=5.0)
    return grid, clock, t


def profile_all(grid, t, classes):
    t.refresh()
    for (mid, m) in grid.of_type(M.PROFILE_QUERY):
        node = m.metadata.dst_node_id
        if classes.get(node) is None:
            grid.reply(mid, Error(2, "no query handler"))
        else:
            grid.reply(mid, RecordDict({M.PROFILE: ConfigRecord({"device-class": classes[node], "num-examples": 40})}))
    t._pull()


def test_profiles_decide_who_joins_and_as_what():
    grid, _, t = make()
    profile_all(grid, t, {11: "rpi4", 12: None})
    got = {c.node_id: (c.device_class, c.num_examples) for c in t.clients()}
    assert got == {11: ("rpi4", 40), 12: ("unknown", 0)}


def test_dispatch_reply_and_error_codes():
    grid, clock, t = make(nodes=(1, 2, 3, 4, 5))
    profile_all(grid, t, {n: "cpu" for n in (1, 2, 3, 4, 5)})
    params = [np.ones((2, 2), np.float32), np.zeros(2, np.float32)]
    for node in (1, 2, 3, 4, 5):
        t.dispatch(100 + node, Task(node, 7, {"local_steps": 3}), params)
    trains = dict((m.metadata.dst_node_id, (mid, m)) for mid, m in grid.of_type("train"))
    mid, msg = trains[1]
    assert list(msg.content[M.ARRAYS].keys()) == ["w", "b"] and msg.metadata.ttl == 30.0
    assert msg.content[M.CONFIG][M.TASK_ID] == 101 and msg.content[M.CONFIG]["local_steps"] == 3
    out = [params[0] * 2, params[1] + 1]
    grid.reply(mid, RecordDict({M.ARRAYS: ArrayRecord([a for a in out]),
                                M.METRICS: MetricRecord({"num-examples": 9, "train_loss": 0.5})}))
    for node, code in ((2, 2), (3, 3), (4, 5), (5, 8)):
        grid.reply(trains[node][0], Error(code, "x"))
    events = t.wait(None)
    results = [e for e in events if isinstance(e, Result)]
    assert len(results) == 1
    u = results[0].update
    assert (results[0].task_id, u.node_id, u.base_version, u.num_examples, u.metrics["loss"]) == (101, 1, 7, 9, 0.5)
    assert all(np.array_equal(a, b) for a, b in zip(u.params, out))
    reasons = {e.task_id: e.reason for e in events if isinstance(e, Failure)}
    assert reasons == {102: "client_error", 103: "timeout", 104: "node_lost", 105: "client_crashed"}


def test_malformed_replies_are_marked_and_lost_nodes_leave():
    grid, clock, t = make()
    profile_all(grid, t, {11: "cpu", 12: "cpu"})
    params = [np.ones(2, np.float32), np.ones(1, np.float32)]
    t.dispatch(0, Task(11, 0, {}), params)
    t.dispatch(1, Task(12, 0, {}), params)
    (m0, _), (m1, _) = grid.of_type("train")
    grid.reply(m0, RecordDict({M.METRICS: MetricRecord({"num-examples": 1})}))  # no arrays
    grid.reply(m1, RecordDict({M.ARRAYS: ArrayRecord([np.ones(2, np.float32), np.ones(1, np.float32)])}))  # no count
    events = t.wait(None)
    assert sorted(e.info["malformed"] for e in events) == ["the reply has no 'arrays' record",
                                                            "the reply's metrics have no 'num-examples'"]
    before = t.membership_version
    grid.nodes = [11]
    clock.t += 2.0
    assert t.wait(clock.t + 1.0) == []
    assert [c.node_id for c in t.clients()] == [11] and t.membership_version != before
    t.restore(100.0, [])
    assert t.now() == pytest.approx(100.0)


def test_orchestrator_rejects_a_malformed_reply_and_keeps_the_model():
    grid, clock, t = make(nodes=(11,))
    profile_all(grid, t, {11: "cpu"})
    strategy = build("fedasync", {"local_steps": 1})
    orch = Orchestrator(strategy, t, stop=StopCondition(max_updates=1))
    initial = [np.zeros(3, np.float32), np.zeros(1, np.float32)]

    answered = set()

    def responder(deadline):
        for mid, m in grid.of_type("train"):
            if mid in answered:
                continue
            answered.add(mid)
            arrays = m.content[M.ARRAYS].to_numpy_ndarrays()
            if len(answered) == 1:  # the first reply has a wrong shape
                grid.reply(mid, RecordDict({M.ARRAYS: ArrayRecord([np.ones(4, np.float32), arrays[1]]),
                                            M.METRICS: MetricRecord({"num-examples": 5})}))
            else:
                grid.reply(mid, RecordDict({M.ARRAYS: ArrayRecord([a + 1 for a in arrays]),
                                            M.METRICS: MetricRecord({"num-examples": 5})}))
        return inner(deadline)

    inner = t.wait
    t.wait = responder
    res = orch.run(initial)
    assert res.counters["rejected_shape"] == 1 and res.counters["update_applied"] == 1
    assert strategy.version == 1  # only the good update changed the model


def test_store_over_tls_with_the_superlinks_certificate(tmp_path):
    """The store serves TLS with the certificate deploy/certs/generate.sh makes for the SuperLink."""
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make test certificates")
    script = Path(__file__).resolve().parents[2] / "deploy" / "certs" / "generate.sh"
    shutil.copy(script, tmp_path / "generate.sh")
    subprocess.run(["bash", str(tmp_path / "generate.sh")], check=True, capture_output=True, timeout=120)
    s = ModelStore("127.0.0.1:0", certificates=(tmp_path / "server.pem", tmp_path / "server.key"))
    try:
        s.publish([np.ones(4, np.float32)], 2)
        version, got, _ = fetch_model(s.address, s.token, 0, root_certificates=tmp_path / "ca.crt")
        assert version == 2 and np.array_equal(got[0], np.ones(4, np.float32))
        with pytest.raises(FetchError):  # plain text against a TLS store fails
            fetch_model(s.address, s.token, 0, timeout=5)
    finally:
        s.stop()
