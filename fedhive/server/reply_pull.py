"""Pulling replies from Flower's SuperLink without ever waiting on a node's upload.

Flower 1.42's ``Grid.pull_messages`` (``flwr.superlink.grid.http_grid``) asks the SuperLink for the replies
(``PullMessages``, which hands each reply out once), then pulls every object of each reply in the same call, retrying
an object the node has not uploaded yet for up to 500 tries or 7,200 s (``PULL_MAX_TIME``). A node that stops in the
middle of its upload (a frozen or unplugged device, a link that dies) so holds the whole ServerApp in that call: no
other reply is read and no task is sent, for up to two hours. fedhive's own CI saw it (a SIGSTOPped SuperNode).

:class:`ReplyPuller` does what ``pull_messages`` does with Flower's own pieces (its Runtime API client,
``PullObject`` and ``ConfirmMessageReceived`` requests, ``iterate_object_tree`` and ``inflate_object_from_contents``),
but one object at a time and never waiting: an object that is not there yet is asked for again at the next poll, and
the reply is handed over when it is complete. One ``pull`` spends at most ``budget`` seconds pulling objects. A reply
that gains no object for ``upload_timeout`` seconds (counted from when the SuperLink handed it out, then from its
last object) fails its task as ``upload_stalled``; one whose objects add up to more than the caller's byte limit for
that message, or that has more than ``max_objects`` objects, fails as ``reply_too_large`` (nothing more of it is
pulled); an object the SuperLink does not have fails it as ``upload_lost``. A stalled upload's objects stay in the SuperLink until the node finishes it (they are
then confirmed, so the SuperLink frees them) or ``abandon_after`` seconds passed.

Only a grid with Flower's HTTP internals (``_runtime_client``, ``node``, ``_run``) can be pulled this way; for any other
(Flower's in-memory grid, a test's fake) :func:`make_reply_puller` returns ``None`` and the caller uses the grid's own
``pull_messages``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from flwr.app import Message

log = logging.getLogger("fedhive.grid")

#: Why a reply that the SuperLink handed out is not delivered (the task fails with this reason).
UPLOAD_STALLED = "upload_stalled"
UPLOAD_LOST = "upload_lost"
REPLY_TOO_LARGE = "reply_too_large"
REPLY_UNDECODABLE = "reply_undecodable"

#: The most objects one reply may have (a model's arrays come in a handful each; thousands of tiny objects would
#: only cost the server one request each).
MAX_REPLY_OBJECTS = 65536
#: Seconds one :meth:`ReplyPuller.pull` spends pulling objects at most; what is left waits for the next poll.
PULL_BUDGET = 0.5


@dataclass
class _Upload:
    """A reply the SuperLink handed out whose objects are being pulled."""

    message_id: str  # the reply's own id (its object id in the SuperLink's store)
    reply_to: str  # the id of the message it answers
    object_ids: list[str]
    first_seen: float
    contents: dict[str, bytes] = field(default_factory=dict)
    size: int = 0
    probed: int = 0  # once abandoned: how many of its objects are known to be there
    last_progress: float = 0.0  # when an object of it last came in (or it was handed out)


class ReplyPuller:
    """Non-blocking ``pull_messages`` over Flower 1.42's HTTP grid (see the module docstring).

    :meth:`pull` returns ``(replies, failures)``: the complete replies (Flower ``Message`` objects, as
    ``grid.pull_messages`` returns them) and ``(reply_to_message_id, reason, detail)`` for each reply given up on.
    ``limit(reply_to_message_id)`` is the most bytes a reply to that message may take in the SuperLink's object store
    (``None``: no limit).
    """

    def __init__(self, grid: Any, *, upload_timeout: float, clock: Callable[[], float],
                 limit: Callable[[str], int | None] = lambda _mid: None, abandon_after: float | None = None,
                 max_objects: int = MAX_REPLY_OBJECTS, budget: float = PULL_BUDGET) -> None:
        self.grid = grid
        self.max_objects = int(max_objects)
        self.budget = float(budget)
        self.upload_timeout = float(upload_timeout)
        self.abandon_after = float(abandon_after) if abandon_after is not None else max(600.0, 10 * upload_timeout)
        self._clock = clock
        self._limit = limit
        self._uploads: dict[str, _Upload] = {}  # reply_to -> the reply being pulled
        self._abandoned: dict[str, _Upload] = {}  # reply message id -> stalled upload waiting to be confirmed
        self._next_tidy = 0.0
        self.object_pulls = 0
        self.stalled = 0

    @property
    def uploading(self) -> int:
        """Replies handed out by the SuperLink whose upload is not complete yet."""
        return len(self._uploads)

    def pull(self, message_ids: Iterable[str]) -> tuple[list[Message], list[tuple[str, str, str]]]:
        from flwr.proto.runtime_pb2 import PullAppMessagesRequest  # pylint: disable=no-name-in-module
        from flwr.supercore.inflatable.inflatable_object import iterate_object_tree

        import httpx

        wanted = [m for m in message_ids if m not in self._uploads]
        now = self._clock()
        replies: list[Message] = []
        failures: list[tuple[str, str, str]] = []
        if wanted:
            client = self.grid._runtime_client  # noqa: SLF001 - Flower's HTTP grid; see make_reply_puller
            try:
                res = client.PullMessages(PullAppMessagesRequest(message_ids=wanted))
            except httpx.HTTPStatusError as exc:  # as Flower's pull_messages: too large a response is no reply
                if exc.response.status_code != httpx.codes.REQUEST_ENTITY_TOO_LARGE:
                    raise
                log.error("PullMessages: the SuperLink's response is too large (HTTP 413); pulling again later")
                res = None
            asked = set(wanted) if res is not None else set()
            for proto, tree in zip(res.messages_list, res.message_object_trees, strict=True) if res else ():
                reply_to = proto.metadata.reply_to_message_id
                if reply_to not in asked:
                    continue  # not a reply to one of ours (Flower adds the SuperLink's own instructions)
                ids: list[str] = []
                for t in iterate_object_tree(tree):
                    ids.append(t.object_id)
                    if len(ids) > self.max_objects:
                        break
                if len(ids) > self.max_objects:
                    self._confirm(proto.metadata.message_id)
                    failures.append((reply_to, REPLY_TOO_LARGE, f"the reply has more than {self.max_objects} "
                                     "objects; none of them was read"))
                    continue
                self._uploads[reply_to] = _Upload(proto.metadata.message_id, reply_to, ids, now, last_progress=now)
        deadline = time.monotonic() + self.budget
        for reply_to, up in list(self._uploads.items()):
            outcome = self._advance(up, deadline, now)
            if outcome is None:
                if now - up.last_progress >= self.upload_timeout:
                    del self._uploads[reply_to]
                    self.stalled += 1
                    have = len(up.contents)
                    up.contents.clear()  # the objects pulled so far are not needed any more
                    self._abandoned[up.message_id] = up
                    failures.append((reply_to, UPLOAD_STALLED,
                                     f"{have} of {len(up.object_ids)} objects of the reply uploaded, none more for "
                                     f"{self.upload_timeout:g} s (upload-timeout)"))
                continue
            del self._uploads[reply_to]
            if isinstance(outcome, tuple):
                failures.append((reply_to,) + outcome)
            else:
                replies.append(outcome)
        self._tidy_abandoned(now)
        return replies, failures

    def _pull_fn(self) -> Callable[[str], bytes]:
        from flwr.supercore.inflatable.inflatable_protobuf_utils import make_pull_object_fn_protobuf

        run_id = self.grid._run.run_id  # noqa: SLF001
        return make_pull_object_fn_protobuf(pull_object_protobuf=self.grid._runtime_client.PullObject,  # noqa: SLF001
                                            node=self.grid.node, run_id=run_id)

    def _advance(self, up: _Upload, deadline: float, now: float) -> Message | tuple[str, str] | None:
        """Pull what is there of ``up`` until ``deadline`` (``time.monotonic``); the reply when complete,
        ``(reason, detail)`` to give up, else ``None``."""
        from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, ObjectUnavailableError

        fetch = self._pull_fn()
        limit = self._limit(up.reply_to)
        for oid in up.object_ids:
            if oid in up.contents:
                continue
            if time.monotonic() >= deadline:
                return None  # this poll's time is spent: the rest at the next one
            try:
                self.object_pulls += 1
                content = fetch(oid)
            except ObjectUnavailableError:
                return None  # not uploaded yet: ask again at the next poll
            except ObjectPullError as exc:
                self._confirm(up.message_id)
                return UPLOAD_LOST, f"the SuperLink has no object {oid[:16]}... of the reply ({exc})"
            up.size += len(content)
            if limit is not None and up.size > limit:
                self._confirm(up.message_id)
                return REPLY_TOO_LARGE, (f"the reply takes more than {limit} bytes (at most twice the model sent, "
                                         f"plus 1 MiB); nothing more of it was read")
            up.contents[oid] = content
            up.last_progress = now
        return self._inflate(up)

    def _inflate(self, up: _Upload) -> Message | tuple[str, str]:
        from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

        self._confirm(up.message_id)
        try:
            message = inflate_object_from_contents(up.message_id, up.contents)
            message.metadata.__dict__["_message_id"] = up.message_id  # as Flower's pull_messages does
        except Exception as exc:  # noqa: BLE001 - a hostile reply: only its task is lost
            return REPLY_UNDECODABLE, f"{type(exc).__name__}: {str(exc)[:200]}"
        if getattr(message.metadata, "reply_to_message_id", None) != up.reply_to:
            return REPLY_UNDECODABLE, "the reply's objects answer another message than the SuperLink said"
        return message

    def _confirm(self, message_id: str) -> None:
        """Tell the SuperLink the reply's objects can go (Flower's ConfirmMessageReceived)."""
        from flwr.proto.message_pb2 import ConfirmMessageReceivedRequest  # pylint: disable=no-name-in-module

        try:
            self.grid._runtime_client.ConfirmMessageReceived(  # noqa: SLF001
                ConfirmMessageReceivedRequest(node=self.grid.node, run_id=self.grid._run.run_id,  # noqa: SLF001
                                              message_object_id=message_id))
        except Exception as exc:  # noqa: BLE001 - only the SuperLink's memory is at stake
            log.info("could not confirm reply %s to the SuperLink: %s", message_id[:16], exc)

    def _tidy_abandoned(self, now: float) -> None:
        """Confirm a stalled upload once the node has finished it (its objects are probed in order, at most once a
        second, and not kept), or ``abandon_after`` seconds after it was handed out: never while the node may still
        be pushing to it."""
        if not self._abandoned or now < self._next_tidy:
            return
        self._next_tidy = now + 1.0
        from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, ObjectUnavailableError

        fetch = self._pull_fn()
        for mid, up in list(self._abandoned.items()):
            done = now - up.first_seen >= self.abandon_after
            while not done and up.probed < len(up.object_ids):
                try:
                    self.object_pulls += 1
                    fetch(up.object_ids[up.probed])
                except ObjectUnavailableError:
                    break
                except ObjectPullError:
                    done = True
                    break
                up.probed += 1
            if done or up.probed >= len(up.object_ids):
                del self._abandoned[mid]
                self._confirm(mid)


def make_reply_puller(grid: Any, **options: Any) -> ReplyPuller | None:
    """A :class:`ReplyPuller` for ``grid`` if it is Flower's HTTP grid (what ``flwr-serverapp`` hands a ServerApp in
    deployment) with its run set, else ``None`` (use ``grid.pull_messages``)."""
    try:
        from flwr.superlink.grid.http_grid import HttpGrid
    except ImportError:  # another Flower than the 1.42 this is written against: Flower's own pull
        return None
    if not isinstance(grid, HttpGrid) or getattr(grid, "_run", None) is None or not hasattr(grid, "node"):
        return None
    return ReplyPuller(grid, **options)
