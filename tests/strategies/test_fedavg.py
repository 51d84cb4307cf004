import numpy as np
import pytest
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


FLEET = [ClientInfo(i, 1, "cpu") for i in range(10)]


@pytest.mark.parametrize("n, fraction, min_sample", [(10, 0.5, 1), (10, 0.25, 1), (10, 0.05, 1), (10, 0.05, 3),
                                                     (7, 0.5, 2), (3, 1.0, 1), (10, 0.99, 1)])
def test_a_round_samples_as_many_clients_as_flowers_fedavg(n, fraction, min_sample):
    """Flower: sample_size = max(int(N · fraction_train), min_train_nodes) of the N connected nodes."""
    s = Driven(FedAvg(fraction=fraction, min_sample=min_sample, seed=1))
    s.start([np.zeros(1)], FLEET[:n], 0.0)
    got = [c.node_id for c in FLEET[:n] if s.on_idle(c, 0.0) is not None]
    assert len(got) == max(int(n * fraction), min_sample)


def test_the_sample_is_drawn_from_all_connected_clients_busy_ones_included():
    """A client still running a task of a round its deadline closed is sampled like the others (Flower samples
    get_node_ids()): it gets this round's task when its late one ends, and the round waits for it."""
    s = Driven(FedAvg(round_timeout=10.0))
    s.start([np.zeros(3)], C[:2], 0.0)
    s.on_idle(C[0], 0.0)
    s.on_idle(C[1], 0.0)
    s.on_update(Update(0, 0, [np.full(3, 2.0)], 10, {}), 1.0)
    s.on_timer(10.0)                                        # round 2: client 1 still runs round 1's task
    assert s.round == 2 and s.on_idle(C[0], 10.0) is not None
    s.on_update(Update(0, 1, [np.full(3, 4.0)], 10, {}), 11.0)
    assert s.round == 2                                     # waits for client 1, sampled although busy
    assert s.on_update(Update(1, 0, [np.full(3, 9.0)], 30, {}), 12.0).reason == "late"
    task = s.on_idle(C[1], 12.0)
    assert task is not None and task.config["round"] == 2
    s.on_update(Update(1, 1, [np.full(3, 8.0)], 30, {}), 13.0)
    assert s.round == 3
    np.testing.assert_allclose(s.params[0], np.full(3, (10 * 4.0 + 30 * 8.0) / 40))


def test_a_failed_client_gets_no_second_task_in_the_round():
    s = Driven(FedAvg())
    s.start([np.zeros(3)], C, 0.0)
    for c in C:
        s.on_idle(c, 0.0)
    s.on_failure(1, 0.5)
    assert s.on_idle(C[1], 0.5) is None                     # the round goes on without it
    s.on_update(Update(0, 0, [np.ones(3)], 10, {}), 1.0)
    s.on_update(Update(2, 0, [np.ones(3)], 20, {}), 2.0)
    assert s.round == 2 and s.on_idle(C[1], 2.0).config["round"] == 2


def test_a_client_that_joins_mid_round_waits_for_the_next():
    s = Driven(FedAvg())
    s.start([np.zeros(3)], C[:2], 0.0)
    s.on_idle(C[0], 0.0)
    assert s.on_idle(C[2], 0.1) is None                     # not in the round's sample, taken at its start
    s.on_idle(C[1], 0.2)
    s.on_update(Update(0, 0, [np.ones(3)], 10, {}), 1.0)
    s.on_update(Update(1, 0, [np.ones(3)], 30, {}), 2.0)
    assert [s.on_idle(c, 2.0).config["round"] for c in C] == [2, 2, 2]


def test_a_round_waits_until_min_sample_clients_are_connected():
    s = Driven(FedAvg(min_sample=2))
    s.start([np.zeros(3)], C[:1], 0.0)
    assert s.on_idle(C[0], 0.0) is None                     # one connected, two needed
    assert s.on_idle(C[1], 1.0) is not None                 # the second joins: the round samples both
    assert s.on_idle(C[0], 1.0) is not None


def test_a_sampled_client_that_never_asks_is_dropped_at_the_first_reply_or_when_it_leaves():
    s = Driven(FedAvg())
    s.start([np.zeros(3)], C, 0.0)
    s.on_idle(C[0], 0.0)
    s.on_idle(C[1], 0.0)                                    # client 2 never asks (gone, the engine unaware)
    s.on_update(Update(0, 0, [np.ones(3)], 10, {}), 1.0)   # the first reply drops it from the round
    s.on_update(Update(1, 0, [np.ones(3)], 30, {}), 2.0)
    assert s.round == 2
    s.on_idle(C[0], 2.0)
    s.on_idle(C[1], 2.0)
    s.on_failure(0, 3.0)
    s.on_failure(1, 3.0)                                    # no reply yet: the round still waits for client 2
    assert s.round == 2
    s.strategy.on_leave(2, 4.0)                             # the engine says it left: nobody to wait for
    assert s.round == 3 and s.version == 1                  # no reply: the model is unchanged, a new round


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
