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

Batches of clients: :meth:`LearningTask.train_batch` trains many :class:`TrainJob` s in one call. By default it
loops over :meth:`~LearningTask.train`; the built-in tasks override it with a batched engine (:class:`_BatchedModel`,
:func:`_run_chunk` and ``LearningTask._train_batched`` below) that stacks the clients' parameters and runs every
client's step as one batched forward and backward pass, which on a CPU core cuts the cost of a small-model update
about threefold (MNIST-1D) to tenfold (Synthetic).
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

__all__ = ["LearningTask", "TrainConfig", "TrainJob", "OnStep"]

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

# train_batch runs on one torch thread; see _one_torch_thread.
_THREADS_LOCK = threading.Lock()
_THREADS_USERS = 0
_THREADS_SAVED = 1


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


@dataclass(frozen=True, eq=False)
class TrainJob:
    """One client update for :meth:`LearningTask.train_batch`: the arguments of one :meth:`LearningTask.train` call.

    Attributes
    ----------
    params : sequence of numpy.ndarray
        Starting model in ``state_dict()`` order. Not modified.
    client : int
        Whose data to train on.
    config : mapping
        Training settings, as for :meth:`LearningTask.train` (``fetch_step`` is ignored: there is no ``on_step``).
    seed : int
        The only source of randomness of this job.

    Notes
    -----
    Compared by identity (``eq=False``): element-wise comparison of parameter arrays has no single truth value.
    """

    params: Sequence[np.ndarray]
    client: int
    config: Mapping[str, Any]
    seed: int


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run the body with torch's intra-op thread count set to 1, then put the caller's count back.

    torch keeps the count partly per thread (OpenMP) and partly per process (MKL, threads started later), so
    overlapping calls from several threads are reference-counted: every caller sets its own thread to 1 on entry,
    and only the last one to leave restores the count it found, so no caller's ops ever run multi-threaded
    because another caller left first. (A thread that left earlier during such an overlap stays at 1.)
    """
    global _THREADS_USERS, _THREADS_SAVED
    with _THREADS_LOCK:
        saved = torch.get_num_threads()
        if saved != 1:
            torch.set_num_threads(1)
        if _THREADS_USERS == 0:
            _THREADS_SAVED = saved
        _THREADS_USERS += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_USERS -= 1
            if _THREADS_USERS == 0 and _THREADS_SAVED != 1:
                torch.set_num_threads(_THREADS_SAVED)


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


# Clients trained together in one batched pass, at most; longer job lists run in chunks. For MNIST-1D on one core
# the time per update is flat from about 8 to 16 clients and creeps up beyond (activations outgrow the caches).
_MAX_BATCH_CLIENTS = 16

_SEED_MASK = (1 << 63) - 1


class _BatchedModel(ABC):
    """A task's model rewritten to train many clients at once, for :meth:`LearningTask._train_batched`.

    Every ``state_dict()`` entry must be a trainable parameter. A client's parameters are those entries, each
    reshaped (same element order, so no copy) to the 2-D per-client shape in :attr:`shapes`; a step stacks the
    active clients' parameters to ``(clients, *shape)`` tensors and runs :meth:`forward` once for all of them.
    """

    #: Per-client 2-D shape of each ``state_dict()`` entry as :meth:`forward` uses it (a reshape of the entry).
    shapes: list[tuple[int, int]]
    #: Most clients in one batched pass; longer job lists are trained in chunks of this many.
    max_clients: int = _MAX_BATCH_CLIENTS
    #: Chunks of fewer jobs than this run through :meth:`LearningTask.train` instead, for models whose batched
    #: step costs more than a plain one when there is nothing to batch.
    min_clients: int = 1

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Per-example input rows, prepared once per chunk from its clients' concatenated data (default: ``x``)."""
        return x

    @abstractmethod
    def forward(self, params: list[torch.Tensor], x: torch.Tensor, clients: int, batch: int) -> torch.Tensor:
        """Logits ``(clients, classes, batch)`` of ``clients * batch`` rows of :meth:`inputs` (client-major), each
        client's rows through its own slice of the stacked ``params``."""


