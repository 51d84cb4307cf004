"""Learning tasks: determinism, the train/evaluate contract, the built-in tasks, and load_task."""

from __future__ import annotations

import copy
import random
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedhive.tasks import BUILTIN_TASKS, LearningTask, load_task
from fedhive.tasks import mnist1d as mnist1d_module
from fedhive.tasks.base import TrainConfig
from fedhive.tasks.mnist1d import MNIST1D, ConvBase, load_mnist1d
from fedhive.tasks.optimizers import _BatchedOptimizer, _Optimizer
from fedhive.tasks.synthetic import Synthetic


# --------------------------------------------------------------------------- helpers and fixtures


class TinyBN(LearningTask):
    """A small in-memory task whose model has BatchNorm buffers (non-trainable state) and dropout (randomness)."""

    name = "tinybn"
    default_lr = 0.1

    def __init__(self, *, num_clients: int = 2, partition: str = "iid", alpha: float = 0.5, seed: int = 0):
        super().__init__(num_clients=num_clients, partition=partition, alpha=alpha, seed=seed)
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((200, 4)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0).astype(np.int64)
        self._x, self._y = torch.from_numpy(x), torch.from_numpy(y)

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))

    def num_examples(self, client: int) -> int:
        return 100

    def client_data(self, client: int):
        c = self._check_client(client)
        return self._x[c * 100 : (c + 1) * 100], self._y[c * 100 : (c + 1) * 100]

    def test_data(self):
        return self._x, self._y


@pytest.fixture(scope="module")
def task() -> MNIST1D:
    return MNIST1D(num_clients=10, partition="dirichlet", alpha=0.5, seed=0)


@pytest.fixture(scope="module")
def start(task) -> list[np.ndarray]:
    return task.initial_params(0)


def _equal(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))


def _distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum((x - y) ** 2)) for x, y in zip(a, b))))


# --------------------------------------------------------------------------- model and parameters


def test_params_are_float32_in_state_dict_order_and_seeded(task, start):
    model = task.build_model()
    names = list(model.state_dict().keys())
    assert task.param_names() == names
    assert [a.shape for a in start] == [tuple(t.shape) for t in model.state_dict().values()]
    assert all(a.dtype == np.float32 for a in start)
    assert _equal(start, task.initial_params(0))
    assert not _equal(start, task.initial_params(1))
    assert task.non_trainable() == []
    assert task.model_bytes() == 4 * sum(a.size for a in start) == 4 * 5210


def test_initial_params_and_train_leave_global_rng_alone(task, start):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    task.initial_params(7)
    task.train(start, 0, {"local_steps": 3}, seed=5)
    task.evaluate(start)
    assert torch.equal(before, torch.get_rng_state())


