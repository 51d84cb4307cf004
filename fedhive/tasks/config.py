"""What one local-training run is asked to do: the config keys :meth:`LearningTask.train` reads, and train jobs.

A strategy hands a task a plain mapping (it may have travelled through JSON or TOML, and strategies add keys of
their own); :class:`TrainConfig` is that mapping parsed and checked once, so training code never re-validates it.
:class:`TrainJob` bundles the arguments of one :meth:`~fedhive.tasks.base.LearningTask.train` call for
:meth:`~fedhive.tasks.base.LearningTask.train_batch`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedhive.tasks.optimizers import OPTIMIZERS

__all__ = ["TrainConfig", "TrainJob"]


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
        if not isinstance(optimizer, str) or optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"config['optimizer'] must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
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


def _job_list(jobs: Sequence[TrainJob]) -> list[TrainJob]:
    """``jobs`` as a list, every entry checked to be a :class:`TrainJob`.

    Raises
    ------
    TypeError
        Naming the first entry that is not a :class:`TrainJob`.
    """
    job_list = list(jobs)
    for i, job in enumerate(job_list):
        if not isinstance(job, TrainJob):
            raise TypeError(f"jobs[{i}] must be a TrainJob, got {type(job).__name__}")
    return job_list
