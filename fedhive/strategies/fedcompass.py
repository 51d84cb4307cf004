"""FedCompass: a computing-power-aware scheduler gives each client its own number of local steps so that groups
of clients finish together, and the server aggregates each arrival group at once.

Source: Li et al., "FedCompass: Efficient Cross-Silo Federated Learning on Heterogeneous Client Devices Using a
Computing Power-Aware Scheduler", ICLR 2024, arXiv 2309.14675. The rules follow the authors' code [AUTH]:
``APPFL/FedCompass`` ``src/appfl/scheduler/compass_scheduler.py`` and ``src/appfl/aggregator/fedcompass_aggregator.py``
(HEAD af96db2), the same logic as ``APPFL/APPFL`` ``src/appfl/algorithm/scheduler/compass_scheduler.py``;
``shared/ALGORITHMS.md`` §5 writes them out as pseudo-code, which ``speed_model="per_step"`` follows to the letter.

Per client ``i``: ``S[i]`` seconds per local step, ``Q[i]`` its local steps, ``t0[i]`` dispatch time, ``ts[i]`` the
version it trains on, ``goa[i]`` its arrival group. A group has pending and arrived members, an expected arrival
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
- ``t0[i]`` is set at ASSIGN and refreshed when the task is really handed out (``on_idle``); the engine asks right
  after the event, so the two agree, but a client that comes back late is not charged its idle time as training.
  The task carries the global model current at dispatch, and ``ts[i]`` is that version.
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
  aggregates at once (everyone who can arrive has arrived); an empty group is deleted. The model ``i`` was sent is
  released. ``S[i]`` is kept, so when ``i`` is idle again it goes through ASSIGN (a client with no estimate yet gets
  ``Q_max`` and no group again). A parked client that fails keeps its update in the group's buffer but is not
  reassigned by the aggregation. ``on_idle`` for a client this strategy believes busy treats that task as failed.
  A client lost while parked (it has no task, so the engine reports no failure) is reassigned like the others;
  its new group aggregates at ``T_max`` without it, and it is late (``B``) if it ever comes back.
- An update whose ``base_version`` differs from the version its task was sent at is rejected
  (``version_mismatch``) and ends the task like a failure; an update from a client with no task is rejected
  (``unknown_task``) and changes nothing.
- A diverged aggregation (non-finite result) keeps ``w`` and the version, consumes the updates it was given and
  still reassigns the group's clients; the update that triggered it is ``rejected`` / ``diverged``.
- Buffered updates keep the client's arrays as received (no copy): the engine hands over fresh arrays.
- Seconds per step never drop below ``1e-9`` (an instant arrival cannot make ``floor(x / S)`` divide by zero).
- ``CREATE`` counts only ``0 ≤ q ≤ Q_max`` (the code's running ``max`` starts at −1, so negative values never win).
- ``T_max = now + (Q·S)·λ`` in the code's evaluation order.
- "Fastest first" is ascending predicted duration of ``Q_max`` steps (ascending ``S`` with ``per_step``), ties by
  node id.
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

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from . import params as P
from .base import APPLIED, BUFFERED, ClientInfo, Outcome, Params, Strategy, Task, Update, VersionHistory
from .staleness import STALENESS_KINDS, make_staleness
from .weighted_sum import mean_of, weighted_sum

CLIENT_WEIGHTS = ("samples", "equal", "group")
SPEED_MODELS = ("per_step", "affine")

MIN_SECONDS_PER_STEP = 1e-9
# The affine fit needs the weighted standard deviation of q to be at least this fraction of its mean.
MIN_STEP_SPREAD = 0.05
# Without an informative fit, the overhead kept is at most this fraction of the mean duration.
MAX_OVERHEAD_SHARE = 0.9


@dataclass
class _Group:
    """An arrival group: its members, deadlines, and the buffer of on-time updates (``gbuf``)."""

    gid: int
    t_exp: float
    t_max: float
    pending: list[int] = field(default_factory=list)
    arrived: dict[int, tuple[int, Params]] = field(default_factory=dict)
    open: bool = True


@dataclass
class _Job:
    """A client's assignment: ``q`` local steps in ``group`` (``None``: first dispatch), from ``t0``, on ``ts``."""

    q: int
    group: int | None
    t0: float
    ts: int = -1


