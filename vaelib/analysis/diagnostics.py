"""Diagnostics of a trained VAE: latent statistics, KL, active units, collapse, reconstruction vs PCA.

Everything here is a pure function of arrays; the models are run by ``vaelib.analysis.latent``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from scipy.spatial.distance import pdist
from sklearn.decomposition import PCA

from vaelib.exceptions import ParameterError

__all__ = [
    "ACTIVE_VAR_THRESHOLD",
    "kl_matrix",
    "latent_stats",
    "active_units",
    "distance_within_across",
    "collapse_verdict",
    "recon_mse",
    "fit_spectrogram_pca",
    "pca_transform",
    "pca_recon_mse",
    "mse_by_group",
]

# Burda, Grosse & Salakhutdinov (2015), "Importance Weighted Autoencoders", sec. 5.2: a unit u is
# active when Cov_x(E_{q(u|x)}[u]) > 0.01.
ACTIVE_VAR_THRESHOLD = 0.01
# Below this mean total KL (nats per note) the posterior carries essentially nothing.
COLLAPSE_TOTAL_KL = 0.1


def _check_latents(mu: np.ndarray, logvar: np.ndarray | None = None) -> None:
    if mu.ndim != 2 or len(mu) < 2:
        raise ParameterError(f"mu: expected shape (notes >= 2, latent_dim), got {mu.shape}")
    if logvar is not None and logvar.shape != mu.shape:
        raise ParameterError(f"logvar: shape {logvar.shape} differs from mu's {mu.shape}")


def kl_matrix(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """Raw KL(q(z|x) || N(0, I)) per note and dimension, before free bits, [shape=(notes, latent_dim)] nats.

    Uses ``vaelib.model.loss.kl_per_dim`` (Kingma & Welling 2014, appendix B), so the diagnostics and the
    training loss measure the same quantity.
    """
    from vaelib.model.loss import kl_per_dim

    _check_latents(mu, logvar)
    with torch.no_grad():
        kl = kl_per_dim(torch.from_numpy(np.asarray(mu, np.float32)), torch.from_numpy(np.asarray(logvar, np.float32)))
    return kl.numpy()


def latent_stats(mu: np.ndarray, logvar: np.ndarray, *, threshold: float = ACTIVE_VAR_THRESHOLD) -> pd.DataFrame:
    """Per-dimension statistics of the posterior over a set of notes.

    Returns
    -------
    DataFrame indexed by dimension: ``mu_mean``, ``mu_std``, ``mu_var`` (the activity statistic),
    ``logvar_mean``, ``logvar_std``, ``sigma_mean`` (mean posterior std), ``kl_mean`` (nats),
    ``active`` (``mu_var > threshold``).
    """
    _check_latents(mu, logvar)
    kl = kl_matrix(mu, logvar)
    var = mu.var(axis=0)
    return pd.DataFrame({
        "mu_mean": mu.mean(axis=0), "mu_std": mu.std(axis=0), "mu_var": var,
        "logvar_mean": logvar.mean(axis=0), "logvar_std": logvar.std(axis=0),
        "sigma_mean": np.exp(0.5 * logvar).mean(axis=0), "kl_mean": kl.mean(axis=0),
        "active": var > threshold,
    }).rename_axis("dim")


def active_units(mu: np.ndarray, *, threshold: float = ACTIVE_VAR_THRESHOLD) -> int:
    """Number of dimensions whose mu varies over the notes by more than ``threshold`` (Burda et al. 2015)."""
    _check_latents(mu)
    n = int((mu.var(axis=0) > threshold).sum())
    if n < mu.shape[1]:
        warnings.warn(f"{mu.shape[1] - n} of {mu.shape[1]} latent dimensions are inactive "
                      f"(variance of mu <= {threshold})", stacklevel=2)
    return n


def distance_within_across(mu: np.ndarray, labels: np.ndarray, *, max_notes: int = 2000,
                           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances between mu vectors, split into pairs of the same label and of different labels.

    Parameters
    ----------
    mu : [shape=(notes, latent_dim)]
    labels : [shape=(notes,)] e.g. instrument names.
    max_notes : at most this many notes (drawn with ``rng``) enter the all-pairs computation.

    Returns
    -------
    within, across : 1-D arrays of distances.
    """
    _check_latents(mu)
    labels = np.asarray(labels)
    if len(labels) != len(mu):
        raise ParameterError(f"labels: {len(labels)} labels for {len(mu)} notes")
    idx = np.arange(len(mu))
    if len(idx) > max_notes:
        idx = np.sort(rng.choice(idx, size=max_notes, replace=False))
    d = pdist(mu[idx])
    i, j = np.triu_indices(len(idx), k=1)  # pdist's pair order
    same = labels[idx][i] == labels[idx][j]
    return d[same], d[~same]


