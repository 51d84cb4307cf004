"""In-process and Ray executors give the same final model (a local Ray on 127.0.0.1, shut down afterwards)."""

import os

import pytest

ray = pytest.importorskip("ray")

from fedhive.sim.profiles import DeviceProfile, FleetSpec  # noqa: E402
from fedhive.sim.runner import SimConfig, run_sim  # noqa: E402


@pytest.fixture
def no_ray_leftovers():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    yield
    if ray.is_initialized():
        ray.shutdown()


def test_ray_and_inline_give_the_same_model(no_ray_leftovers):
    fleet = FleetSpec({"slow": 2, "fast": 4}, profiles={"slow": DeviceProfile("slow", 0.5, 1e6, 0.1),
                                                        "fast": DeviceProfile("fast", 0.01, 1e7, 0.0)})
    base = dict(strategy="fedbuff", strategy_params={"buffer_size": 3}, fleet=fleet, budget=15.0, seed=5,
                task="synthetic", local_steps=5)
    inline = run_sim(SimConfig(**base))
    on_ray = run_sim(SimConfig(**base, executor="ray"))
    assert not ray.is_initialized()  # the executor shut down the Ray it started
    assert on_ray["final"]["version"] == inline["final"]["version"] > 5
    assert on_ray["history"] == inline["history"]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(on_ray["_params"], inline["_params"]))
