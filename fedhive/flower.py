"""fedhive's strategies where Flower's are: ``from fedhive.flower import FedBuff`` in an unchanged Flower app.

Each class is a :class:`flwr.serverapp.strategy.Strategy` and is used exactly like Flower's own::

    from fedhive.flower import FedBuff          # was: from flwr.serverapp.strategy import FedAvg

    strategy = FedBuff(buffer_size=10, min_available_nodes=3)
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=50, timeout=600,
                            train_config=ConfigRecord({"lr": 0.01}), evaluate_fn=central_eval)

``start`` returns Flower's :class:`~flwr.serverapp.strategy.Result`. For an asynchronous strategy a "round" is a
global model version: ``num_rounds`` is the number of versions to make, and every ``Result`` dict is keyed by version
(``train_metrics_clientapp[v]`` aggregates the replies that made version ``v``, with ``train_metrics_aggr_fn``;
``evaluate_metrics_serverapp[v]`` is ``evaluate_fn(v, arrays)``). For :class:`FedAvg` a version is a round.

Underneath is fedhive's event-driven engine (:class:`fedhive.engine.Orchestrator` over
:class:`fedhive.server.grid_transport.GridTransport`, built by :meth:`_FedhiveFlowerStrategy.prepare` as an
:class:`EngineRun`), the same one fedhive's own ServerApp runs through the same ``prepare``: every reply is
validated (a reply without the array record, without ``weighted_by_key``, with arrays of the wrong shape or dtype, or
non-finite, is rejected and counted in ``strategy.counters``; the model is untouched), metrics are coerced to finite
numbers, and the run can checkpoint, resume and serve Prometheus metrics.

What a stock ClientApp gets and sends
-------------------------------------
- Each train message holds ``content[arrayrecord_key]`` (the global model, named as ``initial_arrays``) and
  ``content[configrecord_key]``: the user's ``train_config``, plus ``server-round`` (the version the task trains from,
  plus one: for FedAvg the round, as Flower sets it), plus ``local_steps_key`` (default ``"local-steps"``) where the
  strategy chooses a client's local work: FedCompass chooses it per client and its value wins over
  ``train_config``'s. The other strategies send ``local_steps`` only if it was given to the constructor and
  ``train_config`` has no ``local_steps_key``. A stock ClientApp reads it as
  ``msg.content["config"].get("local-steps", default)``. Keys named ``fedhive.*`` are fedhive's
  own (task id, version); a ClientApp may ignore them.
- The reply must hold ``content[arrayrecord_key]`` (same names, shapes and dtypes) and a MetricRecord with
  ``weighted_by_key`` (an integer number of examples); other finite metrics are kept.
- Nodes are not asked for a profile (a stock ClientApp has no ``query.profile`` handler): a strategy that weights
  clients by their size before it has heard from them (FedFix, FedCompass, FedASMU) weights them equally; FedAvg,
  FedAsync and FedBuff weight each reply by its own count.

Federated evaluation (``fraction_evaluate > 0``, default 0 here, 1 in Flower): every ``evaluate_every`` versions and
for the last one, ``fraction_evaluate`` of the connected nodes (at least ``min_evaluate_nodes``, idle ones first) get
an ``evaluate`` message; ``Result.evaluate_metrics_clientapp[v]`` aggregates their replies with
``evaluate_metrics_aggr_fn``. With an asynchronous strategy a version comes with every update or so: set
``evaluate_every`` so that evaluation does not crowd out training.

FedASMU's device side (fetch a newer global model mid-task and fuse it) runs in a ClientApp that trains through
:func:`fedasmu_train`; a ClientApp that does not gets the server-side rule only.
"""

from __future__ import annotations

import io
import logging
import time
from logging import INFO
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy as FlowerStrategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords, log_strategy_start_info

from fedhive import messages as M
from fedhive.engine import Fanout, Observer, Orchestrator, StopCondition
from fedhive.strategies import build, parameters
from fedhive.strategies import params as P
from fedhive.strategies.base import Strategy as FedhiveStrategy

__all__ = ["FedAvg", "FedAsync", "FedBuff", "FedFix", "FedCompass", "FedASMU", "EngineRun", "fedasmu_train",
           "strategy_class"]

log = logging.getLogger("fedhive.flower")

MetricsAggrFn = Callable[[list[RecordDict], str], MetricRecord]
EvaluateFn = Callable[[int, ArrayRecord], "MetricRecord | None"]

#: Flower's own strategy keywords that fedhive's take, with their defaults.
FLOWER_KEYWORDS: dict[str, Any] = {
    "min_available_nodes": 2,
    "fraction_evaluate": 0.0,
    "min_evaluate_nodes": 2,
    "weighted_by_key": "num-examples",
    "arrayrecord_key": M.ARRAYS,
    "configrecord_key": M.CONFIG,
    "train_metrics_aggr_fn": None,
    "evaluate_metrics_aggr_fn": None,
}
#: How a run goes: stop, evaluation schedule, checkpoints, metrics, the message details (all optional).
RUN_KEYWORDS: dict[str, Any] = {
    "max_time": None,  # seconds; with num_rounds, whichever comes first ends the run
    "evaluate_every": 1,  # call evaluate_fn every this many versions (None: only by time, first and last)
    "evaluate_interval": None,  # ... and/or every this many seconds
    "checkpoint_dir": None,  # write resumable checkpoints here
    "checkpoint_every": None,  # versions between checkpoints (the final one is always written)
    "resume": False,  # continue from the newest usable checkpoint in checkpoint_dir
    "metrics_address": None,  # HOST:PORT to serve Prometheus metrics on
    "local_steps_key": "local-steps",
    "wait_for_nodes": None,  # seconds to wait for min_available_nodes (default: start's timeout)
    "poll_interval": 0.05,  # seconds between pulls of replies
}
#: How long ``start`` waits at the end of a run for the federated evaluations still out (at most its timeout).
EVALUATE_DRAIN_SECONDS = 60.0
#: FedAvg also takes these of Flower's FedAvg (fraction_train is fedhive FedAvg's ``fraction``).
FEDAVG_FLOWER_KEYWORDS: dict[str, Any] = {"fraction_train": 1.0, "min_train_nodes": 2}