class FedCompass(Strategy):
    """Computing-power-aware group scheduling with per-client local steps.

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
    client_weights : str
        ``"samples"`` (``c_j = n_j / Σ n``), ``"equal"`` (``c_j = 1/N``), or ``"group"`` (``c_j = n_j / Σ_{i∈M} n_i``
        over the updates merged in this step, so every step is a full FedAvg-sized step: [OURS], not the paper's
        rule, offered because with tens of clients the paper's per-client weights make each group step tiny).
    speed_model : str
        ``"per_step"`` (seconds per step, the paper's) or ``"affine"`` (overhead + steps × seconds per step).
    non_trainable : sequence of int
        Tensors that are averaged, never staleness-weighted (see ``Strategy``).
    """

    name = "fedcompass"

    def __init__(self, *, q_min: int = 20, q_max: int = 100, lam: float = 1.5, speed_momentum: float = 0.9,
                 alpha: float = 0.9, staleness: str = "polynomial", staleness_a: float | None = 0.5,
                 staleness_b: float | None = None, client_weights: str = "samples", speed_model: str = "affine",
                 non_trainable: Sequence[int] = ()) -> None:
        super().__init__(non_trainable=non_trainable)
        self.q_min = P.positive_int("q_min", q_min)
        self.q_max = P.positive_int("q_max", q_max)
        if self.q_min > self.q_max:
            raise ValueError(f"q_min must be <= q_max, got q_min={q_min!r} and q_max={q_max!r}")
        self.lam = P.number("lam", lam, low=1.0)
        self.speed_momentum = P.number("speed_momentum", speed_momentum, low=0.0, high=1.0, low_open=True)
        self.alpha = P.number("alpha", alpha, low=0.0, high=1.0, low_open=True)
        self.staleness = P.choice("staleness", staleness, STALENESS_KINDS)
        self.staleness_a, self.staleness_b = staleness_a, staleness_b
        self._s = make_staleness(staleness, staleness_a, staleness_b)
        self.client_weights = P.choice("client_weights", client_weights, CLIENT_WEIGHTS)
        self.speed_model = P.choice("speed_model", speed_model, SPEED_MODELS)
        self._reset()

    def _reset(self) -> None:
        self._t_start: float | None = None
        self._speed: dict[int, float] = {}
        self._overhead: dict[int, float] = {}
        self._moments: dict[int, list[float]] = {}
        self._q: dict[int, int] = {}
        self._ready: dict[int, _Job] = {}
        self._inflight: dict[int, _Job] = {}
        self._parked: dict[int, int] = {}
        self._groups: dict[int, _Group] = {}
        self._next_gid = 0
        self._buffer: list[tuple[int, int, Params]] = []
        self._history = VersionHistory()

    def config(self) -> dict[str, Any]:
        return {"q_min": self.q_min, "q_max": self.q_max, "lam": self.lam, "speed_momentum": self.speed_momentum,
                "alpha": self.alpha, "staleness": self.staleness, "staleness_a": self.staleness_a,
                "staleness_b": self.staleness_b, "client_weights": self.client_weights,
                "speed_model": self.speed_model}

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

    def estimate(self, node_id: int) -> tuple[float, float] | None:
        """``(overhead seconds, seconds per step)`` for a client, or ``None`` before its first arrival."""
        if node_id not in self._speed:
            return None
        return self._overhead.get(node_id, 0.0), self._speed[node_id]

    # ----------------------------------------------------------------- the contract
    def _on_start(self, now: float) -> None:
        self._reset()
        self._t_start = float(now)

    def on_idle(self, client: ClientInfo, now: float) -> Task | None:
        self._adopt(client)
        i = client.node_id
        if i in self._inflight:
            self._end_task(i, now)
        if i in self._parked:
            return None
        job = self._ready.pop(i, None)
        if job is None:
            if i in self._speed:
                self._assign(i, now)
                job = self._ready.pop(i)
            else:
                job = _Job(self.q_max, None, float(now))
                self._q[i] = self.q_max
        job.t0 = float(now)
        job.ts = self._version
        self._history.hold(self._version, self._params)
        self._inflight[i] = job
        cfg: dict[str, Any] = {"local_steps": job.q}
        if job.group is not None:
            cfg["group"] = job.group
        return Task(i, self._version, cfg)

    def on_update(self, update: Update, now: float) -> Outcome:
        i = update.node_id
        self._catch_up(now)
        job = self._inflight.get(i)
        if job is None:
            return Outcome("rejected", "unknown_task")
        if update.base_version != job.ts:
            self._end_task(i, now)
            return Outcome("rejected", "version_mismatch")
        del self._inflight[i]
        self._observe(i, job.q, float(now) - job.t0)
        entry = (i, job.ts, list(update.params))
        if job.group is None:
            ok = self._aggregate([entry], single=True)
            self._assign(i, now)
            return APPLIED if ok else Outcome("rejected", "diverged")
        g = self._groups.get(job.group)
        if g is None or not g.open or now > g.t_max:
            if g is not None:
                g.pending.remove(i)
                self._drop_if_empty(g)
            self._buffer.append(entry)
            self._assign(i, now)
            return BUFFERED
        g.pending.remove(i)
        g.arrived[i] = (job.ts, entry[2])
        self._parked[i] = g.gid
        if g.pending:
            return BUFFERED
        v0, diverged0 = self._version, self.diverged
        self._group_aggregate(g, now)
        if self._version != v0:
            return APPLIED
        return Outcome("rejected", "diverged") if self.diverged != diverged0 else BUFFERED

    def next_timer(self) -> float | None:
        times = [g.t_max for g in self._groups.values() if g.open]
        return min(times) if times else None

    def on_timer(self, now: float) -> None:
        for g in self._due(now, strict=False):
            self._group_aggregate(g, now)

    def on_failure(self, node_id: int, now: float) -> None:
        self._catch_up(now)
        self._end_task(node_id, now)

    # ----------------------------------------------------------------- scheduler: when, who, how many steps
    def _due(self, now: float, *, strict: bool) -> list[_Group]:
        due = [g for g in self._groups.values() if g.open and (g.t_max < now if strict else g.t_max <= now)]
        return sorted(due, key=lambda g: (g.t_max, g.gid))

    def _catch_up(self, now: float) -> None:
        for g in self._due(now, strict=True):
            self._group_aggregate(g, now)

    def _end_task(self, i: int, now: float) -> None:
        """Forget client ``i``'s assignment or task (failure), leaving the group it was pending in."""
        job = self._inflight.pop(i, None)
        if job is not None:
            self._history.release(job.ts)
        else:
            job = self._ready.pop(i, None)
        if job is None:
            self._parked.pop(i, None)
            return
        g = self._groups.get(job.group) if job.group is not None else None
        if g is None:
            return
        g.pending.remove(i)
        if not g.pending and g.arrived and g.open:
            self._group_aggregate(g, now)
        else:
            self._drop_if_empty(g)

    def _drop_if_empty(self, g: _Group) -> None:
        if not g.pending and not g.arrived:
            del self._groups[g.gid]

    def _group_aggregate(self, g: _Group, now: float) -> bool:
        """GROUP_AGG: apply ``B ∪ gbuf[g]``, close ``g``, reassign its parked members fastest first."""
        g.open = False
        if not g.arrived:
            self._drop_if_empty(g)
            return False
        entries = self._buffer + [(j, ts, p) for j, (ts, p) in g.arrived.items()]
        self._buffer = []
        ok = self._aggregate(entries, single=False)
        members = sorted(g.arrived, key=lambda j: (self._duration(j, self.q_max), j))
        g.arrived = {}
        for j in members:
            if self._parked.pop(j, None) is not None:
                self._assign(j, now)
        self._drop_if_empty(g)
        self._poke()
        return ok

    def _assign(self, i: int, now: float) -> None:
        """ASSIGN: put ``i`` in a group with a step count; it is dispatched by the next ``on_idle``."""
        if not any(g.open for g in self._groups.values()):
            q = self.q_max
            gid = self._new_group(i, q, now)
        else:
            found = self._join(i, now)
            if found is None:
                q = self._create_steps(i, now)
                gid = self._new_group(i, q, now)
            else:
                gid, q = found
                self._groups[gid].pending.append(i)
        self._q[i] = q
        self._ready[i] = _Job(q, gid, float(now))

    def _join(self, i: int, now: float) -> tuple[int, int] | None:
        """JOIN: the largest ``q`` in ``[Q_min, Q_max]`` that lands on an open group's ``T_exp`` (ties: later group)."""
        best: tuple[int, int] | None = None
        o, s = self._overhead.get(i, 0.0), self._speed[i]
        for g in self._groups.values():
            if not g.open:
                continue
            q = math.floor((g.t_exp - now - o) / s)
            if self.q_min <= q <= self.q_max and (best is None or q >= best[1]):
                best = (g.gid, q)
        return best

    def _create_steps(self, i: int, now: float) -> int:
        """CREATE's ``q*``: arrive one fastest-member ``Q_max`` span after an open group's ``T_max``."""
        overhead, speed, q_max = self._overhead, self._speed, self.q_max
        o, s = overhead.get(i, 0.0), speed[i]
        qstar: int | None = None
        for g in self._groups.values():
            if not g.open or not now < g.t_max:
                continue
            # self._duration(j, q_max), inlined: groups hold thousands of members in fleets of 10,000
            fastest = min([overhead.get(j, 0.0) + q_max * speed[j] for j in (*g.pending, *g.arrived)])
            q = math.floor((g.t_max + fastest - now - o) / s)
            if 0 <= q <= self.q_max and (qstar is None or q > qstar):
                qstar = q
        if qstar is None:
            return self.q_max
        return max(qstar, self.q_min)

    def _new_group(self, i: int, q: int, now: float) -> int:
        d = self._duration(i, q)
        gid = self._next_gid
        self._next_gid += 1
        self._groups[gid] = _Group(gid, float(now + d), float(now + d * self.lam), pending=[i])
        return gid

    def _duration(self, i: int, q: int) -> float:
        """Predicted seconds for ``q`` local steps of client ``i`` (``o_i + q·S_i``; ``o_i = 0`` for per_step)."""
        return self._overhead.get(i, 0.0) + q * self._speed[i]

    # ----------------------------------------------------------------- speed estimates
    def _observe(self, i: int, q: int, duration: float) -> None:
        """Update ``S[i]`` (and ``o_i``) from a task of ``q`` steps that took ``duration`` seconds."""
        beta = self.speed_momentum
        if self.speed_model == "per_step":
            sample = duration / q
            s = sample if i not in self._speed else (1.0 - beta) * self._speed[i] + beta * sample
            self._speed[i] = max(s, MIN_SECONDS_PER_STEP)
            return
        x = [float(q), float(q) * q, duration, q * duration]
        m = self._moments.get(i)
        if m is None:
            self._moments[i] = x
            self._overhead[i] = 0.0
            self._speed[i] = max(duration / q, MIN_SECONDS_PER_STEP)
            return
        m = [(1.0 - beta) * a + beta * b for a, b in zip(m, x)]
        self._moments[i] = m
        eq, eqq, ed, eqd = m
        var = eqq - eq * eq
        o_prev = self._overhead[i]
        if var > (MIN_STEP_SPREAD * eq) ** 2:
            slope = (eqd - eq * ed) / var
            o = ed - slope * eq
            if slope > 0 and o >= 0:
                self._overhead[i], self._speed[i] = o, max(slope, MIN_SECONDS_PER_STEP)
                return
            if slope > 0:
                self._overhead[i], self._speed[i] = 0.0, max(ed / eq, MIN_SECONDS_PER_STEP)
                return
        o = min(max(o_prev, 0.0), MAX_OVERHEAD_SHARE * ed)
        self._overhead[i] = o
        self._speed[i] = max((ed - o) / eq, MIN_SECONDS_PER_STEP)

    # ----------------------------------------------------------------- aggregator: how much
    def _coefficient(self, j: int, ts: int) -> float:
        c = self._weight(j) if self.client_weights == "samples" else 1.0 / max(len(self._clients), 1)
        return self.alpha * self._s(self._version - ts) * c

    def _aggregate(self, entries: list[tuple[int, int, Params]], *, single: bool) -> bool:
        """``w ← w + Σ coef_j·w_j − Σ coef_j·w(ts_j)``, one read of each base model, then commit.

        Non-trainable tensors take the client's value (``single``) or the members' plain mean.
        """
        v = self._version
        if self.client_weights == "group":
            total = sum(self._weight(j) for j, _, _ in entries) or 1.0
            coefs = [self.alpha * self._s(v - ts) * self._weight(j) / total for j, ts, _ in entries]
        else:
            coefs = [self._coefficient(j, ts) for j, ts, _ in entries]
        base: dict[int, float] = {}
        for (_, ts, _), c in zip(entries, coefs):
            base[ts] = base.get(ts, 0.0) + c
        terms: list[tuple[float, Sequence[np.ndarray]]] = [(1.0 - base.pop(v, 0.0), self._params)]
        terms += [(c, p) for (_, _, p), c in zip(entries, coefs)]
        terms += [(-base[ts], self._history.get(ts)) for ts in sorted(base)]
        new = weighted_sum(terms, indices=self._trainable)
        for t in self._fixed:
            if single:
                new[t] = np.array(entries[0][2][t], copy=True)
            else:
                new[t] = mean_of([p[t] for _, _, p in entries])
        for _, ts, _ in entries:
            self._history.release(ts)
        return self._commit(new)

    # ----------------------------------------------------------------- persistence
    def _state(self) -> dict[str, Any]:
        def job(i: int, j: _Job) -> list:
            return [i, j.q, j.group, j.t0, j.ts]

        return {
            "t_start": self._t_start,
            "next_gid": self._next_gid,
            "speed": [[i, s] for i, s in self._speed.items()],
            "overhead": [[i, o] for i, o in self._overhead.items()],
            "moments": [[i, list(m)] for i, m in self._moments.items()],
            "q": [[i, q] for i, q in self._q.items()],
            "ready": [job(i, j) for i, j in self._ready.items()],
            "inflight": [job(i, j) for i, j in self._inflight.items()],
            "parked": [[i, g] for i, g in self._parked.items()],
            "groups": [{"id": g.gid, "t_exp": g.t_exp, "t_max": g.t_max, "open": g.open, "pending": list(g.pending),
                        "arrived": [[j, ts, list(p)] for j, (ts, p) in g.arrived.items()]}
                       for g in self._groups.values()],
            "buffer": [[j, ts, list(p)] for j, ts, p in self._buffer],
            "history": self._history.state_dict(),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        def job(row: list) -> tuple[int, _Job]:
            i, q, g, t0, ts = row
            return int(i), _Job(int(q), None if g is None else int(g), float(t0), int(ts))

        def arrays(ps: Sequence[np.ndarray]) -> Params:
            return [np.array(p, copy=True) for p in ps]

        self._reset()
        self._t_start = None if state["t_start"] is None else float(state["t_start"])
        self._next_gid = int(state["next_gid"])
        self._speed = {int(i): float(s) for i, s in state["speed"]}
        self._overhead = {int(i): float(o) for i, o in state["overhead"]}
        self._moments = {int(i): [float(x) for x in m] for i, m in state["moments"]}
        self._q = {int(i): int(q) for i, q in state["q"]}
        self._ready = dict(job(r) for r in state["ready"])
        self._inflight = dict(job(r) for r in state["inflight"])
        self._parked = {int(i): int(g) for i, g in state["parked"]}
        for gs in sorted(state["groups"], key=lambda gs: int(gs["id"])):
            g = _Group(int(gs["id"]), float(gs["t_exp"]), float(gs["t_max"]),
                       pending=[int(j) for j in gs["pending"]], open=bool(gs["open"]))
            g.arrived = {int(j): (int(ts), arrays(p)) for j, ts, p in gs["arrived"]}
            self._groups[g.gid] = g
        self._buffer = [(int(j), int(ts), arrays(p)) for j, ts, p in state["buffer"]]
        self._history.load_state_dict(state["history"])
