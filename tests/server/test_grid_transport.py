"""GridTransport over a fake Grid that holds and answers real Flower messages; a fake clock, so nothing sleeps."""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedhive import messages as M
from fedhive.engine import Failure, Malformed, Observer, Orchestrator, Result, StopCondition
from fedhive.server.grid_transport import GridTransport
from fedhive.strategies import build
from fedhive.strategies.base import Dispatch, Task

NAMES = ["layer.weight", "layer.bias"]


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


Responder = Callable[[Message], "RecordDict | Error | None"]


class FakeGrid:
    """The three Grid methods GridTransport uses. Pushed messages get ids as HttpGrid gives them (the object id);
    replies are real Flower reply messages, queued by :meth:`reply` or made on pull by ``responder``."""

    def __init__(self, nodes=(), responder: Responder | None = None):
        self.nodes = list(nodes)
        self.responder = responder
        self.pushed: dict[str, Message] = {}
        self.answered: set[str] = set()
        self.queue: list[Message] = []
        self.refuse = False
        self.pull_calls: list[list[str]] = []

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, msgs):
        ids = []
        for m in msgs:
            if self.refuse:
                ids.append("")
                continue
            m.metadata.__dict__["_message_id"] = m.object_id
            assert m.object_id not in self.pushed, "two pushed messages got the same id"
            self.pushed[m.object_id] = m
            ids.append(m.object_id)
        return ids

    def pull_messages(self, ids):
        ids = list(ids)
        self.pull_calls.append(ids)
        if self.responder is not None:
            for mid in ids:
                if mid in self.pushed and mid not in self.answered:
                    out = self.responder(self.pushed[mid])
                    if out is not None:
                        self.reply(mid, out)
        ready = [r for r in self.queue if r.metadata.reply_to_message_id in ids]
        self.queue = [r for r in self.queue if r.metadata.reply_to_message_id not in ids]
        return ready

    def reply(self, mid: str, content: RecordDict | Error) -> Message:
        self.answered.add(mid)
        r = Message(content, reply_to=self.pushed[mid])
        self.queue.append(r)
        return r

    def of_type(self, kind: str) -> list[tuple[str, Message]]:
        return [(i, m) for i, m in self.pushed.items() if m.metadata.message_type == kind]

    def to_node(self, kind: str, node: int) -> list[tuple[str, Message]]:
        return [(i, m) for i, m in self.of_type(kind) if m.metadata.dst_node_id == node]


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.sleeps.append(dt)
        self.t += max(dt, 1e-3)


def make(nodes=(11, 12), responder=None, **kw):
    grid, clock = FakeGrid(nodes, responder), FakeClock()
    kw = {"ttl": 30.0, "poll_interval": 0.05, "idle_timeout": 5.0, "profile_ttl": 10.0, **kw}
    t = GridTransport(grid, NAMES, clock=clock, sleep=clock.sleep, **kw)
    return grid, clock, t


def profile_reply(device_class, n) -> RecordDict:
    return RecordDict({M.PROFILE: ConfigRecord({"device-class": device_class, "num-examples": n, "arch": "x86_64"})})


def join(grid, t, profiles: dict[int, RecordDict | Error]):
    """Refresh membership, answer the profile queries, pull the answers."""
    t.refresh()
    for mid, m in grid.of_type(M.PROFILE_QUERY):
        if mid not in grid.answered and m.metadata.dst_node_id in profiles:
            grid.reply(mid, profiles[m.metadata.dst_node_id])
    t._pull()


def params():
    return [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([0.5, -0.5], dtype=np.float32)]


def train_reply(arrays, metrics) -> RecordDict:
    """A train reply; a list of arrays is named like the model (NAMES), as a fedhive or quickstart client does."""
    if not isinstance(arrays, ArrayRecord):
        arrays = ArrayRecord({n: Array(a) for n, a in zip(NAMES, arrays)})
    content = RecordDict({M.ARRAYS: arrays})
    if metrics is not None:
        content[M.METRICS] = MetricRecord(metrics)
    return content


# --------------------------------------------------------------------------- clock
def test_now_starts_at_zero_and_follows_the_clock():
    _, clock, t = make()
    assert t.now() == 0.0
    clock.t += 2.5
    assert t.now() == pytest.approx(2.5)


