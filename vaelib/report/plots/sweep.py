"""Figures of the experiment sweep: draws the numbers it is given."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["tradeoff_figure", "active_units_figure"]


def tradeoff_figure(names: list[str], recon: list[float], family_acc: list[float],
                    pca_recon: float | None = None, pca_family_acc: float | None = None):
    """Test reconstruction MSE against the family logistic-probe accuracy, one point per experiment."""
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(recon, family_acc, s=60, color="tab:blue", label="VAE experiments")
    for name, x, y in zip(names, recon, family_acc):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=9)
    if pca_recon is not None and pca_family_acc is not None:
        ax.scatter([pca_recon], [pca_family_acc], marker="x", s=80, color="tab:red",
                   label="PCA baseline (same dimension)")
    ax.set_xlabel("test reconstruction MSE (normalised log-mel, lower is better)")
    ax.set_ylabel("family accuracy, logistic probe on mu (test split)")
    ax.set_title("Reconstruction vs timbre structure")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def active_units_figure(names: list[str], active: list[float], latent: list[float]):
    """Active and total latent units per experiment."""
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4))
    xs = range(len(names))
    ax.bar(xs, latent, color="lightgrey", label="latent dimensions")
    ax.bar(xs, active, color="tab:green", label="active units (Var[mu] > 0.01)")
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylabel("units")
    ax.set_title("Active units per experiment")
    ax.legend()
    return fig
