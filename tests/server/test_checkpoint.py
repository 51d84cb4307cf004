import re

import numpy as np
import pytest

from fedhive.engine import checkpoint as ckpt


def test_round_trip_keeps_arrays_int_keys_and_scalars(tmp_path):
    state = {"a": [np.arange(3, dtype=np.float32), np.zeros((2, 2), np.int64)], "busy": {3: 1, 10: [2, 0.5]},
             "none": None, "f": float("inf"), "nested": {"x": {"y": np.float64(2.5)}}, "s": "ok", "t": (1, 2)}
    p = ckpt.save(tmp_path / "c.npz", state)
    back = ckpt.load(p)
    np.testing.assert_array_equal(back["a"][0], state["a"][0])
    assert back["a"][0].dtype == np.float32 and back["a"][1].dtype == np.int64
    assert back["busy"] == {3: 1, 10: [2, 0.5]}
    assert back["none"] is None and back["f"] == float("inf") and back["nested"]["x"]["y"] == 2.5
    assert back["t"] == [1, 2]


def test_objects_are_refused_and_nothing_is_left_behind(tmp_path):
    with pytest.raises(TypeError, match="cannot checkpoint a object"):
        ckpt.save(tmp_path / "c.npz", {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_loading_never_unpickles(tmp_path):
    bad = tmp_path / "evil.npz"
    np.savez(bad, __meta__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        ckpt.load(bad)


def test_latest_and_prune(tmp_path):
    for v in (3, 12, 7):
        ckpt.save(ckpt.checkpoint_path(tmp_path, v), {"v": v})
    assert ckpt.latest(tmp_path).name == "ckpt-0000000012.npz"
    ckpt.prune(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-0000000007.npz", "ckpt-0000000012.npz"]
    assert ckpt.latest(tmp_path / "missing") is None


def test_an_array_referred_to_twice_is_stored_once_and_comes_back_shared(tmp_path):
    from types import MappingProxyType

    model = [np.arange(1000, dtype=np.float32), np.ones(3)]
    state = {"params": model, "buffer": [[0, 3, [np.zeros(2)], model], [1, 3, [np.zeros(2)], model]],
             "config": MappingProxyType({"local_steps": 5})}
    tree, arrays = ckpt.encode(state)
    assert len(arrays) == 4  # the model's two tensors once, and the two buffered updates' arrays
    path = ckpt.save(tmp_path / "c.npz", state)
    back = ckpt.load(path)
    assert back["params"][0] is back["buffer"][0][3][0] is back["buffer"][1][3][0]
    assert np.array_equal(back["params"][0], model[0]) and back["config"] == {"local_steps": 5}


def test_a_checkpoint_of_another_format_is_refused_with_what_to_do(tmp_path):
    import json

    meta = json.dumps({"format": "fedhive-checkpoint/1", "state": {}}).encode()
    np.savez(tmp_path / "old.npz", __meta__=np.frombuffer(meta, dtype=np.uint8))
    with pytest.raises(ValueError, match="resume=false"):
        ckpt.load(tmp_path / "old.npz")


# --------------------------------------------------------------------------- damaged files, fingerprints, folders
FP = {"task": "mnist1d", "tensors": [["w", [2, 3], "float32"]], "seed": 0, "strategy": "fedasync"}


def _damaged(tmp_path, kind):
    import json
    import zipfile

    good = ckpt.save(tmp_path / "good.npz", {"v": np.arange(100.0), "n": 3}, fingerprint=FP)
    p = tmp_path / f"{kind}.npz"
    raw = good.read_bytes()
    if kind == "truncated":
        p.write_bytes(raw[: len(raw) // 2])
    elif kind == "zero_length":
        p.write_bytes(b"")
    elif kind == "random_bytes":
        p.write_bytes(np.random.default_rng(1).bytes(500))
    elif kind == "missing_member":  # the meta refers to an array the zip does not hold
        meta = json.dumps({"format": ckpt.FORMAT, "state": {"v": {"__array__": "a0"}}}).encode()
        np.savez(p, __meta__=np.frombuffer(meta, dtype=np.uint8))
    elif kind == "no_meta":
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("a0.npy", b"junk")
    elif kind == "bad_json":
        np.savez(p, __meta__=np.frombuffer(b"{not json", dtype=np.uint8))
    elif kind == "deep_json":
        np.savez(p, __meta__=np.frombuffer(b"[" * 100_000 + b"]" * 100_000, dtype=np.uint8))
    elif kind == "meta_not_object":
        np.savez(p, __meta__=np.frombuffer(b"[1, 2]", dtype=np.uint8))
    elif kind == "unhashable_key":
        meta = json.dumps({"format": ckpt.FORMAT, "state": {"__dict__": [[{"a": 1}, 2]]}}).encode()
        np.savez(p, __meta__=np.frombuffer(meta, dtype=np.uint8))
    elif kind == "meta_floats":
        np.savez(p, __meta__=np.zeros(4))
    elif kind == "npy_file":
        with open(p, "wb") as f:
            np.save(f, np.zeros(3))
    elif kind == "bad_crc":
        data = bytearray(raw)
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    elif kind == "missing_file":
        pass
    return p


DAMAGE = ["truncated", "zero_length", "random_bytes", "missing_member", "no_meta", "bad_json", "deep_json",
          "meta_not_object", "unhashable_key", "meta_floats", "npy_file", "bad_crc", "missing_file"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_every_damaged_file_is_a_value_error_naming_it(kind, tmp_path):
    p = _damaged(tmp_path, kind)
    with pytest.raises(ValueError) as err:
        ckpt.read(p)
    assert str(p) in str(err.value)
    if kind in ("truncated", "zero_length", "random_bytes", "no_meta", "npy_file", "missing_file"):
        with pytest.raises(ValueError, match=re.escape(str(p))):  # not a checkpoint at all, whatever is read
            ckpt.fingerprint_of(p)


def test_the_fingerprint_travels_with_the_state_and_reads_alone(tmp_path):
    p = ckpt.save(tmp_path / "c.npz", {"x": np.ones(2)}, fingerprint={**FP, "shape": (2, 3), "n": np.int64(4)})
    state, fp = ckpt.read(p)
    assert fp == {**FP, "shape": [2, 3], "n": 4} == ckpt.fingerprint_of(p)
    assert list(state) == ["x"] and ckpt.load(p)["x"].tolist() == [1.0, 1.0]
    legacy = ckpt.save(tmp_path / "old.npz", {"x": 1})
    assert ckpt.fingerprint_of(legacy) is None and ckpt.read(legacy) == ({"x": 1}, None)


def test_prune_with_a_fingerprint_deletes_only_that_runs_checkpoints(tmp_path):
    other = {**FP, "task": "synthetic"}
    for v in (498, 499, 500):
        ckpt.save(ckpt.checkpoint_path(tmp_path, v), {"v": v}, fingerprint=other)
    (tmp_path / "ckpt-0000000700.npz").write_bytes(b"garbage")  # unreadable: nobody's to delete
    for v in range(1, 6):
        ckpt.save(ckpt.checkpoint_path(tmp_path, v), {"v": v}, fingerprint=FP)
        ckpt.prune(tmp_path, 2, fingerprint=FP)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt-0000000004.npz", "ckpt-0000000005.npz", "ckpt-0000000498.npz", "ckpt-0000000499.npz",
                     "ckpt-0000000500.npz", "ckpt-0000000700.npz"]


def test_set_aside_moves_every_checkpoint_into_a_new_previous_folder(tmp_path):
    assert ckpt.set_aside(tmp_path / "absent") is None and ckpt.set_aside(tmp_path) is None
    for v in (1, 500):
        ckpt.save(ckpt.checkpoint_path(tmp_path, v), {"v": v}, fingerprint=FP)
    first = ckpt.set_aside(tmp_path)
    assert first.parent == tmp_path and first.name.startswith("previous-") and first.name.endswith("Z")
    assert sorted(p.name for p in first.iterdir()) == ["ckpt-0000000001.npz", "ckpt-0000000500.npz"]
    assert ckpt.checkpoints(tmp_path) == []
    ckpt.save(ckpt.checkpoint_path(tmp_path, 2), {"v": 2})
    second = ckpt.set_aside(tmp_path)  # the same second: a folder of its own
    assert second != first and [p.name for p in second.iterdir()] == ["ckpt-0000000002.npz"]
    assert ckpt.load(first / "ckpt-0000000500.npz") == {"v": 500}


def test_remove_leftovers_deletes_only_the_temporary_files_of_save(tmp_path):
    ckpt.save(ckpt.checkpoint_path(tmp_path, 3), {"v": 3})
    left = tmp_path / ".ckpt-0000000004.npz.k2j3h4.tmp"
    left.write_bytes(b"half a checkpoint")
    keep = [tmp_path / "notes.tmp", tmp_path / ".other.tmp"]
    for p in keep:
        p.write_text("mine")
    assert ckpt.remove_leftovers(tmp_path) == [left]
    assert not left.exists() and all(p.exists() for p in keep) and ckpt.load(ckpt.latest(tmp_path)) == {"v": 3}
    assert ckpt.remove_leftovers(tmp_path / "absent") == []


def test_a_disk_full_save_raises_oserror_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    import errno

    path = ckpt.save(ckpt.checkpoint_path(tmp_path, 1), {"v": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(OSError) as err:
        ckpt.save(path, {"v": 2})
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert ckpt.load(path) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == [path.name]
