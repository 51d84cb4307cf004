"""Hostile variants of an honest reply, each named and marked with what the server must do with it.

``MUST_REJECT`` kinds are malformed or forged: the engine must reject them (a counted rejection with a reason) and
leave the model untouched. ``MAY_APPLY`` kinds are well-formed but odd (huge finite values, junk metrics next to a
valid model): the engine may apply them, but must not crash and the model must stay finite.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from fedhive.engine.transport import Result
from fedhive.strategies.base import Update


class _Sub(np.ndarray):
    """An ndarray subclass: it may override arithmetic, so the engine must not take it for a plain array."""


def _params(fn: Callable[[list[np.ndarray], np.random.Generator], list[Any]]):
    def mutate(u: Update, task_id: int, rng: np.random.Generator):
        return Update(u.node_id, u.base_version, fn([np.array(p, copy=True) for p in u.params], rng),
                      u.num_examples, dict(u.metrics))
    return mutate


def _first(fn: Callable[[np.ndarray, np.random.Generator], Any]):
    return _params(lambda ps, rng: [fn(ps[0], rng)] + ps[1:])


def _at_random(value: float):
    def put(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        q = np.array(p, dtype=p.dtype, copy=True)
        q.flat[int(rng.integers(q.size))] = value
        return q
    return put


def _examples(value: Any):
    return lambda u, task_id, rng: Update(u.node_id, u.base_version, u.params, value, dict(u.metrics))


def _claim(value: Any):
    return lambda u, task_id, rng: Update(u.node_id, value, u.params, u.num_examples, dict(u.metrics))


def _metrics(value: dict):
    return lambda u, task_id, rng: Update(u.node_id, u.base_version, u.params, u.num_examples, dict(value))


MUST_REJECT: dict[str, Callable] = {
    "nan": _first(_at_random(float("nan"))),
    "inf": _first(_at_random(float("inf"))),
    "neg_inf": _first(_at_random(float("-inf"))),
    "wrong_shape": _first(lambda p, rng: np.zeros(p.size + 1, p.dtype)),
    "wrong_ndim": _first(lambda p, rng: p.reshape(1, *p.shape)),
    "scalar": _first(lambda p, rng: np.float32(1.0)),
    "wrong_dtype": _first(lambda p, rng: p.astype(np.float64 if p.dtype != np.float64 else np.float32)),
    "int_dtype": _first(lambda p, rng: np.zeros(p.shape, np.int64)),
    "object_dtype": _first(lambda p, rng: p.astype(object)),
    "bytes_tensor": _first(lambda p, rng: p.tobytes()),
    "list_tensor": _first(lambda p, rng: p.tolist()),
    "none_tensor": _first(lambda p, rng: None),
    "string_tensor": _first(lambda p, rng: "weights"),
    "subclass": _first(lambda p, rng: p.view(_Sub)),
    "masked": _first(lambda p, rng: np.ma.masked_array(p)),
    "missing_tensor": _params(lambda ps, rng: ps[:-1]),
    "extra_tensor": _params(lambda ps, rng: ps + [ps[-1]]),
    "no_tensors": _params(lambda ps, rng: []),
    "params_not_a_list": lambda u, task_id, rng: Update(u.node_id, u.base_version, "model", u.num_examples, {}),
    "examples_inf": _examples(float("inf")),
    "examples_nan": _examples(float("nan")),
    "examples_negative": _examples(-1),
    "examples_fraction": _examples(12.5),
    "examples_2^62": _examples(2 ** 62),
    "examples_1e308": _examples(1e308),
    "examples_string": _examples("100"),
    "examples_list": _examples([100]),
    "examples_none": _examples(None),
    "examples_bool": _examples(True),
    "claim_string": _claim("0"),
    "claim_float": _claim(0.5),
    "claim_future": _claim(10 ** 9),
    "claim_negative": _claim(-1),
    "claim_list": _claim([0]),
    "other_node": lambda u, task_id, rng: Update(u.node_id + 10 ** 6, u.base_version, u.params, u.num_examples,
                                                 dict(u.metrics)),
}

MAY_APPLY: dict[str, Callable] = {
    "huge_finite": _first(lambda p, rng: np.full(p.shape, np.finfo(p.dtype).max / 2, p.dtype)
                          if p.dtype.kind == "f" else p),
    "tiny_finite": _first(lambda p, rng: np.full(p.shape, np.finfo(p.dtype).tiny, p.dtype)
                          if p.dtype.kind == "f" else p),
    "zero_examples": _examples(0),
    "metrics_junk": _metrics({"loss": b"\x00", "accuracy": [1, 2], "nested": {"a": {"b": 1}}, "x": float("nan"),
                              "big": 10 ** 400, "s": "t" * 10_000}),
}


def forged(u: Update, task_id: int, rng: np.random.Generator) -> list:
    """Replies the engine must not take: the same reply twice, and one for a task that was never sent."""
    return [u, u, Result(task_id + 10 ** 9, u, 0.0)]


KINDS = sorted(MUST_REJECT) + sorted(MAY_APPLY)


def mutate(kind: str, u: Update, task_id: int, rng: np.random.Generator) -> Update:
    fn = MUST_REJECT.get(kind) or MAY_APPLY[kind]
    return fn(u, task_id, rng)