def test_restore_continues_the_clock_from_the_checkpoint_time():
    _, clock, t = make()
    clock.t += 3.0
    assert t.restore(now=100.0, in_flight=[]) == []
    assert t.now() == pytest.approx(100.0)
    clock.t += 1.5
    assert t.now() == pytest.approx(101.5)


def test_restore_fails_every_task_that_was_in_flight():
    _, _, t = make()
    in_flight = [Dispatch(4, Task(11, 2, {}), 50.0, params()), Dispatch(9, Task(12, 2, {}), 51.0, params())]
    assert not t.reattaches_work  # a real fleet's work from before a restart is gone
    assert t.restore(now=60.0, in_flight=in_flight) == [4, 9]
    assert t.now() == pytest.approx(60.0)


@pytest.mark.parametrize("kw, words", [
    ({"ttl": 0.0}, "ttl (seconds) must be a finite number > 0, got 0.0"),
    ({"ttl": -1.0}, "ttl (seconds) must be a finite number > 0, got -1.0"),
    ({"ttl": "600"}, "ttl (seconds) must be a finite number > 0, got '600'"),
    ({"poll_interval": 0.0}, "poll_interval (seconds) must be a finite number > 0, got 0.0"),
    ({"poll_interval": float("nan")}, "poll_interval (seconds) must be a finite number > 0, got nan"),
])
def test_bad_timing_arguments_are_refused(kw, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        make(**kw)


def test_timing_arguments_are_kept_as_floats():
    _, _, t = make(ttl=30, poll_interval=np.float64(0.05))
    assert (t.ttl, t.poll_interval) == (30.0, 0.05) and type(t.ttl) is float and type(t.poll_interval) is float


# --------------------------------------------------------------------------- membership and profiles
def test_a_new_node_is_asked_for_its_profile_and_joins_with_it():
    grid, _, t = make(nodes=(11,))
    assert t.refresh() is False and t.clients() == []  # nobody joins before answering
    (mid, q), = grid.of_type(M.PROFILE_QUERY)
    assert q.metadata.dst_node_id == 11 and q.metadata.ttl == 10.0 and len(q.content) == 0
    before = t.membership_version
    grid.reply(mid, profile_reply("rpi4", 123))
    t._pull()
    (c,) = t.clients()
    assert (c.node_id, c.device_class, c.num_examples) == (11, "rpi4", 123)
    assert t.membership_version != before
    assert t.profiles[11]["arch"] == "x86_64"
    t.refresh()  # asked once only
    assert len(grid.of_type(M.PROFILE_QUERY)) == 1


def test_an_error_reply_to_the_profile_query_joins_as_unknown():
    grid, _, t = make(nodes=(11, 12))
    join(grid, t, {11: Error(2, "no handler for query.profile"), 12: profile_reply("gpu", 50)})
    got = {c.node_id: (c.device_class, c.num_examples) for c in t.clients()}
    assert got == {11: ("unknown", 0), 12: ("gpu", 50)}


def test_a_profile_reply_without_a_profile_record_joins_as_unknown():
    grid, _, t = make(nodes=(11,))
    join(grid, t, {11: RecordDict({"other": ConfigRecord({"x": 1})})})
    assert [(c.device_class, c.num_examples) for c in t.clients()] == [("unknown", 0)]


def test_a_negative_example_count_in_a_profile_counts_as_zero():
    grid, _, t = make(nodes=(11,))
    join(grid, t, {11: profile_reply("cpu", -5)})
    assert [(c.device_class, c.num_examples) for c in t.clients()] == [("cpu", 0)]


def test_a_node_that_never_answers_its_profile_query_joins_as_unknown_later():
    grid, clock, t = make(nodes=(11,), profile_ttl=10.0)
    t.refresh()
    t._pull()
    assert t.clients() == []
    clock.t += 16.0
    t._pull()
    assert [(c.node_id, c.device_class) for c in t.clients()] == [(11, "unknown")]


def test_a_node_whose_profile_query_is_refused_joins_as_unknown_at_once():
    grid, _, t = make(nodes=(11,))
    grid.refuse = True
    t.refresh()
    assert [(c.node_id, c.device_class) for c in t.clients()] == [(11, "unknown")]


def test_a_node_arriving_later_whose_profile_query_is_refused_also_joins():
    grid, _, t = make(nodes=(11,))
    join(grid, t, {11: profile_reply("cpu", 10)})
    grid.nodes = [11, 12]
    grid.refuse = True
    t.refresh()
    assert sorted(c.node_id for c in t.clients()) == [11, 12]


def test_a_node_that_disappears_is_removed_and_membership_changes():
    grid, clock, t = make(nodes=(11, 12), membership_interval=1.0)
    join(grid, t, {11: profile_reply("cpu", 10), 12: profile_reply("rpi4", 20)})
    before = t.membership_version
    grid.nodes = [11]
    clock.t += 2.0
    assert t.wait(t.now() + 1.0) == []  # the membership change ends the wait early
    assert [c.node_id for c in t.clients()] == [11]
    assert t.membership_version != before
    assert t.now() < 3.0 + 1.0


def test_a_node_that_leaves_before_answering_does_not_join():
    grid, _, t = make(nodes=(11, 12))
    t.refresh()
    grid.nodes = [11]
    t.refresh()
    for mid, m in grid.of_type(M.PROFILE_QUERY):
        grid.reply(mid, profile_reply("cpu", 5))
    t._pull()
    assert [c.node_id for c in t.clients()] == [11]


def test_a_node_that_misses_heartbeats_and_comes_back_rejoins():
    # Flower marks a node OFFLINE when it misses heartbeats and ONLINE again, with the same id, when they resume.
    grid, _, t = make(nodes=(11, 12))
    join(grid, t, {11: profile_reply("cpu", 10), 12: profile_reply("rpi4", 20)})
    grid.nodes = [11]
    assert t.refresh() is True and [c.node_id for c in t.clients()] == [11]
    grid.nodes = [11, 12]
    before = t.membership_version
    join(grid, t, {12: profile_reply("rpi4", 21)})
    assert len(grid.to_node(M.PROFILE_QUERY, 12)) == 2  # asked again
    assert {c.node_id: c.num_examples for c in t.clients()} == {11: 10, 12: 21}
    assert t.membership_version != before


def test_a_stale_profile_query_of_a_node_that_came_back_is_forgotten():
    grid, clock, t = make(nodes=(11,), profile_ttl=10.0)
    t.refresh()
    (old, _), = grid.to_node(M.PROFILE_QUERY, 11)
    grid.nodes = []
    t.refresh()
    grid.nodes = [11]
    t.refresh()
    (new, _), = [(i, m) for i, m in grid.to_node(M.PROFILE_QUERY, 11) if i != old]
    grid.reply(new, profile_reply("gpu", 5))
    t._pull()
    assert [(c.device_class, c.num_examples) for c in t.clients()] == [("gpu", 5)]
    clock.t += 60.0  # the first query's deadline passes: it must not turn the node into "unknown"
    grid.reply(old, Error(3, "expired"))
    t._pull()
    assert [(c.device_class, c.num_examples) for c in t.clients()] == [("gpu", 5)]


def test_wait_for_clients_profiles_and_returns_when_enough_joined():
    answer = {11: profile_reply("cpu", 1), 12: profile_reply("gpu", 2)}
    grid, clock, t = make(nodes=(11, 12), responder=lambda m: answer.get(m.metadata.dst_node_id))
    assert t.wait_for_clients(2, timeout=30.0) == 2
    assert clock.t < 1000.0 + 1.0


def test_wait_for_clients_gives_up_at_the_timeout():
    grid, clock, t = make(nodes=(11,))
    assert t.wait_for_clients(1, timeout=3.0) == 0
    assert 1003.0 <= clock.t < 1004.0


# --------------------------------------------------------------------------- dispatch and replies
def test_dispatch_sends_a_train_message_with_arrays_config_and_ttl():
    grid, _, t = make(nodes=(11,), extra_config={M.STORE_ADDRESS: "10.0.0.1:9300", "lr": 0.5})
    join(grid, t, {11: profile_reply("cpu", 10)})
    p = params()
    t.dispatch(Dispatch(42, Task(11, 7, {"local_steps": 3, "lr": 0.1, "mu": None}), 0.0, p))
    (mid, msg), = grid.of_type("train")
    assert msg.metadata.dst_node_id == 11 and msg.metadata.ttl == 30.0 and msg.metadata.group_id == "7"
    assert list(msg.content[M.ARRAYS].keys()) == NAMES
    got = [msg.content[M.ARRAYS][k].numpy() for k in NAMES]
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(got, p))
    cfg = dict(msg.content[M.CONFIG])
    assert cfg == {"local_steps": 3, "lr": 0.1, M.TASK_ID: 42, M.VERSION: 7, M.STORE_ADDRESS: "10.0.0.1:9300"}
    assert t.in_flight == 1 and t.bytes_moved == sum(a.nbytes for a in p)


