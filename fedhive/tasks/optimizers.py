"""The optimiser rules of local training, written once for one client and for a batch of stacked clients.

Plain SGD (momentum, L2 weight decay) or Adam, plus FedProx's proximal term, in a few foreach kernels per step:
the same arithmetic as ``torch.optim.SGD`` (dampening 0, no Nesterov) and ``torch.optim.Adam`` (betas 0.9/0.999,
eps 1e-8, L2 weight decay added to the gradient), minus their per-step bookkeeping, which costs more than the
update itself for models of a few thousand parameters.

The rules are :func:`_update`. Every hyperparameter reaches them as a *coefficient*: a Python float when one client
is trained (:class:`_Optimizer`, used by :meth:`~fedhive.tasks.base.LearningTask.train`), or a ``(clients, 1, 1)``
column of per-client values broadcast over each client's slice when many clients are trained stacked
(:class:`_BatchedOptimizer`, used by the batched engine in :mod:`fedhive.tasks.batched`). The two kinds go through
different torch kernels (a scalar ``alpha`` against a tensor ``addcmul``), so the two optimizers agree up to float
rounding rather than bit for bit; each one's rounding is fixed, which is what makes results reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from fedhive.tasks.config import TrainConfig

__all__ = ["OPTIMIZERS"]

#: Values of a config's ``optimizer`` key.
OPTIMIZERS = ("sgd", "adam")

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8

#: A hyperparameter as the rules take it: a float (one client) or a ``(clients, 1, 1)`` column (stacked clients).
Coef = float | torch.Tensor


def _axpy_(dst: list[torch.Tensor], src: list[torch.Tensor], coef: Coef) -> None:
    """``dst += coef * src``, tensor by tensor."""
    if isinstance(coef, torch.Tensor):
        torch._foreach_addcmul_(dst, src, [coef] * len(dst))
    else:
        torch._foreach_add_(dst, src, alpha=coef)


def _scale_(dst: list[torch.Tensor], coef: Coef) -> None:
    """``dst *= coef``, tensor by tensor."""
    torch._foreach_mul_(dst, [coef] * len(dst) if isinstance(coef, torch.Tensor) else coef)


def _add_ratio_(dst: list[torch.Tensor], num: list[torch.Tensor], den: list[torch.Tensor], coef: Coef) -> None:
    """``dst += coef * num / den``, tensor by tensor."""
    if isinstance(coef, torch.Tensor):
        # addcdiv_ takes one scalar per tensor, not one per client: divide first, then scale each client's slice.
        torch._foreach_addcmul_(dst, torch._foreach_div(num, den), [coef] * len(dst))
    else:
        torch._foreach_addcdiv_(dst, num, den, value=coef)


@dataclass(frozen=True)
class _Hyper:
    """The hyperparameters of an update as coefficients; None for a term that is off (for every client)."""

    optimizer: str
    neg_lr: Coef
    momentum: Coef | None  # SGD only
    weight_decay: Coef | None
    proximal_mu: Coef | None

    @classmethod
    def of(cls, cfg: TrainConfig) -> _Hyper:
        """One client's hyperparameters, as floats."""
        return cls(
            cfg.optimizer,
            -cfg.lr,
            cfg.momentum if cfg.optimizer == "sgd" and cfg.momentum else None,
            cfg.weight_decay if cfg.weight_decay else None,
            cfg.proximal_mu if cfg.proximal_mu > 0 else None,
        )

    @classmethod
    def columns(cls, cfgs: Sequence[TrainConfig]) -> _Hyper:
        """Stacked clients' hyperparameters, as ``(clients, 1, 1)`` float32 columns; all share one optimizer.

        A term some clients use and others do not is kept, with exact zeros for the others (adding ``0 * x`` or
        scaling a momentum buffer that gets overwritten changes nothing); a term nobody uses is skipped.
        """

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32).view(len(cfgs), 1, 1)

        optimizer = cfgs[0].optimizer
        return cls(
            optimizer,
            column([-c.lr for c in cfgs]),
            column([c.momentum for c in cfgs]) if optimizer == "sgd" and any(c.momentum for c in cfgs) else None,
            column([c.weight_decay for c in cfgs]) if any(c.weight_decay for c in cfgs) else None,
            column([c.proximal_mu for c in cfgs]) if any(c.proximal_mu for c in cfgs) else None,
        )

    def prefix(self, k: int) -> _Hyper:
        """The first ``k`` clients' columns (only for :meth:`columns` hyperparameters)."""

        def first(coef: Coef | None) -> Coef | None:
            return coef[:k] if isinstance(coef, torch.Tensor) else coef

        neg_lr = first(self.neg_lr)
        assert neg_lr is not None
        return _Hyper(
            self.optimizer, neg_lr, first(self.momentum), first(self.weight_decay), first(self.proximal_mu)
        )


