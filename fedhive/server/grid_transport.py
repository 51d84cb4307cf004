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

On Flower's HTTP grid (deployment) replies are pulled with :class:`fedhive.server.reply_pull.ReplyPuller`, which never
waits on a node's upload (Flower's ``pull_messages`` can wait two hours for one frozen node): a reply that gains no
object for ``upload_timeout`` seconds fails its task as ``upload_stalled``, one whose objects the SuperLink lost as ``upload_lost``; a reply larger than twice the model sent
plus 1 MiB (4 MiB for a profile or an evaluation) is ``Malformed`` and nothing more of it is read.

A reply that cannot be decoded is a ``Malformed`` event, never an exception: no arrays; arrays not named exactly like
the model's tensors (in any order: they are mapped by name; missing and foreign names are both reported); an array
whose declared dtype or shape is not that of the tensor the task was sent with, whose data is larger than that tensor
needs, that is not ``.npy`` data, or that does not decode to a plain ndarray of that dtype and shape (all but the last
checked before decoding; see :func:`fedhive.messages.from_array_record`); no ``num-examples``, or one that is not an
integer from 0 to ``MAX_NUM_EXAMPLES``. Of a good reply's metrics only finite numbers are kept (at most
``MAX_METRICS``; the rest is dropped and counted in ``metric_rejections``), so the ``Update`` holds ``str -> int |
float`` only. A profile's ``device-class`` and ``num-examples`` that cannot be taken become ``unknown`` and 0, counted
in ``profile_rejections``; ``profiles`` keeps a bounded number of short scalar entries of each. Given
``partition_sizes`` (the server built the same partition), a node whose profile names a usable ``partition-id`` is
weighted by the server's size of that partition in its ``ClientInfo`` and in every ``Update``, whatever it claims (a
reply's claim is still checked as above); a replaced claim is counted as ``num-examples-corrected`` in
``profile_rejections`` (profiles) or ``metric_rejections`` (replies).
A fedhive client echoes the version it trained from (``fedhive.version`` in its metrics); that claim goes into the
``Update`` for the engine to check against its record of the task (a SuperNode that pairs a reply with the wrong
message is caught there), and a stock ClientApp that says nothing leaves it ``None``.

The clock is wall time (``time.monotonic``) from the start of the run; after a restart it continues from the
checkpoint's time. Work in flight before a restart belonged to the old Flower run and is failed.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from fedhive import messages as M
from fedhive.engine.transport import Event, Failure, Malformed, Result, Transport
from fedhive.strategies.base import ClientInfo, Dispatch, Task, Update
from fedhive.strategies.params import number
from fedhive.strategies.params import short_repr as _short

from .reply_pull import REPLY_TOO_LARGE, REPLY_UNDECODABLE, ReplyPuller, make_reply_puller

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, Message, RecordDict
    from flwr.serverapp import Grid

log = logging.getLogger("fedhive.grid")

ERROR_REASONS = {2: "client_error", 3: "timeout", 5: "node_lost", 8: "client_crashed"}

# Flower 1.42's SuperNode sleeps this long between pulls when it has nothing to do (hard-coded).
SUPERNODE_IDLE_POLL = 3.0

# What is kept of what a node sends (everything past these is dropped and counted; see the module docstring).
MAX_PROFILE_KEYS = 32  # entries of a profile kept in ``GridTransport.profiles``
MAX_PROFILE_CHARS = 256  # the longest string value kept in a profile
MAX_KEY_CHARS = 64  # the longest profile or metric name kept
MAX_METRICS = 64  # entries of a reply's metrics kept in the ``Update``


def _profile_value(value: object) -> object | None:
    """A profile value worth keeping: a bool, an int, a finite float or a string of at most MAX_PROFILE_CHARS."""
    if type(value) is str:
        return value if len(value) <= MAX_PROFILE_CHARS else None
    return M.finite_number(value) if type(value) is not bool else value




class GridInterrupted(BaseException):
    """Raised by a stop-signal handler (``fedhive.server.app``) inside a call into Flower's Grid: after ``flwr stop``
    such a call can wait for ever (Flower's retries expect its own handler to end the process). A BaseException, as
    Flower's ``RunNotRunningException``, so no ``except Exception`` on the way swallows it; GridTransport catches it
    and the run stops with its final checkpoint."""


@dataclass
class _Query:
    node_id: int
    sent_at: float