def test_a_refused_push_is_a_failure_event():
    grid, _, t = make(nodes=(11,))
    join(grid, t, {11: profile_reply("cpu", 10)})
    grid.refuse = True
    t.dispatch(Dispatch(3, Task(11, 0, {}), 0.0, params()))
    events = t.wait(None)
    assert [(type(e), e.task_id, e.node_id, e.reason) for e in events] == [(Failure, 3, 11, "push_refused")]
    assert t.in_flight == 0


def test_a_good_reply_becomes_a_result_with_the_update():
    grid, clock, t = make(nodes=(11, 12))
    join(grid, t, {11: profile_reply("cpu", 10), 12: profile_reply("cpu", 10)})
    p = params()
    t.dispatch(Dispatch(5, Task(12, 4, {"local_steps": 2}), 0.0, p))
    (mid, _), = grid.of_type("train")
    out = [p[0] * 2, p[1] + 1]
    # The client's record holds the arrays in another order; the update has them in param_names order.
    record = ArrayRecord({NAMES[1]: Array(out[1]), NAMES[0]: Array(out[0])})
    clock.t += 4.0
    grid.reply(mid, train_reply(record, {"num-examples": 33, "train_loss": 0.25, "seconds": 1.5}))
    (ev,) = t.wait(None)
    assert isinstance(ev, Result) and ev.task_id == 5
    assert ev.time == pytest.approx(4.0)
    u = ev.update
    assert (u.node_id, u.base_version, u.num_examples) == (12, None, 33)  # a stock reply claims no version
    assert isinstance(u.num_examples, int)
    assert [a.shape for a in u.params] == [(2, 3), (2,)]
    assert all(np.array_equal(a, b) for a, b in zip(u.params, out))
    assert u.metrics["loss"] == 0.25 and u.metrics["train_loss"] == 0.25 and u.metrics["seconds"] == 1.5
    assert t.replies == 1 and t.in_flight == 0
    assert t.bytes_moved == 2 * sum(a.nbytes for a in p)


