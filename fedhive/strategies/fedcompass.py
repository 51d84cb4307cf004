"""FedCompass: a computing-power-aware scheduler gives each client its own number of local steps so that groups
of clients finish together, and the server aggregates each arrival group at once.

Source: Li et al., "FedCompass: Efficient Cross-Silo Federated Learning on Heterogeneous Client Devices Using a
Computing Power-Aware Scheduler", ICLR 2024, arXiv 2309.14675. The rules follow the authors' code [AUTH]:
``APPFL/FedCompass`` ``src/appfl/scheduler/compass_scheduler.py`` and ``src/appfl/aggregator/fedcompass_aggregator.py``
(HEAD af96db2), the same logic as ``APPFL/APPFL`` ``src/appfl/algorithm/scheduler/compass_scheduler.py``;
``shared/ALGORITHMS.md`` §5 writes them out as pseudo-code, which ``speed_model="per_step"`` follows to the letter.

Per client ``i``: ``S[i]`` seconds per local step, ``Q[i]`` its local steps, ``t0[i]`` dispatch time, ``ts[i]`` the
version it trains on, ``goa[i]`` its arrival group; for a task in flight the last three are the engine's dispatch
record (``sent.sent_at``, ``sent.task.version``, ``sent.task.config["group"]``), and ``Δ_j`` is taken against the
model in that record, so the strategy keeps no in-flight table or model history of its own. A group has pending and arrived members, an expected arrival
time ``T_exp`` and a latest arrival time ``T_max = now + λ·(predicted duration)``. An on-time arrival waits
("parked": ``on_idle`` returns ``None``) until its group aggregates, which happens when the last pending member
arrives or at ``T_max`` (a timer). A late arrival goes to the general buffer ``B``, which joins the next group
aggregation. The update is ``w ← w − Σ_j α·s(v − ts_j)·c_j·Δ_j`` with ``Δ_j = w(ts_j) − w_j``, not normalised by the
group size (parity with the code).

Engine mapping: "send (w, Q[i]) to i" marks ``i`` ready with a pending assignment (decided at the event time);
the engine then calls ``on_idle(i)``, which returns ``Task(i, v, {"local_steps": Q[i], "group": g})``.

[OURS] choices:

- ``c_j = p_j = n_j / Σ n`` (``client_weights="samples"``, the paper-era code) by default, ``1/N`` with ``"equal"``
  (current APPFL); with samples, one all-client group, ``α = 1`` and zero staleness is exactly FedAvg.
- Staleness uses ``(τ + 1)^(−a)``: the repository's ``+a`` makes stale updates weigh more, a bug.
- The step is the delta form (APPFL's ``gradient_based`` mode) with ``Δ_j`` taken against the model client ``j``
  was sent, computed as ``w + Σ coef_j·w_j − Σ coef_j·w(ts_j)``; APPFL's default mode instead mixes ``w_j`` into the
  current ``w`` (``(1 − Σ α_t)·w + Σ α_t·w_j``), which ignores what the client started from.
- A client's first arrival measures ``S[i] = (now − t0[i]) / Q_max`` from its own dispatch time: for clients
  dispatched at start that is the code's ``(now − t_start) / Q_max``; a client that joins mid-run (adopted in
  ``on_idle``) gets ``Q_max`` steps and no group, like a client at start.
- ``t0[i]`` is when the task is really handed out (the engine asks right after the event that made the assignment,
  so the two agree, but a client that comes back late is not charged its idle time as training). The task carries
  the global model current at dispatch, and ``ts[i]`` is that version.
- Timers run on the event loop, never on a thread (the code fires them from a thread without its lock).
  ``next_timer`` is the earliest ``T_max`` over open groups. At ``T_max`` a group with arrivals aggregates; a group
  without arrivals is closed (the code leaves it, but nobody can join it any more: ``T_exp < T_max ≤ now``), so the
  timer is not asked again. Due timers that the engine has not delivered yet (``T_max < now``) are run first when an
  update or a failure comes in, so that late arrivals are judged as in the pseudo-code; the outcome then reflects
  only what the update itself caused.
- An arrival in a group that is already closed is late, whatever the time (the code sets ``T_max = 0`` on close).
- ``B`` is a list in arrival order, not a dict by client: a client late twice before the next aggregation keeps
  both updates (the code's dict merge drops one, and a client both in ``B`` and in the group loses its ``B`` entry).
- A group is deleted when it has neither pending nor arrived members (the code deletes it when its pending set
  empties after a late arrival or an aggregation).
- ``on_failure(i)``: ``i`` leaves its group's pending set; if that empties an open group with arrivals, the group
  aggregates at once (everyone who can arrive has arrived); an empty group is deleted. ``S[i]`` is kept, so when
  ``i`` is idle again it goes through ASSIGN (a client with no estimate yet gets ``Q_max`` and no group again).
  A client lost while parked (it has no task, so the engine reports no failure) is reassigned like the others;
  its new group aggregates at ``T_max`` without it, and it is late (``B``) if it ever comes back.
- Replies the engine rejects (unknown task, a claimed version other than the task's) never reach the strategy; the
  engine reports their task as a failure.
- A diverged aggregation (non-finite result) keeps ``w`` and the version, consumes the updates it was given and
  still reassigns the group's clients; the update that triggered it is ``rejected`` / ``diverged``.
- Buffered updates keep the client's arrays as received (no copy): the engine hands over fresh arrays.
- Seconds per step never drop below ``1e-9`` (an instant arrival cannot make ``floor(x / S)`` divide by zero).
- ``CREATE`` counts only ``0 ≤ q ≤ Q_max`` (the code's running ``max`` starts at −1, so negative values never win).
- ``T_max = now + (Q·S)·λ`` in the code's evaluation order.
- "Fastest first" is ascending predicted duration of ``Q_max`` steps (ascending ``S`` with ``per_step``), ties by
  node id.
- Bookkeeping, so that no event scans all groups or all members (at 10,000 clients there are ~50 open groups of
  hundreds of members): the open groups are kept sorted by ``T_exp`` (JOIN's ``q`` never decreases with ``T_exp``,
  so the best group is found by binary search), in a heap by ``(T_max, id)`` (``next_timer`` and the due groups),
  and each keeps a lazy heap of its members' predicted ``Q_max`` durations (CREATE's fastest member); pending
  members are an insertion-ordered dict. These change how the rules are evaluated, never their result.
- ``speed_model="affine"`` (the default, for deployments where each task has seconds of fixed overhead: model
  transfer, start-up): the predicted duration of ``q`` steps is ``o_i + q·S_i``. ``(q, duration)`` pairs are
  fitted by exponentially weighted least squares with the same ``β`` (the new sample weighs ``β``, the past
  ``1 − β``): ``S_i = Cov(q, d) / Var(q)``, ``o_i = E[d] − S_i·E[q]``. The fit is used only when the weighted spread of
  ``q`` is informative (standard deviation ≥ 5 % of the mean) and gives ``S_i > 0``, ``o_i ≥ 0``. A fit with
  ``o_i < 0`` falls back to the proportional ``o_i = 0, S_i = E[d]/E[q]``; otherwise (too little spread, e.g.
  only one distinct ``q`` seen, or a non-positive slope) the last overhead is kept, capped at 90 % of ``E[d]``,
  and ``S_i = (E[d] − o_i)/E[q]``, which predicts the mean duration exactly at the usual ``q``. The first
  estimate is the paper's (``o_i = 0``). JOIN solves ``q = floor((T_exp − now − o_i)/S_i)``; CREATE uses
  ``q = floor((T_max + d_fastest(Q_max) − now − o_i)/S_i)`` with ``d_fastest`` the shortest predicted ``Q_max``-step
  duration in the group; ``T_exp = now + o_i + q·S_i`` and ``T_max = now + (o_i + q·S_i)·λ``. With ``o = 0`` all of
  these are the ``per_step`` formulas.
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np

from . import params as P
from .base import (APPLIED, BUFFERED, DEFAULT_MAX_WEIGHT_RATIO, ClientInfo, Dispatch, Outcome, Params, Strategy, Task,
                   Update, frozen_config, presets)
from .staleness import STALENESS_KINDS, make_staleness, staleness_parameters
from .weighted_sum import mean_of, weighted_sum

CLIENT_WEIGHTS = ("samples", "equal", "group")
SPEED_MODELS = ("per_step", "affine")

MIN_SECONDS_PER_STEP = 1e-9
# The affine fit needs the weighted standard deviation of q to be at least this fraction of its mean.
MIN_STEP_SPREAD = 0.05
# Without an informative fit, the overhead kept is at most this fraction of the mean duration.
MAX_OVERHEAD_SHARE = 0.9


_Entry = tuple[int, int, Params, Params]  # an update to apply: (j, ts_j, w_j, w(ts_j))


@dataclass(slots=True)
class _Group:
    """An arrival group: its members, deadlines, and the buffer of on-time updates (``gbuf``).

    ``pending`` is a dict used as an insertion-ordered set (join order, as the ``groups`` view and checkpoints show
    it; leaving is O(1)). ``fastest`` is, while the group is open, a lazy min-heap of ``(predicted Q_max duration,
    member)``: an entry is pushed whenever a member joins or its estimate changes (its own arrival), and an entry
    whose member has left or whose duration is no longer the member's current one is dropped when it reaches the
    top, so the top is CREATE's ``d_fastest`` without a scan of the members.
    """

    gid: int
    t_exp: float
    t_max: float
    pending: dict[int, None] = field(default_factory=dict)
    arrived: dict[int, _Entry] = field(default_factory=dict)  # j -> (j, ts, w_j, w(ts))
    open: bool = True
    fastest: list[tuple[float, int]] = field(default_factory=list)
    # While open: the task config for each step count given in this group, shared by those tasks (a few dozen
    # objects per group instead of one per task; at 10,000 clients, 401 → 258 young-generation collections)
    configs: dict[int, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(slots=True)
class _Estimate:
    """Client ``i``'s speed model: ``q`` local steps take ``o_i + q·S_i`` seconds.

    One record per client (rather than a dict per quantity): an arrival reads and writes all of it, and at 10,000
    clients the separate dicts cost a cache miss each (``_observe`` 1.7 → 1.1 µs in a micro-benchmark).
    """

    speed: float  # S_i
    overhead: float = 0.0  # o_i (0 with per_step)
    moments: list[float] | None = None  # affine: the weighted E[q], E[q²], E[d], E[q·d] of its samples

    def duration(self, q: int) -> float:
        """Predicted seconds for ``q`` local steps."""
        return self.overhead + q * self.speed


@presets(paper={"q_min": 20, "q_max": 100, "lam": 1.5, "speed_momentum": 0.9, "alpha": 0.9,
               "staleness": "polynomial", "staleness_a": 0.5, "client_weights": "samples", "speed_model": "per_step"})
class FedCompass(Strategy):
    """Computing-power-aware group scheduling with per-client local steps.

    Defaults and the paper's settings
    ---------------------------------
    The defaults (``q_min=5, q_max=20, client_weights="group", speed_model="affine"``) were chosen on three tuning
    fleets that are not the benchmark's (30 to 80 clients, other device mixes, label skews and seeds;
    ``benchmarks/tune_defaults.py``, results in ``benchmarks/results/tune_defaults.json``): a geometric-mean speed-up
    of 6.1x over FedAvg to 85 %, where the paper's settings (``preset="paper"``: ``Q`` in 20..100, sample-size
    weights, per-step speeds) reached 85 % on none of them. ``preset="paper"`` restores the authors' configuration
    (``q_min=20, q_max=100, client_weights="samples", speed_model="per_step"``; the conformance tests use it).

    Parameters
    ----------
    q_min, q_max : int
        The range of local steps a client may be given (``Q_min ≤ Q_max``).
    lam : float
        ``λ ≥ 1``: a group's latest arrival time is ``λ`` times its predicted duration after its creation.
    speed_momentum : float
        ``β`` in (0, 1]: the weight of the newest speed sample.
    alpha : float
        Server step ``α`` in (0, 1].
    staleness, staleness_a, staleness_b
        The staleness function ``s(τ)`` (see ``fedhive.strategies.staleness``).
        ``staleness_a``, ``staleness_b`` ``None``: the kind's default (polynomial ``a = 0.5``;
        hinge ``a = 10``, ``b = 4``).
    client_weights : str
        ``"samples"`` (``c_j = n_j / Σ n``), ``"equal"`` (``c_j = 1/N``), or ``"group"`` (``c_j = n_j / Σ_{i∈M} n_i``
        over the updates merged in this step, so every step is a full FedAvg-sized step: [OURS], not the paper's
        rule, offered because with tens of clients the paper's per-client weights make each group step tiny).
    speed_model : str
        ``"per_step"`` (seconds per step, the paper's) or ``"affine"`` (overhead + steps × seconds per step).
    max_weight_ratio : float
        ``n_j`` is clamped to this many times the live fleet's median claim (see ``Strategy``; 0: off).
    non_trainable : sequence of int
        Tensors that are averaged, never staleness-weighted (see ``Strategy``).
    """

    name = "fedcompass"
    tracks_wakeups = True  # parked clients wait for their group's aggregation, which pokes

    def __init__(self, *, q_min: int = 5, q_max: int = 20, lam: float = 1.5, speed_momentum: float = 0.9,
                 alpha: float = 0.9, staleness: str = "polynomial", staleness_a: float | None = None,
                 staleness_b: float | None = None, client_weights: str = "group", speed_model: str = "affine",
                 max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO, non_trainable: Sequence[int] = ()) -> None:
        super().__init__(non_trainable=non_trainable, max_weight_ratio=max_weight_ratio)
        self.q_min = P.positive_int("q_min", q_min)
        self.q_max = P.positive_int("q_max", q_max)
        if self.q_min > self.q_max:
            raise ValueError(f"q_min must be <= q_max, got q_min={q_min!r} and q_max={q_max!r}")
        self.lam = P.number("lam", lam, low=1.0)
        self.speed_momentum = P.number("speed_momentum", speed_momentum, low=0.0, high=1.0, low_open=True)
        self.alpha = P.number("alpha", alpha, low=0.0, high=1.0, low_open=True)
        self.staleness = P.choice("staleness", staleness, STALENESS_KINDS)
        self.staleness_a, self.staleness_b = staleness_parameters(self.staleness, staleness_a, staleness_b)
        self._s = make_staleness(self.staleness, self.staleness_a, self.staleness_b)
        self.client_weights = P.choice("client_weights", client_weights, CLIENT_WEIGHTS)
        self.speed_model = P.choice("speed_model", speed_model, SPEED_MODELS)
        self._first_task = frozen_config({"local_steps": self.q_max})  # a client's first task: Q_max, no group
        self._reset()

    def _reset(self) -> None:
        self._t_start: float | None = None
        self._est: dict[int, _Estimate] = {}  # clients that have arrived at least once
        self._q: dict[int, int] = {}
        self._ready: dict[int, Mapping[str, Any]] = {}  # assigned, not dispatched yet: the task's config
        self._parked: dict[int, int] = {}
        self._groups: dict[int, _Group] = {}  # every group not yet deleted, in creation (= id) order
        # Indices of the open groups, kept by _open_group / _close (the scheduler never scans all groups):
        self._open: dict[int, _Group] = {}
        self._by_t_exp: list[tuple[float, int]] = []  # (T_exp, id), sorted: JOIN's binary search
        self._timers: list[tuple[float, int]] = []  # heap of (T_max, id); entries of closed groups dropped lazily
        self._next_gid = 0
        self._buffer: list[_Entry] = []  # late arrivals

    def config(self) -> dict[str, Any]:
        return {"q_min": self.q_min, "q_max": self.q_max, "lam": self.lam, "speed_momentum": self.speed_momentum,
                "alpha": self.alpha, "staleness": self.staleness, "staleness_a": self.staleness_a,
                "staleness_b": self.staleness_b, "client_weights": self.client_weights,
                "speed_model": self.speed_model, "max_weight_ratio": self.max_weight_ratio}

    # ----------------------------------------------------------------- read-only views (metrics, tests)
    @property
    def groups(self) -> list[dict[str, Any]]:
        """The arrival groups in creation order: id, open, pending and arrived members, ``T_exp``, ``T_max``."""
        return [{"id": g.gid, "open": g.open, "pending": list(g.pending), "arrived": list(g.arrived),
                 "t_exp": g.t_exp, "t_max": g.t_max} for g in self._groups.values()]

    @property
    def buffered(self) -> int:
        """Late updates waiting in the general buffer ``B``."""
        return len(self._buffer)

    def gauges(self) -> dict[str, float]:
        return {**super().gauges(), "open_groups": float(len(self._open)), "buffered": float(len(self._buffer))}

    def estimate(self, node_id: int) -> tuple[float, float] | None:
        """``(overhead seconds, seconds per step)`` for a client, or ``None`` before its first arrival."""
        e = self._est.get(node_id)
        return None if e is None else (e.overhead, e.speed)

    # ----------------------------------------------------------------- the contract
    def _on_start(self, now: float) -> None:
        self._reset()
        self._t_start = float(now)

    def on_idle(self, client: ClientInfo, now: float) -> Task | None:
        i = client.node_id
        if i in self._parked:  # (known already: it arrived.) Its group's aggregation asks it again
            return None
        self._adopt(client)
        cfg = self._ready.pop(i, None)
        if cfg is None:
            if i in self._est:
                self._assign(i, now)
                cfg = self._ready.pop(i)
            else:
                cfg = self._first_task
                self._q[i] = self.q_max
        return Task(i, self._version, cfg)

    def on_update(self, update: Update, sent: Dispatch, now: float) -> Outcome:
        i = update.node_id
        if self._timers and self._timers[0][0] < now:  # a T_max has passed (or a closed group's stale entry)
            self._catch_up(now)
        task = sent.task
        q, group, ts = task.config["local_steps"], task.config.get("group"), task.version
        est = self._observe(i, q, float(now) - sent.sent_at)
        entry = (i, ts, update.params, sent.params)
        if group is None:
            ok = self._aggregate([entry], single=True)
            self._assign(i, now)
            return APPLIED if ok else Outcome("rejected", "diverged")
        g = self._groups.get(group)
        if g is None or not g.open or now > g.t_max:
            if g is not None:
                del g.pending[i]
                self._drop_if_empty(g)
            self._buffer.append(entry)
            self._assign(i, now)
            return BUFFERED
        del g.pending[i]
        g.arrived[i] = entry
        heapq.heappush(g.fastest, (est.duration(self.q_max), i))  # _observe changed its estimate
        self._parked[i] = g.gid
        if g.pending:
            return BUFFERED
        v0, diverged0 = self._version, self.diverged
        self._group_aggregate(g, now)
        if self._version != v0:
            return APPLIED
        return Outcome("rejected", "diverged") if self.diverged != diverged0 else BUFFERED

    def next_timer(self) -> float | None:
        timers, open_ = self._timers, self._open
        while timers and timers[0][1] not in open_:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def on_timer(self, now: float) -> None:
        for g in self._due(now, strict=False):
            self._group_aggregate(g, now)

    def on_failure(self, sent: Dispatch, now: float) -> None:
        self._catch_up(now)
        self._leave_group(sent.task.node_id, sent.task.config.get("group"), now)

    # ----------------------------------------------------------------- scheduler: when, who, how many steps
    def _due(self, now: float, *, strict: bool) -> list[_Group]:
        """The open groups whose ``T_max`` has passed (``strict``) or come, by ``(T_max, id)``; taken off the timers."""
        due = []
        while (t := self.next_timer()) is not None and (t < now if strict else t <= now):
            due.append(self._open[heapq.heappop(self._timers)[1]])
        return due

    def _catch_up(self, now: float) -> None:
        for g in self._due(now, strict=True):
            self._group_aggregate(g, now)

    def _leave_group(self, i: int, group: int | None, now: float) -> None:
        """Client ``i``'s task in ``group`` failed: it leaves the group's pending members."""
        g = self._groups.get(group) if group is not None else None
        if g is None:
            return
        del g.pending[i]
        if not g.pending and g.arrived and g.open:
            self._group_aggregate(g, now)
        else:
            self._drop_if_empty(g)

    def _drop_if_empty(self, g: _Group) -> None:
        if not g.pending and not g.arrived:
            self._close(g)
            del self._groups[g.gid]

    def _open_group(self, g: _Group) -> None:
        """Add an open group to the indices (its members' durations must be in ``g.fastest`` already)."""
        self._groups[g.gid] = g
        self._open[g.gid] = g
        bisect.insort(self._by_t_exp, (g.t_exp, g.gid))
        heapq.heappush(self._timers, (g.t_max, g.gid))

    def _close(self, g: _Group) -> None:
        """Nobody may join ``g`` any more: take it out of the open-group indices (its timer entry goes lazily)."""
        if not g.open:
            return
        g.open = False
        g.fastest, g.configs = [], {}
        del self._open[g.gid]
        order = self._by_t_exp
        del order[bisect.bisect_left(order, (g.t_exp, g.gid))]

    def _group_aggregate(self, g: _Group, now: float) -> bool:
        """GROUP_AGG: apply ``B ∪ gbuf[g]``, close ``g``, reassign its parked members fastest first."""
        self._close(g)
        if not g.arrived:
            self._drop_if_empty(g)
            return False
        entries = self._buffer + list(g.arrived.values())
        self._buffer = []
        ok = self._aggregate(entries, single=False)
        est, q_max = self._est, self.q_max
        # Fastest first; equal estimates keep their arrival order (a stable sort on the duration alone, as APPFL's
        # CompassScheduler sorts on S), not the node id.
        members = sorted(g.arrived, key=lambda j: est[j].duration(q_max))
        g.arrived = {}
        woken = []
        for j in members:
            if self._parked.pop(j, None) is not None:
                self._assign(j, now)
                woken.append(j)
        self._drop_if_empty(g)
        self._poke(woken)  # only a group's aggregation un-parks clients: its members
        return ok

    def _assign(self, i: int, now: float) -> None:
        """ASSIGN: put ``i`` in a group with a step count; it is dispatched by the next ``on_idle``."""
        e = self._est[i]
        if not self._open:
            q = self.q_max
            g = self._new_group(i, e, q, now)
        else:
            found = self._join(e, now)
            if found is None:
                q = self._create_steps(e, now)
                g = self._new_group(i, e, q, now)
            else:
                gid, q = found
                g = self._open[gid]
                g.pending[i] = None
                heapq.heappush(g.fastest, (e.duration(self.q_max), i))
        self._q[i] = q
        cfg = g.configs.get(q)
        if cfg is None:
            cfg = g.configs[q] = _task_config(q, g.gid)
        self._ready[i] = cfg

    def _join(self, e: _Estimate, now: float) -> tuple[int, int] | None:
        """JOIN: the largest ``q`` in ``[Q_min, Q_max]`` that lands on an open group's ``T_exp`` (ties: later group).

        ``q(g) = floor((T_exp − now − o_i)/S_i)`` never decreases with ``T_exp`` (each float operation is monotone),
        so over the open groups sorted by ``T_exp`` the groups with ``q ≤ Q_max`` are a prefix, found by binary
        search; its last group has the largest such ``q``, and the groups sharing that ``q`` sit just before it.
        """
        o, s = e.overhead, e.speed
        order, q_max = self._by_t_exp, self.q_max
        # Binary search for the first group whose q exceeds Q_max: a loop rather than bisect with a key function,
        # which costs a Python call per probe (2 % of all instructions in the 10,000-client benchmark).
        lo, hi = 0, len(order)
        while lo < hi:
            mid = (lo + hi) // 2
            if math.floor((order[mid][0] - now - o) / s) > q_max:
                hi = mid
            else:
                lo = mid + 1
        if lo == 0:
            return None
        t, gid = order[lo - 1]
        q = math.floor((t - now - o) / s)
        if q < self.q_min:
            return None
        for j in range(lo - 2, -1, -1):  # earlier T_exp, same q: the tie goes to the later group
            t, other = order[j]
            if math.floor((t - now - o) / s) != q:
                break
            gid = max(gid, other)
        return gid, q

    def _fastest(self, g: _Group) -> float:
        """The shortest predicted ``Q_max``-step duration among the members of the open group ``g``."""
        heap, pending, arrived = g.fastest, g.pending, g.arrived
        while True:
            d, j = heap[0]
            if (j in pending or j in arrived) and d == self._est[j].duration(self.q_max):
                return d
            heapq.heappop(heap)  # j has left, or arrived since with a new estimate (pushed then)

    def _create_steps(self, e: _Estimate, now: float) -> int:
        """CREATE's ``q*``: arrive one fastest-member ``Q_max`` span after an open group's ``T_max``."""
        o, s = e.overhead, e.speed
        qstar: int | None = None
        for g in self._open.values():
            if not now < g.t_max:
                continue
            q = math.floor((g.t_max + self._fastest(g) - now - o) / s)
            if 0 <= q <= self.q_max and (qstar is None or q > qstar):
                qstar = q
        if qstar is None:
            return self.q_max
        return max(qstar, self.q_min)

    def _new_group(self, i: int, e: _Estimate, q: int, now: float) -> _Group:
        d = e.duration(q)
        gid = self._next_gid
        self._next_gid += 1
        g = _Group(gid, float(now + d), float(now + d * self.lam), pending={i: None},
                   fastest=[(e.duration(self.q_max), i)])
        self._open_group(g)
        return g

    # ----------------------------------------------------------------- speed estimates
    def _observe(self, i: int, q: int, duration: float) -> _Estimate:
        """Update ``S[i]`` (and ``o_i``) from a task of ``q`` steps that took ``duration`` seconds."""
        beta = self.speed_momentum
        e = self._est.get(i)
        if self.speed_model == "per_step":
            sample = duration / q
            if e is None:
                e = self._est[i] = _Estimate(max(sample, MIN_SECONDS_PER_STEP))
            else:
                e.speed = max((1.0 - beta) * e.speed + beta * sample, MIN_SECONDS_PER_STEP)
            return e
        qf = float(q)
        if e is None or e.moments is None:
            first = _Estimate(max(duration / q, MIN_SECONDS_PER_STEP), 0.0, [qf, qf * q, duration, q * duration])
            self._est[i] = first
            return first
        # E[x] ← (1 − β)·E[x] + β·x for x = q, q², d, q·d (in place: one list per client for the whole run)
        m, keep = e.moments, 1.0 - beta
        m[0] = eq = keep * m[0] + beta * qf
        m[1] = eqq = keep * m[1] + beta * (qf * q)
        m[2] = ed = keep * m[2] + beta * duration
        m[3] = eqd = keep * m[3] + beta * (q * duration)
        var = eqq - eq * eq
        if var > (MIN_STEP_SPREAD * eq) ** 2:
            slope = (eqd - eq * ed) / var
            o = ed - slope * eq
            if slope > 0 and o >= 0:
                e.overhead, e.speed = o, max(slope, MIN_SECONDS_PER_STEP)
                return e
            if slope > 0:
                e.overhead, e.speed = 0.0, max(ed / eq, MIN_SECONDS_PER_STEP)
                return e
        o = min(max(e.overhead, 0.0), MAX_OVERHEAD_SHARE * ed)
        e.overhead = o
        e.speed = max((ed - o) / eq, MIN_SECONDS_PER_STEP)
        return e

    # ----------------------------------------------------------------- aggregator: how much
    def _aggregate(self, entries: list[_Entry], *, single: bool) -> bool:
        """``w ← w + Σ coef_j·w_j − Σ coef_j·w(ts_j)``, one read of each base model, then commit.

        Non-trainable tensors take the client's value (``single``) or the members' plain mean.
        """
        v, alpha = self._version, self.alpha
        step = {ts: alpha * self._s(v - ts) for ts in {e[1] for e in entries}}  # α·s(v − ts), once per version
        if self.client_weights == "group":
            total = sum(self._weight(j) for j, _, _, _ in entries) or 1.0
            coefs = [step[ts] * self._weight(j) / total for j, ts, _, _ in entries]
        elif self.client_weights == "samples":
            coefs = [step[ts] * self._weight(j) for j, ts, _, _ in entries]
        else:
            equal = 1.0 / max(len(self._clients), 1)
            coefs = [step[ts] * equal for _, ts, _, _ in entries]
        base: dict[int, float] = {}
        models: dict[int, Params] = {}
        for (_, ts, _, sent), c in zip(entries, coefs):
            base[ts] = base.get(ts, 0.0) + c
            models[ts] = sent
        terms: list[tuple[float, Sequence[np.ndarray]]] = [(1.0 - base.pop(v, 0.0), self._params)]
        terms += [(c, p) for (_, _, p, _), c in zip(entries, coefs)]
        terms += [(-base[ts], models[ts]) for ts in sorted(base)]
        new = weighted_sum(terms, indices=self._trainable)
        for t in self._fixed:
            if single:
                new[t] = np.array(entries[0][2][t], copy=True)
            else:
                new[t] = mean_of([p[t] for _, _, p, _ in entries])
        return self._commit(new, wakes_parked=False)  # parked clients wait for their group, not the model

    # ----------------------------------------------------------------- persistence
    # Models appear as the very arrays the strategy holds (the model a task was sent with is shared by every entry
    # of that version); the checkpoint stores each array once and gives back shared arrays.
    def _state(self) -> dict[str, Any]:
        return {
            "t_start": self._t_start,
            "next_gid": self._next_gid,
            "speed": [[i, e.speed] for i, e in self._est.items()],
            "overhead": [[i, e.overhead] for i, e in self._est.items() if e.moments is not None],
            "moments": [[i, list(e.moments)] for i, e in self._est.items() if e.moments is not None],
            "q": [[i, q] for i, q in self._q.items()],
            "ready": [[i, c["local_steps"], c.get("group")] for i, c in self._ready.items()],
            "parked": [[i, g] for i, g in self._parked.items()],
            "groups": [{"id": g.gid, "t_exp": g.t_exp, "t_max": g.t_max, "open": g.open, "pending": list(g.pending),
                        "arrived": [list(e) for e in g.arrived.values()]}
                       for g in self._groups.values()],
            "buffer": [[j, ts, p, base] for j, ts, p, base in self._buffer],
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self._reset()
        self._t_start = None if state["t_start"] is None else float(state["t_start"])
        self._next_gid = int(state["next_gid"])
        self._est = {int(i): _Estimate(float(s)) for i, s in state["speed"]}
        for i, o in state["overhead"]:
            self._est[int(i)].overhead = float(o)
        for i, m in state["moments"]:
            self._est[int(i)].moments = [float(x) for x in m]
        self._q = {int(i): int(q) for i, q in state["q"]}
        self._ready = {int(i): _task_config(int(q), None if g is None else int(g)) for i, q, g in state["ready"]}
        self._parked = {int(i): int(g) for i, g in state["parked"]}
        for gs in sorted(state["groups"], key=lambda gs: int(gs["id"])):
            g = _Group(int(gs["id"]), float(gs["t_exp"]), float(gs["t_max"]),
                       pending=dict.fromkeys(int(j) for j in gs["pending"]))
            g.arrived = {int(j): (int(j), int(ts), list(p), list(base)) for j, ts, p, base in gs["arrived"]}
            if gs["open"]:
                g.fastest = [(self._est[j].duration(self.q_max), j) for j in (*g.pending, *g.arrived)]
                heapq.heapify(g.fastest)
                self._open_group(g)
            else:
                g.open = False
                self._groups[g.gid] = g
        self._buffer = [(int(j), int(ts), list(p), list(base)) for j, ts, p, base in state["buffer"]]


def _task_config(q: int, group: int | None) -> Mapping[str, Any]:
    """The config of a task of ``q`` local steps in ``group`` (none for a client's first task), read-only."""
    return MappingProxyType({"local_steps": q} if group is None else {"local_steps": q, "group": group})
