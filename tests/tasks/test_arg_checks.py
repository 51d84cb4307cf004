"""Settings checked by the one integer and number checks (fedhive.strategies.params) outside the strategies: task
constructors, training configs, partitioners, staleness functions and the transports' settings. Errors name the
setting, the bad value and the accepted range; integral floats and numpy numbers are accepted and come out as
Python ints and floats."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from fedhive.client.trainer import Trainer
from fedhive.sim.executor import InlineExecutor
from fedhive.sim.fleet import SimTransport
from fedhive.sim.profiles import DeviceProfile, FleetSpec
from fedhive.strategies.staleness import make_staleness
from fedhive.tasks import load_task
from fedhive.tasks import partition as part
from fedhive.tasks.config import TrainConfig, TrainJob


def _raises(words: str):
    return pytest.raises(ValueError, match=re.escape(words))


# --------------------------------------------------------------------------- TrainConfig.parse
@pytest.mark.parametrize("config, words", [
    ({"local_steps": -1}, "config['local_steps'] must be an integer >= 0, got -1"),
    ({"local_steps": True}, "config['local_steps'] must be an integer >= 0, got True"),
    ({"local_steps": 2.5}, "config['local_steps'] must be an integer >= 0, got 2.5"),
    ({"local_steps": "2"}, "config['local_steps'] must be an integer >= 0, got '2'"),
    ({"local_steps": 2, "batch_size": 0}, "config['batch_size'] must be an integer >= 1, got 0"),
    ({"local_steps": 2, "lr": 0.0}, "config['lr'] must be a finite number > 0.0, got 0.0"),
    ({"local_steps": 2, "lr": math.nan}, "config['lr'] must be a finite number > 0.0, got nan"),
    ({"local_steps": 2, "momentum": 1.0}, "config['momentum'] must be a finite number >= 0.0 and < 1.0, got 1.0"),
    ({"local_steps": 2, "weight_decay": math.inf}, "config['weight_decay'] must be a finite number >= 0.0, got inf"),
    ({"local_steps": 2, "proximal_mu": -0.1}, "config['proximal_mu'] must be a finite number >= 0.0, got -0.1"),
    ({"local_steps": 2, "fetch_step": "1"}, "config['fetch_step'] must be an integer, got '1'"),
    ({"local_steps": 2, "fetch_step": 0.5}, "config['fetch_step'] must be an integer, got 0.5"),
    ({"local_steps": 2, "fetch_step": True}, "config['fetch_step'] must be an integer, got True"),
])
def test_train_config_errors_name_the_key_the_value_and_the_range(config, words):
    with _raises(words):
        TrainConfig.parse(config, 0.1, 32)


def test_train_config_keeps_values_and_types():
    cfg = TrainConfig.parse({"local_steps": np.int64(20), "batch_size": 16.0, "lr": 1, "momentum": np.float32(0.5),
                             "fetch_step": np.int64(3)}, 0.1, 32)
    assert (cfg.local_steps, cfg.batch_size, cfg.lr, cfg.momentum, cfg.fetch_step) == (20, 16, 1.0, 0.5, 3)
    assert type(cfg.local_steps) is int and type(cfg.batch_size) is int and type(cfg.fetch_step) is int
    assert type(cfg.lr) is float and type(cfg.momentum) is float and type(cfg.weight_decay) is float
    default = TrainConfig.parse({"local_steps": 0}, 0.05, 32)
    assert (default.batch_size, default.lr, default.optimizer, default.fetch_step) == (32, 0.05, "sgd", None)


@pytest.mark.parametrize("fetch_step, expected", [(0, 0), (4, 4), (5, None), (-1, None), (99, None), (2.0, 2)])
def test_fetch_step_out_of_range_means_no_fetch(fetch_step, expected):
    assert TrainConfig.parse({"local_steps": 5, "fetch_step": fetch_step}, 0.1, 32).fetch_step == expected


# --------------------------------------------------------------------------- task constructors
@pytest.mark.parametrize("kwargs, words", [
    ({"num_clients": 0}, "num_clients must be an integer >= 1, got 0"),
    ({"num_clients": 2.5}, "num_clients must be an integer >= 1, got 2.5"),
    ({"num_clients": True}, "num_clients must be an integer >= 1, got True"),
    ({"num_clients": 3, "alpha": 0}, "alpha (Dirichlet concentration) must be a finite number > 0, got 0"),
    ({"num_clients": 3, "alpha": math.inf}, "alpha (Dirichlet concentration) must be a finite number > 0, got inf"),
    ({"num_clients": 3, "seed": -2}, "seed must be an integer >= 0, got -2"),
    ({"num_clients": 3, "seed": "1"}, "seed must be an integer >= 0, got '1'"),
    ({"num_clients": 3, "syn_alpha": math.nan}, "syn_alpha must be a finite number >= 0, got nan"),
    ({"num_clients": 3, "syn_beta": -1.0}, "syn_beta must be a finite number >= 0, got -1.0"),
    ({"num_clients": 3, "size_sigma": -1}, "size_sigma must be a finite number >= 0, got -1"),
    ({"num_clients": 3, "min_client_size": 1},
     "min_client_size (one example to train, one to test) must be an integer >= 2, got 1"),
    ({"num_clients": 3, "samples_per_client": 10},
     "samples_per_client (at least min_client_size) must be an integer >= 20, got 10"),
    ({"num_clients": 3, "test_fraction": 1.0}, "test_fraction must be a finite number > 0 and < 1, got 1.0"),
    ({"num_clients": 3, "test_clients": 0}, "test_clients must be an integer >= 1, got 0"),
    ({"num_clients": 3, "validation_size": -1}, "validation_size must be an integer >= 0, got -1"),
    ({"num_clients": 3, "cache_clients": 0.5}, "cache_clients must be an integer >= 1, got 0.5"),
])
def test_synthetic_arguments_are_checked(kwargs, words):
    with _raises(words):
        load_task("synthetic", **kwargs)


def test_task_arguments_keep_their_values_and_types():
    task = load_task("synthetic", num_clients=np.int64(4), alpha=1, seed=3.0, samples_per_client=50.0,
                     test_clients=np.int32(2), size_sigma=np.float64(0.5))
    assert (task.num_clients, task.alpha, task.seed, task.samples_per_client, task.test_clients) == (4, 1.0, 3, 50, 2)
    for value in (task.num_clients, task.seed, task.samples_per_client, task.test_clients, task.validation_size):
        assert type(value) is int
    for value in (task.alpha, task.size_sigma, task.syn_alpha, task.test_fraction):
        assert type(value) is float


def test_client_and_seed_of_a_training_run_are_checked():
    task = load_task("synthetic", num_clients=3, seed=0, samples_per_client=40)
    start = task.initial_params(0)
    assert [a.tobytes() for a in task.initial_params(np.int64(0))] == [a.tobytes() for a in start]
    with _raises("client must be an integer >= 0 and <= 2, got 3"):
        task.train(start, 3, {"local_steps": 1}, seed=0)
    with _raises("client must be an integer >= 0 and <= 2, got -1"):
        task.train(start, -1, {"local_steps": 1}, seed=0)
    with _raises("seed must be an integer, got 0.5"):
        task.train(start, 0, {"local_steps": 1}, seed=0.5)
    with _raises("seed must be an integer, got None"):
        task.initial_params(None)
    with _raises("jobs[0]: seed must be an integer, got '1'"):
        task.train_batch([TrainJob(start, 0, {"local_steps": 1}, "1")])
    a, _ = task.train(start, 1, {"local_steps": 2}, seed=5)
    b, _ = task.train(start, np.int64(1), {"local_steps": 2.0}, seed=5.0)
    assert [x.tobytes() for x in a] == [x.tobytes() for x in b]


@pytest.mark.parametrize("kwargs, words", [
    ({"num_samples": 99}, "num_samples must be an integer >= 100, got 99"),
    ({"train_split": 0}, "train_split must be a finite number > 0 and < 1, got 0"),
    ({"data_seed": -1}, "data_seed must be an integer >= 0, got -1"),
    ({"validation_size": 1.5}, "validation_size must be an integer >= 0, got 1.5"),
    ({"min_client_size": 0}, "min_client_size must be an integer >= 1, got 0"),
    ({"size_sigma": math.inf}, "size_sigma must be a finite number >= 0, got inf"),
])
def test_mnist1d_arguments_are_checked(kwargs, words):
    with _raises(words):
        load_task("mnist1d", num_clients=2, **kwargs)


# --------------------------------------------------------------------------- partitioners
@pytest.mark.parametrize("call, words", [
    (lambda rng: part.iid(10, 0, rng), "num_clients must be an integer >= 1, got 0"),
    (lambda rng: part.iid(10.5, 2, rng), "n must be an integer >= 0, got 10.5"),
    (lambda rng: part.size_skew(100, 4, rng, min_size=-1), "min_size must be an integer >= 0, got -1"),
    (lambda rng: part.size_skew(100, 4, rng, sigma=math.nan), "sigma must be a finite number >= 0, got nan"),
    (lambda rng: part.dirichlet_label_skew(np.arange(100) % 10, 4, 0.0, rng),
     "alpha must be a finite number > 0, got 0.0"),
    (lambda rng: part.dirichlet_label_skew(np.arange(100) % 10, True, 0.5, rng),
     "num_clients must be an integer >= 1, got True"),
])
def test_partitioner_arguments_are_checked(call, words):
    with _raises(words):
        call(np.random.default_rng(0))


def test_partitioners_take_integral_floats_and_numpy_counts():
    a = part.iid(100, 4, np.random.default_rng(1))
    b = part.iid(np.int64(100), 4.0, np.random.default_rng(1))
    assert len(b) == 4 and all(np.array_equal(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------- staleness, transports, trainer
@pytest.mark.parametrize("kind, a, b, words", [
    ("polynomial", -0.5, None, "staleness_a (of polynomial staleness) must be a finite number >= 0, got -0.5"),
    ("polynomial", math.nan, None, "staleness_a (of polynomial staleness) must be a finite number >= 0, got nan"),
    ("polynomial", "0.5", None, "staleness_a (of polynomial staleness) must be a finite number >= 0, got '0.5'"),
    ("hinge", -1, None, "staleness_a (of hinge staleness) must be a finite number >= 0, got -1"),
    ("hinge", None, -4, "staleness_b (of hinge staleness) must be a finite number >= 0, got -4"),
    ("hinge", None, True, "staleness_b (of hinge staleness) must be a finite number >= 0, got True"),
])
def test_staleness_parameters_are_checked(kind, a, b, words):
    with _raises(words):
        make_staleness(kind, a, b)


def test_staleness_parameters_keep_their_values():
    assert make_staleness("polynomial", np.float32(0.5), None)(3) == 0.5
    assert make_staleness("polynomial", 1, None)(3) == 0.25
    assert make_staleness("hinge", 10, 4)(6) == pytest.approx(1 / 21)
    assert make_staleness("hinge", None, None)(6) == pytest.approx(1 / 21)


@pytest.mark.parametrize("value, words", [
    (0, "chunk_size must be an integer >= 1, got 0"),
    (2.5, "chunk_size must be an integer >= 1, got 2.5"),
    ("8", "chunk_size must be an integer >= 1, got '8'"),
])
def test_sim_transport_chunk_size_is_checked(value, words):
    task = load_task("synthetic", num_clients=2, seed=0, samples_per_client=40)
    fleet = FleetSpec({"d": 2}, profiles={"d": DeviceProfile("d", 0.01, 10_000_000, 0.0)})
    with _raises(words):
        SimTransport(task, fleet, seed=0, executor=InlineExecutor(task), chunk_size=value)
    tr = SimTransport(task, fleet, seed=0, executor=InlineExecutor(task), chunk_size=np.int64(4))
    assert tr.chunk_size == 4 and type(tr.chunk_size) is int


@pytest.mark.parametrize("value, words", [
    (0.5, "slowdown must be a finite number >= 1, got 0.5"),
    (math.inf, "slowdown must be a finite number >= 1, got inf"),
    ("2", "slowdown must be a finite number >= 1, got '2'"),
    (True, "slowdown must be a finite number >= 1, got True"),
])
def test_trainer_slowdown_is_checked(value, words):
    with _raises(words):
        Trainer(slowdown=value)
    for good in (1, 2.5, np.float64(3.0)):
        trainer = Trainer(slowdown=good)
        assert trainer.slowdown == float(good) and type(trainer.slowdown) is float
