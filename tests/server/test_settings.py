"""RunSettings checks, parse_kv, format_run_config through Flower's own parser, and the shipped app's pyproject."""

from __future__ import annotations

import importlib
import math
import tomllib
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

import fedhive
from fedhive.server.settings import DEFAULTS, KEYS, RunSettings, format_run_config, parse_kv, task_settings

APP_TOML = Path(fedhive.__file__).parent / "flower_app" / "pyproject.toml"


# --------------------------------------------------------------------------- RunSettings.from_config
def test_defaults_are_accepted_and_kept():
    s = RunSettings.from_config(DEFAULTS)
    assert s.values == DEFAULTS and s.values is not DEFAULTS
    assert RunSettings.from_config({}).values == DEFAULTS
    assert s.strategy_params == {} and s.run_dir == Path("runs") / "fedhive"
    assert s.client_config() == {}
    assert s.stop_condition() == {"max_time": 300.0, "max_versions": None, "max_updates": None,
                                  "target_accuracy": None}


def test_every_key_has_a_help_text_and_a_typed_default():
    assert set(KEYS) == set(DEFAULTS)
    for key, (default, text) in KEYS.items():
        assert isinstance(default, (bool, int, float, str)) and text.strip(), key


def test_unknown_keys_are_refused_with_the_valid_ones_listed():
    with pytest.raises(ValueError) as info:
        RunSettings.from_config({"stratgy": "fedbuff", "zzz": 1})
    msg = str(info.value)
    assert "stratgy" in msg and "zzz" in msg
    valid = msg.split("valid:", 1)[1]
    assert all(k in valid for k in DEFAULTS)


@pytest.mark.parametrize("key, value, words", [
    ("resume", "yes", "resume must be true or false"),
    ("resume", 1, "resume must be true or false"),
    ("local-steps", 2.5, "local-steps must be an integer >= 0"),
    ("local-steps", "20", "local-steps must be an integer >= 0"),
    ("local-steps", True, "local-steps must be an integer >= 0"),
    ("local-steps", math.inf, "local-steps must be an integer >= 0"),
    ("max-time", "60", "max-time must be a finite number >= 0"),
    ("max-time", True, "max-time must be a finite number >= 0"),
    ("max-time", math.nan, "max-time must be a finite number >= 0"),
    ("max-time", math.inf, "max-time must be a finite number >= 0"),
    ("strategy", 3, "strategy must be a string"),
    ("run-name", None, "run-name must be a string"),
])
def test_wrong_types_are_refused(key, value, words):
    with pytest.raises(ValueError, match=words):
        RunSettings.from_config({key: value})


@pytest.mark.parametrize("key, value", [("max-time", -1.0), ("max-time", -1), ("local-steps", -1), ("seed", -3),
                                        ("alpha", -0.5), ("ttl", -600.0), ("max-versions", -1)])
def test_negative_numbers_are_refused(key, value):
    with pytest.raises(ValueError, match=f"{key} must be"):
        RunSettings.from_config({key: value})


def test_target_accuracy_is_a_fraction():
    with pytest.raises(ValueError, match=r"run-config target-accuracy must be a finite number >= 0 and <= 1, "
                                         r"got 85\.0"):
        RunSettings.from_config({"target-accuracy": 85.0})
    with pytest.raises(ValueError, match=r"target-accuracy must be a finite number >= 0 and <= 1, got 1\.01"):
        RunSettings.from_config({"target-accuracy": 1.01})
    s = RunSettings.from_config({"target-accuracy": 1, "max-time": 0.0})
    assert s["target-accuracy"] == 1.0 and isinstance(s["target-accuracy"], float)
    assert s.stop_condition()["target_accuracy"] == 1.0 and s.stop_condition()["max_time"] is None


def test_a_run_needs_a_stop_condition():
    with pytest.raises(ValueError, match="at least one of max-time, max-versions, max-updates, target-accuracy"):
        RunSettings.from_config({"max-time": 0.0})
    for key, value in (("max-versions", 5), ("max-updates", 3), ("target-accuracy", 0.9)):
        assert RunSettings.from_config({"max-time": 0, key: value})[key] == value


def test_eval_interval_must_be_positive():
    with pytest.raises(ValueError, match=r"run-config eval-interval must be a finite number > 0, got 0\.0"):
        RunSettings.from_config({"eval-interval": 0.0})


def test_tls_files_go_together():
    with pytest.raises(ValueError, match="go together"):
        RunSettings.from_config({"tls-certfile": "cert.pem"})
    with pytest.raises(ValueError, match="go together"):
        RunSettings.from_config({"tls-keyfile": "key.pem"})
    s = RunSettings.from_config({"tls-certfile": "cert.pem", "tls-keyfile": "key.pem"})
    assert (s["tls-certfile"], s["tls-keyfile"]) == ("cert.pem", "key.pem")


def test_values_are_normalised():
    s = RunSettings.from_config({"resume": "TRUE", "max-time": 60, "local-steps": 5.0, "lr": 0.01,
                                 "batch-size": 32, "run-dir": "/tmp/x", "strategy-params": "buffer_size=3"})
    assert s["resume"] is True
    assert s["max-time"] == 60.0 and isinstance(s["max-time"], float)
    assert s["local-steps"] == 5 and isinstance(s["local-steps"], int)
    assert s.client_config() == {"lr": 0.01, "batch_size": 32}
    assert s.run_dir == Path("/tmp/x") and s.strategy_params == {"buffer_size": 3}
    assert RunSettings.from_config({"resume": "false"})["resume"] is False


