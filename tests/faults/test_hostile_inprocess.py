"""Hostile replies through the in-process engine path: every strategy, every mutation kind, the invariants."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedhive.engine import Orchestrator
from fedhive.faults import inprocess
from fedhive.faults import mutations as M
from fedhive.strategies import STRATEGIES
from fedhive.strategies.base import Update
from fedhive.strategies.validation import Rejection


def _clean(t: inprocess.Tally) -> dict:
    return {"crashes": t.crashes, "applied_twice": t.applied_twice, "accepted_malformed": dict(t.accepted_malformed),
            "model_changes_from_rejected": t.model_changes_from_rejected, "non_finite_models": t.non_finite_models}


ZERO = {"crashes": 0, "applied_twice": 0, "accepted_malformed": {}, "model_changes_from_rejected": 0,
        "non_finite_models": 0}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_no_hostile_reply_crashes_is_taken_twice_or_changes_the_model(strategy):
    t = inprocess.run(strategy, 1500, seed=1)
    assert _clean(t) == ZERO, (t.crash_traces[:1], t.summary())
    assert t.hostile >= 1500 and len(t.by_kind) == len(M.KINDS) + 1  # every kind was sent
    assert t.honest_applied > 100 and t.versions > 10                 # the honest clients still train the model
    assert sum(t.rejected.values()) >= sum(n for k, n in t.by_kind.items() if k in M.MUST_REJECT)


def test_the_checks_catch_an_engine_that_takes_everything(monkeypatch):
    """Without validation the same run must show accepted malformed replies, crashes or a poisoned model."""
    monkeypatch.setattr(Orchestrator, "_validate",
                        lambda self, ev, d: None if d is not None else Rejection("unknown_task", ""))
    t = inprocess.run("fedasync", 300, seed=1)
    assert t.crashes > 0 or sum(t.accepted_malformed.values()) > 0 or t.non_finite_models > 0


def test_each_mutation_differs_from_the_honest_reply():
    rng = np.random.default_rng(0)
    honest = Update(1, 0, [np.zeros(4, np.float32), np.ones((2, 4), np.float32)], 10, {"loss": 1.0})
    for kind in M.KINDS:
        u = M.mutate(kind, honest, 5, rng)
        same = (u.node_id, u.base_version, u.num_examples, u.metrics) == (1, 0, 10, {"loss": 1.0}) and \
            type(u.params) is list and len(u.params) == 2 and \
            all(type(a) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
                for a, b in zip(u.params, honest.params))
        assert not same, kind


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strategy=st.sampled_from(sorted(STRATEGIES)), seed=st.integers(0, 2 ** 16),
       hostile_clients=st.integers(1, 7))
def test_any_mix_of_hostile_clients_keeps_the_invariants(strategy, seed, hostile_clients):
    t = inprocess.run(strategy, 80, clients=8, hostile_clients=hostile_clients, seed=seed)
    assert _clean(t) == ZERO, (t.crash_traces[:1], t.summary())
