"""The batched training engine: many clients' local training as one batched forward and backward pass per step.

A task opts in by rewriting its model as a :class:`_BatchedModel` and routing its
:meth:`~fedhive.tasks.base.LearningTask.train_batch` through :func:`_train_batched`. The engine stacks the clients'
parameters to ``(clients, *shape)`` tensors and runs every client's step at once, which on a CPU core cuts the cost
of a small-model update about threefold (MNIST-1D) to tenfold (Synthetic). Each job sees the same mini-batches
(:func:`~fedhive.tasks.schedule.batch_schedule`) and the same optimiser rules (:mod:`fedhive.tasks.optimizers`) as
:meth:`~fedhive.tasks.base.LearningTask.train`, so results agree with it up to float rounding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from fedhive.strategies.params import integer
from fedhive.tasks.config import TrainConfig, TrainJob, _job_list
from fedhive.tasks.optimizers import _BatchedOptimizer
from fedhive.tasks.runtime import _one_torch_thread
from fedhive.tasks.schedule import batch_schedule

if TYPE_CHECKING:
    from fedhive.tasks.base import LearningTask

__all__: list[str] = []

# Clients trained together in one batched pass, at most; longer job lists run in chunks. For MNIST-1D on one core
# the time per update is flat from about 8 to 16 clients and creeps up beyond (activations outgrow the caches).
_MAX_BATCH_CLIENTS = 16


class _BatchedModel(ABC):
    """A task's model rewritten to train many clients at once, for :func:`_train_batched`.

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


def _train_batched(
    task: LearningTask, jobs: Sequence[TrainJob], model: _BatchedModel
) -> list[tuple[list[np.ndarray], dict[str, Any]]]:
    """``task.train_batch(jobs)`` through ``model``: check every job first, then train them in batched chunks.

    Jobs are grouped by ``(optimizer, batch_size)`` in order of first appearance; each group is sorted by
    ``local_steps`` (descending, stable) and trained in chunks of at most ``model.max_clients`` clients, so that
    clients finishing early leave the batch and similar step counts share a chunk; a chunk smaller than
    ``model.min_clients`` goes through :meth:`LearningTask.train`. All of this depends on the job list alone, hence
    the determinism. Runs on one torch thread (see :func:`~fedhive.tasks.runtime._one_torch_thread`).
    """
    job_list = _job_list(jobs)
    if not job_list:
        return []
    shapes = task._replica().shapes
    data: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    parsed: list[_ParsedJob] = []
    for i, job in enumerate(job_list):
        try:
            client = task._check_client(job.client)
            seed = integer("seed", job.seed)
            cfg = TrainConfig.parse(job.config, task.default_lr, task.default_batch_size)
            if len(job.params) != len(shapes):
                raise ValueError(
                    f"expected {len(shapes)} parameter arrays (state_dict order), got {len(job.params)}"
                )
            for k, (a, shape) in enumerate(zip(job.params, shapes)):
                if np.shape(a) != shape:
                    raise ValueError(f"parameter array {k} has shape {np.shape(a)}, the model expects {shape}")
            if client not in data:
                data[client] = task._train_tensors(client)
            n = int(data[client][0].shape[0])
            if n == 0:
                raise ValueError(f"client {client} has no training examples")
        except ValueError as exc:
            raise ValueError(f"jobs[{i}]: {exc}") from exc
        parsed.append(_ParsedJob(i, job.params, client, cfg, seed, n, min(cfg.batch_size, n)))

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
                        results[p.index] = task.train(job.params, job.client, job.config, seed=job.seed)
                    continue
                for p, (trained, loss, before) in zip(chunk, _run_chunk(model, chunk, data, shapes)):
                    metrics = {
                        "loss": loss,
                        "loss_before": before,
                        "steps": p.cfg.local_steps,
                        "num_examples": task.num_examples(p.client),
                    }
                    results[p.index] = (trained, metrics)
    return results  # type: ignore[return-value]


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
        order = batch_schedule(j.seed, j.n, j.batch, passes[c]) + offsets[j.client]
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
