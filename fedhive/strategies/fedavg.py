"""FedAvg: the synchronous baseline (McMahan et al., AISTATS 2017, arXiv 1602.05629).

Round ``r``, as Flower's ``FedAvg`` runs it: at the round's start sample ``max(int(C·N), min_sample)`` of the ``N``
connected clients (all of them by default; Flower's ``sample_nodes`` with ``min_train_nodes``), waiting for more
clients while fewer than that are connected; send each sampled client ``w`` and the same ``local_steps``; wait until
every sampled client replied or failed, or the round deadline passed; then ``w ← Σ_{i∈S} p_i^S · w_i`` with
``p_i^S = n_i / Σ_{j∈S} n_j`` over the replies (``num_examples`` of each update, as Flower's
``aggregate_arrayrecords`` weights by ``num-examples``). Late replies are rejected as ``late``. A client that joins
mid-round waits for the next round; a sampled client gets one task per round (one that failed gets no second).

[OURS] choices, since an event-driven engine has no "sample, then wait" barrier:
- the sample is drawn from every connected client, busy ones included (as Flower samples ``get_node_ids()``): a
  client still running a task of a round that closed by its deadline gets this round's task when that one ends
  (its reply rejected ``late``), as a SuperNode runs a queued message after the one it is running; the sample is
  drawn with a seeded generator, except that ``fraction = 1`` takes everyone without a draw;
- sampled clients that never ask for work and are not busy with an earlier round's task (gone without the engine
  knowing) are dropped from the round at its first reply; one the engine reports gone (``on_leave``) at once;
- a round in which nobody replied (all failed or the deadline passed) leaves ``w`` unchanged and starts the next one.
- the round deadline defaults from observed task times (``round_timeout="auto"``): the round closes at
  ``round_start + deadline_factor × D``, ``D`` the largest expected task duration among the clients the round still
  waits for (a client that replied or failed no longer counts). A client's expected duration is the largest of its
  observed task times (dispatch to reply, late replies included: a reply, even late, is a real task time; a failure
  is none), decaying by ``DECAY`` = 0.95 per newer observation, so that it follows a client that got faster (halved
  in 14 tasks); a client never observed yet uses the largest expected duration of any client when the round started.
  A decaying maximum, not the last time or an average: one client's task time varies by 3× between tasks (log-normal
  jitter σ = 0.3 in the simulator's fleets; real fleets too), and a deadline cuts honest work, while a late one costs
  only time. With one observation a client's task still exceeds 3× it with probability ~0.7 % (σ = 0.3), so an
  honest round can still close by its deadline, mostly early in a run; ``round_timeout=None`` never does. Before
  anything was observed (the first round, or a run resumed from a checkpoint written without durations) there is no
  deadline: the transport's task TTL bounds the round. Detection latency of a hung client: about
  ``deadline_factor × D`` after the round started (first round: the TTL); its later reply is rejected ``late``.
- every floating-point tensor, trainable or not, is averaged with the same weights, as in FedAvg and Flower;
  integer tensors (counters) take the replies' plain mean, rounded.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Sequence

import numpy as np

from . import params as P
from .base import (APPLIED, BUFFERED, DEFAULT_MAX_WEIGHT_RATIO, ClientInfo, Dispatch, Outcome, Strategy, Task, Update,
                   presets)
from .weighted_sum import mean_of, weighted_sum

AUTO = "auto"
DECAY = 0.95  # per newer observation, of a client's expected task time (its decaying largest)
_ROUND_TIMEOUTS = ('"auto" (deadline_factor × the expected task time), None (wait for every client) '
                   "or a finite number of seconds > 0")


def _round_timeout(value: Any) -> float | str | None:
    """``round_timeout`` checked: ``"auto"``, ``None``, or a finite number ``> 0``; a string holding a number (``"30"``,
    as a run config may carry it) is that number."""
    if value is None:
        return None
    v = value
    if isinstance(v, str):
        text = v.strip()
        if text.lower() == AUTO:
            return AUTO
        try:
            v = float(text)
        except ValueError:
            v = math.nan
    try:
        return P.number("round_timeout", v, low=0.0, low_open=True)
    except ValueError:
        raise ValueError(f"round_timeout must be {_ROUND_TIMEOUTS}, got {value!r}") from None


@presets(paper={})
class FedAvg(Strategy):
    """Synchronous rounds with example-weighted averaging.

    Parameters
    ----------
    local_steps : int
        Local steps per task.
    fraction : float
        Fraction ``C`` of the connected clients sampled per round, in (0, 1] (``int(C·N)``, as Flower's).
    min_sample : int
        The fewest clients a round samples (Flower's ``min_train_nodes``); a round waits for this many connected.
    round_timeout : "auto", float or None
        When a round is closed with the replies it has: ``"auto"`` (default) at ``deadline_factor ×`` the largest
        expected task time of the clients still out (no deadline until a task time was observed; see above), a
        number: that many seconds after the round starts; ``None`` waits for every client (the TTL bounds a hung one).
        A string holding a number (``"30"``) is that number.
    deadline_factor : float
        With ``round_timeout="auto"``: the deadline in multiples of the expected task time, ``> 1``.
    seed : int
        Seed of the client sampler (drawn from only when ``fraction < 1``).
    max_weight_ratio : float
        A reply's ``n_i`` is clamped to this many times the live fleet's median claim (see ``Strategy``; 0: off).
    """

    name = "fedavg"
    tracks_wakeups = True  # clients wait for the next round: poked when a round (re)starts

    def __init__(self, *, local_steps: int = 20, fraction: float = 1.0, min_sample: int = 1,
                 round_timeout: float | str | None = AUTO, deadline_factor: float = 3.0, seed: int = 0,
                 max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO, non_trainable: Sequence[int] = ()) -> None:
        super().__init__(non_trainable=non_trainable, max_weight_ratio=max_weight_ratio)
        self.local_steps = P.positive_int("local_steps", local_steps)
        self.fraction = P.number("fraction", fraction, low=0.0, high=1.0, low_open=True)
        self.min_sample = P.positive_int("min_sample", min_sample)
        self.round_timeout = _round_timeout(round_timeout)
        self.deadline_factor = P.number("deadline_factor", deadline_factor, low=1.0, low_open=True)
        self.seed = P.non_negative_int("seed", seed)
        self._rng = np.random.default_rng(self.seed)
        self._round = 0
        self._round_start = 0.0
        self._waiting = False  # the round has not sampled yet: fewer than min_sample clients connected
        self._late: set[int] = set()  # clients whose task of an earlier round is still out
        self._pending: set[int] = set()  # the round's sampled clients that have not replied or failed
        self._undispatched: set[int] = set()  # of them, those not sent their task yet
        self._acc: list[np.ndarray] | None = None
        self._acc_examples = 0
        self._int_vals: list[list[np.ndarray]] = []
        self._replies = 0
        self._durations: dict[int, float] = {}  # node → its expected task duration (decaying largest observed)
        self._round_max: float | None = None  # the largest expected duration when this round started: new clients
        # The round's deadline in O(log n) per event: the pending clients' expected durations as a max-heap
        # (lazily cleaned of clients no longer pending) and the pending clients without an estimate.
        self._heap: list[tuple[float, int]] = []
        self._unknown: set[int] = set()

    def config(self) -> dict[str, Any]:
        return {"local_steps": self.local_steps, "fraction": self.fraction, "min_sample": self.min_sample,
                "round_timeout": self.round_timeout,
                "deadline_factor": self.deadline_factor, "seed": self.seed, "max_weight_ratio": self.max_weight_ratio}

    @property
    def round(self) -> int:
        return self._round

    @property
    def _floats(self) -> list[int]:
        return [i for i, p in enumerate(self._params) if np.issubdtype(p.dtype, np.floating)]

    @property
    def _ints(self) -> list[int]:
        return [i for i, p in enumerate(self._params) if not np.issubdtype(p.dtype, np.floating)]

    def _on_start(self, now: float) -> None:
        self._late = set()
        self._open_round(now)

    def _open_round(self, now: float) -> None:
        # A round closed by its deadline leaves the clients it sent a task still training.
        self._late |= self._pending - self._undispatched
        self._round += 1
        self._round_start = now
        self._pending, self._undispatched = set(), set()
        self._acc = None
        self._acc_examples = 0
        self._int_vals = []
        self._replies = 0
        self._round_max = max(self._durations.values()) if self._durations else None
        self._heap, self._unknown = [], set()
        self._waiting = True
        self._draw()
        self._poke()

    def _draw(self) -> None:
        """Sample the round's clients if enough are connected (else the round keeps waiting)."""
        connected = sorted(n for n in self._clients if n not in self._gone)
        n = len(connected)
        k = n if self.fraction >= 1.0 else int(self.fraction * n)
        k = max(k, self.min_sample)
        if n < k:
            return
        if k < n:
            picked = self._rng.choice(n, size=k, replace=False)
            connected = [connected[int(i)] for i in sorted(picked)]
        self._waiting = False
        self._pending, self._undispatched = set(connected), set(connected)
        for node in connected:
            self._expect(node)

    def on_idle(self, client: ClientInfo, now: float) -> Task | None:
        self._adopt(client)
        node = client.node_id
        if self._waiting:
            self._draw()
            if self._waiting:
                return None
            self._poke()  # the others sampled now may start too
        if node not in self._undispatched:  # not sampled this round, or its task was sent already
            return None
        self._undispatched.discard(node)
        return Task(node, self._version, {"local_steps": self.local_steps, "round": self._round})

    def on_leave(self, node_id: int, now: float) -> None:
        super().on_leave(node_id, now)
        self._late.discard(node_id)
        if node_id in self._undispatched:  # sampled, never sent its task: the round no longer waits for it
            self._undispatched.discard(node_id)
            self._pending.discard(node_id)
            self._unknown.discard(node_id)
            self._settle(now)

    def _settle(self, now: float) -> None:
        """Nobody left to wait for: close the round with its replies, or (none) start the next one."""
        if self._pending or self._waiting:
            return
        if self._replies:
            self._close_round(now)
        else:
            self._open_round(now)

    def on_update(self, update: Update, sent: Dispatch, now: float) -> Outcome:
        node = update.node_id
        self._late.discard(node)
        took = now - sent.sent_at
        if math.isfinite(took):
            # Expected task time: the largest observed, decaying by DECAY per newer observation (see the module doc).
            took, old = max(took, 0.0), self._durations.get(node)
            self._durations[node] = took if old is None else max(took, DECAY * old)
        if sent.task.config["round"] != self._round or node not in self._pending:
            self._poke()
            return Outcome("rejected", "late")
        self._pending.discard(node)
        self._unknown.discard(node)
        if self._replies == 0:  # sampled clients that never asked for work and are not busy: gone, dropped
            never = {n for n in self._undispatched if n not in self._late}
            self._undispatched -= never
            self._pending -= never
            self._unknown -= never
        # The reply's claim, clamped to max_weight_ratio × the live fleet's median claim (see Strategy).
        n = self._clamp(max(int(update.num_examples), 0))
        if n > 0:
            # Σ n_i·w_i, accumulated in place; divided by Σ n_i when the round closes.
            self._acc = weighted_sum([(float(n), update.params)], out=self._acc, indices=self._floats,
                                     accumulate=self._acc is not None)
            self._acc_examples += n
            if len(self._floats) < len(self._params):
                self._int_vals.append([update.params[i].copy() for i in self._ints])
        self._replies += 1
        if not self._pending:
            return self._close_round(now)
        return BUFFERED

    def _close_round(self, now: float) -> Outcome:
        outcome = BUFFERED
        if self._acc is not None and self._acc_examples > 0:
            scale = 1.0 / self._acc_examples
            new = weighted_sum([(scale, self._acc)], out=self._acc, indices=self._floats)
            for j, i in enumerate(self._ints):
                new[i] = mean_of([vals[j] for vals in self._int_vals])
            self._acc = None
            self._int_vals = []
            outcome = APPLIED if self._commit(new) else Outcome("rejected", "diverged")
        self._open_round(now)
        return outcome

    def on_failure(self, sent: Dispatch, now: float) -> None:
        node_id = sent.task.node_id
        self._late.discard(node_id)
        if sent.task.config["round"] == self._round and node_id in self._pending:
            self._pending.discard(node_id)
            self._unknown.discard(node_id)
            self._settle(now)  # (everyone who took part failed: start over with whoever is left)
        self._poke()

    def _expect(self, node: int) -> None:
        """Enter pending ``node``'s expected duration for the round's deadline (see ``next_timer``)."""
        d = self._durations.get(node, self._round_max)
        if d is None:
            self._unknown.add(node)
        else:
            heapq.heappush(self._heap, (-d, node))

    def next_timer(self) -> float | None:
        if self.round_timeout is None or not self._pending:
            return None
        if self.round_timeout != AUTO:
            return self._round_start + self.round_timeout
        # The largest expected task time among the clients still out; a client never observed takes the fleet's
        # largest observed before the round; nothing observed at all: no deadline (the TTL bounds the round).
        pending, heap = self._pending, self._heap
        if self._unknown:  # a client still out with no estimate at all
            return None
        while heap and heap[0][1] not in pending:  # replied or failed: no longer counts
            heapq.heappop(heap)
        if not heap:
            return None
        return self._round_start + self.deadline_factor * -heap[0][0]

    def on_timer(self, now: float) -> None:
        t = self.next_timer()
        if t is not None and now >= t:
            self._close_round(now)

    def _state(self) -> dict[str, Any]:
        return {
            "rng": self._rng.bit_generator.state,
            "round": self._round,
            "round_start": self._round_start,
            "waiting": self._waiting,
            "undispatched": sorted(self._undispatched),
            "late": sorted(self._late),
            "pending": sorted(self._pending),
            "acc": self._acc,
            "acc_examples": self._acc_examples,
            "int_vals": self._int_vals,
            "replies": self._replies,
            "durations": [[n, d] for n, d in sorted(self._durations.items())],
            "round_max": self._round_max,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]
        self._round = int(state["round"])
        self._round_start = float(state["round_start"])
        self._waiting = bool(state.get("waiting", False))
        self._undispatched = {int(n) for n in state.get("undispatched", ())}
        self._late = {int(n) for n in state["late"]}
        self._pending = {int(n) for n in state["pending"]}
        self._acc = None if state["acc"] is None else [np.array(a) for a in state["acc"]]
        self._acc_examples = float(state["acc_examples"])  # a clamped claim is a float
        self._int_vals = [[np.array(a) for a in vals] for vals in state["int_vals"]]
        self._replies = int(state["replies"])
        # A checkpoint written before deadlines were observed has neither: no deadline until a task time is seen.
        self._durations = {int(n): float(d) for n, d in state.get("durations", ())}
        rmax = state.get("round_max")
        self._round_max = None if rmax is None else float(rmax)
        self._heap, self._unknown = [], set()
        for node in sorted(self._pending):
            self._expect(node)
