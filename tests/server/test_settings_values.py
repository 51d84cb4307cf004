"""Run-config values are checked before anything starts: ranges, HOST:PORT, choices; each error names the key."""

from __future__ import annotations

import math

import pytest

from fedhive.runconfig import DEFAULTS, host_port
from fedhive.server.settings import RunSettings, _CHOICES
from fedhive.strategies import STRATEGIES


@pytest.mark.parametrize("key, value, accepted", [
    ("ttl", 0.0, "> 0"),
    ("ttl", 0, "> 0"),
    ("poll-interval", 0.0, "> 0"),
    ("poll-interval", 0, "> 0"),
    ("alpha", 0.0, "> 0"),
    ("eval-interval", 0.0, "> 0"),
    ("checkpoint-every", 0, ">= 1"),
    ("strategy", "nope", "one of fedavg, fedasync, fedbuff, fedfix, fedcompass, fedasmu"),
    ("strategy", "", "one of fedavg"),
    ("strategy", "FedAvg", "one of fedavg"),
    ("partition", "label", "one of iid, dirichlet, size"),
    ("task", "", "built-in task name"),
    ("metrics-address", "127.0.0.1:99999", "port 1-65535"),
    ("metrics-address", "127.0.0.1:0", "port 1-65535"),
    ("metrics-address", "127.0.0.1", "HOST:PORT"),
    ("metrics-address", "127.0.0.1:", "HOST:PORT"),
    ("metrics-address", ":9400", "HOST:PORT"),
    ("metrics-address", "::1:9400", "IPv6 host in brackets"),
    ("metrics-address", "[::g]:9400", "not an IPv6 address"),
    ("metrics-address", "[127.0.0.1]:9400", "not an IPv6 address"),
    ("metrics-address", "host name:9400", "not a host name"),
    ("metrics-address", "127.0.0.1:-1", "HOST:PORT"),
    ("metrics-address", "127.0.0.1:9_400", "HOST:PORT"),
    ("metrics-address", "127.0.0.1:\u0669\u0669", "HOST:PORT"),
    ("metrics-address", "127.0.0.1:0000009400", "HOST:PORT"),
    ("store-address", "", "HOST:PORT"),
    ("store-address", "0.0.0.0:65536", "port 0-65535"),
    ("store-address", "9300", "HOST:PORT"),
    ("store-public-address", "store:0", "port 1-65535"),
    ("store-public-address", "store", "HOST:PORT"),
])
def test_bad_values_are_refused_naming_the_key_the_value_and_what_is_accepted(key, value, accepted):
    with pytest.raises(ValueError) as info:
        RunSettings.from_config({key: value})
    msg = str(info.value)
    assert f"run-config {key}" in msg and accepted in msg and (repr(value) in msg or str(value) in msg), msg


@pytest.mark.parametrize("key, value", [
    ("ttl", 0.5), ("poll-interval", 0.001), ("alpha", 0.01), ("checkpoint-every", 1),
    *[("strategy", name) for name in STRATEGIES],
    ("partition", "iid"), ("partition", "size"),
    ("metrics-address", ""), ("metrics-address", "0.0.0.0:9400"), ("metrics-address", "[::1]:9092"),
    ("metrics-address", "[::]:1"), ("metrics-address", "localhost:65535"), ("metrics-address", "prom.lan:9400"),
    ("store-address", "127.0.0.1:0"), ("store-address", "[::1]:0"), ("store-address", "[fe80::1]:9300"),
    ("store-public-address", ""), ("store-public-address", "server.example.org:9300"),
    ("store-public-address", "[2001:db8::7]:9300"),
    # 0 means "no limit" where the docs say so
    ("max-versions", 0), ("max-updates", 0), ("lr", 0.0), ("batch-size", 0), ("num-partitions", 0),
    ("target-accuracy", 0.0), ("wait-clients", 0.0),
])
def test_good_values_are_accepted(key, value):
    assert RunSettings.from_config({key: value})[key] == value


def test_the_defaults_pass_every_check():
    assert RunSettings.from_config(DEFAULTS).values == DEFAULTS


def test_the_partition_choices_are_the_tasks_ones():
    from fedhive.tasks.partition import PARTITIONS

    assert _CHOICES["partition"] == PARTITIONS and _CHOICES["strategy"] == tuple(STRATEGIES)


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:9400", ("127.0.0.1", 9400)), ("[::1]:9092", ("::1", 9092)), ("a-b.c_d:1", ("a-b.c_d", 1)),
])
def test_host_port_splits(value, expected):
    assert host_port("x", value) == expected


def test_host_port_port_zero_only_when_asked():
    assert host_port("x", "h:0", any_port=True) == ("h", 0)
    with pytest.raises(ValueError, match="x must be HOST:PORT with a port 1-65535"):
        host_port("x", "h:0")
    with pytest.raises(ValueError, match="got 9400"):
        host_port("x", 9400)


def test_fedhive_up_checks_values_before_starting_anything(tmp_path, monkeypatch):
    from fedhive import up as up_mod

    def boom(*a, **k):
        raise AssertionError("a process was about to start")

    monkeypatch.setattr(up_mod, "LocalCluster", boom)
    monkeypatch.setattr(up_mod, "_prewarm", boom)
    for kw, words in (({"strategy": "nope"}, "run-config strategy must be one of"),
                      ({"metrics_address": "127.0.0.1:99999"}, "run-config metrics-address"),
                      ({"settings": {"ttl": 0.0}}, "run-config ttl must be"),
                      ({"settings": {"poll-interval": 0}}, "run-config poll-interval must be")):
        with pytest.raises(ValueError, match=words):
            up_mod.up(out=str(tmp_path / "run"), **kw)


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

_values = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                    st.text(max_size=30), st.sampled_from(["[::1]:9092", "127.0.0.1:99999", "h:0", "[::]:", "fedavg",
                                                           "1e400", "nan", "true", "{", "a=1,b"]),
                    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.dictionaries(st.sampled_from(sorted(DEFAULTS)), _values, max_size=4))
def test_fuzzed_run_configs_raise_nothing_but_value_error(config):
    try:
        s = RunSettings.from_config(config)
    except ValueError:
        return
    for key, value in s.values.items():  # what passes is well-typed and in range
        assert type(value) is type(DEFAULTS[key]), key
        if isinstance(value, float):
            assert math.isfinite(value) and value >= 0, key
    assert s["strategy"] in STRATEGIES and s["ttl"] > 0 and s["poll-interval"] > 0
