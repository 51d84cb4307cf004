"""The learning-task contract: a model, its data split among clients, and fast local training and evaluation.

A :class:`LearningTask` is what every engine (virtual time, local cluster, real devices) trains. The rest of
fedhive only ever sees models as ``list[np.ndarray]`` (float32, in ``model.state_dict()`` order), so strategies stay
free of torch; this package is the one place where those arrays meet a torch model.

Local training is on the hot path of the simulator (thousands of client updates per run), so :meth:`LearningTask.train`
is written for small models on one CPU core: data stays as preloaded tensors, there is no DataLoader, one model
instance per thread is reused, and parameters are copied in place instead of rebuilding modules.

Determinism: :meth:`LearningTask.train` draws its mini-batches from a private ``torch.Generator`` seeded from its
``seed`` argument only, and (unless a task declares its model free of randomness) runs the model under a private
torch RNG state, so its result is bit-identical for identical inputs, whatever ran before it, and the global torch
RNG is left as it was.

Batches of clients: :meth:`LearningTask.train_batch` trains many :class:`TrainJob` s in one call. By default it
loops over :meth:`~LearningTask.train`; the built-in tasks override it with the batched engine of
:mod:`fedhive.tasks.batched`, which stacks the clients' parameters and runs every client's step as one batched
forward and backward pass.

The parts live in their own modules: the config keys and jobs in :mod:`fedhive.tasks.config`, the optimiser rules
(shared by both training paths) in :mod:`fedhive.tasks.optimizers`, the mini-batch schedule (likewise shared) in
:mod:`fedhive.tasks.schedule`, and replicas, caches and guards of torch's process-wide state in
:mod:`fedhive.tasks.runtime`. :class:`TrainConfig` and :class:`TrainJob` are importable from here too.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedhive.tasks.batched import _BatchedModel, _train_batched
from fedhive.strategies.params import integer, number
from fedhive.tasks.config import TrainConfig, TrainJob, _job_list
from fedhive.tasks.optimizers import _Optimizer
from fedhive.tasks.partition import PARTITIONS
from fedhive.tasks.runtime import _LRUCache, _one_torch_thread, _private_global_rng, _Replica
from fedhive.tasks.schedule import batch_schedule

__all__ = ["LearningTask", "TrainConfig", "TrainJob", "OnStep"]

#: ``on_step(step, params) -> list[np.ndarray] | None``; see :meth:`LearningTask.train`.
OnStep = Callable[[int, list[np.ndarray]], "Sequence[np.ndarray] | None"]

# Evaluation runs in chunks of this many examples: large enough that per-call overhead vanishes, small enough that
# activations of a small model stay in cache-friendly sizes.
_EVAL_BATCH = 4096

# Device-resident copies of client data kept per task when training off the CPU.
_DEVICE_CACHE_CLIENTS = 64


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
        num_clients = integer("num_clients", num_clients, low=1)
        if not isinstance(partition, str) or partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {list(PARTITIONS)}, got {partition!r}")
        alpha = number("alpha (Dirichlet concentration)", alpha, low=0, low_open=True)
        seed = integer("seed", seed, low=0)
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but torch sees no CUDA device; use 'cpu'")
        self.num_clients = num_clients
        self.partition = partition
        self.alpha = alpha
        self.seed = seed
        self.device = dev
        self._init_runtime()

    def _init_runtime(self) -> None:
        """Per-process caches; rebuilt rather than copied when a task object is sent to another process."""
        self._local = threading.local()
        self._meta_lock = threading.Lock()
        self._meta: tuple[list[str], list[int]] | None = None
        self._device_cache: _LRUCache[tuple[torch.Tensor, torch.Tensor]] = _LRUCache(_DEVICE_CACHE_CLIENTS)
        self._eval_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._batched: _BatchedModel | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Thread-local replicas and locks cannot cross process boundaries (e.g. a task shipped to a Ray worker);
        # drop them and let the receiver rebuild them lazily.
        state = self.__dict__.copy()
        for key in ("_local", "_meta_lock", "_meta", "_device_cache", "_eval_cache", "_batched"):
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
        return integer("client", client, low=0, high=self.num_clients - 1)

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
        model = self._build_seeded(integer("seed", seed))
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
        return self._device_cache.get(client, lambda: (x.to(self.device), y.to(self.device)))

    @contextmanager
    def _private_rng(self, seed: int) -> Iterator[None]:
        """Run the body under a torch RNG state derived from ``seed``, then restore the global state.

        Only models that draw random numbers themselves (dropout) notice; it keeps them deterministic too.
        A no-op for tasks with :attr:`model_uses_rng` False.
        """
        if not self.model_uses_rng:
            yield
            return
        with _private_global_rng(seed, self.device):
            yield

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
        every step sees a full batch (see :func:`~fedhive.tasks.schedule.batch_schedule`). When the client has
        fewer examples than ``batch_size``, each step uses all of them.

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
        seed = integer("seed", seed)
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

        # The whole batch schedule up front (at least one batch, so that loss_before exists even for zero steps).
        order = batch_schedule(seed, n, bs, max(steps, 1))
        if self.device.type != "cpu":
            order = order.to(self.device)

        trainable = replica.params
        # Built before any fetch: its proximal anchor is the params passed in, and its state outlives a fetch.
        optimizer = _Optimizer(trainable, cfg)

        losses: list[torch.Tensor] = []
        loss_before: torch.Tensor | None = None
        model.train()
        with self._private_rng(seed):
            if steps == 0 or cfg.fetch_step == 0:
                # The first batch's loss must be measured at the starting params, before any fetch replaces them.
                first = order[0]
                loss_before = self._probe_loss(replica, x_all.index_select(0, first), y_all.index_select(0, first))
            for step in range(steps):
                if step == cfg.fetch_step and on_step is not None:
                    fetched = on_step(step, replica.dump())
                    if fetched is not None:
                        replica.load(fetched)
                idx = order[step]
                loss = self.loss_fn(model(x_all.index_select(0, idx)), y_all.index_select(0, idx))
                # autograd.grad rather than backward(): no .grad fields to zero and accumulate into, which is a
                # measurable share of a step for models this small.
                grads = list(torch.autograd.grad(loss, trainable, allow_unused=True))
                optimizer.step(grads)
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
        """:meth:`train_batch` through ``model``: the batched engine, :func:`fedhive.tasks.batched._train_batched`."""
        return _train_batched(self, jobs, model)

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