@dataclass(frozen=True, eq=False)
class _ParsedJob:
    """A checked :class:`TrainJob`: its position in the job list, parsed config and its client's data size."""

    index: int
    params: Sequence[np.ndarray]
    client: int
    cfg: TrainConfig
    seed: int
    n: int  # training examples of the client
    batch: int  # examples per step: min(batch_size, n), as in train


class _BatchedOptimizer:
    """:class:`_Optimizer`'s update rules over stacked parameters, with per-client hyperparameters.

    Each rule is :class:`_Optimizer`'s arithmetic with the client's scalar broadcast over its slice, so a client
    whose ``momentum``, ``weight_decay`` or ``proximal_mu`` is 0 gets the plain update (adding an exact zero) while
    others in the same batch use theirs; a term nobody in the batch uses is skipped. A step updates a prefix of the
    clients (those still running); the parameters and state of the rest are left alone.
    """

    _BETA1, _BETA2, _EPS = _Optimizer._BETA1, _Optimizer._BETA2, _Optimizer._EPS

    def __init__(self, params: list[torch.Tensor], cfgs: list[TrainConfig]):
        self.params = params
        self.optimizer = cfgs[0].optimizer
        count = len(cfgs)

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32).view(count, 1, 1)

        self.neg_lr = column([-c.lr for c in cfgs])
        self.mu = column([c.proximal_mu for c in cfgs]) if any(c.proximal_mu for c in cfgs) else None
        self.wd = column([c.weight_decay for c in cfgs]) if any(c.weight_decay for c in cfgs) else None
        self.momentum: torch.Tensor | None = None
        if self.optimizer == "sgd" and any(c.momentum for c in cfgs):
            self.momentum = column([c.momentum for c in cfgs])
            self.buf = [torch.zeros_like(p) for p in params]
        if self.optimizer == "adam":
            self.m = [torch.zeros_like(p) for p in params]
            self.v = [torch.zeros_like(p) for p in params]
        self.start = [p.clone() for p in params] if self.mu is not None else None
        self.t = 0
        self._cache: dict[int, dict[str, list[torch.Tensor]]] = {}

    def _views(self, k: int) -> dict[str, list[torch.Tensor]]:
        """The first ``k`` clients' slices of the parameters, state and hyperparameters (cached: k changes rarely)."""
        views = self._cache.get(k)
        if views is None:
            n = len(self.params)

            def first(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
                return [t[:k] for t in tensors]

            views = {"params": first(self.params), "neg_lr": [self.neg_lr[:k]] * n}
            if self.mu is not None:
                assert self.start is not None
                views["start"], views["mu"] = first(self.start), [self.mu[:k]] * n
            if self.wd is not None:
                views["wd"] = [self.wd[:k]] * n
            if self.momentum is not None:
                views["buf"], views["momentum"] = first(self.buf), [self.momentum[:k]] * n
            if self.optimizer == "adam":
                views["m"], views["v"] = first(self.m), first(self.v)
            self._cache[k] = views
        return views

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor | None], active: int) -> None:
        """One update of the first ``active`` clients; ``grads`` cover at least those clients."""
        k = active
        views = self._views(k)
        params = views["params"]
        # A parameter the loss does not reach gets a zero gradient (it still feels weight decay and the prox term).
        g = [
            torch.zeros_like(p) if gi is None else (gi if gi.shape[0] == k else gi[:k])
            for p, gi in zip(params, grads)
        ]
        if self.mu is not None:
            diff = torch._foreach_sub(params, views["start"])
            torch._foreach_addcmul_(g, diff, views["mu"])
        if self.wd is not None:
            torch._foreach_addcmul_(g, params, views["wd"])
        self.t += 1
        if self.optimizer == "sgd":
            if self.momentum is not None:
                buf = views["buf"]
                if self.t == 1:
                    torch._foreach_copy_(buf, g)
                else:
                    torch._foreach_mul_(buf, views["momentum"])
                    torch._foreach_add_(buf, g)
                g = buf
            torch._foreach_addcmul_(params, g, views["neg_lr"])
            return
        m, v = views["m"], views["v"]
        torch._foreach_lerp_(m, g, 1 - self._BETA1)
        torch._foreach_mul_(v, self._BETA2)
        torch._foreach_addcmul_(v, g, g, value=1 - self._BETA2)
        bias1 = 1 - self._BETA1**self.t
        bias2 = 1 - self._BETA2**self.t
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, math.sqrt(bias2))
        torch._foreach_add_(denom, self._EPS)
        update = torch._foreach_div(m, denom)
        torch._foreach_addcmul_(params, update, [self.neg_lr[:k] / bias1] * len(params))


