import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from driven import Driven
from fedhive.strategies import FedAvg
from fedhive.strategies.base import ClientInfo, Update
from scripted import run

C = [ClientInfo(0, 10, "gpu"), ClientInfo(1, 30, "cpu"), ClientInfo(2, 20, "rpi4")]


def test_hand_checked_round():
    s = Driven(FedAvg(local_steps=5))
    s.start([np.zeros(3)], C[:2], 0.0)
    tasks = [s.on_idle(c, 0.0) for c in C[:2]]
    assert [t.config["local_steps"] for t in tasks] == [5, 5]
    assert s.on_update(Update(0, 0, [np.array([1.0, 2.0, 3.0])], 10, {}), 1.0).status == "buffered"
    assert s.version == 0
    assert s.on_update(Update(1, 0, [np.array([5.0, 6.0, 7.0])], 30, {}), 2.0).status == "applied"
    np.testing.assert_allclose(s.params[0], [4.0, 5.0, 6.0])  # (10·[1,2,3] + 30·[5,6,7]) / 40
    assert s.version == 1 and s.round == 2


def test_idle_clients_wait_for_the_round():
    s = Driven(FedAvg())
    s.start([np.zeros(3)], C[:2], 0.0)
    s.on_idle(C[0], 0.0)
    s.on_idle(C[1], 0.0)
    s.on_update(Update(0, 0, [np.ones(3)], 10, {}), 1.0)
    assert s.on_idle(C[0], 1.0) is None  # the round is still running
    s.on_update(Update(1, 0, [np.ones(3)], 30, {}), 3.0)
    assert s.on_idle(C[0], 3.0).version == 1


def test_failed_clients_are_excluded_and_weights_renormalised():
    s = Driven(FedAvg())
    s.start([np.zeros(3)], C, 0.0)
    for c in C:
        s.on_idle(c, 0.0)
    s.on_update(Update(0, 0, [np.full(3, 2.0)], 10, {}), 1.0)
    s.on_failure(1, 1.5)
    s.on_update(Update(2, 0, [np.full(3, 5.0)], 20, {}), 2.0)
    np.testing.assert_allclose(s.params[0], np.full(3, 4.0))  # (10·2 + 20·5) / 30


def test_round_timeout_drops_late_replies():
    s = Driven(FedAvg(round_timeout=10.0))
    s.start([np.zeros(3)], C[:2], 0.0)
    s.on_idle(C[0], 0.0)
    s.on_idle(C[1], 0.0)
    s.on_update(Update(0, 0, [np.full(3, 3.0)], 10, {}), 1.0)
    assert s.next_timer() == 10.0
    s.on_timer(10.0)
    np.testing.assert_allclose(s.params[0], np.full(3, 3.0))
    out = s.on_update(Update(1, 0, [np.full(3, 100.0)], 30, {}), 12.0)
    assert (out.status, out.reason) == ("rejected", "late")
    np.testing.assert_allclose(s.params[0], np.full(3, 3.0))


def test_fraction_samples_deterministically():
    picks = []
    for _ in range(2):
        s = Driven(FedAvg(fraction=0.5, seed=3))
        s.start([np.zeros(1)], [ClientInfo(i, 1, "cpu") for i in range(6)], 0.0)
        picks.append([i for i in range(6) if s.on_idle(ClientInfo(i, 1, "cpu"), 0.0) is not None])
    assert picks[0] == picks[1] and len(picks[0]) == 3


def test_equals_flowers_own_fedavg_aggregation():
    rng = np.random.default_rng(7)
    shapes = [(4, 3), (3,), (2, 2, 2)]
    replies = [([rng.normal(size=sh).astype(np.float32) for sh in shapes], n) for n in (17, 5, 41)]
    records = [RecordDict({"arrays": ArrayRecord(p), "metrics": MetricRecord({"num-examples": n})})
               for p, n in replies]
    flower = aggregate_arrayrecords(records, "num-examples").to_numpy_ndarrays()

    s = Driven(FedAvg())
    clients = [ClientInfo(i, n, "cpu") for i, (_, n) in enumerate(replies)]
    s.start([np.zeros(sh, np.float32) for sh in shapes], clients, 0.0)
    for c in clients:
        s.on_idle(c, 0.0)
    for i, (p, n) in enumerate(replies):
        s.on_update(Update(i, 0, p, n, {}), 1.0 + i)
    for ours, theirs in zip(s.params, flower):
        assert ours.dtype == theirs.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


def test_deterministic_runs_are_bit_identical():
    a, _, _ = run("fedavg")
    b, _, _ = run("fedavg")
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a.params, b.params))
    assert a.final["version"] >= 4


def test_integer_counters_take_the_plain_mean():
    s = Driven(FedAvg())
    s.start([np.zeros(2, np.float32), np.array(0, np.int64)], C[:2], 0.0)
    for c in C[:2]:
        s.on_idle(c, 0.0)
    s.on_update(Update(0, 0, [np.ones(2, np.float32), np.array(4, np.int64)], 10, {}), 1.0)
    s.on_update(Update(1, 0, [np.full(2, 5.0, np.float32), np.array(8, np.int64)], 30, {}), 2.0)
    np.testing.assert_allclose(s.params[0], [4.0, 4.0])
    assert s.params[1].dtype == np.int64 and int(s.params[1]) == 6
