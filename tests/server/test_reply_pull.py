"""ReplyPuller: replies pulled from Flower's HTTP grid one object at a time, never waiting on a node's upload.

A real ``HttpGrid`` whose Runtime API client is a fake SuperLink holding real Flower messages and their deflated
objects, as the SuperLink's object store does; a fake clock. Then GridTransport over that grid: a stalled upload
fails only its task while the other node's replies keep coming (what a frozen node did to Flower's own pull).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message import remove_content_from_message
from flwr.common.serde import message_to_proto
from flwr.proto.message_pb2 import ConfirmMessageReceivedResponse, PullObjectResponse  # noqa: E0611
from flwr.proto.runtime_pb2 import PullAppMessagesResponse  # noqa: E0611
from flwr.superlink.grid.http_grid import HttpGrid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.run import Run

from fedhive import messages as M
from fedhive.engine import Failure, Malformed, Result
from fedhive.server.grid_transport import GridTransport
from fedhive.server.reply_pull import (REPLY_TOO_LARGE, REPLY_UNDECODABLE, UPLOAD_LOST, UPLOAD_STALLED, ReplyPuller,
                                       make_reply_puller)
from fedhive.strategies.base import Dispatch, Task

NAMES = ["layer.weight", "layer.bias"]


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += max(dt, 1e-3)


class FakeRuntime:
    """The four Runtime API calls ReplyPuller makes, over a store of real deflated objects. A reply is handed out
    once (the SuperLink deletes it at PullMessages); its objects stay until ConfirmMessageReceived. Objects in
    ``withheld`` are "not uploaded yet" (found, not available)."""

    def __init__(self) -> None:
        self.replies: dict[str, Message] = {}  # reply_to -> reply
        self.objects: dict[str, bytes] = {}
        self.withheld: set[str] = set()
        self.trees: dict[str, list[str]] = {}  # reply id -> its object ids, post-order
        self.confirmed: list[str] = []
        self.object_calls = 0

    def add(self, reply: Message) -> str:
        reply.metadata.__dict__["_message_id"] = reply.object_id
        self.replies[reply.metadata.reply_to_message_id] = reply
        for oid, obj in get_all_nested_objects(reply).items():
            self.objects[oid] = obj.deflate()
        return reply.object_id

    def object_ids(self, reply: Message) -> list[str]:
        from flwr.supercore.inflatable.inflatable_object import iterate_object_tree

        return [t.object_id for t in iterate_object_tree(get_object_tree(reply))]

    def PullMessages(self, request):  # noqa: N802 - Flower's RPC names
        protos, trees = [], []
        for mid in request.message_ids:
            reply = self.replies.pop(mid, None)
            if reply is not None:
                protos.append(message_to_proto(remove_content_from_message(reply)))
                trees.append(get_object_tree(reply))
        return PullAppMessagesResponse(messages_list=protos, message_object_trees=trees)

    def PullObject(self, request):  # noqa: N802
        self.object_calls += 1
        oid = request.object_id
        if oid not in self.objects:
            return PullObjectResponse(object_found=False, object_available=False)
        if oid in self.withheld:
            return PullObjectResponse(object_found=True, object_available=False)
        return PullObjectResponse(object_found=True, object_available=True, object_content=self.objects[oid])

    def ConfirmMessageReceived(self, request):  # noqa: N802
        self.confirmed.append(request.message_object_id)
        return ConfirmMessageReceivedResponse()


class TestGrid(HttpGrid):
    """Flower's HttpGrid with its Runtime API client replaced; nodes and pushes kept in memory, as the fake grid of
    test_grid_transport does (only the pull goes through the Runtime API, as ReplyPuller's)."""

    __test__ = False

    def __init__(self, runtime: FakeRuntime, nodes=(11, 12)) -> None:
        super().__init__(token="test-token")
        self._client = runtime  # what _runtime_client returns once "connected"
        self.set_run(Run.create_empty(run_id=7))
        self.nodes = list(nodes)
        self.pushed: dict[str, Message] = {}

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            self.pushed[m.object_id] = m
            ids.append(m.object_id)
        return ids

    def pull_messages(self, message_ids):  # pragma: no cover - the point is that it is never called
        raise AssertionError("Flower's own pull_messages must not be used on the HTTP grid")


def instruction(node: int = 11, tag: str = "a") -> Message:
    m = Message(RecordDict({"config": ConfigRecord({"tag": tag})}), dst_node_id=node, message_type="train", ttl=60.0)
    m.metadata.__dict__["_message_id"] = m.object_id
    return m


def train_reply(ins: Message, n: int = 5, size: int = 4) -> Message:
    """A reply whose arrays differ from any other reply's (objects are content-addressed: equal arrays would share)."""
    fill = float(int(ins.metadata.message_id[:6], 16) % 1000) / 1000.0
    params = [np.full((size, 3), 0.5 + fill, np.float32), np.full(size, fill, np.float32)]
    content = RecordDict({M.ARRAYS: M.to_array_record(params, NAMES),
                          M.METRICS: MetricRecord({"num-examples": n, "loss": 0.25})})
    return Message(content, reply_to=ins)


def puller(runtime: FakeRuntime, clock: FakeClock, **kw) -> ReplyPuller:
    p = make_reply_puller(TestGrid(runtime), upload_timeout=kw.pop("upload_timeout", 10.0), clock=clock, **kw)
    assert isinstance(p, ReplyPuller)
    return p


# --------------------------------------------------------------------------- ReplyPuller alone


def test_a_complete_reply_is_delivered_whole_and_confirmed():
    rt, clock = FakeRuntime(), FakeClock()
    ins = instruction()
    rid = rt.add(train_reply(ins))
    replies, failures = puller(rt, clock).pull([ins.metadata.message_id])
    assert failures == [] and len(replies) == 1
    reply = replies[0]
    assert reply.metadata.reply_to_message_id == ins.metadata.message_id
    assert reply.metadata.message_id == rid
    assert int(reply.content[M.METRICS]["num-examples"]) == 5
    arrays = M.from_array_record(reply.content[M.ARRAYS], NAMES, [((4, 3), np.float32), ((4,), np.float32)])
    assert arrays[0].shape == (4, 3) and np.all(arrays[0] >= 0.5)
    assert rt.confirmed == [rid]


def test_an_unfinished_upload_never_blocks_and_is_delivered_when_it_completes():
    rt, clock = FakeRuntime(), FakeClock()
    ins = instruction()
    reply = train_reply(ins)
    rt.add(reply)
    oids = rt.object_ids(reply)
    rt.withheld = {oids[0]}  # the first array chunk is not uploaded yet
    p = puller(rt, clock)
    t0 = time.perf_counter()
    assert p.pull([ins.metadata.message_id]) == ([], [])
    assert time.perf_counter() - t0 < 1.0  # no waiting on the missing object (Flower's pull retries for 2 h)
    assert p.uploading == 1 and rt.confirmed == []
    clock.t += 5.0
    assert p.pull([ins.metadata.message_id]) == ([], [])  # still missing, still within upload_timeout
    rt.withheld.clear()
    calls = rt.object_calls
    replies, failures = p.pull([ins.metadata.message_id])
    assert failures == [] and len(replies) == 1 and p.uploading == 0
    # Objects already pulled are not pulled again.
    assert rt.object_calls - calls == len(oids)


def test_a_stalled_upload_fails_after_upload_timeout_and_is_confirmed_once_finished():
    rt, clock = FakeRuntime(), FakeClock()
    ins = instruction()
    reply = train_reply(ins)
    rid = rt.add(reply)
    oids = rt.object_ids(reply)
    rt.withheld = {oids[-1]}
    p = puller(rt, clock, upload_timeout=10.0)
    mid = ins.metadata.message_id
    assert p.pull([mid]) == ([], [])
    clock.t += 9.9
    assert p.pull([mid]) == ([], [])
    clock.t += 0.2
    replies, failures = p.pull([mid])
    assert replies == [] and len(failures) == 1
    assert failures[0][:2] == (mid, UPLOAD_STALLED)
    assert f"{len(oids) - 1} of {len(oids)} objects" in failures[0][2] and "upload-timeout" in failures[0][2]
    assert p.uploading == 0 and p.stalled == 1
    assert rt.confirmed == []  # the node may still be pushing: its objects are not deleted under it
    clock.t += 2.0
    p.pull([])
    assert rt.confirmed == []
    rt.withheld.clear()  # the node thawed and finished its upload
    clock.t += 2.0
    assert p.pull([]) == ([], [])  # never delivered: its task has failed
    assert rt.confirmed == [rid]


def test_an_upload_making_progress_is_not_stalled_and_a_poll_keeps_to_its_budget():
    rt, clock = FakeRuntime(), FakeClock()
    ins = instruction()
    reply = train_reply(ins)
    rt.add(reply)
    oids = rt.object_ids(reply)
    mid = ins.metadata.message_id
    p = puller(rt, clock, upload_timeout=10.0)
    rt.withheld = set(oids)
    p.pull([mid])
    for oid in oids[:-1]:  # one object every 8 s: slow, never 10 s without progress
        clock.t += 8.0
        rt.withheld.discard(oid)
        assert p.pull([mid]) == ([], [])
    clock.t += 8.0
    rt.withheld.clear()
    assert len(p.pull([mid])[0]) == 1
    # A budget of 0: nothing is pulled in this poll (the loop is back at once), all of it at the next with time.
    ins2 = instruction(tag="budget")
    rt.add(train_reply(ins2))
    p.budget = 0.0
    calls = rt.object_calls
    assert p.pull([ins2.metadata.message_id]) == ([], []) and rt.object_calls == calls
    p.budget = 5.0
    assert len(p.pull([ins2.metadata.message_id])[0]) == 1


def test_a_reply_of_too_many_objects_is_refused_unread():
    rt, clock = FakeRuntime(), FakeClock()
    ins = instruction()
    reply = train_reply(ins)
    rid = rt.add(reply)
    p = puller(rt, clock, max_objects=3)
    replies, failures = p.pull([ins.metadata.message_id])
    assert replies == [] and failures[0][1] == REPLY_TOO_LARGE and "more than 3 objects" in failures[0][2]
    assert rt.object_calls == 0 and rt.confirmed == [rid]


def test_an_abandoned_upload_is_confirmed_at_last():
    rt, clock = FakeRuntime(), FakeClock()
    ins = instruction()
    reply = train_reply(ins)
    rid = rt.add(reply)
    rt.withheld = set(rt.object_ids(reply))
    p = puller(rt, clock, upload_timeout=1.0, abandon_after=30.0)
    p.pull([ins.metadata.message_id])
    clock.t += 1.5
    assert p.pull([ins.metadata.message_id])[1][0][1] == UPLOAD_STALLED
    clock.t += 30.0
    p.pull([])
    assert rt.confirmed == [rid]


def test_a_reply_over_its_byte_limit_is_refused_without_reading_the_rest():
    rt, clock = FakeRuntime(), FakeClock()
    ins = instruction()
    reply = train_reply(ins, size=20_000)  # 320 KB of arrays
    rid = rt.add(reply)
    p = puller(rt, clock, limit=lambda mid: 50_000)
    replies, failures = p.pull([ins.metadata.message_id])
    assert replies == [] and failures[0][1] == REPLY_TOO_LARGE and "50000 bytes" in failures[0][2]
    assert rt.object_calls < len(rt.object_ids(reply))
    assert rt.confirmed == [rid]


def test_a_lost_object_fails_the_reply():
    rt, clock = FakeRuntime(), FakeClock()
    ins = instruction()
    reply = train_reply(ins)
    rid = rt.add(reply)
    del rt.objects[rt.object_ids(reply)[0]]
    replies, failures = puller(rt, clock).pull([ins.metadata.message_id])
    assert replies == [] and failures[0][1] == UPLOAD_LOST
    assert rt.confirmed == [rid]


@pytest.mark.parametrize("corrupt", ["garbage", "other_message"])
def test_hostile_objects_make_the_reply_undecodable_not_the_puller_fail(corrupt):
    rt, clock = FakeRuntime(), FakeClock()
    ins = instruction()
    reply = train_reply(ins)
    rt.add(reply)
    if corrupt == "garbage":
        rt.objects[rt.object_ids(reply)[0]] = b"\x00not an object"
    else:  # the tree the SuperLink handed out says "reply to ins", the objects a reply to another message
        other = train_reply(instruction(tag="b"))
        for oid, obj in get_all_nested_objects(other).items():
            rt.objects[oid] = obj.deflate()
        rt.objects[reply.object_id] = other.deflate()
    p = puller(rt, clock)
    replies, failures = p.pull([ins.metadata.message_id])
    assert replies == [] and len(failures) == 1 and failures[0][1] == REPLY_UNDECODABLE
    # The puller goes on serving other replies.
    ins2 = instruction(tag="c")
    rt.add(train_reply(ins2))
    assert len(p.pull([ins2.metadata.message_id])[0]) == 1


def test_replies_to_messages_not_asked_for_are_ignored():
    rt, clock = FakeRuntime(), FakeClock()
    a, b = instruction(tag="a"), instruction(tag="b")
    rt.add(train_reply(a))
    rt.add(train_reply(b))
    replies, _ = puller(rt, clock).pull([a.metadata.message_id])
    assert [r.metadata.reply_to_message_id for r in replies] == [a.metadata.message_id]


def test_only_flowers_http_grid_with_a_run_gets_a_puller():
    rt, clock = FakeRuntime(), FakeClock()
    assert make_reply_puller(object(), upload_timeout=1.0, clock=clock) is None
    bare = HttpGrid(token="t")  # no run set yet
    assert make_reply_puller(bare, upload_timeout=1.0, clock=clock) is None
    assert make_reply_puller(TestGrid(rt), upload_timeout=1.0, clock=clock) is not None


# --------------------------------------------------------------------------- GridTransport over the HTTP grid


def _transport(rt: FakeRuntime, clock: FakeClock, **kw) -> tuple[TestGrid, GridTransport]:
    grid = TestGrid(rt)
    t = GridTransport(grid, NAMES, clock=clock, sleep=clock.sleep, query_profiles=False, ttl=60.0,
                      idle_timeout=5.0, **kw)
    t.refresh()
    assert {c.node_id for c in t.clients()} == {11, 12}
    return grid, t


def _dispatch(t: GridTransport, task_id: int, node: int) -> None:
    params = [np.zeros((4, 3), np.float32), np.zeros(4, np.float32)]
    t.dispatch(Dispatch(task_id, Task(node, 0, {"local_steps": 1}), t.now(), params))


def _sent_to(grid: TestGrid, node: int) -> list[Message]:
    return [m for m in grid.pushed.values() if m.metadata.dst_node_id == node]


def test_a_stalled_node_fails_its_task_while_the_other_nodes_replies_keep_coming():
    rt, clock = FakeRuntime(), FakeClock()
    grid, t = _transport(rt, clock, upload_timeout=8.0)
    _dispatch(t, 1, 11)
    _dispatch(t, 2, 12)
    frozen = train_reply(_sent_to(grid, 11)[0])
    rt.add(frozen)
    rt.withheld = {rt.object_ids(frozen)[0]}  # node 11 froze in the middle of its upload
    rt.add(train_reply(_sent_to(grid, 12)[0]))
    events = t.wait(deadline=t.now() + 1.0)
    assert [(type(e), e.task_id) for e in events] == [(Result, 2)]
    _dispatch(t, 3, 12)  # node 12 gets more work and answers again while node 11's upload is stuck
    rt.add(train_reply(_sent_to(grid, 12)[1]))
    events = t.wait(deadline=t.now() + 1.0)
    assert [(type(e), e.task_id) for e in events] == [(Result, 3)]
    events = t.wait(deadline=t.now() + 10.0)
    assert [(type(e), e.task_id) for e in events] == [(Failure, 1)]
    assert events[0].reason == UPLOAD_STALLED and t.in_flight == 0


def test_a_too_large_reply_is_malformed_for_the_engine():
    rt, clock = FakeRuntime(), FakeClock()
    grid, t = _transport(rt, clock)
    _dispatch(t, 1, 11)
    # The model sent is 64 bytes: a reply of 2 * 64 + 1 MiB or more is refused before it is read.
    rt.add(train_reply(_sent_to(grid, 11)[0], size=120_000))
    events = t.wait(deadline=t.now() + 1.0)
    assert [(type(e), e.task_id) for e in events] == [(Malformed, 1)]
    assert REPLY_TOO_LARGE in events[0].detail
