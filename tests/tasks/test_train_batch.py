"""LearningTask.train_batch: the default loop, the batched built-in tasks, determinism and speed."""

from __future__ import annotations

import copy
import dataclasses
import re
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

from fedhive.tasks import LearningTask, TrainJob
from fedhive.tasks.mnist1d import MNIST1D
from fedhive.tasks.synthetic import Synthetic

# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def mnist() -> MNIST1D:
    # 100 clients: Dirichlet(0.5) then leaves a few clients with fewer examples than a batch of 32.
    return MNIST1D(num_clients=100, partition="dirichlet", alpha=0.5, seed=0)


@pytest.fixture(scope="module")
def synthetic() -> Synthetic:
    return Synthetic(num_clients=200, seed=0)


@pytest.fixture(params=["mnist1d", "synthetic"])
def task(request, mnist, synthetic) -> LearningTask:
    return mnist if request.param == "mnist1d" else synthetic


class TinyTask(LearningTask):
    """A user task with no train_batch of its own: the default loop must serve it."""

    name = "tiny"
    default_lr = 0.1
    model_uses_rng = False

    def __init__(self, *, num_clients: int = 3, partition: str = "iid", alpha: float = 0.5, seed: int = 0):
        super().__init__(num_clients=num_clients, partition=partition, alpha=alpha, seed=seed)
        rng = np.random.default_rng(seed)
        self._x = torch.from_numpy(rng.standard_normal((60 * num_clients, 4)).astype(np.float32))
        self._y = torch.from_numpy((self._x[:, 0] > 0).numpy().astype(np.int64))

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def num_examples(self, client: int) -> int:
        return 60

    def client_data(self, client: int):
        c = self._check_client(client)
        return self._x[c * 60 : (c + 1) * 60], self._y[c * 60 : (c + 1) * 60]

    def test_data(self):
        return self._x, self._y


def _small_client(task: LearningTask, below: int = 32) -> int:
    return next(c for c in range(task.num_clients) if task.num_examples(c) < below)


def _mixed_jobs(task: LearningTask) -> list[TrainJob]:
    """Jobs that differ in everything train_batch must handle in one call."""
    p0 = task.initial_params(0)
    p1 = task.initial_params(1)
    small = _small_client(task)
    configs = [
        (p0, 0, {"local_steps": 20}, 100),
        (p1, 1, {"local_steps": 100, "lr": 0.05, "proximal_mu": 0.1}, 101),
        (p0, 2, {"local_steps": 0}, 102),
        (p0, 3, {"local_steps": 5, "lr": 0.3, "momentum": 0.9, "weight_decay": 1e-3}, 103),
        (p1, small, {"local_steps": 30}, 104),  # fewer examples than a batch: every step uses all of them
        (p0, 0, {"local_steps": 20}, 105),  # same client again, another seed
        (p0, 4, {"local_steps": 12, "optimizer": "adam", "lr": 1e-3}, 106),
        (p1, 5, {"local_steps": 7, "optimizer": "adam", "lr": 1e-2, "weight_decay": 0.01, "proximal_mu": 0.5}, 107),
        (p0, 6, {"local_steps": 25, "batch_size": 16, "lr": 0.1}, 108),
        (p1, 7, {"local_steps": 20, "momentum": 0.5, "proximal_mu": 0.01}, 109),
    ]
    return [TrainJob(p, c, cfg, seed) for p, c, cfg, seed in configs]


# The batched kernels (one matmul/conv over many clients) sum in another order than train's, and float32 rounding
# then compounds over the steps: 30 full-batch steps of one small client differed by 1.4e-5 (0.06 %) on a CI machine
# whose CPU takes other kernel paths than this one. The tolerance is float32 noise after ~100 steps, and each check
# below also proves it is tight enough to tell runs apart (one step fewer, or other batches, must fail it).
RTOL, ATOL = 1e-3, 1e-4


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, rtol=RTOL, atol=ATOL))


