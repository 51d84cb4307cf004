"""The interface between the orchestrator and whatever carries tasks to clients.

Three transports implement it: Flower's Grid (deployment and ``fedhive up``), the virtual-time event queue
(``fedhive sim``), and the scripted in-memory one the tests use. A transport owns the clock: the orchestrator asks it
for ``now`` and never reads one itself, so the same loop runs in wall time and in virtual time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fedhive.strategies.base import ClientInfo, Task, Update


# The engine's own records (one Dispatch and one Result per client update) are plain slotted dataclasses, not frozen
# ones: a frozen dataclass sets each field through object.__setattr__, which made building them ~6 % of the virtual
# engine's time per event (benchmarks/sim_overhead.py). Treat them as read-only all the same.
@dataclass(slots=True)
class Dispatch:
    """A task in flight: its id, the task, when it was sent, and the global model it was sent (read-only arrays)."""

    task_id: int
    task: Task
    sent_at: float
    params: Sequence[np.ndarray] = ()


@dataclass(slots=True)
class Result:
    """A client's reply to task ``task_id``, received at ``time``."""

    task_id: int
    update: Update
    time: float
    info: dict = field(default_factory=dict)


@dataclass(slots=True)
class Failure:
    """Task ``task_id`` on ``node_id`` will not come back (``reason``: node_lost, timeout, client_error, ...)."""

    task_id: int
    node_id: int
    reason: str
    time: float


Event = Result | Failure


class Transport(ABC):
    """Carries tasks to clients and results back; owns the clock."""

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
    def dispatch(self, task_id: int, task: Task, params: Sequence[np.ndarray]) -> None:
        """Send ``task`` with the global model ``params`` (read-only arrays; copy before changing them)."""

    @abstractmethod
    def wait(self, deadline: float | None) -> list[Event]:
        """Block until at least one result or failure is ready, or until ``deadline`` (``None``: no deadline).

        Returns the ready events in time order, or ``[]`` when the deadline came first; afterwards ``now()`` is at
        least the time of the last event returned (or the deadline). Events at exactly the same time are returned
        together, so they are all handled before a timer due at that time. A transport with nothing in flight and
        no deadline returns ``[]`` once nothing else can happen, or when the membership changed.
        """

    def restore(self, now: float, in_flight: Sequence[tuple[Dispatch, Sequence[np.ndarray]]]) -> list[int]:
        """Continue a resumed run: set the clock to ``now`` and re-attach tasks that were in flight.

        Returns the ids of the tasks that cannot be re-attached (they are failed to the strategy). By default
        none can: a real fleet's work from before a restart is gone.
        """
        return [d.task_id for d, _ in in_flight]

    @property
    def bytes_moved(self) -> int:
        """Model bytes sent and received so far (0 where the transport does not count)."""
        return 0

    def close(self) -> None:
        """Release what the transport holds."""