def collapse_verdict(stats: pd.DataFrame, *, min_active_fraction: float = 0.9) -> dict:
    """A plain verdict on posterior collapse from ``latent_stats``.

    Full collapse: no active unit, or a mean total KL under 0.1 nat (the encoder ignores the input).
    Partial collapse: fewer than ``min_active_fraction`` of the dimensions active. Otherwise none.

    Returns
    -------
    dict with ``verdict`` ('none', 'partial' or 'full'), ``collapsed`` (bool), ``active_units``,
    ``latent_dim``, ``kl_total_mean`` (nats per note), ``inactive_dims`` and a sentence ``text``.
    """
    d = len(stats)
    n_active = int(stats["active"].sum())
    kl_total = float(stats["kl_mean"].sum())
    inactive = [int(i) for i in np.flatnonzero(~stats["active"].to_numpy())]
    if n_active == 0 or kl_total < COLLAPSE_TOTAL_KL:
        verdict = "full"
        text = (f"Full posterior collapse: {n_active} of {d} units active and a mean KL of {kl_total:.3f} nats "
                "per note; the decoder ignores the latent code.")
    elif n_active < min_active_fraction * d:
        verdict = "partial"
        text = (f"Partial posterior collapse: {n_active} of {d} units active (target {min_active_fraction:.0%}); "
                f"inactive dimensions {inactive}.")
    else:
        verdict = "none"
        text = (f"No posterior collapse: {n_active} of {d} units active, mean KL {kl_total:.2f} nats per note.")
    return {"verdict": verdict, "collapsed": verdict != "none", "active_units": n_active, "latent_dim": d,
            "kl_total_mean": kl_total, "inactive_dims": inactive, "text": text}


def recon_mse(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """Mean squared error per note over all bins, [shape=(notes,)], in normalised log-mel units squared."""
    if x.shape != x_hat.shape:
        raise ParameterError(f"x_hat: shape {x_hat.shape} differs from x's {x.shape}")
    diff = np.asarray(x, np.float32).reshape(len(x), -1) - np.asarray(x_hat, np.float32).reshape(len(x), -1)
    return np.mean(diff * diff, axis=1)


def fit_spectrogram_pca(train: np.ndarray, *, n_components: int, seed: int = 0) -> PCA:
    """PCA of the flattened spectrograms ``train`` [shape=(notes, 1, n_mels, frames)] (randomised SVD)."""
    n_dims = int(np.prod(train.shape[1:]))
    if not 1 <= n_components <= min(len(train), n_dims):
        raise ParameterError(f"n_components: {n_components} is outside [1, {min(len(train), n_dims)}] "
                             f"for {len(train)} train notes")
    flat = np.asarray(train, np.float32).reshape(len(train), -1)
    pca = PCA(n_components=n_components, svd_solver="randomized", random_state=seed).fit(flat)
    # The fit leaves a strided view into its SVD; products with it round differently from products with
    # the same numbers laid out in order, as a PCA read back from vaelib.analysis.pca_store has them.
    pca.components_ = np.ascontiguousarray(pca.components_)
    return pca


def pca_transform(pca: PCA, data: np.ndarray, *, chunk: int = 1024) -> np.ndarray:
    """PCA coefficients of spectrograms [shape=(notes, ...)], in chunks (a float16 memmap stays small).

    Returns
    -------
    [shape=(notes, n_components)] float32
    """
    out = np.empty((len(data), pca.n_components_), np.float32)
    for start in range(0, len(data), chunk):
        part = np.asarray(data[start:start + chunk], np.float32).reshape(-1, pca.n_features_in_)
        out[start:start + len(part)] = pca.transform(part)
    return out


def pca_recon_mse(train: np.ndarray, test: np.ndarray, *, n_components: int,
                  seed: int = 0, pca: PCA | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The linear baseline: PCA with ``n_components`` fitted on the flattened train notes.

    Parameters
    ----------
    train, test : [shape=(notes, 1, n_mels, frames)] normalised log-mel.
    pca : that PCA already fitted (``fit_spectrogram_pca``, or read back by ``vaelib.analysis.pca_store``);
        fitted here when None.

    Returns
    -------
    mse : [shape=(test notes,)] per-note reconstruction MSE of ``test``.
    x_hat : [shape=test.shape] float32, the PCA reconstructions (not clipped).
    """
    if pca is None:
        pca = fit_spectrogram_pca(train, n_components=n_components, seed=seed)
    x_hat = pca.inverse_transform(pca_transform(pca, test)).reshape(test.shape).astype(np.float32)
    return recon_mse(test, x_hat), x_hat


def mse_by_group(values: dict[str, np.ndarray], groups: np.ndarray) -> pd.DataFrame:
    """Mean of each per-note series by group, with the note count: one row per group, one column per series."""
    frame = pd.DataFrame({name: np.asarray(v, np.float64) for name, v in values.items()})
    frame["group"] = np.asarray(groups)
    out = frame.groupby("group", sort=True).mean()
    out["n_notes"] = frame.groupby("group", sort=True).size()
    return out