def test_buffers_are_listed_as_non_trainable_and_trained_through():
    tiny = TinyBN(num_clients=2)
    names = tiny.param_names()
    assert [names[i] for i in tiny.non_trainable()] == [
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    params = tiny.initial_params(0)
    assert all(a.dtype == np.float32 for a in params)  # the int64 step counter travels as float32 too
    new, metrics = tiny.train(params, 1, {"local_steps": 5, "batch_size": 16}, seed=0)
    assert new[names.index("1.num_batches_tracked")] == 5
    assert not np.array_equal(new[names.index("1.running_mean")], params[names.index("1.running_mean")])
    assert metrics["num_examples"] == 100
    assert tiny.validation_batch() is None
    assert tiny.evaluate(new)["num_examples"] == 200
    with pytest.raises(ValueError, match="validation"):
        tiny.evaluate(params, split="validation")


def test_models_with_dropout_train_deterministically_without_touching_global_rng():
    tiny = TinyBN(num_clients=2)
    params = tiny.initial_params(0)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a, _ = tiny.train(params, 0, {"local_steps": 10}, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    torch.manual_seed(2)
    b, _ = tiny.train(params, 0, {"local_steps": 10}, seed=3)
    c, _ = tiny.train(params, 0, {"local_steps": 10}, seed=4)
    assert _equal(a, b) and not _equal(a, c)


def test_fast_convolution_matches_the_reference_model():
    torch.manual_seed(0)
    fast = ConvBase()

    class Reference(ConvBase):  # the paper's forward pass, through nn.Conv1d
        def forward(self, x):
            h = x.reshape(x.shape[0], 1, x.shape[-1])
            h = self.conv3(self.conv2(self.conv1(h).relu()).relu()).relu()
            return self.linear(h.flatten(1))

    ref = Reference()
    ref.load_state_dict(fast.state_dict())
    x, y = torch.randn(64, 40), torch.randint(0, 10, (64,))
    out_fast, out_ref = fast(x), ref(x)  # autograd on: the training path
    torch.testing.assert_close(out_fast, out_ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), out_ref, atol=1e-5, rtol=1e-5)
    g_fast = torch.autograd.grad(F.cross_entropy(out_fast, y), list(fast.parameters()))
    g_ref = torch.autograd.grad(F.cross_entropy(out_ref, y), list(ref.parameters()))
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "config, make_torch",
    [
        ({"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},
         lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01)),
        ({"optimizer": "adam", "lr": 0.01, "weight_decay": 0.001},
         lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.001)),
    ],
)
def test_optimizers_match_torch_optim(config, make_torch):
    cfg = TrainConfig.parse({"local_steps": 1, **config}, 0.1, 32)
    gen = torch.Generator().manual_seed(0)
    ours = [nn.Parameter(torch.randn(5, 3, generator=gen)), nn.Parameter(torch.randn(3, generator=gen))]
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    opt = make_torch(theirs)
    mine = _Optimizer(ours, cfg)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=gen) for p in ours]
        for p, g in zip(theirs, grads):
            p.grad = g.clone()
        opt.step()
        mine.step([g.clone() for g in grads])
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "configs",
    [
        [{"momentum": 0.9, "weight_decay": 0.01, "proximal_mu": 0.5}, {}, {"lr": 0.3, "proximal_mu": 0.1}],
        [{"optimizer": "adam", "lr": 0.01, "weight_decay": 0.001, "proximal_mu": 0.5}, {"optimizer": "adam"},
         {"optimizer": "adam", "lr": 0.003}],
    ],
)
def test_batched_optimizer_applies_the_per_client_rules_to_each_client(configs):
    """One set of rules: stacked clients with their own hyperparameters step as each would alone."""
    cfgs = [TrainConfig.parse({"local_steps": 1, **c}, 0.1, 32) for c in configs]
    gen = torch.Generator().manual_seed(0)
    stacked = [torch.randn(3, 5, 4, generator=gen), torch.randn(3, 5, 1, generator=gen)]
    alone = [[nn.Parameter(p[c].clone()) for p in stacked] for c in range(3)]
    batched = _BatchedOptimizer(stacked, cfgs)
    per_client = [_Optimizer(params, cfg) for params, cfg in zip(alone, cfgs)]
    for step, active in enumerate([3, 3, 2, 2, 1]):  # clients leave the batch as they finish
        grads: list[torch.Tensor | None] = [torch.randn(p.shape, generator=gen) for p in stacked]
        if step == 1:
            grads[1] = None  # a parameter the loss does not reach
        idle = [p[active:].clone() for p in stacked]
        batched.step([None if g is None else g.clone() for g in grads], active)
        for c in range(active):
            per_client[c].step([None if g is None else g[c].clone() for g in grads])
        assert all(torch.equal(p[active:], q) for p, q in zip(stacked, idle))  # finished clients stay put
    for c in range(3):
        for p, q in zip(stacked, alone[c]):
            torch.testing.assert_close(p[c], q.detach(), atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- train


def test_train_is_deterministic_and_order_independent(task, start):
    cfg = {"local_steps": 20, "batch_size": 32, "momentum": 0.5}
    a, ma = task.train(start, 3, cfg, seed=11)
    task.train(start, 5, {"local_steps": 7}, seed=99)  # unrelated work in between
    torch.manual_seed(4242)  # and a different global RNG state
    b, mb = task.train(start, 3, cfg, seed=11)
    assert _equal(a, b)
    assert ma == mb
    c, _ = task.train(start, 3, cfg, seed=12)
    assert not _equal(a, c)


def test_train_returns_fresh_arrays_and_leaves_input_alone(task, start):
    original = [a.copy() for a in start]
    new, _ = task.train(start, 0, {"local_steps": 5}, seed=0)
    assert _equal(start, original)
    snapshot = [a.copy() for a in new]
    new[0][...] = 1e6  # scribbling on the result must not reach the task's model...
    again, _ = task.train(start, 0, {"local_steps": 5}, seed=0)
    assert _equal(again, snapshot)  # ...nor the next result
    assert all(a.dtype == np.float32 and a.flags.owndata for a in again)


def test_read_only_inputs_are_accepted(task, start):
    frozen = [np.frombuffer(a.tobytes(), dtype=np.float32).reshape(a.shape) for a in start]
    assert not frozen[0].flags.writeable
    a, _ = task.train(frozen, 1, {"local_steps": 2}, seed=0)
    b, _ = task.train(start, 1, {"local_steps": 2}, seed=0)
    assert _equal(a, b)


def test_train_runs_exactly_local_steps(task, start, monkeypatch):
    calls = []
    original = task.loss_fn

    def counting_loss(output, target):
        calls.append(len(target))
        return original(output, target)

    monkeypatch.setattr(task, "loss_fn", counting_loss)
    new, metrics = task.train(start, 2, {"local_steps": 13, "batch_size": 8}, seed=0)
    assert metrics["steps"] == 13
    assert calls == [8] * 13
    assert metrics["num_examples"] == task.num_examples(2) == len(task.client_data(2)[0])
    calls.clear()
    same, metrics = task.train(start, 2, {"local_steps": 0}, seed=0)
    assert _equal(same, start)
    assert metrics["steps"] == 0 and metrics["loss"] == metrics["loss_before"]
    assert len(calls) == 1  # only the loss_before probe


def test_train_reduces_loss(task, start):
    _, metrics = task.train(start, 4, {"local_steps": 100, "lr": 0.2}, seed=0)
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["loss_before"])
    assert metrics["loss"] < metrics["loss_before"]
    new, _ = task.train(start, 4, {"local_steps": 100, "lr": 0.2}, seed=0)
    x, y = task.client_data(4)
    model = task.build_model()
    losses = []
    for params in (start, new):
        model.load_state_dict({k: torch.from_numpy(v) for k, v in zip(task.param_names(), params)})
        with torch.no_grad():
            losses.append(float(F.cross_entropy(model(x), y)))
    assert losses[1] < 0.8 * losses[0]


