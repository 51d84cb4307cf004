"""Synthetic(alpha, beta): the federated logistic-regression benchmark of Li et al., "Federated Optimization in
Heterogeneous Networks" (FedProx, MLSys 2020).

Each client draws its own data, so fleets of any size cost almost nothing up front: the constructor only draws a
few numbers per client (its size and the two means below), and a client's examples are generated on first use from
a seed derived from ``(seed, client)``, then kept in a bounded LRU cache. Results never depend on cache state.

The generator (60 features, 10 classes; following the paper's published generator, ``alpha`` and ``beta`` are the
standard deviations of the two means):

* ``u_k ~ N(0, syn_alpha^2)``, ``W_k ~ N(u_k, 1)`` (60 x 10), ``b_k ~ N(u_k, 1)`` (10): each client's own labelling
  model; ``syn_alpha`` controls how much the clients' models differ.
* ``B_k ~ N(0, syn_beta^2)``, ``v_k ~ N(B_k, 1)`` (60), ``x ~ N(v_k, Sigma)`` with ``Sigma`` diagonal,
  ``Sigma_jj = j^-1.2``: each client's own feature distribution; ``syn_beta`` controls how much they differ.
* ``y = argmax(softmax(x W_k + b_k))``.

The ``partition`` keyword picks the kind of heterogeneity (the Dirichlet ``alpha`` keyword has no role here):

* ``"dirichlet"`` (default): the full non-IID Synthetic(syn_alpha, syn_beta) above, with log-normal client sizes.
* ``"size"``: IID content (one shared ``W, b ~ N(0, 1)`` and ``v_k = 0`` for all clients, the paper's
  Synthetic-IID) with log-normal client sizes.
* ``"iid"``: IID content and every client the same size.

Sizes: each client holds ``n_k`` examples, log-normal with mean ``samples_per_client`` and log-standard-deviation
``size_sigma`` (at least ``min_client_size``); the paper's power law is replaced by a log-normal with a
controllable mean so fleets of 10,000 clients stay cheap. ``test_fraction`` of each client's examples are held out;
the test set pools the held-out examples of the first ``test_clients`` clients (a fixed-size sample of the fleet).
The validation batch is ``validation_size`` fresh examples drawn from the same clients' distributions with a
separate seed stream, so it is disjoint from both the client data and the test set.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fedhive.tasks.base import LearningTask
from fedhive.tasks.batched import _BatchedModel
from fedhive.strategies.params import integer, number
from fedhive.tasks.config import TrainJob

__all__ = ["Synthetic"]

_DIM = 60
_CLASSES = 10
# Per-feature standard deviation: sqrt(Sigma_jj) with Sigma_jj = j^-1.2, j = 1..60.
_FEATURE_STD = np.power(np.arange(1, _DIM + 1, dtype=np.float64), -1.2 / 2)

# Stream tags for np.random.default_rng([seed, stream, ...]): distinct streams never share random numbers.
_FLEET, _CLIENT_MODEL, _CLIENT_DATA, _VALIDATION, _SHARED = 0, 1, 2, 3, 4


class _BatchedLinear(_BatchedModel):
    """``nn.Linear(features, classes)`` for many clients at once: one ``baddbmm`` per step.

    Weight ``(classes, features)`` and bias ``(classes, 1)`` as stored; the inputs are read transposed in place, so
    the logits come out as ``(clients, classes, batch)`` with no copy.
    """

    # A linear model's step is nearly all per-operation overhead, so larger batches keep paying off; a batch of
    # one has a few more operations per step than train, so a lone job goes through train.
    max_clients = 64
    min_clients = 2

    def __init__(self, features: int, classes: int):
        self.features = features
        self.shapes = [(classes, features), (classes, 1)]

    def forward(self, params: list[torch.Tensor], x: torch.Tensor, clients: int, batch: int) -> torch.Tensor:
        w, b = params
        return torch.baddbmm(b, w, x.view(clients, batch, self.features).transpose(1, 2))


class Synthetic(LearningTask):
    """Synthetic(alpha, beta) multinomial logistic regression, generated per client.

    Parameters
    ----------
    num_clients, partition, alpha, seed, device
        See :class:`~fedhive.tasks.base.LearningTask` and the module notes for what ``partition`` means here;
        ``alpha`` (Dirichlet) is validated but unused.
    syn_alpha : float, optional
        Spread of the clients' labelling models (default 1.0), >= 0.
    syn_beta : float, optional
        Spread of the clients' feature means (default 1.0), >= 0.
    samples_per_client : int, optional
        Mean examples per client before the test hold-out (default 200).
    size_sigma : float, optional
        Log-standard-deviation of client sizes (default 1.0) for ``"dirichlet"`` and ``"size"``.
    min_client_size : int, optional
        Smallest client, before the hold-out (default 20).
    test_fraction : float, optional
        Fraction of each client's examples held out (default 0.2).
    test_clients : int, optional
        The test set pools the held-out examples of this many clients (default 200, or all if fewer).
    validation_size : int, optional
        Size of the validation batch (default 256; 0 for none).
    cache_clients : int, optional
        How many clients' data to keep generated (default 1024).

    Notes
    -----
    Default learning rate 0.05 (plain SGD, batch 32). In synchronous FedAvg on Synthetic(1, 1) (100 clients,
    10 a round, 20 local steps) test accuracy after 300 rounds was 0.74-0.78 for every lr from 0.02 to 0.2;
    0.05 gave the smoothest curve. (The FedProx paper used 0.01 with batch 10.)
    """

    name = "synthetic"
    default_lr = 0.05
    default_batch_size = 32
    model_uses_rng = False  # no dropout: training needs no private torch RNG state, so threads never wait

    def __init__(
        self,
        *,
        num_clients: int,
        partition: str = "dirichlet",
        alpha: float = 0.5,
        seed: int = 0,
        device: str | torch.device = "cpu",
        syn_alpha: float = 1.0,
        syn_beta: float = 1.0,
        samples_per_client: int = 200,
        size_sigma: float = 1.0,
        min_client_size: int = 20,
        test_fraction: float = 0.2,
        test_clients: int = 200,
        validation_size: int = 256,
        cache_clients: int = 1024,
    ):
        super().__init__(num_clients=num_clients, partition=partition, alpha=alpha, seed=seed, device=device)
        self.syn_alpha = number("syn_alpha", syn_alpha, low=0)
        self.syn_beta = number("syn_beta", syn_beta, low=0)
        self.size_sigma = number("size_sigma", size_sigma, low=0)
        self.min_client_size = integer("min_client_size (one example to train, one to test)", min_client_size, low=2)
        self.samples_per_client = integer("samples_per_client (at least min_client_size)",
                                          samples_per_client, low=self.min_client_size)
        self.test_fraction = number("test_fraction", test_fraction, low=0, high=1, low_open=True, high_open=True)
        self.test_clients = min(integer("test_clients", test_clients, low=1), self.num_clients)
        self.validation_size = integer("validation_size", validation_size, low=0)
        self.cache_clients = integer("cache_clients", cache_clients, low=1)
        self.heterogeneous = partition == "dirichlet"

        # Per-client scalars for the whole fleet, vectorised: O(num_clients) numbers, no examples yet.
        fleet = np.random.default_rng([self.seed, _FLEET])
        if partition == "iid":
            totals = np.full(self.num_clients, self.samples_per_client, dtype=np.int64)
        else:
            # Log-normal with the requested mean: E[exp(N(mu, s^2))] = exp(mu + s^2 / 2).
            mu = math.log(self.samples_per_client) - self.size_sigma**2 / 2
            totals = np.rint(fleet.lognormal(mu, self.size_sigma, self.num_clients)).astype(np.int64)
            totals = np.maximum(totals, self.min_client_size)
        self._held_out = np.maximum((totals * self.test_fraction).astype(np.int64), 1)
        self._totals = totals
        self._train_sizes = totals - self._held_out
        self._u = fleet.normal(0.0, self.syn_alpha, self.num_clients)  # mean of W_k and b_k
        self._b_mean = fleet.normal(0.0, self.syn_beta, self.num_clients)  # B_k: mean of v_k
        shared = np.random.default_rng([self.seed, _SHARED])
        self._shared_w = shared.normal(0.0, 1.0, (_DIM, _CLASSES))
        self._shared_b = shared.normal(0.0, 1.0, _CLASSES)

        self._cache: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._test = self._build_test()
        self._validation = self._build_validation() if self.validation_size else None

    # ------------------------------------------------------------------ generation

    def _client_model(self, client: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(W_k, b_k, v_k)`` of one client, from its own seed."""
        if not self.heterogeneous:
            return self._shared_w, self._shared_b, np.zeros(_DIM)
        rng = np.random.default_rng([self.seed, _CLIENT_MODEL, client])
        u = self._u[client]
        w = rng.normal(u, 1.0, (_DIM, _CLASSES))
        b = rng.normal(u, 1.0, _CLASSES)
        v = rng.normal(self._b_mean[client], 1.0, _DIM)
        return w, b, v

    def _draw(self, client: int, count: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        w, b, v = self._client_model(client)
        rng = np.random.default_rng([self.seed, stream, client])
        x = v + rng.standard_normal((count, _DIM)) * _FEATURE_STD
        # argmax of the logits is argmax of the softmax; no need to normalise.
        y = np.argmax(x @ w + b, axis=1)
        return x.astype(np.float32), y.astype(np.int64)

    def _client_arrays(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        """All of a client's examples: the first ``num_examples`` train, the rest are held out."""
        return self._draw(client, int(self._totals[client]), _CLIENT_DATA)

    def _build_test(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for k in range(self.test_clients):
            x, y = self._client_arrays(k)
            cut = int(self._train_sizes[k])
            xs.append(x[cut:])
            ys.append(y[cut:])
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    def _build_validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Spread the batch over the test clients in proportion to their held-out sizes, so validation and test
        # see the same mixture of client distributions.
        weights = self._held_out[: self.test_clients].astype(np.float64)
        exact = weights / weights.sum() * self.validation_size
        counts = np.floor(exact).astype(np.int64)
        short = self.validation_size - int(counts.sum())
        if short:
            counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
        xs, ys = [], []
        for k in np.flatnonzero(counts):
            x, y = self._draw(int(k), int(counts[k]), _VALIDATION)
            xs.append(x)
            ys.append(y)
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    # ------------------------------------------------------------------ the task contract

    def build_model(self) -> nn.Module:
        return nn.Linear(_DIM, _CLASSES)

    def train_batch(self, jobs: Sequence[TrainJob]) -> list[tuple[list[np.ndarray], dict[str, Any]]]:
        """Batched :meth:`~fedhive.tasks.base.LearningTask.train_batch`: all clients of a step in one pass.

        Same contract as the base method. Up to 64 clients train together, their parameters stacked, each step one
        batched matrix product forward and back (a lone job runs through :meth:`train`). Falls back to the base
        loop for subclasses that change the model, the loss or :meth:`train`, and off the CPU.
        """
        model = self._batched_model(Synthetic, lambda: _BatchedLinear(_DIM, _CLASSES))
        if model is None:
            return super().train_batch(jobs)
        return self._train_batched(jobs, model)

    def num_examples(self, client: int) -> int:
        return int(self._train_sizes[self._check_client(client)])

    def client_data(self, client: int) -> tuple[torch.Tensor, torch.Tensor]:
        client = self._check_client(client)
        with self._cache_lock:
            hit = self._cache.get(client)
            if hit is not None:
                self._cache.move_to_end(client)
                return hit
        # Generate outside the lock so threads training different clients do not queue behind each other.
        x, y = self._client_arrays(client)
        cut = int(self._train_sizes[client])
        hit = (torch.from_numpy(x[:cut].copy()), torch.from_numpy(y[:cut].copy()))
        with self._cache_lock:
            self._cache[client] = hit
            while len(self._cache) > self.cache_clients:
                self._cache.popitem(last=False)
        return hit

    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._test

    def validation_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Fresh examples from the test clients' distributions (a separate seed stream), or None if size 0."""
        return self._validation

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_cache_lock", None)
        state["_cache"] = OrderedDict()  # regenerated on demand; no need to ship generated data
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._cache_lock = threading.Lock()
