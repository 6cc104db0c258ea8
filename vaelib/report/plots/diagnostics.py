"""Figures of 03_diagnostics, from a ``vaelib.analysis.diagnose.Diagnosis``. They draw what they are given."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from vaelib.analysis.diagnose import Diagnosis
from vaelib.analysis.diagnostics import ACTIVE_VAR_THRESHOLD
from vaelib.config import FeatureConfig
from vaelib.report.plots.common import bars_per_dim, grouped_bars, histograms, spectrogram_rows

__all__ = ["posterior_figure", "kl_figure", "active_units_figure", "distances_figure", "recon_by_family_figure",
           "recon_examples_figure"]


def posterior_figure(diag: Diagnosis) -> Figure:
    """mu and posterior logvar per dimension over the test notes: mean ± std."""
    s = diag.stats
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.6), constrained_layout=True)
    bars_per_dim(axes[0], s["mu_mean"].to_numpy(), errors=s["mu_std"].to_numpy(),
                 title="mu per dimension (test notes): mean ± std", ylabel="mu (latent units)")
    bars_per_dim(axes[1], s["logvar_mean"].to_numpy(), errors=s["logvar_std"].to_numpy(),
                 title="posterior logvar per dimension: mean ± std", ylabel="logvar (log latent units²)",
                 threshold=0.0, threshold_label="prior (logvar = 0)")
    return fig


def kl_figure(diag: Diagnosis) -> Figure:
    """Total raw KL per test note, and mean raw KL per dimension against the free-bits threshold."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.6), constrained_layout=True)
    histograms(axes[0], {"test notes": diag.kl.sum(axis=1)}, title="total raw KL per note", xlabel="KL (nats)",
               ylabel="notes", density=False)
    bars_per_dim(axes[1], diag.stats["kl_mean"].to_numpy(), title="mean raw KL per dimension", ylabel="KL (nats)",
                 threshold=diag.free_bits, threshold_label=f"free bits ({diag.free_bits} nats)")
    return fig


def active_units_figure(diag: Diagnosis) -> Figure:
    """Variance of mu per dimension on a log axis, inactive dimensions highlighted."""
    fig, ax = plt.subplots(figsize=(10, 3.6), constrained_layout=True)
    bars_per_dim(ax, diag.stats["mu_var"].to_numpy(), title="variance of mu over the test notes",
                 ylabel="Var(mu) (latent units²)", threshold=ACTIVE_VAR_THRESHOLD,
                 threshold_label=f"activity threshold {ACTIVE_VAR_THRESHOLD}",
                 highlight=~diag.stats["active"].to_numpy())
    ax.set_yscale("log")
    return fig


def distances_figure(diag: Diagnosis) -> Figure:
    """Distances between mu of test notes within and across instruments, and families."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.6), constrained_layout=True)
    for ax, (label, (within, across)) in zip(axes, diag.distances.items()):
        plural = "instruments" if label == "instrument" else "families"
        histograms(ax, {f"same {label}": within, f"different {plural}": across},
                   title="distances between mu (test notes)", xlabel="||mu_i - mu_j|| (latent units)")
    return fig


def recon_by_family_figure(diag: Diagnosis) -> Figure:
    """Test reconstruction MSE per family, VAE beside PCA."""
    fig, ax = plt.subplots(figsize=(9, 3.6), constrained_layout=True)
    grouped_bars(ax, diag.by_family.drop(columns="n_notes"), title="test reconstruction MSE by family",
                 ylabel="MSE (normalised log-mel²)", xlabel="instrument family")
    return fig


def recon_examples_figure(diag: Diagnosis, *, cfg: FeatureConfig) -> Figure:
    """One test note per family: original, VAE and PCA reconstructions with their MSE."""
    ex, meta = diag.examples, diag.test_meta
    titles = [f"{meta['instrument_str'][i]} p{meta['pitch'][i]}" for i in ex]
    return spectrogram_rows([diag.test_x[ex], diag.x_hat[ex], diag.pca_hat[ex]], cfg=cfg,
                            row_titles=["original", "VAE", f"PCA-{diag.latent_dim}"],
                            col_titles=[titles, [f"MSE {diag.vae_mse[i]:.4f}" for i in ex],
                                        [f"MSE {diag.pca_mse[i]:.4f}" for i in ex]],
                            suptitle="test notes: original, VAE and PCA reconstructions")
