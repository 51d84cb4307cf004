"""A client that lies about its size, through the whole engine (issue 14): it is clamped, never the whole model.

Claims above ``MAX_NUM_EXAMPLES`` are refused by the engine (see test_orchestrator); these claim the most the engine
accepts, ``2**31 - 1``, and the strategy's ``max_weight_ratio`` clamp keeps the liar from carrying the model.
"""

import numpy as np
import pytest

from fedhive.engine import Orchestrator, StopCondition, VirtualTransport
from fedhive.strategies import build
from fedhive.strategies.base import ClientInfo, Update
from fedhive.strategies.validation import MAX_NUM_EXAMPLES
from scripted import durations, pull_toward, scenario

LIAR = 3


def _liar_run(strategy, params, profile_claim=None):
    cls, targets, speeds, init = scenario()
    good = pull_toward(targets)
    if profile_claim is not None:  # the liar's profile claims it too (what FedCompass and FedFix weight by)
        cls = [ClientInfo(c.node_id, profile_claim, c.device_class) if c.node_id == LIAR else c for c in cls]

    def train(node, task_id, task, p):
        u = good(node, task_id, task, p)
        if node != LIAR:
            return u
        return Update(node, u.base_version, [np.full_like(a, 100.0) for a in p], MAX_NUM_EXAMPLES, {})

    s = build(strategy, params)
    res = Orchestrator(s, VirtualTransport(cls, durations(speeds), train), stop=StopCondition(max_time=40.0)).run(init)
    return s, res


def test_fedavg_a_client_claiming_the_most_examples_is_clamped():
    s, res = _liar_run("fedavg", {})
    assert res.counters.get("rejected", 0) == 0 and res.final["version"] > 3
    assert s.clamped > 0
    # Fleet sizes 10, 20, 30, 40: the liar weighs at most 10 × 20 = 200 of 260 per round, not everything.
    assert float(np.max(res.params[0])) < 90.0
    off, res_off = _liar_run("fedavg", {"max_weight_ratio": 0})
    np.testing.assert_allclose(res_off.params[0], 100.0, rtol=1e-6)  # what the clamp prevents


@pytest.mark.parametrize("strategy,params", [("fedfix", {}),
                                             ("fedcompass", {"q_min": 5, "q_max": 20, "speed_model": "per_step"})])
def test_a_profile_claiming_the_most_examples_is_clamped(strategy, params):
    s, res = _liar_run(strategy, params, profile_claim=MAX_NUM_EXAMPLES)
    assert s.clamped > 0 and res.final["version"] > 3
    assert s._weight(LIAR) == pytest.approx(200 / 260)        # min(claim, 10 × lower median 20) over 10+20+30+200