def _run_chunk(
    model: _BatchedModel,
    chunk: list[_ParsedJob],
    data: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
    state_shapes: list[tuple[int, ...]],
) -> list[tuple[list[np.ndarray], float, float]]:
    """Train the jobs of ``chunk`` together: same optimizer and ``batch_size``, sorted by ``local_steps`` descending.

    Returns, per job, its trained parameters (fresh float32 arrays in ``state_shapes``), its mean training loss
    and the loss of its first batch at the starting parameters.

    Each step runs the clients that still have a forward pass to do: since the chunk is sorted, they are a prefix,
    so finished clients drop out by slicing and cost nothing more. A zero-step job takes part in the first forward
    pass only (to measure ``loss_before``) and is never updated. Clients with fewer examples than the batch
    (``batch`` below the chunk's) fill the rest of their rows with copies of an example weighted zero, which
    contributes exactly nothing to their gradient.
    """
    count = len(chunk)
    batch = max(j.batch for j in chunk)
    steps = [j.cfg.local_steps for j in chunk]
    passes = [max(s, 1) for s in steps]  # forward passes: a zero-step job still measures its first batch

    # The chunk's distinct clients' data, concatenated; each job reads its client's rows at an offset.
    offsets: dict[int, int] = {}
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    rows = 0
    for j in chunk:
        if j.client not in offsets:
            offsets[j.client] = rows
            x, y = data[j.client]
            xs.append(x)
            ys.append(y)
            rows += int(x.shape[0])
    x_all = model.inputs(torch.cat(xs))
    y_all = torch.cat(ys)

    # Every job's batch schedule, drawn exactly as train draws it, laid out step-major so that the rows of a step's
    # running clients are one contiguous index vector.
    schedule = torch.zeros(passes[0], count, batch, dtype=torch.long)
    for c, j in enumerate(chunk):
        gen = torch.Generator()
        gen.manual_seed(j.seed & _SEED_MASK)
        needed = passes[c] * j.batch
        epochs = -(-needed // j.n)
        order = torch.cat([torch.randperm(j.n, generator=gen) for _ in range(epochs)])[:needed]
        order = order.view(passes[c], j.batch) + offsets[j.client]
        schedule[: passes[c], c, : j.batch] = order
        if j.batch < batch:
            schedule[: passes[c], c, j.batch :] = order[:, :1]
    labels = y_all[schedule]
    flat_schedule = schedule.view(passes[0], count * batch)
    # d(loss of client c)/d(loss of one of its examples): 1/batch, as a mean; 0 for the padding rows.
    uniform = all(j.batch == batch for j in chunk)
    weights = torch.full((count, batch), 1.0 / batch)
    for c, j in enumerate(chunk):
        if j.batch < batch:
            weights[c, : j.batch] = 1.0 / j.batch
            weights[c, j.batch :] = 0.0

    params = [
        torch.from_numpy(np.stack([np.asarray(j.params[i], dtype=np.float32).reshape(shape) for j in chunk]))
        for i, shape in enumerate(model.shapes)
    ]
    optimizer = _BatchedOptimizer(params, [j.cfg for j in chunk])
    losses = torch.zeros(passes[0], count)
    running, updating = count, count
    leaves: list[torch.Tensor] = []
    leaves_for = -1
    with torch.enable_grad():
        for s in range(passes[0]):
            while passes[running - 1] <= s:
                running -= 1
            while updating and steps[updating - 1] <= s:
                updating -= 1
            if running != leaves_for:
                # Leaves on the running clients' slices of the stacked params (shared storage): the optimizer's
                # in-place updates show through, so they are rebuilt only when a client drops out.
                leaves = [p[:running].detach().requires_grad_(True) for p in params]
                leaves_for = running
            x = x_all.index_select(0, flat_schedule[s, : running * batch])
            logits = model.forward(leaves, x, running, batch)
            per_example = F.cross_entropy(logits, labels[s, :running], reduction="none")
            # The clients' losses are independent, so one backward pass of their sum gives each client its own
            # gradient; weighting each example's loss by 1/batch makes every client's loss a mean.
            w = weights[:running]
            grads = torch.autograd.grad(per_example, leaves, w, allow_unused=True)
            with torch.no_grad():
                losses[s, :running] = per_example.mean(1) if uniform else (per_example * w).sum(1)
            if updating:
                optimizer.step(grads, updating)

    arrays = [p.numpy() for p in params]
    loss_rows = losses.numpy()
    results = []
    for c in range(count):
        trained = [a[c].reshape(shape).copy() for a, shape in zip(arrays, state_shapes)]
        before = float(loss_rows[0, c])
        mean = float(loss_rows[: steps[c], c].mean(dtype=np.float64)) if steps[c] else before
        results.append((trained, mean, before))
    return results


def _job_list(jobs: Sequence[TrainJob]) -> list[TrainJob]:
    job_list = list(jobs)
    for i, job in enumerate(job_list):
        if not isinstance(job, TrainJob):
            raise TypeError(f"jobs[{i}] must be a TrainJob, got {type(job).__name__}")
    return job_list


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
        self._batched: _BatchedModel | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Thread-local replicas and locks cannot cross process boundaries (e.g. a task shipped to a Ray worker);
        # drop them and let the receiver rebuild them lazily.
        state = self.__dict__.copy()
        for key in ("_local", "_meta_lock", "_meta", "_device_cache", "_device_lock", "_eval_cache", "_batched"):
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

    def train_batch(self, jobs: Sequence[TrainJob]) -> list[tuple[list[np.ndarray], dict[str, Any]]]:
        """Train every job of ``jobs``, each as one :meth:`train` call would, and return their results in order.

        This default loops over :meth:`train` on one torch thread, so any task supports it unchanged; the built-in
        tasks override it to train many clients in one batched forward and backward pass per step (several times
        fewer torch operations per update, which is what small models on a CPU core pay for). A task whose model is
        big enough to want several intra-op threads per update can override it too.

        Parameters
        ----------
        jobs : sequence of TrainJob
            The updates to run: starting params, client, config and seed of each. Jobs may differ in everything,
            including client, ``local_steps`` (0 allowed), ``lr``, ``optimizer`` and ``batch_size``.

        Returns
        -------
        list of (params, metrics)
            One entry per job, in the order of ``jobs``: what ``train(job.params, job.client, job.config,
            seed=job.seed)`` returns. An empty list for no jobs.

        Notes
        -----
        The contract, for this default and every override:

        * **Deterministic:** the whole result is a function of the ``jobs`` list alone: the same jobs in the same
          order give bit-identical arrays and metrics, whatever the global RNG state, the torch thread count set by
          the caller, or the calls made before. (The default and the built-in overrides run on one torch thread
          for the duration of the call to guarantee this, and then put the caller's count back.) Reordering the
          jobs permutes the results but may change their last bits: a job's neighbours in a batch may change the
          rounding of the batched kernels.
        * **Same computation as train:** each job's result is :meth:`train`'s for that job up to float rounding:
          the same mini-batches in the same order (from a generator seeded with the job's seed alone), the same
          optimizer rules and hyperparameters, the same number of steps, and the same metric keys (``loss``,
          ``loss_before``, ``steps``, ``num_examples``).
        * **No mid-training fetch:** there is no ``on_step``, so ``fetch_step`` in a job's config is ignored (the
          virtual-time simulator runs FedASMU's fetch as two jobs instead: the steps before the fetch, then the
          rest from the fetched model).
        * Returned arrays are fresh float32 arrays, shared with nothing (not with each other, not with torch).

        Raises
        ------
        TypeError
            An entry of ``jobs`` is not a :class:`TrainJob`.
        ValueError
            Whatever :meth:`train` rejects (bad client, seed, config or params), for any job.
        """
        job_list = _job_list(jobs)
        # One torch thread, as in the batched overrides: train's last bits can depend on the thread count.
        with _one_torch_thread():
            return [self.train(job.params, job.client, job.config, seed=job.seed) for job in job_list]

    def _batched_model(self, owner: type, factory: Callable[[], _BatchedModel]) -> _BatchedModel | None:
        """The batched form of ``owner``'s model (built once by ``factory``), or None where it would be wrong.

        Batched training reproduces :meth:`train` for the model ``owner.build_model`` returns and the default loss,
        on the CPU; a subclass that changes the model, the loss or training itself, or a task on another device,
        gets None, and callers fall back to the loop over :meth:`train`.
        """
        cls = type(self)
        if (
            self.device.type != "cpu"
            or cls.train is not LearningTask.train
            or cls.loss_fn is not LearningTask.loss_fn
            or cls.build_model is not owner.build_model
            or self.non_trainable()
        ):
            return None
        model = self._batched
        if model is None:
            model = factory()
            shapes = self._replica().shapes
            if len(model.shapes) != len(shapes) or any(
                math.prod(a) != math.prod(b) for a, b in zip(model.shapes, shapes)
            ):
                raise AssertionError(f"batched shapes {model.shapes} do not match the model's {shapes}")
            self._batched = model
        return model

    def _train_batched(
        self, jobs: Sequence[TrainJob], model: _BatchedModel
    ) -> list[tuple[list[np.ndarray], dict[str, Any]]]:
        """:meth:`train_batch` through ``model``: check every job first, then train them in batched chunks.

        Jobs are grouped by ``(optimizer, batch_size)`` in order of first appearance; each group is sorted by
        ``local_steps`` (descending, stable) and trained in chunks of at most ``model.max_clients`` clients, so that
        clients finishing early leave the batch and similar step counts share a chunk; a chunk smaller than
        ``model.min_clients`` goes through :meth:`train`. All of this depends on the job list alone, hence the
        determinism. Runs on one torch thread (see :func:`_one_torch_thread`).
        """
        job_list = _job_list(jobs)
        if not job_list:
            return []
        shapes = self._replica().shapes
        data: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        parsed: list[_ParsedJob] = []
        for i, job in enumerate(job_list):
            try:
                client = self._check_client(job.client)
                if not _is_int(job.seed):
                    raise ValueError(f"seed must be an int, got {job.seed!r}")
                cfg = TrainConfig.parse(job.config, self.default_lr, self.default_batch_size)
                if len(job.params) != len(shapes):
                    raise ValueError(
                        f"expected {len(shapes)} parameter arrays (state_dict order), got {len(job.params)}"
                    )
                for k, (a, shape) in enumerate(zip(job.params, shapes)):
                    if np.shape(a) != shape:
                        raise ValueError(f"parameter array {k} has shape {np.shape(a)}, the model expects {shape}")
                if client not in data:
                    data[client] = self._train_tensors(client)
                n = int(data[client][0].shape[0])
                if n == 0:
                    raise ValueError(f"client {client} has no training examples")
            except ValueError as exc:
                raise ValueError(f"jobs[{i}]: {exc}") from exc
            parsed.append(_ParsedJob(i, job.params, client, cfg, int(job.seed), n, min(cfg.batch_size, n)))

        groups: dict[tuple[str, int], list[_ParsedJob]] = {}
        for p in parsed:
            groups.setdefault((p.cfg.optimizer, p.cfg.batch_size), []).append(p)
        results: list[tuple[list[np.ndarray], dict[str, Any]] | None] = [None] * len(parsed)
        with _one_torch_thread():
            for group in groups.values():
                group.sort(key=lambda p: -p.cfg.local_steps)  # stable: ties keep the order of the job list
                for lo in range(0, len(group), model.max_clients):
                    chunk = group[lo : lo + model.max_clients]
                    if len(chunk) < model.min_clients:
                        for p in chunk:
                            job = job_list[p.index]
                            results[p.index] = self.train(job.params, job.client, job.config, seed=job.seed)
                        continue
                    for p, (trained, loss, before) in zip(chunk, _run_chunk(model, chunk, data, shapes)):
                        metrics = {
                            "loss": loss,
                            "loss_before": before,
                            "steps": p.cfg.local_steps,
                            "num_examples": self.num_examples(p.client),
                        }
                        results[p.index] = (trained, metrics)
        return results  # type: ignore[return-value]

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