def test_a_fedhive_reply_claims_the_version_it_trained_from():
    grid, _, t = make(nodes=(11,))
    join(grid, t, {11: profile_reply("cpu", 10)})
    t.dispatch(Dispatch(5, Task(11, 4, {"local_steps": 2}), 0.0, params()))
    (mid, _), = grid.of_type("train")
    grid.reply(mid, train_reply(params(), {"num-examples": 3, M.VERSION: 4.0}))
    (ev,) = t.wait(None)
    assert ev.update.base_version == 4 and isinstance(ev.update.base_version, int)
    assert M.VERSION not in ev.update.metrics


def test_a_reply_with_its_own_loss_keeps_it_and_float_counts_become_int():
    grid, _, t = make(nodes=(11,))
    join(grid, t, {11: profile_reply("cpu", 10)})
    t.dispatch(Dispatch(0, Task(11, 0, {}), 0.0, params()))
    (mid, _), = grid.of_type("train")
    grid.reply(mid, train_reply(params(), {"num-examples": 12.0, "loss": 0.5, "train_loss": 9.0}))
    (ev,) = t.wait(None)
    assert ev.update.num_examples == 12 and isinstance(ev.update.num_examples, int)
    assert ev.update.metrics["loss"] == 0.5


@pytest.mark.parametrize("code, reason", [(2, "client_error"), (3, "timeout"), (5, "node_lost"),
                                          (8, "client_crashed"), (99, "error_99")])
