"""FedCompass: the scheduler's decisions against ALGORITHMS.md §5 (hand-computed, table-driven), the aggregation
math on 3-element models, degenerate equivalence with FedAvg, staleness sign, determinism, checkpoint round trip,
and the affine speed model against per-step estimates when every task pays a fixed overhead."""

from __future__ import annotations

import heapq
import json
import math

import numpy as np
import pytest

from driven import Driven
from fedhive.strategies.base import APPLIED, BUFFERED, ClientInfo, Dispatch, Update
from fedhive.strategies.fedcompass import FedCompass

W0 = [np.array([1.0, 2.0, 3.0])]


# --------------------------------------------------------------------------- a scripted harness
class Script:
    """Calls the strategy's handlers one at a time, through ``Driven`` (which keeps what each client was sent)."""

    def __init__(self, strategy: FedCompass, sizes: dict[int, int], start: list[int], params=W0):
        self.s = Driven(strategy)
        self.info = {i: ClientInfo(i, n) for i, n in sizes.items()}
        self.s.start(params, [self.info[i] for i in start], 0.0)

    def idle(self, node: int, now: float):
        return self.s.on_idle(self.info[node], now)

    def arrive(self, node: int, now: float, w=None):
        sent = self.s.sent(node)
        w_i = [np.array(w, dtype=np.float64)] if w is not None else [sent.params[0] + node]
        return self.s.on_update(Update(node, sent.task.version, w_i, self.info[node].num_examples), now)


def steps_and_group(task):
    return None if task is None else (task.config["local_steps"], task.config.get("group"))


def run_table(script: Script, table):
    """Each row: (now, op, node, expected). ``idle`` expects (Q, group) or None; ``arrive`` expects
    (outcome status, version after); ``timer`` expects the version after; ``next`` expects next_timer()."""
    for row, (now, op, node, expected) in enumerate(table):
        if op == "idle":
            got = steps_and_group(script.idle(node, now))
        elif op == "arrive":
            out = script.arrive(node, now)
            got = (out.status, script.s.version)
        elif op == "timer":
            script.s.on_timer(now)
            got = script.s.version
        elif op == "next":
            got = script.s.next_timer()
        else:
            raise AssertionError(op)
        assert got == expected, f"row {row}: {op} node {node} at t={now}: got {got}, expected {expected}"


def per_step(**kw) -> FedCompass:
    base = dict(preset="paper", q_min=2, q_max=8, lam=1.5, speed_momentum=0.5, alpha=0.5, staleness="constant",
                speed_model="per_step")
    base.update(kw)
    return FedCompass(**base)