def _positive_or_none(name: str, value: Any) -> float | None:
    return P.optional(P.number, name, value, low=0.0, low_open=True)


def _record_to_arrays(record: ArrayRecord) -> tuple[list[str], list[np.ndarray]]:
    if not isinstance(record, ArrayRecord):
        raise TypeError(f"initial_arrays must be a flwr.app.ArrayRecord, got {type(record).__name__}")
    if len(record) == 0:
        raise ValueError("initial_arrays is empty: give the model's ArrayRecord (e.g. ArrayRecord(model.state_dict()))")
    names = [str(k) for k in record.keys()]
    arrays = [np.array(a.numpy(), copy=True) for a in record.values()]
    for name, a in zip(names, arrays):
        if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
            raise ValueError(f"initial_arrays {name!r} is not finite (NaN or infinity): every reply would be "
                             "measured against it; initialise the model first")
    return names, arrays


def _evaluation_numbers(rec: Mapping[str, Any]) -> dict[str, float]:
    """``accuracy`` and ``loss`` of an evaluate_fn's record, for fedhive's history (other names Flower apps use)."""
    out = {}
    for name, aliases in (("accuracy", ("accuracy", "acc", "eval_acc", "test_acc")),
                          ("loss", ("loss", "eval_loss", "test_loss"))):
        for a in aliases:
            v = M.finite_number(rec.get(a)) if a in rec else None
            if v is not None:
                out[name] = float(v)
                break
    return out


class _TrainMetrics(Observer):
    """Aggregates the reply metrics of the updates that made each version (Flower's ``train_metrics_clientapp``)."""

    def __init__(self, aggr_fn: MetricsAggrFn, weight_key: str) -> None:
        self.aggr_fn, self.weight_key = aggr_fn, weight_key
        self.by_version: dict[int, MetricRecord] = {}
        self.errors = 0
        self._pending: list[RecordDict] = []
        self._strategy: FedhiveStrategy | None = None
        self._made: int | None = None  # a version an aggregation made, not yet given its updates' metrics

    def on_start(self, strategy: FedhiveStrategy, now: float) -> None:
        self._strategy = strategy

    def on_aggregate(self, seconds: float, now: float) -> None:
        # Called before on_update for the update that triggered it (if one did): see on_update.
        if self._made is not None:
            self.flush()
        self._made = self._strategy.version if self._strategy is not None else None

    def on_update(self, update: Any, outcome: Any, client: Any, staleness: int, duration: float, now: float) -> None:
        rec = None
        if outcome.status != "rejected":
            metrics = {k: v for k, v in update.metrics.items() if k != self.weight_key}
            rec = RecordDict({M.METRICS: MetricRecord({**metrics, self.weight_key: int(update.num_examples)})})
        if self._made is not None and outcome.status != "applied":
            self.flush()  # the version was made by a timer or a failure, not by this update
        if rec is not None:
            self._pending.append(rec)
        if self._made is not None:
            self.flush()

    def flush(self) -> None:
        version, self._made = self._made, None
        pending, self._pending = self._pending, []
        if version is None or not pending:
            return
        try:
            self.by_version[version] = self.aggr_fn(pending, self.weight_key)
        except Exception:  # a user's aggregation function: its failure loses only these metrics
            self.errors += 1
            log.warning("train_metrics_aggr_fn failed for version %s", version, exc_info=True)


