"""A transport in virtual time: an event queue ordered by ``(time, sequence)``, SimPy-style.

Dispatching a task asks ``duration(node, task_id, task)`` how long it takes and schedules its completion; the
client's reply comes from ``train(node, task_id, task, params)`` when that moment is reached (an ``Update``, several
to script duplicates, or a ``Result``/``Malformed`` event, delivered at that moment, to script a forged or
undecodable reply). Because both are
functions of the task alone (not of call order), a run is deterministic, and a resumed run can re-create the tasks
that were in flight. Clients can join and leave at scripted times; a task can fail at a scripted moment.

The tests drive the orchestrator with scripted functions; ``fedhive sim`` plugs in device profiles and real training.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable, Iterable, Sequence

import numpy as np

from fedhive.strategies.base import ClientInfo, Dispatch, Task, Update

from .transport import Event, Failure, Result, Transport

DurationFn = Callable[[int, int, Task], float]
TrainFn = Callable[[int, int, Task, Sequence[np.ndarray]], "Update | Event | list[Update | Event]"]
FailFn = Callable[[int, int, Task], "float | None"]

_DONE, _FAIL, _JOIN, _LEAVE = range(4)  # subclasses add kinds from 16 on


def _nbytes(params: Sequence[np.ndarray]) -> int:
    n = 0
    for p in params:  # a loop, not sum() of a generator: this runs for every task, and per-call overhead is all it costs
        # (malformed replies may hold anything: they are counted, then rejected)
        n += p.nbytes if type(p) is np.ndarray else int(getattr(p, "nbytes", 0))
    return int(n)


class VirtualTransport(Transport):
    """Deterministic discrete-event transport.

    Parameters
    ----------
    clients
        Clients connected at the start.
    duration
        Seconds a task takes, from dispatch to its result.
    train
        The client's reply: an ``Update``, or an event or a list of them (to script forged and duplicate replies).
    fail_after
        Seconds after dispatch at which the task fails instead (``None``: it does not fail).
    joins, leaves
        ``(time, ClientInfo)`` and ``(time, node_id)`` membership changes.
    start
        The clock's start.
    """

    def __init__(self, clients: Iterable[ClientInfo], duration: DurationFn, train: TrainFn, *,
                 fail_after: FailFn | None = None, joins: Iterable[tuple[float, ClientInfo]] = (),
                 leaves: Iterable[tuple[float, int]] = (), start: float = 0.0) -> None:
        self._clients: dict[int, ClientInfo] = {c.node_id: c for c in clients}
        self._duration = duration
        self._train = train
        self._fail_after = fail_after
        self._now = float(start)
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = itertools.count()
        self._membership = 0
        self._tasks: dict[int, Dispatch] = {}  # the engine's records of the tasks still to complete
        self._bytes = 0
        for t, c in joins:
            self._push(float(t), _JOIN, c)
        for t, n in leaves:
            self._push(float(t), _LEAVE, int(n))

    reattaches_work = True

    # ------------------------------------------------------------------ Transport
    def now(self) -> float:
        return self._now

    def clients(self) -> list[ClientInfo]:
        return list(self._clients.values())

    @property
    def membership_version(self) -> int:
        return self._membership

    @property
    def bytes_moved(self) -> int:
        return self._bytes

    def dispatch(self, sent: Dispatch) -> None:
        self._schedule(sent)

    def wait(self, deadline: float | None) -> list[Event]:
        while self._heap:
            t = self._heap[0][0]
            if deadline is not None and t > deadline:
                break
            self._now = max(self._now, t)
            events: list[Event] = []
            membership = self._membership
            while self._heap and self._heap[0][0] == t:
                _, _, kind, payload = heapq.heappop(self._heap)
                if kind == _DONE:  # the common event, without the dispatch through _handle
                    events.extend(self._complete(payload, t))
                else:
                    self._handle(kind, payload, t, events)
            if events or self._membership != membership:
                return events
        if deadline is not None:
            self._now = max(self._now, deadline)
        return []

    def restore(self, now: float, in_flight: Sequence[Dispatch]) -> list[int]:
        """Apply the membership changes up to ``now`` and re-create the tasks that were in flight."""
        while self._heap and self._heap[0][0] <= now and self._heap[0][2] in (_JOIN, _LEAVE):
            _, _, kind, payload = heapq.heappop(self._heap)
            if kind == _JOIN:
                self._join(payload)
            else:
                self._leave(int(payload), now, [])
        self._now = float(now)
        lost = []
        for d in in_flight:
            if d.task.node_id in self._clients:
                self._schedule(d, count_bytes=False)
            else:
                lost.append(d.task_id)
        return lost

    # ------------------------------------------------------------------ internals
    def _handle(self, kind: int, payload: object, t: float, events: list[Event]) -> None:
        """Apply one queued event at time ``t``; append what the orchestrator must see to ``events``."""
        if kind == _DONE:
            events.extend(self._complete(int(payload), t))
        elif kind == _FAIL:
            task_id = int(payload)
            if task_id in self._tasks:
                sent = self._tasks.pop(task_id)
                events.append(Failure(task_id, sent.task.node_id, "client_error", t))
        elif kind == _JOIN:
            self._join(payload)
        elif kind == _LEAVE:
            self._leave(int(payload), t, events)

    def _join(self, client: ClientInfo) -> None:
        self._clients[client.node_id] = client
        self._membership += 1

    def _leave(self, node: int, t: float, events: list[Event], reason: str = "node_lost") -> None:
        if self._clients.pop(node, None) is not None:
            self._membership += 1
        for task_id, sent in list(self._tasks.items()):
            if sent.task.node_id == node:
                del self._tasks[task_id]
                events.append(Failure(task_id, node, reason, t))

    def _push(self, t: float, kind: int, payload: object) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, payload))

    def _schedule(self, sent: Dispatch, *, count_bytes: bool = True) -> None:
        task_id, task, sent_at = sent.task_id, sent.task, sent.sent_at
        self._tasks[task_id] = sent
        if task.node_id not in self._clients:  # sent to a client that has left: it never arrives
            self._push(sent_at, _FAIL, task_id)
            return
        if count_bytes:
            self._bytes += _nbytes(sent.params)
        fail = self._fail_after(task.node_id, task_id, task) if self._fail_after else None
        if fail is not None:
            self._push(sent_at + float(fail), _FAIL, task_id)
        else:
            self._push(sent_at + float(self._duration(task.node_id, task_id, task)), _DONE, task_id)

    def _complete(self, task_id: int, t: float) -> list[Event]:
        sent = self._tasks.pop(task_id, None)
        if sent is None:
            return []
        task = sent.task
        out = self._train(task.node_id, task_id, task, sent.params)
        replies = out if type(out) is list else (out,)
        events: list[Event] = []
        for r in replies:
            if type(r) is Update:
                if type(r.params) is list:
                    self._bytes += _nbytes(r.params)
                events.append(Result(task_id, r, t))
            else:  # a scripted event (a forged or malformed reply), delivered now
                r.time = t
                events.append(r)
        return events
