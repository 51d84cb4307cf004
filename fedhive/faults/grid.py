"""A stand-in for Flower's ``Grid`` whose nodes answer with :mod:`fedhive.faults.hostile_client`'s replies.

The replies are real Flower ``Message`` objects built with Flower's record types, as a SuperNode would return them;
only the SuperLink in between is left out, so thousands of hostile replies go through ``GridTransport`` and the
engine in seconds. (Messages made outside Flower's runtime need ``TaskIdentity`` set, as the tests' fixture does.)
"""

from __future__ import annotations

from collections import Counter

from flwr.app import ConfigRecord, Message, RecordDict

from . import hostile_client as H


class HostileGrid:
    """Just what GridTransport calls (``get_node_ids``, ``push_messages``, ``pull_messages``), answered at once:
    the nodes in ``hostile`` with the hostile ClientApp's replies (every kind in turn), the others honestly."""

    def __init__(self, nodes=(1, 2, 3), hostile=(3,)):
        self.nodes, self.hostile = list(nodes), set(hostile)
        self.pushed: dict[str, Message] = {}
        self.sent: Counter = Counter()

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, msgs):
        ids = []
        for m in msgs:
            m.metadata.__dict__["_message_id"] = m.object_id
            self.pushed[m.object_id] = m
            ids.append(m.object_id)
        return ids

    def pull_messages(self, ids):
        out = []
        for mid in list(ids):
            m = self.pushed.pop(mid, None)
            if m is not None:
                out.append(self._answer(m))
        return out

    def _answer(self, m: Message) -> Message:
        node = m.metadata.dst_node_id
        if m.metadata.message_type == "query.profile":
            if node in self.hostile:
                self.sent["profile"] += 1
                return Message(RecordDict({"profile": ConfigRecord(H.PROFILES[node % len(H.PROFILES)])}), reply_to=m)
            return Message(RecordDict({"profile": ConfigRecord({"device-class": "cpu", "num-examples": 50})}),
                           reply_to=m)
        arrays = H._arrays(m)
        if node not in self.hostile:
            return H._reply(m, H._step(arrays), H._ok_metrics())
        names = sorted(H.REPLIES)
        kind = names[sum(self.sent[k] for k in names) % len(names)]  # every kind in turn
        self.sent[kind] += 1
        return H.REPLIES[kind](m, arrays)
