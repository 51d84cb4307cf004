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

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

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


def to_array_record(params: Sequence[np.ndarray], names: Sequence[str]) -> ArrayRecord:
    """``params`` as an ArrayRecord keyed by ``names`` (so ``to_torch_state_dict()`` loads into the model)."""
    from flwr.app import Array, ArrayRecord

    if len(names) != len(params):
        raise ValueError(f"{len(params)} arrays but {len(names)} names")
    return ArrayRecord(OrderedDict((n, Array(np.asarray(p))) for n, p in zip(names, params)))


def from_array_record(record: object, names: Sequence[str] | None = None) -> list[np.ndarray]:
    """The arrays of ``record`` (an ArrayRecord, checked: it comes off the wire) in ``names`` order when its keys are
    exactly those names, else in its own order.

    Raises
    ------
    ValueError
        If ``record`` is not an ArrayRecord or an array cannot be decoded.
    """
    from flwr.app import ArrayRecord

    if not isinstance(record, ArrayRecord):
        raise ValueError(f"'{ARRAYS}' must be an ArrayRecord, got {type(record).__name__}")
    keys = list(record.keys())
    if names is not None and sorted(keys) == sorted(names) and keys != list(names):
        keys = list(names)
    try:
        return [record[k].numpy() for k in keys]
    except Exception as exc:  # Flower raises assorted errors for undecodable arrays
        raise ValueError(f"cannot decode array record: {exc}") from exc


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