class _FederatedEvaluation(Observer):
    """Flower's federated evaluation, event-driven: every ``every`` versions (and for the last one), ``fraction`` of
    the connected nodes (at least ``min_nodes``, idle ones first) get an ``evaluate`` message with that version; their
    replies are aggregated per version with ``aggr_fn`` (Flower's ``evaluate_metrics_clientapp``), once all are in or
    at the end of the run. A busy node runs its evaluation after its training task (a SuperNode runs one message at a
    time). Error replies and replies without a usable ``weighted_by_key`` are counted and left out."""

    def __init__(self, transport: Any, fraction: float, min_nodes: int, every: int | None,
                 config: Mapping[str, Any], aggr_fn: MetricsAggrFn, weight_key: str, seed: int = 0) -> None:
        import random

        self.transport, self.fraction, self.min_nodes, self.every = transport, fraction, min_nodes, every
        self.config, self.aggr_fn, self.weight_key = dict(config), aggr_fn, weight_key
        self.by_version: dict[int, MetricRecord] = {}
        self.counters: dict[str, int] = {}
        self._rng = random.Random(seed)
        self._strategy: FedhiveStrategy | None = None
        self._last = 0  # the last version sent for evaluation (0: none; the initial model is not evaluated)
        self._expected: dict[int, int] = {}  # version -> evaluate messages sent and not yet answered or failed
        self._replies: dict[int, list[RecordDict]] = {}

    def _count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def on_start(self, strategy: FedhiveStrategy, now: float) -> None:
        self._strategy = strategy
        self._last = int(strategy.version)  # not the initial model (as Flower), nor versions before a resume

    def on_aggregate(self, seconds: float, now: float) -> None:
        v = int(self._strategy.version) if self._strategy is not None else 0
        if self.every is not None and v - self._last >= self.every:
            self.send(v)
        self.collect()

    def on_update(self, *args: Any) -> None:
        self.collect()

    def on_failure(self, node_id: int, reason: str, now: float) -> None:
        self.collect()

    def send(self, version: int) -> None:
        strategy = self._strategy
        if strategy is None or version <= self._last:
            return
        self._last = version
        nodes = [c.node_id for c in self.transport.clients()]
        n = min(len(nodes), max(int(len(nodes) * self.fraction), self.min_nodes))
        if n == 0:
            return
        busy = self.transport.busy_nodes()
        idle, working = [x for x in nodes if x not in busy], [x for x in nodes if x in busy]
        self._rng.shuffle(idle)
        self._rng.shuffle(working)
        config = {**self.config, "server-round": version}
        for node in (idle + working)[:n]:
            if self.transport.push_evaluate(node, version, strategy.params, config):
                self._expected[version] = self._expected.get(version, 0) + 1
                self._count("evaluate_sent")
            else:
                self._count("evaluate_failed_push_refused")

    def collect(self) -> None:
        for version, node, metrics, n, reason in self.transport.take_evaluations():
            self._expected[version] = self._expected.get(version, 1) - 1
            if reason:
                self._count(f"evaluate_{'failed' if reason in _EVAL_FAILURES else 'rejected'}_{reason}")
            else:
                self._count("evaluate_received")
                body = {k: v for k, v in metrics.items() if k != self.weight_key}
                self._replies.setdefault(version, []).append(
                    RecordDict({M.METRICS: MetricRecord({**body, self.weight_key: int(n)})}))
            if self._expected[version] <= 0:
                self._aggregate(version)

    def _aggregate(self, version: int) -> None:
        self._expected.pop(version, None)
        replies = self._replies.pop(version, [])
        if not replies:
            return
        try:
            self.by_version[version] = self.aggr_fn(replies, self.weight_key)
        except Exception:  # a user's aggregation function: its failure loses only these metrics
            self._count("evaluate_aggregation_errors")
            log.warning("evaluate_metrics_aggr_fn failed for version %s", version, exc_info=True)
            return
        flwr_log(INFO, "Federated evaluation at version %d (%d nodes): %s", version, len(replies),
                 self.by_version[version])

    def finish(self, limit: float) -> None:
        """The last version evaluated too (if ``every`` skipped it); waits up to ``limit`` s for the replies."""
        if self._strategy is not None and self.every is not None:
            self.send(int(self._strategy.version))
        self.transport.drain_evaluations(limit)
        self.collect()
        for version in sorted(self._expected):  # what did not answer in time: aggregate what did
            self._count("evaluate_failed_unanswered", max(self._expected[version], 0))
            self._aggregate(version)


_EVAL_FAILURES = {"client_error", "timeout", "node_lost", "client_crashed", "upload_stalled", "upload_lost"}