# Hand-computed from §5 with Q_min = 2, Q_max = 8, λ = 1.5, β = 0.5. Clients 1, 2, 3 at start; 4 joins at t = 28.
# Arrival times are what each client's per-step time gives: S1 = 1 (1.5 from t = 24 to 40, a slowdown), S2 = 1.5,
# S3 = 4, S4 = 0.5.
MAIN = [
    (0, "idle", 1, (8, None)), (0, "idle", 2, (8, None)), (0, "idle", 3, (8, None)),
    # first arrival: S1 = 8/8 = 1; single update; no open group -> G0 {1}: Q 8, T_exp 16, T_max 8 + 8·1·1.5 = 20
    (8, "arrive", 1, ("applied", 1)), (8, "idle", 1, (8, 0)), (8, "next", None, 20.0),
    # S2 = 12/8 = 1.5; JOIN G0: floor((16 − 12)/1.5) = 2 in [2, 8]
    (12, "arrive", 2, ("applied", 2)), (12, "idle", 2, (2, 0)),
    # on time, G0 still waits for 1: parked
    (15, "arrive", 2, ("buffered", 2)), (15, "idle", 2, None),
    # G0 complete -> GROUP_AGG; fastest first: 1 (S 1) makes G1 {1} Q 8, T_exp 24, T_max 28; 2 joins floor(8/1.5) = 5
    (16, "arrive", 1, ("applied", 3)), (16, "idle", 2, (5, 1)), (16, "idle", 1, (8, 1)),
    (23.5, "arrive", 2, ("buffered", 3)),
    (24, "arrive", 1, ("applied", 4)), (24, "idle", 1, (8, 2)), (24, "idle", 2, (5, 2)),
    # G2: T_exp 32, T_max 36. Client 4 joins mid-run: Q_max, no group.
    (28, "idle", 4, (8, None)),
    (31.5, "arrive", 2, ("buffered", 4)), (31.5, "idle", 2, None),
    # S3 = 32/8 = 4; JOIN G2: floor(0/4) = 0 < 2; CREATE: floor((36 + 8·1 − 32)/4) = 3 -> G3 {3}: T_exp 44, T_max 50
    (32, "arrive", 3, ("applied", 5)), (32, "idle", 3, (3, 3)),
    # S4 = 4/8 = 0.5; JOIN: G2 floor(0) = 0, G3 floor(12/0.5) = 24 > 8; CREATE: G2 floor(12/0.5) = 24 > 8,
    # G3 floor((50 + 8·4 − 32)/0.5) = 100 > 8 -> none -> Q_max: G4 {4}: T_exp 36, T_max 38
    (32, "arrive", 4, ("applied", 6)), (32, "idle", 4, (8, 4)),
    # client 1 has slowed down and misses G2's T_max = 36: the timer aggregates G2 with client 2 alone
    (32, "next", None, 36.0), (36, "timer", None, 7),
    # 2 reassigned at 36: JOIN G3 floor((44 − 36)/1.5) = 5; G4 floor(0) = 0
    (36, "idle", 2, (5, 3)),
    # G4 complete; 4: JOIN G3 floor(8/0.5) = 16 > 8; CREATE G3 floor((50 + 8·1.5 − 36)/0.5) = 52 > 8 -> Q_max:
    # G5 {4}: T_exp 40, T_max 42
    (36, "arrive", 4, ("applied", 8)), (36, "idle", 4, (8, 5)),
    # late (G2 is closed): into B, not applied; S1 = 0.5·1 + 0.5·16/8 = 1.5; JOIN G3 floor(4/1.5) = 2
    (40, "arrive", 1, ("buffered", 8)), (40, "idle", 1, (2, 3)),
    # G5 complete: B merged; 4 joins G3 with floor((44 − 40)/0.5) = 8 = Q_max
    (40, "arrive", 4, ("applied", 9)), (40, "idle", 4, (8, 3)),
    (43, "arrive", 1, ("buffered", 9)), (43.5, "arrive", 2, ("buffered", 9)), (44, "arrive", 3, ("buffered", 9)),
    # G3 complete. Fastest first (decided at the aggregation, whatever order the clients ask in):
    # 4 (S .5) -> no open group -> G6 {4}: Q 8, T_exp 48, T_max 50; 1 and 2 (S 1.5): floor(4/1.5) = 2;
    # 3 (S 4): JOIN floor(4/4) = 1 < 2; CREATE floor((50 + 8·0.5 − 44)/4) = 2 -> G7: T_exp 52, T_max 56
    (44, "arrive", 4, ("applied", 10)),
    (44, "idle", 1, (2, 6)), (44, "idle", 2, (2, 6)), (44, "idle", 3, (2, 7)), (44, "idle", 4, (8, 6)),
    (44, "next", None, 50.0),
]


def test_conformance_main_script():
    sc = Script(per_step(), {1: 1, 2: 1, 3: 2, 4: 1}, start=[1, 2, 3])
    run_table(sc, MAIN)
    s = sc.s
    assert [s.estimate(i) for i in (1, 2, 3, 4)] == [(0.0, 1.5), (0.0, 1.5), (0.0, 4.0), (0.0, 0.5)]
    groups = {g["id"]: g for g in s.groups}
    assert sorted(groups) == [6, 7]
    assert (groups[6]["t_exp"], groups[6]["t_max"], groups[6]["pending"]) == (48.0, 50.0, [4, 1, 2])
    assert (groups[7]["t_exp"], groups[7]["t_max"], groups[7]["pending"]) == (52.0, 56.0, [3])
    assert s.buffered == 0


def test_conformance_intermediate_groups():
    sc = Script(per_step(), {1: 1, 2: 1, 3: 2, 4: 1}, start=[1, 2, 3])
    run_table(sc, MAIN[:4])
    assert [(g["id"], g["t_exp"], g["t_max"]) for g in sc.s.groups] == [(0, 16.0, 20.0)]
    cut = next(k for k, r in enumerate(MAIN) if r[0] == 32 and r[1] == "next")
    run_table(sc, MAIN[4:cut])
    assert [(g["id"], g["t_exp"], g["t_max"], g["pending"], g["arrived"]) for g in sc.s.groups] == [
        (2, 32.0, 36.0, [1], [2]), (3, 44.0, 50.0, [3], []), (4, 36.0, 38.0, [4], [])]
    late = next(k for k, r in enumerate(MAIN) if r[0] == 40 and r[1] == "arrive")
    run_table(sc, MAIN[cut:late + 1])
    assert sc.s.buffered == 1 and 2 not in {g["id"] for g in sc.s.groups}


