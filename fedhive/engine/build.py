"""Building a run's strategy for a task, the same way in every mode (virtual time, deployment, local cluster)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fedhive.strategies import build, parameters
from fedhive.strategies.base import Strategy
from fedhive.tasks import LearningTask


def strategy_for_task(name: str, params: Mapping[str, Any], task: LearningTask, local_steps: int, *,
                      trusted_sizes: bool = False) -> Strategy:
    """Strategy ``name`` with ``params``; ``local_steps`` where it takes it, the task's non-trainable tensors, and
    the server-side validation gradient for a strategy that asks for one (``needs_validation``).

    ``trusted_sizes``: the clients' example counts are the partition sizes the caller built itself (the simulator),
    not the clients' own claims, so the claim clamp (``max_weight_ratio``) defaults to off; a deployment keeps the
    strategy's default clamp, since its counts come from the devices.

    Raises
    ------
    ValueError
        A strategy that needs a validation gradient, for a task without a validation batch (the message names the
        strategy's alternatives).
    """
    params = dict(params)
    accepted = parameters(name)
    if "local_steps" in accepted:
        params.setdefault("local_steps", local_steps)
    params.setdefault("non_trainable", task.non_trainable())
    if trusted_sizes and "max_weight_ratio" in accepted:
        params.setdefault("max_weight_ratio", 0)
    strategy = build(name, params)
    if strategy.needs_validation and task.validation_batch() is not None:
        strategy.set_validation(validation_gradient(task))
    return strategy


def validation_gradient(task: LearningTask) -> Callable[[Sequence[np.ndarray]], tuple[float, list[np.ndarray]]]:
    """``params -> (loss, gradient)`` on the task's server-side validation batch (FedASMU's meta step)."""
    import torch

    model = task.build_model()
    names = task.param_names()
    x, y = task.validation_batch()  # type: ignore[misc]

    def fn(params: Sequence[np.ndarray]) -> tuple[float, list[np.ndarray]]:
        state = {n: torch.from_numpy(np.array(p, copy=True)) for n, p in zip(names, params)}
        model.load_state_dict(state)
        model.train()
        trainable = dict(model.named_parameters())
        loss = task.loss_fn(model(x), y)
        grads = torch.autograd.grad(loss, list(trainable.values()))
        by_name = {n: g.detach().numpy() for n, g in zip(trainable, grads)}
        return float(loss.detach()), [by_name.get(n, np.zeros_like(p)).astype(p.dtype) for n, p in zip(names, params)]

    return fn
