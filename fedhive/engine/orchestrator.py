"""The orchestrator: fedhive's one event loop, the same in deployment, on the local cluster and in virtual time.

1. give every idle client what the strategy's ``on_idle`` returns, with the current global model;
2. wait for the next result or failure, or the strategy's next timer, whichever comes first;
3. validate the result (known node, known task, not a duplicate, version, tensor count, shape, dtype, finite
   values) and hand it to the strategy; a rejected result is logged with its reason, counted, never applied, and
   its task is reported to the strategy as failed;
4. evaluate on schedule, checkpoint, report to the observer;
5. stop at the run's limit (time, versions, client updates, target accuracy).

The orchestrator is the one owner of the work in flight: one :class:`Dispatch` per task (the task, when it was
sent, the model it was sent with), handed to the transport to deliver and to the strategy with the task's
outcome. Every strategy handler that may change the model goes through :meth:`Orchestrator._call`, which reports
the change (``Observer.on_aggregate``, the evaluation and checkpoint schedule) whatever triggered it: an update, a
timer, a failure, a client leaving.

The orchestrator never imports Flower and never reads a clock for the run's time: the transport owns both. (It does
time the strategy's aggregation with ``time.perf_counter`` for the metrics; that never changes what happens.)
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fedhive.strategies import params as P
from fedhive.strategies.base import ClientInfo, Dispatch, Outcome, Strategy, Task, Update
from fedhive.strategies.validation import Rejection, check_num_examples, check_params

from . import checkpoint as ckpt
from .observers import Observer
from .transport import Failure, Malformed, Result, Transport

log = logging.getLogger("fedhive.orchestrator")

_OUTCOME_KEYS = {"applied": "update_applied", "buffered": "update_buffered", "rejected": "update_rejected"}

EvaluateFn = Callable[[Sequence[np.ndarray]], dict]


@dataclass(frozen=True)
class StopCondition:
    """When a run ends; any limit reached stops it. ``None`` means no limit."""

    max_time: float | None = None
    max_versions: int | None = None
    max_updates: int | None = None
    target_accuracy: float | None = None

    def __post_init__(self) -> None:
        P.optional(P.number, "stop condition max_time", self.max_time, low=0.0)
        P.optional(P.integer, "stop condition max_versions", self.max_versions, low=0)
        P.optional(P.integer, "stop condition max_updates", self.max_updates, low=0)
        P.optional(P.number, "stop condition target_accuracy (a fraction)", self.target_accuracy, low=0.0, high=1.0)


@dataclass
class RunResult:
    """What a run produced: the evaluation history, the final state and the counters."""

    history: list[dict]
    final: dict
    stop_reason: str
    counters: dict = field(default_factory=dict)
    params: list[np.ndarray] = field(default_factory=list)


class Orchestrator:
    """Drives a strategy over a transport until a stop condition.

    Parameters
    ----------
    strategy, transport
        The algorithm and the carrier.
    stop
        When to end.
    evaluate
        ``params -> {"accuracy": ..., "loss": ..., ...}`` on the held-out set, or ``None``.
    eval_every_versions, eval_interval
        Evaluate each time the version advanced by this much, and/or each ``eval_interval`` seconds of the
        transport's clock. The initial and the final model are always evaluated.
    checkpoint_dir, checkpoint_every
        Write an atomic checkpoint every ``checkpoint_every`` versions and at the end (``keep_checkpoints`` newest
        of this run's are kept; other runs' files there are never deleted). Temporary files an interrupted write
        left in ``checkpoint_dir`` are removed at construction. A checkpoint the disk refuses (full, read-only) is
        logged and counted (``checkpoint_write_errors``) and the run goes on.
    fingerprint
        What identifies the run beyond the strategy (task, tensor names, shapes and dtypes, seed, partitioning): a
        mapping of JSON values. The strategy's name and config are added; the whole is saved with every checkpoint,
        and a resume refuses a checkpoint whose fingerprint differs.
    observer
        Receives every event (metrics, progress).
    """

    def __init__(self, strategy: Strategy, transport: Transport, *, stop: StopCondition | None = None,
                 evaluate: EvaluateFn | None = None, eval_every_versions: int | None = None,
                 eval_interval: float | None = None, checkpoint_dir: str | Path | None = None,
                 checkpoint_every: int | None = None, keep_checkpoints: int = 3,
                 fingerprint: Mapping[str, Any] | None = None, observer: Observer | None = None) -> None:
        self.strategy = strategy
        self.transport = transport
        self.stop = stop or StopCondition()
        if self.stop == StopCondition():
            raise ValueError("a run needs at least one stop condition: max_time, max_versions, max_updates or "
                             "target_accuracy")
        if self.stop.target_accuracy is not None and evaluate is None:
            raise ValueError("target_accuracy needs an evaluate function")
        self.evaluate = evaluate
        self.eval_every_versions = P.optional(P.integer, "eval_every_versions", eval_every_versions, low=1)
        self.eval_interval = P.optional(P.number, "eval_interval (seconds)", eval_interval, low=0.0, low_open=True)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every = P.optional(P.integer, "checkpoint_every", checkpoint_every, low=1)
        self.keep_checkpoints = P.integer("keep_checkpoints (0: keep all)", keep_checkpoints, low=0)
        self.fingerprint = ckpt.normalize_fingerprint(
            {"strategy": strategy.name, "strategy_config": strategy.config(), **dict(fingerprint or {})})
        if self.checkpoint_dir is not None:
            for p in ckpt.remove_leftovers(self.checkpoint_dir):
                log.warning("removed %s, the temporary file of an interrupted checkpoint write", p)
        self.observer = observer or Observer()

        self._clients: dict[int, ClientInfo] = {}  # connected now
        self._known: set[int] = set()  # ever seen
        self._membership_seen: int | None = None
        self._in_flight: dict[int, Dispatch] = {}  # task id -> the engine's record of it
        self._node_task: dict[int, int] = {}  # node -> id of its task in flight
        self._sent_version = -1  # the last model sent, shared by every task sent at that version
        self._sent_params: list[np.ndarray] = []
        self._next_task_id = 0
        self._idle_new: set[int] = set()  # idle, not asked since they became idle
        self._parked: set[int] = set()  # idle, told "nothing yet" at wake epoch _parked_epoch
        self._parked_epoch: int | None = None
        self.history: list[dict] = []
        self.client_updates = 0
        self.counters: Counter[str] = Counter()
        self._last_eval_version = -1
        self._next_eval_time: float | None = None
        self._last_ckpt_version = -1
        self._accuracy: float | None = None
        self._start_time = 0.0
        self._max_time_at: float | None = None
        self._stop_requested = ""  # request_stop's reason: the loop ends at the next event boundary

    # ------------------------------------------------------------------ public
    @property
    def models_held(self) -> int:
        """Global-model versions kept for the tasks in flight (each task refers to the model it was sent)."""
        return len({id(d.params) for d in self._in_flight.values()})

    @property
    def start_time(self) -> float:
        """The transport time at which the run started (kept across a resume)."""
        return self._start_time

    def run(self, initial_params: Sequence[np.ndarray] | None = None, *,
            resume_from: str | Path | None = None) -> RunResult:
        """Run until the stop condition. Start from ``initial_params`` or resume from a checkpoint file."""
        if resume_from is not None:
            self._resume(resume_from)
        else:
            if initial_params is None:
                raise ValueError("run() needs initial_params or resume_from")
            now = self.transport.now()
            self._start_time = now
            clients = list(self.transport.clients())
            self._set_membership(clients, now, notify=False)
            self.strategy.start(initial_params, clients, now)
            if self.eval_interval is not None:
                self._next_eval_time = now + self.eval_interval
            self._evaluate(now)
        self._max_time_at = None if self.stop.max_time is None else self._start_time + self.stop.max_time
        self.observer.on_start(self.strategy, self.transport.now())
        reason = self._loop()
        now = self.transport.now()
        if self.strategy.version != self._last_eval_version:
            self._evaluate(now)
        self._checkpoint(force=True)
        final = {
            "accuracy": self.history[-1]["accuracy"] if self.history else None,
            "loss": self.history[-1]["loss"] if self.history else None,
            "version": self.strategy.version,
            "client_updates": self.client_updates,
            "bytes": int(self.transport.bytes_moved),
            "time": now - self._start_time,
        }
        return RunResult(self.history, final, reason, dict(self.counters), self.strategy.params)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> str:
        now = self.transport.now()
        self._refresh_membership(now)
        self._dispatch_idle(now)
        while True:
            reason = self._should_stop(now)
            if reason:
                return reason
            deadline = self._deadline()
            events = self.transport.wait(deadline)
            for ev in events:
                kind = type(ev)
                if kind is Result:
                    self._on_result(ev)
                elif kind is Failure:
                    if ev.task_id in self._in_flight:
                        self._fail_task(ev.task_id, ev.reason, ev.time)
                else:
                    self._on_malformed(ev)
                reason = self._should_stop(ev.time)
                if reason:
                    return reason
                self._refresh_membership(ev.time)
                self._dispatch_idle(ev.time)
            now = self.transport.now()
            timer = self.strategy.next_timer()
            fired = timer is not None and timer <= now
            if fired:
                self._call(self.strategy.on_timer, now)
            if self._next_eval_time is not None and now >= self._next_eval_time:
                while self._next_eval_time <= now:
                    self._next_eval_time += self.eval_interval
                self._evaluate(now)
            if fired or not events:
                self._refresh_membership(now)
                self._dispatch_idle(now)
            if not events and not fired and not self._in_flight and deadline is None:
                mv = self.transport.membership_version
                if mv == -1 or mv == self._membership_seen:
                    # Nothing in flight, no timer, no deadline, nobody joined: nothing can happen any more.
                    return "stalled"

    def _call(self, handler: Callable[..., Any], *args: Any) -> Any:
        """Call a strategy handler whose last argument is ``now``; if the model changed, report it.

        The one path for every handler that may change the model (update, failure, timer), so metrics, the model
        store and the evaluation and checkpoint schedules see every version, whatever caused it.
        """
        strategy = self.strategy
        v, t = strategy.version, time.perf_counter()
        out = handler(*args)
        if strategy.version != v:
            now = args[-1]
            self.observer.on_aggregate(time.perf_counter() - t, now)
            self._after_change(now)
        return out

    def _deadline(self) -> float | None:
        deadline = self.strategy.next_timer()
        for t in (self._next_eval_time, self._max_time_at):
            if t is not None and (deadline is None or t < deadline):
                deadline = t
        return deadline

    def request_stop(self, reason: str = "stopped") -> None:
        """End the run at the next event boundary, as a stop condition would: evaluation, a final checkpoint and the
        result follow as usual, with ``stop_reason = reason``. Safe to call from a signal handler (it only sets a
        flag); no task is dispatched after it. The transport's ``wait`` returns within its poll interval if the
        transport offers ``interrupt()`` (``GridTransport`` does), else at its next event."""
        self._stop_requested = str(reason) or "stopped"
        interrupt = getattr(self.transport, "interrupt", None)
        if interrupt is not None:
            interrupt()

    def _should_stop(self, now: float) -> str:
        if self._stop_requested:
            return self._stop_requested
        s = self.stop
        if self._max_time_at is not None and now >= self._max_time_at:
            return "max_time"
        if s.max_versions is not None and self.strategy.version >= s.max_versions:
            return "max_versions"
        if s.max_updates is not None and self.client_updates >= s.max_updates:
            return "max_updates"
        if s.target_accuracy is not None and self._accuracy is not None and self._accuracy >= s.target_accuracy:
            return "target_accuracy"
        return ""

    def _after_change(self, now: float) -> None:
        v = self.strategy.version
        if self.eval_every_versions is not None and v - self._last_eval_version >= self.eval_every_versions:
            self._evaluate(now)
        if self.checkpoint_every is not None and v // self.checkpoint_every > self._last_ckpt_version // self.checkpoint_every:
            self._checkpoint()

    # ------------------------------------------------------------------ membership and dispatch
    def _refresh_membership(self, now: float) -> None:
        mv = self.transport.membership_version
        if mv != -1 and mv == self._membership_seen:
            return
        self._membership_seen = mv
        self._set_membership(list(self.transport.clients()), now, notify=True)

    def _set_membership(self, clients: list[ClientInfo], now: float, *, notify: bool) -> None:
        current = {c.node_id: c for c in clients}
        for node in sorted(set(self._clients) - set(current)):
            self._idle_new.discard(node)
            self._parked.discard(node)
            task_id = self._node_task.get(node)
            if task_id is not None:
                self._fail_task(task_id, "node_lost", now)
            self.strategy.on_leave(node, now)  # the weights' total is over the live fleet
        for node, c in current.items():
            if node not in self._clients and node not in self._node_task:
                self._idle_new.add(node)
        changed = set(current) != set(self._clients)
        self._clients = current
        self._known.update(current)
        if changed and notify:
            self.observer.on_membership(clients, now)

    def _dispatch_idle(self, now: float) -> None:
        """Ask idle clients for work: those newly idle, and the parked ones when they may now get some.

        Parked clients are asked again when the strategy's ``wake_epoch`` changed (those ``take_woken`` names), or
        always where it is ``None`` (the contract in ``fedhive.strategies.base``). A dispatch can itself wake parked clients (a round that just
        opened), so passes repeat while one sent something and woke parked clients; each such pass sends at least
        one task to an idle client, so this ends.
        """
        strategy, clients, busy = self.strategy, self._clients, self._node_task
        while True:
            epoch = strategy.wake_epoch
            candidates = self._idle_new
            if epoch is None:
                if self._parked:
                    candidates |= self._parked
                    self._parked = set()
            elif epoch != self._parked_epoch:
                woken = strategy.take_woken()
                if self._parked:
                    if woken is None:
                        candidates |= self._parked
                        self._parked = set()
                    elif woken:
                        woken = self._parked.intersection(woken)
                        candidates |= woken
                        self._parked -= woken
            self._parked_epoch = epoch
            if not candidates:
                return
            self._idle_new = set()
            sent = False
            for node in sorted(candidates) if len(candidates) > 1 else candidates:
                client = clients.get(node)
                if client is None or node in busy:
                    continue
                task = strategy.on_idle(client, now)
                if task is None:
                    self._parked.add(node)
                    continue
                self._send(task, client, now)
                sent = True
            if not sent or not self._parked:
                return
            epoch = strategy.wake_epoch
            if epoch is not None and epoch == self._parked_epoch:
                return

    def _send(self, task: Task, client: ClientInfo, now: float) -> None:
        if task.node_id != client.node_id:
            raise RuntimeError(f"{self.strategy.name} returned a task for node {task.node_id} to node {client.node_id}")
        if task.version != self.strategy.version:
            raise RuntimeError(f"{self.strategy.name} returned a task at version {task.version}, but the global "
                               f"model is at version {self.strategy.version}")
        task_id = self._next_task_id
        self._next_task_id = task_id + 1
        if task.version == self._sent_version:
            params = self._sent_params
        else:
            params = self._sent_params = self.strategy.params
            self._sent_version = task.version
        sent = Dispatch(task_id, task, now, params)
        self._in_flight[task_id] = sent
        self._node_task[client.node_id] = task_id
        self.observer.on_dispatch(task, client, now)
        self.transport.dispatch(sent)

    def _end_task(self, task_id: int) -> Dispatch:
        d = self._in_flight.pop(task_id)
        node = d.task.node_id
        del self._node_task[node]
        if node in self._clients:
            self._idle_new.add(node)
        return d

    # ------------------------------------------------------------------ results and failures
    def _on_result(self, ev: Result) -> None:
        u = ev.update
        now = ev.time
        self.counters["received"] += 1
        d = self._in_flight.get(ev.task_id)
        rejection = self._validate(ev, d)
        if rejection is not None:
            # A reply to a task in flight ends that task whatever it holds; anything else ends nothing.
            self._reject(rejection, u.node_id, ev.task_id, now, ends_task=d is not None)
            return
        assert d is not None
        self._end_task(ev.task_id)
        staleness = self.strategy.version - d.task.version
        outcome = self._call(self._apply, u, d, now)
        client = self._clients.get(u.node_id) or ClientInfo(u.node_id, u.num_examples, "unknown")
        self.observer.on_update(u, outcome, client, staleness, now - d.sent_at, now)

    def _apply(self, u: Update, d: Dispatch, now: float) -> Outcome:
        """Hand a validated update to the strategy and count it, before :meth:`_call` evaluates or checkpoints the
        model it made (so a checkpoint's counters include the update that triggered it)."""
        outcome = self.strategy.on_update(u, d, now)
        self.client_updates += 1
        counters = self.counters
        counters[_OUTCOME_KEYS.get(outcome.status) or f"update_{outcome.status}"] += 1
        if outcome.reason:
            counters[f"update_{outcome.status}_{outcome.reason}"] += 1
        return outcome

    def _validate(self, ev: Result, d: Dispatch | None) -> Rejection | None:
        """Why ``ev`` cannot be applied, or ``None``."""
        u = ev.update
        if u.node_id not in self._known:
            return Rejection("unknown_node", f"node {u.node_id} was never connected")
        if d is None:
            if 0 <= ev.task_id < self._next_task_id:
                return Rejection("duplicate", f"task {ev.task_id} already ended")
            return Rejection("unknown_task", f"task {ev.task_id} was never dispatched")
        if u.node_id != d.task.node_id:
            return Rejection("node_mismatch", f"task {ev.task_id} went to node {d.task.node_id}, the reply names "
                                              f"node {u.node_id}")
        claim = u.base_version
        if claim is not None and (type(claim) is not int or claim != d.task.version):
            if type(claim) is int and claim > self.strategy.version:
                return Rejection("future_version", f"base version {claim} is newer than the global model's "
                                                   f"{self.strategy.version}")
            return Rejection("version_mismatch", f"the reply says it trained from version {claim!r}, but the task "
                                                 f"was sent at version {d.task.version}")
        # An integer in [0, MAX_NUM_EXAMPLES]; then the arrays: count, shape, dtype, finite, no overflow in sums.
        return check_num_examples(u.num_examples) or check_params(u.params, d.params)

    def _on_malformed(self, ev: Malformed) -> None:
        self.counters["received"] += 1
        known = ev.task_id in self._in_flight
        self._reject(Rejection("malformed", ev.detail), ev.node_id, ev.task_id, ev.time, ends_task=known)

    def _reject(self, rejection: Rejection, node: int, task_id: int, now: float, *, ends_task: bool) -> None:
        self.counters["rejected"] += 1
        self.counters[f"rejected_{rejection.reason}"] += 1
        log.warning("rejected update from node %s for task %s: %s (%s); the global model is unchanged",
                    node, task_id, rejection.reason, rejection.detail)
        self.observer.on_reject(rejection.reason, node, now)
        if ends_task:
            self._fail_task(task_id, "rejected", now)

    def _fail_task(self, task_id: int, reason: str, now: float) -> None:
        d = self._end_task(task_id)
        node = d.task.node_id
        self.counters["failed"] += 1
        self.counters[f"failed_{reason}"] += 1
        log.info("task %s on node %s failed: %s", task_id, node, reason)
        self._call(self.strategy.on_failure, d, now)
        self.observer.on_failure(node, reason, now)

    # ------------------------------------------------------------------ evaluation and checkpoints
    def _evaluate(self, now: float) -> None:
        self._last_eval_version = self.strategy.version
        if self.evaluate is None:
            return
        metrics = dict(self.evaluate(self.strategy.params))
        record = {
            "time": now - self._start_time,
            "version": self.strategy.version,
            "accuracy": float(metrics.get("accuracy", float("nan"))),
            "loss": float(metrics.get("loss", float("nan"))),
            "client_updates": self.client_updates,
        }
        self._accuracy = record["accuracy"] if math.isfinite(record["accuracy"]) else None
        self.history.append(record)
        self.observer.on_evaluate(record, now)

    def _state(self) -> dict[str, Any]:
        # Each array appears once in the file however often the state refers to it (checkpoint.encode), so the models
        # the tasks in flight were sent with cost nothing where the strategy holds them too; and they are stored at
        # all only where the transport can re-attach that work after a restart (over Flower it cannot).
        keep_models = self.transport.reattaches_work
        return {
            "now": self.transport.now(),
            "start_time": self._start_time,
            "strategy_name": self.strategy.name,
            "strategy": self.strategy.state_dict(),
            "next_task_id": self._next_task_id,
            "in_flight": [[d.task_id, d.task.node_id, d.task.version, dict(d.task.config), d.sent_at]
                          for d in self._in_flight.values()],
            "dispatched_params": {d.task.version: d.params for d in self._in_flight.values()} if keep_models else {},
            "known": sorted(self._known),
            "history": self.history,
            "client_updates": self.client_updates,
            "counters": dict(self.counters),
            "last_eval_version": self._last_eval_version,
            "next_eval_time": self._next_eval_time,
            "accuracy": self._accuracy,
        }

    def _checkpoint(self, force: bool = False) -> None:
        """Write a checkpoint of this version (at most one per version unless ``force``) and prune this run's.

        An ``OSError`` (disk full, read-only folder) is logged and counted (``checkpoint_write_errors``,
        ``checkpoint_prune_errors``); the run goes on, and the previous checkpoint stays the newest.
        """
        if self.checkpoint_dir is None:
            return
        v = self.strategy.version
        if not force and v == self._last_ckpt_version:
            return
        self._last_ckpt_version = v
        path = ckpt.checkpoint_path(self.checkpoint_dir, v)
        try:
            ckpt.save(path, self._state(), fingerprint=self.fingerprint)
        except OSError as exc:
            self.counters["checkpoint_write_errors"] += 1
            log.error("could not write checkpoint %s (%s); the run goes on, and a resume would start from the "
                      "previous checkpoint", path, exc)
            return
        try:
            ckpt.prune(self.checkpoint_dir, self.keep_checkpoints, fingerprint=self.fingerprint)
        except OSError as exc:
            self.counters["checkpoint_prune_errors"] += 1
            log.error("could not prune the checkpoints in %s (%s); the run goes on", self.checkpoint_dir, exc)

    def _resume(self, path: str | Path) -> None:
        """Continue from the checkpoint file ``path``, or from the newest one in the folder ``path`` that loads.

        A file must be readable, of this format, written by this strategy, carry this run's fingerprint (one
        written without a fingerprint is accepted with a warning) and hold a complete state; else ``ValueError``
        naming it. Given a folder, checkpoints are tried newest first and each one skipped is logged with why;
        ``ValueError`` if none is left.
        """
        path = Path(path)
        if path.is_dir():
            path, state = self._newest_resumable(path)
        else:
            state = self._read_checkpoint(path)
            self._load_strategy(path, state)
        now = state["now"]
        self._start_time = state["start_time"]
        self._next_task_id = state["next_task_id"]
        self._known = state["known"]
        self.history = state["history"]
        self.client_updates = state["client_updates"]
        self.counters = state["counters"]
        self._last_eval_version = state["last_eval_version"]
        self._next_eval_time = state["next_eval_time"]
        self._accuracy = state["accuracy"]
        self._last_ckpt_version = self.strategy.version
        dispatched = state["dispatched_params"]
        reattach, failed = [], []
        for task_id, node, version, config, sent_at in state["in_flight"]:
            # A task whose model the checkpoint does not hold (written over a transport that cannot re-attach work)
            # is failed to the strategy below, with an empty model in its record.
            model = dispatched.get(version)
            d = Dispatch(task_id, Task(node, version, config), sent_at, model or [])
            self._in_flight[d.task_id] = d
            self._node_task[d.task.node_id] = d.task_id
            if model is None or not self.transport.reattaches_work:
                failed.append(d.task_id)
            else:
                reattach.append(d)
        failed += self.transport.restore(now, reattach)
        clients = list(self.transport.clients())
        self._membership_seen = self.transport.membership_version
        self._set_membership(clients, now, notify=False)
        live = {c.node_id for c in clients}
        for node in self.strategy.clients:  # the checkpoint's clients that are not back (yet) weigh nothing
            if node not in live:
                self.strategy.on_leave(node, now)
        for task_id in failed:
            if task_id in self._in_flight:
                self._fail_task(task_id, "lost_in_restart", now)
        log.info("resumed from %s at version %s, time %.3f; %d task(s) in flight, %d lost", path,
                 self.strategy.version, now, len(self._in_flight), len(failed))

    def _newest_resumable(self, directory: Path) -> tuple[Path, dict[str, Any]]:
        """The newest checkpoint in ``directory`` this run can resume, with its checked state (strategy loaded)."""
        skipped = []
        for path in reversed(ckpt.checkpoints(directory)):
            try:
                state = self._read_checkpoint(path)
                self._load_strategy(path, state)
            except ValueError as exc:
                log.warning("skipping checkpoint %s: %s", path, exc)
                skipped.append(f"{path.name}: {exc}")
                continue
            if skipped:
                log.warning("resuming from %s, the newest usable checkpoint; %d newer one(s) skipped", path,
                            len(skipped))
            return path, state
        if not skipped:
            raise ValueError(f"{directory} holds no checkpoint (ckpt-<version>.npz) to resume from")
        raise ValueError(f"none of the {len(skipped)} checkpoint(s) in {directory} can be resumed by this run: "
                         + "; ".join(skipped) + ". Start a new run (resume=false), which moves them aside, or resume "
                         "with the settings that wrote them")

    def _read_checkpoint(self, path: Path) -> dict[str, Any]:
        """The checked state of checkpoint ``path``, converted to what :meth:`_resume` sets; nothing is changed yet.

        Raises ``ValueError`` naming the file: unreadable, another format, another strategy, another run's
        fingerprint, or a missing or malformed entry.
        """
        raw, fingerprint = ckpt.read(path)
        if not isinstance(raw, dict):
            raise ValueError(f"checkpoint {path} holds a {type(raw).__name__}, not a run state")
        if raw.get("strategy_name") != self.strategy.name:
            raise ValueError(f"checkpoint {path} was written by strategy {raw.get('strategy_name')!r}, "
                             f"not {self.strategy.name!r}; resume with the same strategy")
        if fingerprint is None:
            log.warning("checkpoint %s carries no run fingerprint (written by an older fedhive): it cannot be checked "
                        "to belong to this run", path)
        elif fingerprint != self.fingerprint:
            raise ValueError(f"checkpoint {path} belongs to another run ("
                             + "; ".join(ckpt.differences(self.fingerprint, fingerprint)) + "): resume it with the "
                             "settings that wrote it, or start a new run (resume=false)")
        try:
            dispatched = {int(v): list(p) for v, p in raw["dispatched_params"].items()}
            for p in dispatched.values():
                for a in p:
                    if not isinstance(a, np.ndarray):
                        raise TypeError(f"a dispatched model holds a {type(a).__name__}, not an array")
                    a.flags.writeable = False
            in_flight = []
            for task_id, node, version, config, sent_at in raw["in_flight"]:
                if not isinstance(config, dict):
                    raise TypeError(f"a task's config is a {type(config).__name__}, not an object")
                in_flight.append((int(task_id), int(node), int(version), config, float(sent_at)))
            next_eval_time = raw["next_eval_time"]
            if next_eval_time is not None:
                float(next_eval_time)
            return {
                "now": float(raw["now"]),
                "start_time": float(raw["start_time"]),
                "strategy": raw["strategy"],
                "next_task_id": int(raw["next_task_id"]),
                "in_flight": in_flight,
                "dispatched_params": dispatched,
                "known": {int(n) for n in raw["known"]},
                "history": list(raw["history"]),
                "client_updates": int(raw["client_updates"]),
                "counters": Counter(dict(raw["counters"])),
                "last_eval_version": int(raw["last_eval_version"]),
                "next_eval_time": next_eval_time,
                "accuracy": raw["accuracy"],
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"checkpoint {path} holds an incomplete or malformed run state "
                             f"({type(exc).__name__}: {exc})") from exc

    def _load_strategy(self, path: Path, state: dict[str, Any]) -> None:
        try:
            self.strategy.load_state_dict(state["strategy"])
        except Exception as exc:  # the strategy's own checks, or what a damaged state makes it raise
            raise ValueError(f"checkpoint {path}: strategy {self.strategy.name} cannot load its state "
                             f"({type(exc).__name__}: {exc})") from exc
