"""How fedhive's server and clients talk in Flower messages: record keys, metric names, conversions.

These follow Flower's own quickstart conventions, so a stock Flower ClientApp works with fedhive's server:

- instruction ``train``: ``content["arrays"]`` (ArrayRecord, named like the model's ``state_dict()``),
  ``content["config"]`` (ConfigRecord: the task's config, e.g. ``local_steps``, ``lr``, plus ``fedhive.*`` keys);
- reply: ``content["arrays"]`` (the trained model) and ``content["metrics"]`` (MetricRecord with ``num-examples``,
  and optionally ``loss`` or ``train_loss``, ``steps``, ``seconds``, ...);
- instruction ``evaluate``: same as ``train``; reply ``metrics`` with ``loss``/``eval_loss`` and
  ``accuracy``/``eval_acc``;
- instruction ``query.profile`` (fedhive clients only): reply ``content["profile"]`` (ConfigRecord: ``device-class``,
  ``num-examples``, ``arch``, ...). A client that cannot answer it is taken as device class ``unknown``.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from io import BytesIO
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from fedhive.strategies.validation import MAX_NUM_EXAMPLES  # the most examples a node may report: the engine's bound

if TYPE_CHECKING:  # for the annotations only; Flower is imported where a record is built or read
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
PROFILE = "profile"
PROFILE_QUERY = "query.profile"

# Keys fedhive adds to a train config (a stock client ignores them).
TASK_ID = "fedhive.task-id"
VERSION = "fedhive.version"
STORE_ADDRESS = "fedhive.store-address"
STORE_TOKEN = "fedhive.store-token"
STORE_CA = "fedhive.store-ca"

#: The device classes fedhive knows: ``fedhive.sim.profiles.DEVICE_CLASSES`` and ``unknown`` (a test keeps them equal).
KNOWN_DEVICE_CLASSES = ("gpu", "cpu", "rpi5", "rpi4", "rpi-zero2", "unknown")
#: What else a node may call its device class: a short token (a user's own class, e.g. ``jetson``).
DEVICE_CLASS_TOKEN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
#: The longest ``.npy`` header accepted (numpy's own ``max_header_size``): an array's data may be at most this much
#: larger than the tensor it stands for.
NPY_HEADER_MAX = 10_000
_NPY_MAGIC = b"\x93NUMPY"
_NUMPY_STYPE = "numpy.ndarray"  # flwr's SType.NUMPY


def device_class(value: object) -> str | None:
    """``value`` if a node may call its device class that: one of :data:`KNOWN_DEVICE_CLASSES`, or a token of
    ``a-z``, ``0-9``, ``_`` and ``-`` of at most 32 characters that starts with a letter or digit; else ``None``."""
    if type(value) is not str:
        return None
    if value in KNOWN_DEVICE_CLASSES or DEVICE_CLASS_TOKEN.fullmatch(value):
        return value
    return None


def example_count(value: object) -> int | None:
    """``value`` as a number of examples: an ``int`` (not a bool) or a float with an integral value, from 0 to
    :data:`MAX_NUM_EXAMPLES`; ``None`` for anything else (negative, fractional, non-finite, too large, other types)."""
    if type(value) is float and math.isfinite(value) and value.is_integer():
        value = int(value)
    if type(value) is int and 0 <= value <= MAX_NUM_EXAMPLES:
        return value
    return None


def finite_number(value: object) -> int | float | None:
    """``value`` as a metric: an ``int`` within int64 (a bool as 0 or 1) or a finite ``float``; ``None`` for anything
    else (non-finite floats, larger ints, strings, bytes, lists, records)."""
    if type(value) is bool:
        return int(value)
    if type(value) is int:
        return value if -(2**63) <= value < 2**63 else None
    if type(value) is float:
        return value if math.isfinite(value) else None
    return None


def to_array_record(params: Sequence[np.ndarray], names: Sequence[str]) -> ArrayRecord:
    """``params`` as an ArrayRecord keyed by ``names`` (so ``to_torch_state_dict()`` loads into the model)."""
    from flwr.app import Array, ArrayRecord

    if len(names) != len(params):
        raise ValueError(f"{len(params)} arrays but {len(names)} names")
    return ArrayRecord(OrderedDict((n, Array(np.asarray(p))) for n, p in zip(names, params)))


def _some(names: Sequence[object], at_most: int = 5) -> str:
    """``names`` for an error message, at most ``at_most`` of them (a hostile record may hold thousands)."""
    shown = ", ".join(repr(n)[:80] for n in list(names)[:at_most])
    return shown + (f" and {len(names) - at_most} more" if len(names) > at_most else "")


def _decode(name: object, array: object, spec: tuple[tuple[int, ...], np.dtype] | None) -> np.ndarray:
    """One Flower ``Array`` as a plain ``np.ndarray``, its declared dtype, shape and size checked against ``spec``
    before any decoding, and the decoded array checked again (the ``.npy`` header may disagree with the metadata)."""
    from flwr.app import Array

    label = repr(name)[:80]
    if type(array) is not Array:
        raise ValueError(f"array {label} is a {type(array).__name__}, not a Flower Array")
    if array.stype != _NUMPY_STYPE:
        raise ValueError(f"array {label} is serialized as {str(array.stype)[:80]!r}; only {_NUMPY_STYPE!r} is accepted")
    data = array.data
    if type(data) is not bytes or not data.startswith(_NPY_MAGIC):
        raise ValueError(f"array {label} is not in .npy format")
    if spec is not None:
        shape, dtype = spec
        declared = tuple(array.shape) if isinstance(array.shape, (tuple, list)) else array.shape
        if type(array.dtype) is not str or array.dtype != str(dtype):
            raise ValueError(f"array {label} has dtype {str(array.dtype)[:80]!r}; the model's is {str(dtype)!r}")
        if declared != shape or not all(type(d) is int for d in declared):
            raise ValueError(f"array {label} has shape {str(array.shape)[:80]}; the model's is {shape}")
        limit = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize + NPY_HEADER_MAX
        if len(data) > limit:
            raise ValueError(f"array {label} holds {len(data)} bytes, more than the model's tensor needs "
                             f"({limit} with the .npy header)")
    try:
        out = np.load(BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises assorted errors for a bad .npy header or truncated data
        raise ValueError(f"array {label} cannot be decoded: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if type(out) is not np.ndarray:
        raise ValueError(f"array {label} decodes to a {type(out).__name__}, not an ndarray")
    if spec is not None and (out.dtype != spec[1] or out.shape != spec[0]):
        raise ValueError(f"array {label} decodes to {out.dtype} {out.shape}; the model's is {spec[1]} {spec[0]}")
    return out


def from_array_record(record: object, names: Sequence[str] | None = None,
                      specs: Sequence[tuple[Sequence[int], Any]] | None = None) -> list[np.ndarray]:
    """The arrays of ``record`` (an ArrayRecord, checked: it comes off the wire) as plain ``np.ndarray`` objects.

    Without ``names`` (a client reading the server's model) they come in the record's own order. With ``names``
    (the server reading a client's reply) the record's keys must be exactly those names, in any order; the arrays
    come back in ``names`` order, mapped by name. With ``specs`` as well, one ``(shape, dtype)`` per name, each
    array's declared dtype and shape must be those and its data no larger than the tensor (plus a ``.npy`` header
    of at most :data:`NPY_HEADER_MAX` bytes), all checked before it is decoded; the decoded array is checked again.
    Only ``.npy`` data is decoded, never pickles.

    Raises
    ------
    ValueError
        If ``record`` is not an ArrayRecord, names are missing or foreign (both are named), or an array does not
        match its spec or cannot be decoded; whatever error the decoding raises is turned into this one.
    """
    from flwr.app import ArrayRecord

    if not isinstance(record, ArrayRecord):
        raise ValueError(f"'{ARRAYS}' must be an ArrayRecord, got {type(record).__name__}")
    keys = list(record.keys())
    if names is not None:
        names = list(names)
        missing = [n for n in names if n not in record]
        wanted = set(names)
        foreign = [k for k in keys if k not in wanted]
        if missing or foreign:
            why = [f"missing {_some(missing)}"] if missing else []
            why += [f"not in the model {_some(foreign)}"] if foreign else []
            raise ValueError(f"the arrays must be named exactly like the model's {len(names)} tensors: "
                             + "; ".join(why))
        keys = names
    if specs is not None:
        if names is None or len(specs) != len(names):
            raise ValueError("specs need names, one (shape, dtype) per name")
        checks = [(tuple(int(d) for d in s), np.dtype(t)) for s, t in specs]
    else:
        checks = [None] * len(keys)
    try:
        return [_decode(k, record[k], c) for k, c in zip(keys, checks)]
    except ValueError:
        raise
    except Exception as exc:  # numpy and Flower raise assorted errors for undecodable arrays
        raise ValueError(f"cannot decode array record: {type(exc).__name__}: {str(exc)[:200]}") from exc


def to_config_record(config: Mapping[str, Any]) -> ConfigRecord:
    """A ConfigRecord of ``config``, dropping ``None`` values (Flower has no null)."""
    from flwr.app import ConfigRecord

    out: dict[str, Any] = {}
    for k, v in config.items():
        if v is None:
            continue
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, (tuple, list)):
            v = list(v)
        out[str(k)] = v
    return ConfigRecord(out)


def metric_record(metrics: Mapping[str, Any]) -> MetricRecord:
    """A MetricRecord of the finite numeric entries of ``metrics`` (others are left out)."""
    from flwr.app import MetricRecord

    out: dict[str, int | float] = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, (np.integer, int)):
            out[str(k)] = int(v)
        elif isinstance(v, (np.floating, float)) and np.isfinite(v):
            out[str(k)] = float(v)
    return MetricRecord(out)
