"""The learning-task contract: a model, its data split among clients, and fast local training and evaluation.

A :class:`LearningTask` is what every engine (virtual time, local cluster, real devices) trains. The rest of
fedhive only ever sees models as ``list[np.ndarray]`` (float32, in ``model.state_dict()`` order), so strategies stay
free of torch; this module is the one place where those arrays meet a torch model.

Local training is on the hot path of the simulator (thousands of client updates per run), so :meth:`LearningTask.train`
is written for small models on one CPU core: data stays as preloaded tensors, there is no DataLoader, one model
instance per thread is reused, and parameters are copied in place instead of rebuilding modules.

Determinism: :meth:`LearningTask.train` draws its mini-batches from a private ``torch.Generator`` seeded from its
``seed`` argument only, and (unless a task declares its model free of randomness) runs the model under a private
torch RNG state, so its result is bit-identical for identical inputs, whatever ran before it, and the global torch
RNG is left as it was.
"""

from __future__ import annotations

import math
import numbers
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedhive.tasks.partition import PARTITIONS

__all__ = ["LearningTask", "TrainConfig", "OnStep"]

#: ``on_step(step, params) -> list[np.ndarray] | None``; see :meth:`LearningTask.train`.
OnStep = Callable[[int, list[np.ndarray]], "Sequence[np.ndarray] | None"]

# Evaluation runs in chunks of this many examples: large enough that per-call overhead vanishes, small enough that
# activations of a small model stay in cache-friendly sizes.
_EVAL_BATCH = 4096

# Device-resident copies of client data kept per task when training off the CPU.
_DEVICE_CACHE_CLIENTS = 64

_OPTIMIZERS = ("sgd", "adam")

# Serialises training of models that use torch's (process-wide) RNG; see LearningTask.model_uses_rng.
_GLOBAL_RNG_LOCK = threading.RLock()


