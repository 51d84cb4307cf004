"""fedhive's engine: the orchestrator (the one event loop), the ``Transport`` interface and its events, the
virtual-time transport, checkpoints and observers. Nothing here imports Flower: ``fedhive.server`` adds the Flower
transport and apps, ``fedhive.sim`` the simulated fleet, both on this engine."""

from .observers import Fanout, Observer
from .orchestrator import Orchestrator, RunResult, StopCondition
from .transport import Event, Failure, Malformed, Result, Transport
from .virtual import VirtualTransport

__all__ = ["Event", "Failure", "Fanout", "Malformed", "Observer", "Orchestrator", "Result", "RunResult",
           "StopCondition", "Transport", "VirtualTransport"]
