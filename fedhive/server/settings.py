"""The run configuration of fedhive's Flower app, checked: :class:`RunSettings`.

The keys, their defaults and meanings, and the text forms live in :mod:`fedhive.runconfig` (the ClientApp reads
them too, without depending on the server); they are re-exported here.

:meth:`RunSettings.from_config` checks every value before anything starts (``fedhive up`` and the server app
call it first): types; numbers ``>= 0`` unless :data:`_LIMITS` says otherwise (0 means "no limit" only where
:data:`~fedhive.runconfig.KEYS` says so: ``max-time``, ``max-versions``, ``max-updates``, ``target-accuracy``,
``lr``, ``batch-size``, ``num-partitions``); ``ttl``, ``poll-interval``, ``eval-interval`` and ``alpha`` are
``> 0`` and ``checkpoint-every`` ``>= 1``; ``strategy`` one of :data:`fedhive.strategies.STRATEGIES`;
``partition`` one of :data:`fedhive.tasks.partition.PARTITIONS`; addresses ``HOST:PORT``
(:func:`~fedhive.runconfig.host_port`; ``store-address`` may use port 0, the others may be empty for "none").
Every error names the key, the value and what is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from fedhive.runconfig import DEFAULTS, KEYS, TASK_KEYS, format_run_config, host_port, parse_kv, task_settings
from fedhive.strategies import STRATEGIES
from fedhive.strategies.params import integer, number

__all__ = ["DEFAULTS", "KEYS", "TASK_KEYS", "RunSettings", "format_run_config", "parse_kv", "task_settings"]

#: Number keys with a narrower range than the ">= 0" of every number of the run config.
_LIMITS: dict[str, dict[str, Any]] = {
    "target-accuracy": {"high": 1},  # a fraction of the test set
    "eval-interval": {"low_open": True},  # seconds between evaluations
    "ttl": {"low_open": True},  # seconds a train message may live: 0 would fail every task
    "poll-interval": {"low_open": True},  # seconds between pulls: 0 would spin
    "upload-timeout": {"low_open": True},  # seconds to finish a reply's upload: 0 would fail every reply
    "alpha": {"low_open": True},  # a Dirichlet concentration
    "checkpoint-every": {"low": 1},  # versions between checkpoints
}

#: String keys with a fixed set of values.
#: (``partition``: :data:`fedhive.tasks.partition.PARTITIONS`, spelled out: importing fedhive.tasks loads torch;
#: a test keeps the two equal.)
_CHOICES: dict[str, tuple[str, ...]] = {"strategy": tuple(STRATEGIES), "partition": ("iid", "dirichlet", "size")}

#: Address keys: whether port 0 (any free port) is accepted, and whether empty ("none") is.
_ADDRESSES: dict[str, tuple[bool, bool]] = {
    "store-address": (True, False),
    "store-public-address": (False, True),
    "metrics-address": (False, True),
}


@dataclass
class RunSettings:
    """The run config, checked. Build with :meth:`from_config`."""

    values: dict[str, Any]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RunSettings":
        unknown = sorted(set(config) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown run-config key(s) {', '.join(unknown)}; valid: {', '.join(DEFAULTS)}")
        values = dict(DEFAULTS)
        for key, val in config.items():
            default = DEFAULTS[key]
            if isinstance(default, bool):
                if isinstance(val, str) and val.lower() in ("true", "false"):
                    val = val.lower() == "true"
                if not isinstance(val, bool):
                    raise ValueError(f"run-config {key} must be true or false, got {val!r}")
            elif isinstance(default, int):
                val = integer(f"run-config {key}", val, **{"low": 0, **_LIMITS.get(key, {})})
            elif isinstance(default, float):
                val = number(f"run-config {key}", val, **{"low": 0, **_LIMITS.get(key, {})})
            elif not isinstance(val, str):
                raise ValueError(f"run-config {key} must be a string, got {val!r}")
            elif key in _CHOICES and val not in _CHOICES[key]:
                raise ValueError(f"run-config {key} must be one of {', '.join(_CHOICES[key])}, got {val!r}")
            elif key in _ADDRESSES and (val or not _ADDRESSES[key][1]):
                any_port, may_be_empty = _ADDRESSES[key]
                host_port(f"run-config {key}" + (" ('' for none)" if may_be_empty else ""), val, any_port=any_port)
            elif key == "task" and not val.strip():
                raise ValueError("run-config task must be a built-in task name or 'module:attr', got ''")
            values[key] = val
        s = cls(values)
        s.strategy_params  # parse early: errors before any process starts
        if not any(s[k] for k in ("max-time", "max-versions", "max-updates", "target-accuracy")):
            raise ValueError("set at least one of max-time, max-versions, max-updates, target-accuracy")
        if bool(s["tls-certfile"]) != bool(s["tls-keyfile"]):
            raise ValueError("tls-certfile and tls-keyfile go together")
        return s

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def strategy_params(self) -> dict[str, Any]:
        return parse_kv(self["strategy-params"], "strategy-params")

    @property
    def run_dir(self) -> Path:
        return Path(self["run-dir"]) if self["run-dir"] else Path("runs") / self["run-name"]

    def client_config(self) -> dict[str, Any]:
        """Training settings added to every task's config (only the ones set)."""
        out: dict[str, Any] = {}
        if self["lr"]:
            out["lr"] = self["lr"]
        if self["batch-size"]:
            out["batch_size"] = self["batch-size"]
        return out

    def stop_condition(self) -> dict[str, Any]:
        def opt(key: str) -> Any:
            return self[key] or None

        return {"max_time": opt("max-time"), "max_versions": opt("max-versions"), "max_updates": opt("max-updates"),
                "target_accuracy": opt("target-accuracy")}