def test_proximal_term_pulls_toward_start(task, start):
    cfg = {"local_steps": 40, "lr": 0.05}
    free, _ = task.train(start, 1, cfg, seed=0)
    held, _ = task.train(start, 1, {**cfg, "proximal_mu": 10.0}, seed=0)
    assert _distance(held, start) < 0.2 * _distance(free, start)


def test_small_clients_train_with_full_batches():
    tiny = MNIST1D(num_clients=500, partition="iid", seed=0)  # 15 or 16 examples each
    params = tiny.initial_params(0)
    n = tiny.num_examples(0)
    assert n < 32
    new, metrics = tiny.train(params, 0, {"local_steps": 3, "batch_size": 32}, seed=0)
    assert metrics["steps"] == 3 and not _equal(new, params)


def test_on_step_is_called_once_with_the_current_model(task, start):
    cfg = {"local_steps": 10, "fetch_step": 4}
    seen = []

    def on_step(step, params):
        seen.append((step, [p.copy() for p in params]))
        return None

    plain, plain_metrics = task.train(start, 0, {"local_steps": 10}, seed=3)
    result, metrics = task.train(start, 0, cfg, seed=3, on_step=on_step)
    assert [s for s, _ in seen] == [4]
    assert _equal(result, plain) and metrics == plain_metrics  # returning None changes nothing
    # The model handed over is the one after exactly fetch_step steps (same batches: same seed, same stream).
    after_four, _ = task.train(start, 0, {"local_steps": 4}, seed=3)
    assert _equal(seen[0][1], after_four)


