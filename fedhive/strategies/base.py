"""The strategy contract: what travels between the engine and a strategy, and the abstract `Strategy`.

A strategy is a deterministic state machine driven by events (see ``shared/DESIGN.md``). It owns the global
model and its version. Time always comes in as ``now``; a strategy never reads a clock, sleeps, starts a thread,
does I/O or imports Flower. The engine (the orchestrator) owns the work in flight and guarantees, for every client:

- ``on_idle`` is only called while the client has no task in flight;
- every task a strategy hands out ends in exactly one ``on_update`` or ``on_failure``, each given the engine's
  :class:`Dispatch` record of that task (the task, when it was sent, the model it was sent with); a reply the
  engine rejects (malformed, wrong version, bad arrays) ends as ``on_failure``. Strategies therefore keep no busy
  maps, dispatch times or model histories of their own;
- every handler that may change the model (``on_update``, ``on_failure``, ``on_timer``) is called
  through one engine path that reports the change (metrics, model store, evaluation and checkpoint schedule);
- events come one at a time, in time order.

Re-asking parked clients: a client told "nothing yet" (``on_idle`` returned ``None``) is asked again after every
event the strategy handles (update, failure, timer, membership change). A strategy that parks many clients can
narrow this by setting ``tracks_wakeups = True``: the engine then asks parked clients again only when
:attr:`Strategy.wake_epoch` changed, which every model change does by itself (``_commit``) and which the strategy
bumps with ``_poke()`` whenever parked clients may get work without a model change (a slot freed, a round
restarted). At each change of the epoch the engine asks :meth:`Strategy.take_woken` which parked clients to ask:
all of them (``None``, what ``_commit`` and a plain ``_poke()`` mean) or only those named in ``_poke(nodes)`` since
the last change (a FedCompass group's members when it aggregates), with ``_commit(..., wakes_parked=False)`` for
a model change that gives no parked client work. Forgetting a ``_poke`` in such a strategy stalls clients, so only
opt in with a test.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import params as P
from .validation import all_finite

Params = list[np.ndarray]

DEFAULT_MAX_WEIGHT_RATIO = 10.0


def weight_cap(claims: Iterable[int], ratio: float) -> float | None:
    """The largest weight any client may have: ``ratio`` × the median of the positive ``claims`` (the examples
    each live client says it holds), or ``None`` (no clamp) when ``ratio`` is 0 or no claim is positive.

    The median is the lower one of an even count, so a fleet of two cannot be carried by its larger claim alone.
    """
    positive = sorted(n for n in claims if n > 0)
    if ratio <= 0 or not positive:
        return None
    return ratio * positive[(len(positive) - 1) // 2]


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """A client as the strategy sees it.

    Parameters
    ----------
    node_id : int
        The client's identifier (Flower's node id in deployment).
    num_examples : int
        Training examples the client holds (``n_i``); 0 when unknown.
    device_class : str
        The class its agent detected or was given (``gpu``, ``cpu``, ``rpi4``, ...).
    """

    node_id: int
    num_examples: int
    device_class: str = "unknown"


def frozen_config(config: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """``config`` as a read-only mapping (a strategy builds a config it reuses for every task once, with this)."""
    if config is None:
        return _EMPTY
    return config if type(config) is MappingProxyType else MappingProxyType(dict(config))


_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True, init=False)
class Task:
    """Work for one client: train on the global model at ``version`` with ``config``.

    ``config`` always carries ``local_steps``; strategies add what their clients need (FedASMU's fetch step and
    mixing parameters, FedAsync's proximal term). It is a read-only mapping, shared by every task a strategy
    makes with the same settings; a transport or client that needs another config makes a new one
    (``{**task.config, "local_steps": 5}``).
    """

    node_id: int
    version: int
    config: Mapping[str, Any]

    def __init__(self, node_id: int, version: int, config: Mapping[str, Any] | None = None) -> None:
        _task_node_id(self, node_id)  # (see _slots below)
        _task_version(self, version)
        _task_config(self, frozen_config(config))

    def __reduce__(self) -> tuple:  # a read-only mapping does not pickle; its contents do
        return (Task, (self.node_id, self.version, dict(self.config)))


@dataclass(frozen=True, slots=True, init=False)
class Update:
    """A client's result: its trained model, its examples and metrics.

    ``base_version`` is the version the client *says* it trained from, or ``None`` where the reply does not say
    (a stock Flower ClientApp). Strategies never read it: the version a task was sent at is the engine's
    ``Dispatch.task.version``. The engine rejects a reply whose claim disagrees with its record.
    """

    node_id: int
    base_version: int | None
    params: Params
    num_examples: int
    metrics: dict

    def __init__(self, node_id: int, base_version: int | None, params: Params, num_examples: int,
                 metrics: dict | None = None) -> None:
        _update_node_id(self, node_id)
        _update_base_version(self, base_version)
        _update_params(self, params)
        _update_num_examples(self, num_examples)
        _update_metrics(self, {} if metrics is None else metrics)


def _slots(cls: type) -> tuple:
    """The setters of a frozen slotted dataclass's fields, in order.

    A generated frozen ``__init__`` sets each field through ``object.__setattr__`` by name; a Task and an Update are
    built for every client update, and setting the slots directly halves their cost (~0.4 µs of an engine event).
    The instances stay frozen: assigning to a field still raises ``FrozenInstanceError``.
    """
    return tuple(cls.__dict__[f].__set__ for f in cls.__slots__)


@dataclass(slots=True)
class Dispatch:
    """The engine's record of a task in flight, handed to the strategy with the task's outcome.

    ``task_id`` is unique within a run; ``sent_at`` is the engine's time at dispatch; ``params`` is the global model
    the task was sent with (read-only arrays; one list shared by every task sent at that version), so a strategy
    computes ``Δ = w(sent) − w_i`` from it and keeps no model history of its own. Read-only by convention (a plain
    slotted class, not a frozen one: the engine builds one per task, and frozen setters cost ~1 µs an event).
    """

    task_id: int
    task: Task
    sent_at: float
    params: Params


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a strategy did with an update.

    ``status`` is ``"applied"`` (the global model changed), ``"buffered"`` (kept for a later aggregation) or
    ``"rejected"`` (discarded; ``reason`` says why, e.g. ``"stale"`` or ``"late"``).
    """

    status: str
    reason: str = ""


_task_node_id, _task_version, _task_config = _slots(Task)
_update_node_id, _update_base_version, _update_params, _update_num_examples, _update_metrics = _slots(Update)

APPLIED = Outcome("applied")
BUFFERED = Outcome("buffered")


def _frozen(params: Iterable[np.ndarray]) -> Params:
    """Own contiguous copies of ``params``, marked read-only so nobody changes a published version."""
    out = []
    for p in params:
        a = np.array(p, copy=True, order="C")
        a.flags.writeable = False
        out.append(a)
    return out


PRESET_DEFAULT = "default"


def presets(**table: Mapping[str, Any]) -> Any:
    """Class decorator: the strategy takes ``preset=`` (``"default"`` or a name of ``table``), one switch between its
    defaults and a named setting such as the paper's (``preset="paper"``).

    A preset fills the keywords the caller did not give; keywords given explicitly win over it. The strategy's
    :meth:`Strategy.config` reports the preset beside the values it resolved to, and ``PRESETS`` lists each preset's
    values (``"default"``: ``{}``, the signature's defaults).
    """

    def wrap(cls: type) -> type:
        import functools
        import inspect

        init = cls.__dict__["__init__"]
        config = cls.__dict__["config"]
        named = {PRESET_DEFAULT: MappingProxyType({}), **{k: MappingProxyType(dict(v)) for k, v in table.items()}}
        sig = inspect.signature(init)
        accepted = {p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        for name, values in named.items():
            unknown = sorted(set(values) - accepted)
            if unknown:  # pragma: no cover - a programming error in the table
                raise TypeError(f"{cls.__name__} preset {name!r} names unknown parameter(s) {', '.join(unknown)}")

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, preset: Any = _UNSET, **kwargs: Any) -> None:
            if preset is not _UNSET:
                P.choice("preset", preset, tuple(named))
                kwargs = {**named[preset], **kwargs}
                self._preset = preset
            elif not hasattr(self, "_preset"):  # a subclass's wrapper may have set it already
                self._preset = PRESET_DEFAULT
            init(self, *args, **kwargs)

        @functools.wraps(config)
        def config_with_preset(self: Any) -> dict[str, Any]:
            return {**config(self), "preset": self._preset}

        params = list(sig.parameters.values())
        at = len(params) - (1 if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD else 0)
        params.insert(at, inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default=PRESET_DEFAULT))
        __init__.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        cls.__init__ = __init__
        cls.config = config_with_preset
        cls.PRESETS = MappingProxyType(named)
        return cls

    return wrap


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


