"""Shared pieces: staleness functions, the weighted-sum kernel, build()."""

import warnings

import numpy as np
import pytest

from fedhive.strategies import STRATEGIES, build, parameters
from fedhive.strategies import weighted_sum as ws
from fedhive.strategies.staleness import hinge, make_staleness, polynomial


@pytest.mark.parametrize("kind,a,b", [("polynomial", 0.5, None), ("polynomial", 2.0, None), ("hinge", 10.0, 4.0),
                                      ("hinge", 1.0, 0.0)])
def test_staleness_decreases_with_tau(kind, a, b):
    s = make_staleness(kind, a, b)
    values = [s(t) for t in range(50)]
    assert values[0] == 1.0
    assert all(x >= y for x, y in zip(values, values[1:]))
    assert values[-1] < 1.0  # the sign is pinned: stale updates weigh less, never more


def test_staleness_hand_values():
    assert polynomial(3, 0.5) == pytest.approx(0.5)
    assert polynomial(0, 0.5) == 1.0
    assert hinge(4, 10, 4) == 1.0
    assert hinge(6, 10, 4) == pytest.approx(1 / 21)
    assert make_staleness("constant")(100) == 1.0
    with pytest.raises(ValueError, match="constant, polynomial, hinge"):
        make_staleness("exp")


@pytest.mark.parametrize("size", [1, 7, ws.SMALL, ws.SMALL + 1, ws.BLOCK - 1, ws.BLOCK, 3 * ws.BLOCK + 5])
def test_weighted_sum_matches_naive(size):
    rng = np.random.default_rng(size)
    xs = [[rng.normal(size=size).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32)] for _ in range(4)]
    cs = [0.5, -0.25, 2.0, 1e-3]
    got = ws.weighted_sum(list(zip(cs, xs)))
    for t in range(2):
        want = sum(np.float64(c) * x[t].astype(np.float64) for c, x in zip(cs, xs))
        np.testing.assert_allclose(got[t], want, rtol=1e-5, atol=1e-6)
        assert got[t].dtype == np.float32
    # accumulate adds to what is there; out is written in place
    out = [np.ones(size, np.float32), np.ones((2, 3), np.float32)]
    res = ws.weighted_sum([(1.0, xs[0])], out=out, accumulate=True)
    assert res is out
    np.testing.assert_allclose(out[0], 1 + xs[0][0], rtol=1e-6)


def test_weighted_sum_only_touches_indices():
    a = [np.full(3, 2.0), np.full(2, 5.0)]
    out = [np.zeros(3), np.full(2, -1.0)]
    ws.weighted_sum([(0.5, a)], out=out, indices=[0])
    np.testing.assert_array_equal(out[0], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(out[1], [-1.0, -1.0])


def test_mean_of_rounds_integers():
    assert ws.mean_of([np.array([1, 2]), np.array([2, 2])]).tolist() == [2, 2]  # 1.5 rounds half to even -> 2
    np.testing.assert_allclose(ws.mean_of([np.array([1.0, 2.0]), np.array([2.0, 4.0])]), [1.5, 3.0])


def test_build_every_strategy_by_name():
    for name in STRATEGIES:
        s = build(name, {})
        assert s.name == name
        assert "local_steps" in parameters(name) or name == "fedcompass"


def test_build_rejects_unknown_names_and_parameters():
    with pytest.raises(ValueError, match="fedavg, fedasync, fedbuff, fedfix, fedcompass, fedasmu"):
        build("fedprox", {})
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) buffer for strategy 'fedbuff'; valid: .*buffer_size"):
        build("fedbuff", {"buffer": 3})
    with pytest.raises(ValueError, match="alpha must be"):
        build("fedasync", {"alpha": 1.5})
    with pytest.raises(ValueError, match="staleness must be one of constant, polynomial, hinge"):
        build("fedbuff", {"staleness": "linear"})


def test_build_accepts_snake_case_parameters_from_the_spec():
    s = build("fedasync", {"staleness": "polynomial", "staleness_a": 0.5, "alpha": 0.6})
    assert s.config()["alpha"] == 0.6
    build("fedbuff", {"buffer_size": 5, "server_lr": 0.5, "max_staleness": 10, "max_concurrency": 4})
    build("fedfix", {"interval": 2.0, "duration_momentum": 0.5})
    build("fedcompass", {"q_min": 10, "q_max": 50, "lam": 1.2, "speed_model": "per_step"})


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("size", [10, 40, 70_000])  # the tiny path, the isfinite path and the sum path
def test_all_finite_sees_every_bad_value_and_no_false_alarm(dtype, size):
    from fedhive.strategies.validation import all_finite

    big = np.finfo(dtype).max
    ok = np.full((size // 5, 5), big, dtype)  # finite values whose sum overflows: the exact check must clear them
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no floating-point warning escapes
        assert all_finite(ok) and all_finite(-ok) and all_finite(np.zeros(0, dtype))
        for bad in (np.nan, np.inf, -np.inf):
            a = np.ones(size, dtype)
            a[size // 3] = bad
            assert not all_finite(a)
        mixed = np.ones(size, dtype)
        mixed[:2] = [np.inf, -np.inf]  # sums to NaN
        assert not all_finite(mixed)
    assert all_finite(np.array([2**62, 2**62], np.int64))  # integer tensors hold no NaN


@pytest.mark.parametrize("strategy", ["fedasync", "fedbuff", "fedfix"])
def test_a_shared_task_config_is_never_changed_by_the_engine(strategy):
    """FedAsync, FedBuff and FedFix hand one read-only config dict to every task; nothing along the way edits it."""
    from fedhive.server.orchestrator import Orchestrator, StopCondition
    from fedhive.sim.virtual import VirtualTransport
    from scripted import durations, pull_toward, scenario

    cls, targets, speeds, init = scenario(4)
    configs = []
    inner = pull_toward(targets)

    def train(node, task_id, task, params):
        configs.append(task.config)
        return inner(node, task_id, task, params)

    orch = Orchestrator(build(strategy, {"local_steps": 7}), VirtualTransport(cls, durations(speeds, 0.3), train),
                        stop=StopCondition(max_time=30.0))
    assert orch.run(init).final["client_updates"] > 10
    assert len({id(c) for c in configs}) == 1 and configs[0] == {"local_steps": 7}


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_all_finite_on_tiny_tensors_of_any_shape(dtype):
    from fedhive.strategies.validation import all_finite

    for shape in [(), (1,), (2, 3), (2, 2, 4)]:
        a = np.ones(shape, dtype)
        assert all_finite(a)
        for bad in (np.nan, np.inf, -np.inf):
            b = a.copy()
            b.flat[-1] = bad
            assert not all_finite(b), (shape, bad)
        assert all_finite(np.full(shape, np.finfo(dtype).max, dtype))
        assert all_finite(np.asfortranarray(np.ones(shape, dtype)).T)


def test_task_and_update_are_frozen_values():
    import dataclasses

    from fedhive.strategies.base import Task, Update

    t, u = Task(3, 7), Update(node_id=3, base_version=7, params=[], num_examples=5)
    assert t.config == {} and t.config is not Task(3, 7).config and u.metrics == {}
    assert t == Task(3, 7, {}) and t != Task(3, 8) and dataclasses.replace(t, version=8) == Task(3, 8)
    assert repr(u) == "Update(node_id=3, base_version=7, params=[], num_examples=5, metrics={})"
    for obj, name in ((t, "version"), (u, "params"), (u, "metrics")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, None)