@dataclass
class _Evaluation:
    node_id: int
    version: int
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
        How often to pull replies and to refresh the node list. While pulls bring nothing, the pause between them
        grows by half each time, up to ``poll_backoff_max`` seconds (or ``poll_interval`` where that is longer), and
        drops back to ``poll_interval`` at the next reply or dispatch: replies come seconds apart on the real path
        (a SuperNode polls every few seconds when idle), so pulling 20 times a second while waiting for them costs
        the SuperLink and the server CPU for nothing.
    profile_ttl
        How long a node has to answer the profile query before it joins as ``unknown``.
    extra_config
        Added to every train message's config (e.g. the model store's address for FedASMU).
    node_config
        ``node_id -> config`` added to each train message for that node (e.g. the node's own model-store token).
    idle_timeout
        With nothing in flight and no deadline, :meth:`wait` gives up after this many seconds without a change.
    partition_sizes
        The number of training examples of each partition (index: partition id), when the server builds the same
        partition as the devices (fedhive's ServerApp with ``num-partitions`` >= 1); each an integer from 0 to
        ``MAX_NUM_EXAMPLES``. A node whose profile names its partition is then weighted by this size, not by its
        claim (see :meth:`_join`). ``None`` (the default): every node's claim is taken, as validated.
    arrays_key, config_key, weight_key
        The records' names: the model travels under ``arrays_key`` both ways, the task's config under
        ``config_key``, and a reply's example count is its metric ``weight_key`` (default: ``num-examples``, or
        ``num_examples`` where a reply has only that). ``fedhive.flower`` passes a Flower strategy's
        ``arrayrecord_key``, ``configrecord_key`` and ``weighted_by_key`` here.
    query_profiles
        Ask each new node for its profile (device class, examples) before it gets work; ``False`` (a Flower app whose
        ClientApp has no ``query.profile`` handler): nodes join at once as ``unknown`` with 0 examples, and their
        replies' counts are what weights them.
    make_config
        ``task -> config`` of a train message, instead of ``task.config``; ``extra_config`` goes under either (the
        task id and the model version are added over both).
    alias_loss
        Copy a reply's ``train_loss`` to ``loss`` where it has no ``loss`` (fedhive's metrics read ``loss``).
    upload_timeout
        Seconds a reply the SuperLink has handed out may go without a new object before its task fails as
        ``upload_stalled`` (Flower's HTTP grid only; see the module docstring).
    """

    def __init__(self, grid: Grid, param_names: Sequence[str], *, ttl: float = 600.0, poll_interval: float = 0.05,
                 poll_backoff_max: float = 0.5, membership_interval: float = 1.0, profile_ttl: float = 60.0,
                 extra_config: Mapping[str, Any] | None = None, idle_timeout: float = 600.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 partition_sizes: Sequence[int] | None = None, arrays_key: str = M.ARRAYS,
                 config_key: str = M.CONFIG, weight_key: str | None = None, query_profiles: bool = True,
                 make_config: Callable[[Task], Mapping[str, Any]] | None = None, alias_loss: bool = True,
                 node_config: Callable[[int], Mapping[str, Any]] | None = None,
                 upload_timeout: float = 60.0) -> None:
        ttl = number("ttl (seconds)", ttl, low=0, low_open=True)
        self.upload_timeout = number("upload_timeout (seconds)", upload_timeout, low=0, low_open=True)
        self._puller: ReplyPuller | None = None
        self._puller_checked = False
        for what, key in (("arrays_key", arrays_key), ("config_key", config_key), ("weight_key", weight_key)):
            if key is not None and (type(key) is not str or not key):
                raise ValueError(f"{what} must be a non-empty string, got {_short(key)}")
        self.arrays_key, self.config_key, self.weight_key = arrays_key, config_key, weight_key
        self.query_profiles = bool(query_profiles)
        self.make_config = make_config
        self.alias_loss = bool(alias_loss)
        if partition_sizes is not None:
            partition_sizes = tuple(partition_sizes)
            bad = [i for i, n in enumerate(partition_sizes) if type(n) is not int or M.example_count(n) is None]
            if not partition_sizes or bad:
                raise ValueError(f"partition_sizes must be a non-empty sequence of integers from 0 to "
                                 f"{M.MAX_NUM_EXAMPLES}, got " + (f"{_short(partition_sizes[bad[0]])} at index {bad[0]}"
                                                                  if bad else "an empty one"))
        self.partition_sizes: tuple[int, ...] | None = partition_sizes
        poll_interval = number("poll_interval (seconds)", poll_interval, low=0, low_open=True)
        self.grid = grid
        self.param_names = list(param_names)
        self.ttl = ttl
        self.poll_interval = poll_interval
        self.poll_backoff_max = max(poll_interval, number("poll_backoff_max (seconds)", poll_backoff_max, low=0))
        self._pause = poll_interval  # the next pause between pulls (see poll_interval above)
        self.membership_interval = float(membership_interval)
        self.profile_ttl = float(profile_ttl)
        self.extra_config = dict(extra_config or {})
        self.node_config = node_config
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
        self._evals: dict[str, _Evaluation] = {}  # message id -> federated evaluation (fedhive.flower)
        self._eval_results: list[tuple[int, int, dict[str, int | float], int, str]] = []
        self._queried: set[int] = set()
        self._pending: list[Event] = []
        self._record_cache: tuple[int, ArrayRecord] | None = None  # (model version, its ArrayRecord)
        self._bytes = 0
        self.replies = 0
        self.push_seconds = 0.0
        self.pull_seconds = 0.0
        self.pulls = 0
        self.profiles: dict[int, dict[str, Any]] = {}
        # What was refused or dropped of what nodes sent, by reason (for the server app to report):
        # num-examples, device-class, entries_dropped; with partition_sizes also partition-id and num-partitions
        # (unusable, so the claim is taken) and num-examples-corrected (a claim replaced by the known size):
        self.profile_rejections: Counter[str] = Counter()
        # not_a_number, bad_name, too_many; num-examples-corrected: a reply's valid claim replaced by the known size
        self.metric_rejections: Counter[str] = Counter()
        self._known_sizes: dict[int, int] = {}  # node -> the server's size of its partition (see partition_sizes)
        self._corrections_logged: set[int] = set()  # nodes whose reply claims were corrected (logged once each)
        self.interrupted = False  # see interrupt()
        self.in_grid_call = False  # a call into Flower's Grid is under way (see GridInterrupted)

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
        online = {int(n) for n in self._grid(self.grid.get_node_ids)}
        # Before asking: a node whose profile query is refused joins at once, and _join checks it is online.
        self._online = online
        changed = False
        for node in sorted(online - self._queried):
            if self.query_profiles:
                self._ask_profile(node)
            else:
                self._queried.add(node)
                self._join(node, {}, "profiles not queried")
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

    def interrupt(self) -> None:
        """The run is stopping (SIGTERM, ``flwr stop``; ``Orchestrator.request_stop``): ``wait`` returns within a poll
        interval, nothing more is pushed, and a grid call that fails from now on (after ``flwr stop`` the SuperLink
        refuses this run's calls) is logged and ends the wait instead of raising. Safe from a signal handler."""
        self.interrupted = True

    def _grid(self, call: Any, *args: Any) -> Any:
        self.in_grid_call = True
        try:
            return call(*args)
        finally:
            self.in_grid_call = False

    def _tolerate(self, exc: BaseException) -> None:
        """Re-raise ``exc`` unless the run is stopping (see ``interrupt``)."""
        if not self.interrupted:
            raise exc
        log.info("a grid call ended while the run stops (%s)", "interrupted by the stop signal"
                 if isinstance(exc, GridInterrupted) else f"{type(exc).__name__}: {exc}")

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
        ids = list(self._grid(self.grid.push_messages, [msg]))
        if ids and ids[0]:
            self._queries[ids[0]] = _Query(node, self.now())
        else:
            self._join(node, {}, "the profile query was refused")

    def _join(self, node: int, profile: Mapping[str, Any], why: str = "") -> None:
        """Make ``node`` a client with what its ``profile`` (untrusted) says.

        ``device-class`` is kept if :func:`fedhive.messages.device_class` accepts it, ``num-examples`` if it is an
        integer from 0 to ``MAX_NUM_EXAMPLES``; anything else becomes ``unknown`` / 0 and is counted in
        ``profile_rejections``. ``profiles[node]`` keeps at most MAX_PROFILE_KEYS entries with names of at most
        MAX_KEY_CHARS characters and scalar values (strings of at most MAX_PROFILE_CHARS); the rest is dropped.

        With ``partition_sizes``, a profile's ``partition-id`` (an ``int``, not a bool, in
        ``range(len(partition_sizes))``) and ``num-partitions`` (if present, an ``int`` equal to
        ``len(partition_sizes)``) make the client's ``num_examples`` the server's size of that partition, for this and
        every later reply of the node (:meth:`_on_reply`); a valid claim that differs is counted in
        ``profile_rejections["num-examples-corrected"]`` and logged. A ``partition-id`` or ``num-partitions`` that
        cannot be used is counted in ``profile_rejections`` under its name and the node keeps its claim (the
        strategies' ``max_weight_ratio`` still caps it); without a ``partition-id`` (a stock Flower ClientApp) the
        claim is taken as before. ``profiles[node]`` keeps the claim as the node sent it (less what was refused).
        """
        if node not in self._online:
            return  # it left before it answered
        refused: set[str] = set()
        raw_class = profile.get("device-class", "unknown")
        device_class = M.device_class(raw_class)
        if device_class is None:
            device_class = "unknown"
            refused.add(self._refuse_profile(node, "device-class", raw_class))
        raw_n = profile.get("num-examples", 0)
        num_examples = M.example_count(raw_n)
        if num_examples is None:
            num_examples = 0
            refused.add(self._refuse_profile(node, "num-examples", raw_n))
        known = self._known_size(node, profile, refused)
        if known is None:
            self._known_sizes.pop(node, None)
        else:
            self._known_sizes[node] = known
            if num_examples != known and "num-examples" not in refused:
                self.profile_rejections["num-examples-corrected"] += 1
                log.warning("node %s: profile claims %s examples, partition %s has %d: weighted by %d", node,
                            _short(raw_n), profile["partition-id"], known, known)
            num_examples = known
        kept: dict[str, Any] = {}
        dropped = 0
        for key, value in profile.items():
            if key in refused:
                continue  # counted above
            value = _profile_value(value)
            if len(kept) >= MAX_PROFILE_KEYS or type(key) is not str or len(key) > MAX_KEY_CHARS or value is None:
                dropped += 1
                continue
            kept[key] = value
        if dropped:
            self.profile_rejections["entries_dropped"] += dropped
            log.warning("node %s: %d profile entries dropped (kept: at most %d scalars, strings of at most %d "
                        "characters)", node, dropped, MAX_PROFILE_KEYS, MAX_PROFILE_CHARS)
        self.profiles[node] = kept
        self._clients[node] = ClientInfo(node, num_examples, device_class)
        self._membership += 1
        log.info("node %s joined: %s, %d examples%s", node, device_class, num_examples, f" ({why})" if why else "")

    def _known_size(self, node: int, profile: Mapping[str, Any], refused: set[str]) -> int | None:
        """The server's size of the partition ``profile`` names (see :meth:`_join`), or ``None``: no
        ``partition_sizes``, no ``partition-id``, or one (or a ``num-partitions``) that cannot be used (counted, and
        its name added to ``refused``)."""
        sizes = self.partition_sizes
        if sizes is None or "partition-id" not in profile:
            return None
        pid, parts = profile["partition-id"], profile.get("num-partitions", len(sizes))
        if type(pid) is not int or not 0 <= pid < len(sizes):
            key, value, accepted = "partition-id", pid, f"an integer from 0 to {len(sizes) - 1}"
        elif type(parts) is not int or parts != len(sizes):
            key, value, accepted = "num-partitions", parts, f"{len(sizes)}, as the server's partition"
        else:
            return sizes[pid]
        self.profile_rejections[key] += 1
        refused.add(key)
        log.warning("node %s: profile %s %s cannot be used (accepted: %s); weighted by its claim", node, key,
                    _short(value), accepted)
        return None

    def _refuse_profile(self, node: int, key: str, value: object) -> str:
        self.profile_rejections[key] += 1
        accepted = {"device-class": f"one of {', '.join(M.KNOWN_DEVICE_CLASSES)} or a token of a-z, 0-9, _ and - "
                                    "(at most 32 characters)",
                    "num-examples": f"an integer from 0 to {M.MAX_NUM_EXAMPLES}"}[key]
        log.warning("node %s: profile %s %s refused (accepted: %s); taken as %s", node, key, _short(value), accepted,
                    "unknown" if key == "device-class" else 0)
        return key

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
        if self.interrupted:  # stopping: the task stays in the engine's record, lost on resume (never run twice)
            return
        base = {**self.extra_config, **(task.config if self.make_config is None else self.make_config(task))}
        if self.node_config is not None:
            base.update(self.node_config(task.node_id))
        config = {**base, M.TASK_ID: task_id, M.VERSION: task.version}
        content = RecordDict({self.arrays_key: self._record(task.version, params),
                              self.config_key: M.to_config_record(config)})
        msg = Message(content, dst_node_id=task.node_id, message_type="train", ttl=self.ttl,
                      group_id=str(task.version))
        t = time.perf_counter()
        try:
            ids = list(self._grid(self.grid.push_messages, [msg]))
        except (Exception, GridInterrupted) as exc:  # noqa: BLE001 - re-raised unless stopping
            self._tolerate(exc)
            return
        self.push_seconds += time.perf_counter() - t
        now = self.now()
        if not ids or not ids[0]:
            log.warning("the SuperLink refused task %s for node %s", task_id, task.node_id)
            self._pending.append(Failure(task_id, task.node_id, "push_refused", now))
            return
        self._sent[ids[0]] = sent
        self._bytes += sum(int(p.nbytes) for p in params)
        self._pause = self.poll_interval

    # ------------------------------------------------------------------ waiting
    def wait(self, deadline: float | None) -> list[Event]:
        idle_end = self._clock() + self.idle_timeout
        membership = self._membership
        while True:
            if self.interrupted:
                events, self._pending = self._pending, []
                return sorted(events, key=lambda e: e.time)
            try:
                if self._clock() >= self._next_membership:
                    self.refresh()
                self._pull()
            except (Exception, GridInterrupted) as exc:  # noqa: BLE001 - re-raised unless stopping
                self._tolerate(exc)
                continue
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
            pause = self._pause
            self._pause = min(self._pause * 1.5, self.poll_backoff_max)
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - now))
            self._sleep(pause)

    def _pull(self) -> None:
        ids = list(self._sent) + list(self._queries) + list(self._evals)
        if not ids:
            return
        t = time.perf_counter()
        puller = self._reply_puller()
        if puller is None:
            replies, given_up = list(self._grid(self.grid.pull_messages, ids)), []
        else:
            replies, given_up = self._grid(puller.pull, ids)
        self.pull_seconds += time.perf_counter() - t
        self.pulls += 1
        if replies or given_up:
            self._pause = self.poll_interval
        now = self.now()
        for mid, reason, detail in given_up:
            self._give_up(mid, reason, detail, now)
        for reply in replies:
            mid = reply.metadata.reply_to_message_id
            if mid in self._queries:
                self._on_profile(self._queries.pop(mid), reply)
                continue
            if mid in self._evals:
                self._eval_results.append(self._on_evaluate_reply(self._evals.pop(mid), reply))
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

    def _reply_puller(self) -> ReplyPuller | None:
        """The non-blocking puller for Flower's HTTP grid, made at the first pull (the grid's run is set by then)."""
        if not self._puller_checked:
            self._puller_checked = True
            self._puller = make_reply_puller(self.grid, upload_timeout=self.upload_timeout, clock=self._clock,
                                             limit=self._reply_limit)
        return self._puller

    def _reply_limit(self, mid: str) -> int:
        """The most bytes a reply to message ``mid`` may take: twice the model it was sent plus 1 MiB (4 MiB for a
        profile query or an evaluation, which carry no model back)."""
        sent = self._sent.get(mid)
        if sent is None:
            return 4 << 20
        return 2 * sum(int(p.nbytes) for p in sent.params) + (1 << 20)

    def _give_up(self, mid: str, reason: str, detail: str, now: float) -> None:
        """A reply the puller gave up on (see ReplyPuller): its task fails, or is rejected as malformed."""
        if mid in self._queries:
            self._join(self._queries.pop(mid).node_id, {}, f"profile reply {reason}")
            return
        if mid in self._evals:
            ev = self._evals.pop(mid)
            self._eval_results.append((ev.version, ev.node_id, {}, 0, reason))
            return
        sent = self._sent.pop(mid, None)
        if sent is None:
            return
        node = sent.task.node_id
        log.warning("task %s on node %s: %s (%s)", sent.task_id, node, reason, detail)
        if reason in (REPLY_TOO_LARGE, REPLY_UNDECODABLE):
            self._pending.append(Malformed(sent.task_id, node, f"{reason}: {detail}"[:300], now))
        else:
            self._pending.append(Failure(sent.task_id, node, reason, now))

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
            if self.arrays_key not in content:
                raise ValueError(f"the reply has no '{self.arrays_key}' record")
            raw, key = self._reply_metrics(content)
            if key not in raw:
                raise ValueError(f"the reply's metrics have no '{self.weight_key or 'num-examples'}'")
            n = M.example_count(raw[key])
            if n is None:
                raise ValueError(f"the reply's '{key}' must be an integer from 0 to {M.MAX_NUM_EXAMPLES}, "
                                 f"got {_short(raw[key])}")
            # Arrays by name, each checked against the tensor this task was sent with before it is decoded.
            specs = [(p.shape, p.dtype) for p in sent.params]
            params = M.from_array_record(content[self.arrays_key], self.param_names, specs)
        except (ValueError, KeyError, TypeError) as exc:
            return Malformed(sent.task_id, src, str(exc)[:300], now)
        except Exception as exc:  # whatever else a hostile reply makes Flower or numpy raise: still only a bad reply
            log.warning("task %s: undecodable reply from node %s", sent.task_id, src, exc_info=True)
            return Malformed(sent.task_id, src, f"undecodable reply: {type(exc).__name__}: {str(exc)[:200]}", now)
        known = self._known_sizes.get(src)
        if known is not None and n != known:  # a node whose partition the server knows: weighted by its size
            self.metric_rejections["num-examples-corrected"] += 1
            if src not in self._corrections_logged:
                self._corrections_logged.add(src)
                log.warning("node %s: a reply claims %d examples, its partition has %d: weighted by %d (logged "
                            "once per node; counted in metric_rejections)", src, n, known, known)
            n = known
        claim = self._claim(raw.pop(M.VERSION, None))
        metrics = self._metrics(src, raw)
        if self.alias_loss and "loss" not in metrics and "train_loss" in metrics:
            metrics["loss"] = metrics["train_loss"]
        self._bytes += sum(int(p.nbytes) for p in params)
        return Result(sent.task_id, Update(src, claim, params, n, metrics), now)

    def _reply_metrics(self, content: RecordDict) -> tuple[dict[Any, Any], str]:
        """A reply's metrics (its ``metrics`` record, else, as Flower's strategies read it, its first MetricRecord
        whatever its name; ``{}`` if none) and the name of its example count (``weight_key``, else ``num-examples``,
        or ``num_examples`` where only that is there)."""
        if M.METRICS in content:
            raw = dict(content[M.METRICS])
        else:
            records = list(content.metric_records.values())
            raw = dict(records[0]) if records else {}
        key = self.weight_key or ("num-examples" if "num-examples" in raw else "num_examples")
        return raw, key

    @staticmethod
    def _claim(claim: object) -> object:
        """The version a reply says it trained from, for the engine to check: an int (an integral float becomes
        one), ``None``, or, as it is, any other scalar, which the engine refuses as ``version_mismatch``; anything
        else (bytes, a list, a string over 64 characters, an int beyond int64) becomes a short description of it,
        refused the same way and safe to print."""
        if type(claim) is float and math.isfinite(claim) and claim.is_integer() and abs(claim) < 2**63:
            return int(claim)
        if (claim is None or type(claim) in (float, bool) or (type(claim) is int and abs(claim) < 2**63)
                or (type(claim) is str and len(claim) <= 64)):
            return claim
        return _short(claim)

    def _metrics(self, node: int, raw: Mapping[Any, Any]) -> dict[str, int | float]:
        """The reply's metrics as ``str -> int | float``, all finite (:func:`fedhive.messages.finite_number`), at most
        MAX_METRICS of them with names of at most MAX_KEY_CHARS characters; the rest is dropped and counted in
        ``metric_rejections``."""
        out: dict[str, int | float] = {}
        dropped: list[str] = []
        for key, value in raw.items():
            if type(key) is not str or len(key) > MAX_KEY_CHARS:
                self.metric_rejections["bad_name"] += 1
                dropped.append(_short(key, 24))
                continue
            kept = M.finite_number(value)
            if kept is None:
                self.metric_rejections["not_a_number"] += 1
                dropped.append(key)
            elif len(out) >= MAX_METRICS:
                self.metric_rejections["too_many"] += 1
                dropped.append(key)
            else:
                out[key] = kept
        if dropped:
            log.warning("node %s: %d reply metrics dropped (accepted: at most %d finite numbers): %s%s", node,
                        len(dropped), MAX_METRICS, ", ".join(dropped[:5]), " ..." if len(dropped) > 5 else "")
        return out

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
        while (self._sent or self._queries or self._evals) and not self.interrupted:  # no grid call may hang a stop
            before = len(self._sent) + len(self._queries) + len(self._evals)
            try:
                self._pull()
            except (Exception, GridInterrupted) as exc:  # noqa: BLE001 - re-raised unless stopping
                self._tolerate(exc)
                break
            late += before - len(self._sent) - len(self._queries) - len(self._evals)
            self._pending.clear()
            self._eval_results.clear()
            now = self.now()
            youngest = max([s.sent_at for s in self._sent.values()] + [q.sent_at for q in self._queries.values()]
                           + [e.sent_at for e in self._evals.values()], default=None)
            if youngest is None or now - youngest >= grace or self._clock() >= end:
                break
            self._sleep(min(self.poll_interval * 4, 0.25))
        if self._sent:
            log.info("run over with %d tasks still running on their nodes (their replies will be dropped)",
                     len(self._sent))
        return late

    # ------------------------------------------------------------------ federated evaluation (fedhive.flower)
    def busy_nodes(self) -> set[int]:
        """Nodes with a train task in flight."""
        return {d.task.node_id for d in self._sent.values()}

    def push_evaluate(self, node: int, version: int, params: Sequence[np.ndarray], config: Mapping[str, Any]) -> bool:
        """Send ``node`` an ``evaluate`` message with the model at ``version`` and ``config``; False if it was not
        sent (refused, or the run is stopping). Its reply comes out of :meth:`take_evaluations`."""
        from flwr.app import Message, RecordDict

        if self.interrupted:
            return False
        content = RecordDict({self.arrays_key: self._record(version, params),
                              self.config_key: M.to_config_record(config)})
        msg = Message(content, dst_node_id=node, message_type="evaluate", ttl=self.ttl, group_id=f"evaluate-{version}")
        try:
            ids = list(self._grid(self.grid.push_messages, [msg]))
        except (Exception, GridInterrupted) as exc:  # noqa: BLE001 - re-raised unless stopping
            self._tolerate(exc)
            return False
        if not ids or not ids[0]:
            return False
        self._evals[ids[0]] = _Evaluation(node, version, self.now())
        self._bytes += sum(int(p.nbytes) for p in params)
        return True

    def take_evaluations(self) -> list[tuple[int, int, dict[str, int | float], int, str]]:
        """The evaluation replies pulled since the last call: ``(version, node, metrics, num_examples, reason)``,
        ``reason`` empty for a usable reply, else why it is not (a Flower error: ``timeout``, ``node_lost``, ...;
        ``malformed``: no metrics record, or no usable example count)."""
        out, self._eval_results = self._eval_results, []
        return out

    def drain_evaluations(self, limit: float) -> None:
        """Pull until every evaluation sent has its reply, or ``limit`` seconds passed."""
        end = self._clock() + limit
        while self._evals and not self.interrupted and self._clock() < end:
            try:
                self._pull()
            except (Exception, GridInterrupted) as exc:  # noqa: BLE001 - re-raised unless stopping
                self._tolerate(exc)
                return
            if self._evals:
                self._sleep(self.poll_interval)

    def _on_evaluate_reply(self, ev: _Evaluation, reply: Message) -> tuple[int, int, dict[str, int | float], int, str]:
        if reply.has_error():
            code = int(reply.error.code)
            return ev.version, ev.node_id, {}, 0, ERROR_REASONS.get(code, f"error_{code}")
        try:
            raw, key = self._reply_metrics(reply.content)
            n = M.example_count(raw.pop(key, None))
        except Exception:  # a hostile reply: only this evaluation is lost
            log.warning("undecodable evaluate reply from node %s", ev.node_id, exc_info=True)
            return ev.version, ev.node_id, {}, 0, "malformed"
        if n is None:
            log.warning("node %s: evaluate reply without a usable '%s' (an integer from 0 to %d): left out",
                        ev.node_id, key, M.MAX_NUM_EXAMPLES)
            return ev.version, ev.node_id, {}, 0, "malformed"
        return ev.version, ev.node_id, self._metrics(ev.node_id, raw), n, ""

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