def test_numpy_values_are_normalised_to_python_ones():
    np = pytest.importorskip("numpy")
    s = RunSettings.from_config({"local-steps": np.int64(7), "max-time": np.float32(30.0), "seed": np.uint8(3)})
    assert (s["local-steps"], s["max-time"], s["seed"]) == (7, 30.0, 3)
    assert type(s["local-steps"]) is int and type(s["max-time"]) is float and type(s["seed"]) is int
    with pytest.raises(ValueError, match="run-config local-steps must be an integer >= 0, got "):
        RunSettings.from_config({"local-steps": np.bool_(True)})


def test_the_keys_live_in_runconfig_and_settings_re_exports_them():
    from fedhive import runconfig
    from fedhive.server import settings

    for name in ("DEFAULTS", "KEYS", "TASK_KEYS", "format_run_config", "parse_kv", "task_settings"):
        assert getattr(settings, name) is getattr(runconfig, name)


def test_bad_strategy_params_fail_early():
    with pytest.raises(ValueError, match="KEY=VALUE"):
        RunSettings.from_config({"strategy-params": "buffer_size"})
    with pytest.raises(ValueError, match="not valid JSON"):
        RunSettings.from_config({"strategy-params": "{buffer_size: 3}"})


def test_task_settings_take_what_a_client_needs():
    assert task_settings({"task": "synthetic", "seed": 4, "max-time": 10.0}) == {
        "task": "synthetic", "partition": "dirichlet", "alpha": 0.5, "seed": 4, "num-partitions": 0}


# --------------------------------------------------------------------------- parse_kv
def test_parse_kv_key_value_pairs():
    assert parse_kv("a=1,b=x", "p") == {"a": 1, "b": "x"}
    assert parse_kv(" buffer-size = 3 , server_lr=0.5, flag=true, name=\"q\" ", "p") == {
        "buffer_size": 3, "server_lr": 0.5, "flag": True, "name": "q"}
    assert parse_kv("", "p") == {} and parse_kv("   ", "p") == {}


def test_parse_kv_json():
    assert parse_kv('{"a": 1, "b": [1, 2], "c": {"d": null}}', "p") == {"a": 1, "b": [1, 2], "c": {"d": None}}
    with pytest.raises(ValueError, match="strategy-params is not valid JSON"):
        parse_kv("{a: 1}", "strategy-params")


@pytest.mark.parametrize("text", ["a", "a=1,", "=3", "a=1,,b=2"])
def test_parse_kv_refuses_items_without_a_key(text):
    with pytest.raises(ValueError, match=r"bad p .*: write KEY=VALUE, e\.g\. 'k=v,k=v'"):
        parse_kv(text, "p")


# --------------------------------------------------------------------------- format_run_config
def test_format_run_config_round_trips_through_flowers_parser():
    values = {"strategy": "fedbuff", "strategy-params": "buffer_size=3,server_lr=0.5", "max-time": 60.0,
              "resume": True, "seed": 4, "run-dir": "/tmp/a run", "lr": 1e-05, "alpha": 0.5, "max-versions": 0,
              "run-name": "", "store-address": "0.0.0.0:9300", "checkpoint-every": 5}
    text = format_run_config(values)
    back = parse_config_args([text])
    assert back == values
    assert {k: type(v) for k, v in back.items()} == {k: type(v) for k, v in values.items()}


def test_format_run_config_of_all_defaults_round_trips():
    back = parse_config_args([format_run_config(DEFAULTS)])
    assert back == DEFAULTS
    assert RunSettings.from_config(back).values == DEFAULTS


def test_format_run_config_json_strategy_params_round_trip():
    values = {"strategy-params": '{"buffer_size": 3, "q_max": 40}'}
    back = parse_config_args([format_run_config(values)])
    assert back == values and RunSettings.from_config(back).strategy_params == {"buffer_size": 3, "q_max": 40}


def test_format_run_config_refuses_unknown_keys_and_single_quotes():
    with pytest.raises(ValueError, match="unknown run-config key 'nope'"):
        format_run_config({"nope": 1})
    with pytest.raises(ValueError, match="single quote"):
        format_run_config({"run-name": "it's"})


# --------------------------------------------------------------------------- the shipped Flower app
def _app_table() -> dict:
    return tomllib.loads(APP_TOML.read_text())["tool"]["flwr"]["app"]


def test_flower_app_declares_exactly_the_keys_and_defaults():
    config = _app_table()["config"]
    assert list(config) == list(DEFAULTS)
    assert config == DEFAULTS
    assert {k: type(v) for k, v in config.items()} == {k: type(v) for k, v in DEFAULTS.items()}


def test_flower_app_components_are_fedhives_apps():
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    components = _app_table()["components"]
    assert components == {"serverapp": "fedhive.server.app:app", "clientapp": "fedhive.client.app:app"}
    objects = {}
    for kind, ref in components.items():
        module, _, attr = ref.partition(":")
        objects[kind] = getattr(importlib.import_module(module), attr)
    assert isinstance(objects["serverapp"], ServerApp)
    assert isinstance(objects["clientapp"], ClientApp)