def _is_int(value: Any) -> bool:
    """True for Python and numpy integers, false for bools (``True`` is an int to Python, never a step count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class TrainConfig:
    """The training settings :meth:`LearningTask.train` understands, parsed and checked from a config mapping."""

    local_steps: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    weight_decay: float
    proximal_mu: float
    fetch_step: int | None

    @classmethod
    def parse(cls, config: Mapping[str, Any], default_lr: float, default_batch_size: int) -> TrainConfig:
        """Read and validate the known keys of ``config``; unknown keys are ignored (strategies add their own).

        Raises
        ------
        ValueError
            Naming the key, the bad value and what is accepted.
        """
        if "local_steps" not in config:
            raise ValueError("config must contain 'local_steps' (an int >= 0, the number of SGD steps to run)")

        def get_int(key: str, default: int | None, low: int) -> int:
            value = config.get(key, default)
            # Configs that went through JSON or TOML may carry 20.0 for 20; accept integral floats.
            if _is_real(value) and not _is_int(value) and float(value).is_integer():
                value = int(value)
            if not _is_int(value) or value < low:
                raise ValueError(f"config['{key}'] must be an int >= {low}, got {value!r}")
            return int(value)

        def get_float(key: str, default: float, low: float, high: float = math.inf, strict: bool = False) -> float:
            value = config.get(key, default)
            ok = _is_real(value) and math.isfinite(float(value))
            ok = ok and (float(value) > low if strict else float(value) >= low) and float(value) < high
            if not ok:
                bound = f"> {low}" if strict else f">= {low}"
                if high != math.inf:
                    bound += f" and < {high}"
                raise ValueError(f"config['{key}'] must be a finite number {bound}, got {value!r}")
            return float(value)

        local_steps = get_int("local_steps", None, 0)
        batch_size = get_int("batch_size", default_batch_size, 1)
        lr = get_float("lr", default_lr, 0.0, strict=True)
        optimizer = config.get("optimizer", "sgd")
        if not isinstance(optimizer, str) or optimizer.lower() not in _OPTIMIZERS:
            raise ValueError(f"config['optimizer'] must be one of {list(_OPTIMIZERS)}, got {optimizer!r}")
        momentum = get_float("momentum", 0.0, 0.0, 1.0)
        weight_decay = get_float("weight_decay", 0.0, 0.0)
        proximal_mu = get_float("proximal_mu", 0.0, 0.0)
        fetch_step = config.get("fetch_step")
        if fetch_step is not None:
            if not _is_int(fetch_step):
                raise ValueError(
                    f"config['fetch_step'] must be an int in [0, local_steps) or absent, got {fetch_step!r}"
                )
            fetch_step = int(fetch_step)
            if not 0 <= fetch_step < local_steps:
                # Out of range means "no fetch in this task" (e.g. a FedASMU fetch planned past the end); not an error.
                fetch_step = None
        return cls(local_steps, batch_size, lr, optimizer.lower(), momentum, weight_decay, proximal_mu, fetch_step)


class _Replica:
    """One model instance with cached views of its state, owned by one thread."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.model = model
        state = model.state_dict(keep_vars=False)
        # state_dict() tensors share storage with the live parameters and buffers, so writing into them (or into
        # numpy views of them on the CPU) updates the model without rebuilding anything.
        self.tensors: list[torch.Tensor] = [t for t in state.values()]
        self.shapes: list[tuple[int, ...]] = [tuple(t.shape) for t in self.tensors]
        self.views: list[np.ndarray] | None = (
            [t.numpy() for t in self.tensors] if device.type == "cpu" else None
        )
        self.params: list[nn.Parameter] = [p for p in model.parameters() if p.requires_grad]

    def load(self, arrays: Sequence[np.ndarray]) -> None:
        """Copy ``arrays`` into the model in place, checking count and shapes."""
        if len(arrays) != len(self.tensors):
            raise ValueError(f"expected {len(self.tensors)} parameter arrays (state_dict order), got {len(arrays)}")
        for i, (a, shape) in enumerate(zip(arrays, self.shapes)):
            a = np.asarray(a)
            # Compare shapes explicitly: copyto would silently broadcast a wrong-shaped array.
            if a.shape != shape:
                raise ValueError(f"parameter array {i} has shape {a.shape}, the model expects {shape}")
        if self.views is not None:
            # numpy copy into a view of the tensor: no torch wrapper needed, accepts read-only inputs (frombuffer)
            # without torch's non-writable warning, and casts float32 into integer buffers such as BatchNorm's count.
            for view, a in zip(self.views, arrays):
                np.copyto(view, a, casting="unsafe")
        else:
            with torch.no_grad():
                for t, a in zip(self.tensors, arrays):
                    t.copy_(torch.tensor(np.asarray(a)), non_blocking=False)

    def dump(self) -> list[np.ndarray]:
        """Fresh float32 copies of the model state; they share no memory with torch."""
        if self.views is not None:
            return [v.astype(np.float32, copy=True) for v in self.views]
        return [t.detach().to("cpu", dtype=torch.float32, copy=True).numpy() for t in self.tensors]