def _assert_matches_train(task: LearningTask, jobs: list[TrainJob], results) -> None:
    assert len(results) == len(jobs)
    for job, (params, metrics) in zip(jobs, results):
        ref_params, ref_metrics = task.train(job.params, job.client, job.config, seed=job.seed)
        assert len(params) == len(ref_params)
        for a, b in zip(params, ref_params):
            assert a.dtype == np.float32 and a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=f"{job.client} {job.config}")
        steps = job.config["local_steps"]
        if steps > 0:  # the tolerance must not hide a whole step, or other batches (a converged job's last step is tiny)
            fewer, _ = task.train(job.params, job.client, dict(job.config, local_steps=steps - 1), seed=job.seed)
            other, _ = task.train(job.params, job.client, job.config, seed=job.seed + 1000)
            for near in (fewer, other):
                if not all(_close(a, b) for a, b in zip(params, near)):
                    break
            else:
                pytest.fail(f"{job.client} {job.config}: one step fewer and another seed both pass the tolerance")
        assert set(metrics) == {"loss", "loss_before", "steps", "num_examples"}
        assert metrics["steps"] == ref_metrics["steps"] == job.config["local_steps"]
        assert metrics["num_examples"] == ref_metrics["num_examples"]
        for key in ("loss", "loss_before"):
            assert metrics[key] == pytest.approx(ref_metrics[key], rel=RTOL, abs=ATOL)