@pytest.mark.parametrize("name, kw, table", [
    # JOIN ties go to the later group: S3 = 12/8 = 1.5 gives floor((16 − 12)/1.5) = 2 for G0 and
    # floor((15 − 12)/1.5) = 2 for G1. On the way, client 2 (joined at t = 5, S2 = 5/8) cannot join G0
    # (floor(6/0.625) = 9 > 8) and CREATE finds nothing ≤ Q_max (floor((20 + 8 − 10)/0.625) = 28): Q_max, G1: 15 / 17.5.
    ("join tie -> later group", {}, [
        (0, "idle", 1, (8, None)), (0, "idle", 3, (8, None)), (5, "idle", 2, (8, None)),
        (8, "arrive", 1, ("applied", 1)), (8, "idle", 1, (8, 0)),
        (10, "arrive", 2, ("applied", 2)), (10, "idle", 2, (8, 1)), (10, "next", None, 17.5),
        (12, "arrive", 3, ("applied", 3)), (12, "idle", 3, (2, 1)),
    ]),
    # CREATE clamps to Q_min: S2 = 19/8; floor((20 + 8 − 19)/2.375) = 3 < Q_min = 4 -> 4; T_exp 28.5, T_max 33.25
    ("create clamps to q_min", {"q_min": 4}, [
        (0, "idle", 1, (8, None)), (0, "idle", 2, (8, None)),
        (8, "arrive", 1, ("applied", 1)), (8, "idle", 1, (8, 0)),
        (19, "arrive", 2, ("applied", 2)), (19, "idle", 2, (4, 1)), (19, "next", None, 20.0),
        (20, "timer", None, 2), (21, "next", None, 33.25),
    ]),
    # CREATE without clamp: S2 = 14/8 = 1.75; JOIN floor(2/1.75) = 1 < 2; CREATE floor((20 + 8 − 14)/1.75) = 8
    ("create q*", {}, [
        (0, "idle", 1, (8, None)), (0, "idle", 2, (8, None)),
        (8, "arrive", 1, ("applied", 1)), (8, "idle", 1, (8, 0)),
        (14, "arrive", 2, ("applied", 2)), (14, "idle", 2, (8, 1)),
    ]),
])
def test_conformance_cases(name, kw, table):
    sc = Script(per_step(**kw), {1: 1, 2: 1, 3: 1}, start=[1, 3] if "tie" in name else [1, 2])
    run_table(sc, table)


def test_group_aggregation_reassigns_equal_speeds_in_arrival_order():
    """GROUP_AGG reassigns its members fastest first; two with the same estimate (to the last bit) keep their
    arrival order, as APPFL's CompassScheduler (a stable sort on S), not node-id order. Here 2 arrives before 1."""
    sc = Script(per_step(), {1: 1, 2: 1, 3: 1}, start=[1, 2, 3])
    run_table(sc, [
        (0, "idle", 1, (8, None)), (0, "idle", 2, (8, None)), (0, "idle", 3, (8, None)),
        # S3 = 1: G0 {3}, T_exp 16; S2 = S1 = 12/8 = 1.5: both JOIN G0 with floor(4/1.5) = 2
        (8, "arrive", 3, ("applied", 1)), (8, "idle", 3, (8, 0)),
        (12, "arrive", 2, ("applied", 2)), (12, "idle", 2, (2, 0)),
        (12, "arrive", 1, ("applied", 3)), (12, "idle", 1, (2, 0)),
        (15, "arrive", 2, ("buffered", 3)), (15, "arrive", 1, ("buffered", 3)),  # S stays 1.5 for both
        (16, "arrive", 3, ("applied", 4)),
    ])
    assert sc.s.estimate(1) == sc.s.estimate(2)
    (g,) = [g for g in sc.s.groups if g["open"]]
    assert g["pending"] == [3, 2, 1]  # 3 (S 1) opens G1, then 2 and 1 in the order they arrived


def test_create_clamp_group_times():
    sc = Script(per_step(q_min=4), {1: 1, 2: 1}, start=[1, 2])
    sc.idle(1, 0), sc.idle(2, 0)
    sc.arrive(1, 8), sc.idle(1, 8)
    sc.arrive(2, 19), sc.idle(2, 19)
    assert [(g["id"], g["t_exp"], g["t_max"]) for g in sc.s.groups] == [(0, 16.0, 20.0), (1, 28.5, 33.25)]


