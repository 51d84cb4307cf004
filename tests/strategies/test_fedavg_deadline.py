"""FedAvg's round deadline defaults from observed task times (issue 14): a hung client costs a round about
``deadline_factor ×`` the expected task time, not the transport's TTL."""

import copy
import json
import math

import numpy as np
import pytest

from driven import Driven
from fedhive.strategies import FedAvg, build
from fedhive.strategies.base import ClientInfo, Update

C = [ClientInfo(i, 10 * (i + 1), "cpu") for i in range(4)]


def _started(clients=C[:3], **kw):
    s = Driven(FedAvg(**kw))
    s.start([np.zeros(3)], clients, 0.0)
    return s


def _reply(s, node, value, now):
    return s.on_update(Update(node, s.sent(node).task.version, [np.full(3, float(value))], C[node].num_examples), now)


def _first_round(s, times=(2.0, 4.0)):
    """Clients 0, 1 (and 2 if started) ask at 0 and reply after ``times``; the round closes at the last reply."""
    for c in s.clients.values():
        s.on_idle(c, 0.0)
    assert s.next_timer() is None                          # nothing observed yet: no deadline (the TTL bounds it)
    for node, t in sorted(enumerate(times), key=lambda nt: nt[1]):
        assert s.next_timer() is None
        _reply(s, node, 1.0, t)
    assert s.round == 2 and s.version == 1


def test_the_default_is_auto_with_factor_3():
    s = FedAvg()
    assert (s.round_timeout, s.deadline_factor) == ("auto", 3.0)
    assert s.config()["round_timeout"] == "auto" and s.config()["deadline_factor"] == 3.0


def test_deadline_is_factor_times_the_slowest_expected_and_a_hung_client_is_cut_at_it():
    s = _started(C[:2])
    _first_round(s, (2.0, 4.0))
    start = 4.0
    s.on_idle(C[0], start)
    s.on_idle(C[1], start)
    assert s.next_timer() == start + 3 * 4.0               # D = max(2, 4)
    # Client 1 hangs; client 0 replies: the round now waits for 1 alone, still expected at 4 s.
    assert _reply(s, 0, 5.0, start + 2.0).status == "buffered"
    assert s.next_timer() == start + 12.0
    s.on_timer(start + 11.9)
    assert s.round == 2                                     # not yet
    s.on_timer(start + 12.0)
    assert s.round == 3 and s.version == 2
    np.testing.assert_allclose(s.params[0], np.full(3, 5.0))  # the replies it had
    out = _reply(s, 1, 100.0, start + 30.0)
    assert (out.status, out.reason) == ("rejected", "late")
    np.testing.assert_allclose(s.params[0], np.full(3, 5.0))


def test_the_model_is_the_weighted_average_of_the_replies_before_the_deadline():
    s = _started(C[:3])
    _first_round(s, (2.0, 4.0, 3.0))
    for c in C[:3]:
        s.on_idle(c, 4.0)
    _reply(s, 0, 1.0, 6.0)                                  # n = 10
    _reply(s, 2, 5.0, 7.0)                                  # n = 30
    assert s.next_timer() == 4.0 + 3 * 4.0                  # client 1 (expected 4 s) is the one left
    s.on_timer(16.0)
    np.testing.assert_allclose(s.params[0], np.full(3, (10 * 1.0 + 30 * 5.0) / 40))


def test_a_client_that_replied_or_failed_no_longer_counts():
    s = _started(C[:3])
    _first_round(s, (2.0, 8.0, 3.0))
    for c in C[:3]:
        s.on_idle(c, 8.0)
    assert s.next_timer() == 8.0 + 3 * 8.0
    s.on_failure(1, 9.0)                                    # the slow one failed: D = max(2, 3)
    assert s.next_timer() == 8.0 + 3 * 3.0
    _reply(s, 2, 1.0, 10.0)                                 # D = 2 (client 0 alone)
    assert s.next_timer() == 8.0 + 3 * 2.0


def test_expected_time_is_the_largest_observed_decaying():
    s = _started(C[:2])
    _first_round(s, (2.0, 4.0))
    for c in C[:2]:
        s.on_idle(c, 4.0)
    _reply(s, 1, 1.0, 4.0 + 1.0)                            # client 1: max(1, 0.95 × 4) = 3.8 (one fast task)
    _reply(s, 0, 1.0, 4.0 + 6.0)                            # client 0: max(6, 0.95 × 2) = 6
    for c in C[:2]:
        s.on_idle(c, 10.0)
    assert s.next_timer() == pytest.approx(10.0 + 3 * 6.0)
    _reply(s, 0, 1.0, 11.0)
    assert s.next_timer() == pytest.approx(10.0 + 3 * 3.8)


