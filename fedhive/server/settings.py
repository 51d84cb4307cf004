"""The run configuration of fedhive's Flower app: every key, its default and its meaning.

Flower refuses ``flwr run --run-config`` keys that the app's pyproject does not declare, so the shipped app
(``fedhive/flower_app/pyproject.toml``) declares exactly :data:`DEFAULTS` (a test keeps the two equal), and
``fedhive up --set KEY=VALUE`` takes the same keys. Numbers meaning "no limit" are 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

#: key -> (default, help)
KEYS: dict[str, tuple[Any, str]] = {
    "run-name": ("fedhive", "name of the run; checkpoints of the same name are resumed with resume=true"),
    "run-dir": ("", "folder for checkpoints, history.json, status.json, model and plot (default runs/<run-name>)"),
    "resume": (False, "continue from the newest checkpoint in run-dir"),
    "strategy": ("fedcompass", "fedavg, fedasync, fedbuff, fedfix, fedcompass or fedasmu"),
    "strategy-params": ("", "strategy keywords as 'k=v,k=v' or a JSON object, e.g. 'buffer_size=3'"),
    "task": ("mnist1d", "built-in task name or 'module:attr'"),
    "num-partitions": (0, "how many parts the training data is split into (0: from each node's node config)"),
    "partition": ("dirichlet", "iid, dirichlet or size"),
    "alpha": (0.5, "Dirichlet concentration of the label skew"),
    "seed": (0, "seed of the data partition and the initial model"),
    "local-steps": (20, "local SGD steps per task (FedCompass picks its own between q_min and q_max)"),
    "lr": (0.0, "client learning rate (0: the task's default)"),
    "batch-size": (0, "client mini-batch size (0: the task's default)"),
    "max-time": (300.0, "stop after this many wall seconds (0: no limit)"),
    "max-versions": (0, "stop at this global model version (0: no limit)"),
    "max-updates": (0, "stop after this many client updates (0: no limit)"),
    "target-accuracy": (0.0, "stop when the test accuracy reaches this fraction (0: no target)"),
    "eval-interval": (5.0, "evaluate the global model every this many seconds"),
    "checkpoint-every": (5, "checkpoint every this many versions (and at the end)"),
    "min-clients": (1, "wait for this many clients before starting"),
    "wait-clients": (120.0, "seconds to wait for min-clients"),
    "ttl": (600.0, "seconds a train message may take before it fails with timeout"),
    "poll-interval": (0.05, "seconds between pulls of replies"),
    "store-address": ("127.0.0.1:0", "where the model store listens (FedASMU only; port 0: any free port)"),
    "store-public-address": ("", "the store's address as devices reach it (default: store-address)"),
    "tls-certfile": ("", "the SuperLink's certificate, for the model store's TLS (with tls-keyfile)"),
    "tls-keyfile": ("", "the SuperLink's private key, for the model store's TLS"),
    "store-ca": ("", "CA certificate (PEM path on the devices) to verify the model store"),
    "metrics-address": ("127.0.0.1:9400", "HOST:PORT of the Prometheus endpoint (empty: none; 0.0.0.0 only if asked)"),
}

DEFAULTS: dict[str, Any] = {k: v for k, (v, _) in KEYS.items()}


def parse_kv(text: str, what: str) -> dict[str, Any]:
    """``'a=1,b=x'`` or a JSON object, values read as JSON where they parse (else strings)."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what} is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ValueError(f"{what} must be a JSON object, got {text!r}")
        return {str(k).replace("-", "_"): v for k, v in value.items()}
    out: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what}: {item!r} is not KEY=VALUE; write 'k=v,k=v' or a JSON object")
        raw = raw.strip()
        try:
            val: Any = json.loads(raw)
        except json.JSONDecodeError:
            val = raw
        out[key.strip().replace("-", "_")] = val
    return out


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
                if isinstance(val, float) and val.is_integer():
                    val = int(val)
                if isinstance(val, bool) or not isinstance(val, int) or val < 0:
                    raise ValueError(f"run-config {key} must be an integer >= 0, got {val!r}")
            elif isinstance(default, float):
                if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val) or val < 0:
                    raise ValueError(f"run-config {key} must be a number >= 0, got {val!r}")
                val = float(val)
            elif not isinstance(val, str):
                raise ValueError(f"run-config {key} must be a string, got {val!r}")
            values[key] = val
        s = cls(values)
        s.strategy_params  # parse early: errors before any process starts
        if s["target-accuracy"] > 1:
            raise ValueError(f"run-config target-accuracy is a fraction in [0, 1], got {s['target-accuracy']}")
        if s["eval-interval"] <= 0:
            raise ValueError("run-config eval-interval must be > 0 seconds")
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


def task_settings(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """What a client needs from the run config to build its task (missing keys take the defaults)."""
    return {k: run_config.get(k, DEFAULTS[k]) for k in ("task", "partition", "alpha", "seed", "num-partitions")}


def format_run_config(values: Mapping[str, Any]) -> str:
    """``values`` as a ``flwr run --run-config`` string (TOML values)."""
    parts = []
    for k, v in values.items():
        if k not in DEFAULTS:
            raise ValueError(f"unknown run-config key {k!r}; valid: {', '.join(DEFAULTS)}")
        if isinstance(v, bool):
            parts.append(f"{k}={'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            parts.append(f"{k}={v!r}")
        else:
            if "'" in str(v):
                raise ValueError(f"run-config {k}: values cannot contain a single quote, got {v!r}")
            parts.append(f"{k}='{v}'")
    return " ".join(parts)