class _Optimizer:
    """Plain SGD (momentum, L2 weight decay) or Adam over a fixed parameter list, in a few foreach kernels.

    Same arithmetic as ``torch.optim.SGD`` (dampening 0, no Nesterov) and ``torch.optim.Adam`` (betas 0.9/0.999,
    eps 1e-8, L2 weight decay added to the gradient), minus their per-step bookkeeping, which costs more than the
    update itself for models of a few thousand parameters. State lives for one :meth:`LearningTask.train` call.
    """

    _BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8

    def __init__(self, params: list[nn.Parameter], cfg: TrainConfig):
        self.params = params
        self.cfg = cfg
        self.t = 0
        self.buf: list[torch.Tensor] | None = None  # SGD momentum buffers
        self.m: list[torch.Tensor] | None = None  # Adam moments
        self.v: list[torch.Tensor] | None = None

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor | None], start: list[torch.Tensor] | None) -> None:
        cfg = self.cfg
        # A parameter the loss does not reach gets a zero gradient (it still feels weight decay and the prox term).
        g = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(self.params, grads)]
        if start is not None:
            # FedProx: the gradient of (mu/2)||w - w_start||^2 is mu * (w - w_start).
            diff = torch._foreach_sub(self.params, start)
            torch._foreach_add_(g, diff, alpha=cfg.proximal_mu)
        if cfg.weight_decay:
            torch._foreach_add_(g, self.params, alpha=cfg.weight_decay)
        self.t += 1
        if cfg.optimizer == "sgd":
            if cfg.momentum:
                if self.buf is None:
                    self.buf = [gi.clone() for gi in g]
                else:
                    torch._foreach_mul_(self.buf, cfg.momentum)
                    torch._foreach_add_(self.buf, g)
                g = self.buf
            torch._foreach_add_(self.params, g, alpha=-cfg.lr)
            return
        if self.m is None:
            self.m = [torch.zeros_like(p) for p in self.params]
            self.v = [torch.zeros_like(p) for p in self.params]
        assert self.v is not None
        torch._foreach_lerp_(self.m, g, 1 - self._BETA1)
        torch._foreach_mul_(self.v, self._BETA2)
        torch._foreach_addcmul_(self.v, g, g, value=1 - self._BETA2)
        bias1 = 1 - self._BETA1**self.t
        bias2 = 1 - self._BETA2**self.t
        denom = torch._foreach_sqrt(self.v)
        torch._foreach_div_(denom, math.sqrt(bias2))
        torch._foreach_add_(denom, self._EPS)
        torch._foreach_addcdiv_(self.params, self.m, denom, value=-cfg.lr / bias1)