# --------------------------------------------------------------------------- the math on 3-element models
def math_strategy(**kw):
    return per_step(staleness="polynomial", staleness_a=1.0, **kw)


def test_first_arrivals_single_update_exact():
    sc = Script(math_strategy(), {1: 1, 2: 3}, start=[1, 2])
    sc.idle(1, 0), sc.idle(2, 0)
    # p1 = 1/4, τ = 0: w ← w − 0.5·1·0.25·(w0 − w1) = [1, 2, 3] − 0.125·[−2, 0, 2]
    assert sc.arrive(1, 8, [3.0, 2.0, 1.0]) == APPLIED
    np.testing.assert_array_equal(sc.s.params[0], [1.25, 2.0, 2.75])
    assert sc.s.estimate(1) == (0.0, 1.0)
    sc.idle(1, 8)
    # p2 = 3/4, τ = 1 (s = 1/2): w ← w − 0.5·0.5·0.75·(w0 − w2), w0 − w2 = [−4, −4, −4]
    assert sc.arrive(2, 12, [5.0, 6.0, 7.0]) == APPLIED
    np.testing.assert_array_equal(sc.s.params[0], [2.0, 2.75, 3.5])
    assert sc.s.estimate(2) == (0.0, 1.5)


def test_equal_client_weights_use_one_over_n():
    sc = Script(math_strategy(client_weights="equal"), {1: 1, 2: 3}, start=[1, 2])
    sc.idle(1, 0)
    sc.arrive(1, 8, [3.0, 2.0, 1.0])                       # c = 1/2: w0 − 0.5·0.5·[−2, 0, 2]
    np.testing.assert_array_equal(sc.s.params[0], [1.5, 2.0, 2.5])


def test_group_timer_and_late_buffer_math():
    sc = Script(math_strategy(), {1: 1, 2: 3}, start=[1, 2])
    s = sc.s
    sc.idle(1, 0), sc.idle(2, 0)
    sc.arrive(1, 8, [3.0, 2.0, 1.0]), sc.idle(1, 8)                          # v1 = [1.25, 2, 2.75]
    sc.arrive(2, 12, [5.0, 6.0, 7.0]), sc.idle(2, 12)                        # v2 = [2, 2.75, 3.5], joins G0 (Q 2)
    w1, w2 = np.array([1.25, 2.0, 2.75]), np.array([2.0, 2.75, 3.5])
    assert sc.arrive(2, 15, [0.0, 0.0, 0.0]) == BUFFERED
    np.testing.assert_array_equal(s.params[0], w2)
    # G0 at v2: client 2 (τ 0, c .75, base w2), client 1 (τ 1, s .5, c .25, base w1)
    assert sc.arrive(1, 16, [4.0, 4.0, 4.0]) == APPLIED
    w3 = w2 - 0.5 * 0.75 * (w2 - 0.0) - 0.5 * 0.5 * 0.25 * (w1 - 4.0)
    np.testing.assert_array_equal(s.params[0], [1.421875, 1.84375, 2.265625])
    np.testing.assert_array_equal(s.params[0], w3)
    assert steps_and_group(sc.idle(1, 16)) == (8, 1) and steps_and_group(sc.idle(2, 16)) == (5, 1)
    # client 1 on time in G1 (T_max 28); client 2 is not back at T_max: the timer aggregates G1 with 1 alone
    assert sc.arrive(1, 24, [2.0, 2.0, 2.0]) == BUFFERED and sc.idle(1, 24) is None
    assert s.next_timer() == 28.0
    s.on_timer(28.0)
    w4 = w3 - 0.5 * 0.25 * (w3 - 2.0)
    np.testing.assert_allclose(s.params[0], w4, rtol=0, atol=1e-15)
    assert s.version == 4
    assert steps_and_group(sc.idle(1, 28)) == (8, 2)                         # G2: T_exp 36, T_max 40
    # client 2 late (group 1 closed): buffered, w unchanged; S2 = 0.5·1.5 + 0.5·15/5 = 2.25; JOIN floor(5/2.25) = 2
    assert sc.arrive(2, 31, [1.0, 1.0, 1.0]) == BUFFERED
    np.testing.assert_allclose(s.params[0], w4, rtol=0, atol=1e-15)
    assert s.buffered == 1 and s.estimate(2) == (0.0, 2.25)
    assert steps_and_group(sc.idle(2, 31)) == (2, 2)
    assert sc.arrive(2, 35.5, [2.0, 2.0, 2.0]) == BUFFERED
    # G2 at v4: B (client 2 from v3: τ 1) + client 2 (τ 0) + client 1 (τ 0); plain sum, not normalised
    assert sc.arrive(1, 36, [0.0, 0.0, 0.0]) == APPLIED
    w5 = w4 - 0.5 * 0.5 * 0.75 * (w3 - 1.0) - 0.5 * 0.75 * (w4 - 2.0) - 0.5 * 0.25 * (w4 - 0.0)
    np.testing.assert_allclose(s.params[0], w5, rtol=0, atol=1e-14)
    assert s.buffered == 0 and s.version == 5
    st = s.state_dict()["strategy"]                                           # no update (nor its base model) kept
    assert st["buffer"] == [] and all(g["arrived"] == [] for g in st["groups"])


