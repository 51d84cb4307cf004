import pytest

from fedhive.strategies import weighted_sum as ws


@pytest.fixture(autouse=True)
def numpy_weighted_sum():
    """Strategy tests run the strategies' own numpy sum: a program run earlier in the session (the simulator, the
    server app) may have installed the fused kernel process-wide (tests/engine/test_kernels.py tests that one)."""
    previous = ws.set_kernel(None)
    yield
    ws.set_kernel(previous)
