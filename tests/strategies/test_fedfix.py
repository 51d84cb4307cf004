import numpy as np
import pytest

from driven import Driven
from fedhive.strategies import FedAvg, FedFix
from fedhive.strategies.base import ClientInfo, Update
from fedhive.strategies.fedfix import interval_weight
from fedhive.engine import StopCondition
from scripted import run

C = [ClientInfo(0, 10, "gpu"), ClientInfo(1, 30, "rpi4")]  # p = 0.25, 0.75


def test_interval_weight_formula():
    assert interval_weight(0.5, 1.0, 0.25) == 0.25
    assert interval_weight(1.5, 1.0, 0.75) == 1.5
    assert interval_weight(3.0, 1.0, 0.1) == pytest.approx(0.3)
    assert interval_weight(1.0 + 1e-13, 1.0, 1.0) == 1.0  # a duration equal to Δt up to rounding is one interval


def test_interval_aggregation_hand_checked():
    s = Driven(FedFix(interval=1.0))
    s.start([np.zeros(3)], C, 0.0)
    s.on_idle(C[0], 0.0)
    s.on_idle(C[1], 0.0)
    assert s.next_timer() == 1.0
    assert s.on_update(Update(0, 0, [np.ones(3)], 10, {}), 0.5).status == "buffered"
    assert s.on_idle(C[0], 0.5) is None  # waits for the aggregation
    s.on_timer(1.0)
    np.testing.assert_allclose(s.params[0], np.full(3, 0.25))  # d_0 = ceil(0.5/1)·0.25
    assert s.version == 1 and s.next_timer() == 2.0
    assert s.on_idle(C[0], 1.0).version == 1
    s.on_update(Update(0, 1, [np.full(3, 1.25)], 10, {}), 1.5)  # delta +1 from w1
    s.on_update(Update(1, 0, [np.full(3, 2.0)], 30, {}), 1.5)  # delta +2 from w0, τ=1.5 → d = 2·0.75
    s.on_timer(2.0)
    np.testing.assert_allclose(s.params[0], np.full(3, 0.25 + 0.25 * 1 + 1.5 * 2))
    assert s.version == 2


def test_empty_interval_changes_nothing():
    s = Driven(FedFix(interval=1.0))
    s.start([np.zeros(3)], C, 0.0)
    s.on_idle(C[0], 0.0)
    s.on_timer(1.0)
    s.on_timer(2.0)
    assert s.version == 0 and s.next_timer() == 3.0
    np.testing.assert_array_equal(s.params[0], np.zeros(3))


def test_equal_durations_and_interval_equal_fedavg():
    init = [np.array([0.5, -1.0, 2.0])]
    models = {0: np.array([1.0, 2.0, 3.0]), 1: np.array([-2.0, 0.0, 4.0])}
    fix, avg = Driven(FedFix(interval=2.0)), Driven(FedAvg())
    for s in (fix, avg):
        s.start(init, C, 0.0)
        for c in C:
            s.on_idle(c, 0.0)
        for i in (0, 1):
            s.on_update(Update(i, 0, [models[i]], C[i].num_examples, {}), 2.0)
    fix.on_timer(2.0)
    np.testing.assert_allclose(fix.params[0], avg.params[0], rtol=1e-12)


def test_default_interval_is_half_the_median_of_first_returns():
    s = Driven(FedFix())
    s.start([np.zeros(3)], C, 0.0)
    s.on_idle(C[0], 0.0)
    s.on_idle(C[1], 0.0)
    assert s.next_timer() is None and s.current_interval is None
    s.on_update(Update(0, 0, [np.ones(3)], 10, {}), 2.0)
    assert s.on_idle(C[0], 2.0) is None
    assert s.on_update(Update(1, 0, [np.ones(3)], 30, {}), 6.0).status == "applied"
    assert s.current_interval == pytest.approx(0.5 * 4.0)  # median of (2, 6) = 4
    assert s.next_timer() == pytest.approx(8.0)


def test_deterministic_runs_are_bit_identical():
    a, _, _ = run("fedfix", stop=StopCondition(max_time=40.0))
    b, _, _ = run("fedfix", stop=StopCondition(max_time=40.0))
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a.params, b.params))
    assert a.final["version"] > 5
