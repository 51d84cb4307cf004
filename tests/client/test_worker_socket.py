"""The agent's warm worker over a real Unix socket, the ClientApp handing it messages, and FedASMU's fetch."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedhive import messages as M
from fedhive.client import app as client_app
from fedhive.client.trainer import Trainer
from fedhive.client.worker import Worker, WorkerError, call
from fedhive.server.settings import task_settings
from fedhive.tasks import load_task

SETTINGS = task_settings({"task": "synthetic"})
NODE = {"partition-id": 1, "num-partitions": 3}


@pytest.fixture
def worker(tmp_path):
    w = Worker(tmp_path / "w.sock", Trainer(device="cpu"))
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def model():
    return load_task("synthetic", num_clients=3).initial_params(0)


def test_ops_over_the_socket(worker, model):
    assert call(worker.path, {"op": "ping"})[0]["pid"] > 0
    prof, _ = call(worker.path, {"op": "profile", "settings": SETTINGS, "node": NODE})
    assert prof["num-examples"] == load_task("synthetic", num_clients=3).num_examples(1) > 0
    metrics, out = call(worker.path, {"op": "train", "settings": SETTINGS, "node": NODE, "seed": 3,
                                      "config": {"local_steps": 2, M.VERSION: 0}}, model)
    assert [a.shape for a in out] == [a.shape for a in model] and not np.array_equal(out[0], model[0])
    assert metrics["num-examples"] == prof["num-examples"] and metrics["steps"] == 2 and metrics["seconds"] > 0
    ev, _ = call(worker.path, {"op": "evaluate", "settings": SETTINGS, "node": NODE}, out)
    assert 0.0 <= ev["accuracy"] <= 1.0
    with pytest.raises(WorkerError, match="unknown trainer op 'dance'"):
        call(worker.path, {"op": "dance", "settings": SETTINGS, "node": NODE})
    with pytest.raises(WorkerError, match="local_steps"):
        call(worker.path, {"op": "train", "settings": SETTINGS, "node": NODE, "config": {"local_steps": -1}}, model)


def test_clientapp_forwards_flower_messages_to_the_worker(flower_identity, worker, model):
    flower_identity.node_id = 5
    names = load_task("synthetic", num_clients=3).param_names()
    ctx = Context(run_id=1, node_id=5, node_config={**NODE, "worker": worker.path, "device-class": "rpi4"},
                  state=RecordDict(), run_config={"task": "synthetic"})
    msg = Message(RecordDict({M.ARRAYS: M.to_array_record(model, names),
                              M.CONFIG: ConfigRecord({"local_steps": 3, M.TASK_ID: 9, M.VERSION: 0})}),
                  dst_node_id=5, message_type="train")
    msg.metadata.__dict__["_message_id"] = msg.object_id
    before = worker.trainer.requests
    reply = client_app.train(msg, ctx)
    assert worker.trainer.requests == before + 1  # the worker trained, not the ClientApp process
    assert list(reply.content[M.ARRAYS].keys()) == names
    assert reply.content[M.METRICS]["num-examples"] > 0 and reply.content[M.METRICS]["steps"] == 3
    q = Message(RecordDict({}), dst_node_id=5, message_type=M.PROFILE_QUERY)
    q.metadata.__dict__["_message_id"] = q.object_id
    prof = client_app.profile(q, ctx).content[M.PROFILE]
    assert prof["device-class"] == "rpi4" and prof["num-examples"] > 0


def test_fedasmu_fetches_a_newer_model_mid_training(store, model):
    store.publish([a + 1 for a in model], 5)
    trainer = Trainer(device="cpu")
    cfg = {"local_steps": 3, "fetch_step": 1, M.VERSION: 2, M.STORE_ADDRESS: store.address,
           M.STORE_TOKEN: store.token}
    m, out = trainer.handle({"op": "train", "settings": SETTINGS, "node": NODE, "seed": 1, "config": cfg}, model)
    assert m["fetch_version"] == 5 and m["fetch_bytes"] > 0 and m["steps"] == 3 and 0 < m["beta"] <= 1
    # A wrong token: the fetch is refused, training goes on without it.
    m2, out2 = trainer.handle({"op": "train", "settings": SETTINGS, "node": NODE, "seed": 1,
                               "config": {**cfg, M.STORE_TOKEN: "wrong"}}, model)
    assert m2["fetch_version"] == 2 and m2["fetch_bytes"] == 0 and m2["beta"] == 0.0
    assert store.refused == 1 and [a.shape for a in out2] == [a.shape for a in model]
