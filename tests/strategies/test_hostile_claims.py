"""Untrusted claims (issue 14): a client's self-reported size never dominates, weights are over the live fleet,
and an absurd update can be refused (``max_update_norm``)."""

import math

import numpy as np
import pytest

from fedhive.strategies import build
from fedhive.strategies.base import ClientInfo, Dispatch, Update, weight_cap

WEIGHTED = ["fedavg", "fedfix", "fedcompass"]  # the strategies that weight by num_examples
KW = {"fedcompass": {"q_min": 5, "q_max": 20, "speed_model": "per_step"}}


def _started(name, clients, **kw):
    s = build(name, {**KW.get(name, {}), **kw})
    s.start([np.zeros(3, np.float32)], clients, 0.0)
    return s


def test_weight_cap_is_k_times_the_lower_median_of_the_positive_claims():
    assert weight_cap([100, 100, 100, 2**62], 10.0) == 1000.0
    assert weight_cap([0, 0, 50, 70], 2.0) == 100.0          # unknown sizes (0) are no claim
    assert weight_cap([10, 1000], 10.0) == 100.0             # lower median: the larger claim alone carries nothing
    assert weight_cap([0, 0], 10.0) is None and weight_cap([], 10.0) is None
    assert weight_cap([1, 2**62], 0.0) is None                # 0 turns the clamp off


@pytest.mark.parametrize("name", WEIGHTED)
@pytest.mark.parametrize("claim", [2**62, int(1e308)])
def test_a_huge_profile_claim_is_clamped(name, claim):
    clients = [ClientInfo(i, 100, "cpu") for i in range(5)] + [ClientInfo(5, claim, "cpu")]
    s = _started(name, clients)
    assert s._weight(5) == pytest.approx(1000 / 1500)        # min(claim, 10 × 100) over 5·100 + 1000
    assert s._weight(0) == pytest.approx(100 / 1500)
    assert math.fsum(s._weight(i) for i in range(6)) == pytest.approx(1.0)
    assert s.clamped >= 1 and s.gauges()["weights_clamped"] == float(s.clamped)
    off = _started(name, clients, max_weight_ratio=0)
    assert off._weight(0) < 1e-15                             # without the clamp the liar is everything


@pytest.mark.parametrize("name", WEIGHTED)
def test_honest_weights_are_exactly_the_unclamped_ones(name):
    clients = [ClientInfo(i, 10 * (i % 5 + 1), "cpu") for i in range(10)]
    s, off = _started(name, clients), _started(name, clients, max_weight_ratio=0)
    assert [s._weight(i) for i in range(10)] == [off._weight(i) for i in range(10)]
    assert s.clamped == 0


def _fedavg_round(s, replies):
    """Every client asks, then replies ``(params, num_examples)``; returns the outcomes."""
    tasks = {c: s.on_idle(s.clients[c], 0.0) for c in replies}
    out = []
    for k, (c, (p, n)) in enumerate(replies.items()):
        d = Dispatch(k, tasks[c], 0.0, s.params)
        out.append(s.on_update(Update(c, tasks[c].version, p, n), d, 1.0))
    return out


def test_fedavg_a_reply_claiming_2_62_examples_does_not_become_the_model():
    clients = [ClientInfo(i, 100, "cpu") for i in range(4)]
    replies = {i: ([np.full(3, float(i + 1), np.float32)], 100) for i in range(3)}
    replies[3] = ([np.full(3, 1000.0, np.float32)], 2**62)
    s = _started("fedavg", clients)
    assert _fedavg_round(s, replies)[-1].status == "applied"
    expected = (100 * 1 + 100 * 2 + 100 * 3 + 1000 * 1000) / 1300  # the liar weighs min(2**62, 10 × 100)
    np.testing.assert_allclose(s.params[0], expected, rtol=1e-6)
    assert s.clamped == 1
    off = _started("fedavg", clients, max_weight_ratio=0)
    _fedavg_round(off, replies)
    np.testing.assert_array_equal(off.params[0], np.full(3, 1000.0, np.float32))  # what the fix prevents


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, "10", None, True])
def test_max_weight_ratio_is_checked(bad):
    with pytest.raises(ValueError, match="max_weight_ratio must be a finite number >= 0.0"):
        build("fedfix", {"max_weight_ratio": bad})


