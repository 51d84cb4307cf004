"""The interface between the orchestrator and whatever carries tasks to clients, and the events it reports.

Three transports implement it: Flower's Grid (``fedhive.server.grid_transport``: deployment and ``fedhive up``),
the virtual-time event queue (``fedhive.engine.virtual``, and the simulated fleet on it), and the scripted one the
tests use. A transport owns the clock: the orchestrator asks it for ``now`` and never reads one itself, so the same
loop runs in wall time and in virtual time.

The engine owns the work in flight: it makes one :class:`~fedhive.strategies.base.Dispatch` per task and hands it to
:meth:`Transport.dispatch`; a transport keeps that record (not a copy of its fields) only for as long as it needs it
to deliver the task and route the reply, and names the task by ``task_id`` in every event.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

from fedhive.strategies.base import ClientInfo, Dispatch, Update


# Events are plain slotted dataclasses, not frozen ones: a frozen dataclass sets each field through
# object.__setattr__, which made building them ~6 % of the virtual engine's time per event. Read-only all the same.
@dataclass(slots=True)
class Result:
    """A client's decoded reply to task ``task_id``, received at ``time`` (still to be validated by the engine)."""

    task_id: int
    update: Update
    time: float


@dataclass(slots=True)
class Malformed:
    """A reply to task ``task_id`` from ``node_id`` that could not be decoded (``detail`` says why); never applied."""

    task_id: int
    node_id: int
    detail: str
    time: float


@dataclass(slots=True)
class Failure:
    """Task ``task_id`` on ``node_id`` will not come back (``reason``: node_lost, timeout, client_error, ...)."""

    task_id: int
    node_id: int
    reason: str
    time: float


Event = Result | Malformed | Failure


class Transport(ABC):
    """Carries tasks to clients and results back; owns the clock."""

    reattaches_work: bool = False
    """Whether :meth:`restore` can re-attach tasks that were in flight at a checkpoint (virtual time can; a real
    fleet's work from before a restart is gone). Only then does a checkpoint store the models those tasks hold."""

    @abstractmethod
    def now(self) -> float:
        """Seconds on this transport's clock (wall or virtual)."""

    @abstractmethod
    def clients(self) -> Sequence[ClientInfo]:
        """The clients connected now."""

    @property
    def membership_version(self) -> int:
        """Changes whenever ``clients()`` may have changed; the default (-1) makes the engine always look."""
        return -1

    @abstractmethod
    def dispatch(self, sent: Dispatch) -> None:
        """Send ``sent.task`` with the global model ``sent.params`` (read-only arrays; copy before changing them).

        Every task sent at one version carries the same ``params`` list, so a transport that encodes models may
        cache the encoding by ``sent.task.version``.
        """

    @abstractmethod
    def wait(self, deadline: float | None) -> list[Event]:
        """Block until at least one event is ready, or until ``deadline`` (``None``: no deadline).

        Returns the ready events in time order, or ``[]`` when the deadline came first; afterwards ``now()`` is at
        least the time of the last event returned (or the deadline). Events at exactly the same time are returned
        together, so they are all handled before a timer due at that time. A transport with nothing in flight and
        no deadline returns ``[]`` once nothing else can happen, or when the membership changed.
        """

    def restore(self, now: float, in_flight: Sequence[Dispatch]) -> list[int]:
        """Continue a resumed run: set the clock to ``now`` and re-attach tasks that were in flight.

        Returns the ids of the tasks that cannot be re-attached (they are failed to the strategy). By default
        none can (``reattaches_work`` is false).
        """
        return [d.task_id for d in in_flight]

    @property
    def bytes_moved(self) -> int:
        """Model bytes sent and received so far (0 where the transport does not count)."""
        return 0

    def close(self) -> None:
        """Release what the transport holds."""
