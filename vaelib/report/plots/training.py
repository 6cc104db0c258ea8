"""Figures of 02_train: loss curves and latent statistics per epoch. They draw what they are given."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["loss_curves", "latent_curves"]

AUX_LABELS = {"train_contrast": "instrument contrast (SupCon)", "train_pitch_ce": "pitch head cross-entropy",
              "train_pitch_order": "pitch order (AR-VAE)", "train_source_align": "SoundFont alignment (MMD)",
              "train_source_adversary": "SoundFont adversary cross-entropy (DANN)"}


def loss_curves(history: pd.DataFrame, *, title: str = "Training curves") -> Figure:
    """Reconstruction (left) and raw / free-bits KL with beta on a second axis (middle), train and valid;
    when the run used any optional term (instrument contrast, pitch head, pitch order, SoundFont alignment or
    adversary),
    those per epoch (right).

    ``history`` has the columns of :data:`vaelib.model.train.HISTORY_COLUMNS`, one row per epoch.
    """
    aux = [c for c in AUX_LABELS if c in history and history[c].abs().sum() > 0]
    fig, axes = plt.subplots(1, 3 if aux else 2, figsize=(17 if aux else 12, 3.8), constrained_layout=True)
    ax_r, ax_k = axes[0], axes[1]
    ep = history["epoch"]
    ax_r.plot(ep, history["train_recon"], "o-", label="train")
    ax_r.plot(ep, history["valid_recon"], "s--", label="valid")
    best = history["valid_recon"].idxmin()
    ax_r.axvline(history.loc[best, "epoch"], color="grey", lw=0.8, ls=":", label="best valid")
    ax_r.set(title="Reconstruction", xlabel="epoch", ylabel="squared error summed per note")
    ax_r.legend()
    lines = []
    lines += ax_k.plot(ep, history["train_kl_raw"], "o-", color="C0", label="train raw KL")
    lines += ax_k.plot(ep, history["valid_kl_raw"], "s--", color="C0", label="valid raw KL")
    lines += ax_k.plot(ep, history["train_kl_fb"], "o-", color="C1", label="train free-bits KL")
    lines += ax_k.plot(ep, history["valid_kl_fb"], "s--", color="C1", label="valid free-bits KL")
    ax_k.set(title="KL and beta", xlabel="epoch", ylabel="KL per note (nats)")
    ax_b = ax_k.twinx()
    lines += ax_b.plot(ep, history["beta"], "-", color="C2", lw=2, alpha=0.6, label="beta (end of epoch)")
    ax_b.set_ylabel("beta (KL weight)")
    ax_b.set_ylim(bottom=0)
    ax_k.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="best")
    if aux:
        for i, col in enumerate(aux):
            axes[2].plot(ep, history[col], "o-", color=f"C{4 + i}", label=AUX_LABELS[col])
        axes[2].set(title="Auxiliary terms (train, unweighted)", xlabel="epoch", ylabel="loss per note")
        axes[2].legend(fontsize=8)
    fig.suptitle(title)
    return fig


def latent_curves(history: pd.DataFrame, *, title: str = "Posterior statistics on the valid split") -> Figure:
    """Mean +- std of mu and of logvar over valid notes and dimensions, and active units, per epoch."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6), constrained_layout=True)
    ep = history["epoch"]
    for ax, name, unit in ((axes[0], "mu", "latent units"), (axes[1], "logvar", "log latent units²")):
        m, s = history[f"{name}_mean"], history[f"{name}_std"]
        ax.plot(ep, m, "o-", label="mean")
        ax.fill_between(ep, m - s, m + s, alpha=0.25, label="± std")
        ax.set(title=name, xlabel="epoch", ylabel=f"{name} ({unit})")
        ax.legend()
    axes[2].plot(ep, history["active_units"], "o-", color="C3", label="Var(mu_d) > 0.01")
    axes[2].set(title="Active units", xlabel="epoch", ylabel="dimensions")
    axes[2].legend()
    fig.suptitle(title)
    return fig
