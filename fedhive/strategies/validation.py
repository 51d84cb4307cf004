"""Checks on a client's model before any strategy sees it: shape, dtype and finite values.

The engine adds the checks that need its bookkeeping (known node, known task, duplicates, versions); these are the
ones that need only the global model. Each failed check returns a short reason (used as a metric label) and a
message naming what was wrong and what is accepted.
"""

from __future__ import annotations

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
    "num_examples",
    "malformed",
)


@dataclass(frozen=True)
class Rejection:
    """Why an update was refused: ``reason`` is one of ``REASONS``; ``detail`` is for people."""

    reason: str
    detail: str


def check_params(params: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> Rejection | None:
    """Return why ``params`` cannot be applied to a model shaped like ``reference``, or ``None`` if it can."""
    if len(params) != len(reference):
        return Rejection("tensor_count", f"{len(params)} tensors, expected {len(reference)}")
    for i, (p, r) in enumerate(zip(params, reference)):
        if not isinstance(p, np.ndarray):
            return Rejection("dtype", f"tensor {i} is a {type(p).__name__}, expected a numpy array of {r.dtype}")
        if p.shape != r.shape:
            return Rejection("shape", f"tensor {i} has shape {p.shape}, expected {r.shape}")
        if p.dtype != r.dtype:
            return Rejection("dtype", f"tensor {i} has dtype {p.dtype}, expected {r.dtype}")
    for i, p in enumerate(params):
        if p.dtype.kind == "f" and not np.isfinite(p).all():
            return Rejection("non_finite", f"tensor {i} holds NaN or infinite values")
    return None