def test_error_replies_become_failures(code, reason):
    grid, clock, t = make(nodes=(11,))
    join(grid, t, {11: profile_reply("cpu", 10)})
    t.dispatch(Dispatch(8, Task(11, 0, {}), 0.0, params()))
    (mid, _), = grid.of_type("train")
    clock.t += 1.0
    grid.reply(mid, Error(code, "something happened"))
    (ev,) = t.wait(None)
    assert isinstance(ev, Failure) and (ev.task_id, ev.node_id, ev.reason) == (8, 11, reason)
    assert ev.time == pytest.approx(1.0) and t.in_flight == 0


def test_all_four_error_codes_in_one_pull():
    grid, _, t = make(nodes=(1, 2, 3, 4))
    join(grid, t, {n: profile_reply("cpu", 10) for n in (1, 2, 3, 4)})
    for n in (1, 2, 3, 4):
        t.dispatch(Dispatch(100 + n, Task(n, 0, {}), 0.0, params()))
    codes = {1: 2, 2: 3, 3: 5, 4: 8}
    for mid, m in grid.of_type("train"):
        grid.reply(mid, Error(codes[m.metadata.dst_node_id], "x"))
    events = t.wait(None)
    assert {e.task_id: e.reason for e in events} == {101: "client_error", 102: "timeout", 103: "node_lost",
                                                    104: "client_crashed"}


@pytest.mark.parametrize("content, why", [
    (RecordDict({M.METRICS: MetricRecord({"num-examples": 5})}), "no 'arrays'"),
    (train_reply(params(), None), "no 'num-examples'"),
    (train_reply(params(), {"train_loss": 0.1}), "no 'num-examples'"),
    (RecordDict({M.ARRAYS: ConfigRecord({"x": 1}), M.METRICS: MetricRecord({"num-examples": 5})}), "ArrayRecord"),
])
def test_malformed_replies_become_malformed_events(content, why):
    grid, _, t = make(nodes=(11,))
    join(grid, t, {11: profile_reply("cpu", 10)})
    t.dispatch(Dispatch(6, Task(11, 3, {}), 0.0, params()))
    (mid, _), = grid.of_type("train")
    grid.reply(mid, content)
    (ev,) = t.wait(None)
    assert isinstance(ev, Malformed) and ev.task_id == 6 and ev.node_id == 11
    assert why in ev.detail


def test_replies_to_unknown_messages_are_ignored_and_wait_times_out_at_the_deadline():
    grid, clock, t = make(nodes=(11,))
    join(grid, t, {11: profile_reply("cpu", 10)})
    t.dispatch(Dispatch(0, Task(11, 0, {}), 0.0, params()))
    start = t.now()
    n0 = len(clock.sleeps)
    assert t.wait(start + 0.5) == []
    assert start + 0.5 <= t.now() < start + 0.6
    pauses = clock.sleeps[n0:]
    assert len(pauses) >= 4 and pauses[:3] == pytest.approx([0.05, 0.075, 0.1125])  # polled, backing off


def test_pulls_back_off_while_nothing_arrives_and_return_to_the_poll_interval_at_a_reply():
    grid, clock, t = make(nodes=(11,))
    join(grid, t, {11: profile_reply("cpu", 10)})
    t.dispatch(Dispatch(0, Task(11, 0, {}), 0.0, params()))
    n0 = len(clock.sleeps)
    assert t.wait(t.now() + 5.0) == []
    pauses = clock.sleeps[n0:]
    assert max(pauses) == pytest.approx(0.5) and pauses.count(max(pauses)) >= 5  # capped at poll_backoff_max
    assert all(b >= a - 1e-12 for a, b in zip(pauses[:-2], pauses[1:-1]))  # (the last one is cut at the deadline)
    (mid, _), = grid.of_type("train")
    grid.reply(mid, train_reply(params(), {"num-examples": 10}))
    (ev,) = t.wait(None)
    assert isinstance(ev, Result)
    t.dispatch(Dispatch(1, Task(11, 1, {}), t.now(), params()))
    n1 = len(clock.sleeps)
    assert t.wait(t.now() + 0.2) == []
    assert clock.sleeps[n1] == pytest.approx(0.05)  # back to the poll interval
    with pytest.raises(ValueError, match="poll_backoff_max"):
        make(nodes=(11,), poll_backoff_max=-1.0)