def test_on_step_not_called_without_a_valid_fetch_step(task, start):
    calls = []
    for cfg in ({"local_steps": 5}, {"local_steps": 5, "fetch_step": 5}, {"local_steps": 5, "fetch_step": -1}):
        task.train(start, 0, cfg, seed=0, on_step=lambda s, p: calls.append(s))
    assert calls == []


def test_on_step_result_replaces_the_model(task, start):
    zeros = [np.zeros_like(a) for a in start]
    lr = 0.1
    result, _ = task.train(start, 0, {"local_steps": 6, "fetch_step": 5, "lr": lr}, seed=0, on_step=lambda s, p: zeros)
    # From all-zero weights every activation is zero, so one more step moves only the output bias.
    assert all(np.array_equal(a, z) for a, z in zip(result[:-1], zeros[:-1]))
    assert np.abs(result[-1]).max() > 0
    assert np.abs(result[-1]).max() <= lr  # |d loss / d bias| <= 1 for cross-entropy


def test_momentum_survives_the_on_step_swap(task, start):
    """A fetch swaps the model inside one train call and keeps the SGD momentum buffer (FedASMU's mid-training fetch).

    Reference: the documented batch stream and ``torch.optim.SGD`` on one model whose weights are overwritten in
    place at the fetch, so the optimizer (and its momentum buffer) carries on.
    """
    client, seed, steps, fetch, lr, momentum, bs = 2, 21, 8, 3, 0.05, 0.9, 16
    config = {"local_steps": steps, "fetch_step": fetch, "lr": lr, "momentum": momentum, "batch_size": bs}
    fetched = task.initial_params(1)
    seen = []

    def on_step(step, params):
        seen.append((step, [p.copy() for p in params]))
        return fetched

    result, metrics = task.train(start, client, config, seed=seed, on_step=on_step)

    x, y = task.client_data(client)
    n = len(y)
    gen = torch.Generator().manual_seed(seed)
    stream = torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-steps * bs // n))])
    order = stream[: steps * bs].view(steps, bs)

    def reference(keep_optimizer: bool) -> list[np.ndarray]:
        model = task.build_model()

        def load(params):
            model.load_state_dict({k: torch.from_numpy(v) for k, v in zip(task.param_names(), params)})

        load(start)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        for s in range(steps):
            if s == fetch:
                load(fetched)  # in place: opt still holds these parameters
                if not keep_optimizer:
                    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
            loss = F.cross_entropy(model(x[order[s]]), y[order[s]])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [t.detach().numpy().copy() for t in model.state_dict().values()]

    kept, reset = reference(True), reference(False)
    for a, b in zip(result, kept):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert _distance(result, reset) > 100 * max(_distance(result, kept), 1e-6)  # the buffer is what differs
    # The hook saw the model after exactly fetch_step steps...
    before_fetch, _ = task.train(start, client, {**config, "local_steps": fetch}, seed=seed)
    assert [s for s, _ in seen] == [fetch] and _equal(seen[0][1], before_fetch)
    # ...and one call is not two: restarting from the fetched model loses the buffer (and the batch stream).
    split, _ = task.train(fetched, client, {**config, "local_steps": steps - fetch}, seed=seed)
    assert not _equal(result, split)
    assert metrics["steps"] == steps


def test_proximal_anchor_survives_a_fetch(task, start):
    far = [-a for a in start]  # as far again as the start is from zero, with gradients of the usual size
    cfg = {"local_steps": 30, "fetch_step": 0, "lr": 0.05, "proximal_mu": 10.0}
    pulled, metrics = task.train(start, 0, cfg, seed=0, on_step=lambda s, p: far)
    assert _distance(pulled, start) < 0.1 * _distance(far, start)
    # loss_before is measured at the params passed in, not at the fetched ones.
    _, plain = task.train(start, 0, {"local_steps": 30, "lr": 0.05}, seed=0)
    assert metrics["loss_before"] == plain["loss_before"]