class EngineRun:
    """One run of a fedhive strategy over a Flower Grid: the engine under both front doors.

    :meth:`_FedhiveFlowerStrategy.prepare` builds it: the run folder tidied (and the checkpoint to resume from
    found), the model store for a strategy that needs one (its address goes to every train message, with each
    node's own token), the :class:`~fedhive.server.grid_transport.GridTransport`, the Prometheus endpoint, and the
    :class:`~fedhive.engine.Orchestrator`. ``start()`` (the Flower front door) and fedhive's own ServerApp
    (:mod:`fedhive.server.app`) each add their observers, :meth:`wait_for_nodes`, :meth:`run`, :meth:`settle` and
    :meth:`close` it; so every reply is validated and counted, checkpointed and exported the same way in both.
    """

    def __init__(self, orchestrator: Orchestrator, transport: Any, fanout: Fanout, initial: list[np.ndarray],
                 resume_from: Path | None, store: Any, metrics: Any) -> None:
        self.orchestrator = orchestrator
        self.transport = transport
        self.store = store  # the ModelStore, or None
        self.metrics = metrics  # the ServerMetrics serving the endpoint, or None
        self.resume_from = resume_from  # the checkpoint folder the run continues from, or None (a new run)
        self._fanout = fanout
        self._initial = initial

    @property
    def strategy(self) -> FedhiveStrategy:
        return self.orchestrator.strategy

    def observe(self, observer: Observer, *, first: bool = False) -> None:
        """Add ``observer`` (before :meth:`run`); ``first``: before the run's own (store, metrics)."""
        if first:
            self._fanout.observers.insert(0, observer)
        else:
            self._fanout.observers.append(observer)

    def wait_for_nodes(self, need: int, seconds: float) -> int:
        """Wait up to ``seconds`` for ``need`` connected nodes; how many there are."""
        return int(self.transport.wait_for_clients(need, seconds))

    def run(self) -> Any:
        """The orchestrator's run (from the newest usable checkpoint when resuming): its ``RunResult``."""
        return self.orchestrator.run(None if self.resume_from else self._initial, resume_from=self.resume_from)

    def settle(self, limit: float) -> None:
        """Collect (and discard) the replies still out, up to ``limit`` seconds; the store keeps serving them."""
        self.transport.settle(limit=limit)

    def close(self) -> None:
        """Stop the model store and the metrics endpoint (idempotent)."""
        store, metrics, self.store, self.metrics = self.store, self.metrics, None, None
        if store is not None:
            store.stop()
        if metrics is not None:
            metrics.close()

    def __enter__(self) -> "EngineRun":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _FedhiveFlowerStrategy(FlowerStrategy):
    """A fedhive strategy behind Flower's ``Strategy`` interface (see the module docstring)."""

    fedhive_name: ClassVar[str]
    _extra_keywords: ClassVar[dict[str, Any]] = {}
    _renamed: ClassVar[dict[str, str]] = {}  # Flower keyword -> the fedhive strategy's
    _defaults: ClassVar[dict[str, Any]] = {}  # fedhive strategy keywords whose default differs here
    store_public_address: str | None = None  # FedASMU's: the model store's address as devices reach it

    def __init__(self, **kwargs: Any) -> None:
        own = {k: v for k, v in parameters(self.fedhive_name).items() if k != "non_trainable"}
        valid = set(FLOWER_KEYWORDS) | set(RUN_KEYWORDS) | set(self._extra_keywords) | set(own)
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown keyword(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(sorted(valid))}")
        settings = {**FLOWER_KEYWORDS, **RUN_KEYWORDS, **self._extra_keywords}
        settings.update({k: v for k, v in kwargs.items() if k in settings})
        self.strategy_params: dict[str, Any] = {**self._defaults,
                                                **{k: v for k, v in kwargs.items() if k in own}}
        for flower_key, ours in self._renamed.items():
            if flower_key in kwargs:
                self.strategy_params[ours] = kwargs[flower_key]
        self.min_available_nodes = P.integer("min_available_nodes", settings["min_available_nodes"], low=1)
        self.fraction_evaluate = P.number("fraction_evaluate", settings["fraction_evaluate"], low=0.0, high=1.0)
        self.min_evaluate_nodes = P.integer("min_evaluate_nodes", settings["min_evaluate_nodes"], low=0)
        if self.fraction_evaluate == 0.0:
            self.min_evaluate_nodes = 0  # as Flower's: no federated evaluation
        for key in ("weighted_by_key", "arrayrecord_key", "configrecord_key", "local_steps_key"):
            if type(settings[key]) is not str or not settings[key]:
                raise ValueError(f"{key} must be a non-empty string, got {settings[key]!r}")
        self.weighted_by_key: str = settings["weighted_by_key"]
        self.arrayrecord_key: str = settings["arrayrecord_key"]
        self.configrecord_key: str = settings["configrecord_key"]
        self.local_steps_key: str = settings["local_steps_key"]
        for key in ("train_metrics_aggr_fn", "evaluate_metrics_aggr_fn"):
            if settings[key] is not None and not callable(settings[key]):
                raise ValueError(f"{key} must be a function (records, weighting_key) -> MetricRecord, or None")
        self.train_metrics_aggr_fn: MetricsAggrFn = settings["train_metrics_aggr_fn"] or aggregate_metricrecords
        self.evaluate_metrics_aggr_fn: MetricsAggrFn = settings["evaluate_metrics_aggr_fn"] or aggregate_metricrecords
        self.max_time = _positive_or_none("max_time (seconds)", settings["max_time"])
        self.evaluate_every = P.optional(P.integer, "evaluate_every (versions)", settings["evaluate_every"], low=1)
        self.evaluate_interval = _positive_or_none("evaluate_interval (seconds)", settings["evaluate_interval"])
        self.checkpoint_dir = None if settings["checkpoint_dir"] is None else Path(settings["checkpoint_dir"])
        self.checkpoint_every = P.optional(P.integer, "checkpoint_every (versions)", settings["checkpoint_every"],
                                           low=1)
        if type(settings["resume"]) is not bool:
            raise ValueError(f"resume must be True or False, got {settings['resume']!r}")
        self.resume: bool = settings["resume"]
        if self.resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir (the folder of the run's checkpoints)")
        self.metrics_address = settings["metrics_address"] or None
        if self.metrics_address is not None:
            from fedhive.runconfig import host_port

            host_port("metrics_address", self.metrics_address, any_port=True)
        self.wait_for_nodes = _positive_or_none("wait_for_nodes (seconds)", settings["wait_for_nodes"])
        self.poll_interval = P.number("poll_interval (seconds)", settings["poll_interval"], low=0.0, low_open=True)
        self._local_steps_given = "local_steps" in kwargs  # sent to clients only if the user set it (or chosen)
        self._init_extra(settings)
        build(self.fedhive_name, self.strategy_params)  # every strategy value checked now, not at start()
        #: The engine's counters of the last run (received, update_applied, rejected_<reason>, failed_<reason>, ...).
        self.counters: dict[str, int] = {}
        #: The engine of the last run (its strategy, history, transport), for inspection after ``start``.
        self.orchestrator: Orchestrator | None = None

    def _init_extra(self, settings: Mapping[str, Any]) -> None:
        """Subclasses check their own Flower keywords here."""

    # ------------------------------------------------------------------ Flower's abstract methods
    def _event_driven(self, name: str) -> NotImplementedError:
        return NotImplementedError(
            f"{type(self).__name__}.{name}: fedhive strategies are event-driven (a client gets its next task the "
            "moment its reply is in), not round-based; call start(grid=..., initial_arrays=...), which runs them")

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> list[Message]:
        raise self._event_driven("configure_train")

    def aggregate_train(self, server_round: int, replies: Any) -> tuple[ArrayRecord | None, MetricRecord | None]:
        raise self._event_driven("aggregate_train")

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> list[Message]:
        raise self._event_driven("configure_evaluate")

    def aggregate_evaluate(self, server_round: int, replies: Any) -> MetricRecord | None:
        raise self._event_driven("aggregate_evaluate")

    def summary(self) -> None:
        strategy = build(self.fedhive_name, self.strategy_params)
        flwr_log(INFO, "\t├── fedhive %s (event-driven; a round is a global model version)", self.fedhive_name)
        for key, value in strategy.config().items():
            flwr_log(INFO, "\t├── %s: %s", key, value)
        flwr_log(INFO, "\t├── Min available nodes: %d", self.min_available_nodes)
        flwr_log(INFO, "\t├── Weighted by: '%s'; arrays '%s', config '%s', local steps as '%s'",
                 self.weighted_by_key, self.arrayrecord_key, self.configrecord_key, self.local_steps_key)
        flwr_log(INFO, "\t├── Stop: num_rounds versions%s", f" or {self.max_time:g} s" if self.max_time else "")
        flwr_log(INFO, "\t├── evaluate_fn every %s version(s)%s", self.evaluate_every or "-",
                 f", every {self.evaluate_interval:g} s" if self.evaluate_interval else "")
        flwr_log(INFO, "\t└── Checkpoints: %s%s; metrics: %s", self.checkpoint_dir or "none",
                 " (resume)" if self.resume else "", self.metrics_address or "none")

    # ------------------------------------------------------------------ the run
    def _message_config(self, user: Mapping[str, Any]) -> Callable[[Any], dict[str, Any]]:
        """``task -> config`` of its train message (see the module docstring)."""
        key, chooses, given = self.local_steps_key, self._chooses_local_steps, self._local_steps_given

        def make(task: Any) -> dict[str, Any]:
            own = dict(task.config)
            steps = own.pop("local_steps", None)
            config = {**own, **user}
            if steps is not None and (chooses or (given and key not in user)):
                config[key] = steps
            config["server-round"] = int(task.version) + 1
            return config

        return make

    _chooses_local_steps: ClassVar[bool] = False

    def _make_strategy(self) -> FedhiveStrategy:
        return build(self.fedhive_name, self.strategy_params)

    def prepare(self, grid: Grid, names: Sequence[str], initial: Sequence[np.ndarray], *, timeout: float,
                stop: StopCondition, fingerprint: Mapping[str, Any], strategy: FedhiveStrategy | None = None,
                evaluate: Callable[[Any], Mapping[str, float]] | None = None, eval_every_versions: int | None = None,
                eval_interval: float | None = None, run_dir: Path | None = None,
                on_metrics_error: Callable[[OSError], None] | None = None,
                **transport_options: Any) -> EngineRun:
        """The engine of one run, in fedhive's own types (numpy arrays, ``StopCondition``); ``start`` and
        fedhive's own ServerApp both run through it.

        ``strategy``: the fedhive strategy to run (default: the one this object's keywords make). ``evaluate``:
        ``params -> {metric: number}`` (``accuracy`` for a target), every ``eval_every_versions`` versions and/or
        ``eval_interval`` seconds. ``run_dir``: the folder whose leftover temporary files are removed (default
        ``checkpoint_dir``). ``on_metrics_error(exc)``: called instead of raising when ``metrics_address`` cannot be
        served (the run goes on without it). ``transport_options`` override the
        :class:`~fedhive.server.grid_transport.GridTransport` defaults (``ttl=idle_timeout=timeout``, this object's
        keys and ``poll_interval``, no profile queries, no loss alias).
        """
        from fedhive.server.app import StorePublisher, prepare_run_folder
        from fedhive.server.grid_transport import GridTransport

        strategy = strategy if strategy is not None else self._make_strategy()
        ckpt_dir = self.checkpoint_dir
        resume_from = None
        if ckpt_dir is not None:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            resume_from = prepare_run_folder(run_dir or ckpt_dir, ckpt_dir, resume=self.resume)
        options: dict[str, Any] = {"ttl": timeout, "idle_timeout": timeout, "poll_interval": self.poll_interval,
                                   "query_profiles": False, "arrays_key": self.arrayrecord_key,
                                   "config_key": self.configrecord_key, "weight_key": self.weighted_by_key,
                                   "alias_loss": False}
        options.update(transport_options)
        store = self._start_store(strategy) if strategy.needs_model_store else None
        metrics = None
        try:
            if store is not None:  # where the devices fetch from, in every train message; each node's own token
                options["extra_config"] = {**dict(options.get("extra_config") or {}), **self._store_config(store)}
                options["node_config"] = lambda node: {M.STORE_TOKEN: store.token_for(node)}
            transport = GridTransport(grid, list(names), **options)
            fanout = Fanout([])
            if store is not None:
                fanout.observers.append(StorePublisher(store))
            if self.metrics_address:
                from fedhive.server.metrics import ServerMetrics

                try:
                    metrics = ServerMetrics.serve(self.metrics_address, transport=transport)
                except OSError as exc:
                    if on_metrics_error is None:
                        raise
                    on_metrics_error(exc)
                else:
                    if store is not None:
                        metrics.watch_store(store)
                    fanout.observers.append(metrics)
            orch = Orchestrator(strategy, transport, stop=stop, evaluate=evaluate,
                                eval_every_versions=eval_every_versions if evaluate is not None else None,
                                eval_interval=eval_interval if evaluate is not None else None,
                                checkpoint_dir=ckpt_dir, checkpoint_every=self.checkpoint_every,
                                fingerprint=fingerprint, observer=fanout)
        except BaseException:
            if store is not None:
                store.stop()
            if metrics is not None:
                metrics.close()
            raise
        self.orchestrator = orch
        return EngineRun(orch, transport, fanout, [np.asarray(p) for p in initial], resume_from, store, metrics)

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: EvaluateFn | None = None) -> Result:
        """Run the strategy on ``grid`` until ``num_rounds`` global versions (or ``max_time``); Flower's signature.

        ``timeout`` is how long a train or evaluate message may wait and run before it fails (its TTL), and, unless
        ``wait_for_nodes`` is set, how long to wait for ``min_available_nodes``. With ``fraction_evaluate > 0``,
        ``evaluate_config`` (plus ``server-round``) goes with each federated evaluation: every ``evaluate_every``
        versions and the last, on ``fraction_evaluate`` of the connected nodes, idle ones first.
        """
        num_rounds = P.integer("num_rounds (global versions)", num_rounds, low=1)
        timeout = P.number("timeout (seconds)", timeout, low=0.0, low_open=True)
        if evaluate_fn is not None and not callable(evaluate_fn):
            raise ValueError("evaluate_fn must be a function (server_round, arrays) -> MetricRecord | None")
        user = dict(train_config or {})
        names, initial = _record_to_arrays(initial_arrays)
        flwr_log(INFO, "Starting %s strategy (fedhive):", type(self).__name__)
        log_strategy_start_info(num_rounds, initial_arrays, ConfigRecord(user), evaluate_config)
        self.summary()
        flwr_log(INFO, "")

        strategy = self._make_strategy()
        result = Result(arrays=initial_arrays)

        def evaluate(params: Any) -> dict[str, float]:
            version = int(strategy.version)
            rec = evaluate_fn(version, M.to_array_record(params, names))  # type: ignore[misc]
            if rec is None:
                return {}
            if not isinstance(rec, MetricRecord):
                raise TypeError(f"evaluate_fn must return a flwr.app.MetricRecord or None, got {type(rec).__name__}")
            flwr_log(INFO, "Global evaluation at version %d: %s", version, rec)
            result.evaluate_metrics_serverapp[version] = rec
            return _evaluation_numbers(rec)

        fingerprint = {"flower_app": True,
                       "tensors": [[n, list(p.shape), str(p.dtype)] for n, p in zip(names, initial)]}
        engine = self.prepare(grid, names, initial, timeout=timeout, strategy=strategy,
                              stop=StopCondition(max_versions=num_rounds, max_time=self.max_time),
                              evaluate=evaluate if evaluate_fn is not None else None,
                              eval_every_versions=self.evaluate_every, eval_interval=self.evaluate_interval,
                              fingerprint=fingerprint, make_config=self._message_config(user))
        train_metrics = _TrainMetrics(self.train_metrics_aggr_fn, self.weighted_by_key)
        engine.observe(train_metrics, first=True)
        federated = None
        if self.fraction_evaluate > 0:
            federated = _FederatedEvaluation(engine.transport, self.fraction_evaluate, self.min_evaluate_nodes,
                                             self.evaluate_every, dict(evaluate_config or {}),
                                             self.evaluate_metrics_aggr_fn, self.weighted_by_key)
            engine.observe(federated)
        t0 = time.time()
        self.counters = {}
        with engine:
            try:
                need = max(self.min_available_nodes, self._min_nodes())
                wait = self.wait_for_nodes or timeout
                n = engine.wait_for_nodes(need, wait)
                if n < need:
                    raise RuntimeError(f"{type(self).__name__}: only {n} of min_available_nodes={need} nodes "
                                       f"connected within {wait:g} s; start more SuperNodes or lower "
                                       "min_available_nodes")
                run = engine.run()
                self.counters = dict(engine.orchestrator.counters)
                if federated is not None:
                    federated.finish(limit=min(timeout, EVALUATE_DRAIN_SECONDS))
                    result.evaluate_metrics_clientapp = dict(sorted(federated.by_version.items()))
                    self.counters.update(federated.counters)
                engine.settle(limit=5.0)  # the store still serves the tasks still out (FedASMU's fetches)
            finally:
                if not self.counters:
                    self.counters = dict(engine.orchestrator.counters)
        train_metrics.flush()
        result.arrays = M.to_array_record(run.params, names)
        result.train_metrics_clientapp = dict(sorted(train_metrics.by_version.items()))
        flwr_log(INFO, "")
        flwr_log(INFO, "Strategy execution finished in %.2fs: %s global versions from %d client updates (%s)",
                 time.time() - t0, run.final["version"], run.final["client_updates"], run.stop_reason)
        rejected = {k: v for k, v in run.counters.items() if k.startswith(("rejected", "failed"))}
        if rejected:
            flwr_log(INFO, "Rejected or failed: %s", rejected)
        flwr_log(INFO, "Final results:")
        for line in io.StringIO(str(result)):
            flwr_log(INFO, "\t%s", line.strip("\n"))
        return result

    def _store_config(self, store: Any) -> dict[str, Any]:
        """What a train message tells the device about the model store."""
        return {M.STORE_ADDRESS: self.store_public_address or store.address}

    def _min_nodes(self) -> int:
        return 1

    def _start_store(self, strategy: FedhiveStrategy) -> Any:
        return None


