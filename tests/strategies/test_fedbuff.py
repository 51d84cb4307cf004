import numpy as np

from driven import Driven
from fedhive.strategies import FedAvg, FedBuff
from fedhive.strategies.base import ClientInfo, Update
from scripted import run

C = [ClientInfo(0, 10, "cpu"), ClientInfo(1, 30, "cpu"), ClientInfo(2, 20, "cpu")]


def test_hand_checked_buffer_with_staleness():
    s = Driven(FedBuff(buffer_size=2))
    s.start([np.ones(3)], C, 0.0)
    for c in C:
        s.on_idle(c, 0.0)
    assert s.on_update(Update(0, 0, [np.array([0.0, 1.0, 2.0])], 10, {}), 1.0).status == "buffered"
    assert s.buffer_fill == 1
    assert s.on_update(Update(1, 0, [np.array([2.0, 2.0, 2.0])], 30, {}), 2.0).status == "applied"
    # acc = [1,0,-1] + [-1,-1,-1] = [0,-1,-2]; w = [1,1,1] - acc/2
    np.testing.assert_allclose(s.params[0], [1.0, 1.5, 2.0])
    assert s.version == 1
    s.on_idle(C[0], 2.0)
    # client 2 trained on version 0: tau = 1, s = 1/sqrt(2); delta = [1,1,1] - [3,1,1] = [-2,0,0]
    s.on_update(Update(2, 0, [np.array([3.0, 1.0, 1.0])], 20, {}), 3.0)
    # client 0 trained on version 1 (w1 = [1,1.5,2]): delta = [0,0,1]
    s.on_update(Update(0, 1, [np.array([1.0, 1.5, 1.0])], 10, {}), 4.0)
    np.testing.assert_allclose(s.params[0], [1.0 + 2 ** -0.5, 1.5, 1.5], rtol=1e-12)
    assert s.version == 2


def test_k1_fresh_equals_a_fedavg_step():
    buff, avg = Driven(FedBuff(buffer_size=1, server_lr=1.0)), Driven(FedAvg())
    for s in (buff, avg):
        s.start([np.array([0.5, -1.0, 2.0])], C[:1], 0.0)
        s.on_idle(C[0], 0.0)
        s.on_update(Update(0, 0, [np.array([1.5, 0.0, -3.0])], 10, {}), 1.0)
    np.testing.assert_allclose(buff.params[0], avg.params[0], rtol=1e-15)


def test_staler_update_moves_the_model_less():
    moved = []
    for stale in (False, True):
        s = Driven(FedBuff(buffer_size=1))
        s.start([np.zeros(3)], C, 0.0)
        s.on_idle(C[0], 0.0)
        s.on_idle(C[1], 0.0)
        s.on_update(Update(0, 0, [np.zeros(3)], 10, {}), 1.0)  # version 1, model unchanged
        if stale:
            s.on_update(Update(1, 0, [np.ones(3)], 30, {}), 2.0)  # tau = 1
        else:
            s.on_idle(C[0], 1.0)
            s.on_update(Update(0, 1, [np.ones(3)], 10, {}), 2.0)  # tau = 0
        moved.append(s.params[0][0])
    assert moved[1] < moved[0]


def test_max_staleness_rejects_and_leaves_the_model():
    s = Driven(FedBuff(buffer_size=1, max_staleness=0))
    s.start([np.zeros(3)], C, 0.0)
    s.on_idle(C[0], 0.0)
    s.on_idle(C[1], 0.0)
    s.on_update(Update(0, 0, [np.ones(3)], 10, {}), 1.0)
    before = s.params[0].copy()
    out = s.on_update(Update(1, 0, [np.full(3, 9.0)], 30, {}), 2.0)
    assert (out.status, out.reason) == ("rejected", "stale")
    np.testing.assert_array_equal(s.params[0], before)
    assert s.version == 1


def test_max_concurrency_parks_clients_until_a_slot_frees():
    s = Driven(FedBuff(max_concurrency=1))
    s.start([np.zeros(3)], C, 0.0)
    assert s.on_idle(C[0], 0.0) is not None
    epoch = s.wake_epoch
    assert s.on_idle(C[1], 0.0) is None
    s.on_update(Update(0, 0, [np.zeros(3)], 10, {}), 1.0)
    assert s.wake_epoch != epoch
    assert s.on_idle(C[1], 1.0) is not None


def test_server_momentum():
    s = Driven(FedBuff(buffer_size=1, server_lr=1.0, server_momentum=0.5))
    s.start([np.zeros(1)], C[:1], 0.0)
    s.on_idle(C[0], 0.0)
    s.on_update(Update(0, 0, [np.ones(1)], 10, {}), 1.0)  # m = -1, w = 1
    s.on_idle(C[0], 1.0)
    s.on_update(Update(0, 1, [np.full(1, 2.0)], 10, {}), 2.0)  # m = 0.5·(-1) + (-1) = -1.5, w = 2.5
    np.testing.assert_allclose(s.params[0], [2.5])


def test_deterministic_runs_are_bit_identical():
    a, _, _ = run("fedbuff", {"buffer_size": 2})
    b, _, _ = run("fedbuff", {"buffer_size": 2})
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a.params, b.params))
    assert a.final["version"] > 10


def test_gauges_report_the_buffer_fill():
    s = Driven(FedBuff(buffer_size=3))
    s.start([np.zeros(3)], C, 0.0)
    assert s.gauges() == {"weights_clamped": 0.0, "buffer_fill": 0.0}
    for c in C:
        s.on_idle(c, 0.0)
    s.on_update(Update(0, 0, [np.ones(3)], 10, {}), 1.0)
    assert s.gauges() == {"weights_clamped": 0.0, "buffer_fill": 1.0}
    s.on_update(Update(1, 0, [np.ones(3)], 30, {}), 2.0)
    assert s.gauges() == {"weights_clamped": 0.0, "buffer_fill": 2.0} and s.version == 0
    s.on_failure(2, 2.5)                                   # a failure adds nothing to the buffer
    assert s.gauges() == {"weights_clamped": 0.0, "buffer_fill": 2.0}
    s.on_idle(C[2], 3.0)
    assert s.on_update(Update(2, 0, [np.ones(3)], 20, {}), 4.0).status == "applied"
    assert s.gauges() == {"weights_clamped": 0.0, "buffer_fill": 0.0} and s.version == 1


def test_delta_is_taken_against_the_model_in_the_dispatch_record():
    """FedBuff keeps no model history: Δ = w(sent) − w_i uses the engine's record, whatever the client claims."""
    from fedhive.strategies.base import Dispatch

    s = FedBuff(buffer_size=1)
    s.start([np.zeros(3)], C, 0.0)
    task = s.on_idle(C[0], 0.0)
    sent = Dispatch(0, task, 0.0, [np.full(3, 2.0)])      # the record says the task went out with w = [2, 2, 2]
    s.on_update(Update(0, None, [np.full(3, 1.5)], 10, {}), sent, 1.0)
    np.testing.assert_allclose(s.params[0], np.full(3, -0.5))  # w − (w(sent) − w_i) = 0 − (2 − 1.5)
    assert s.version == 1


def test_wakeups_are_tracked_only_with_a_concurrency_cap():
    assert FedBuff().tracks_wakeups is False
    s = FedBuff()
    s.start([np.zeros(1)], C, 0.0)
    assert s.wake_epoch is None                            # no cap: nothing is ever parked, ask always
    capped = FedBuff(max_concurrency=2)
    capped.start([np.zeros(1)], C, 0.0)
    assert capped.tracks_wakeups is True and isinstance(capped.wake_epoch, int)