def test_wait_with_nothing_in_flight_gives_up_after_idle_timeout():
    grid, clock, t = make(nodes=(11,), idle_timeout=5.0)
    join(grid, t, {11: profile_reply("cpu", 10)})
    start = clock.t
    assert t.wait(None) == []
    assert 5.0 <= clock.t - start < 5.2


def test_the_array_record_is_built_once_per_model_version():
    grid, _, t = make(nodes=(11, 12))
    join(grid, t, {11: profile_reply("cpu", 10), 12: profile_reply("cpu", 10)})
    p = params()
    t.dispatch(Dispatch(0, Task(11, 0, {}), 0.0, p))
    t.dispatch(Dispatch(1, Task(12, 0, {}), 0.0, list(p)))  # another list of the same version: still one record
    (_, a), (_, b) = grid.of_type("train")
    assert a.content[M.ARRAYS] is b.content[M.ARRAYS]
    q = [x + 1 for x in p]
    t.dispatch(Dispatch(2, Task(11, 1, {}), 0.0, q))
    (_, c), = [(i, m) for i, m in grid.of_type("train") if m.metadata.group_id == "1"]
    assert np.array_equal(c.content[M.ARRAYS][NAMES[0]].numpy(), q[0])


# --------------------------------------------------------------------------- with the orchestrator
class Spy(Observer):
    def __init__(self, strategy):
        self.strategy = strategy
        self.rejects: list[tuple[str, int, int, list[np.ndarray]]] = []
        self.failures: list[tuple[int, str]] = []

    def on_reject(self, reason, node_id, now):
        self.rejects.append((reason, node_id, self.strategy.version, [a.copy() for a in self.strategy.params]))

    def on_failure(self, node_id, reason, now):
        self.failures.append((node_id, reason))


def test_orchestrator_rejects_a_malformed_reply_and_the_model_is_unchanged_by_it():
    replies = {"n": 0}

    def responder(msg: Message):
        if msg.metadata.message_type == M.PROFILE_QUERY:
            return profile_reply("cpu", 20)
        replies["n"] += 1
        arrays = [msg.content[M.ARRAYS][k].numpy() for k in NAMES]
        if replies["n"] == 1:  # the first train reply is malformed: no num-examples
            return train_reply([a + 100 for a in arrays], {"train_loss": 0.3})
        return train_reply([a + 1 for a in arrays], {"num-examples": 20, "train_loss": 0.2})

    grid, clock, t = make(nodes=(11,), responder=responder)
    assert t.wait_for_clients(1, timeout=10.0) == 1
    strategy = build("fedasync", {"local_steps": 1})
    spy = Spy(strategy)
    orch = Orchestrator(strategy, t, stop=StopCondition(max_updates=1), observer=spy)
    initial = [np.zeros((2, 3), np.float32), np.zeros(2, np.float32)]
    res = orch.run(initial)

    assert res.stop_reason == "max_updates"
    assert res.counters["rejected_malformed"] == 1 and res.counters["rejected"] == 1
    assert res.counters["failed_rejected"] == 1 and res.counters["update_applied"] == 1
    assert replies["n"] == 2 and len(grid.of_type("train")) == 2  # the node got a new task after the rejection
    (reason, node, version, model_then), = spy.rejects
    assert (reason, node, version) == ("malformed", 11, 0)
    assert all(np.array_equal(a, b) for a, b in zip(model_then, initial))  # the bad update changed nothing
    assert spy.failures == [(11, "rejected")]
    # Only the good update (+1 everywhere) moved the model: every entry is in (0, 1], none near +100.
    assert strategy.version == 1
    assert all(np.all(a > 0) and np.all(a <= 1.0) for a in res.params)
    assert all(np.allclose(a, a.flat[0]) for a in res.params)
    (first, second) = grid.of_type("train")
    assert first[1].content[M.CONFIG][M.TASK_ID] == 0 and second[1].content[M.CONFIG][M.TASK_ID] == 1
    assert second[1].content[M.CONFIG][M.VERSION] == 0