def _train_each(task: LearningTask, jobs: list[TrainJob]):
    """``train`` for every job on one torch thread, as train_batch runs (train's last bits may depend on the count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [task.train(j.params, j.client, j.config, seed=j.seed) for j in jobs]
    finally:
        torch.set_num_threads(threads)


def _bits(results) -> list[tuple[list[bytes], dict]]:
    return [([a.tobytes() for a in params], metrics) for params, metrics in results]


# --------------------------------------------------------------------------- the contract


def test_train_job_is_frozen_and_exported():
    import fedhive.tasks as tasks

    assert "TrainJob" in tasks.__all__
    job = TrainJob([np.zeros(1, np.float32)], 0, {"local_steps": 1}, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.seed = 1  # type: ignore[misc]


def test_batched_tasks_match_train_for_heterogeneous_jobs(task):
    jobs = _mixed_jobs(task)
    _assert_matches_train(task, jobs, task.train_batch(jobs))


def test_chunks_longer_job_lists_and_still_matches_train(mnist, monkeypatch):
    p0 = mnist.initial_params(0)
    jobs = [TrainJob(p0, c, {"local_steps": 3 + c % 4}, 500 + c) for c in range(7)]
    mnist.train_batch(jobs[:1])  # builds the batched model
    monkeypatch.setattr(mnist._batched, "max_clients", 3)
    _assert_matches_train(mnist, jobs, mnist.train_batch(jobs))


def test_finished_clients_leave_the_batch(mnist, monkeypatch):
    """Each client runs exactly max(local_steps, 1) forward passes: no 5x compute for a short job beside a long one."""
    p0 = mnist.initial_params(0)
    jobs = [TrainJob(p0, c, {"local_steps": s}, c) for c, s in enumerate([20, 100, 0, 20, 3])]
    mnist.train_batch(jobs[:1])
    model = mnist._batched
    seen: list[int] = []
    original = type(model).forward

    def counting(self, params, x, clients, batch):
        seen.append(clients)
        assert x.shape[0] == clients * batch and all(p.shape[0] == clients for p in params)
        return original(self, params, x, clients, batch)

    monkeypatch.setattr(type(model), "forward", counting)
    mnist.train_batch(jobs)
    assert sum(seen) == 20 + 100 + 1 + 20 + 3
    assert len(seen) == 100


def test_zero_step_jobs_return_their_params_and_first_batch_loss(task):
    p0 = task.initial_params(3)
    jobs = [TrainJob(p0, 1, {"local_steps": 0}, 9), TrainJob(p0, 2, {"local_steps": 4}, 9)]
    (params, metrics), _ = task.train_batch(jobs)
    assert all(np.array_equal(a, b) for a, b in zip(params, p0))
    assert metrics["steps"] == 0 and metrics["loss"] == metrics["loss_before"]
    _, ref = task.train(p0, 1, {"local_steps": 0}, seed=9)
    assert metrics["loss_before"] == pytest.approx(ref["loss_before"], rel=1e-5)
    only = task.train_batch(jobs[:1])
    assert all(np.array_equal(a, b) for a, b in zip(only[0][0], p0))


def test_empty_job_list(task):
    assert task.train_batch([]) == []
    assert TinyTask().train_batch([]) == []


def test_fetch_step_is_ignored(mnist):
    p0 = mnist.initial_params(0)
    plain = TrainJob(p0, 3, {"local_steps": 10}, 5)
    fetch = TrainJob(p0, 3, {"local_steps": 10, "fetch_step": 4}, 5)
    a, b = mnist.train_batch([plain, plain]), mnist.train_batch([fetch, fetch])
    assert _bits(a) == _bits(b)


# --------------------------------------------------------------------------- determinism


def test_same_jobs_give_bit_identical_results(task):
    jobs = _mixed_jobs(task)
    first = _bits(task.train_batch(jobs))
    p0 = task.initial_params(5)
    task.train_batch([TrainJob(p0, c, {"local_steps": 3, "lr": 0.01}, c) for c in range(10, 15)])  # other work
    task.train(p0, 3, {"local_steps": 2}, seed=1)
    torch.manual_seed(1234)
    np.random.seed(4321)
    assert _bits(task.train_batch(jobs)) == first
    assert _bits(copy.deepcopy(task).train_batch(jobs)) == first  # a copied (or unpickled) task too


def test_results_do_not_depend_on_the_callers_thread_count(mnist):
    jobs = _mixed_jobs(mnist)[:4]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _bits(mnist.train_batch(jobs))
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        two = _bits(mnist.train_batch(jobs))
        assert torch.get_num_threads() == 2  # put back after the call
    finally:
        torch.set_num_threads(threads)
    assert one == two


def test_concurrent_calls_from_threads_agree_with_sequential_ones(mnist):
    jobs = _mixed_jobs(mnist)[:3]
    expected = _bits(mnist.train_batch(jobs))
    threads_before = torch.get_num_threads()
    out: list = [None] * 3

    def work(i: int) -> None:
        out[i] = _bits(mnist.train_batch(jobs))

    pool = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert out == [expected] * 3
    assert torch.get_num_threads() == threads_before


def test_results_are_fresh_float32_arrays(task):
    p0 = task.initial_params(0)
    frozen = [a.copy() for a in p0]
    for a in frozen:
        a.setflags(write=False)  # read-only inputs are fine
    jobs = [TrainJob(frozen, c, {"local_steps": s}, c) for c, s in [(0, 4), (1, 0), (2, 4)]]
    results = task.train_batch(jobs)
    arrays = [a for params, _ in results for a in params]
    assert all(a.dtype == np.float32 and a.flags.writeable and a.flags.c_contiguous for a in arrays)
    for i, a in enumerate(arrays):
        assert not any(np.shares_memory(a, b) for b in arrays[i + 1 :] + frozen)
    assert all(np.array_equal(a, b) for a, b in zip(frozen, p0))
    before = _bits(results)
    for a in arrays:
        a += 1.0  # scribbling on the results changes nothing that a later call sees
    assert _bits(task.train_batch(jobs)) == before


def test_float64_params_are_accepted(mnist):
    p0 = mnist.initial_params(0)
    jobs32 = [TrainJob(p0, 1, {"local_steps": 3}, 1)]
    jobs64 = [TrainJob([a.astype(np.float64) for a in p0], 1, {"local_steps": 3}, 1)]
    assert _bits(mnist.train_batch(jobs32)) == _bits(mnist.train_batch(jobs64))


# --------------------------------------------------------------------------- fallbacks and errors


def test_default_implementation_loops_over_train():
    task = TinyTask()
    p0 = task.initial_params(0)
    jobs = [
        TrainJob(p0, 0, {"local_steps": 5}, 1),
        TrainJob(p0, 2, {"local_steps": 0}, 2),
        TrainJob(p0, 1, {"local_steps": 8, "optimizer": "adam", "lr": 0.01}, 3),
    ]
    expected = _train_each(task, jobs)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert _bits(task.train_batch(jobs)) == _bits(expected)
        torch.set_num_threads(2)
        assert _bits(task.train_batch(jobs)) == _bits(expected)  # one thread whatever the caller set
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


class _OtherLossMNIST(MNIST1D):
    def loss_fn(self, output, target):
        return torch.nn.functional.cross_entropy(output, target, label_smoothing=0.1)


def test_subclasses_that_change_the_loss_fall_back_to_train():
    task = _OtherLossMNIST(num_clients=5, partition="iid")
    p0 = task.initial_params(0)
    jobs = [TrainJob(p0, 0, {"local_steps": 3}, 1), TrainJob(p0, 1, {"local_steps": 2}, 2)]
    assert _bits(task.train_batch(jobs)) == _bits(_train_each(task, jobs))


def test_a_lone_synthetic_job_is_trained_by_train(synthetic):
    p0 = synthetic.initial_params(0)
    job = TrainJob(p0, 3, {"local_steps": 6}, 4)
    assert _bits(synthetic.train_batch([job])) == _bits(_train_each(synthetic, [job]))


def test_bad_jobs_are_rejected_before_any_training(mnist):
    p0 = mnist.initial_params(0)
    good = TrainJob(p0, 0, {"local_steps": 1}, 0)
    with pytest.raises(TypeError, match=r"jobs\[1\]"):
        mnist.train_batch([good, (p0, 0, {"local_steps": 1}, 0)])
    with pytest.raises(ValueError, match=re.escape("jobs[1]: client must be an integer >= 0 and <= 99, got 100")):
        mnist.train_batch([good, TrainJob(p0, 100, {"local_steps": 1}, 0)])
    with pytest.raises(ValueError, match=re.escape("jobs[0]: config must contain 'local_steps'")):
        mnist.train_batch([TrainJob(p0, 0, {}, 0)])
    with pytest.raises(ValueError, match=re.escape("jobs[0]: config['lr'] must be a finite number > 0.0, got -1")):
        mnist.train_batch([TrainJob(p0, 0, {"local_steps": 1, "lr": -1}, 0)])
    with pytest.raises(ValueError, match=re.escape("jobs[0]: seed must be an integer, got 0.5")):
        mnist.train_batch([TrainJob(p0, 0, {"local_steps": 1}, 0.5)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        mnist.train_batch([TrainJob([a.T for a in p0], 0, {"local_steps": 1}, 0)])
    with pytest.raises(ValueError, match="parameter arrays"):
        mnist.train_batch([TrainJob(p0[:-1], 0, {"local_steps": 1}, 0)])


# --------------------------------------------------------------------------- speed


def test_batched_training_is_faster_than_separate_train_calls(mnist):
    p0 = mnist.initial_params(0)
    jobs = [TrainJob(p0, c, {"local_steps": 10}, c) for c in range(16)]

    def best_of(fn, repeats=3):
        fn()
        times = []
        for _ in range(repeats):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        return min(times)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        separate = best_of(lambda: [mnist.train(j.params, j.client, j.config, seed=j.seed) for j in jobs])
        batched = best_of(lambda: mnist.train_batch(jobs))
    finally:
        torch.set_num_threads(threads)
    # Measured about 3x on one core; ask for a margin that survives a busy machine.
    assert batched < 0.75 * separate, (batched, separate)