@pytest.mark.parametrize(
    "config, key",
    [
        ({}, "local_steps"),
        ({"local_steps": -1}, "local_steps"),
        ({"local_steps": True}, "local_steps"),
        ({"local_steps": 2.5}, "local_steps"),
        ({"local_steps": 2, "batch_size": 0}, "batch_size"),
        ({"local_steps": 2, "lr": 0.0}, "lr"),
        ({"local_steps": 2, "lr": float("nan")}, "lr"),
        ({"local_steps": 2, "optimizer": "rmsprop"}, "optimizer"),
        ({"local_steps": 2, "momentum": 1.0}, "momentum"),
        ({"local_steps": 2, "proximal_mu": -0.1}, "proximal_mu"),
        ({"local_steps": 2, "fetch_step": "1"}, "fetch_step"),
    ],
)
def test_bad_config_names_the_key(task, start, config, key):
    with pytest.raises(ValueError, match=key):
        task.train(start, 0, config, seed=0)


def test_train_accepts_strategy_extras_and_rejects_bad_inputs(task, start):
    _, metrics = task.train(start, 0, {"local_steps": 2.0, "staleness": 3, "version": 7}, seed=0)
    assert metrics["steps"] == 2
    with pytest.raises(ValueError, match="client"):
        task.train(start, 10, {"local_steps": 1}, seed=0)
    with pytest.raises(ValueError, match="shape"):
        task.train([start[1]] + start[1:], 0, {"local_steps": 1}, seed=0)
    with pytest.raises(ValueError, match="expected 8"):
        task.train(start[:-1], 0, {"local_steps": 1}, seed=0)


def test_adam_and_momentum_train(task, start):
    for cfg in ({"optimizer": "adam", "lr": 0.003}, {"momentum": 0.9, "lr": 0.02, "weight_decay": 1e-4}):
        _, metrics = task.train(start, 1, {"local_steps": 60, **cfg}, seed=0)
        assert metrics["loss"] < metrics["loss_before"]


