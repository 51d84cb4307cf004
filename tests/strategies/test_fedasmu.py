"""FedASMU (shared/ALGORITHMS.md §6): the server's dynamic α, the device's β, and their adaptation."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from driven import Driven
from fedhive.strategies.base import ClientInfo, Task, Update
from fedhive.strategies.fedasmu import (
    FETCH_ARMS,
    DeviceAdjuster,
    DevicePlan,
    FedASMU,
    fetch_step,
    mixing_alpha,
    mixing_beta,
)


def _clients(n: int) -> list[ClientInfo]:
    return [ClientInfo(i, 10) for i in range(1, n + 1)]


def _start(n: int = 3, w0=(1.0, 2.0, 3.0), **kw) -> Driven:
    """A started FedASMU (through ``Driven``); the client-loss heuristic unless the test picks an adaptation."""
    kw.setdefault("server_adaptation", "heuristic")
    kw.setdefault("preset", "paper")  # the paper's rules and values; the defaults are tested apart
    s = Driven(FedASMU(**kw))
    s.start([np.array(w0, dtype=np.float64)], _clients(n), now=0.0)
    return s


def _upd(task: Task, values, **metrics) -> Update:
    return Update(task.node_id, task.version, [np.array(values, dtype=np.float64)], 10, metrics)


def _w(s: FedASMU) -> np.ndarray:
    return s.params[0]


# --------------------------------------------------------------------------- the formulas
def test_alpha_hand_checked():
    # v=3, o=1, λ=1, σ=0.5, ι=0, μ_α=1: delay = 3, t = 4, ξ = 1·sqrt(4)/(4·3^0.5) = 2/(4·1.7320508) = 0.2886751...
    # α = ξ/(1+ξ) = 0.2886751/1.2886751 = 0.2240092...
    assert mixing_alpha(3, 1, 1.0, 0.5, 0.0, 1.0) == pytest.approx(0.2240092377397959, rel=1e-12)
    # v=0, o=0: delay = t = 1, ξ = 1 → α = 1/2. With ι = 1: ξ = 2 → α = 2/3. With μ_α = 3: α = 3/4.
    assert mixing_alpha(0, 0, 1.0, 0.5, 0.0, 1.0) == pytest.approx(0.5)
    assert mixing_alpha(0, 0, 1.0, 0.5, 1.0, 1.0) == pytest.approx(2 / 3)
    assert mixing_alpha(0, 0, 1.0, 0.5, 0.0, 3.0) == pytest.approx(0.75)


def test_alpha_decreases_with_staleness():
    alphas = [mixing_alpha(6, o, 1.0, 0.5, 0.0, 1.0) for o in range(6, -1, -1)]  # τ = 0 … 6 at the same v
    assert all(a > b for a, b in zip(alphas, alphas[1:]))


def test_beta_hand_checked_and_skip():
    # o=2, v'=5, γ=1, υ=0.5, μ_β=1: tg = 6, age = 5, φ = 1/sqrt(6)·(1 − 0.5/sqrt(5)) = 0.4082483·0.7763932 = 0.3169653
    # β = φ/(1+φ) = 0.2406762
    assert mixing_beta(2, 5, 1.0, 0.5, 1.0) == pytest.approx(0.2406761855526754, rel=1e-12)
    # o=0, v'=3: tg = 4, age = 5, φ = 0.5·(1 − 0.5/sqrt 5) = 0.3881966, β = 0.3881966/1.3881966 = 0.2796405
    assert mixing_beta(0, 3, 1.0, 0.5, 1.0) == pytest.approx(0.38819660112501053 / 1.3881966011250105)
    assert mixing_beta(4, 4, 1.0, 0.5, 1.0) is None          # nothing newer: skip
    assert mixing_beta(0, 3, 1.0, 5.0, 1.0) == 0.0           # φ clipped at 0
    assert mixing_beta(0, 3, 1.0, 0.5, 0.0) == 0.0           # μ_β = 0 disables the fusion


def test_fetch_step():
    assert [fetch_step(20, f) for f in FETCH_ARMS] == [5, 10, 15]
    assert fetch_step(1, 0.5) is None
    assert fetch_step(2, 0.25) == 1      # round(0.5) = 0 → clamped to 1
    assert fetch_step(10, 0.95) == 9     # round(9.5) = 10 → clamped to T − 1


# --------------------------------------------------------------------------- the server step
def test_server_steps_exact():
    s = _start(3)
    a, b, c = (s.on_idle(ci, 0.0) for ci in _clients(3))
    # A at v=0 (τ=0): t=1, delay=1, ξ=1, α=1/2 → w1 = ½[1,2,3] + ½[3,2,1] = [2,2,2]
    assert s.on_update(_upd(a, [3, 2, 1]), 1.0).status == "applied"
    np.testing.assert_allclose(_w(s), [2, 2, 2], rtol=0, atol=1e-15)
    assert s.last_alpha == pytest.approx(0.5)
    # B from v=0 at v=1: t=2, delay=2, ξ = sqrt2/(2·sqrt2) = 1/2, α = 1/3 → w2 = ⅔[2,2,2] + ⅓[0,0,6] = [4/3, 4/3, 10/3]
    s.on_update(_upd(b, [0, 0, 6]), 2.0)
    np.testing.assert_allclose(_w(s), [4 / 3, 4 / 3, 10 / 3], rtol=1e-15)
    assert s.last_alpha == pytest.approx(1 / 3)
    # C from v=0 at v=2: t=3, delay=3, ξ = sqrt3/(3·sqrt3) = 1/3, α = 1/4 → w3 = ¾·w2 + ¼[4,4,−2] = [2,2,2]
    s.on_update(_upd(c, [4, 4, -2]), 3.0)
    np.testing.assert_allclose(_w(s), [2, 2, 2], rtol=1e-15)
    assert s.last_alpha == pytest.approx(0.25)
    assert s.version == 3


def test_staler_update_gets_smaller_alpha():
    s = _start(3)
    tasks = [s.on_idle(ci, 0.0) for ci in _clients(3)]
    s.on_update(_upd(tasks[0], [0, 0, 0]), 1.0)                # v → 1
    fresh = s.on_idle(ClientInfo(1, 10), 1.0)                   # from v=1
    s_copy = s.resumed(copy.deepcopy(s.strategy))             # the same state, the same tasks in flight
    s.on_update(_upd(fresh, [5, 5, 5]), 2.0)                    # τ = 0 at v=1
    s_copy.on_update(_upd(tasks[1], [5, 5, 5]), 2.0)            # τ = 1 at v=1
    assert s_copy.last_alpha < s.last_alpha
    assert np.all(np.abs(_w(s_copy) - 5) > np.abs(_w(s) - 5))  # the staler update pulls less


def test_huge_mu_alpha_fresh_update_gives_client_model():
    s = _start(1, mu_alpha=1e12)
    t = s.on_idle(ClientInfo(1, 10), 0.0)
    s.on_update(_upd(t, [7, -1, 0.5]), 1.0)
    np.testing.assert_allclose(_w(s), [7, -1, 0.5], atol=1e-10)
    assert s.last_alpha == pytest.approx(1.0, abs=1e-11)


def test_non_trainable_tensor_takes_client_value():
    s = Driven(FedASMU(preset="paper", server_adaptation="heuristic"))
    s.start([np.zeros(3), np.array([4], dtype=np.int64)], _clients(1), 0.0)
    t = s.on_idle(ClientInfo(1, 10), 0.0)
    s.on_update(Update(1, t.version, [np.full(3, 2.0), np.array([9], dtype=np.int64)], 10), 1.0)
    np.testing.assert_allclose(s.params[0], [1, 1, 1])          # α = 1/2
    assert s.params[1].tolist() == [9]


def test_max_staleness_rejection_changes_nothing():
    s = _start(3, max_staleness=1)
    a, b, c = (s.on_idle(ci, 0.0) for ci in _clients(3))
    s.on_update(_upd(a, [0, 0, 0]), 1.0)
    assert s.on_update(_upd(b, [0, 0, 0], loss=1.0), 2.0).status == "applied"   # τ = 1: accepted
    before, version, alpha = _w(s).copy(), s.version, s.last_alpha
    coeffs = s.client_coefficients(3)
    out = s.on_update(_upd(c, [9, 9, 9], loss=0.1), 3.0)                       # τ = 2 > 1
    assert (out.status, out.reason) == ("rejected", "stale")
    assert _w(s).tobytes() == before.tobytes() and s.version == version and s.last_alpha == alpha
    assert s.client_coefficients(3) == coeffs


# --------------------------------------------------------------------------- the server's adaptation
def test_heuristic_moves_coefficients_in_the_right_direction():
    s = _start(2)
    t1 = s.on_idle(ClientInfo(1, 10), 0.0)
    t2 = s.on_idle(ClientInfo(2, 10), 0.0)
    s.on_update(_upd(t1, [0, 0, 0], loss=1.0), 1.0)            # first loss: recorded, no change
    assert s.client_coefficients(1) == {"lam": 1.0, "sigma": 0.5, "iota": 0.0, "gamma": 1.0, "upsilon": 0.5}
    t1 = s.on_idle(ClientInfo(1, 10), 1.0)
    s.on_update(_upd(t1, [0, 0, 0], loss=0.5), 2.0)            # delay 1, loss fell by 0.5: sig = +0.5
    c = s.client_coefficients(1)
    assert c["lam"] == pytest.approx(1.005) and c["sigma"] == pytest.approx(0.495) and c["iota"] == pytest.approx(0.005)
    t1 = s.on_idle(ClientInfo(1, 10), 2.0)
    s.on_update(_upd(t2, [0, 0, 0]), 3.0)                       # client 2 bumps the version, no loss: untouched
    assert s.client_coefficients(2)["lam"] == 1.0
    s.on_update(_upd(t1, [0, 0, 0], loss=2.5), 4.0)            # delay 2, loss rose by 2: sig = −1 (clipped)
    c = s.client_coefficients(1)
    assert c["lam"] == pytest.approx(0.995) and c["sigma"] == pytest.approx(0.505)
    assert c["iota"] == pytest.approx(0.0, abs=1e-15) and c["iota"] >= 0.0     # 0.005 − 0.01/2, clipped ≥ 0


def test_alpha_uses_coefficients_from_before_the_arrival():
    s = _start(1, server_meta_lr=0.5)
    t = s.on_idle(ClientInfo(1, 10), 0.0)
    s.on_update(_upd(t, [0, 0, 0], loss=1.0), 1.0)
    t = s.on_idle(ClientInfo(1, 10), 1.0)
    s.on_update(_upd(t, [0, 0, 0], loss=0.0), 2.0)             # changes λ, σ, ι only after mixing
    assert s.last_alpha == pytest.approx(mixing_alpha(1, 1, 1.0, 0.5, 0.0, 1.0))


def _quadratic(target: np.ndarray):
    """L(w) = ½‖w − w*‖², ∇L = w − w*."""
    def fn(params):
        d = params[0] - target
        return 0.5 * float(d @ d), [d]
    return fn


def _second_arrival_with_validation(target, lr=0.01):
    """Client 1 moves w to w1 (v=1); client 2, trained from v=0, arrives at v=1 (t=2, delay=2)."""
    w0, c1, c2 = np.array([1.0, 2.0, 3.0]), np.array([3.0, 0.0, 1.0]), np.array([0.0, 4.0, -2.0])
    w1 = 0.5 * w0 + 0.5 * c1
    wstar = target(w1, c2)
    s = Driven(FedASMU(preset="paper", validation_fn=_quadratic(wstar), server_meta_lr=lr))
    s.start([w0], _clients(2), 0.0)
    t1, t2 = s.on_idle(ClientInfo(1, 10), 0.0), s.on_idle(ClientInfo(2, 10), 0.0)
    s.on_update(Update(1, 0, [c1], 10), 1.0)
    s.on_update(Update(2, t2.version, [c2], 10), 2.0)
    return s, w1, c2, wstar


@pytest.mark.parametrize("best_alpha", [0.0, 0.3, 1.0])
def test_validation_meta_step_moves_alpha_toward_the_better_value(best_alpha):
    s, *_ = _second_arrival_with_validation(lambda w1, c2: (1 - best_alpha) * w1 + best_alpha * c2)
    before = mixing_alpha(1, 0, 1.0, 0.5, 0.0, 1.0)             # 1/3, the α just used
    assert s.last_alpha == pytest.approx(before)
    c = s.client_coefficients(2)
    after = mixing_alpha(1, 0, c["lam"], c["sigma"], c["iota"], 1.0)
    assert abs(after - best_alpha) < abs(before - best_alpha)
    if best_alpha > before:
        assert c["lam"] > 1.0 and c["sigma"] < 0.5 and c["iota"] > 0.0
    else:
        assert c["lam"] < 1.0 and c["sigma"] > 0.5 and c["iota"] == 0.0   # ι would go negative: clipped


def test_validation_meta_step_is_the_chain_rule_gradient():
    lr = 1e-3
    s, w1, c2, wstar = _second_arrival_with_validation(lambda w1, c2: 0.2 * w1 + 0.8 * c2, lr=lr)

    def loss(lam, sigma, iota):
        a = mixing_alpha(1, 0, lam, sigma, iota, 1.0)
        d = (1 - a) * w1 + a * c2 - wstar
        return 0.5 * float(d @ d)

    h, x = 1e-6, (1.0, 0.5, 0.0)
    grad = []
    for k in range(3):
        up, down = list(x), list(x)
        up[k] += h
        down[k] -= h
        grad.append((loss(*up) - loss(*down)) / (2 * h))
    c = s.client_coefficients(2)
    assert grad[0] < 0 and grad[1] > 0 and grad[2] < 0                  # α should grow: no clipping below
    np.testing.assert_allclose([c["lam"], c["sigma"], c["iota"]], [x[k] - lr * grad[k] for k in range(3)],
                               rtol=1e-8, atol=1e-12)


# --------------------------------------------------------------------------- tasks and the device side
def test_task_config():
    s = _start(1)
    t = s.on_idle(ClientInfo(1, 10), 0.0)
    assert t.config == {"local_steps": 20, "fetch_step": 10, "fetch_fraction": 0.5, "mu_beta": 1.0, "gamma": 1.0,
                        "upsilon": 0.5, "local_meta_lr": 0.01}
    s1 = _start(1, local_steps=1)
    assert "fetch_step" not in s1.on_idle(ClientInfo(1, 10), 0.0).config


def test_device_adjuster_mixes_and_skips():
    s = _start(1)
    task = s.on_idle(ClientInfo(1, 10), 0.0)
    local = [np.array([1.0, 2.0, 3.0]), np.array([7], dtype=np.int64)]
    glob = [np.array([5.0, 2.0, -1.0]), np.array([0], dtype=np.int64)]
    adj = DeviceAdjuster(task.config, task.version)
    assert adj.fetch_step == 10
    out = adj.adjust(local, glob, 3, loss_before_fusion=1.0)
    beta = 0.38819660112501053 / 1.3881966011250105               # o=0, v'=3 (see test_beta_hand_checked_and_skip)
    assert adj.beta == pytest.approx(beta) and adj.fetched
    np.testing.assert_allclose(out[0], (1 - beta) * local[0] + beta * glob[0], rtol=1e-15)
    assert out[1].tolist() == [7]                                    # integer tensors keep the local value
    assert out[0] is not local[0] and local[0].tolist() == [1.0, 2.0, 3.0]
    assert adj.report() == {"gamma": 1.0, "upsilon": 0.5, "beta": pytest.approx(beta), "fetch_version": 3}

    skip = DeviceAdjuster(task.config, task.version)
    same = skip.adjust(local, glob, 0, loss_before_fusion=1.0)       # nothing newer than o = 0
    assert same[0] is local[0] and skip.beta is None
    skip.feedback(0.1)                                               # no fusion: no change
    assert skip.report() == {"gamma": 1.0, "upsilon": 0.5, "beta": 0.0, "fetch_version": 0}
    assert DeviceAdjuster(task.config, task.version).adjust(local, None, 2)[0] is local[0]
    assert DeviceAdjuster(task.config, task.version).report()["fetch_version"] == -1


def test_device_feedback_direction_and_persistence_through_the_server():
    s = _start(1)
    task = s.on_idle(ClientInfo(1, 10), 0.0)
    local, glob = [np.zeros(3)], [np.ones(3)]
    good = DeviceAdjuster(task.config, task.version)
    good.adjust(local, glob, 2, loss_before_fusion=1.0)
    good.feedback(0.6)                                               # loss fell by 0.4 → trust the fusion more
    assert good.gamma == pytest.approx(1.004) and good.upsilon == pytest.approx(0.496)
    good.feedback(0.0)                                               # once per fusion
    assert good.gamma == pytest.approx(1.004)
    bad = DeviceAdjuster(task.config, task.version)
    bad.adjust(local, glob, 2, loss_before_fusion=1.0)
    bad.feedback(3.0)                                                # loss rose: sig = −1
    assert bad.gamma == pytest.approx(0.99) and bad.upsilon == pytest.approx(0.51)
    assert mixing_beta(0, 2, bad.gamma, bad.upsilon, 1.0) < mixing_beta(0, 2, good.gamma, good.upsilon, 1.0)

    s.on_update(Update(1, task.version, [np.zeros(3)], 10, good.report()), 1.0)
    nxt = s.on_idle(ClientInfo(1, 10), 1.0)
    assert nxt.config["gamma"] == good.gamma and nxt.config["upsilon"] == good.upsilon


# --------------------------------------------------------------------------- the adaptive fetch bandit
_REWARD_PER_ARM = {0.25: 0.1, 0.5: 0.3, 0.75: 0.9}


def _bandit_run(s: FedASMU, rounds: int, now: float = 0.0) -> list[float]:
    chosen = []
    for k in range(rounds):
        t = s.on_idle(ClientInfo(1, 10), now + k)
        f = t.config["fetch_fraction"]
        chosen.append(f)
        assert t.config["fetch_step"] == fetch_step(20, f)
        s.on_update(_upd(t, [0, 0, 0], loss_before=1.0, loss=1.0 - _REWARD_PER_ARM[f], seconds=1.0), now + k + 0.5)
    return chosen


def test_adaptive_fetch_tries_all_arms_first_then_prefers_the_best():
    s = _start(1, fetch_fraction="adaptive")
    chosen = _bandit_run(s, 40)
    assert chosen[:3] == [0.25, 0.5, 0.75]
    assert chosen[-10:].count(0.75) >= 8
    assert chosen == _bandit_run(_start(1, fetch_fraction="adaptive"), 40)     # deterministic


def test_adaptive_fetch_missing_metrics_and_failures():
    s = _start(1, fetch_fraction="adaptive")
    s.on_idle(ClientInfo(1, 10), 0.0)
    s.on_failure(1, 0.5)                                              # a failure teaches nothing
    t = s.on_idle(ClientInfo(1, 10), 1.0)
    assert t.config["fetch_fraction"] == 0.25
    s.on_update(_upd(t, [0, 0, 0]), 1.5)                             # no metrics: reward 0, still a pull
    assert s.on_idle(ClientInfo(1, 10), 2.0).config["fetch_fraction"] == 0.5


# --------------------------------------------------------------------------- determinism and persistence
def _script(s: Driven, steps: range, rng_seed: int, tasks: dict[int, Task]) -> list:
    """A fixed event sequence over 3 clients: dispatch, then arrivals in a staggered order (``tasks``: in flight)."""
    rng = np.random.default_rng(rng_seed)
    configs = []
    for k in steps:
        node = 1 + k % 3
        if node not in tasks:
            tasks[node] = s.on_idle(ClientInfo(node, 10 * node), float(k))
            configs.append(tasks[node].config)
            continue
        t = tasks.pop(node)
        params = [rng.standard_normal(4).astype(np.float32), rng.standard_normal((2, 2)).astype(np.float32)]
        m = {"loss_before": float(rng.uniform(1, 2)), "loss": float(rng.uniform(0, 1)), "seconds": 1.0 + node,
             "gamma": float(rng.uniform(0.5, 1.5)), "upsilon": float(rng.uniform(0, 1))}
        s.on_update(Update(node, t.version, params, 10 * node, m), float(k) + 0.5)
    return configs


def _make(adaptation: str) -> Driven:
    target = [np.full(4, 0.1, np.float32), np.eye(2, dtype=np.float32)]

    def fn(params):
        grads = [p - q for p, q in zip(params, target)]
        return 0.5 * sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads), grads

    s = Driven(FedASMU(preset="paper", fetch_fraction="adaptive", server_meta_lr=0.05, server_adaptation=adaptation,
                       validation_fn=fn if adaptation == "validation" else None))
    s.start([np.zeros(4, np.float32), np.zeros((2, 2), np.float32)], [ClientInfo(i, 10 * i) for i in (1, 2, 3)], 0.0)
    return s


@pytest.mark.parametrize("adaptation", ["heuristic", "validation", "off"])
def test_determinism(adaptation):
    a, b = _make(adaptation), _make(adaptation)
    ca, cb = _script(a, range(60), 7, {}), _script(b, range(60), 7, {})
    assert ca == cb
    assert [p.tobytes() for p in a.params] == [p.tobytes() for p in b.params]
    assert a.state_dict()["strategy"] == b.state_dict()["strategy"]


@pytest.mark.parametrize("adaptation", ["heuristic", "validation", "off"])
def test_state_dict_round_trip_continues_bit_identically(adaptation):
    a = _make(adaptation)
    tasks_a: dict[int, Task] = {}
    _script(a, range(31), 3, tasks_a)                                 # stop with tasks in flight
    assert tasks_a and set(tasks_a) == a.in_flight
    state = a.state_dict()
    state["strategy"] = json.loads(json.dumps(state["strategy"]))     # int node ids become strings
    restored = _make(adaptation).strategy
    restored.load_state_dict(copy.deepcopy(state))
    b = a.resumed(restored)                                           # the engine resumes its tasks in flight
    tasks_b = dict(tasks_a)
    assert b.last_alpha == a.last_alpha and b.version == a.version
    ca, cb = _script(a, range(31, 90), 11, tasks_a), _script(b, range(31, 90), 11, tasks_b)
    assert ca == cb
    assert [p.tobytes() for p in a.params] == [p.tobytes() for p in b.params]
    assert a.state_dict()["strategy"] == b.state_dict()["strategy"]
    assert all(math.isfinite(x) for x in a.client_coefficients(1).values())


# --------------------------------------------------------------------------- parameter checks
@pytest.mark.parametrize("kw", [
    {"local_steps": 0}, {"mu_alpha": 0.0}, {"lam": 0.0}, {"sigma": -0.1}, {"iota": -1.0}, {"server_meta_lr": -1.0},
    {"mu_beta": -1.0}, {"gamma": 0.0}, {"upsilon": -0.5}, {"local_meta_lr": float("nan")}, {"fetch_fraction": 0.0},
    {"fetch_fraction": 1.0}, {"fetch_fraction": "auto"}, {"max_staleness": -1}, {"validation_fn": 3},
    {"server_adaptation": "gradient"}, {"server_adaptation": None},
])
def test_bad_parameters_raise(kw):
    with pytest.raises(ValueError):
        FedASMU(**kw)


# --------------------------------------------------------------------------- server_adaptation
def _counting(fn):
    calls = []

    def wrapped(params):
        calls.append(1)
        return fn(params)

    return wrapped, calls


def _heuristic_sequence(s) -> None:
    """The arrivals of test_heuristic_moves_coefficients_in_the_right_direction, for client 1."""
    t1 = s.on_idle(ClientInfo(1, 10), 0.0)
    s.on_update(_upd(t1, [0, 0, 0], loss=1.0), 1.0)
    t1 = s.on_idle(ClientInfo(1, 10), 1.0)
    s.on_update(_upd(t1, [0, 0, 0], loss=0.5), 2.0)            # sig = +0.5


def test_server_adaptation_off_keeps_lambda_sigma_iota():
    fn, calls = _counting(_quadratic(np.zeros(3)))
    s = _start(2, server_adaptation="off", validation_fn=fn, server_meta_lr=0.5)
    assert not s.needs_validation and s.config()["server_adaptation"] == "off"
    tasks = {i: s.on_idle(ClientInfo(i, 10), 0.0) for i in (1, 2)}
    alphas = []
    for k, (node, loss) in enumerate([(1, 1.0), (2, 3.0), (1, 0.2), (2, 0.1), (1, 5.0)]):
        s.on_update(_upd(tasks[node], [k, -k, 2 * k], loss=loss), 1.0 + k)
        alphas.append(s.last_alpha)
        tasks[node] = s.on_idle(ClientInfo(node, 10), 1.0 + k)
    for node in (1, 2):
        assert s.client_coefficients(node) == {"lam": 1.0, "sigma": 0.5, "iota": 0.0, "gamma": 1.0, "upsilon": 0.5}
    assert calls == [] and s.version == 5
    # α is still Eq. (1)-(2) with the initial coefficients: v=0 τ=0, v=1 τ=1, v=2 τ=1, v=3 τ=1, v=4 τ=1
    assert alphas == pytest.approx([mixing_alpha(v, o, 1.0, 0.5, 0.0, 1.0)
                                    for v, o in [(0, 0), (1, 0), (2, 1), (3, 2), (4, 3)]], rel=1e-15)


def test_server_adaptation_heuristic_ignores_a_validation_function():
    fn, calls = _counting(_quadratic(np.zeros(3)))
    s = _start(2, server_adaptation="heuristic", validation_fn=fn)
    _heuristic_sequence(s)
    c = s.client_coefficients(1)
    assert c["lam"] == pytest.approx(1.005) and c["sigma"] == pytest.approx(0.495) and c["iota"] == pytest.approx(0.005)
    assert calls == []


def test_server_adaptation_validation_ignores_client_losses():
    fn, calls = _counting(_quadratic(np.array([1.0, 2.0, 3.0])))    # w* = w0: every step should shrink α
    s = _start(2, server_adaptation="validation", validation_fn=fn)
    _heuristic_sequence(s)
    assert len(calls) == 2                                          # one meta step per applied arrival
    c = s.client_coefficients(1)
    assert c["lam"] < 1.0 and c["iota"] == 0.0                      # the heuristic would have raised λ and ι
    assert c["sigma"] == 0.5                                        # delay 1: dξ/dσ ∝ ln(1) = 0


def test_server_adaptation_validation_without_a_function_fails_at_start():
    s = FedASMU()                                                   # the default
    assert s.server_adaptation == "validation" and s.needs_validation
    with pytest.raises(ValueError, match="heuristic"):
        s.start([np.zeros(3)], _clients(1), 0.0)
    with pytest.raises(ValueError, match="validation function"):
        FedASMU(server_adaptation="validation").start([np.zeros(3)], _clients(1), 0.0)
    for other in ("heuristic", "off"):
        t = FedASMU(server_adaptation=other)
        assert not t.needs_validation
        t.start([np.zeros(3)], _clients(1), 0.0)


def test_set_validation_is_the_same_as_the_constructor_argument():
    target = np.array([0.5, 0.5, 0.5])
    given = _start(2, server_adaptation="validation", validation_fn=_quadratic(target))
    late = FedASMU(preset="paper")
    assert late.needs_validation
    late.set_validation(_quadratic(target))
    assert not late.needs_validation
    late = Driven(late)
    late.start([np.array([1.0, 2.0, 3.0])], _clients(2), 0.0)
    for s in (given, late):
        _heuristic_sequence(s)
    assert given.client_coefficients(1) == late.client_coefficients(1) != _start(2).client_coefficients(1)
    with pytest.raises(ValueError, match="callable"):
        FedASMU().set_validation(3)


def test_bad_server_adaptation_lists_the_choices():
    with pytest.raises(ValueError, match="server_adaptation must be one of validation, heuristic, off"):
        FedASMU(server_adaptation="gradient")


# --------------------------------------------------------------------------- capabilities and gauges
def test_needs_the_model_store_and_reports_alpha():
    assert FedASMU.needs_model_store is True and FedASMU(server_adaptation="off").needs_model_store
    s = _start(3)
    assert s.gauges() == {"weights_clamped": 0.0, "alpha": 0.0}                              # before the first applied arrival
    a, b, c = (s.on_idle(ci, 0.0) for ci in _clients(3))
    s.on_update(_upd(a, [3, 2, 1]), 1.0)
    assert s.gauges() == {"weights_clamped": 0.0, "alpha": pytest.approx(0.5)}              # test_server_steps_exact's α values
    s.on_update(_upd(b, [0, 0, 6]), 2.0)
    assert s.gauges() == {"weights_clamped": 0.0, "alpha": pytest.approx(1 / 3)}
    assert s.gauges()["alpha"] == s.last_alpha


def test_alpha_gauge_keeps_the_last_applied_value_after_a_rejection():
    s = _start(3, max_staleness=0)
    a, b, _ = (s.on_idle(ci, 0.0) for ci in _clients(3))
    s.on_update(_upd(a, [0, 0, 0]), 1.0)
    assert s.on_update(_upd(b, [9, 9, 9]), 2.0).reason == "stale"
    assert s.gauges() == {"weights_clamped": 0.0, "alpha": pytest.approx(0.5)}


# --------------------------------------------------------------------------- DevicePlan
def test_device_plan_of_needs_a_fetch_inside_the_steps():
    base = {"local_steps": 20, "mu_beta": 1.0, "gamma": 1.0, "upsilon": 0.5, "local_meta_lr": 0.01}
    assert DevicePlan.of(base, 0) is None                                           # no fetch_step
    for fs in (0, 20, 21, -1, True, False, 10.0, "10", None):
        assert DevicePlan.of({**base, "fetch_step": fs}, 0) is None, fs
    assert DevicePlan.of({**base, "fetch_step": 10, "local_steps": True}, 0) is None
    assert DevicePlan.of({"fetch_step": 5}, 0) is None                              # no local_steps
    s1 = _start(1, local_steps=1)
    assert DevicePlan.of(s1.on_idle(ClientInfo(1, 10), 0.0).config, 0) is None    # FedASMU sends no fetch then
    assert DevicePlan.of({**base, "fetch_step": 1}, 0).first == 1
    assert DevicePlan.of({**base, "fetch_step": 19}, 0).rest == 1


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_device_plan_spans(fraction):
    s = _start(1, fetch_fraction=fraction)
    task = s.on_idle(ClientInfo(1, 10), 0.0)
    plan = DevicePlan.of(task.config, task.version)
    assert plan is not None and plan.steps == 20
    assert plan.first == fetch_step(20, fraction) and plan.first + plan.rest == plan.steps
    first, rest = plan.first_config(), plan.rest_config()
    assert "fetch_step" not in first and "fetch_step" not in rest
    assert first["local_steps"] == plan.first and rest["local_steps"] == plan.rest
    others = {k: v for k, v in task.config.items() if k not in ("fetch_step", "local_steps")}
    assert {k: v for k, v in first.items() if k != "local_steps"} == others
    assert {k: v for k, v in rest.items() if k != "local_steps"} == others
    assert task.config["fetch_step"] == plan.first and task.config["local_steps"] == 20   # the task is untouched


def test_device_plan_fuse_then_finish_reports_the_fusion():
    s = _start(1)
    task = s.on_idle(ClientInfo(1, 10), 0.0)                         # o = 0, γ = 1, υ = 0.5, μ_β = 1
    plan = DevicePlan.of(task.config, task.version)
    local = [np.array([1.0, 2.0, 3.0]), np.array([7], dtype=np.int64)]
    glob = [np.array([5.0, 2.0, -1.0]), np.array([0], dtype=np.int64)]
    out = plan.fuse(local, {"loss": 1.0, "loss_before": 2.0}, glob, 3, 1234)
    beta = 0.38819660112501053 / 1.3881966011250105                   # o=0, v'=3 (test_beta_hand_checked_and_skip)
    np.testing.assert_allclose(out[0], (1 - beta) * local[0] + beta * glob[0], rtol=1e-15)
    assert out[1].tolist() == [7]
    m = plan.finish({"loss": 0.6, "seconds": 2.5, "loss_before": 9.0})   # loss fell 0.4 over the fusion
    assert m["gamma"] == pytest.approx(1.004) and m["upsilon"] == pytest.approx(0.496)
    assert m["beta"] == pytest.approx(beta) and m["fetch_version"] == 3 and m["fetch_bytes"] == 1234
    assert m["steps"] == 20                                          # the whole task's, not the second span's
    assert m["loss_before"] == 2.0                                   # the first span's: the task's starting model
    assert m["loss"] == 0.6 and m["seconds"] == 2.5                  # the second span's metrics pass through


def test_device_plan_skipped_fusion_reports_beta_zero():
    s = _start(1)
    task = s.on_idle(ClientInfo(1, 10), 0.0)
    local = [np.array([1.0, 2.0, 3.0])]
    for fetched, version in ((None, 4), ([np.ones(3)], 0)):          # the store had nothing / nothing newer than o
        plan = DevicePlan.of(task.config, task.version)
        out = plan.fuse(local, {"loss": 1.0}, fetched, version, 0)
        assert out[0] is local[0]
        m = plan.finish({"loss": 0.1, "loss_before": 1.5})
        assert m["beta"] == 0.0 and m["fetch_version"] == version and m["fetch_bytes"] == 0
        assert (m["gamma"], m["upsilon"]) == (1.0, 0.5)              # no fusion: no device adaptation
        assert m["steps"] == 20 and m["loss_before"] == 1.5          # no first-span loss_before: the reply's own


def test_the_two_published_forms_of_the_delay_term_are_one_family():
    """ξ with delay^σ (fedhive, the port) at σ/2 equals ξ with sqrt(delay)^σ at σ (the other implementation's form)."""
    import math

    from fedhive.strategies.fedasmu import mixing_alpha

    for v, o, sigma in [(10, 3, 0.5), (5000, 4990, 0.5), (1, 0, 1.0), (77, 1, 0.3)]:
        t, delay = v + 1, v - o + 1
        other = 1.0 / (math.sqrt(t) * math.sqrt(delay) ** sigma)  # λ = 1, ι = 0
        assert mixing_alpha(v, o, 1.0, sigma / 2, 0.0, 1.0) == pytest.approx(other / (1 + other), rel=1e-12)
