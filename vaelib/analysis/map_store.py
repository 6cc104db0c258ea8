"""Fitted UMAP maps kept on disk, so that a run's notebooks fit each map of mu once.

04 maps every note's mu; 05 and ``vaelib encode`` map the same mu (the same model, cache and batches, so
the same bits) and read 04's fit instead of fitting again. A map is one pickled file
``<features.cache_dir>/maps/umap-<digest>.pkl``, the digest taken over the points themselves, the
settings, the versions of every library that shapes the fit and the machine (its SIMD extensions and
BLAS kernels), so a stored map is only ever read for the points and settings it was fitted on, on a
machine that computes the same bits.

A pickle runs code when read, so a file is read only when this user owns it and nobody else may write
it (it is written with mode 0600); any other file, a truncated one, or one that holds something else is
fitted again and replaced.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import stat
import warnings
from pathlib import Path

import numpy as np

from vaelib.analysis.machine_kind import numeric_machine
from vaelib.config import Config, resolve_path

__all__ = ["MAP_STORE", "map_store", "umap_key", "read_fitted", "save_fitted"]

log = logging.getLogger(__name__)

MAP_STORE = "maps"  # under features.cache_dir
_FORMAT = 3  # bump when what a stored map holds or how it is fitted changes


def map_store(cfg: Config) -> Path:
    """The folder of fitted UMAP maps: ``maps/`` in ``features.cache_dir``, beside the feature caches the
    maps are derived from; any run may share it, each file being named by the digest of its points."""
    return resolve_path(cfg.features.cache_dir) / MAP_STORE


def _versions() -> tuple[str, ...]:
    import llvmlite
    import numba
    import pynndescent
    import scipy
    import sklearn
    import umap

    return tuple(m.__version__ for m in (umap, pynndescent, numba, llvmlite, np, scipy, sklearn))


def umap_key(x: np.ndarray, n_neighbors: int, min_dist: float, seed: int) -> str:
    """Digest of a UMAP fit's input: the float32 points, the settings, the libraries and the machine
    (``vaelib.analysis.machine_kind.numeric_machine``: its SIMD extensions and BLAS kernels)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    h = hashlib.sha256()
    h.update(repr((_FORMAT, x.shape, int(n_neighbors), float(min_dist), int(seed), _versions(),
                   numeric_machine())).encode())
    h.update(x.data)
    return h.hexdigest()


def _trusted(path: Path) -> bool:
    st = path.stat()
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def read_fitted(path: Path, key: str, n_points: int) -> tuple[np.ndarray, object] | None:
    """``(coords, reducer)`` stored at ``path`` for the fit ``key`` of ``n_points`` points, or None (a miss)."""
    import umap

    try:
        trusted = _trusted(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not trusted:
        warnings.warn(f"{path}: stored UMAP map not read (it must be this user's and writable by nobody "
                      "else); fitting it again", stacklevel=3)
        return None
    try:
        with path.open("rb") as f:
            stored = pickle.load(f)
    except FileNotFoundError:  # removed since the stat
        return None
    except Exception as exc:  # a truncated or foreign file: fit again and replace it
        warnings.warn(f"{path}: stored UMAP map unreadable ({type(exc).__name__}: {exc}); fitting it again",
                      stacklevel=3)
        return None
    if not (isinstance(stored, dict) and stored.get("key") == key and isinstance(stored.get("reducer"), umap.UMAP)
            and np.shape(stored.get("coords")) == (n_points, 2)):
        warnings.warn(f"{path}: stored UMAP map holds another fit; fitting it again", stacklevel=3)
        return None
    _cache_kernels(stored["reducer"])
    log.info("UMAP map of %d points read from %s", n_points, path)
    return np.asarray(stored["coords"]), stored["reducer"]


def _cache_kernels(reducer: object) -> None:
    # numba kernels come back from a pickle as new dispatchers without the on-disk cache; the metric
    # kernels that transform calls would be compiled again in every process that reads the map
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    for value in vars(reducer).values():
        if isinstance(value, Dispatcher) and isinstance(value._cache, NullCache):
            try:
                value.enable_caching()
            except Exception:  # a kernel numba cannot cache (a closure over globals) is compiled as before
                pass


def _dumps(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def save_fitted(path: Path, key: str, coords: np.ndarray, reducer: object) -> None:
    """Store a fit at ``path`` (atomically, mode 0600); a store that cannot take it costs a log line."""
    from vaelib.io import atomic_path

    try:
        data = _dumps({"key": key, "coords": np.asarray(coords), "reducer": reducer})
    except Exception as exc:  # the fit is good; only the next process pays for it again
        warnings.warn(f"{path}: the fitted UMAP map could not be pickled ({type(exc).__name__}: {exc}); it is "
                      "not stored", stacklevel=3)
        return
    try:
        with atomic_path(path, suffix=".pkl", mode=0o600) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:  # a read-only shared cache: every run would repeat the warning, so a log line
        log.info("UMAP map not stored at %s (%s); the next map of these points fits it again", path, exc)
        return
    log.info("UMAP map of %d points stored at %s", len(coords), path)
