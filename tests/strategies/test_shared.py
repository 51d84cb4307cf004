"""Shared pieces: staleness functions, the weighted-sum kernel, build()."""

import warnings

import numpy as np
import pytest

from fedhive.strategies import STRATEGIES, build, parameters
from fedhive.strategies.base import ClientInfo
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


# Sizes at every threshold of weighted_sum: the tiny path (<= SMALL), one block (<= BLOCK), several blocks, and
# FUSED_MIN, where an installed kernel (set_kernel) takes over.
WS_SIZES = [1, 7, ws.SMALL, ws.SMALL + 1, ws.FUSED_MIN - 1, ws.FUSED_MIN, ws.BLOCK - 1, ws.BLOCK, ws.BLOCK + 1,
            2 * ws.BLOCK, 3 * ws.BLOCK + 5]
WS_TOL = {np.float16: 1e-3, np.float32: 1e-6, np.float64: 1e-14}  # of max |Σ|c_k·x_k||: a few roundings


def _ws_ref(cs, xs, t, base=None):
    """Σ c_k·x_k[t] (+ base) in float64."""
    want = sum(np.float64(c) * np.asarray(x[t], np.float64) for c, x in zip(cs, xs))
    return want if base is None else want + np.asarray(base, np.float64)


def _ws_close(got, want, dtype, scale):
    assert got.dtype == dtype and got.shape == want.shape
    err = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
    assert err <= WS_TOL[dtype] * scale, (err, scale)


@pytest.mark.parametrize("size", WS_SIZES)
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


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("size", [ws.SMALL, ws.FUSED_MIN, ws.BLOCK + 1, 3 * ws.BLOCK + 5])
@pytest.mark.parametrize("k", [1, 2, 5, 12])
@pytest.mark.parametrize("accumulate", [False, True])
def test_weighted_sum_dtypes_terms_and_accumulate(dtype, size, k, accumulate):
    rng = np.random.default_rng([size, k, accumulate])
    xs = [[rng.normal(size=size).astype(dtype), rng.normal(size=(3, 5)).astype(dtype)] for _ in range(k)]
    cs = list(rng.uniform(-1.0, 1.0, size=k))
    base = [rng.normal(size=size).astype(dtype), rng.normal(size=(3, 5)).astype(dtype)]
    out = [b.copy() for b in base] if accumulate else None
    got = ws.weighted_sum(list(zip(cs, xs)), out=out, accumulate=accumulate)
    for t in range(2):
        scale = sum(abs(c) for c in cs) * 5.0 + (5.0 if accumulate else 0.0)  # |x| < 5 at these sizes
        _ws_close(got[t], _ws_ref(cs, xs, t, base[t] if accumulate else None), dtype, scale)


def test_weighted_sum_large_float32_is_at_least_as_accurate_as_sequential_rounding():
    """Blocks are added pairwise: never worse than Σ rounded term by term (what a loop of ``o += c*x`` gives)."""
    rng = np.random.default_rng(7)
    size, k = 2 * ws.BLOCK + 3, 16
    xs = [[rng.random(size, dtype=np.float32)] for _ in range(k)]
    cs = list(rng.random(k) + 0.5)
    got = ws.weighted_sum(list(zip(cs, xs)))[0].astype(np.float64)
    seq = np.zeros(size, np.float32)
    for c, x in zip(cs, xs):
        seq += x[0] * np.float32(c)
    want = _ws_ref(cs, xs, 0)
    assert np.abs(got - want).max() <= np.abs(seq - want).max()
    assert np.sqrt(np.mean((got - want) ** 2)) < np.sqrt(np.mean((seq - want) ** 2))


def test_weighted_sum_float16_sums_in_float32_and_rounds_once():
    size, k = ws.BLOCK + 10, 64
    x = np.full(size, 1.0, np.float16)
    c = 1.0 / 3.0  # float16 rounds 1/3 and every partial sum; one rounding of the float32 sum is exact here
    got = ws.weighted_sum([(c, [x])] * k)[0]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, np.float16(k / 3.0))