@dataclass(frozen=True)
class _Slots:
    """The tensors an update reads and writes: the parameters, the proximal anchor and the optimizer state."""

    params: list[torch.Tensor]
    start: list[torch.Tensor] | None  # parameters at the start of training, when the proximal term is on
    buf: list[torch.Tensor] | None  # SGD momentum buffers, when momentum is on
    m: list[torch.Tensor] | None  # Adam moments
    v: list[torch.Tensor] | None

    @classmethod
    @torch.no_grad()
    def allocate(cls, params: list[torch.Tensor], hyper: _Hyper) -> _Slots:
        """State for training ``params`` under ``hyper``; the proximal anchor is a copy of ``params`` as they are now.

        Everything is allocated up front, so that a slice of it (:meth:`prefix`) is a view that updates show through.
        """
        adam = hyper.optimizer == "adam"
        return cls(
            params,
            [p.detach().clone() for p in params] if hyper.proximal_mu is not None else None,
            [torch.zeros_like(p) for p in params] if hyper.momentum is not None else None,
            [torch.zeros_like(p) for p in params] if adam else None,
            [torch.zeros_like(p) for p in params] if adam else None,
        )

    def prefix(self, k: int) -> _Slots:
        """Views of the first ``k`` clients' slices of stacked tensors (shared storage)."""

        def first(tensors: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
            return None if tensors is None else [t[:k] for t in tensors]

        params = first(self.params)
        assert params is not None
        return _Slots(params, first(self.start), first(self.buf), first(self.m), first(self.v))


@torch.no_grad()
def _update(slots: _Slots, hyper: _Hyper, grads: Sequence[torch.Tensor | None], t: int) -> None:
    """Step ``t`` (counted from 1) of the optimiser rules, in place on ``slots``.

    ``grads`` match ``slots.params`` in shape, or are None where the loss does not reach a parameter; they are
    used as scratch space.
    """
    params = slots.params
    # A parameter the loss does not reach gets a zero gradient (it still feels weight decay and the prox term).
    g = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, grads)]
    if hyper.proximal_mu is not None:
        # FedProx: the gradient of (mu/2)||w - w_start||^2 is mu * (w - w_start).
        assert slots.start is not None
        diff = torch._foreach_sub(params, slots.start)
        _axpy_(g, diff, hyper.proximal_mu)
    if hyper.weight_decay is not None:
        _axpy_(g, params, hyper.weight_decay)
    if hyper.optimizer == "sgd":
        if hyper.momentum is not None:
            buf = slots.buf
            assert buf is not None
            if t == 1:
                torch._foreach_copy_(buf, g)  # torch.optim.SGD starts the buffer at the first gradient
            else:
                _scale_(buf, hyper.momentum)
                torch._foreach_add_(buf, g)
            g = buf
        _axpy_(params, g, hyper.neg_lr)
        return
    m, v = slots.m, slots.v
    assert m is not None and v is not None
    torch._foreach_lerp_(m, g, 1 - _BETA1)
    torch._foreach_mul_(v, _BETA2)
    torch._foreach_addcmul_(v, g, g, value=1 - _BETA2)
    bias1 = 1 - _BETA1**t
    bias2 = 1 - _BETA2**t
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, math.sqrt(bias2))
    torch._foreach_add_(denom, _EPS)
    _add_ratio_(params, m, denom, hyper.neg_lr / bias1)


class _Optimizer:
    """The rules for one client's parameters, for one :meth:`~fedhive.tasks.base.LearningTask.train` call.

    The proximal anchor is the parameters at construction; state and anchor survive anything written into the
    parameters in place between steps (a mid-training fetch replaces the model, not the optimiser).
    """

    def __init__(self, params: list[torch.Tensor], cfg: TrainConfig):
        self.params = params
        self.hyper = _Hyper.of(cfg)
        self.slots = _Slots.allocate(params, self.hyper)
        self.t = 0

    def step(self, grads: Sequence[torch.Tensor | None]) -> None:
        """One update from ``grads`` (one per parameter, None for a parameter the loss does not reach)."""
        self.t += 1
        _update(self.slots, self.hyper, grads, self.t)


class _BatchedOptimizer:
    """The rules over stacked parameters ``(clients, ...)``, with per-client hyperparameters.

    A step updates a prefix of the clients (those still running); the parameters and state of the rest are left
    alone. All clients share one optimizer kind and start together, so one step count serves them all.
    """

    def __init__(self, params: list[torch.Tensor], cfgs: Sequence[TrainConfig]):
        self.params = params
        self.hyper = _Hyper.columns(cfgs)
        self.slots = _Slots.allocate(params, self.hyper)
        self.t = 0
        self._views: dict[int, tuple[_Slots, _Hyper]] = {}  # per prefix length; it changes rarely

    def step(self, grads: Sequence[torch.Tensor | None], active: int) -> None:
        """One update of the first ``active`` clients; ``grads`` cover at least those clients."""
        views = self._views.get(active)
        if views is None:
            views = self._views[active] = (self.slots.prefix(active), self.hyper.prefix(active))
        slots, hyper = views
        # The backward pass covers every client with a forward pass left, which may be more than those updated.
        grads = [gi if gi is None or gi.shape[0] == active else gi[:active] for gi in grads]
        self.t += 1
        _update(slots, hyper, grads, self.t)
