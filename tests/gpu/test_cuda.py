"""Local training on a CUDA device, as a GPU node's agent runs it (``Trainer`` picks ``cuda`` when torch sees one).

These run only where torch sees a CUDA device (CI has none: each test is skipped and says why). They check what a
user with a GPU server relies on: the agent trains on the GPU, a seeded task gives the same model twice, the GPU's
model agrees with the CPU's up to float rounding, replies are plain float32 arrays on the host, the batched
``train_batch`` gives what ``train`` gives, and the device profile reports the card and the ``gpu`` class.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device on this machine")

SETTINGS = {"task": "mnist1d", "num-partitions": 10, "partition": "dirichlet", "alpha": 0.5, "seed": 0}


@pytest.fixture(scope="module")
def tasks():
    from fedhive.tasks import load_task

    return {dev: load_task("mnist1d", num_clients=10, partition="dirichlet", alpha=0.5, seed=0, device=dev)
            for dev in ("cpu", "cuda")}


def _close(a: list[np.ndarray], b: list[np.ndarray], rtol: float, atol: float) -> float:
    """Largest absolute difference, after asserting every array agrees within the tolerance."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
        worst = max(worst, float(np.max(np.abs(x - y))))
    return worst


def test_the_agent_trains_on_the_gpu_and_replies_with_host_float32_arrays():
    from fedhive.client.trainer import Trainer

    trainer = Trainer(threads=1)  # device left to best_device()
    reply, _ = trainer.handle({"op": "profile", "settings": SETTINGS, "node": {"partition-id": 3}}, [])
    assert reply["training-device"] == "cuda", reply
    task, _ = trainer.task(SETTINGS, {"partition-id": 3})
    params = task.initial_params(0)
    reply, out = trainer.handle({"op": "train", "settings": SETTINGS, "node": {"partition-id": 3},
                                 "config": {"local_steps": 50}, "seed": 7}, params)
    assert [a.shape for a in out] == [p.shape for p in params]
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 and np.isfinite(a).all() for a in out)
    assert reply["loss"] < reply["loss_before"], reply
    assert reply["num-examples"] == task.num_examples(3)
    print(f"cuda train: loss {reply['loss_before']:.3f} -> {reply['loss']:.3f}, {reply['compute_seconds']:.3f} s")


def test_a_seeded_gpu_task_gives_the_same_model_twice(tasks):
    task = tasks["cuda"]
    params = task.initial_params(0)
    a, ma = task.train(params, 2, {"local_steps": 30}, seed=11)
    b, mb = task.train(params, 2, {"local_steps": 30}, seed=11)
    for x, y in zip(a, b):
        assert np.array_equal(x, y), float(np.max(np.abs(x - y)))
    assert ma["loss"] == mb["loss"]
    c, _ = task.train(params, 2, {"local_steps": 30}, seed=12)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c)), "another seed must draw other batches"


@pytest.mark.parametrize("config", [{"local_steps": 20}, {"local_steps": 20, "optimizer": "adam", "lr": 0.01},
                                    {"local_steps": 20, "momentum": 0.9, "proximal_mu": 0.01}])
def test_gpu_and_cpu_training_agree_up_to_float_rounding(tasks, config):
    params = tasks["cpu"].initial_params(0)
    cpu, mc = tasks["cpu"].train(params, 4, config, seed=3)
    gpu, mg = tasks["cuda"].train(params, 4, config, seed=3)
    worst = _close(cpu, gpu, rtol=1e-3, atol=1e-4)
    assert abs(mc["loss"] - mg["loss"]) < 1e-3 * max(1.0, abs(mc["loss"]))
    # The tolerance tells training apart: one step fewer is outside it.
    fewer, _ = tasks["cpu"].train(params, 4, {**config, "local_steps": 19}, seed=3)
    with pytest.raises(AssertionError):
        _close(fewer, gpu, rtol=1e-3, atol=1e-4)
    print(f"{config}: largest |cpu - gpu| {worst:.2e}")


def test_gpu_evaluation_agrees_with_the_cpu(tasks):
    params = tasks["cpu"].initial_params(0)
    trained, _ = tasks["cpu"].train(params, 0, {"local_steps": 100}, seed=0)
    mc, mg = tasks["cpu"].evaluate(trained), tasks["cuda"].evaluate(trained)
    assert mc["num_examples"] == mg["num_examples"]
    assert abs(mc["accuracy"] - mg["accuracy"]) <= 2.0 / mc["num_examples"], (mc, mg)
    assert abs(mc["loss"] - mg["loss"]) < 1e-4 * max(1.0, mc["loss"]), (mc, mg)


def test_train_batch_on_the_gpu_gives_what_train_gives(tasks):
    from fedhive.tasks.base import TrainJob

    task = tasks["cuda"]
    params = task.initial_params(0)
    jobs = [TrainJob(params, c, {"local_steps": 10 + c}, 100 + c) for c in range(5)]
    batch = task.train_batch(jobs)
    for job, (out, metrics) in zip(jobs, batch):
        ref, rm = task.train(job.params, job.client, job.config, seed=job.seed)
        _close(out, ref, rtol=1e-4, atol=1e-5)
        assert metrics["steps"] == job.config["local_steps"]


def test_the_device_profile_reports_the_card_and_the_gpu_class():
    from fedhive.client.profile import classify, detect

    p = detect()
    assert p.accelerator == f"cuda:{torch.cuda.get_device_name(0)}", p
    assert classify(p) == "gpu"


def test_a_gpu_node_can_train_on_its_cpu_and_on_a_named_card():
    """``fedhive agent --training-device cpu`` (a small model can be faster on one core than on the card) and
    ``cuda:N``; a card index torch does not see is refused."""
    from fedhive.client.trainer import Trainer

    for device in ("cpu", f"cuda:{torch.cuda.device_count() - 1}"):
        trainer = Trainer(device=device, threads=1)
        reply, _ = trainer.handle({"op": "profile", "settings": SETTINGS, "node": {"partition-id": 1}}, [])
        assert reply["training-device"] == device
        task, _ = trainer.task(SETTINGS, {"partition-id": 1})
        assert str(task.device) == device
    with pytest.raises(ValueError, match="torch sees"):
        Trainer(device=f"cuda:{torch.cuda.device_count()}")