def test_non_trainable_single_takes_client_value_group_takes_mean():
    params = [np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0]), np.array([4, 6], dtype=np.int64)]
    s = Driven(per_step(non_trainable=[1]))
    info = {1: ClientInfo(1, 1), 2: ClientInfo(2, 1)}
    s.start(params, info.values(), 0.0)
    t1, t2 = s.on_idle(info[1], 0.0), s.on_idle(info[2], 0.0)

    def model(a, b, c):
        return [np.array([a] * 3, dtype=np.float64), np.array([b, b]), np.array([c, c], dtype=np.int64)]

    s.on_update(Update(1, t1.version, model(0.0, 7.0, 8), 1), 8.0)
    np.testing.assert_array_equal(s.params[1], [7.0, 7.0])
    np.testing.assert_array_equal(s.params[2], [8, 8])
    t1 = s.on_idle(info[1], 8.0)
    s.on_update(Update(2, t2.version, model(0.0, 1.0, 1), 1), 12.0)
    t2 = s.on_idle(info[2], 12.0)
    assert t2.config["group"] == t1.config["group"] == 0
    s.on_update(Update(2, t2.version, model(0.0, 3.0, 3), 1), 15.0)
    s.on_update(Update(1, t1.version, model(0.0, 6.0, 6), 1), 16.0)
    np.testing.assert_array_equal(s.params[1], [4.5, 4.5])                   # plain mean, no staleness
    np.testing.assert_array_equal(s.params[2], [4, 4])                       # rint(4.5) = 4


# --------------------------------------------------------------------------- degenerate cases and signs
def test_one_all_client_group_alpha_1_is_fedavg():
    sizes = {1: 10, 2: 30, 3: 60}
    s = Driven(per_step(alpha=1.0, staleness="polynomial"))
    info = {i: ClientInfo(i, n) for i, n in sizes.items()}
    s.start(W0, info.values(), 0.0)
    tasks = {i: s.on_idle(info[i], 0.0) for i in sizes}
    for i in sizes:                                       # equal speeds: first arrivals, then one group of all
        s.on_update(Update(i, tasks[i].version, [W0[0] * 0.5 + i], sizes[i]), 8.0)
    tasks = {i: s.on_idle(info[i], 8.0) for i in sizes}  # dispatched together: τ = 0 at the aggregation
    assert {t.config["group"] for t in tasks.values()} == {0}
    assert {t.config["local_steps"] for t in tasks.values()} == {8}
    sent = s.params[0]
    rng = np.random.default_rng(0)
    ws = {i: rng.normal(size=3) for i in sizes}
    for i in sizes:
        out = s.on_update(Update(i, tasks[i].version, [ws[i]], sizes[i]), 16.0)
    assert out == APPLIED
    fedavg = sum(sizes[i] * ws[i] for i in sizes) / sum(sizes.values())      # Flower's num-examples weighting
    np.testing.assert_allclose(s.params[0], fedavg, rtol=1e-12, atol=1e-12)
    assert not np.allclose(sent, fedavg)


def test_staler_update_moves_w_less():
    def moved(n_before: int) -> float:
        s = Driven(FedCompass(preset="paper", q_min=2, q_max=8, alpha=0.9, speed_model="per_step",
                              client_weights="equal"))
        info = {i: ClientInfo(i, 1) for i in (1, 2, 3)}
        s.start(W0, info.values(), 0.0)
        t = {i: s.on_idle(info[i], 0.0) for i in info}
        for i in (1, 2)[:n_before]:                       # Δ = 0: the model stays, the version goes up
            s.on_update(Update(i, t[i].version, [W0[0].copy()], 1), 1.0 + i)
        before = s.params[0]
        s.on_update(Update(3, t[3].version, [W0[0] + 1.0], 1), 8.0)
        return float(np.abs(s.params[0] - before).sum())

    fresh, stale = moved(0), moved(2)
    assert stale < fresh
    assert stale / fresh == pytest.approx(3.0 ** -0.5)     # (τ + 1)^(−a), τ = 2, a = 0.5