class FedAvg(_FedhiveFlowerStrategy):
    """Synchronous FedAvg (McMahan et al., 2017) on fedhive's engine, with Flower's FedAvg keywords.

    Each round samples ``max(int(fraction_train × N), min_train_nodes)`` of the ``N`` connected nodes at its start,
    as Flower's (fedhive FedAvg's ``fraction`` and ``min_sample``), and ends when every sampled node replied or at its
    deadline (``round_timeout``, default ``"auto"``: ``deadline_factor`` × the slowest observed task). The aggregate
    is the
    ``weighted_by_key``-weighted mean of the round's replies, as Flower's; unlike Flower's, a claim above
    ``max_weight_ratio`` × the median claim is capped (0: off), and a malformed reply is rejected, not aggregated.
    ``fraction_evaluate`` defaults to 0 here (Flower's: 1).
    """

    fedhive_name = "fedavg"
    _extra_keywords = FEDAVG_FLOWER_KEYWORDS
    _renamed = {"fraction_train": "fraction", "min_train_nodes": "min_sample"}
    _defaults = {"min_sample": FEDAVG_FLOWER_KEYWORDS["min_train_nodes"]}

    def __init__(self, **kwargs: Any) -> None:
        for ours, flowers in (("fraction", "fraction_train"), ("min_sample", "min_train_nodes")):
            if ours in kwargs:
                raise ValueError(f"FedAvg: use Flower's {flowers}, not {ours} (fedhive's name for it)")
        super().__init__(**kwargs)

    def _init_extra(self, settings: Mapping[str, Any]) -> None:
        P.number("fraction_train", settings["fraction_train"], low=0.0, high=1.0, low_open=True)
        self.min_train_nodes = P.integer("min_train_nodes", settings["min_train_nodes"], low=1)

    def _min_nodes(self) -> int:
        return self.min_train_nodes


