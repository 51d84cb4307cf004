"""FedASMU: asynchronous FL with a dynamic staleness-aware server weight and a device-side model adjustment.

Sources
-------
- [ABS] Liu et al., "FedASMU: Efficient Asynchronous Federated Learning with Dynamic Staleness-Aware Model
  Update", AAAI 2024, arXiv 2312.05770 (extended as arXiv 2507.06031). The method section could not be read.
- [3P] ``wangpengyu2004/AFVLM_CM`` ``code/afl_vlm/methods/fedasmu.py`` (commit 24c2b01), a third-party port that
  states it implements the paper's Eq. (1), (2), (7), (8). The equations below follow it.

Server, arrival of ``w_i`` trained from version ``o`` while the global model is at version ``v``::

    τ := v − o ; delay := τ + 1 ; t := v + 1
    ξ := max(0, λ_i·sqrt(t) / (t·delay^σ_i) + ι_i)          # Eq. (2), per-client λ_i, σ_i, ι_i
    α := μ_α·ξ / (1 + μ_α·ξ)                                   # Eq. (1), in [0, 1)
    w ← (1 − α)·w + α·w_i ; v += 1

Device, local training of ``T`` steps from ``w(o)``; after ``r = round(f·T)`` steps it fetches the newest global
model ``(w_g, v')`` from the model store and, unless ``v' == o``::

    tg := v' + 1 ; age := tg − o + 1
    φ := max(0, γ_i/sqrt(tg)·(1 − υ_i/sqrt(age)))               # Eq. (7)
    β := μ_β·φ / (1 + μ_β·φ)                                   # Eq. (8)
    w_local ← (1 − β)·w_local + β·w_g

then finishes the ``T`` steps and uploads ``w_local``.

The two forms of ``ξ``'s delay term found in implementations, ``delay^σ_i`` (the port's, followed here: with
``λ·sqrt(t)/t = λ/sqrt(t)`` it is ``ξ = λ_i/(sqrt(t)·delay^σ_i) + ι_i``) and ``(sqrt(delay))^σ_i``, are one family:
``(sqrt(delay))^σ = delay^(σ/2)``, so ``sigma=0.25`` here is the other form's ``σ = 0.5``. They differ only in what
the same ``σ`` means (and, with server adaptation on, in the step size of the learned ``σ_i``). ``β``'s form, with
``tg`` the fetched version plus one, is the same in both.

The device side is the numpy-only :class:`DevicePlan`
(built on :func:`fetch_step`, :func:`mixing_beta` and :class:`DeviceAdjuster`), which both the device trainer and the
virtual fleet follow (this module never imports torch). The plan trains the two spans as two training calls, so
the local optimiser's state (SGD momentum, Adam moments) starts afresh after the fetch: the virtual fleet trains
each span as a separate batched job at its own virtual moment (the second can only start once the fetched model,
which depends on the global model at that moment, is known), and the device trainer follows the same plan so that
simulation and deployment train alike. With the default optimiser (plain SGD) there is no state to lose.

Scale: ``t`` and ``tg`` count server versions, which an asynchronous fleet pushes to tens of thousands, so with the
paper's ``μ_α = μ_β = 1`` both weights shrink as ``1/√t`` (``β`` ~ 0.01: the fusion does almost nothing). So the
defaults are ``mu_alpha=10, mu_beta=1000``, with which ``β`` stays ~0.8-0.97 at tens of thousands of versions and a
device that fetches at half-time continues from nearly the current global model. They were chosen on three tuning
fleets that are not the benchmark's (30 to 80 clients, other device mixes, label skews and seeds;
``benchmarks/tune_defaults.py``, ``benchmarks/results/tune_defaults.json``): a geometric-mean speed-up over FedAvg to
85 % of 3.9x, against 1.0x with the paper's values (which missed 85 % on the 80-client fleet). ``preset="paper"``
restores the paper's ``μ_α = μ_β = 1`` (the conformance tests use it).

[OURS] choices
--------------
- ``max_staleness`` counts ``τ = v − o`` as FedBuff does: an update with ``τ > max_staleness`` is rejected
  (reason ``stale``) and changes nothing on the server. (The port compares ``delay = τ + 1`` with its ``tau``.)
  ``o`` is the version the engine sent the task at.
- Non-trainable tensors are never mixed by ``α``: they take the client's value (§0).
- Server adaptation of ``(λ_i, σ_i, ι_i)`` happens after the mix, so ``α`` uses the values from before the arrival
  (as in the port). The paper learns them by gradient descent on the loss; fedhive approximates that, as chosen by
  ``server_adaptation`` (nothing switches it silently):

  * ``"validation"`` (the default; the engine builds the function from the task's server-side validation batch
    through ``set_validation``, and a run whose task has none stops with an error naming the other choices): one gradient
    step per applied arrival on ``L(w(α))``, the validation loss of the new global model, with
    ``dL/dα = ∇L(w(α))·(w_i − w)`` (dot product over the trainable tensors, in float64) and the chain rule
    ``dα/dξ = μ_α/(1 + μ_α·ξ)²``, ``dξ/dλ = t^(−1/2)·delay^(−σ)``, ``dξ/dσ = −λ·t^(−1/2)·delay^(−σ)·ln(delay)``,
    ``dξ/dι = 1`` (zero gradient where ``ξ`` is clipped at 0); learning rate ``server_meta_lr``. A non-finite
    validation loss or gradient skips the step.
  * ``"heuristic"``: the port's heuristic on the loss the client reports (``Update.metrics["loss"]``):
    ``sig = clip(prev_loss_i − loss_i, −1, 1)``; ``λ_i += lr·sig``; ``σ_i −= lr·sig``; ``ι_i += lr·sig/delay``.
    A client's first reported loss only records it. The previous loss is the one of the last *applied* update.

  * ``"off"``: ``λ_i, σ_i, ι_i`` keep their initial values.

  After either step ``λ_i ≥ 1e-6`` (as in the port: ``λ_i = 0`` with ``ι_i = 0`` would silence a client for good,
  with zero gradient), ``σ_i ≥ 0``, ``ι_i ≥ 0``.
- Device adaptation of ``(γ_i, υ_i)``: the same heuristic on the local loss improvement over the fusion,
  ``sig = clip(loss_before_fusion − loss_after, −1, 1)``; ``γ += local_meta_lr·sig`` (floored at 1e-6, as in the
  port), ``υ −= local_meta_lr·sig`` (floored at 0). No fusion (nothing newer, or no loss before it) → no change.
  The server keeps ``γ_i, υ_i`` per client, sends them in every task and takes back what the device reports
  (``metrics["gamma"]``, ``metrics["upsilon"]``), so they persist across tasks even on stateless clients.
- The fetch step is ``r = round(f·T)`` (Python's ``round``, as in the port) clamped to ``[1, T − 1]`` so that at
  least one step comes before and after the fetch; tasks with ``T < 2`` carry no fetch step. The device fetches
  after its ``r``-th step.
- ``fetch_fraction="adaptive"`` replaces the paper's learned fetch policy by a per-client UCB1 bandit over
  ``f ∈ {0.25, 0.5, 0.75}``. Reward: ``(loss_before − loss)/seconds`` from the update's metrics (0 when a key is
  missing, non-finite, or ``seconds ≤ 0``). Untried arms first, in order; then the arm with the largest
  ``mean_a + c·sqrt(2·ln(n)/n_a)``, ties to the lowest index, where the exploration scale ``c`` is the largest
  ``|reward|`` the client has produced so far (UCB1 assumes rewards in [0, 1]; raw losses per second are not).
  Client-side bookkeeping (bandit reward, ``γ_i``/``υ_i``) is taken from every update, even one the server rejects
  as stale, since it describes local training; a failed task teaches the bandit nothing.
- Device fusion mixes every floating-point tensor; integer tensors keep the local value.
- ``last_alpha`` is 0.0 until the first applied arrival.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import params as P
from .base import APPLIED, ClientInfo, Dispatch, Outcome, Params, Strategy, Task, Update, presets
from .weighted_sum import weighted_sum

ValidationFn = Callable[[list[np.ndarray]], tuple[float, list[np.ndarray]]]

SERVER_ADAPTATIONS = ("validation", "heuristic", "off")

FETCH_ARMS: tuple[float, ...] = (0.25, 0.5, 0.75)
"""The fetch fractions the adaptive bandit chooses among."""

_LAM_MIN = 1e-6
_GAMMA_MIN = 1e-6


# --------------------------------------------------------------------------- the pure formulas
def mixing_alpha(version: int, base_version: int, lam: float, sigma: float, iota: float, mu_alpha: float) -> float:
    """The server's mixing weight ``α``, Eq. (1)-(2).

    Parameters
    ----------
    version : int
        The global model's version ``v`` when the update arrives.
    base_version : int
        The version ``o`` the client trained from (``o ≤ v``).
    lam, sigma, iota : float
        The client's ``λ_i, σ_i, ι_i``.
    mu_alpha : float
        ``μ_α``.

    Returns
    -------
    float
        ``α = μ_α·ξ/(1 + μ_α·ξ)`` with ``ξ = max(0, λ·sqrt(t)/(t·delay^σ) + ι)``, ``t = v + 1``, ``delay = v − o + 1``.
    """
    xi = _xi(version + 1, version - base_version + 1, lam, sigma, iota)
    return mu_alpha * xi / (1.0 + mu_alpha * xi)


def _xi_raw(t: int, delay: int, lam: float, sigma: float, iota: float) -> float:
    return lam * math.sqrt(t) / (t * delay ** sigma) + iota


def _xi(t: int, delay: int, lam: float, sigma: float, iota: float) -> float:
    return max(0.0, _xi_raw(t, delay, lam, sigma, iota))


def fetch_step(local_steps: int, fraction: float) -> int | None:
    """After how many local steps the device fetches the global model: ``round(f·T)`` clamped to ``[1, T − 1]``.

    Returns ``None`` when ``local_steps < 2`` (no step before and after a fetch).
    """
    if local_steps < 2:
        return None
    return min(max(int(round(fraction * local_steps)), 1), local_steps - 1)


def mixing_beta(base_version: int, global_version: int, gamma: float, upsilon: float, mu_beta: float) -> float | None:
    """The device's mixing weight ``β`` for a fetched global model, Eq. (7)-(8).

    Parameters
    ----------
    base_version : int
        ``o``, the version the local training started from.
    global_version : int
        ``v'``, the version of the fetched global model.
    gamma, upsilon : float
        The device's ``γ_i, υ_i``.
    mu_beta : float
        ``μ_β``.

    Returns
    -------
    float or None
        ``None`` when ``v' ≤ o`` (nothing newer: skip the adjustment); else ``β = μ_β·φ/(1 + μ_β·φ)`` with
        ``φ = max(0, γ/sqrt(tg)·(1 − υ/sqrt(age)))``, ``tg = v' + 1``, ``age = tg − o + 1``.
    """
    if global_version <= base_version:
        return None
    tg = global_version + 1
    age = tg - base_version + 1
    phi = max(0.0, gamma / math.sqrt(tg) * (1.0 - upsilon / math.sqrt(age)))
    return mu_beta * phi / (1.0 + mu_beta * phi)


def _clip1(x: float) -> float:
    return max(-1.0, min(1.0, x))


def _finite(x: Any) -> float | None:
    """``x`` as a float if it is a finite real number, else ``None``."""
    if isinstance(x, bool):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# --------------------------------------------------------------------------- the device side
class DeviceAdjuster:
    """The device-side adaptive local model adjustment for one task (pure numpy).

    The trainer makes one from the task's config and base version, runs ``fetch_step`` local steps, fetches the
    newest global model from the model store, calls :meth:`adjust`, trains on, calls :meth:`feedback` with the
    final local loss, and adds :meth:`report` to the update's metrics.

    Parameters
    ----------
    config : mapping
        The task's config (``local_steps``, ``fetch_step``, ``mu_beta``, ``gamma``, ``upsilon``, ``local_meta_lr``);
        missing keys take FedASMU's defaults, a missing ``fetch_step`` means no fetch.
    base_version : int
        The version ``o`` the task trains from.

    Attributes
    ----------
    fetch_step : int or None
        After how many local steps to fetch; ``None``: don't.
    beta : float or None
        The ``β`` applied by :meth:`adjust`; ``None`` until a fusion happened (or when it was skipped).
    gamma, upsilon : float
        The device's current ``γ_i, υ_i``.
    fetched : bool
        Whether :meth:`adjust` was called (a fetch took place, newer or not).
    fetch_version : int or None
        The version of the fetched model.
    """

    def __init__(self, config: Mapping[str, Any], base_version: int) -> None:
        # The config crossed the network: each value is checked as the strategy checks its own (ValueError naming it).
        self.base_version = P.integer("the task's base version", base_version, low=0)
        fs = config.get("fetch_step")
        self.fetch_step: int | None = None if fs is None else P.integer("config fetch_step", fs, low=0)
        self.mu_beta = P.number("config mu_beta", config.get("mu_beta", 1000.0), low=0.0)  # FedASMU's default
        self.gamma = P.number("config gamma", config.get("gamma", 1.0), low=0.0, low_open=True)
        self.upsilon = P.number("config upsilon", config.get("upsilon", 0.5), low=0.0)
        self.local_meta_lr = P.number("config local_meta_lr", config.get("local_meta_lr", 0.01), low=0.0)
        self.beta: float | None = None
        self.fetched = False
        self.fetch_version: int | None = None
        self._loss_before: float | None = None

    def adjust(self, local_params: Sequence[np.ndarray], global_params: Sequence[np.ndarray] | None,
               global_version: int, loss_before_fusion: float | None = None) -> list[np.ndarray]:
        """Mix the fetched global model into the local one: ``(1 − β)·w_local + β·w_g``.

        Parameters
        ----------
        local_params : sequence of numpy.ndarray
            The local model now.
        global_params : sequence of numpy.ndarray or None
            The fetched global model; ``None`` when the store had nothing newer.
        global_version : int
            Its version ``v'``.
        loss_before_fusion : float, optional
            The local loss just before the fusion, for :meth:`feedback`.

        Returns
        -------
        list of numpy.ndarray
            New arrays holding the mix, or ``local_params`` themselves (as a list) when the adjustment is skipped.
        """
        self.fetched = True
        self.fetch_version = int(global_version)
        self.beta = None
        self._loss_before = None
        if global_params is None:
            return list(local_params)
        beta = mixing_beta(self.base_version, self.fetch_version, self.gamma, self.upsilon, self.mu_beta)
        if beta is None:
            return list(local_params)
        self.beta = beta
        self._loss_before = _finite(loss_before_fusion)
        floating = {i for i, p in enumerate(local_params) if np.issubdtype(p.dtype, np.floating)}
        out = weighted_sum([(1.0 - beta, local_params), (beta, global_params)], indices=sorted(floating))
        for i, p in enumerate(local_params):
            if i not in floating:
                out[i] = np.array(p, copy=True)
        return out

    def feedback(self, loss_after: float) -> None:
        """Adapt ``γ, υ`` from the loss improvement over the fusion (once per fusion; no fusion → no change)."""
        after = _finite(loss_after)
        if self.beta is None or self._loss_before is None or after is None:
            return
        sig = _clip1(self._loss_before - after)
        self.gamma = max(_GAMMA_MIN, self.gamma + self.local_meta_lr * sig)
        self.upsilon = max(0.0, self.upsilon - self.local_meta_lr * sig)
        self._loss_before = None

    def report(self) -> dict[str, float | int]:
        """Metrics for the update: ``gamma``, ``upsilon``, ``beta`` (0.0 without fusion) and ``fetch_version``
        (−1: no fetch)."""
        return {
            "gamma": self.gamma,
            "upsilon": self.upsilon,
            "beta": 0.0 if self.beta is None else self.beta,
            "fetch_version": -1 if self.fetch_version is None else self.fetch_version,
        }


class DevicePlan:
    """FedASMU's device side of one task, written once for the device trainer and the virtual fleet.

    Train ``first`` steps from the task's model (:meth:`first_config`), fetch the newest global model, :meth:`fuse`
    it in, train the remaining ``rest`` steps from the result (:meth:`rest_config`), and :meth:`finish` the metrics
    of the reply. Who trains and who fetches differ (a torch trainer and the model store on a device; batched jobs
    and a function call at a virtual moment in the simulator); the sequence and the metrics are this class's.

    Parameters
    ----------
    config : mapping
        The task's config (``local_steps``, ``fetch_step`` and the :class:`DeviceAdjuster` keys).
    base_version : int
        The version the task trains from.
    """

    def __init__(self, config: Mapping[str, Any], base_version: int) -> None:
        self.config = config
        self.steps = int(config["local_steps"])
        self.first = int(config["fetch_step"])
        self.rest = self.steps - self.first
        self.adjuster = DeviceAdjuster(config, base_version)
        self.fetch_bytes = 0
        self._loss_before: Any = None

    @classmethod
    def of(cls, config: Mapping[str, Any], base_version: int) -> DevicePlan | None:
        """The plan of a task, or ``None`` when it has no mid-training fetch (no ``fetch_step`` inside its steps)."""
        fetch, steps = config.get("fetch_step"), config.get("local_steps")
        if not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in (fetch, steps)) \
                or not 0 < fetch < steps:
            return None
        return cls(config, base_version)

    def first_config(self) -> dict[str, Any]:
        """The config of the training before the fetch."""
        return self._span(self.first)

    def rest_config(self) -> dict[str, Any]:
        """The config of the training after the fetch."""
        return self._span(self.rest)

    def _span(self, steps: int) -> dict[str, Any]:
        config = {**self.config, "local_steps": steps}
        config.pop("fetch_step", None)
        return config

    def fuse(self, local: Sequence[np.ndarray], first_metrics: Mapping[str, Any],
             fetched: Sequence[np.ndarray] | None, fetched_version: int, nbytes: int) -> list[np.ndarray]:
        """Mix the fetched model (``None``: nothing newer, or the fetch failed) into the local one after ``first``
        steps; ``first_metrics`` are the first span's training metrics, ``nbytes`` what the fetch moved."""
        self.fetch_bytes = int(nbytes)
        self._loss_before = first_metrics.get("loss_before")
        return self.adjuster.adjust(local, fetched, fetched_version, first_metrics.get("loss"))

    def finish(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """The reply's metrics from the second span's: the device's ``γ, υ``, ``β``, the fetch, and the whole task's
        ``steps`` and ``loss_before`` (the first batch's loss at the task's starting model)."""
        self.adjuster.feedback(metrics.get("loss", float("nan")))
        out = dict(metrics)
        out.update(self.adjuster.report())
        out["steps"] = self.steps
        out["loss_before"] = self._loss_before if self._loss_before is not None else metrics.get("loss_before")
        out["fetch_bytes"] = self.fetch_bytes
        return out


# --------------------------------------------------------------------------- the server side
@presets(paper={"mu_alpha": 1.0, "lam": 1.0, "sigma": 0.5, "iota": 0.0, "server_meta_lr": 0.01, "mu_beta": 1.0,
            "gamma": 1.0, "upsilon": 0.5, "local_meta_lr": 0.01, "fetch_fraction": 0.5})
class FedASMU(Strategy):
    """Fully asynchronous mixing with a per-client, adaptive staleness-aware weight ``α`` (see the module docstring).

    Parameters
    ----------
    local_steps : int
        ``T``, local steps per task.
    mu_alpha : float
        ``μ_α > 0``.
    lam, sigma, iota : float
        Initial ``λ_i > 0``, ``σ_i ≥ 0``, ``ι_i ≥ 0`` of every client.
    server_meta_lr : float
        Learning rate of the server-side adaptation (≥ 0; 0 freezes ``λ, σ, ι``).
    mu_beta : float
        ``μ_β ≥ 0`` (0 disables the device fusion).
    gamma, upsilon : float
        Initial ``γ_i > 0``, ``υ_i ≥ 0`` of every device.
    local_meta_lr : float
        Learning rate of the device-side adaptation (≥ 0).
    fetch_fraction : float or "adaptive"
        ``f`` in (0, 1), or ``"adaptive"`` for the per-client UCB1 bandit over ``FETCH_ARMS``.
    max_staleness : int or None
        Updates with ``τ = v − o`` above this are rejected; ``None`` accepts any.
    server_adaptation : str
        How ``λ, σ, ι`` adapt: ``"validation"`` (gradient descent on the server's validation loss), ``"heuristic"``
        (on client-reported losses) or ``"off"``.
    validation_fn : callable, optional
        ``params -> (loss, grads)``: the server-side validation loss and its gradient per tensor, for
        ``server_adaptation="validation"`` (the engine passes it through :meth:`set_validation` when not given).
    non_trainable : sequence of int
        Tensors never mixed by ``α`` (they take the client's value).
    """

    name = "fedasmu"
    needs_model_store = True  # devices fetch the global model mid-task

    def __init__(self, *, local_steps: int = 20, mu_alpha: float = 10.0, lam: float = 1.0, sigma: float = 0.5,
                 iota: float = 0.0, server_meta_lr: float = 0.01, mu_beta: float = 1000.0, gamma: float = 1.0,
                 upsilon: float = 0.5, local_meta_lr: float = 0.01, fetch_fraction: float | str = 0.5,
                 max_staleness: int | None = None, server_adaptation: str = "validation",
                 validation_fn: ValidationFn | None = None, non_trainable: Sequence[int] = ()) -> None:
        super().__init__(non_trainable=non_trainable)
        self.local_steps = P.positive_int("local_steps", local_steps)
        self.mu_alpha = P.number("mu_alpha", mu_alpha, low=0.0, low_open=True)
        self.lam = P.number("lam", lam, low=0.0, low_open=True)
        self.sigma = P.number("sigma", sigma, low=0.0)
        self.iota = P.number("iota", iota, low=0.0)
        self.server_meta_lr = P.number("server_meta_lr", server_meta_lr, low=0.0)
        self.mu_beta = P.number("mu_beta", mu_beta, low=0.0)
        self.gamma = P.number("gamma", gamma, low=0.0, low_open=True)
        self.upsilon = P.number("upsilon", upsilon, low=0.0)
        self.local_meta_lr = P.number("local_meta_lr", local_meta_lr, low=0.0)
        if isinstance(fetch_fraction, str):
            self.fetch_fraction: float | str = P.choice("fetch_fraction", fetch_fraction, ("adaptive",))
        else:
            f = P.number("fetch_fraction", fetch_fraction, low=0.0, high=1.0, low_open=True)
            if f >= 1.0:
                raise ValueError(f"fetch_fraction must be in (0, 1) or 'adaptive', got {fetch_fraction!r}")
            self.fetch_fraction = f
        self.max_staleness = P.optional(P.non_negative_int, "max_staleness", max_staleness)
        self.server_adaptation = P.choice("server_adaptation", server_adaptation, SERVER_ADAPTATIONS)
        self.validation_fn: ValidationFn | None = None
        if validation_fn is not None:
            self.set_validation(validation_fn)
        self._server: dict[int, list[float]] = {}        # node → [λ, σ, ι]
        self._device: dict[int, list[float]] = {}        # node → [γ, υ]
        self._prev_loss: dict[int, float] = {}
        self._bandit: dict[int, dict[str, Any]] = {}     # node → {"counts", "sums", "scale"}
        self._last_alpha = 0.0

    # ----------------------------------------------------------------- read-only state
    @property
    def last_alpha(self) -> float:
        """The ``α`` of the last applied arrival (0.0 before the first): the FedASMU mixing weight metric."""
        return self._last_alpha

    def client_coefficients(self, node_id: int) -> dict[str, float]:
        """A client's current ``lam, sigma, iota`` (server) and ``gamma, upsilon`` (device)."""
        lam, sigma, iota = self._server[node_id]
        gamma, upsilon = self._device[node_id]
        return {"lam": lam, "sigma": sigma, "iota": iota, "gamma": gamma, "upsilon": upsilon}

    def config(self) -> dict[str, Any]:
        return {"local_steps": self.local_steps, "mu_alpha": self.mu_alpha, "lam": self.lam, "sigma": self.sigma,
                "iota": self.iota, "server_meta_lr": self.server_meta_lr, "mu_beta": self.mu_beta,
                "gamma": self.gamma, "upsilon": self.upsilon, "local_meta_lr": self.local_meta_lr,
                "fetch_fraction": self.fetch_fraction, "max_staleness": self.max_staleness,
                "server_adaptation": self.server_adaptation}

    @property
    def needs_validation(self) -> bool:
        return self.server_adaptation == "validation" and self.validation_fn is None

    def set_validation(self, fn: ValidationFn) -> None:
        if not callable(fn):
            raise ValueError(f"validation_fn must be a callable params -> (loss, grads), got {fn!r}")
        self.validation_fn = fn

    def gauges(self) -> dict[str, float]:
        return {**super().gauges(), "alpha": self._last_alpha}

    # ----------------------------------------------------------------- events
    def _adopt(self, client: ClientInfo) -> bool:
        new = super()._adopt(client)
        if new:
            self._init_client(client.node_id)
        return new

    def _init_client(self, node_id: int) -> None:
        self._server.setdefault(node_id, [self.lam, self.sigma, self.iota])
        self._device.setdefault(node_id, [self.gamma, self.upsilon])
        self._bandit.setdefault(node_id, {"counts": [0] * len(FETCH_ARMS), "sums": [0.0] * len(FETCH_ARMS),
                                          "scale": 0.0})

    def _on_start(self, now: float) -> None:
        if self.needs_validation:
            raise ValueError("FedASMU server_adaptation='validation' needs a validation function (fedhive builds it "
                             "from the task's server-side validation batch); this task has none: set "
                             "server_adaptation='heuristic' or 'off', or give the task a validation_batch()")
        self._server, self._device, self._prev_loss, self._bandit = {}, {}, {}, {}
        self._last_alpha = 0.0
        for node_id in self._clients:
            self._init_client(node_id)

    def on_idle(self, client: ClientInfo, now: float) -> Task | None:
        self._adopt(client)
        node = client.node_id
        self._init_client(node)
        gamma, upsilon = self._device[node]
        cfg: dict[str, Any] = {"local_steps": self.local_steps}
        if self.local_steps >= 2:
            if self.fetch_fraction == "adaptive":
                f = FETCH_ARMS[self._choose_arm(node)]
            else:
                f = float(self.fetch_fraction)
            cfg["fetch_step"] = fetch_step(self.local_steps, f)
            cfg["fetch_fraction"] = f
        cfg.update({"mu_beta": self.mu_beta, "gamma": gamma, "upsilon": upsilon, "local_meta_lr": self.local_meta_lr})
        return Task(node, self._version, cfg)

    def on_update(self, update: Update, sent: Dispatch, now: float) -> Outcome:
        node = update.node_id
        self._init_client(node)
        arm = -1
        if self.fetch_fraction == "adaptive" and "fetch_fraction" in sent.task.config:
            arm = FETCH_ARMS.index(sent.task.config["fetch_fraction"])
        self._client_feedback(node, arm, update.metrics)

        base = sent.task.version
        tau = self._version - base
        if self.max_staleness is not None and tau > self.max_staleness:
            return Outcome("rejected", "stale")
        t, delay = self._version + 1, tau + 1
        lam, sigma, iota = self._server[node]
        alpha = mixing_alpha(self._version, base, lam, sigma, iota, self.mu_alpha)
        old = self._params
        new = weighted_sum([(1.0 - alpha, old), (alpha, update.params)], indices=self._trainable)
        for i in self._fixed:
            new[i] = update.params[i].copy()
        if not self._commit(new):
            return Outcome("rejected", "diverged")
        self._last_alpha = alpha

        loss = _finite(update.metrics.get("loss"))
        if self.server_adaptation == "validation":
            self._meta_step(node, t, delay, old, update.params)
        elif self.server_adaptation == "heuristic" and loss is not None and node in self._prev_loss:
            sig = _clip1(self._prev_loss[node] - loss)
            lr = self.server_meta_lr
            self._set_server(node, lam + lr * sig, sigma - lr * sig, iota + lr * sig / delay)
        if loss is not None:
            self._prev_loss[node] = loss
        return APPLIED

    # ----------------------------------------------------------------- adaptation
    def _set_server(self, node: int, lam: float, sigma: float, iota: float) -> None:
        self._server[node] = [max(_LAM_MIN, lam), max(0.0, sigma), max(0.0, iota)]

    def _meta_step(self, node: int, t: int, delay: int, old: Params, client: Params) -> None:
        """One gradient step on ``L(w(α))`` w.r.t. ``(λ_i, σ_i, ι_i)`` (see the module docstring)."""
        lam, sigma, iota = self._server[node]
        xi = _xi_raw(t, delay, lam, sigma, iota)
        if xi <= 0.0:
            return
        loss, grads = self.validation_fn(self.params)  # type: ignore[misc]
        if _finite(loss) is None or len(grads) != len(old):
            return
        d_alpha = 0.0
        for i in self._trainable:
            g = np.asarray(grads[i], dtype=np.float64).reshape(-1)
            diff = (np.asarray(client[i], dtype=np.float64) - np.asarray(old[i], dtype=np.float64)).reshape(-1)
            d_alpha += float(np.dot(g, diff))
        if not math.isfinite(d_alpha):
            return
        d_xi = d_alpha * self.mu_alpha / (1.0 + self.mu_alpha * xi) ** 2
        base = 1.0 / (math.sqrt(t) * delay ** sigma)
        lr = self.server_meta_lr
        self._set_server(node, lam - lr * d_xi * base,                          # dξ/dλ = base
                         sigma + lr * d_xi * lam * base * math.log(delay),      # dξ/dσ = −λ·base·ln(delay)
                         iota - lr * d_xi)                                      # dξ/dι = 1

    def _client_feedback(self, node: int, arm: int, metrics: Mapping[str, Any]) -> None:
        """What the update says about local training: the device's ``γ, υ`` and the bandit's reward."""
        dev = self._device[node]
        gamma, upsilon = _finite(metrics.get("gamma")), _finite(metrics.get("upsilon"))
        if gamma is not None:
            dev[0] = max(_GAMMA_MIN, gamma)
        if upsilon is not None:
            dev[1] = max(0.0, upsilon)
        if arm < 0:
            return
        before, after, seconds = (_finite(metrics.get(k)) for k in ("loss_before", "loss", "seconds"))
        reward = 0.0
        if before is not None and after is not None and seconds is not None and seconds > 0.0:
            reward = (before - after) / seconds
            if not math.isfinite(reward):
                reward = 0.0
        b = self._bandit[node]
        b["counts"][arm] += 1
        b["sums"][arm] += reward
        b["scale"] = max(b["scale"], abs(reward))

    def _choose_arm(self, node: int) -> int:
        """UCB1 over ``FETCH_ARMS``: untried arms first, then the highest index; ties → lowest arm."""
        b = self._bandit[node]
        counts, sums, scale = b["counts"], b["sums"], b["scale"]
        for a, n in enumerate(counts):
            if n == 0:
                return a
        total = sum(counts)
        best, best_score = 0, -math.inf
        for a, n in enumerate(counts):
            score = sums[a] / n + scale * math.sqrt(2.0 * math.log(total) / n)
            if score > best_score:
                best, best_score = a, score
        return best

    # ----------------------------------------------------------------- persistence
    def _state(self) -> dict[str, Any]:
        return {
            "server": {k: list(v) for k, v in self._server.items()},
            "device": {k: list(v) for k, v in self._device.items()},
            "prev_loss": dict(self._prev_loss),
            "bandit": {k: {"counts": list(b["counts"]), "sums": list(b["sums"]), "scale": b["scale"]}
                       for k, b in self._bandit.items()},
            "last_alpha": self._last_alpha,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self._server = {int(k): [float(x) for x in v] for k, v in state["server"].items()}
        self._device = {int(k): [float(x) for x in v] for k, v in state["device"].items()}
        self._prev_loss = {int(k): float(v) for k, v in state["prev_loss"].items()}
        self._bandit = {int(k): {"counts": [int(x) for x in b["counts"]], "sums": [float(x) for x in b["sums"]],
                                 "scale": float(b["scale"])} for k, b in state["bandit"].items()}
        self._last_alpha = float(state["last_alpha"])
