"""Fitted spectrogram PCAs kept on disk, so that a run's notebooks fit the linear baseline once.

03 (the reconstruction baseline), 04 (the probes' PCA features) and 04's transfer evaluation fit the same
PCA: the train notes' log-mels, as many components as the latent space, the run's seed. The first fit is
stored as plain arrays (``.npz`` read without pickle, so reading one runs no code) under
``<features.cache_dir>/pca/pca-<digest>.npz``; the digest is taken over the spectrograms themselves, the
settings, the versions of the libraries that shape the fit and the machine (its SIMD extensions and BLAS
kernels, ``vaelib.analysis.machine_kind``), so a stored PCA is only read for the notes and settings it was
fitted on, on a machine that computes the same bits. A file that is unreadable, or holds arrays of other
shapes, is fitted again and replaced.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
import zipfile
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

from vaelib.analysis.diagnostics import fit_spectrogram_pca
from vaelib.analysis.machine_kind import numeric_machine
from vaelib.config import Config, resolve_path
from vaelib.io import atomic_path

__all__ = ["PCA_STORE", "pca_store", "pca_key", "spectrogram_pca"]

log = logging.getLogger(__name__)

PCA_STORE = "pca"  # under features.cache_dir
_FORMAT = 1  # bump when what a stored PCA holds or how it is fitted changes
_ARRAYS = ("components_", "mean_", "explained_variance_", "explained_variance_ratio_", "singular_values_")
_NUMBERS = {"noise_variance_": float, "n_components_": int, "n_samples_": int, "n_features_in_": int}


def pca_store(cfg: Config) -> Path:
    """The folder of fitted spectrogram PCAs: ``pca/`` in ``features.cache_dir``, beside the feature caches
    they are fitted on; any run may share it, each file being named by the digest of its notes."""
    return resolve_path(cfg.features.cache_dir) / PCA_STORE


def _versions() -> tuple[str, ...]:
    import scipy
    import sklearn

    return tuple(m.__version__ for m in (np, scipy, sklearn))


def pca_key(train: np.ndarray, *, n_components: int, seed: int) -> str:
    """Digest of a fit's input: the spectrograms as stored (dtype and shape included), the settings, the
    libraries and the machine."""
    x = np.ascontiguousarray(train)
    h = hashlib.sha256()
    h.update(repr((_FORMAT, x.dtype.str, x.shape, int(n_components), int(seed), _versions(),
                   numeric_machine())).encode())
    h.update(memoryview(x).cast("B"))
    return h.hexdigest()


def _read(path: Path, key: str, *, n_components: int, n_features: int, seed: int) -> PCA | None:
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: np.array(stored[name], order="C") for name in (*_ARRAYS, *_NUMBERS, "key")}
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # EOFError: an empty file
        warnings.warn(f"{path}: stored PCA unreadable ({type(exc).__name__}: {exc}); fitting it again", stacklevel=3)
        return None
    shapes_ok = (arrays["components_"].shape == (n_components, n_features) and arrays["mean_"].shape == (n_features,)
                 and all(arrays[name].shape == (n_components,) for name in _ARRAYS[2:])
                 and all(arrays[name].shape == () for name in _NUMBERS))
    if str(arrays["key"]) != key or not shapes_ok:
        warnings.warn(f"{path}: stored PCA holds another fit; fitting it again", stacklevel=3)
        return None
    pca = PCA(n_components=n_components, svd_solver="randomized", random_state=seed)
    for name in _ARRAYS:
        setattr(pca, name, arrays[name])
    for name, kind in _NUMBERS.items():
        setattr(pca, name, kind(arrays[name]))
    return pca


def _save(path: Path, key: str, pca: PCA) -> None:
    try:
        with atomic_path(path, suffix=".npz") as tmp, tmp.open("wb") as f:
            np.savez(f, key=np.array(key), **{name: getattr(pca, name) for name in (*_ARRAYS, *_NUMBERS)})
    except OSError as exc:  # a read-only shared cache: the fit is good, the next notebook fits it again
        log.info("PCA not stored at %s (%s); the next use of these notes fits it again", path, exc)


def spectrogram_pca(train: np.ndarray, *, n_components: int, seed: int = 0, store: Path | None = None) -> PCA:
    """``fit_spectrogram_pca`` of ``train``, read from ``store`` when it holds this fit, else fitted and
    stored there (``store`` None: fitted, not stored). A stored PCA gives the fitted one's numbers to the bit."""
    if store is None:
        return fit_spectrogram_pca(train, n_components=n_components, seed=seed)
    n_features = int(np.prod(train.shape[1:]))
    key = pca_key(train, n_components=n_components, seed=seed)
    path = Path(store) / f"pca-{key[:32]}.npz"
    pca = _read(path, key, n_components=n_components, n_features=n_features, seed=seed)
    if pca is not None:
        log.info("spectrogram PCA of %d notes read from %s", len(train), path)
        return pca
    pca = fit_spectrogram_pca(train, n_components=n_components, seed=seed)
    _save(path, key, pca)
    return pca
