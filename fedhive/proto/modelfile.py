"""A model (a list of numpy arrays in ``state_dict()`` order) as the bytes of a safetensors file, and back.

Used wherever a model crosses a process boundary outside Flower's own messages: the model store's stream and the
agent's warm-worker socket. safetensors holds raw tensor bytes and a JSON header, so nothing is ever unpickled.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def contiguous(a: np.ndarray) -> np.ndarray:
    """``a`` in C order, keeping its shape (``np.ascontiguousarray`` turns a 0-d array into 1-d)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else a.copy(order="C")


def _key(i: int) -> str:
    return f"{i:05d}"


def encode(params: Sequence[np.ndarray]) -> bytes:
    """``params`` as a safetensors file (tensors named ``00000``, ``00001``, ... to keep their order)."""
    from safetensors.numpy import save

    return save({_key(i): contiguous(p) for i, p in enumerate(params)})


def decode(data: bytes) -> list[np.ndarray]:
    """The arrays of a file written by :func:`encode`, in order.

    Raises
    ------
    ValueError
        If ``data`` is not a safetensors file or its tensor names are not ``00000`` .. ``N-1``.
    """
    from safetensors.numpy import load

    try:
        tensors = load(bytes(data))
    except Exception as exc:  # safetensors raises its own SafetensorError for any malformed header
        raise ValueError(f"not a safetensors model file: {exc}") from exc
    expected = [_key(i) for i in range(len(tensors))]
    if sorted(tensors) != expected:
        raise ValueError(f"model file tensors must be named {expected[:3]}...; got {sorted(tensors)[:3]}...")
    return [tensors[k] for k in expected]