def test_threads_get_their_own_model(task, start):
    expected = {c: task.train(start, c, {"local_steps": 10}, seed=c)[0] for c in range(4)}
    results: dict[int, list[np.ndarray]] = {}

    def work(c):
        results[c] = task.train(start, c, {"local_steps": 10}, seed=c)[0]

    threads = [threading.Thread(target=work, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(_equal(results[c], expected[c]) for c in range(4))


def test_a_copied_task_trains_identically(task, start):
    twin = copy.deepcopy(task)
    cfg = {"local_steps": 5}
    assert _equal(twin.train(start, 2, cfg, seed=1)[0], task.train(start, 2, cfg, seed=1)[0])


# --------------------------------------------------------------------------- evaluate


def test_evaluate_test_and_validation(task, start):
    result = task.evaluate(start)
    assert set(result) == {"loss", "accuracy", "num_examples"}
    assert result["num_examples"] == 2000
    assert 0.0 <= result["accuracy"] <= 1.0 and np.isfinite(result["loss"])
    assert task.evaluate(start, split="validation")["num_examples"] == 256
    with pytest.raises(ValueError, match="split"):
        task.evaluate(start, split="train")


# --------------------------------------------------------------------------- MNIST-1D data


def test_mnist1d_split_matches_the_benchmark(task):
    data = load_mnist1d()
    assert data["x"].shape == (8000, 40) and data["x_test"].shape == (2000, 40)
    assert data["x"].dtype == np.float32 and data["y"].dtype == np.int64
    owned = np.concatenate(task.client_indices)
    assert len(owned) == len(np.unique(owned)) == 8000 - 256  # disjoint clients, all but the validation batch
    assert np.intersect1d(owned, task.validation_indices).size == 0
    assert sum(task.num_examples(c) for c in range(task.num_clients)) == 8000 - 256
    sizes = [task.num_examples(c) for c in range(task.num_clients)]
    assert max(sizes) > 1.5 * min(sizes)  # Dirichlet label skew: unequal sizes


def test_mnist1d_generation_is_cached_on_disk_and_leaves_global_rngs_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHIVE_CACHE", str(tmp_path))
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    first = load_mnist1d(num_samples=300, seed=5)
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state
    files = list(tmp_path.glob("mnist1d-*.npz"))
    assert len(files) == 1
    monkeypatch.setattr(mnist1d_module, "_DATA", {})  # forget the in-process copy: next load reads the file
    second = load_mnist1d(num_samples=300, seed=5)
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert first["x"].shape == (240, 40)


def test_mnist1d_partitions_depend_on_seed_and_kind():
    a = MNIST1D(num_clients=5, seed=0)
    b = MNIST1D(num_clients=5, seed=1)
    assert not all(np.array_equal(x, y) for x, y in zip(a.client_indices, b.client_indices))
    iid = MNIST1D(num_clients=5, partition="iid")
    assert max(iid.num_examples(c) for c in range(5)) - min(iid.num_examples(c) for c in range(5)) <= 1
    size = MNIST1D(num_clients=5, partition="size", seed=2)
    assert len({size.num_examples(c) for c in range(5)}) > 1


def test_mnist1d_learns(start):
    """One client holding all the data, default settings: > 80 % test accuracy in 1,500 steps."""
    central = MNIST1D(num_clients=1, partition="iid", validation_size=0)
    t0 = time.perf_counter()
    params, metrics = central.train(start, 0, {"local_steps": 1500}, seed=0)
    elapsed = time.perf_counter() - t0
    accuracy = central.evaluate(params)["accuracy"]
    assert accuracy > 0.8, accuracy
    assert elapsed < 60, elapsed  # a few seconds when the machine is idle; generous so a busy CI machine passes
    assert metrics["loss"] < metrics["loss_before"]


# --------------------------------------------------------------------------- Synthetic


def test_synthetic_scales_to_ten_thousand_clients():
    t0 = time.perf_counter()
    fleet = Synthetic(num_clients=10_000, seed=0)
    assert time.perf_counter() - t0 < 5
    assert fleet.num_examples(9_999) > 0
    x, y = fleet.client_data(9_999)
    assert x.shape == (fleet.num_examples(9_999), 60) and x.dtype == torch.float32 and y.dtype == torch.int64
    sizes = np.array([fleet.num_examples(c) for c in range(1000)])
    assert sizes.max() > 5 * sizes.min()  # log-normal sizes
    assert fleet.test_data()[0].shape[0] > 0 and fleet.validation_batch()[0].shape == (256, 60)


def test_synthetic_clients_are_regenerated_identically():
    syn = Synthetic(num_clients=50, seed=3, cache_clients=2)
    first = [t.clone() for t in syn.client_data(0)]
    for c in range(1, 6):  # push client 0 out of the cache
        syn.client_data(c)
    again = syn.client_data(0)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other = Synthetic(num_clients=50, seed=4).client_data(0)
    assert not torch.equal(first[0][: len(other[0])], other[0][: len(first[0])])


def test_synthetic_heterogeneity_follows_partition():
    het = Synthetic(num_clients=30, seed=0)
    iid = Synthetic(num_clients=30, partition="iid", seed=0)
    assert len({iid.num_examples(c) for c in range(30)}) == 1

    def top_share(t):
        shares = [np.bincount(t.client_data(c)[1].numpy(), minlength=10).max() / t.num_examples(c) for c in range(30)]
        return float(np.mean(shares))

    # Per-client labelling models make each client's labels far more concentrated than a shared model does.
    assert top_share(het) > top_share(iid) + 0.15


def test_synthetic_learns_well_above_chance():
    syn = Synthetic(num_clients=20, seed=0)
    params = syn.initial_params(0)
    rng = np.random.default_rng(0)
    for _ in range(30):  # a few rounds of plain FedAvg
        clients = rng.choice(20, 5, replace=False)
        results = [syn.train(params, int(c), {"local_steps": 20}, seed=int(c)) for c in clients]
        weights = np.array([m["num_examples"] for _, m in results], dtype=np.float64)
        weights /= weights.sum()
        params = [sum(w * p[i] for w, (p, _) in zip(weights, results)).astype(np.float32) for i in range(len(params))]
    accuracy = syn.evaluate(params)["accuracy"]
    majority = np.bincount(syn.test_data()[1].numpy()).max() / syn.test_data()[1].numel()
    assert accuracy > majority + 0.15, (accuracy, majority)


# --------------------------------------------------------------------------- load_task and argument checks


def test_load_task_builtin_names():
    assert set(BUILTIN_TASKS) == {"mnist1d", "synthetic"}
    assert isinstance(load_task("synthetic", num_clients=3), Synthetic)
    assert isinstance(load_task("Synthetic", num_clients=3), Synthetic)
    assert load_task("mnist1d", num_clients=2).name == "mnist1d"


def test_load_task_module_attribute(tmp_path, monkeypatch):
    (tmp_path / "my_fedhive_plugin.py").write_text(
        textwrap.dedent(
            """
            from fedhive.tasks.synthetic import Synthetic

            class Small(Synthetic):
                name = "small"

            def make(num_clients, seed=0):
                return Synthetic(num_clients=num_clients, seed=seed, samples_per_client=50)

            def not_a_task(num_clients):
                return 42

            NOT_CALLABLE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_fedhive_plugin", raising=False)
    assert load_task("my_fedhive_plugin:Small", num_clients=4).name == "small"
    made = load_task("my_fedhive_plugin:make", num_clients=4, seed=1)
    assert isinstance(made, Synthetic) and made.samples_per_client == 50
    assert isinstance(load_task("fedhive.tasks.synthetic:Synthetic", num_clients=2), Synthetic)
    with pytest.raises(ValueError, match="not a LearningTask"):
        load_task("my_fedhive_plugin:not_a_task", num_clients=1)
    with pytest.raises(ValueError, match="not a LearningTask"):
        load_task("my_fedhive_plugin:NOT_CALLABLE", num_clients=1)
    with pytest.raises(ValueError, match="no attribute"):
        load_task("my_fedhive_plugin:Missing", num_clients=1)
    with pytest.raises(ValueError, match="cannot import"):
        load_task("no_such_module_xyz:Task", num_clients=1)
    with pytest.raises(ValueError, match="not a LearningTask subclass"):
        load_task("collections:OrderedDict", num_clients=1)


def test_unknown_task_name_explains_both_forms():
    with pytest.raises(ValueError) as info:
        load_task("cifar10", num_clients=2)
    message = str(info.value)
    assert "mnist1d" in message and "synthetic" in message and "module:attribute" in message


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"num_clients": 0}, ["num_clients", "0"]),
        ({"num_clients": 2.5}, ["num_clients", "2.5"]),
        ({"num_clients": 3, "partition": "pathological"}, ["partition", "pathological", "dirichlet"]),
        ({"num_clients": 3, "alpha": -1}, ["alpha", "-1"]),
        ({"num_clients": 3, "seed": -2}, ["seed", "-2"]),
        ({"num_clients": 3, "syn_beta": -1.0}, ["syn_beta", "-1.0"]),
        ({"num_clients": 3, "bogus": 1}, ["bogus", "num_clients"]),
        ({}, ["num_clients"]),
    ],
)
def test_bad_task_arguments_say_what_is_wrong(kwargs, words):
    with pytest.raises(ValueError) as info:
        load_task("synthetic", **kwargs)
    for word in words:
        assert word in str(info.value)


def test_zero_steps_change_nothing_even_with_buffers():
    tiny = TinyBN(num_clients=2)
    params = tiny.initial_params(0)
    same, metrics = tiny.train(params, 0, {"local_steps": 0}, seed=0)
    assert _equal(same, params)
    assert metrics["loss"] == metrics["loss_before"] and np.isfinite(metrics["loss"])
