"""Figures of the 01_preprocess notebook: dataset counts, pitch/velocity histograms, one spectrogram per family.

Every function draws what it is given (tables from ``vaelib.data.summary``, the cache's metadata and
features) and computes no statistic; each sets a title, axis labels with units, and a legend or
colour bar.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from vaelib.config import FeatureConfig
from vaelib.data.features import mel_frequencies, normalized_to_db
from vaelib.data.nsynth import SPLITS

__all__ = ["counts_figure", "pitch_velocity_figure", "family_spectrograms"]

SPLIT_PALETTE = {"train": "tab:blue", "valid": "tab:orange", "test": "tab:green"}


def _stacked_bars(ax, table: pd.DataFrame, *, title: str, xlabel: str) -> None:
    bottom = np.zeros(len(table))
    for split in table.columns:
        values = table[split].to_numpy(dtype=float)
        ax.bar(np.arange(len(table)), values, bottom=bottom, label=split,
               color=SPLIT_PALETTE.get(split))
        bottom += values
    ax.set_xticks(np.arange(len(table)), [str(i) for i in table.index], rotation=35, ha="right")
    ax.set(title=title, xlabel=xlabel, ylabel="notes")
    ax.legend(title="split")


def counts_figure(family_counts: pd.DataFrame, source_counts: pd.DataFrame,
                  instruments: dict[str, int]) -> Figure:
    """Notes per family and per source, stacked by split, and instruments per split.

    Parameters
    ----------
    family_counts, source_counts : notes, rows = family / source, columns = split
        (``vaelib.data.summary.count_table``).
    instruments : split -> number of instruments.
    """
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [3, 1.2, 1.2]},
                             constrained_layout=True)
    _stacked_bars(axes[0], family_counts, title="Notes per instrument family", xlabel="family")
    _stacked_bars(axes[1], source_counts, title="Notes per source", xlabel="source")
    names = list(instruments)
    axes[2].bar(names, [instruments[n] for n in names], color=[SPLIT_PALETTE.get(n) for n in names])
    axes[2].set(title="Instruments per split", xlabel="split", ylabel="instruments")
    return fig


def pitch_velocity_figure(meta: pd.DataFrame) -> Figure:
    """Histograms of MIDI pitch and velocity per split (seaborn), one bar per value."""
    order = [s for s in SPLITS if s in set(meta["split"])]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4), constrained_layout=True)
    lo, hi = int(meta["pitch"].min()), int(meta["pitch"].max())
    sns.histplot(meta, x="pitch", hue="split", hue_order=order, palette=SPLIT_PALETTE, multiple="stack",
                 bins=np.arange(lo - 0.5, hi + 1.5, 1.0), ax=axes[0])
    axes[0].set(title="MIDI pitch of the kept notes", xlabel="MIDI pitch (semitones; 60 = C4, 261.6 Hz)",
                ylabel="notes")
    vel = meta.assign(velocity=meta["velocity"].astype(str))
    vel_order = [str(v) for v in sorted(meta["velocity"].unique())]
    sns.countplot(vel, x="velocity", hue="split", hue_order=order, order=vel_order, palette=SPLIT_PALETTE,
                  ax=axes[1])
    axes[1].set(title="MIDI velocity of the kept notes", xlabel="MIDI velocity (1-127)", ylabel="notes")
    return fig


def family_spectrograms(features: np.ndarray, titles: Sequence[str], *, cfg: FeatureConfig,
                        n_cols: int = 4) -> Figure:
    """A grid of normalised log-mels shown in dB, frequency axis in Hz, time in seconds, one colour bar.

    Parameters
    ----------
    features : [shape=(n, 1, n_mels, frames)] normalised log-mels in [-1, 1].
    titles : one per spectrogram.
    """
    n = len(features)
    n_rows = int(np.ceil(n / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.6 * n_cols, 2.9 * n_rows), squeeze=False,
                             constrained_layout=True)
    seconds = cfg.frames * cfg.hop_length / cfg.sample_rate
    freqs = mel_frequencies(cfg)
    ticks = np.linspace(0, cfg.n_mels - 1, 5).astype(int)
    im = None
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        db = normalized_to_db(np.asarray(features[k], np.float32).reshape(cfg.n_mels, cfg.frames), cfg=cfg)
        im = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=-cfg.top_db, vmax=0,
                       extent=(0, seconds, 0, cfg.n_mels))
        ax.set_yticks(ticks + 0.5, [f"{freqs[t]:.0f}" for t in ticks])
        ax.set(title=titles[k], xlabel="time (s)", ylabel="frequency (Hz, mel scale)")
    if im is not None:
        fig.colorbar(im, ax=axes, label="level (dB re. the note's peak)", shrink=0.8)
    fig.suptitle("One note per family: normalised log-mel shown in dB")
    return fig