class FedAsync(_FedhiveFlowerStrategy):
    """FedAsync (Xie et al., 2019): every reply is mixed into the global model at once, by a staleness-damped
    ``alpha``. Keywords: ``alpha``, ``staleness`` ('constant', 'polynomial', 'hinge'), ``staleness_a``,
    ``staleness_b``, ``proximal_mu``, ``max_update_norm``, ``local_steps`` (see ``fedhive strategies``)."""

    fedhive_name = "fedasync"


class FedBuff(_FedhiveFlowerStrategy):
    """FedBuff (Nguyen et al., 2022): replies' deltas are buffered; every ``buffer_size`` of them make a version.
    Keywords: ``buffer_size``, ``server_lr``, ``server_momentum``, ``staleness``, ``staleness_a``, ``staleness_b``,
    ``max_staleness``, ``max_concurrency``, ``max_update_norm``, ``local_steps``."""

    fedhive_name = "fedbuff"


class FedFix(_FedhiveFlowerStrategy):
    """FedFix: the server aggregates at a fixed interval whatever has arrived. Keywords: ``interval`` (seconds;
    default: learned from the fleet's task times), ``server_lr``, ``duration_momentum``, ``max_weight_ratio``,
    ``local_steps``."""

    fedhive_name = "fedfix"