# --------------------------------------------------------------------------- an event-loop driver
class Sim:
    """A tiny virtual-time loop: idle clients are asked for work; arrivals and timers in time order."""

    def __init__(self, strategy, durations, sizes, *, seed=0):
        self.s = strategy
        self.dur = durations
        self.info = {i: ClientInfo(i, n) for i, n in sizes.items()}
        self.target = {i: np.random.default_rng(seed + i).normal(size=4) for i in sizes}
        self.heap: list = []
        self.seq = 0
        self.idle: set[int] = set(sizes)
        self.now = 0.0
        self.log: list = []

    def start(self):
        self.s.start([np.zeros(4)], self.info.values(), 0.0)
        self._dispatch()
        return self

    def _dispatch(self):
        for i in sorted(self.idle):
            task = self.s.on_idle(self.info[i], self.now)
            if task is None:
                continue
            q = task.config["local_steps"]
            self.idle.discard(i)
            self.log.append(("task", self.now, i, q, task.config.get("group"), task.version))
            sent = Dispatch(self.seq, task, self.now, self.s.params)      # the engine's record of the task
            heapq.heappush(self.heap, (self.now + self.dur[i](q), self.seq, i, sent))
            self.seq += 1

    def step(self):
        timer = self.s.next_timer()
        if timer is not None and (not self.heap or timer < self.heap[0][0]):
            self.now = timer
            self.s.on_timer(timer)
            self.log.append(("timer", timer, self.s.version))
        else:
            t, _, i, sent = heapq.heappop(self.heap)
            self.now = t
            w = [sent.params[0] + 0.25 * (self.target[i] - sent.params[0])]
            out = self.s.on_update(Update(i, sent.task.version, w, self.info[i].num_examples), sent, t)
            self.log.append(("arrive", t, i, sent.task.config.get("group"), out.status, self.s.version))
            self.idle.add(i)
        self._dispatch()

    def run(self, n):
        for _ in range(n):
            self.step()
        return self

    def clone(self, strategy):
        other = Sim(strategy, self.dur, {i: c.num_examples for i, c in self.info.items()})
        other.target, other.heap, other.seq = self.target, list(self.heap), self.seq
        other.idle, other.now, other.log = set(self.idle), self.now, list(self.log)
        return other


SIZES = {1: 50, 2: 80, 3: 120, 4: 60, 5: 90}
PER_STEP_SECONDS = {1: 0.05, 2: 0.11, 3: 0.23, 4: 0.31, 5: 0.47}


def proportional(sec):
    return lambda q: q * sec


def jittery(i, sec):
    # ±30 %: enough for some clients to miss their group's T_max (timers fire, late updates wait in B)
    return lambda q: q * sec * (1.0 + 0.3 * math.sin(q * i))


def make(**kw):
    base = dict(preset="paper", q_min=5, q_max=40, speed_model="per_step")
    base.update(kw)
    return FedCompass(**base)


def test_determinism_bit_identical():
    durs = {i: jittery(i, s) for i, s in PER_STEP_SECONDS.items()}
    a = Sim(make(speed_model="affine"), durs, SIZES).start().run(300)
    b = Sim(make(speed_model="affine"), durs, SIZES).start().run(300)
    assert a.log == b.log
    assert a.s.version == b.s.version > 20
    assert any(e[0] == "timer" for e in a.log)
    assert all(np.array_equal(x, y) for x, y in zip(a.s.params, b.s.params))


@pytest.mark.parametrize("speed_model", ["per_step", "affine"])
def test_state_dict_round_trip_continues_bit_identically(speed_model):
    durs = {i: jittery(i, s) for i, s in PER_STEP_SECONDS.items()}
    a = Sim(make(speed_model=speed_model), durs, SIZES).start().run(100)
    for _ in range(300):                                   # stop where B and a group's buffer both hold updates
        if a.s.buffered and any(g["arrived"] for g in a.s.groups):
            break
        a.step()
    else:
        raise AssertionError("no event left both buffers non-empty")
    state = a.s.state_dict()
    try:                                                   # through the checkpoint codec and JSON, when present
        from fedhive.engine import checkpoint
        tree, arrays = checkpoint.encode(state)
        state = checkpoint.decode(json.loads(json.dumps(tree)), {k: v.copy() for k, v in arrays.items()})
    except ImportError:
        pass
    restored = make(speed_model=speed_model)
    restored.load_state_dict(state)
    b = a.clone(restored)
    a.run(200), b.run(200)
    assert a.log == b.log
    assert all(np.array_equal(x, y) for x, y in zip(a.s.params, b.s.params))
    assert a.s.state_dict()["strategy"]["speed"] == b.s.state_dict()["strategy"]["speed"]