def test_a_client_that_joins_mid_round_waits_then_gets_the_fleets_largest_expected_time():
    s = _started(C[:2])
    _first_round(s, (2.0, 4.0))                             # round 2 opens at 4 and samples 0 and 1
    s.on_idle(C[0], 4.0)
    s.on_idle(C[1], 4.0)
    assert s.on_idle(C[3], 4.5) is None                     # joined mid-round: the next round (as Flower's)
    _reply(s, 0, 1.0, 5.0)                                  # client 0: max(1, 0.95 × 2) = 1.9
    _reply(s, 1, 1.0, 7.0)                                  # client 1: max(3, 0.95 × 4) = 3.8; round 3 opens at 7
    for node in (3, 0, 1):
        assert s.on_idle(C[node], 7.0) is not None
    _reply(s, 1, 1.0, 8.0)
    assert s.next_timer() == pytest.approx(7.0 + 3 * 3.8)   # 3, never observed: the fleet's largest at the start


def test_deadline_factor_scales_it():
    s = _started(C[:2], deadline_factor=1.5)
    _first_round(s, (2.0, 4.0))
    s.on_idle(C[0], 4.0)
    s.on_idle(C[1], 4.0)
    assert s.next_timer() == 4.0 + 1.5 * 4.0
    _reply(s, 1, 1.0, 5.0)
    assert s.next_timer() == 4.0 + 1.5 * 2.0


def test_a_fixed_timeout_works_as_before_and_none_waits_for_all():
    s = _started(C[:2], round_timeout=10.0)
    s.on_idle(C[0], 0.0)
    s.on_idle(C[1], 0.0)
    assert s.next_timer() == 10.0                           # the first round too
    _reply(s, 0, 1.0, 2.0)
    assert s.next_timer() == 10.0
    s.on_timer(10.0)
    assert s.round == 2
    w = _started(C[:2], round_timeout=None)
    _first_round(w, (2.0, 4.0))
    w.on_idle(C[0], 4.0)
    w.on_idle(C[1], 4.0)
    _reply(w, 0, 1.0, 5.0)
    assert w.next_timer() is None
    w.on_timer(1e9)
    assert w.round == 2                                     # still waiting for client 1


@pytest.mark.parametrize("value, expected", [("auto", "auto"), (" AUTO ", "auto"), ("30", 30.0), (30, 30.0),
                                             (2.5, 2.5), (None, None)])
def test_round_timeout_accepted_values(value, expected):
    assert build("fedavg", {"round_timeout": value}).round_timeout == expected


def test_round_timeout_from_a_run_config_string():
    from fedhive.runconfig import parse_kv
    assert build("fedavg", parse_kv("round_timeout=auto", "strategy-params")).round_timeout == "auto"
    assert build("fedavg", parse_kv("round_timeout=30", "strategy-params")).round_timeout == 30.0
    assert build("fedavg", parse_kv('{"round_timeout": "30"}', "strategy-params")).round_timeout == 30.0
    assert build("fedavg", parse_kv("round_timeout=null", "strategy-params")).round_timeout is None


@pytest.mark.parametrize("bad", ["soon", "", -1, 0, 0.0, math.nan, math.inf, "inf", "nan", "-5", True, [30]])
def test_bad_round_timeout_is_refused_naming_the_accepted_values(bad):
    with pytest.raises(ValueError, match=r'round_timeout must be "auto" .*None .*finite number of seconds > 0'):
        build("fedavg", {"round_timeout": bad})


@pytest.mark.parametrize("bad", [1, 1.0, 0.5, 0, -3, math.nan, math.inf, "3", None, True])
def test_bad_deadline_factor_is_refused(bad):
    with pytest.raises(ValueError, match="deadline_factor must be a finite number > 1.0"):
        build("fedavg", {"deadline_factor": bad})


def _json(state):
    """``state`` with the strategy's own part through JSON, as a checkpoint carries it (taken between rounds)."""
    state = copy.deepcopy(state)
    assert state["strategy"]["acc"] is None
    state["strategy"] = json.loads(json.dumps(state["strategy"]))
    return state


def test_state_round_trip_keeps_the_deadline():
    s = _started(C[:2])
    _first_round(s, (2.0, 4.0))
    s.on_idle(C[0], 4.0)
    s.on_idle(C[1], 4.0)
    state = _json(s.state_dict())                           # as through a JSON checkpoint: node ids stay pairs
    assert state["strategy"]["durations"] == [[0, 2.0], [1, 4.0]]
    r = FedAvg()
    r.load_state_dict(state)
    t = s.resumed(r)
    assert t.next_timer() == s.next_timer() == 4.0 + 3 * 4.0
    _reply(t, 0, 1.0, 5.0)
    t.on_timer(16.0)
    assert t.round == 3


def test_an_old_state_without_durations_loads_and_has_no_deadline_until_observed():
    s = _started(C[:2])
    _first_round(s, (2.0, 4.0))
    s.on_idle(C[0], 4.0)
    s.on_idle(C[1], 4.0)
    state = _json(s.state_dict())
    del state["strategy"]["durations"], state["strategy"]["round_max"]
    r = FedAvg()
    r.load_state_dict(state)
    t = s.resumed(r)
    assert t.next_timer() is None
    _reply(t, 0, 1.0, 6.0)
    _reply(t, 1, 1.0, 8.0)                                  # the round closes; durations observed again
    assert t.round == 3
    t.on_idle(C[0], 8.0)
    t.on_idle(C[1], 8.0)
    assert t.next_timer() == 8.0 + 3 * 4.0