class Strategy(ABC):
    """Abstract base of every fedhive strategy.

    Subclasses implement the event handlers; the base keeps the global model, its version, the known clients,
    and the shared checks (a diverged aggregation never becomes the global model).

    Parameters
    ----------
    non_trainable : sequence of int
        Indices of tensors that are not trained (BatchNorm statistics, counters). They are never
        staleness-weighted: a single-update step takes the client's value, a group step their plain mean.
        Non-float tensors are always treated as non-trainable.
    max_weight_ratio : float
        No client weighs more than this many times the median claim of the live fleet: a client's weight is
        ``min(n_i, k · median{n_j > 0 : j live})`` (``k = max_weight_ratio``, default 10; ``0`` turns the clamp
        off). ``num_examples`` is the client's own, unverified claim: without the clamp one client claiming
        ``2**62`` examples makes the global model its own. Each clamped weight is counted in :attr:`clamped` and
        reported by :meth:`gauges` as ``weights_clamped``. Strategies that do not weight by examples ignore it.
    max_update_norm : float or None
        Where a strategy offers it (FedAsync, FedBuff): an update whose change ``Δ = w_i − w(sent)`` has
        ``‖Δ‖₂ > max_update_norm · max(‖w(sent)‖₂, 1)`` (norms over the trainable tensors, in float64) is rejected
        (``Outcome("rejected", "update_norm")``, counted in :attr:`norm_rejected`), not clipped: the model is
        untouched. ``None`` (the default): no bound. Flower's ``DifferentialPrivacyServerSideFixedClipping``
        instead *clips* ``Δ`` to an absolute ``clipping_norm``; this is a relative bound meant to refuse absurd
        updates, not a privacy mechanism. (Values large enough to overflow an aggregation are refused by the
        engine's checks whatever this is, see ``fedhive.strategies.validation``.)

    Live fleet
    ----------
    Weights ``p_i = n_i / Σ_{j live} n_j`` are taken over the clients now in the fleet: the engine is to call
    :meth:`on_leave` for a client that left, which then weighs nothing, and a client seen again
    (``on_idle``) counts again. Without it, a fleet whose devices restart under new node ids would keep the old
    ids' examples in ``Σ n_j`` and every step would shrink.

    Capabilities
    ------------
    needs_model_store : bool
        The strategy's clients fetch the global model mid-task (FedASMU): deployment serves the model store.
    needs_validation : bool
        The strategy wants ``set_validation(fn)`` with the task's server-side validation loss and gradient.
    tracks_wakeups : bool
        See the module docstring: parked clients are re-asked only when :attr:`wake_epoch` changes.
    """

    name: str = "strategy"
    needs_model_store: bool = False
    tracks_wakeups: bool = False

    def __init__(self, *, non_trainable: Sequence[int] = (), max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO,
                 max_update_norm: float | None = None) -> None:
        self._params: Params = []
        self._version = 0
        self._clients: dict[int, ClientInfo] = {}
        self._gone: set[int] = set()  # known clients that left the fleet: they weigh nothing until they come back
        self.max_weight_ratio = P.number("max_weight_ratio", max_weight_ratio, low=0.0)
        self._total_examples = 0  # Σ of the live clients' clamped claims (see _weight)
        self._weight_cap: float | None = None
        self._weights_stale = False  # the live fleet changed since _reweigh
        self.clamped = 0
        self.max_update_norm = P.optional(P.number, "max_update_norm", max_update_norm, low=0.0, low_open=True)
        self.norm_rejected = 0
        self._wake = 0
        self._woken: set[int] | None = None  # parked clients woken since the engine last asked; None: any of them
        self._non_trainable_arg = tuple(int(i) for i in non_trainable)
        self._fixed: tuple[int, ...] = ()
        self._trainable: tuple[int, ...] = ()
        self.diverged = 0

    # ----------------------------------------------------------------- read-only state
    @property
    def params(self) -> Params:
        """The current global model (read-only arrays; a new list each call)."""
        return list(self._params)

    @property
    def version(self) -> int:
        """The global model's version: starts at 0, +1 each time the model changes."""
        return self._version

    @property
    def wake_epoch(self) -> int | None:
        """With ``tracks_wakeups``: goes up whenever a parked client may now get work; else ``None`` (ask always)."""
        return self._wake if self.tracks_wakeups else None

    def take_woken(self) -> set[int] | None:
        """With ``tracks_wakeups``, asked once per :attr:`wake_epoch` change: the parked clients that may now get
        work (``None``: any of them). The record starts again empty."""
        woken, self._woken = self._woken, set()
        return woken

    @property
    def clients(self) -> dict[int, ClientInfo]:
        return dict(self._clients)

    @property
    def needs_validation(self) -> bool:
        return False

    def set_validation(self, fn: Any) -> None:
        """Give the strategy ``params -> (loss, grads)`` on the server's validation batch (see ``needs_validation``)."""
        raise TypeError(f"{self.name} takes no validation function")

    def gauges(self) -> dict[str, float]:
        """Strategy-specific state for the metrics (``fedhive_strategy_state{name=...}``), e.g. a buffer's fill.

        Every strategy reports ``weights_clamped`` (:attr:`clamped`, see ``max_weight_ratio``).
        """
        return {"weights_clamped": float(self.clamped)}

    # ----------------------------------------------------------------- the contract
    def start(self, params: Sequence[np.ndarray], clients: Iterable[ClientInfo], now: float) -> None:
        """Take the initial global model (version 0) and the clients known so far."""
        self._params = _frozen(params)
        self._version = 0
        n = len(self._params)
        for i in self._non_trainable_arg:
            if not 0 <= i < n:
                raise ValueError(f"non_trainable index {i} is out of range for a model of {n} tensors")
        fixed = set(self._non_trainable_arg)
        fixed.update(i for i, p in enumerate(self._params) if not p.dtype.kind == "f")
        self._fixed = tuple(sorted(fixed))
        self._trainable = tuple(i for i in range(n) if i not in fixed)
        for c in clients:
            self._adopt(c)
        self._on_start(now)
        self._wake += 1

    @abstractmethod
    def _on_start(self, now: float) -> None:
        """Strategy-specific start (clients and model are already registered)."""

    @abstractmethod
    def on_idle(self, client: ClientInfo, now: float) -> Task | None:
        """What a free client should do now, or ``None`` (nothing yet)."""

    @abstractmethod
    def on_update(self, update: Update, sent: Dispatch, now: float) -> Outcome:
        """A client's validated result for the task ``sent``. May change the global model."""

    def on_timer(self, now: float) -> None:
        """A wake-up asked for through ``next_timer``."""

    def next_timer(self) -> float | None:
        """When the strategy wants ``on_timer`` next, or ``None``."""
        return None

    def on_leave(self, node_id: int, now: float) -> None:
        """Client ``node_id`` left the fleet: it no longer counts in the weights' total (``Σ_{j live} n_j``).

        The engine is to call this once it has ended the client's task in flight (``on_failure``); a strategy that
        is never told keeps every client ever seen in the total. An unknown or already gone client is ignored; a
        client that comes back is counted again when it is next idle. It does not change the model.
        """
        if node_id in self._clients and node_id not in self._gone:
            self._gone.add(node_id)
            self._weights_stale = True

    def on_failure(self, sent: Dispatch, now: float) -> None:
        """The task ``sent`` will never come back (node gone, deadline passed, reply rejected). May change the model.

        By default nothing: a strategy that keeps no per-task state has nothing to release.
        """

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: JSON-able values, numpy arrays, and lists/dicts of them."""
        return {
            "params": self._params,
            "version": self._version,
            "clients": [[c.node_id, c.num_examples, c.device_class] for c in self._clients.values()],
            "wake": self._wake,
            "fixed": list(self._fixed),
            "diverged": self.diverged,
            "gone": sorted(self._gone),
            "clamped": self.clamped,
            "norm_rejected": self.norm_rejected,
            "strategy": self._state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (possibly after a round trip through a checkpoint file)."""
        self._params = _frozen(state["params"])
        self._version = int(state["version"])
        self._clients = {}
        self._gone = set()
        for node_id, num_examples, device_class in state["clients"]:
            self._adopt(ClientInfo(int(node_id), int(num_examples), str(device_class)))
        self._gone = {int(n) for n in state.get("gone", ())} & set(self._clients)  # older checkpoints: none gone
        self.clamped = int(state.get("clamped", 0))
        self.norm_rejected = int(state.get("norm_rejected", 0))
        self._weights_stale = True
        self._wake = int(state["wake"])
        self._fixed = tuple(int(i) for i in state["fixed"])
        self._trainable = tuple(i for i in range(len(self._params)) if i not in self._fixed)
        self.diverged = int(state["diverged"])
        self._load_state(state["strategy"])

    @abstractmethod
    def _state(self) -> dict[str, Any]:
        """The subclass's own state, for ``state_dict``."""

    @abstractmethod
    def _load_state(self, state: dict[str, Any]) -> None:
        """Restore the subclass's own state."""

    def config(self) -> dict[str, Any]:
        """The strategy's hyper-parameters."""
        return {}

    # ----------------------------------------------------------------- shared helpers
    def _adopt(self, client: ClientInfo) -> bool:
        """Register a client seen for the first time (a device may join mid-run). True if it was new."""
        if client.node_id in self._clients:
            if client.node_id in self._gone:  # back in the fleet
                self._gone.discard(client.node_id)
                self._weights_stale = True
            return False
        self._clients[client.node_id] = client
        self._weights_stale = True
        return True

    def _reweigh(self) -> None:
        """Recompute the clamp and ``Σ_{j live} min(n_j, cap)`` after the live fleet changed (lazily: at the first
        weight asked for after a change, so a fleet joining client by client costs one sort, not one a client)."""
        self._weights_stale = False
        claims = [max(int(c.num_examples), 0) for n, c in self._clients.items() if n not in self._gone]
        self._weight_cap = weight_cap(claims, self.max_weight_ratio)
        cap = self._weight_cap
        self._total_examples = sum(claims) if cap is None else sum(n if n <= cap else cap for n in claims)

    def _clamp(self, n: int) -> int | float:
        """A claim of ``n`` examples, clamped to ``max_weight_ratio`` × the live fleet's median claim (counted)."""
        if self._weights_stale:
            self._reweigh()
        cap = self._weight_cap
        if cap is not None and n > cap:
            self.clamped += 1
            return cap
        return n

    def _weight(self, node_id: int) -> float:
        """``p_i = min(n_i, cap) / Σ_{j live} min(n_j, cap)`` (see ``max_weight_ratio``); equal weights ``1/N_live``
        while no sizes are known. A client that left weighs 0."""
        if node_id in self._gone:
            return 0.0
        if self._weights_stale:
            self._reweigh()
        if self._total_examples <= 0:
            return 1.0 / max(len(self._clients) - len(self._gone), 1)
        return self._clamp(max(int(self._clients[node_id].num_examples), 0)) / self._total_examples

    def _norm_rejection(self, update: Update, sent: Dispatch) -> Outcome | None:
        """``Outcome("rejected", "update_norm")`` (counted) when ``max_update_norm`` is set and the update's change
        exceeds it (see the class docstring), else ``None``."""
        if self.max_update_norm is None:
            return None
        delta2 = base2 = 0.0
        for i in self._trainable:
            ref = sent.params[i].ravel()
            d = np.subtract(update.params[i].ravel(), ref, dtype=np.float64)
            delta2 += float(np.dot(d, d))
            r = ref.astype(np.float64)
            base2 += float(np.dot(r, r))
        if not delta2 <= (self.max_update_norm * max(math.sqrt(base2), 1.0)) ** 2:  # also NaN / inf
            self.norm_rejected += 1
            return Outcome("rejected", "update_norm")
        return None

    def _commit(self, new_params: Params, *, wakes_parked: bool = True) -> bool:
        """Make ``new_params`` the global model (version + 1), unless the aggregation diverged.

        A non-finite result is discarded and counted in ``diverged``: the model and version stay as they were.
        ``wakes_parked=False``: the new model gives no parked client work (see ``take_woken``).
        """
        new_params = [np.asarray(p) for p in new_params]
        for p in new_params:
            if not all_finite(p):
                self.diverged += 1
                return False
        for p in new_params:
            p.setflags(write=False)
        self._params = new_params
        self._version += 1
        self._wake += 1
        if wakes_parked:
            self._woken = None
        return True

    def _poke(self, nodes: Iterable[int] | None = None) -> None:
        """Parked clients (``nodes``, else any) may now get work although the model did not change."""
        self._wake += 1
        if nodes is None:
            self._woken = None
        elif self._woken is not None:
            self._woken.update(nodes)
