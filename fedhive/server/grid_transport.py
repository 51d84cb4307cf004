"""The transport over Flower's Grid: deployment and ``fedhive up``.

Event-driven on Flower's message API, as ``shared/FLOWER_1_42.md`` describes: one ``train`` message per idle node
(``push_messages``, a TTL on each), a non-blocking ``pull_messages`` over the ids in flight every
``poll_interval`` seconds, and ``get_node_ids`` about once a second for membership. A node that appears is asked
for its profile (``query.profile``: device class, number of examples) before it becomes a client; a node that
cannot answer (a stock Flower ClientApp) joins as device class ``unknown``. Error replies become failures:

====  ===================================  =================
code  Flower's meaning                      failure reason
====  ===================================  =================
2     the ClientApp raised                  ``client_error``
3     message unavailable (TTL passed)      ``timeout``
5     node unavailable (missed heartbeats)  ``node_lost``
8     the ClientApp process crashed         ``client_crashed``
====  ===================================  =================

A reply that cannot be decoded (no arrays, arrays that do not decode, no ``num-examples``) is a ``Malformed`` event.
A fedhive client echoes the version it trained from (``fedhive.version`` in its metrics); that claim goes into the
``Update`` for the engine to check against its record of the task (a SuperNode that pairs a reply with the wrong
message is caught there), and a stock ClientApp that says nothing leaves it ``None``.

The clock is wall time (``time.monotonic``) from the start of the run; after a restart it continues from the
checkpoint's time. Work in flight before a restart belonged to the old Flower run and is failed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from fedhive import messages as M
from fedhive.engine.transport import Event, Failure, Malformed, Result, Transport
from fedhive.strategies.base import ClientInfo, Dispatch, Update
from fedhive.strategies.params import number

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, Message
    from flwr.serverapp import Grid

log = logging.getLogger("fedhive.grid")

ERROR_REASONS = {2: "client_error", 3: "timeout", 5: "node_lost", 8: "client_crashed"}

# Flower 1.42's SuperNode sleeps this long between pulls when it has nothing to do (hard-coded).
SUPERNODE_IDLE_POLL = 3.0


@dataclass
class _Query:
    node_id: int
    sent_at: float


class GridTransport(Transport):
    """Tasks as Flower messages through a ``Grid``.

    Parameters
    ----------
    grid
        The ServerApp's ``flwr.serverapp.Grid`` (anything with ``push_messages``, ``pull_messages``,
        ``get_node_ids``).
    param_names
        The model's ``state_dict()`` names: arrays travel under these keys, as Flower's quickstart does.
    ttl
        Seconds a train message may wait and run before Flower drops it (the task then fails with ``timeout``).
    poll_interval, membership_interval
        How often to pull replies and to refresh the node list.
    profile_ttl
        How long a node has to answer the profile query before it joins as ``unknown``.
    extra_config
        Added to every train message's config (e.g. the model store's address and token for FedASMU).
    idle_timeout
        With nothing in flight and no deadline, :meth:`wait` gives up after this many seconds without a change.
    """

    def __init__(self, grid: Grid, param_names: Sequence[str], *, ttl: float = 600.0, poll_interval: float = 0.05,
                 membership_interval: float = 1.0, profile_ttl: float = 60.0,
                 extra_config: Mapping[str, Any] | None = None, idle_timeout: float = 600.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        ttl = number("ttl (seconds)", ttl, low=0, low_open=True)
        poll_interval = number("poll_interval (seconds)", poll_interval, low=0, low_open=True)
        self.grid = grid
        self.param_names = list(param_names)
        self.ttl = ttl
        self.poll_interval = poll_interval
        self.membership_interval = float(membership_interval)
        self.profile_ttl = float(profile_ttl)
        self.extra_config = dict(extra_config or {})
        self.idle_timeout = float(idle_timeout)
        self._clock = clock
        self._sleep = sleep
        self._t0 = clock()
        self._offset = 0.0
        self._clients: dict[int, ClientInfo] = {}
        self._membership = 0
        self._online: set[int] = set()
        self._next_membership = -1.0
        self._sent: dict[str, Dispatch] = {}  # message id -> the engine's record of its task
        self._queries: dict[str, _Query] = {}  # message id -> profile query
        self._queried: set[int] = set()
        self._pending: list[Event] = []
        self._record_cache: tuple[int, ArrayRecord] | None = None  # (model version, its ArrayRecord)
        self._bytes = 0
        self.replies = 0
        self.push_seconds = 0.0
        self.pull_seconds = 0.0
        self.pulls = 0
        self.profiles: dict[int, dict[str, Any]] = {}

    # ------------------------------------------------------------------ clock and membership
    def now(self) -> float:
        return self._offset + (self._clock() - self._t0)

    def clients(self) -> Sequence[ClientInfo]:
        return list(self._clients.values())

    @property
    def membership_version(self) -> int:
        return self._membership

    def refresh(self) -> bool:
        """Ask the SuperLink which nodes are online; profile new ones, drop lost ones. True if clients changed."""
        self._next_membership = self._clock() + self.membership_interval
        online = {int(n) for n in self.grid.get_node_ids()}
        # Before asking: a node whose profile query is refused joins at once, and _join checks it is online.
        self._online = online
        changed = False
        for node in sorted(online - self._queried):
            self._ask_profile(node)
        for node in list(self._clients):
            if node not in online:
                del self._clients[node]
                changed = True
                log.info("node %s left", node)
        # Flower keeps a node's id when it misses heartbeats and comes back: profile it again when it does.
        gone = self._queried - online
        if gone:
            self._queried -= gone
            for mid, q in list(self._queries.items()):
                if q.node_id in gone:
                    del self._queries[mid]
        if changed:
            self._membership += 1
        return changed

    def wait_for_clients(self, n: int, timeout: float) -> int:
        """Block until ``n`` clients are known or ``timeout`` seconds passed; returns how many there are."""
        end = self._clock() + timeout
        while True:
            self.refresh()
            self._pull()
            if len(self._clients) >= n or self._clock() >= end:
                return len(self._clients)
            self._sleep(min(0.25, max(0.0, end - self._clock())))

    def _ask_profile(self, node: int) -> None:
        from flwr.app import Message, RecordDict

        self._queried.add(node)
        msg = Message(RecordDict({}), dst_node_id=node, message_type=M.PROFILE_QUERY, ttl=self.profile_ttl)
        ids = list(self.grid.push_messages([msg]))
        if ids and ids[0]:
            self._queries[ids[0]] = _Query(node, self.now())
        else:
            self._join(node, {}, "the profile query was refused")

    def _join(self, node: int, profile: Mapping[str, Any], why: str = "") -> None:
        if node not in self._online:
            return  # it left before it answered
        device_class = str(profile.get("device-class", "unknown")) or "unknown"
        num_examples = profile.get("num-examples", 0)
        num_examples = int(num_examples) if isinstance(num_examples, (int, float)) and num_examples >= 0 else 0
        self.profiles[node] = dict(profile)
        self._clients[node] = ClientInfo(node, num_examples, device_class)
        self._membership += 1
        log.info("node %s joined: %s, %d examples%s", node, device_class, num_examples, f" ({why})" if why else "")

    # ------------------------------------------------------------------ dispatch
    def _record(self, version: int, params: Sequence[np.ndarray]) -> ArrayRecord:
        """The model at ``version`` as an ArrayRecord, encoded once per version (every task at a version carries it)."""
        cached = self._record_cache
        if cached is not None and cached[0] == version:
            return cached[1]
        record = M.to_array_record(params, self.param_names)
        self._record_cache = (version, record)
        return record

    def dispatch(self, sent: Dispatch) -> None:
        from flwr.app import Message, RecordDict

        task_id, task, params = sent.task_id, sent.task, sent.params
        config = {**self.extra_config, **task.config, M.TASK_ID: task_id, M.VERSION: task.version}
        content = RecordDict({M.ARRAYS: self._record(task.version, params), M.CONFIG: M.to_config_record(config)})
        msg = Message(content, dst_node_id=task.node_id, message_type="train", ttl=self.ttl,
                      group_id=str(task.version))
        t = time.perf_counter()
        ids = list(self.grid.push_messages([msg]))
        self.push_seconds += time.perf_counter() - t
        now = self.now()
        if not ids or not ids[0]:
            log.warning("the SuperLink refused task %s for node %s", task_id, task.node_id)
            self._pending.append(Failure(task_id, task.node_id, "push_refused", now))
            return
        self._sent[ids[0]] = sent
        self._bytes += sum(int(p.nbytes) for p in params)

    # ------------------------------------------------------------------ waiting
    def wait(self, deadline: float | None) -> list[Event]:
        idle_end = self._clock() + self.idle_timeout
        membership = self._membership
        while True:
            if self._clock() >= self._next_membership:
                self.refresh()
            self._pull()
            if self._pending:
                events, self._pending = self._pending, []
                events.sort(key=lambda e: e.time)
                return events
            now = self.now()
            if deadline is not None and now >= deadline:
                return []
            if self._membership != membership:
                return []
            if deadline is None and not self._sent and not self._queries and self._clock() >= idle_end:
                return []
            pause = self.poll_interval
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - now))
            self._sleep(pause)

    def _pull(self) -> None:
        ids = list(self._sent) + list(self._queries)
        if not ids:
            return
        t = time.perf_counter()
        replies = list(self.grid.pull_messages(ids))
        self.pull_seconds += time.perf_counter() - t
        self.pulls += 1
        now = self.now()
        for reply in replies:
            mid = reply.metadata.reply_to_message_id
            if mid in self._queries:
                self._on_profile(self._queries.pop(mid), reply)
                continue
            sent = self._sent.pop(mid, None)
            if sent is None:
                continue
            self.replies += 1
            self._pending.append(self._on_reply(sent, reply, now))
        # Profile queries whose node vanished or never answered.
        for mid, q in list(self._queries.items()):
            if now - q.sent_at > self.profile_ttl + 5.0:
                del self._queries[mid]
                self._join(q.node_id, {}, "no answer to the profile query")

    def _on_profile(self, q: _Query, reply: Message) -> None:
        if reply.has_error():
            self._join(q.node_id, {}, f"profile query error {reply.error.code}: not a fedhive client")
            return
        try:
            profile = dict(reply.content[M.PROFILE])
        except Exception:  # a reply without a profile record
            profile = {}
        self._join(q.node_id, profile)

    def _on_reply(self, sent: Dispatch, reply: Message, now: float) -> Event:
        node = sent.task.node_id
        if reply.has_error():
            code = int(reply.error.code)
            reason = ERROR_REASONS.get(code, f"error_{code}")
            log.info("task %s on node %s: Flower error %s (%s)", sent.task_id, node, code, reply.error.reason)
            return Failure(sent.task_id, node, reason, now)
        src = int(reply.metadata.src_node_id)
        try:
            content = reply.content
            if M.ARRAYS not in content:
                raise ValueError(f"the reply has no '{M.ARRAYS}' record")
            params = M.from_array_record(content[M.ARRAYS], self.param_names)
            metrics = dict(content[M.METRICS]) if M.METRICS in content else {}
            n = metrics.get("num-examples", metrics.get("num_examples"))
            if n is None:
                raise ValueError("the reply's metrics have no 'num-examples'")
            if isinstance(n, float) and n.is_integer():
                n = int(n)
            if "loss" not in metrics and "train_loss" in metrics:
                metrics["loss"] = metrics["train_loss"]
        except (ValueError, KeyError, TypeError) as exc:
            return Malformed(sent.task_id, src, str(exc), now)
        claim = metrics.pop(M.VERSION, None)
        if isinstance(claim, float) and claim.is_integer():
            claim = int(claim)
        self._bytes += sum(int(p.nbytes) for p in params)
        return Result(sent.task_id, Update(src, claim, params, n, metrics), now)

    # ------------------------------------------------------------------ the end of a run
    def settle(self, grace: float = SUPERNODE_IDLE_POLL + 3.0, limit: float = 20.0) -> int:
        """Before the ServerApp returns, give every node time to take the messages already sent to it.

        Flower 1.42's SuperNode pairs each message it pulls with the next reply it finds. A message it pulls after
        its run has finished is "ignored", yet a ClientApp still runs for it and its reply is pushed in place of the
        reply to the node's *next* message; from then on that node's every reply waits for one more message, and a
        synchronous round waiting for it stalls until the TTL. Waiting until every outstanding message is ``grace``
        seconds old (more than the node's idle poll), or answered, lets the nodes pull them while the run is still
        running; their replies are then dropped cleanly. At most ``limit`` seconds; returns the late replies seen.
        """
        end = self._clock() + limit
        late = 0
        while self._sent or self._queries:
            before = len(self._sent) + len(self._queries)
            self._pull()
            late += before - len(self._sent) - len(self._queries)
            self._pending.clear()
            now = self.now()
            youngest = max([s.sent_at for s in self._sent.values()] + [q.sent_at for q in self._queries.values()],
                           default=None)
            if youngest is None or now - youngest >= grace or self._clock() >= end:
                break
            self._sleep(min(self.poll_interval * 4, 0.25))
        if self._sent:
            log.info("run over with %d tasks still running on their nodes (their replies will be dropped)",
                     len(self._sent))
        return late

    # ------------------------------------------------------------------ restarts
    def restore(self, now: float, in_flight: Sequence[Dispatch]) -> list[int]:
        self._offset = float(now) - (self._clock() - self._t0)
        return [d.task_id for d in in_flight]

    @property
    def bytes_moved(self) -> int:
        return self._bytes

    @property
    def in_flight(self) -> int:
        return len(self._sent)