class FedCompass(_FedhiveFlowerStrategy):
    """FedCompass (Li et al., 2024): each client's local steps are chosen from its measured speed so that groups
    of clients arrive together; the steps travel in the train config under ``local_steps_key`` (``"local-steps"``),
    over ``train_config``'s. Keywords: ``q_min``, ``q_max``, ``lam``, ``speed_momentum``, ``alpha``, ``staleness``,
    ``staleness_a``, ``staleness_b``, ``client_weights``, ``speed_model``, ``max_weight_ratio``."""

    fedhive_name = "fedcompass"
    _chooses_local_steps = True


class FedASMU(_FedhiveFlowerStrategy):
    """FedASMU (Liu et al., 2024): staleness-aware server weights, plus a device-side fetch and fusion of a newer
    global model mid-task. A stock ClientApp runs the server-side rule only; one that trains through
    :func:`fedasmu_train` (or a ``fedhive agent``) does the device side too, fetching from the model store that
    ``start`` runs at ``store_address`` (devices are told ``store_public_address`` if set: the address they reach it
    at). ``store_certificates=(cert_file, key_file)``: the store speaks TLS; ``store_ca``: the CA certificate's path
    on the devices, sent with each task for ``fedasmu_train`` to verify the store with. Each train message carries
    ``local_steps`` under ``local_steps_key`` (the fetch is a step within them).

    Here ``server_adaptation`` defaults to ``"heuristic"``: the paper's ``"validation"`` needs a server-side
    validation gradient, which a Flower app does not give (pass ``validation_fn=params -> (loss, grads)`` with
    ``server_adaptation="validation"`` to use it).
    """

    fedhive_name = "fedasmu"
    _extra_keywords = {"store_address": "127.0.0.1:0", "store_public_address": None, "store_certificates": None,
                       "store_ca": None, "validation_fn": None}
    _defaults = {"server_adaptation": "heuristic"}
    _chooses_local_steps = True  # its fetch_step is a point within them: the device must train exactly these

    def _init_extra(self, settings: Mapping[str, Any]) -> None:
        from fedhive.runconfig import host_port

        self.store_address = str(settings["store_address"])
        host_port("store_address", self.store_address, any_port=True)
        self.store_public_address = settings["store_public_address"]
        if self.store_public_address is not None:
            host_port("store_public_address", self.store_public_address)
        certs = settings["store_certificates"]
        if certs is not None and (not isinstance(certs, (tuple, list)) or len(certs) != 2
                                  or not all(isinstance(c, (str, Path)) and str(c) for c in certs)):
            raise ValueError("store_certificates must be (certificate_file, key_file) (PEM paths) for the model "
                             f"store's TLS, or None; got {certs!r}")
        self.store_certificates = None if certs is None else (str(certs[0]), str(certs[1]))
        self.store_ca = settings["store_ca"] or None
        if self.store_ca is not None and not isinstance(self.store_ca, str):
            raise ValueError(f"store_ca must be the CA certificate's path on the devices (a string), got "
                             f"{self.store_ca!r}")
        self.validation_fn = settings["validation_fn"]
        if self.validation_fn is not None and not callable(self.validation_fn):
            raise ValueError("validation_fn must be a function params -> (loss, grads), or None")

    def _make_strategy(self) -> FedhiveStrategy:
        strategy = super()._make_strategy()
        if self.validation_fn is not None:
            strategy.set_validation(self.validation_fn)
        return strategy

    def _start_store(self, strategy: FedhiveStrategy) -> Any:
        from fedhive.server.model_store import ModelStore

        return ModelStore(self.store_address, certificates=self.store_certificates)

    def _store_config(self, store: Any) -> dict[str, Any]:
        config = super()._store_config(store)
        if self.store_ca:
            config[M.STORE_CA] = self.store_ca
        return config


