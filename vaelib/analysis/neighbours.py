"""Exact Euclidean nearest neighbours for UMAP's graph, by blocked matrix products.

umap-learn finds the neighbours of 4,096 points or more with pynndescent's NN-descent, whose numba
kernels take about a minute to compile on 2 cores in a new environment (04's first fit and 05's first
transform each paid a part), and whose neighbours are approximate and drawn at random. Up to
``EXACT_MAX_POINTS`` the exact neighbours cost well under a second for the latent sizes of this project
(a few matrix products in float64); ``ExactIndex`` stands in for NN-descent's search index in
``transform``, so a fitted map places new points against the same exact neighbours.
"""

from __future__ import annotations

import numpy as np

from vaelib.exceptions import ParameterError

__all__ = ["UMAP_EXACT_MIN_POINTS", "EXACT_MAX_POINTS", "ExactIndex", "exact_neighbours", "umap_precomputed_knn"]

# Above this many points the all-pairs products grow quadratically (NSynth-train's 289,205 notes would
# be ~2.7 TFLOP at 32 dimensions); NN-descent is left to umap-learn there.
EXACT_MAX_POINTS = 50_000
UMAP_EXACT_MIN_POINTS = 4096  # below it umap-learn computes all pairwise distances itself
_BLOCK_BYTES = 64 * 2**20  # one block of squared distances, float64


def exact_neighbours(queries: np.ndarray, data: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``data`` to each row of ``queries``, nearest first.

    Parameters
    ----------
    queries : [shape=(m, d)]; data : [shape=(n, d)], n >= k.

    Returns
    -------
    indices : [shape=(m, k)] int32 into ``data``; distances : [shape=(m, k)] float32, Euclidean.
    A query that is a row of ``data`` comes first in its own row (distance 0), as in NN-descent's graph,
    unless ``data`` holds the same point several times (then the copies share distance 0, in index order;
    umap-learn drops a point's own edge wherever it sits). Among the ``k`` chosen, equal distances are in
    index order; which of several points tied at the k-th distance is chosen is fixed by the points but not
    by index. No randomness: the result depends on the points only.

    Raises
    ------
    ParameterError
        When the shapes do not match or ``k`` is not an integer between 1 and the number of data points.
    """
    q = np.asarray(queries, dtype=np.float64)
    x = np.asarray(data, dtype=np.float64)
    if q.ndim != 2 or x.ndim != 2 or q.shape[1] != x.shape[1]:
        raise ParameterError(f"exact_neighbours: queries {q.shape} and data {x.shape} must be (m, d) and (n, d)")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(x):
        raise ParameterError(f"exact_neighbours: k must be an integer between 1 and the {len(x)} data points, "
                             f"got {k!r}")
    k = int(k)
    x_sq = np.einsum("ij,ij->i", x, x)
    # a block's squared distances (rows x n) and its gathered neighbours (rows x k x d), float64, each
    # within _BLOCK_BYTES; argpartition's int64 indices are one more rows x n
    rows = max(1, _BLOCK_BYTES // (8 * max(len(x), k * x.shape[1])))
    indices = np.empty((len(q), k), dtype=np.int32)
    distances = np.empty((len(q), k), dtype=np.float32)
    for start in range(0, len(q), rows):
        block = q[start:start + rows]
        d2 = block @ x.T
        d2 *= -2.0
        d2 += x_sq[None, :]
        d2 += np.einsum("ij,ij->i", block, block)[:, None]
        near = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < len(x) else np.tile(np.arange(len(x)), (len(block), 1))
        # Rounding of the expanded square is ~1e-16 of the norms; the k chosen are measured again exactly.
        exact = np.sqrt(((block[:, None, :] - x[near]) ** 2).sum(axis=2))
        order = np.lexsort((near, exact), axis=1)
        indices[start:start + rows] = np.take_along_axis(near, order, axis=1)
        distances[start:start + rows] = np.take_along_axis(exact, order, axis=1)
    return indices, distances


class ExactIndex:
    """What umap-learn's ``transform`` asks of a search index (``query`` and ``_angular_trees``), exact."""

    _angular_trees = False  # read by umap-learn's transform to choose NN-descent's epsilon, unused here

    def __init__(self, data: np.ndarray) -> None:
        self._raw_data = np.ascontiguousarray(data, dtype=np.float32)

    def query(self, queries: np.ndarray, k: int = 10, epsilon: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        return exact_neighbours(queries, self._raw_data, k)

    def prepare(self) -> None:
        """What umap-learn's ``UMAP.update`` calls first: not supported, say so rather than fail on an attribute."""
        raise NotImplementedError("UMAP.update: a map built on exact neighbours cannot be updated; fit it again "
                                  "on all the points")


def umap_precomputed_knn(x: np.ndarray, n_neighbors: int) -> tuple:
    """umap-learn's ``precomputed_knn`` for the points ``x``: exact neighbours and their ``ExactIndex`` from
    ``UMAP_EXACT_MIN_POINTS`` points, where umap-learn would take NN-descent, up to ``EXACT_MAX_POINTS``;
    below and above, ``(None, None, None)`` (umap-learn's own)."""
    if not UMAP_EXACT_MIN_POINTS <= len(x) <= EXACT_MAX_POINTS:
        return (None, None, None)
    return (*exact_neighbours(x, x, n_neighbors), ExactIndex(x))
