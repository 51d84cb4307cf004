import numpy as np
import pytest

from fedhive.strategies import FedAsync
from driven import Driven
from fedhive.strategies.base import ClientInfo, Update
from scripted import run

C = [ClientInfo(0, 10, "cpu"), ClientInfo(1, 30, "cpu")]


def start(**kw):
    s = Driven(FedAsync(**kw))
    s.start([np.zeros(3)], C, 0.0)
    for c in C:
        assert s.on_idle(c, 0.0).version == 0
    return s


def test_hand_checked_mixing():
    s = start(alpha=0.6)
    assert s.on_update(Update(0, 0, [np.array([1.0, 2.0, 3.0])], 10, {}), 1.0).status == "applied"
    np.testing.assert_allclose(s.params[0], [0.6, 1.2, 1.8])
    assert s.version == 1
    # client 1 trained on version 0: tau = 1, s = 2^-0.5, alpha_t = 0.6 / sqrt(2) = 0.4242640687
    s.on_update(Update(1, 0, [np.array([3.0, 3.0, 3.0])], 30, {}), 2.0)
    np.testing.assert_allclose(s.params[0], [1.6182337649, 1.9636753237, 2.3091168824], rtol=1e-9)
    assert s.version == 2


def test_alpha_one_fresh_update_returns_the_client_model():
    s = start(alpha=1.0)
    s.on_update(Update(0, 0, [np.array([4.0, -1.0, 2.5])], 10, {}), 1.0)
    np.testing.assert_array_equal(s.params[0], [4.0, -1.0, 2.5])


def test_staler_update_moves_the_model_less():
    fresh, stale = start(), start()
    for s in (fresh, stale):
        s.on_update(Update(0, 0, [np.zeros(3)], 10, {}), 1.0)
        s.on_idle(C[0], 1.0)
    fresh.on_update(Update(0, 1, [np.ones(3)], 10, {}), 2.0)  # tau = 0
    stale.on_update(Update(1, 0, [np.ones(3)], 30, {}), 2.0)  # tau = 1
    assert stale.params[0][0] < fresh.params[0][0]


def test_non_trainable_takes_the_client_value():
    s = Driven(FedAsync(alpha=0.5, non_trainable=[1]))
    s.start([np.zeros(2), np.zeros(2)], C, 0.0)
    s.on_idle(C[0], 0.0)
    s.on_update(Update(0, 0, [np.ones(2), np.full(2, 7.0)], 10, {}), 1.0)
    np.testing.assert_array_equal(s.params[0], [0.5, 0.5])
    np.testing.assert_array_equal(s.params[1], [7.0, 7.0])


def test_proximal_term_travels_in_the_task():
    s = FedAsync(proximal_mu=0.1, local_steps=7)
    s.start([np.zeros(3)], C, 0.0)
    assert s.on_idle(C[0], 0.0).config == {"local_steps": 7, "proximal_mu": 0.1}


def test_global_model_is_read_only():
    s = start()
    with pytest.raises(ValueError):
        s.params[0][0] = 1.0


def test_deterministic_runs_are_bit_identical():
    a, _, _ = run("fedasync")
    b, _, _ = run("fedasync")
    for x, y in zip(a.params, b.params):
        assert x.tobytes() == y.tobytes()
    assert a.final["version"] > 20
