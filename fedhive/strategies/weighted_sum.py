"""In-place weighted sums of models: the one aggregation kernel every strategy uses.

``out = Σ_k c_k · x_k`` over lists of tensors, written into preallocated arrays, with no temporary per client per
tensor. Flower's ``aggregate_arrayrecords`` allocates one (``value.numpy() * weight``) and streams every temporary
through memory.

- Large tensors (``>= FUSED_MIN`` elements) use torch's fused ``out.add_(x, alpha=c)`` on zero-copy views of the
  numpy arrays: one read of each client tensor, no scratch at all. torch is already a dependency of fedhive (the
  trainer); it is imported lazily, so the strategies stay importable and fast to test without it.
- Small tensors use numpy: ``multiply`` into one scratch block, then ``add``, per client; the blocks stay in cache
  and numpy's per-call overhead is lower than torch's at these sizes. Tiny ones (``<= SMALL`` elements: biases,
  norms) use numpy's own temporary, which costs fewer calls than the scratch block; per-call overhead is all there
  is at that size, and it is what the engine pays per event for the simulator's small models.

``benchmarks/aggregate.py`` measures it against ``numpy.copyto`` of the same bytes and against Flower.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

# numpy block: 64 Ki elements. Tensors up to one block are summed whole in numpy; larger ones take the fused path.
BLOCK = 65536
FUSED_MIN = BLOCK + 1
# Tensors up to this many elements (16 KiB of float32) skip the scratch block: numpy's own temporary is cheaper.
SMALL = 4096

Term = tuple[float, Sequence[np.ndarray]]

_torch: Any = None


def _fused() -> Any:
    """torch, imported on first use; ``False`` where it is not installed."""
    global _torch
    if _torch is None:
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency; this keeps the math usable without it
            _torch = False
        else:
            _torch = torch
    return _torch


def _as_tensor(torch: Any, a: np.ndarray) -> Any:
    with warnings.catch_warnings():
        # Published models are read-only numpy arrays; torch warns that its view could write. We only read.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def weighted_sum(
    terms: Sequence[Term],
    out: list[np.ndarray] | None = None,
    *,
    indices: Sequence[int] | None = None,
    accumulate: bool = False,
) -> list[np.ndarray]:
    """``out[t] (+)= Σ_k c_k · x_k[t]`` for every tensor ``t`` in ``indices``.

    Parameters
    ----------
    terms
        ``(coefficient, tensors)`` pairs; every ``tensors`` list has the same shapes and floating dtypes.
    out
        Arrays to write into (C-contiguous, same shapes). ``None`` allocates them like the first term's tensors.
        Tensors not in ``indices`` are left as they are (uninitialised when freshly allocated).
    indices
        Which tensors to compute; all by default.
    accumulate
        Add to ``out`` instead of overwriting it.

    Returns
    -------
    list of numpy.ndarray
        ``out``.
    """
    if not terms:
        raise ValueError("weighted_sum needs at least one term")
    first = terms[0][1]
    if out is None:
        out = [np.empty(x.shape, x.dtype) for x in first]  # C order
    idx = range(len(first)) if indices is None else indices
    coefs = [float(c) for c, _ in terms]
    scratch: np.ndarray | None = None
    for t in idx:
        o = out[t]
        n = o.size
        if n == 0:
            continue
        if n <= SMALL:  # biases, norms, tiny models: a temporary this size costs less than setting up scratch
            if accumulate:
                for c, (_, x) in zip(coefs, terms):
                    o += x[t] * c
            else:
                np.multiply(first[t], coefs[0], out=o)
                for j in range(1, len(terms)):
                    o += terms[j][1][t] * coefs[j]
            continue
        if n <= BLOCK:  # the common case for small models: whole tensors, no blocking
            if scratch is None or scratch.dtype != o.dtype or scratch.size < n:
                scratch = np.empty(max(n, 256), dtype=o.dtype)
            sb = scratch[:n].reshape(o.shape)
            k = 0
            if not accumulate:
                np.multiply(terms[0][1][t], coefs[0], out=o)
                k = 1
            for c, (_, x) in zip(coefs[k:], terms[k:]):
                np.multiply(x[t], c, out=sb)
                np.add(o, sb, out=o)
            continue
        o = o.reshape(-1)
        xs = [(c, x[t].reshape(-1)) for c, (_, x) in zip(coefs, terms)]
        if n >= FUSED_MIN and (torch := _fused()):
            _fused_sum(torch, o, xs, accumulate)
            continue
        if scratch is None or scratch.dtype != o.dtype or scratch.size < min(BLOCK, n):
            scratch = np.empty(min(BLOCK, n), dtype=o.dtype)
        for s in range(0, n, BLOCK):
            e = min(s + BLOCK, n)
            ob = o[s:e]
            sb = scratch[: e - s]
            rest = xs
            if not accumulate:
                c0, x0 = xs[0]
                np.multiply(x0[s:e], c0, out=ob)
                rest = xs[1:]
            for c, x in rest:
                np.multiply(x[s:e], c, out=sb)
                np.add(ob, sb, out=ob)
    return out


def _fused_sum(torch: Any, o: np.ndarray, xs: list[tuple[float, np.ndarray]], accumulate: bool) -> None:
    # One thread: the sum is memory-bound, and on a busy machine torch's intra-op threads wait for a core
    # between every operation (measured here: ~8 ms per add_ with the other core busy, against 0.25 ms).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ot = _as_tensor(torch, o)
        rest = xs
        if not accumulate:
            c0, x0 = xs[0]
            torch.mul(_as_tensor(torch, x0), c0, out=ot)
            rest = xs[1:]
        for c, x in rest:
            ot.add_(_as_tensor(torch, x), alpha=c)
    finally:
        torch.set_num_threads(threads)


def mean_of(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Plain mean of same-shaped arrays, in their dtype (integers are rounded): for non-trainable tensors."""
    first = arrays[0]
    if first.dtype.kind == "f":
        acc = weighted_sum([(1.0 / len(arrays), [a]) for a in arrays])[0]
        return acc
    total = np.zeros(first.shape, dtype=np.float64)
    for a in arrays:
        total += a
    return np.asarray(np.rint(total / len(arrays)), dtype=first.dtype)
