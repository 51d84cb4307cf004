"""What one local-training run is asked to do: the config keys :meth:`LearningTask.train` reads, and train jobs.

A strategy hands a task a plain mapping (it may have travelled through JSON or TOML, and strategies add keys of
their own); :class:`TrainConfig` is that mapping parsed and checked once, so training code never re-validates it.
:class:`TrainJob` bundles the arguments of one :meth:`~fedhive.tasks.base.LearningTask.train` call for
:meth:`~fedhive.tasks.base.LearningTask.train_batch`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedhive.strategies.params import integer, number
from fedhive.tasks.optimizers import OPTIMIZERS

__all__ = ["TrainConfig", "TrainJob"]


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
            raise ValueError("config must contain 'local_steps' (an integer >= 0, the number of SGD steps to run)")

        # integer() also takes integral floats: configs that went through JSON or TOML may carry 20.0 for 20.
        local_steps = integer("config['local_steps']", config["local_steps"], low=0)
        batch_size = integer("config['batch_size']", config.get("batch_size", default_batch_size), low=1)
        lr = number("config['lr']", config.get("lr", default_lr), low=0.0, low_open=True)
        optimizer = config.get("optimizer", "sgd")
        if not isinstance(optimizer, str) or optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"config['optimizer'] must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
        momentum = number("config['momentum']", config.get("momentum", 0.0), low=0.0, high=1.0, high_open=True)
        weight_decay = number("config['weight_decay']", config.get("weight_decay", 0.0), low=0.0)
        proximal_mu = number("config['proximal_mu']", config.get("proximal_mu", 0.0), low=0.0)
        fetch_step = config.get("fetch_step")
        if fetch_step is not None:
            # Any integer is accepted (out of range: see below); a non-integer is an error.
            fetch_step = integer("config['fetch_step']", fetch_step)
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
