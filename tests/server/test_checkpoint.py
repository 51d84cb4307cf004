import numpy as np
import pytest

from fedhive.server import checkpoint as ckpt


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