class LearningTask(ABC):
    """A model, training data split among ``num_clients`` clients, held-out data, and local train/evaluate.

    Subclasses provide :meth:`build_model`, :meth:`num_examples`, :meth:`client_data`, :meth:`test_data` and
    :meth:`validation_batch`, and set :attr:`name` and :attr:`default_lr`; training and evaluation come from here.

    Parameters
    ----------
    num_clients : int
        Number of clients the training data is split among, >= 1.
    partition : {"iid", "dirichlet", "size"}, optional
        How the training data is split (default ``"dirichlet"``): equal random parts, per-class Dirichlet label
        skew (which also makes sizes unequal), or IID content with log-normal sizes. Tasks that generate data per
        client document what each name means for them.
    alpha : float, optional
        Dirichlet concentration for ``partition="dirichlet"`` (default 0.5; smaller is more skewed), > 0.
    seed : int, optional
        Seed of the partition (and of any per-client data generation), >= 0 (default 0).
    device : str or torch.device, optional
        Where training and evaluation run (default ``"cpu"``). Parameters still come in and go out as numpy.

    Notes
    -----
    One task object may be used from several threads: each thread trains its own model replica. Calls are
    otherwise independent of each other: results depend only on their arguments.
    """

    #: Short name used by :func:`fedhive.tasks.load_task` and in reports.
    name: str = ""
    #: Learning rate used when a config has no ``lr``.
    default_lr: float = 0.1
    #: Mini-batch size used when a config has no ``batch_size``.
    default_batch_size: int = 32
    #: Whether the model draws random numbers in training (dropout, noise). If so, :meth:`train` runs it under a
    #: private torch RNG state seeded from ``seed`` and restores the global state afterwards; torch's CPU generator
    #: is process-wide, so those sections are serialised across threads. Tasks whose models are deterministic
    #: (both built-ins) set this to False and train in parallel threads without any lock.
    model_uses_rng: bool = True

    def __init__(
        self,
        *,
        num_clients: int,
        partition: str = "dirichlet",
        alpha: float = 0.5,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ):
        if not _is_int(num_clients) or num_clients < 1:
            raise ValueError(f"num_clients must be an int >= 1, got {num_clients!r}")
        if not isinstance(partition, str) or partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {list(PARTITIONS)}, got {partition!r}")
        if not _is_real(alpha) or not math.isfinite(float(alpha)) or float(alpha) <= 0:
            raise ValueError(f"alpha (Dirichlet concentration) must be a finite number > 0, got {alpha!r}")
        if not _is_int(seed) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but torch sees no CUDA device; use 'cpu'")
        self.num_clients = int(num_clients)
        self.partition = partition
        self.alpha = float(alpha)
        self.seed = int(seed)
        self.device = dev
        self._init_runtime()

    def _init_runtime(self) -> None:
        """Per-process caches; rebuilt rather than copied when a task object is sent to another process."""
        self._local = threading.local()
        self._meta_lock = threading.Lock()
        self._meta: tuple[list[str], list[int]] | None = None
        self._device_cache: OrderedDict[Any, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._device_lock = threading.Lock()
        self._eval_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Thread-local replicas and locks cannot cross process boundaries (e.g. a task shipped to a Ray worker);
        # drop them and let the receiver rebuild them lazily.
        state = self.__dict__.copy()
        for key in ("_local", "_meta_lock", "_meta", "_device_cache", "_device_lock", "_eval_cache"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_clients={self.num_clients}, partition={self.partition!r}, "
            f"alpha={self.alpha}, seed={self.seed})"
        )

    # ------------------------------------------------------------------ what subclasses provide

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model; its initial weights depend only on the torch RNG state (``torch.manual_seed``)."""

    @abstractmethod
    def num_examples(self, client: int) -> int:
        """Number of training examples held by ``client``."""

    @abstractmethod
    def client_data(self, client: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``client``'s share of the training set as ``(inputs, labels)`` CPU tensors. Treat them as read-only."""

    @abstractmethod
    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out test set as ``(inputs, labels)`` CPU tensors."""

    def validation_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A small server-side validation batch, disjoint from the client partitions and the test set, or None."""
        return None

    def loss_fn(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch; cross-entropy unless a task overrides it."""
        return F.cross_entropy(output, target)

    # ------------------------------------------------------------------ model bookkeeping

    def _check_client(self, client: int) -> int:
        if not _is_int(client) or not 0 <= client < self.num_clients:
            raise ValueError(f"client must be an int in [0, {self.num_clients}), got {client!r}")
        return int(client)

    def _build_seeded(self, seed: int) -> nn.Module:
        """Build the model under a private RNG state so the global torch RNG is untouched."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.build_model()

    def _replica(self) -> _Replica:
        replica = getattr(self._local, "replica", None)
        if replica is None:
            # The replica's own initial weights never matter (every call loads its params first).
            replica = _Replica(self._build_seeded(0).to(self.device), self.device)
            self._local.replica = replica
        return replica

    def _metadata(self) -> tuple[list[str], list[int]]:
        with self._meta_lock:
            if self._meta is None:
                model = self._build_seeded(0)
                param_ids = {id(p) for p in model.parameters()}
                state = model.state_dict(keep_vars=True)
                names = list(state.keys())
                buffers = [i for i, t in enumerate(state.values()) if id(t) not in param_ids]
                self._meta = (names, buffers)
            return self._meta

    def initial_params(self, seed: int = 0) -> list[np.ndarray]:
        """The model's initial weights for ``seed`` as float32 arrays in ``state_dict()`` order.

        The same seed always gives the same arrays; the global torch RNG is left as it was.
        """
        if not _is_int(seed):
            raise ValueError(f"seed must be an int, got {seed!r}")
        model = self._build_seeded(int(seed))
        return [t.detach().to("cpu", dtype=torch.float32, copy=True).numpy() for t in model.state_dict().values()]

    def param_names(self) -> list[str]:
        """The ``state_dict()`` keys, in the order of every parameter list."""
        return list(self._metadata()[0])

    def non_trainable(self) -> list[int]:
        """Indices of ``state_dict()`` entries that are buffers (e.g. BatchNorm statistics), not parameters."""
        return list(self._metadata()[1])

    def model_bytes(self) -> int:
        """Bytes of one model on the wire: every ``state_dict()`` entry as float32."""
        return sum(int(np.prod(s, dtype=np.int64)) * 4 for s in self._replica().shapes)

    # ------------------------------------------------------------------ training

    def _train_tensors(self, client: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.client_data(client)
        if self.device.type == "cpu":
            return x, y
        # Keep recently used clients resident on the accelerator instead of copying their data every task.
        with self._device_lock:
            hit = self._device_cache.get(client)
            if hit is not None:
                self._device_cache.move_to_end(client)
                return hit
        hit = (x.to(self.device), y.to(self.device))
        with self._device_lock:
            self._device_cache[client] = hit
            while len(self._device_cache) > _DEVICE_CACHE_CLIENTS:
                self._device_cache.popitem(last=False)
        return hit

    @contextmanager
    def _private_rng(self, seed: int) -> Iterator[None]:
        """Run the body under a torch RNG state derived from ``seed``, then restore the global state.

        Only models that draw random numbers themselves (dropout) notice; it keeps them deterministic too.
        A no-op for tasks with :attr:`model_uses_rng` False.
        """
        if not self.model_uses_rng:
            yield
            return
        with _GLOBAL_RNG_LOCK:
            with self._seeded_global_rng(seed):
                yield

    @contextmanager
    def _seeded_global_rng(self, seed: int) -> Iterator[None]:
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        # A different stream from the batch-order generator, so the two are not correlated.
        derived = (seed * 6364136223846793005 + 1442695040888963407) & ((1 << 63) - 1)
        torch.default_generator.manual_seed(derived)
        if cuda_state is not None:
            torch.cuda.manual_seed(derived)
        try:
            yield
        finally:
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state, self.device)

    def _probe_loss(self, replica: _Replica, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training-mode loss of one batch without changing the model.

        Computed exactly as a training step computes it (same mode, autograd on, so the same kernels and the same
        rounding), but with buffers such as BatchNorm running statistics put back afterwards.
        """
        buffers = [(replica.tensors[i], replica.tensors[i].clone()) for i in self.non_trainable()]
        loss = self.loss_fn(replica.model(x), y).detach()
        with torch.no_grad():
            for live, saved in buffers:
                live.copy_(saved)
        return loss

    def train(
        self,
        params: Sequence[np.ndarray],
        client: int,
        config: Mapping[str, Any],
        *,
        seed: int,
        on_step: OnStep | None = None,
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        """Run exactly ``config["local_steps"]`` optimiser steps on ``client``'s data, starting from ``params``.

        Mini-batches come from a stream of per-epoch random permutations of the client's data (each example once
        per epoch), drawn from a ``torch.Generator`` seeded with ``seed`` alone; a batch may straddle two epochs so
        every step sees a full batch. When the client has fewer examples than ``batch_size``, each step uses all
        of them.

        Parameters
        ----------
        params : sequence of numpy.ndarray
            Starting model, in ``state_dict()`` order (as from :meth:`initial_params`). Not modified.
        client : int
            Whose data to train on, in ``[0, num_clients)``.
        config : mapping
            ``local_steps`` (required, int >= 0); ``batch_size`` (default :attr:`default_batch_size`); ``lr``
            (default :attr:`default_lr`); ``optimizer`` (``"sgd"`` or ``"adam"``, default ``"sgd"``); ``momentum``
            (SGD only, default 0); ``weight_decay`` (default 0); ``proximal_mu`` (FedProx: adds
            ``mu/2 * ||w - w_start||^2`` to the loss, default 0); ``fetch_step`` (see ``on_step``). Other keys are
            ignored.
        seed : int
            The only source of randomness of this call.
        on_step : callable, optional
            If given and ``config["fetch_step"]`` is an int in ``[0, local_steps)``, called once as
            ``on_step(fetch_step, params)`` right before that step, with a copy of the current model. If it returns
            a list of arrays, they replace the model (optimiser state is kept, and the proximal term still pulls
            toward the original ``params``). This is FedASMU's mid-training fetch.

        Returns
        -------
        params : list of numpy.ndarray
            The trained model, fresh float32 arrays in ``state_dict()`` order.
        metrics : dict
            ``loss`` (mean training loss of the steps; the task loss only, without the proximal term; with zero
            steps, ``loss_before``), ``loss_before`` (loss of the first batch at the starting params), ``steps`` and
            ``num_examples`` (of ``client``).
        """
        client = self._check_client(client)
        if not _is_int(seed):
            raise ValueError(f"seed must be an int, got {seed!r}")
        cfg = TrainConfig.parse(config, self.default_lr, self.default_batch_size)
        replica = self._replica()
        replica.load(params)
        model = replica.model
        x_all, y_all = self._train_tensors(client)
        n = int(x_all.shape[0])
        if n == 0:
            raise ValueError(f"client {client} has no training examples")
        steps = cfg.local_steps
        bs = min(cfg.batch_size, n)

        # The whole batch schedule up front: ceil(steps * bs / n) permutations, concatenated (at least one batch,
        # so that loss_before exists even for zero steps).
        gen = torch.Generator()
        gen.manual_seed(int(seed) & ((1 << 63) - 1))
        needed = max(steps, 1) * bs
        epochs = -(-needed // n)
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(epochs)])[:needed]
        if self.device.type != "cpu":
            order = order.to(self.device)

        trainable = replica.params
        start: list[torch.Tensor] | None = None
        if cfg.proximal_mu > 0:
            start = [p.detach().clone() for p in trainable]
        optimizer = _Optimizer(trainable, cfg)

        losses: list[torch.Tensor] = []
        loss_before: torch.Tensor | None = None
        model.train()
        with self._private_rng(int(seed)):
            if steps == 0 or cfg.fetch_step == 0:
                # The first batch's loss must be measured at the starting params, before any fetch replaces them.
                first = order[:bs]
                loss_before = self._probe_loss(replica, x_all.index_select(0, first), y_all.index_select(0, first))
            for step in range(steps):
                if step == cfg.fetch_step and on_step is not None:
                    fetched = on_step(step, replica.dump())
                    if fetched is not None:
                        replica.load(fetched)
                idx = order[step * bs : (step + 1) * bs]
                loss = self.loss_fn(model(x_all.index_select(0, idx)), y_all.index_select(0, idx))
                # autograd.grad rather than backward(): no .grad fields to zero and accumulate into, which is a
                # measurable share of a step for models this small.
                grads = list(torch.autograd.grad(loss, trainable, allow_unused=True))
                optimizer.step(grads, start)
                losses.append(loss.detach())

        if loss_before is None:
            loss_before = losses[0]
        before = float(loss_before)
        mean_loss = float(torch.stack(losses).mean()) if losses else before
        metrics = {
            "loss": mean_loss,
            "loss_before": before,
            "steps": steps,
            "num_examples": self.num_examples(client),
        }
        return replica.dump(), metrics

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, params: Sequence[np.ndarray], split: str = "test") -> dict[str, Any]:
        """Loss and accuracy of ``params`` on the test set or the validation batch.

        Parameters
        ----------
        params : sequence of numpy.ndarray
            Model in ``state_dict()`` order.
        split : {"test", "validation"}, optional
            Which held-out data (default ``"test"``).

        Returns
        -------
        dict
            ``loss`` (mean over examples), ``accuracy`` (fraction of argmax predictions equal to the label) and
            ``num_examples``.
        """
        if split not in ("test", "validation"):
            raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
        x_all, y_all = self._eval_tensors(split)
        replica = self._replica()
        replica.load(params)
        model = replica.model
        model.eval()
        n = int(x_all.shape[0])
        total_loss = 0.0
        correct = 0
        with torch.no_grad():
            for lo in range(0, n, _EVAL_BATCH):
                x, y = x_all[lo : lo + _EVAL_BATCH], y_all[lo : lo + _EVAL_BATCH]
                out = model(x)
                total_loss += float(self.loss_fn(out, y)) * int(y.shape[0])
                correct += int((out.argmax(dim=1) == y).sum())
        return {
            "loss": total_loss / n if n else float("nan"),
            "accuracy": correct / n if n else float("nan"),
            "num_examples": n,
        }

    def _eval_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out data of ``split`` on the task's device, fetched once."""
        hit = self._eval_cache.get(split)
        if hit is None:
            data = self.test_data() if split == "test" else self.validation_batch()
            if data is None:
                raise ValueError(f"task {self.name!r} has no validation batch; use split='test'")
            hit = (data[0].to(self.device), data[1].to(self.device))
            self._eval_cache[split] = hit
        return hit