# --------------------------------------------------------------------------- the end of a run
def test_settle_waits_until_every_outstanding_message_is_old_enough_and_drops_late_replies():
    grid, clock, t = make(nodes=(11, 12))
    join(grid, t, {11: profile_reply("cpu", 10), 12: profile_reply("cpu", 10)})
    t.dispatch(Dispatch(1, Task(11, 0, {}), t.now(), params()))
    clock.t += 4.0
    t.dispatch(Dispatch(2, Task(12, 0, {}), t.now(), params()))  # sent 1 s before the run ends
    clock.t += 1.0
    (mid1, _), = grid.to_node("train", 11)
    grid.reply(mid1, train_reply(params(), {"num-examples": 10}))  # a reply after the run's end
    start = clock.t
    late = t.settle(grace=6.0, limit=20.0)
    assert late == 1 and t.in_flight == 1  # node 12's task is still running; its reply will be dropped
    assert 5.0 - 1e-6 <= clock.t - start <= 5.5  # until the youngest message was 6 s old, not longer
    assert t.wait(0.0) == []  # late replies reach nobody


def test_settle_returns_at_once_with_nothing_outstanding_and_stops_at_its_limit():
    grid, clock, t = make(nodes=(11,))
    join(grid, t, {11: profile_reply("cpu", 10)})
    start = clock.t
    assert t.settle() == 0 and clock.t == start
    t.dispatch(Dispatch(1, Task(11, 0, {}), 0.0, params()))
    assert t.settle(grace=60.0, limit=2.0) == 0 and 2.0 <= clock.t - start <= 2.5


def test_a_checkpoint_over_flower_stores_each_model_once_and_no_work_in_flight(tmp_path):
    """32 clients in flight at two versions, FedBuff with a part-filled buffer and server momentum: the checkpoint holds
    the global model, the buffer and the momentum (3 models) and the run's bookkeeping, nothing per task (over Flower
    the work in flight cannot be re-attached after a restart, so its models are not kept)."""
    from fedhive.engine import checkpoint as ckpt

    nodes = tuple(range(100, 132))
    shapes = [(96, 256), (256,)]  # ~97 KiB of float32
    answered = {"n": 0}

    def responder(msg: Message):
        if msg.metadata.message_type == M.PROFILE_QUERY:
            return profile_reply("cpu", 20)
        if answered["n"] >= 6:  # the rest keep training: 32 tasks in flight at the end
            return None
        answered["n"] += 1
        arrays = [msg.content[M.ARRAYS][k].numpy() for k in ("w", "b")]
        return train_reply(ArrayRecord({"w": Array(arrays[0] + 0.01), "b": Array(arrays[1] - 0.01)}),
                           {"num-examples": 20, M.VERSION: msg.content[M.CONFIG][M.VERSION]})

    grid, clock = FakeGrid(nodes, responder), FakeClock()
    t = GridTransport(grid, ["w", "b"], clock=clock, sleep=clock.sleep, ttl=30.0, poll_interval=0.05,
                      idle_timeout=5.0, profile_ttl=10.0)
    assert t.wait_for_clients(len(nodes), timeout=10.0) == len(nodes)
    strategy = build("fedbuff", {"buffer_size": 4, "server_momentum": 0.9})
    orch = Orchestrator(strategy, t, stop=StopCondition(max_time=3.0), checkpoint_dir=tmp_path)
    initial = [np.zeros(s, np.float32) for s in shapes]
    res = orch.run(initial)
    assert res.final["client_updates"] == 6 and strategy.version == 1 and strategy.buffer_fill == 2
    (path,) = sorted(tmp_path.glob("ckpt-*.npz"))
    state = ckpt.load(path)
    assert len(state["in_flight"]) == len(nodes) and state["dispatched_params"] == {}
    model_bytes = sum(a.nbytes for a in initial)
    assert path.stat().st_size <= 3 * model_bytes + 64 * 1024, (path.stat().st_size, model_bytes)
