"""Known partition sizes: when the server builds the devices' partition (``partition_sizes``), a node that names its
partition is weighted by the server's size of it, in its ClientInfo and in every Update, whatever it claims; what
cannot be used is counted and the claim is taken, as without ``partition_sizes``."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, RecordDict
from test_grid_transport import join, make, params, profile_reply, train_reply

from fedhive import messages as M
from fedhive.client import app as client_app
from fedhive.engine import Malformed, Result
from fedhive.server.grid_transport import GridTransport
from fedhive.strategies.base import Dispatch, Task

SIZES = [120, 80, 40]


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


def fedhive_profile(n, pid, parts=None, device_class="cpu") -> RecordDict:
    """A profile as fedhive's ClientApp sends it: the claim plus the node config's partition."""
    prof = dict(profile_reply(device_class, n)[M.PROFILE])
    prof["partition-id"] = pid
    if parts is not None:
        prof["num-partitions"] = parts
    return RecordDict({M.PROFILE: ConfigRecord(prof)})


def joined(profile: RecordDict, **kw):
    grid, clock, t = make(nodes=(11,), **kw)
    join(grid, t, {11: profile})
    (c,) = t.clients()
    return grid, clock, t, c


def train(grid, t, metrics):
    t.dispatch(Dispatch(1, Task(11, 0, {"local_steps": 1}), 0.0, params()))
    mid = [i for i, _ in grid.of_type("train") if i not in grid.answered][0]
    grid.reply(mid, train_reply(params(), metrics))
    (ev,) = t.wait(None)
    return ev


# --------------------------------------------------------------------------- profiles
def test_a_huge_profile_claim_gets_the_servers_size_and_is_counted():
    _, _, t, c = joined(fedhive_profile(2**31 - 1, 1, 3), partition_sizes=SIZES)
    assert c.num_examples == 80 and type(c.num_examples) is int
    assert t.profile_rejections == {"num-examples-corrected": 1}
    assert t.profiles[11]["num-examples"] == 2**31 - 1  # what the node said is kept as it said it


def test_an_honest_claim_is_not_counted_and_num_partitions_may_be_absent():
    _, _, t, c = joined(fedhive_profile(40, 2), partition_sizes=SIZES)
    assert c.num_examples == 40 and not t.profile_rejections


def test_a_malformed_profile_claim_is_counted_as_such_and_still_gets_the_known_size():
    _, _, t, c = joined(fedhive_profile(float("inf"), 0, 3), partition_sizes=SIZES)
    assert c.num_examples == 120 and t.profile_rejections == {"num-examples": 1}


@pytest.mark.parametrize("pid", ["3", 3.0, True, False, -1, 3, 99, 2**70, "x", b"\x01", [1], 1.5], ids=repr)
def test_an_unusable_partition_id_falls_back_to_the_claim_and_is_counted(pid):
    _, _, t, c = joined(fedhive_profile(7, pid, 3), partition_sizes=SIZES)
    assert c.num_examples == 7
    assert t.profile_rejections == {"partition-id": 1}


@pytest.mark.parametrize("parts", [4, 2, 0, "3", 3.0, True, [3], b"3"], ids=repr)
def test_a_num_partitions_other_than_the_servers_falls_back_to_the_claim_and_is_counted(parts):
    _, _, t, c = joined(fedhive_profile(7, 1, parts), partition_sizes=SIZES)
    assert c.num_examples == 7
    assert t.profile_rejections == {"num-partitions": 1}


def test_a_partition_id_of_none_from_a_plain_mapping_falls_back_to_the_claim():
    _, _, t, _ = joined(profile_reply("cpu", 1), partition_sizes=SIZES)
    t._join(11, {"device-class": "cpu", "num-examples": 7, "partition-id": None})
    (c,) = t.clients()
    assert c.num_examples == 7 and t.profile_rejections == {"partition-id": 1}


def test_without_a_partition_id_the_claim_is_taken():
    _, _, t, c = joined(profile_reply("cpu", 2**31 - 1), partition_sizes=SIZES)
    assert c.num_examples == 2**31 - 1 and not t.profile_rejections  # left to the strategies' max_weight_ratio


def test_without_partition_sizes_nothing_changes():
    grid, _, t, c = joined(fedhive_profile(2**31 - 1, 1, 3))
    assert c.num_examples == 2**31 - 1 and not t.profile_rejections
    ev = train(grid, t, {"num-examples": 10**9})
    assert isinstance(ev, Result) and ev.update.num_examples == 10**9 and not t.metric_rejections


@pytest.mark.parametrize("sizes", [[], [1, -1], [1, 2.0], [True], [2**31], ["5"]], ids=repr)
def test_bad_partition_sizes_are_refused(sizes):
    with pytest.raises(ValueError, match="partition_sizes must be a non-empty sequence of integers"):
        make(partition_sizes=sizes)


def test_a_node_that_rejoins_without_a_partition_id_loses_its_known_size():
    grid, _, t, _ = joined(fedhive_profile(80, 1, 3), partition_sizes=SIZES)
    grid.nodes = []
    t.refresh()
    grid.nodes = [11]
    join(grid, t, {11: profile_reply("cpu", 5)})
    (c,) = t.clients()
    assert c.num_examples == 5
    ev = train(grid, t, {"num-examples": 9})
    assert ev.update.num_examples == 9 and not t.metric_rejections


# --------------------------------------------------------------------------- replies
def test_a_huge_reply_claim_gets_the_known_size_and_is_counted_and_logged_once(caplog):
    grid, _, t, _ = joined(fedhive_profile(80, 1, 3), partition_sizes=SIZES)
    caplog.set_level("WARNING", logger="fedhive.grid")
    ev = train(grid, t, {"num-examples": 10**9, "train_loss": 0.5})
    assert isinstance(ev, Result) and ev.update.num_examples == 80 and type(ev.update.num_examples) is int
    assert t.metric_rejections == {"num-examples-corrected": 1}
    assert t.profile_rejections == {}
    ev = train(grid, t, {"num-examples": 3})
    assert ev.update.num_examples == 80 and t.metric_rejections == {"num-examples-corrected": 2}
    assert sum("its partition has 80" in r.getMessage() for r in caplog.records) == 1


def test_an_honest_reply_claim_is_not_counted():
    grid, _, t, _ = joined(fedhive_profile(80, 1, 3), partition_sizes=SIZES)
    ev = train(grid, t, {"num-examples": 80})
    assert ev.update.num_examples == 80 and not t.metric_rejections


@pytest.mark.parametrize("n", [-1, 2**62, float("nan"), 2.5], ids=repr)
def test_a_malformed_reply_claim_is_still_malformed_with_a_known_size(n):
    grid, _, t, _ = joined(fedhive_profile(80, 1, 3), partition_sizes=SIZES)
    ev = train(grid, t, {"num-examples": n})
    assert isinstance(ev, Malformed) and "num-examples" in ev.detail
    assert not t.metric_rejections


# --------------------------------------------------------------------------- the ClientApp's side
def test_the_clientapp_profile_carries_the_node_configs_partition(flower_identity, monkeypatch):
    from flwr.app import Context, Message

    monkeypatch.setattr(client_app, "_trainer_call", lambda node, header, arrays, msg=None: ({"num-examples": 9}, []))
    q = Message(RecordDict({}), dst_node_id=5, message_type=M.PROFILE_QUERY)
    q.metadata.__dict__["_message_id"] = q.object_id
    ctx = Context(run_id=1, node_id=5, node_config={"partition-id": 2, "num-partitions": 3, "data-dir": "/x"},
                  state=RecordDict(), run_config={"task": "synthetic", "seed": 0})
    prof = client_app.profile(q, ctx).content[M.PROFILE]
    assert prof["partition-id"] == 2 and prof["num-partitions"] == 3 and "data-dir" not in prof
    # ... which the server takes (real Flower records on both sides)
    _, _, t, c = joined(RecordDict({M.PROFILE: prof}), partition_sizes=SIZES)
    assert c.num_examples == 40 and t.profile_rejections == {"num-examples-corrected": 1}


def test_the_transport_keeps_partition_sizes_as_a_tuple():
    t = GridTransport(object(), ["w"], partition_sizes=iter([3, 4]))
    assert t.partition_sizes == (3, 4)


# --------------------------------------------------------------------------- the server app passes the sizes it builds
def _server_run(tmp_path, monkeypatch, parts):
    from flwr.app import MetricRecord

    from fedhive.server import app as server_app
    from fedhive.tasks import load_task
    from test_grid_transport import FakeGrid

    made = []

    class Recording(GridTransport):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    def responder(msg):
        pid = msg.metadata.dst_node_id - 11
        if msg.metadata.message_type == M.PROFILE_QUERY:
            return fedhive_profile(2**31 - 1, pid, 2)
        return RecordDict({M.ARRAYS: msg.content[M.ARRAYS], M.METRICS: MetricRecord({"num-examples": 10**9})})

    from fedhive.server import grid_transport

    monkeypatch.setattr(grid_transport, "GridTransport", Recording)  # what the engine (fedhive.flower) builds
    config = {"run-dir": str(tmp_path), "strategy": "fedasync", "task": "synthetic", "num-partitions": parts,
              "max-time": 0.0, "max-versions": 4, "checkpoint-every": 2, "eval-interval": 100.0, "min-clients": 2,
              "wait-clients": 5.0, "metrics-address": "", "poll-interval": 0.001}
    result = server_app.run(FakeGrid((11, 12), responder), config)
    task = load_task("synthetic", num_clients=max(1, parts), partition="dirichlet", alpha=0.5, seed=0)
    (t,) = made
    return result, t, task


def test_the_server_app_weights_nodes_by_the_partition_it_builds(tmp_path, monkeypatch):
    result, t, task = _server_run(tmp_path, monkeypatch, 2)
    sizes = (task.num_examples(0), task.num_examples(1))
    assert t.partition_sizes == sizes
    assert sorted((c.node_id, c.num_examples) for c in t.clients()) == [(11, sizes[0]), (12, sizes[1])]
    assert t.profile_rejections == {"num-examples-corrected": 2}
    assert t.metric_rejections["num-examples-corrected"] >= result.final["client_updates"] > 0  # every reply


def test_with_num_partitions_0_the_server_app_takes_the_claims(tmp_path, monkeypatch):
    _, t, _ = _server_run(tmp_path, monkeypatch, 0)
    assert t.partition_sizes is None
    assert [c.num_examples for c in t.clients()] == [2**31 - 1] * 2 and not t.profile_rejections
