"""Run config: checked values, and the shipped Flower app declares exactly the keys fedhive reads."""

import tomllib
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

import fedhive
from fedhive.server.settings import DEFAULTS, RunSettings, format_run_config, parse_kv

APP = Path(fedhive.__file__).parent / "flower_app" / "pyproject.toml"


def test_flower_app_declares_every_key_with_its_default():
    cfg = tomllib.loads(APP.read_text())["tool"]["flwr"]["app"]
    assert cfg["config"] == DEFAULTS
    assert cfg["components"] == {"serverapp": "fedhive.server.app:app", "clientapp": "fedhive.client.app:app"}
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from fedhive.client.app import app as client_app
    from fedhive.server.app import app as server_app

    assert isinstance(server_app, ServerApp) and isinstance(client_app, ClientApp)


@pytest.mark.parametrize("config, words", [
    ({"stratgy": "fedbuff"}, "unknown run-config key.*valid: run-name"),
    ({"max-time": -1.0}, "max-time must be a number >= 0"),
    ({"local-steps": 2.5}, "local-steps must be an integer"),
    ({"resume": "yes"}, "resume must be true or false"),
    ({"target-accuracy": 85.0}, "fraction"),
    ({"max-time": 0.0}, "at least one of max-time"),
    ({"tls-certfile": "a.pem"}, "go together"),
    ({"strategy-params": "buffer_size"}, "KEY=VALUE"),
])
def test_bad_run_config_says_what_is_wrong(config, words):
    with pytest.raises(ValueError, match=words):
        RunSettings.from_config(config)


def test_values_parse_and_round_trip_through_flower():
    s = RunSettings.from_config({"strategy-params": "buffer_size=3,server-lr=0.5", "max-time": 60, "resume": "true"})
    assert s.strategy_params == {"buffer_size": 3, "server_lr": 0.5}
    assert s["max-time"] == 60.0 and s["resume"] is True
    assert parse_kv('{"a": [1, 2]}', "x") == {"a": [1, 2]}
    values = {"strategy": "fedbuff", "strategy-params": "buffer_size=3", "max-time": 60.0, "resume": True,
              "seed": 4, "run-dir": "/tmp/r un"}
    assert parse_config_args([format_run_config(values)]) == values
    with pytest.raises(ValueError, match="unknown run-config key"):
        format_run_config({"nope": 1})