@pytest.mark.parametrize("size", [ws.SMALL // 2, ws.FUSED_MIN, 3 * ws.BLOCK + 5])
def test_weighted_sum_non_contiguous_inputs_and_out(size):
    rng = np.random.default_rng(size)
    cs = [0.7, -1.3, 0.2]
    rows = size // 64 + 1
    # transposed views, every other element, a column slice: none of them C-contiguous
    xs = [[rng.normal(size=(64, rows)).astype(np.float32).T, rng.normal(size=2 * size).astype(np.float32)[::2]]
          for _ in range(3)]
    xs[1][0] = rng.normal(size=(rows, 100)).astype(np.float32)[:, 10:74]
    xs[2][0] = np.asfortranarray(xs[2][0])
    got = ws.weighted_sum(list(zip(cs, xs)))
    for t in range(2):
        assert got[t].flags.c_contiguous
        _ws_close(got[t], _ws_ref(cs, xs, t), np.float32, 10.0)
    # non-contiguous out, accumulated into in place: the very arrays passed are updated
    big = [np.ones((rows, 128), np.float32), np.ones(2 * size, np.float32)]
    out = [big[0][:, 32:96], big[1][1::2]]  # a column block (no 1-D view of it exists), every other element
    res = ws.weighted_sum(list(zip(cs, xs)), out=out, accumulate=True)
    assert res is out and res[0].base is big[0] and res[1].base is big[1]
    for t in range(2):
        _ws_close(out[t], _ws_ref(cs, xs, t, 1.0), np.float32, 10.0)
    np.testing.assert_array_equal(big[0][:, :32], 1.0)  # the elements around out are untouched
    np.testing.assert_array_equal(big[0][:, 96:], 1.0)
    np.testing.assert_array_equal(big[1][::2], 1.0)


@pytest.mark.parametrize("size", [5, ws.SMALL + 1, ws.FUSED_MIN, 3 * ws.BLOCK + 5])
def test_weighted_sum_indices_subset_of_large_tensors(size):
    rng = np.random.default_rng(size)
    xs = [[rng.normal(size=size).astype(np.float32) for _ in range(3)] for _ in range(2)]
    out = [np.full(size, 9.0, np.float32) for _ in range(3)]
    ws.weighted_sum([(0.5, xs[0]), (2.0, xs[1])], out=out, indices=[2, 0], accumulate=True)
    for t in (0, 2):
        _ws_close(out[t], _ws_ref([0.5, 2.0], xs, t, 9.0), np.float32, 20.0)
    np.testing.assert_array_equal(out[1], 9.0)
    fresh = ws.weighted_sum([(0.5, xs[0]), (2.0, xs[1])], indices=[1])
    _ws_close(fresh[1], _ws_ref([0.5, 2.0], xs, 1), np.float32, 20.0)


@pytest.mark.parametrize("size", [3, ws.SMALL + 1, ws.FUSED_MIN, 3 * ws.BLOCK + 5])
@pytest.mark.parametrize("accumulate", [False, True])
def test_weighted_sum_out_may_be_one_of_the_inputs(size, accumulate):
    rng = np.random.default_rng(size)
    w0 = [rng.normal(size=size).astype(np.float32), rng.normal(size=(2, 2)).astype(np.float32)]
    d0 = [rng.normal(size=size).astype(np.float32), rng.normal(size=(2, 2)).astype(np.float32)]
    e = [rng.normal(size=size).astype(np.float32), rng.normal(size=(2, 2)).astype(np.float32)]
    extra = 1.0 if accumulate else 0.0  # out's own value counts once more when accumulating

    def check(got, want):
        for t in range(2):
            _ws_close(got[t], want[t], np.float32, 10.0)

    # out is the first term (FedBuff's momentum, FedAvg's final scaling): w ← w − 0.5·d
    w, d = [a.copy() for a in w0], [a.copy() for a in d0]
    assert ws.weighted_sum([(1.0, w), (-0.5, d)], out=w, accumulate=accumulate) is w
    check(w, [(1.0 + extra) * a.astype(np.float64) - 0.5 * b for a, b in zip(w0, d0)])
    # out is a later term: it is still read before it is written
    w, d = [a.copy() for a in w0], [a.copy() for a in d0]
    ws.weighted_sum([(1.0, w), (-0.5, d), (0.25, e)], out=d, accumulate=accumulate)
    check(d, [a.astype(np.float64) + (extra - 0.5) * b + 0.25 * c for a, b, c in zip(w0, d0, e)])
    # out twice, in a list of its own (the same arrays, another list)
    w = [a.copy() for a in w0]
    ws.weighted_sum([(0.5, list(w)), (2.0, e), (0.25, w)], out=w, accumulate=accumulate)
    check(w, [(0.75 + extra) * a.astype(np.float64) + 2.0 * c for a, c in zip(w0, e)])
    # in place scaling with one term: FedAvg's Σ n·w / Σ n
    w = [a.copy() for a in w0]
    ws.weighted_sum([(0.125, w)], out=w, accumulate=accumulate)
    check(w, [(0.125 + extra) * a.astype(np.float64) for a in w0])


def test_weighted_sum_reads_a_copy_of_inputs_that_overlap_out():
    size = 3 * ws.BLOCK + 5
    buf = np.arange(size + 7, dtype=np.float64)
    out = [buf[7:]]
    shifted = [buf[:size]]  # overlaps out, seven elements ahead: blocks written early would be read late
    want = 2.0 * buf[7:] + 1.0 * buf[:size]
    ws.weighted_sum([(2.0, out), (1.0, shifted)], out=out)
    np.testing.assert_array_equal(out[0], want)


def test_weighted_sum_strategy_call_patterns():
    """FedAvg: Σ n·w accumulated one update at a time, then scaled in place; FedBuff: acc (+)= c·w(o) − c·w_i."""
    rng = np.random.default_rng(3)
    shapes = [(ws.BLOCK + 17,), (40, 40), (7,)]
    ups = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(5)]
    ns = [32.0, 7.0, 120.0, 1.0, 64.0]
    acc = None
    for n, u in zip(ns, ups):
        acc = ws.weighted_sum([(n, u)], out=acc, indices=[0, 1, 2], accumulate=acc is not None)
    new = ws.weighted_sum([(1.0 / sum(ns), acc)], out=acc, indices=[0, 1, 2])
    assert new is acc
    for t in range(3):
        want = sum(n * u[t].astype(np.float64) for n, u in zip(ns, ups)) / sum(ns)
        _ws_close(new[t], want, np.float32, 10.0)
    sent = [rng.normal(size=s).astype(np.float32) for s in shapes]
    buf = None
    for k, u in enumerate(ups):
        buf = ws.weighted_sum([(0.5, sent), (-0.5, u)], out=buf, accumulate=k > 0)
    for t in range(3):
        want = sum(0.5 * sent[t].astype(np.float64) - 0.5 * u[t] for u in ups)
        _ws_close(buf[t], want, np.float32, 20.0)


def test_weighted_sum_installed_kernel_takes_large_tensors_only():
    seen = []

    def kernel(out, terms, accumulate):
        assert out.ndim == 1 and out.flags.c_contiguous
        assert all(x.shape == out.shape for _, x in terms)
        seen.append((out.size, len(terms), accumulate))
        total = sum(c * x.astype(np.float64) for c, x in terms)
        out[...] = total + out if accumulate else total

    rng = np.random.default_rng(5)
    sizes = [ws.SMALL + 1, ws.FUSED_MIN - 1, ws.FUSED_MIN, 3 * ws.BLOCK + 5]
    w = [rng.normal(size=(s,)).astype(np.float32) for s in sizes]
    d = [rng.normal(size=(s,)).astype(np.float32) for s in sizes]
    previous = ws.set_kernel(kernel)
    try:
        assert previous is None
        w0 = [a.copy() for a in w]
        ws.weighted_sum([(1.0, w), (-0.5, d)], out=w)
        assert seen == [(ws.FUSED_MIN, 2, False), (3 * ws.BLOCK + 5, 2, False)]
        for t in range(len(sizes)):
            _ws_close(w[t], w0[t].astype(np.float64) - 0.5 * d[t], np.float32, 10.0)
    finally:
        assert ws.set_kernel(previous) is kernel


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
    from fedhive.engine import Orchestrator, StopCondition
    from fedhive.engine import VirtualTransport
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
    assert t.config == {} and u.metrics == {}
    with pytest.raises(TypeError):                         # the shared empty config cannot be edited either
        t.config["local_steps"] = 1
    assert Task(3, 7).config == {}
    assert t == Task(3, 7, {}) and t != Task(3, 8) and dataclasses.replace(t, version=8) == Task(3, 8)
    assert repr(u) == "Update(node_id=3, base_version=7, params=[], num_examples=5, metrics={})"
    for obj, name in ((t, "version"), (u, "params"), (u, "metrics")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, None)


# --------------------------------------------------------------------------- the contract
def test_task_config_is_a_read_only_copy():
    from types import MappingProxyType

    from fedhive.strategies.base import Task

    given = {"local_steps": 3}
    t = Task(1, 0, given)
    assert type(t.config) is MappingProxyType and t.config == given
    given["local_steps"] = 99                              # the task took a copy
    assert t.config["local_steps"] == 3
    with pytest.raises(TypeError):
        t.config["local_steps"] = 5
    with pytest.raises(TypeError):
        del t.config["local_steps"]
    assert Task(2, 0, t.config).config is t.config         # a read-only config is shared, not copied again
    assert {**t.config, "local_steps": 5} == {"local_steps": 5}   # how a transport makes another one


def _asmu_kw(name):
    return {"server_adaptation": "heuristic"} if name == "fedasmu" else {}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_task_config_is_read_only(name):
    from fedhive.strategies.base import ClientInfo

    s = build(name, {"local_steps": 4, **_asmu_kw(name)} if name != "fedcompass" else {})
    cls = [ClientInfo(i, 10) for i in range(3)]
    s.start([np.zeros(2)], cls, 0.0)
    tasks = [t for t in (s.on_idle(c, 0.0) for c in cls) if t is not None]
    assert tasks
    for t in tasks:
        with pytest.raises(TypeError):
            t.config["local_steps"] = 1
        assert "local_steps" in t.config


@pytest.mark.parametrize("name", ["fedasync", "fedbuff", "fedfix"])
def test_a_fixed_config_is_one_mapping_shared_by_every_task(name):
    from fedhive.strategies.base import ClientInfo

    s = build(name, {"local_steps": 6})
    cls = [ClientInfo(i, 10) for i in range(3)]
    s.start([np.zeros(2)], cls, 0.0)
    tasks = [s.on_idle(c, float(k)) for k, c in enumerate(cls)]
    assert len({id(t.config) for t in tasks}) == 1 and tasks[0].config == {"local_steps": 6}


def test_strategy_modules_import_only_numpy_the_standard_library_and_fedhive_strategies():
    """Strategies are pure state machines (base.py's docstring): no Flower, torch, I/O stack or engine import."""
    import ast
    import pathlib
    import sys

    import fedhive.strategies

    folder = pathlib.Path(fedhive.strategies.__file__).parent
    files = sorted(folder.glob("*.py"))
    assert len(files) >= 8
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1:                        # from . import x / from .base import y
                    continue
                if node.level > 1:                         # from .. import: outside fedhive.strategies
                    bad.append(f"{path.name}:{node.lineno} from {'.' * node.level}{node.module or ''}")
                    continue
                names = [node.module or ""]
            else:
                continue
            for n in names:
                top = n.split(".")[0]
                if n == "fedhive.strategies" or n.startswith("fedhive.strategies.") or top == "numpy":
                    continue
                if top in sys.stdlib_module_names:
                    continue
                bad.append(f"{path.name}:{node.lineno} {n}")
    assert bad == []


@pytest.mark.parametrize("name,tracks", [("fedavg", True), ("fedasync", False), ("fedbuff", False),
                                         ("fedfix", True), ("fedcompass", True), ("fedasmu", False)])
def test_wake_epoch_is_none_unless_the_strategy_tracks_wakeups(name, tracks):
    s = build(name, _asmu_kw(name))
    s.start([np.zeros(2)], [], 0.0)
    assert s.tracks_wakeups is tracks
    assert (s.wake_epoch is None) is (not tracks)
    if tracks:
        assert isinstance(s.wake_epoch, int)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_capabilities(name):
    s = build(name, {})
    assert s.needs_model_store is (name == "fedasmu")
    assert s.needs_validation is (name == "fedasmu")       # FedASMU's default adaptation wants a validation fn
    if name == "fedasmu":
        s.set_validation(lambda params: (0.0, [np.zeros_like(p) for p in params]))
        assert s.needs_validation is False
    else:
        with pytest.raises(TypeError, match="takes no validation function"):
            s.set_validation(lambda params: (0.0, []))
    assert not hasattr(s, "summary")                       # config() is the one description
    assert isinstance(s.config(), dict)


@pytest.mark.parametrize("name,gauges", [("fedavg", {}), ("fedasync", {}), ("fedfix", {}),
                                         ("fedbuff", {"buffer_fill": 0.0}),
                                         ("fedcompass", {"open_groups": 0.0, "buffered": 0.0}),
                                         ("fedasmu", {"alpha": 0.0})])
def test_gauges_at_start(name, gauges):
    s = build(name, _asmu_kw(name))
    s.start([np.zeros(2)], [], 0.0)
    assert s.gauges() == {"weights_clamped": 0.0, **gauges}   # every strategy counts clamped weights


def _drive(name: str, claim: bool, events: int = 40):
    """A fixed event sequence through ``Driven``; replies claim their version (``claim``) or say nothing (None)."""
    from driven import Driven
    from fedhive.strategies.base import ClientInfo, Update

    params = {"fedcompass": {"q_min": 2, "q_max": 8}, "fedfix": {"interval": 1.5}}.get(name, {"local_steps": 4})
    d = Driven(build(name, {**params, **_asmu_kw(name)}))
    cls = [ClientInfo(i, 10 * (i + 1)) for i in range(3)]
    d.start([np.zeros(3), np.ones(2)], cls, 0.0)
    rng = np.random.default_rng(5)
    now, outcomes = 0.0, []
    for step in range(events):
        for c in cls:
            if c.node_id not in d.in_flight:
                d.on_idle(c, now)
        timer = d.next_timer()
        if timer is not None and (not d.in_flight or timer <= now + 1.0):
            now = max(now, timer)
            d.on_timer(now)
            outcomes.append(("timer", d.version))
            continue
        if not d.in_flight:
            break
        now += 1.0
        node = sorted(d.in_flight)[step % len(d.in_flight)]
        sent = d.sent(node)
        w = [p + rng.normal(size=p.shape) for p in sent.params]
        out = d.on_update(Update(node, sent.task.version if claim else None, w, cls[node].num_examples,
                                 {"loss": float(rng.uniform())}), now)
        outcomes.append((out.status, out.reason, d.version))
    return d, outcomes


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_strategies_never_read_the_clients_version_claim(name):
    """The base version is the dispatch record's ``sent.task.version``: a reply that claims none changes nothing."""
    a, oa = _drive(name, claim=True)
    b, ob = _drive(name, claim=False)
    assert oa == ob
    assert a.version == b.version >= 3
    assert [p.tobytes() for p in a.params] == [p.tobytes() for p in b.params]


def test_a_task_pickles_and_copies_with_its_read_only_config():
    import copy
    import pickle

    from fedhive.strategies.base import Task

    t = Task(3, 7, {"local_steps": 5})
    for u in (pickle.loads(pickle.dumps(t)), copy.deepcopy(t)):
        assert u == t and dict(u.config) == {"local_steps": 5}
        with pytest.raises(TypeError):
            u.config["local_steps"] = 1  # type: ignore[index]


def test_a_device_plan_takes_numpy_integers():
    from fedhive.strategies.fedasmu import DevicePlan

    plan = DevicePlan.of({"local_steps": np.int64(10), "fetch_step": np.int32(4)}, 0)
    assert plan is not None and (plan.first, plan.rest) == (4, 6)


def test_take_woken_names_the_poked_clients_or_none_for_all():
    s = build("fedcompass", {})
    s.start([np.zeros(3, np.float32)], [ClientInfo(i, 10, "cpu") for i in range(3)], 0.0)
    assert s.take_woken() is None              # start: any parked client may get work
    assert s.take_woken() == set()             # taken: the record starts again empty
    e = s.wake_epoch
    s._poke([1, 2])
    s._poke([2])
    assert s.wake_epoch != e and s.take_woken() == {1, 2}
    s._poke([0])
    s._poke()
    assert s.take_woken() is None              # a plain poke wakes everyone, whatever was named before
    assert s._commit([np.ones(3, np.float32)], wakes_parked=False) and s.take_woken() == set()
    assert s._commit([np.zeros(3, np.float32)]) and s.take_woken() is None


# --------------------------------------------------------------------------- config() and the staleness defaults
def test_every_strategys_config_lists_all_its_parameters():
    """config() goes into checkpoints' fingerprints and the run's history: every parameter a user can set is in it
    (non_trainable is the task's, validation_fn a function, not a setting)."""
    from fedhive.strategies import STRATEGIES, parameters

    for name in STRATEGIES:
        expected = set(parameters(name)) - {"non_trainable", "validation_fn"}
        assert set(build(name, {}).config()) == expected, name


@pytest.mark.parametrize("name", ["fedasync", "fedbuff", "fedcompass"])
def test_hinge_staleness_alone_is_fedasyncs_hinge(name):
    """staleness="hinge" without staleness_a/b is s(τ) = 1 for τ <= 4, else 1/(10(τ − 4) + 1), and config() says so;
    given values win; polynomial alone keeps a = 0.5."""
    s = build(name, {"staleness": "hinge"})
    assert (s.config()["staleness_a"], s.config()["staleness_b"]) == (10.0, 4.0)
    assert s._s(4) == 1.0 and s._s(5) == pytest.approx(1 / 11) and s._s(6) == pytest.approx(1 / 21)
    s = build(name, {"staleness": "hinge", "staleness_a": 2.0})
    assert (s.config()["staleness_a"], s.config()["staleness_b"]) == (2.0, 4.0) and s._s(5) == pytest.approx(1 / 3)
    s = build(name, {})
    assert (s.config()["staleness"], s.config()["staleness_a"], s.config()["staleness_b"]) == ("polynomial", 0.5, None)
    assert s._s(3) == pytest.approx(4 ** -0.5)
