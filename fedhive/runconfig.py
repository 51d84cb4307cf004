"""The run configuration of fedhive's Flower app: every key, its default and its meaning, and the text forms.

Both sides read it: the server app checks a whole run config (:class:`fedhive.server.settings.RunSettings`), the
ClientApp takes only what it needs to build its task (:func:`task_settings`), and ``fedhive up`` writes one for
``flwr run`` (:func:`format_run_config`). It imports only the standard library and
:mod:`fedhive.strategies.params`, so the client side does not depend on the server.

Flower refuses ``flwr run --run-config`` keys that the app's pyproject does not declare, so the shipped app
(``fedhive/flower_app/pyproject.toml``) declares exactly :data:`DEFAULTS` (a test keeps the two equal), and
``fedhive up --set KEY=VALUE`` takes the same keys. Numbers meaning "no limit" are 0.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Mapping

from fedhive.strategies.params import parse_pairs

#: Seconds a ServerApp takes at most, after SIGTERM or ``flwr stop``, to write its final checkpoint, model, history
#: and status before it exits anyway (``fedhive.server.app``); supervisors wait this long for those files.
STOP_GRACE = 60.0

#: File in the run folder a running ServerApp touches every 2 s: a watcher that cannot see its pid (``fedhive submit``
#: on another host or container) takes it as gone when the file is 10 s old.
HEARTBEAT_FILE = "heartbeat"

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
    "upload-timeout": (60.0, "seconds a reply's upload may make no progress before its task fails (upload_stalled)"),
    "store-address": ("127.0.0.1:0", "where the model store listens (FedASMU only; port 0: any free port)"),
    "store-public-address": ("", "the store's address as devices reach it (default: store-address)"),
    "tls-certfile": ("", "the SuperLink's certificate, for the model store's TLS (with tls-keyfile)"),
    "tls-keyfile": ("", "the SuperLink's private key, for the model store's TLS"),
    "store-ca": ("", "CA certificate (PEM path on the devices) to verify the model store"),
    "metrics-address": ("127.0.0.1:9400", "HOST:PORT of the Prometheus endpoint (empty: none; 0.0.0.0 only if asked)"),
}

DEFAULTS: dict[str, Any] = {k: v for k, (v, _) in KEYS.items()}

#: The keys a client builds its task from.
TASK_KEYS: tuple[str, ...] = ("task", "partition", "alpha", "seed", "num-partitions")


def parse_kv(text: str, what: str) -> dict[str, Any]:
    """``'a=1,b=x'`` or a JSON object; keys with ``-`` become ``_``, values typed as the command line types them
    (:func:`fedhive.strategies.params.parse_value`)."""
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
        pairs = value
    else:
        pairs = parse_pairs(text.split(","), what, example="'k=v,k=v' (buffer_size=3,server_lr=0.5) or a JSON object")
    return {str(k).replace("-", "_"): v for k, v in pairs.items()}


_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")


def host_port(what: str, value: Any, *, any_port: bool = False) -> tuple[str, int]:
    """``value`` as ``HOST:PORT``: ``(host, port)``, an IPv6 host without its brackets.

    Accepted: a host name or IPv4 address (``127.0.0.1:9400``, ``store.lan:9300``) or a bracketed IPv6 address
    (``[::1]:9092``), then a port 1-65535 (0-65535 with ``any_port``: 0 picks a free one). ``what`` names the
    setting in the error.
    """
    ports = "0-65535, 0: any free port" if any_port else "1-65535"
    accepted = f"HOST:PORT with a port {ports} (e.g. 127.0.0.1:9400, or [::1]:9400 for IPv6)"
    if not isinstance(value, str):
        raise ValueError(f"{what} must be {accepted}, got {value!r}")
    host, sep, port = value.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or len(port) > 5:
        raise ValueError(f"{what} must be {accepted}, got {value!r}")
    number = int(port)
    if not (0 if any_port else 1) <= number <= 65535:
        raise ValueError(f"{what} must be {accepted}, got port {number} in {value!r}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{what} must be {accepted}; {host} is not an IPv6 address (in {value!r})") from None
        return host[1:-1], number
    if ":" in host:
        raise ValueError(f"{what} must be {accepted}; write an IPv6 host in brackets, got {value!r}")
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{what} must be {accepted}; {host!r} is not a host name or address (in {value!r})")
    return host, number


def task_settings(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """What a client needs from the run config to build its task (missing keys take the defaults)."""
    return {k: run_config.get(k, DEFAULTS[k]) for k in TASK_KEYS}


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