# ------------------------------------------------------------------ the live fleet
@pytest.mark.parametrize("name", WEIGHTED)
def test_churn_keeps_the_live_total_weight_and_the_step(name):
    """10 restarts of each of 6 devices, each under a new node id: the live weights still sum to 1."""
    s = _started(name, [ClientInfo(i, 50, "cpu") for i in range(6)])
    fresh = s._weight(0)
    ids = list(range(6))
    nxt = 6
    for _ in range(10):
        for k, old in enumerate(ids):
            s.on_leave(old, 0.0)
            s.on_idle(ClientInfo(nxt, 50, "cpu"), 0.0)
            ids[k] = nxt
            nxt += 1
    assert math.fsum(s._weight(i) for i in ids) == pytest.approx(1.0)
    assert all(s._weight(i) == fresh for i in ids)          # the step a client makes is unchanged
    assert s._weight(0) == 0.0                               # a client that left weighs nothing
    s.on_idle(ClientInfo(0, 50, "cpu"), 0.0)                 # ... until it comes back
    assert s._weight(0) == pytest.approx(1 / 7)
    s.on_leave(12345, 0.0)                                   # an unknown client is ignored
    s.on_leave(0, 0.0)
    s.on_leave(0, 0.0)                                       # so is one already gone
    assert s._weight(ids[0]) == fresh


def test_the_live_fleet_survives_a_checkpoint():
    s = _started("fedfix", [ClientInfo(i, 10 * (i + 1), "cpu") for i in range(4)])
    s.on_leave(3, 0.0)
    t = build("fedfix", {})
    t.load_state_dict(s.state_dict())
    assert [t._weight(i) for i in range(4)] == [s._weight(i) for i in range(4)] == [1 / 6, 2 / 6, 3 / 6, 0.0]


def test_an_old_checkpoint_without_the_live_fleet_loads():
    s = _started("fedfix", [ClientInfo(i, 10, "cpu") for i in range(2)])
    state = s.state_dict()
    for key in ("gone", "clamped", "norm_rejected"):
        del state[key]
    t = build("fedfix", {})
    t.load_state_dict(state)
    assert t._weight(0) == 0.5 and t.clamped == 0


# ------------------------------------------------------------------ max_update_norm
@pytest.mark.parametrize("name,kw", [("fedasync", {}), ("fedbuff", {"buffer_size": 1})])
def test_max_update_norm_rejects_an_absurd_update_and_keeps_the_model(name, kw):
    s = build(name, {**kw, "max_update_norm": 10.0})
    s.start([np.ones(4, np.float32)], [ClientInfo(1, 10, "cpu")], 0.0)
    task = s.on_idle(s.clients[1], 0.0)
    d = Dispatch(0, task, 0.0, s.params)
    before = [p.copy() for p in s.params]
    out = s.on_update(Update(1, 0, [np.full(4, 3e30, np.float32)], 10), d, 1.0)
    assert (out.status, out.reason) == ("rejected", "update_norm")
    assert s.norm_rejected == 1 and s.version == 0
    np.testing.assert_array_equal(s.params[0], before[0])
    task = s.on_idle(s.clients[1], 1.0)                       # an ordinary update still goes through
    out = s.on_update(Update(1, 0, [np.full(4, 2.0, np.float32)], 10), Dispatch(1, task, 1.0, s.params), 2.0)
    assert out.status == "applied" and s.version == 1 and s.norm_rejected == 1


def test_max_update_norm_is_off_by_default():
    s = build("fedasync", {})
    s.start([np.ones(2, np.float32)], [ClientInfo(1, 10, "cpu")], 0.0)
    task = s.on_idle(s.clients[1], 0.0)
    out = s.on_update(Update(1, 0, [np.full(2, 1e30, np.float32)], 10), Dispatch(0, task, 0.0, s.params), 1.0)
    assert out.status == "applied" and s.max_update_norm is None


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "1"])
def test_max_update_norm_is_checked(bad):
    with pytest.raises(ValueError, match="max_update_norm must be a finite number > 0.0"):
        build("fedasync", {"max_update_norm": bad})
