"""``preset=``: every strategy's switch between its defaults and its paper's settings."""

from __future__ import annotations

import pytest

from fedhive.strategies import STRATEGIES, build, parameters

# The published settings, written out again here (not read from the code) so that a change to a preset fails.
PAPER = {
    "fedavg": {},
    "fedasync": {"alpha": 0.6, "staleness": "polynomial", "staleness_a": 0.5},
    "fedbuff": {},
    "fedfix": {},
    "fedcompass": {"q_min": 20, "q_max": 100, "lam": 1.5, "speed_momentum": 0.9, "alpha": 0.9,
                   "staleness": "polynomial", "staleness_a": 0.5, "client_weights": "samples",
                   "speed_model": "per_step"},
    "fedasmu": {"mu_alpha": 1.0, "lam": 1.0, "sigma": 0.5, "iota": 0.0, "server_meta_lr": 0.01, "mu_beta": 1.0,
                "gamma": 1.0, "upsilon": 0.5, "local_meta_lr": 0.01, "fetch_fraction": 0.5},
}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_the_paper_preset_sets_the_published_values(name):
    assert parameters(name)["preset"] == "default"
    config = build(name, {"preset": "paper"}).config()
    assert config["preset"] == "paper"
    for key, value in PAPER[name].items():
        assert config[key] == value, key
    assert dict(STRATEGIES[name].PRESETS["paper"]) == PAPER[name]
    assert build(name).config()["preset"] == "default"


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_the_default_preset_is_the_signature(name):
    assert build(name, {"preset": "default"}).config() == build(name).config()


def test_an_explicit_keyword_wins_over_the_preset():
    config = build("fedcompass", {"preset": "paper", "q_min": 5, "client_weights": "group"}).config()
    assert (config["q_min"], config["q_max"], config["client_weights"]) == (5, 100, "group")
    config = build("fedasmu", {"mu_beta": 1000.0, "preset": "paper"}).config()
    assert (config["mu_beta"], config["mu_alpha"]) == (1000.0, 1.0)


@pytest.mark.parametrize("bad", ["papr", "", None, 1, ["paper"], {"paper": 1}, "PAPER"])
def test_an_unknown_preset_is_refused_with_the_accepted_ones(bad):
    with pytest.raises(ValueError, match=r"preset must be one of default, paper"):
        build("fedasync", {"preset": bad})


def test_the_flower_front_door_takes_the_preset():
    from fedhive.flower import FedCompass

    assert FedCompass(preset="paper").strategy_params["preset"] == "paper"
    with pytest.raises(ValueError, match="preset"):
        FedCompass(preset="nope")
