"""Seeded ways to split a training set among clients.

Every partitioner takes a :class:`numpy.random.Generator` and returns one sorted ``int64`` index array per
client. The arrays are pairwise disjoint and together cover ``range(n)`` exactly, so a caller can check a
partition with one ``np.concatenate`` and never loses or duplicates an example. The same generator state gives
the same partition; that is the only source of randomness.
"""

from __future__ import annotations

import numpy as np

from fedhive.strategies.params import integer, number

__all__ = ["iid", "dirichlet_label_skew", "size_skew", "PARTITIONS"]

#: Names accepted by the ``partition`` keyword of every task.
PARTITIONS: tuple[str, ...] = ("iid", "dirichlet", "size")


def _check_counts(n: int, num_clients: int, min_size: int) -> tuple[int, int, int]:
    """``(n, num_clients, min_size)`` as ints; rejects splits that cannot give every client ``min_size`` examples."""
    n = integer("n", n, low=0)
    num_clients = integer("num_clients", num_clients, low=1)
    min_size = integer("min_size", min_size, low=0)
    if n < num_clients * min_size:
        raise ValueError(
            f"cannot give {num_clients} clients at least {min_size} examples each from {n} examples; "
            f"use at most {n // max(min_size, 1)} clients or a smaller min_size"
        )
    return n, num_clients, min_size


def iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle ``range(n)`` and cut it into ``num_clients`` near-equal parts.

    Parameters
    ----------
    n : int
        Number of examples.
    num_clients : int
        Number of parts; sizes differ by at most one.
    rng : numpy.random.Generator
        The only source of randomness.

    Returns
    -------
    list of numpy.ndarray
        Sorted ``int64`` index arrays, one per client.
    """
    n, num_clients, _ = _check_counts(n, num_clients, 1)
    perm = rng.permutation(n)
    return [np.sort(part).astype(np.int64) for part in np.array_split(perm, num_clients)]


def dirichlet_label_skew(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 10,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Per-class Dirichlet split (label skew), the usual non-IID benchmark partition.

    For each class the examples of that class are shuffled and divided among the clients in proportions drawn
    from ``Dirichlet(alpha, ..., alpha)``. A client that already holds more than its fair share ``n / num_clients``
    gets no more examples (its proportion is zeroed), which keeps one client from swallowing the data set when
    ``alpha`` is small. The whole draw is repeated until every client has at least ``min_size`` examples.
    Small ``alpha`` gives strongly skewed label histograms; client sizes come out unequal as a side effect.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer class label per example, shape ``(n,)``.
    num_clients : int
        Number of clients.
    alpha : float
        Dirichlet concentration, > 0. Large values approach IID.
    rng : numpy.random.Generator
        The only source of randomness.
    min_size : int, optional
        Smallest acceptable client size (default 10).
    max_tries : int, optional
        Give up after this many draws (default 1000).

    Returns
    -------
    list of numpy.ndarray
        Sorted ``int64`` index arrays, one per client, disjoint and covering ``range(n)``.

    Raises
    ------
    ValueError
        If the arguments are out of range or no acceptable draw was found in ``max_tries`` tries.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    alpha = number("alpha", alpha, low=0, low_open=True)
    n, num_clients, min_size = _check_counts(len(labels), num_clients, min_size)
    fair_share = n / num_clients
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]

    for _ in range(max_tries):
        sizes = np.zeros(num_clients, dtype=np.int64)
        pieces: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx_c in by_class:
            idx_c = rng.permutation(idx_c)
            props = rng.dirichlet(np.full(num_clients, alpha))
            props = props * (sizes < fair_share)
            total = props.sum()
            if total <= 0:
                # Every client is at its cap (only possible through rounding); spread this class evenly.
                props = np.full(num_clients, 1.0 / num_clients)
            else:
                props = props / total
            cuts = (np.cumsum(props) * len(idx_c)).astype(np.int64)[:-1]
            for client, part in enumerate(np.split(idx_c, cuts)):
                if len(part):
                    pieces[client].append(part)
                    sizes[client] += len(part)
        if sizes.min() >= min_size:
            return [
                np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, dtype=np.int64)
                for p in pieces
            ]
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) split gave all {num_clients} clients at least {min_size} examples "
        f"in {max_tries} tries; use a larger alpha, fewer clients or a smaller min_size"
    )


def size_skew(
    n: int,
    num_clients: int,
    rng: np.random.Generator,
    sigma: float = 1.0,
    min_size: int = 1,
) -> list[np.ndarray]:
    """IID content with log-normal client sizes (quantity skew).

    Client ``k`` gets a share proportional to ``exp(N(0, sigma^2))`` of the examples, after every client has been
    given ``min_size``; shares are rounded by largest remainder so the sizes add up to ``n`` exactly.

    Parameters
    ----------
    n : int
        Number of examples.
    num_clients : int
        Number of clients.
    rng : numpy.random.Generator
        The only source of randomness.
    sigma : float, optional
        Standard deviation of the log size (default 1.0; 0 gives equal sizes).
    min_size : int, optional
        Smallest client size (default 1).

    Returns
    -------
    list of numpy.ndarray
        Sorted ``int64`` index arrays, one per client, disjoint and covering ``range(n)``.
    """
    sigma = number("sigma", sigma, low=0)
    n, num_clients, min_size = _check_counts(n, num_clients, min_size)
    weights = rng.lognormal(mean=0.0, sigma=sigma, size=num_clients)
    spare = n - num_clients * min_size
    exact = weights / weights.sum() * spare
    extra = np.floor(exact).astype(np.int64)
    # Largest-remainder rounding: hand the leftover examples to the clients with the largest fractional parts.
    leftover = spare - int(extra.sum())
    if leftover:
        extra[np.argsort(-(exact - extra), kind="stable")[:leftover]] += 1
    sizes = extra + min_size
    perm = rng.permutation(n)
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(part).astype(np.int64) for part in np.split(perm, cuts)]