def test_state_dict_mid_group_has_int_keys_and_arrays():
    durs = {i: proportional(s) for i, s in PER_STEP_SECONDS.items()}
    a = Sim(make(), durs, SIZES).start().run(40)
    for _ in range(300):                                   # stop where a group holds on-time updates
        if any(g["arrived"] for g in a.s.groups):
            break
        a.step()
    else:
        raise AssertionError("no group ever held an arrival")
    st = a.s.state_dict()["strategy"]
    assert all(isinstance(i, int) for i, _ in st["speed"])
    arrived = [e for g in st["groups"] for e in g["arrived"]]
    assert arrived
    for j, ts, w_j, base in arrived + st["buffer"]:         # (client, version sent, its model, the model sent)
        assert isinstance(j, int) and isinstance(ts, int)
        assert all(isinstance(p, np.ndarray) for p in (*w_j, *base))


def test_task_local_steps_is_the_assigned_q_and_speeds_are_learned():
    # Durations follow the task's config["local_steps"]: if the client ran any other Q, S would be wrong.
    durs = {i: proportional(s) for i, s in PER_STEP_SECONDS.items()}
    sim = Sim(make(), durs, SIZES).start().run(250)
    qs = {e[3] for e in sim.log if e[0] == "task"}
    assert len(qs) > 3 and min(qs) >= 5 and max(qs) <= 40
    for i, sec in PER_STEP_SECONDS.items():
        o, s = sim.s.estimate(i)
        assert o == 0.0 and s == pytest.approx(sec, rel=1e-9)
    # the last task of each client carries the Q the scheduler recorded for it
    assert all(sim.s._q[i] == next(e[3] for e in reversed(sim.log) if e[0] == "task" and e[2] == i)
               for i in SIZES)