#: fedhive's strategy names -> their class here.
STRATEGY_CLASSES: dict[str, type[_FedhiveFlowerStrategy]] = {
    cls.fedhive_name: cls for cls in (FedAvg, FedAsync, FedBuff, FedFix, FedCompass, FedASMU)}


def strategy_class(name: str) -> type[_FedhiveFlowerStrategy]:
    """The class of fedhive strategy ``name`` (as in ``fedhive strategies``)."""
    try:
        return STRATEGY_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; one of {', '.join(STRATEGY_CLASSES)}") from None


TrainFn = Callable[[list[np.ndarray], int], "tuple[Sequence[np.ndarray], Mapping[str, Any]]"]


def fedasmu_train(msg: Message, train: TrainFn, *, arrayrecord_key: str = M.ARRAYS,
                  configrecord_key: str = M.CONFIG, local_steps_key: str = "local-steps"
                  ) -> tuple[ArrayRecord, dict[str, Any]]:
    """FedASMU's device side in a ClientApp: train to the task's fetch step, fetch the newest global model from the
    strategy's model store, fuse it in with the adaptive weight ``β``, train the remaining steps.

    ``train(arrays, steps) -> (arrays, metrics)`` is the ClientApp's own training: ``steps`` optimiser steps from
    ``arrays`` (numpy, in the message's ArrayRecord order), returning the new arrays and metrics with the mean
    training ``loss`` (or ``train_loss``). Returns the reply's ArrayRecord and metrics (yours, plus FedASMU's ``gamma``,
    ``upsilon``, ``beta``, ``fetch_version``, ``steps``, ``seconds``, and the version echo the server checks): add
    ``num-examples`` and reply. A message without FedASMU's keys (another strategy) is one plain ``train`` call, and
    a failed fetch trains on without it (logged)::

        @app.train()
        def train_fn(msg, context):
            def steps(arrays, n):
                model.load_state_dict(dict(zip(model.state_dict(), map(torch.from_numpy, arrays))))
                loss = train(model, x, y, n, lr)
                return [v.numpy() for v in model.state_dict().values()], {"train_loss": loss}
            arrays, metrics = fedasmu_train(msg, steps)
            metrics["num-examples"] = len(x)
            return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=msg)
    """
    from fedhive.client.fetch import FetchError, fetch_model
    from fedhive.strategies.fedasmu import DevicePlan

    t0 = time.perf_counter()
    config = dict(msg.content[configrecord_key])
    record = msg.content[arrayrecord_key]
    names = [str(k) for k in record.keys()]
    params = [np.array(a.numpy(), copy=True) for a in record.values()]
    steps = P.integer(f"config['{local_steps_key}'] (local steps)", config.get(local_steps_key, 0), low=0)
    claim = config.get(M.VERSION)
    base = P.integer(f"config['{M.VERSION}']", claim if claim is not None else 0, low=0)
    store = config.get(M.STORE_ADDRESS)
    plan = DevicePlan.of({**config, "local_steps": steps}, base) if store else None

    def run(arrays: list[np.ndarray], n: int) -> tuple[list[np.ndarray], dict[str, Any]]:
        out, metrics = train(arrays, n)
        out = [np.asarray(a) for a in out]
        if len(out) != len(names):
            raise ValueError(f"train returned {len(out)} arrays for a model of {len(names)}")
        metrics = dict(metrics)
        if "loss" not in metrics and "train_loss" in metrics:
            metrics["loss"] = metrics["train_loss"]
        return out, metrics

    if plan is None:
        out, metrics = run(params, steps)
    else:
        local, first = run(params, plan.first)
        try:
            version, fetched, nbytes = fetch_model(str(store), str(config.get(M.STORE_TOKEN, "")), base,
                                                   root_certificates=config.get(M.STORE_CA) or None)
        except FetchError as exc:
            log.warning("FedASMU fetch failed, training on without it: %s", exc)
            version, fetched, nbytes = base, None, 0
        mixed = plan.fuse(local, first, fetched, version, nbytes)
        out, rest = run(mixed, plan.rest)
        metrics = plan.finish(rest)
    metrics = {k: v for k, v in metrics.items() if M.finite_number(v) is not None}
    metrics["seconds"] = time.perf_counter() - t0
    if claim is not None:
        metrics[M.VERSION] = base
    return M.to_array_record(out, names), metrics
