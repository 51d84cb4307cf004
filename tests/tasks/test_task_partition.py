"""Partitioners: disjoint, covering, seeded, and as skewed as they claim."""

from __future__ import annotations

import numpy as np
import pytest

from fedhive.tasks import partition as part


def _check_exact_cover(parts: list[np.ndarray], n: int) -> None:
    allidx = np.concatenate(parts)
    assert len(allidx) == n, "examples lost or duplicated"
    assert np.array_equal(np.sort(allidx), np.arange(n)), "not a partition of range(n)"
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0), "index arrays are sorted and free of duplicates"


def _labels(n: int = 6000, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n)


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_iid_covers_equal_sizes_and_is_seeded():
    parts = part.iid(1003, 10, np.random.default_rng(1))
    _check_exact_cover(parts, 1003)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert _same(parts, part.iid(1003, 10, np.random.default_rng(1)))
    assert not _same(parts, part.iid(1003, 10, np.random.default_rng(2)))


def test_dirichlet_covers_respects_min_size_and_is_seeded():
    labels = _labels()
    parts = part.dirichlet_label_skew(labels, 30, 0.3, np.random.default_rng(0), min_size=10)
    _check_exact_cover(parts, len(labels))
    assert min(len(p) for p in parts) >= 10
    again = part.dirichlet_label_skew(labels, 30, 0.3, np.random.default_rng(0), min_size=10)
    other = part.dirichlet_label_skew(labels, 30, 0.3, np.random.default_rng(1), min_size=10)
    assert _same(parts, again)
    assert not _same(parts, other)


def _mean_top_class_share(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    shares = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    return float(np.mean(shares))


def test_dirichlet_small_alpha_skews_labels_and_sizes():
    labels = _labels()
    skewed = part.dirichlet_label_skew(labels, 20, 0.1, np.random.default_rng(0))
    mild = part.dirichlet_label_skew(labels, 20, 100.0, np.random.default_rng(0))
    # Uniform labels over 10 classes give a top-class share near 0.1; alpha=0.1 concentrates each client.
    assert _mean_top_class_share(labels, skewed) > 0.5
    assert _mean_top_class_share(labels, mild) < 0.2
    sizes = np.array([len(p) for p in part.dirichlet_label_skew(labels, 20, 0.5, np.random.default_rng(0))])
    assert sizes.max() > 1.5 * sizes.min(), "label skew also makes client sizes unequal"


def test_size_skew_gives_unequal_sizes():
    parts = part.size_skew(5000, 40, np.random.default_rng(3), sigma=1.0, min_size=5)
    _check_exact_cover(parts, 5000)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 5
    assert sizes.max() > 4 * sizes.min()
    flat = np.array([len(p) for p in part.size_skew(5000, 40, np.random.default_rng(3), sigma=0.0)])
    assert flat.max() - flat.min() <= 1
    assert _same(parts, part.size_skew(5000, 40, np.random.default_rng(3), sigma=1.0, min_size=5))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda rng: part.iid(5, 10, rng), "num_clients|at least"),
        (lambda rng: part.dirichlet_label_skew(_labels(50), 10, 0.5, rng, min_size=10), "at least 10"),
        (lambda rng: part.dirichlet_label_skew(_labels(500), 10, 0.0, rng), "alpha"),
        (lambda rng: part.size_skew(100, 10, rng, sigma=-1.0), "sigma"),
        (lambda rng: part.size_skew(100, 0, rng), "num_clients"),
    ],
)
def test_impossible_or_invalid_requests_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(np.random.default_rng(0))
