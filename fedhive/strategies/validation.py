"""Checks on a client's model before any strategy sees it: shape, dtype and finite values.

The engine adds the checks that need its bookkeeping (known node, known task, duplicates, versions); these are the
ones that need only the global model. Each failed check returns a short reason (used as a metric label) and a
message naming what was wrong and what is accepted.

Accepted:

- ``num_examples``: a Python or numpy integer in ``[0, MAX_NUM_EXAMPLES]`` (``2**31 - 1``); bools, floats (even
  integral or huge ones such as ``1e308``), strings, lists and ``None`` are refused (:func:`check_num_examples`).
- tensors: as many as the global model has, each a numpy array of its shape and dtype, every value finite and of
  magnitude at most :func:`magnitude_limit` of its dtype (float32: ``3.4e38 / 2**16``, about ``5.2e33``), so that
  no sum of up to ``2**16`` accepted values (float16: ``2**8``) can overflow in an aggregation. A single finite
  ``3e38`` is refused: applied, it would be the global model, and the next aggregation would overflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

REASONS = (
    "unknown_node",
    "unknown_task",
    "duplicate",
    "node_mismatch",
    "future_version",
    "version_mismatch",
    "tensor_count",
    "shape",
    "dtype",
    "non_finite",
    "magnitude",
    "num_examples",
    "malformed",
)


@dataclass(frozen=True)
class Rejection:
    """Why an update was refused: ``reason`` is one of ``REASONS``; ``detail`` is for people."""

    reason: str
    detail: str


MAX_NUM_EXAMPLES = 2**31 - 1  # the most training examples a reply may claim (the int32 range Flower's records use)


def check_num_examples(n: object) -> Rejection | None:
    """Why ``n`` is not a valid example count, or ``None``: accepted are Python and numpy integers (not bools) in
    ``[0, MAX_NUM_EXAMPLES]``."""
    if type(n) is not int and (isinstance(n, bool) or not isinstance(n, (int, np.integer))):
        return Rejection("num_examples", f"num_examples {n!r} is a {type(n).__name__}, expected an integer in "
                                         f"[0, {MAX_NUM_EXAMPLES}]")
    if not 0 <= n <= MAX_NUM_EXAMPLES:
        return Rejection("num_examples", f"num_examples {n!r} is outside [0, {MAX_NUM_EXAMPLES}]")
    return None


def magnitude_limit(dtype: np.dtype) -> float:
    """The largest magnitude a value of float ``dtype`` may have in an update: ``finfo.max / h`` with headroom
    ``h = min(2**16, sqrt(finfo.max))`` (float16: 256), so that ``h`` such values sum without overflow."""
    top = float(np.finfo(dtype).max)
    return top / min(2.0**16, math.sqrt(top))


def check_params(params: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> Rejection | None:
    """Return why ``params`` cannot be applied to a model shaped like ``reference``, or ``None`` if it can."""
    if len(params) != len(reference):
        return Rejection("tensor_count", f"{len(params)} tensors, expected {len(reference)}")
    for i, (p, r) in enumerate(zip(params, reference)):
        if type(p) is not np.ndarray:  # a subclass (masked array, matrix, ...) may redefine the arithmetic
            return Rejection("dtype", f"tensor {i} is a {type(p).__name__}, expected a plain numpy array of "
                                      f"{r.dtype}")
        if p.shape != r.shape:
            return Rejection("shape", f"tensor {i} has shape {p.shape}, expected {r.shape}")
        if p.dtype != r.dtype:
            return Rejection("dtype", f"tensor {i} has dtype {p.dtype}, expected {r.dtype}")
    for i, p in enumerate(params):
        if not all_finite(p):
            return Rejection("non_finite", f"tensor {i} holds NaN or infinite values")
    for i, p in enumerate(params):
        if p.dtype.kind == "f" and p.size:
            limit = _limits.get(p.dtype) or _limits.setdefault(p.dtype, magnitude_limit(p.dtype))
            if float(np.maximum.reduce(p, axis=None)) > limit or float(np.minimum.reduce(p, axis=None)) < -limit:
                return Rejection("magnitude", f"tensor {i} holds values beyond ±{limit:.3g}, the most a {p.dtype} "
                                              f"update may hold without overflowing an aggregation")
    return None


_limits: dict[np.dtype, float] = {}


def all_finite(a: np.ndarray) -> bool:
    """Whether a tensor holds no NaN and no infinity (integer tensors always do).

    This runs twice per client update (on the update, and on the new global model), so its fixed cost matters.
    Tiny tensors (up to 16 values): the sum of their values as Python floats, with the exact check when it is not
    finite. Small tensors: ``isfinite`` (elementwise, cheap), then a byte search of its result, which costs half of a
    numpy reduction's set-up (``all()``) at these sizes. Large ones: one sum (no boolean temporary as large as the
    tensor, one pass): any NaN or infinity makes the sum NaN or infinite, so a finite sum proves every value finite;
    only when it is not finite (a bad value, or finite values whose sum overflows) is the exact check run. The sum's
    floating-point warnings are silenced.
    """
    if a.dtype.kind != "f":
        return True
    n = a.size
    if n <= _TINY:  # biases, norms: summing Python floats is cheaper than any numpy call (float32 cannot overflow it)
        if math.isfinite(sum((a if a.ndim == 1 else a.ravel()).tolist())):
            return True
    elif n <= _SUM_MIN:
        return b"\0" not in _isfinite(a).tobytes()
    elif a.itemsize >= 4:  # float16 sums overflow at 65,504: those go straight to the exact check
        with np.errstate(over="ignore", invalid="ignore"):
            if math.isfinite(np.add.reduce(a, axis=None)):
                return True
    return bool(_land(_isfinite(a), axis=None))


_TINY = 16  # up to this many elements the sum of a.tolist() is the cheapest check (0.2 µs, numpy's ~0.55 µs)
_SUM_MIN = 65536  # above this many elements the sum is worth np.errstate's few microseconds
_land = np.logical_and.reduce
_isfinite = np.isfinite