def _group_spreads(sim):
    arrivals: dict[int, list[float]] = {}
    for e in sim.log:
        if e[0] == "arrive" and e[3] is not None:
            arrivals.setdefault(e[3], []).append(e[1])
    spreads = [max(t) - min(t) for g, t in sorted(arrivals.items()) if len(t) >= 2]
    return spreads[len(spreads) // 3:]


def test_affine_model_groups_arrive_closer_with_fixed_overhead():
    durs = {i: (lambda q, s=s: 2.0 + q * s) for i, s in PER_STEP_SECONDS.items()}
    spread = {}
    for model in ("per_step", "affine"):
        sim = Sim(make(speed_model=model), durs, SIZES).start().run(400)
        spread[model] = float(np.mean(_group_spreads(sim)))
        if model == "affine":
            for i, sec in PER_STEP_SECONDS.items():
                o, s = sim.s.estimate(i)
                assert o == pytest.approx(2.0, rel=1e-6) and s == pytest.approx(sec, rel=1e-6)
    assert spread["affine"] < 0.5 * spread["per_step"], spread


# --------------------------------------------------------------------------- failures, joins, robustness
def test_failure_completes_group_and_client_returns_through_assign():
    sc = Script(per_step(), {1: 1, 2: 1}, start=[1, 2])
    s = sc.s
    sc.idle(1, 0), sc.idle(2, 0)
    sc.arrive(1, 8), sc.idle(1, 8)
    sc.arrive(2, 12), sc.idle(2, 12)                      # both in G0
    assert sc.arrive(2, 15) == BUFFERED
    v = s.version
    s.on_failure(1, 15.5)                                 # G0's last pending member is gone: aggregate now
    assert s.version == v + 1 and s.groups[0]["pending"] == [2]
    assert steps_and_group(sc.idle(2, 15.5)) == (8, 1)
    # G1 {2}: T_exp 15.5 + 8·1.5 = 27.5. Client 1 comes back: S1 is known, so it goes through ASSIGN:
    # JOIN floor((27.5 − 22)/1) = 5
    assert steps_and_group(sc.idle(1, 22)) == (5, 1)


def test_failure_of_lone_member_deletes_group():
    sc = Script(per_step(), {1: 1, 2: 1}, start=[1, 2])
    s = sc.s
    sc.idle(1, 0)
    sc.arrive(1, 8), sc.idle(1, 8)
    s.on_failure(1, 9.0)
    assert s.groups == [] and s.next_timer() is None


def test_diverged_aggregation_keeps_model_and_reassigns():
    sc = Script(per_step(), {1: 1}, start=[1])
    sc.idle(1, 0)
    before = sc.s.params[0]
    out = sc.arrive(1, 8, [np.inf, 0.0, 0.0])
    assert (out.status, out.reason) == ("rejected", "diverged")
    assert sc.s.version == 0 and sc.s.diverged == 1
    np.testing.assert_array_equal(sc.s.params[0], before)
    assert steps_and_group(sc.idle(1, 8)) == (8, 0)


def test_due_timer_runs_before_a_later_arrival():
    # The engine delivered the arrival at t = 21 before G0's timer at 20: G0 is closed first, 1 is late.
    sc = Script(per_step(), {1: 1, 2: 1}, start=[1, 2])
    sc.idle(1, 0), sc.idle(2, 0)
    sc.arrive(1, 8), sc.idle(1, 8)                       # G0: T_max 20
    assert sc.arrive(1, 21) == BUFFERED
    assert sc.s.buffered == 1 and [g["id"] for g in sc.s.groups] == [1]


@pytest.mark.parametrize("kw, match", [
    ({"q_min": 0}, "q_min"), ({"q_max": 2.5}, "q_max"), ({"q_min": 50, "q_max": 10}, "q_min must be <= q_max"),
    ({"lam": 0.9}, "lam"), ({"speed_momentum": 0.0}, "speed_momentum"), ({"speed_momentum": 1.5}, "speed_momentum"),
    ({"alpha": 0.0}, "alpha"), ({"alpha": 1.1}, "alpha"), ({"staleness": "exp"}, "staleness"),
    ({"staleness_a": -1.0}, "staleness_a"), ({"client_weights": "size"}, "client_weights"),
    ({"speed_model": "linear"}, "speed_model"),
])
def test_bad_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        FedCompass(**kw)


def test_defaults():
    s = FedCompass()  # chosen by benchmarks/tune_defaults.py
    assert s.config() == {"q_min": 5, "q_max": 20, "lam": 1.5, "speed_momentum": 0.9, "alpha": 0.9,
                          "staleness": "polynomial", "staleness_a": 0.5, "staleness_b": None,
                          "client_weights": "group", "speed_model": "affine", "max_weight_ratio": 10.0,
                          "preset": "default"}
    paper = FedCompass(preset="paper")  # the authors' configuration
    assert paper.config() == {"q_min": 20, "q_max": 100, "lam": 1.5, "speed_momentum": 0.9, "alpha": 0.9,
                              "staleness": "polynomial", "staleness_a": 0.5, "staleness_b": None,
                              "client_weights": "samples", "speed_model": "per_step", "max_weight_ratio": 10.0,
                              "preset": "paper"}


def test_gauges_follow_the_groups_and_the_buffer():
    sc = Script(per_step(), {1: 1, 2: 1, 3: 2, 4: 1}, start=[1, 2, 3])
    s = sc.s
    assert s.gauges() == {"weights_clamped": 0.0, "open_groups": 0.0, "buffered": 0.0}
    run_table(sc, MAIN[:4])                                    # G0 made at the first arrival
    assert s.gauges() == {"weights_clamped": 0.0, "open_groups": 1.0, "buffered": 0.0}
    cut = next(k for k, r in enumerate(MAIN) if r[0] == 32 and r[1] == "next")
    run_table(sc, MAIN[4:cut])                                 # G2, G3, G4 open (see the intermediate groups)
    assert s.gauges() == {"weights_clamped": 0.0, "open_groups": 3.0, "buffered": 0.0}
    late = next(k for k, r in enumerate(MAIN) if r[0] == 40 and r[1] == "arrive")
    run_table(sc, MAIN[cut:late + 1])                          # G2 closed by its timer, G4 done; 1 late into B
    assert s.gauges() == {"weights_clamped": 0.0, "open_groups": 2.0, "buffered": 1.0}
    run_table(sc, MAIN[late + 1:])                             # B merged; G6 and G7 open
    assert s.gauges() == {"weights_clamped": 0.0, "open_groups": 2.0, "buffered": 0.0}
    for _ in range(2):
        g = s.gauges()
        assert g == {"weights_clamped": 0.0, "open_groups": float(sum(x["open"] for x in s.groups)), "buffered": float(s.buffered)}
        assert all(type(v) is float for v in g.values())
