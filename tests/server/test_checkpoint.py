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
