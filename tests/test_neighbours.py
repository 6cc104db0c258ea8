"""vaelib.analysis.neighbours: exact neighbours for UMAP, and UMAP maps of 4,096 points or more built on them."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from vaelib.analysis import neighbours
from vaelib.analysis.latent import project_umap
from vaelib.analysis.neighbours import (
    EXACT_MAX_POINTS,
    UMAP_EXACT_MIN_POINTS,
    ExactIndex,
    exact_neighbours,
    umap_precomputed_knn,
)
from vaelib.exceptions import ParameterError


def _clusters(n: int, *, centres: int = 5, dims: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % centres
    centre = rng.normal(scale=6.0, size=(centres, dims))
    return (centre[labels] + rng.normal(size=(n, dims))).astype(np.float32), labels


@pytest.mark.parametrize("block_bytes", [64 * 2**20, 8 * 40 * 7])  # one block, and blocks of 7 rows
def test_exact_neighbours_equal_a_brute_force_search(monkeypatch, block_bytes):
    monkeypatch.setattr(neighbours, "_BLOCK_BYTES", block_bytes)
    x, _ = _clusters(40, dims=3)
    q = np.random.default_rng(1).normal(size=(9, 3)).astype(np.float32)
    idx, dist = exact_neighbours(q, x, 6)
    ref_dist, ref_idx = NearestNeighbors(n_neighbors=6, algorithm="brute").fit(x.astype(np.float64)).kneighbors(q)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-6)
    assert idx.dtype == np.int32 and dist.dtype == np.float32 and np.all(np.diff(dist, axis=1) >= 0)


def test_each_point_is_its_own_first_neighbour_and_ties_go_by_index():
    x = np.array([[0.0, 0], [1, 0], [-1, 0], [0, 1], [5, 5]], np.float32)
    idx, dist = exact_neighbours(x, x, 5)
    np.testing.assert_array_equal(idx[:, 0], np.arange(5))
    np.testing.assert_array_equal(dist[:, 0], 0)
    np.testing.assert_array_equal(idx[0], [0, 1, 2, 3, 4])  # three points at distance 1 from the origin
    # far from the origin, where the expanded square |a|^2 + |b|^2 - 2ab loses digits
    far = x + 1e4
    np.testing.assert_allclose(exact_neighbours(far, far, 2)[1][:, 1], [1, 1, 1, 1, np.hypot(4, 5)], rtol=1e-6)


def test_copies_of_a_point_share_distance_zero_in_index_order():
    x = np.array([[0.0, 0], [3, 0], [0.0, 0], [0.0, 0], [9, 9]], np.float32)
    idx, dist = exact_neighbours(x, x, 3)
    for row in (0, 2, 3):
        np.testing.assert_array_equal(idx[row], [0, 2, 3])
        np.testing.assert_array_equal(dist[row], 0)


def test_exact_neighbours_refuse_what_they_cannot_answer():
    x = np.zeros((4, 2))
    for k in (5, 0, 2.0, True):
        with pytest.raises(ParameterError, match=f"k must be an integer between 1 and the 4 data points, got {k!r}"):
            exact_neighbours(x, x, k)
    with pytest.raises(ParameterError, match=r"queries \(3, 3\) and data \(4, 2\)"):
        exact_neighbours(np.zeros((3, 3)), x, 2)


def test_exact_neighbours_are_taken_from_umaps_threshold_up_to_the_cap(monkeypatch):
    assert UMAP_EXACT_MIN_POINTS == 4096 < EXACT_MAX_POINTS
    monkeypatch.setattr(neighbours, "EXACT_MAX_POINTS", UMAP_EXACT_MIN_POINTS + 4)  # the cap, at a size a test affords
    cap = neighbours.EXACT_MAX_POINTS
    for n, exact in [(UMAP_EXACT_MIN_POINTS - 1, False), (UMAP_EXACT_MIN_POINTS, True), (cap, True), (cap + 1, False)]:
        x = np.zeros((n, 1), np.float32)
        x[:, 0] = np.arange(n)
        knn = umap_precomputed_knn(x, 3)
        assert (knn[0] is not None) == exact, n
        if exact:
            np.testing.assert_array_equal(knn[0][5], [5, 4, 6])  # itself, then the lower index of a tie
            assert isinstance(knn[2], ExactIndex)


def test_a_large_umap_map_takes_exact_neighbours_not_nn_descent(monkeypatch):
    """From 4,096 points umap-learn would run NN-descent (and compile its kernels in a new environment):
    the map is built on exact neighbours instead, keeps the clusters apart, and places new points through
    the exact index, also after a pickle round trip (the map store)."""
    import pynndescent
    import umap.umap_

    class Refused:  # a class: umap-learn also asks isinstance(index, NNDescent)
        def __init__(self, *args, **kwargs):
            raise AssertionError("NN-descent was called")

    monkeypatch.setattr(umap.umap_, "NNDescent", Refused)
    monkeypatch.setattr(pynndescent, "NNDescent", Refused)
    x, labels = _clusters(4_200)
    p = project_umap(x, n_neighbors=10, min_dist=0.1, seed=0)
    assert p.coords.shape == (4_200, 2) and np.isfinite(p.coords).all()
    centres = np.stack([p.coords[labels == c].mean(0) for c in range(5)])
    spread = max(np.linalg.norm(p.coords[labels == c] - centres[c], axis=1).mean() for c in range(5))
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=2)[np.triu_indices(5, 1)]
    assert gaps.min() > 2 * spread, (gaps.min(), spread)
    placed = p.transform(x[:20] + 0.01)
    near = np.linalg.norm(placed[:, None] - centres[None], axis=2).argmin(1)
    np.testing.assert_array_equal(near, labels[:20])
    again = project_umap(x, n_neighbors=10, min_dist=0.1, seed=0)
    np.testing.assert_array_equal(again.coords, p.coords)


def test_a_stored_large_map_places_points_as_the_fitted_one(tmp_path):
    """The map store pickles the reducer with its ExactIndex: read back, it transforms as the fit did."""
    x, labels = _clusters(4_200, seed=3)
    fitted = project_umap(x, n_neighbors=10, min_dist=0.1, seed=0, store=tmp_path)
    read = project_umap(x, n_neighbors=10, min_dist=0.1, seed=0, store=tmp_path)
    assert not fitted.stored and read.stored and len(list(tmp_path.glob("umap-*.pkl"))) == 1
    np.testing.assert_array_equal(read.coords, fitted.coords)
    z = x[labels == 2][:10] + 0.05
    np.testing.assert_array_equal(read.transform(z), fitted.transform(z))


def test_the_exact_index_survives_a_pickle_round_trip():
    x, _ = _clusters(50)
    index = pickle.loads(pickle.dumps(ExactIndex(x)))
    np.testing.assert_array_equal(index.query(x[:3], k=4)[0], exact_neighbours(x[:3], x, 4)[0])
