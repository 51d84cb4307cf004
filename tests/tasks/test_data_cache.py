"""A damaged MNIST-1D disk cache on a device is deleted and regenerated, never fatal to the device's tasks."""

import logging
import zipfile

import numpy as np
import pytest

from fedhive.tasks import mnist1d as mnist1d_module
from fedhive.tasks.mnist1d import load_mnist1d


def _damage(path, kind):
    good = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "zero_length":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(len(good)))
    elif kind == "bad_crc":  # a valid zip whose member's bytes were flipped: the CRC check fails on read
        data = bytearray(good)
        data[len(data) // 3] ^= 0xFF
        path.write_bytes(bytes(data))
    elif kind == "missing_member":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("x.npy", b"")
    elif kind == "wrong_shapes":
        np.savez(path, x=np.zeros((3, 7), np.float32), y=np.zeros(3, np.int64), x_test=np.zeros((1, 7), np.float32),
                 y_test=np.zeros(1, np.int64))


@pytest.mark.parametrize("kind", ["truncated", "zero_length", "garbage", "bad_crc", "missing_member", "wrong_shapes"])
def test_a_damaged_cache_file_is_deleted_and_regenerated(kind, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FEDHIVE_CACHE", str(tmp_path))
    monkeypatch.setattr(mnist1d_module, "_DATA", {})
    first = {k: v.copy() for k, v in load_mnist1d(num_samples=300, seed=7).items()}
    (path,) = tmp_path.glob("mnist1d-*.npz")
    _damage(path, kind)
    monkeypatch.setattr(mnist1d_module, "_DATA", {})  # a new process on the device: it reads the file
    with caplog.at_level(logging.WARNING, logger=mnist1d_module.__name__):
        again = load_mnist1d(num_samples=300, seed=7)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert any(str(path) in r.getMessage() and "generating the data again" in r.getMessage() for r in caplog.records)
    # The cache was written afresh and reads back without a warning.
    monkeypatch.setattr(mnist1d_module, "_DATA", {})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=mnist1d_module.__name__):
        third = load_mnist1d(num_samples=300, seed=7)
    assert not caplog.records
    assert all(np.array_equal(first[k], third[k]) for k in first)
