"""The fused kernel the programs install for the strategies' large-tensor sums."""

import numpy as np
import torch

from fedhive.engine import kernels
from fedhive.strategies import weighted_sum as ws


def test_the_installed_kernel_sums_large_tensors_as_torchs_fused_add_does():
    rng = np.random.default_rng(0)
    n = ws.FUSED_MIN + 17
    xs = [[rng.normal(size=n).astype(np.float32)] for _ in range(5)]
    coefs = [0.3, -0.7, 1.1, 0.05, -2.0]
    expect = torch.from_numpy(xs[0][0]) * coefs[0]
    for c, x in zip(coefs[1:], xs[1:]):
        expect.add_(torch.from_numpy(x[0]), alpha=c)
    previous = ws.set_kernel(None)
    try:
        assert kernels.install()
        got = ws.weighted_sum(list(zip(coefs, xs)))[0]
        assert got.tobytes() == expect.numpy().tobytes()  # bitwise: one rounding per fused term
        ws.set_kernel(None)
        numpy_only = ws.weighted_sum(list(zip(coefs, xs)))[0]
        np.testing.assert_allclose(numpy_only, got, rtol=1e-5, atol=1e-6)  # the same sum without the kernel
    finally:
        ws.set_kernel(previous)


def test_the_simulator_installs_it(monkeypatch):
    from fedhive.sim import runner

    calls = []
    monkeypatch.setattr(kernels, "install", lambda: calls.append(1) or True)
    cfg = runner.SimConfig(strategy="fedasync", task="synthetic", budget=1.0, seed=0,
                           fleet=runner.FleetSpec({"cpu": 3}))
    runner.run_sim(cfg)
    assert calls == [1]


def test_with_the_kernel_float16_is_still_summed_in_float32_and_rounded_once():
    previous = ws.set_kernel(None)
    try:
        assert kernels.install()
        x = np.full(ws.FUSED_MIN + 10, 1.0, np.float16)
        got = ws.weighted_sum([(1.0 / 3.0, [x])] * 64)[0]
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got, np.float16(64 / 3.0))
    finally:
        ws.set_kernel(previous)
