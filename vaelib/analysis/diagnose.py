"""03_diagnostics as one call: the posterior, KL, active units, distances and reconstruction of a run.

Statistics are over the held-out test split unless named otherwise; reconstructions decode mu (no
sampling); PCA, the linear baseline, has as many components as the latent space and is fitted on
the train split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vaelib.analysis import diagnostics as dg
from vaelib.analysis.latent import decode_latents, decoder_pitch
from vaelib.analysis.latent_cache import run_latents
from vaelib.analysis.pca_store import pca_store, spectrogram_pca
from vaelib.analysis.run import TrainedRun
from vaelib.analysis.targets import evaluate_targets

__all__ = ["Diagnosis", "diagnose", "diagnostics_metrics"]


@dataclass
class Diagnosis:
    """Everything 03_diagnostics shows. Arrays over the test notes unless named ``_all``."""

    latent_dim: int
    free_bits: float
    test_x: np.ndarray  # [shape=(notes, 1, n_mels, frames)]
    test_meta: pd.DataFrame
    n_train_notes: int
    n_train_instruments: int
    stats: pd.DataFrame  # latent_stats of the test notes, one row per dimension
    stats_all: pd.DataFrame  # the same over every note
    kl: np.ndarray  # [shape=(notes, latent_dim)] raw KL, nats
    collapse: dict
    distances: dict[str, tuple[np.ndarray, np.ndarray]]  # label -> (within, across)
    x_hat: np.ndarray  # VAE reconstructions
    pca_hat: np.ndarray  # PCA reconstructions
    vae_mse: np.ndarray  # [shape=(notes,)]
    pca_mse: np.ndarray
    by_family: pd.DataFrame  # mean MSE per family, VAE and PCA, with n_notes
    examples: np.ndarray  # row positions of one test note per family

    @property
    def summary(self) -> str:
        """One line on the notes diagnosed."""
        return (f"test: {len(self.test_meta)} notes of {self.test_meta['instrument_str'].nunique()} instruments; "
                f"train: {self.n_train_notes} notes of {self.n_train_instruments} instruments")


def diagnose(run: TrainedRun) -> Diagnosis:
    """Encode every note of ``run`` and measure its latent space and reconstructions."""
    cfg, cache = run.cfg, run.cache
    mu_all, logvar_all = run_latents(run)
    is_test = (cache.meta["split"] == "test").to_numpy()
    test_x, test_meta = cache.split("test")
    train_x, train_meta = cache.split("train")
    mu, logvar = mu_all[is_test], logvar_all[is_test]
    x_hat = decode_latents(run.model, mu, pitch=decoder_pitch(test_meta, cfg=cfg))
    stats = dg.latent_stats(mu, logvar)
    rng = np.random.default_rng(cfg.run.seed)
    distances = {label: dg.distance_within_across(mu, test_meta[column].to_numpy(), rng=rng)
                 for label, column in (("instrument", "instrument_str"), ("family", "instrument_family_str"))}
    d = cfg.model.latent_dim
    vae_mse = dg.recon_mse(test_x, x_hat)
    pca = spectrogram_pca(train_x, n_components=d, seed=cfg.run.seed, store=pca_store(cfg))
    pca_mse, pca_hat = dg.pca_recon_mse(train_x, test_x, n_components=d, seed=cfg.run.seed, pca=pca)
    by_family = dg.mse_by_group({"VAE": vae_mse, f"PCA-{d}": pca_mse}, test_meta["instrument_family_str"].to_numpy())
    examples = test_meta.reset_index().groupby("instrument_family_str").first()["index"].to_numpy()
    return Diagnosis(
        latent_dim=d, free_bits=cfg.train.free_bits, test_x=test_x, test_meta=test_meta,
        n_train_notes=len(train_meta), n_train_instruments=int(train_meta["instrument_str"].nunique()),
        stats=stats, stats_all=dg.latent_stats(mu_all, logvar_all), kl=dg.kl_matrix(mu, logvar),
        collapse=dg.collapse_verdict(stats), distances=distances, x_hat=x_hat, pca_hat=pca_hat,
        vae_mse=vae_mse, pca_mse=pca_mse, by_family=by_family, examples=examples)


def diagnostics_metrics(diag: Diagnosis, *, run: TrainedRun) -> dict:
    """What 03_diagnostics writes to ``diagnostics.json``, its targets included."""
    d = diag.latent_dim
    within_i, across_i = diag.distances["instrument"]
    within_f, across_f = diag.distances["family"]
    metrics = {
        "latent_dim": d,
        "active_units": diag.collapse["active_units"],
        "active_units_fraction": diag.collapse["active_units"] / d,
        "active_units_all_notes": int(diag.stats_all["active"].sum()),
        "collapse": diag.collapse,
        "kl_total_mean": float(diag.kl.sum(axis=1).mean()),
        "kl_per_dim_mean": diag.stats["kl_mean"].round(5).tolist(),
        "mu_var_per_dim": diag.stats["mu_var"].round(5).tolist(),
        "logvar_mean_per_dim": diag.stats["logvar_mean"].round(4).tolist(),
        "test_recon_mse": float(diag.vae_mse.mean()),
        "pca_test_recon_mse": float(diag.pca_mse.mean()),
        "test_recon_mse_by_family": diag.by_family["VAE"].round(6).to_dict(),
        "pca_test_recon_mse_by_family": diag.by_family[f"PCA-{d}"].round(6).to_dict(),
        "test_notes": int(len(diag.test_meta)),
        "latent_distances": {"within_instrument_median": float(np.median(within_i)),
                             "across_instrument_median": float(np.median(across_i)),
                             "within_family_median": float(np.median(within_f)),
                             "across_family_median": float(np.median(across_f))},
    }
    metrics["targets"] = evaluate_targets(metrics, notebook="03_diagnostics", cfg=run.cfg)
    return metrics
