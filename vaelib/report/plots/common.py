"""Figures of the analysis notebooks. Every function draws what it is given and computes no statistic.

Each takes the axes to draw on (or returns a new figure), and sets a title, axis labels with units,
and a legend or colour bar where there is more than one series.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from vaelib.config import FeatureConfig
from vaelib.data.features import mel_frequencies, normalized_to_db
from vaelib.io import atomic_path
from vaelib.report.plots.alt_text import figure_alt_text

# Titles carry instrument and note names from metadata; a '$' in one must print, not start mathtext
# (which fails on an unbalanced one).
plt.rcParams["text.parse_math"] = False

__all__ = [
    "save_and_show",
    "show",
    "histograms",
    "bars_per_dim",
    "grouped_bars",
    "spectrogram",
    "spectrogram_rows",
    "scatter_map",
    "draw_path",
    "descriptor_curves",
]

SPLIT_MARKERS = {"train": "o", "valid": "s", "test": "^"}


def save_and_show(fig: Figure, path: str | Path, *, dpi: int) -> None:
    """Write ``fig`` to ``path`` as PNG (atomically), show that PNG in the notebook, with its alternative
    text (:func:`~vaelib.report.plots.alt_text.figure_alt_text`), and close the figure.

    The figure is drawn once: ``savefig`` and then ``plt.show()`` drew it twice, and a figure of many
    axes spends seconds in its layout at every draw (docs/benchmarks.md). Shown at the width the
    inline backend would give it (``figure.dpi`` pixels an inch).
    """
    from IPython.display import Image, display

    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    width = int(round(fig.get_size_inches()[0] * plt.rcParams["figure.dpi"]))
    alt = figure_alt_text(fig)
    plt.close(fig)
    display(Image(filename=str(path), width=width, alt=alt))


def show(fig: Figure) -> None:
    """Show ``fig`` in the notebook, with its alternative text (:func:`figure_alt_text`), and close it."""
    from IPython.display import display

    display(fig, metadata={"image/png": {"alt": figure_alt_text(fig)}})
    plt.close(fig)


def histograms(ax: Axes, series: Mapping[str, np.ndarray], *, bins: int = 40, title: str, xlabel: str,
               ylabel: str = "density", density: bool = True) -> Axes:
    """Overlaid histograms, one per named series."""
    for name, values in series.items():
        ax.hist(np.asarray(values), bins=bins, density=density, alpha=0.55, label=f"{name} (n={len(values)})")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.legend()
    return ax


def bars_per_dim(ax: Axes, values: np.ndarray, *, errors: np.ndarray | None = None, title: str, ylabel: str,
                 threshold: float | None = None, threshold_label: str | None = None,
                 highlight: np.ndarray | None = None, highlight_label: str = "inactive") -> Axes:
    """One bar per latent dimension (with error bars), an optional horizontal threshold line, and
    ``highlight`` (bool per dimension) drawn in another colour."""
    dims = np.arange(len(values))
    colors = np.where(np.asarray(highlight, bool), "tab:red", "tab:blue") if highlight is not None else "tab:blue"
    ax.bar(dims, values, yerr=errors, color=colors, capsize=2, label="per dimension")
    if highlight is not None and np.any(highlight):
        ax.bar([], [], color="tab:red", label=highlight_label)
    if threshold is not None:
        ax.axhline(threshold, color="k", ls="--", lw=1, label=threshold_label or f"threshold {threshold}")
    ax.set(title=title, xlabel="latent dimension", ylabel=ylabel)
    ax.set_xticks(dims if len(dims) <= 32 else dims[:: max(1, len(dims) // 16)])
    ax.legend()
    return ax


def grouped_bars(ax: Axes, table: pd.DataFrame, *, title: str, ylabel: str, xlabel: str = "",
                 hline: float | None = None, hline_label: str | None = None) -> Axes:
    """Bars grouped by the table's rows, one colour per column."""
    n_rows, n_cols = table.shape
    width = 0.8 / max(n_cols, 1)
    x = np.arange(n_rows)
    for i, col in enumerate(table.columns):
        ax.bar(x + (i - (n_cols - 1) / 2) * width, table[col].to_numpy(dtype=float), width, label=str(col))
    if hline is not None:
        ax.axhline(hline, color="k", ls="--", lw=1, label=hline_label)
    ax.set_xticks(x, [str(i) for i in table.index], rotation=30, ha="right")
    ax.set(title=title, ylabel=ylabel, xlabel=xlabel)
    ax.legend()
    return ax


def spectrogram(ax: Axes, x: np.ndarray, *, cfg: FeatureConfig, title: str, colorbar: bool = False,
                ylabel: bool = True) -> Axes:
    """A normalised log-mel [shape=(1, n_mels, frames)] in dB against the note's reference, time in s."""
    x = np.asarray(x, np.float32).reshape(cfg.n_mels, cfg.frames)
    seconds = cfg.frames * cfg.hop_length / cfg.sample_rate
    db = normalized_to_db(x, cfg=cfg)
    im = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=-cfg.top_db, vmax=0,
                   extent=(0, seconds, 0, cfg.n_mels))
    freqs = mel_frequencies(cfg)
    ticks = np.linspace(0, cfg.n_mels - 1, 5).astype(int)
    ax.set_yticks(ticks + 0.5, [f"{freqs[t]:.0f}" for t in ticks])
    ax.set(title=title, xlabel="time (s)")
    if ylabel:
        ax.set_ylabel("mel band centre (Hz)")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, label="dB re. reference")
    return ax


def spectrogram_rows(rows: Sequence[np.ndarray], *, cfg: FeatureConfig, row_titles: Sequence[str],
                     col_titles: Sequence[Sequence[str]], suptitle: str, cell: tuple[float, float] = (2.0, 1.8)
                     ) -> Figure:
    """A grid of spectrograms: one row per array of [shape=(n, 1, n_mels, frames)], as strips."""
    n_cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(cell[0] * n_cols, cell[1] * len(rows) + 0.6),
                             squeeze=False, constrained_layout=True)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            if j >= len(row):
                ax.axis("off")
                continue
            spectrogram(ax, row[j], cfg=cfg, title=col_titles[i][j], ylabel=j == 0,
                        colorbar=j == len(row) - 1)
            if j == 0:
                ax.set_ylabel(f"{row_titles[i]}\nmel band centre (Hz)")
            else:
                ax.set_yticklabels([])
    fig.suptitle(suptitle)
    return fig


def scatter_map(ax: Axes, coords: np.ndarray, values: np.ndarray, *, title: str, xlabel: str, ylabel: str,
                continuous: bool = False, cbar_label: str = "", split: np.ndarray | None = None,
                size: float = 8.0) -> Axes:
    """A 2-D map coloured by a categorical (legend) or continuous (colour bar) value; with ``split``,
    train and test notes get different markers."""
    coords = np.asarray(coords)
    values = np.asarray(values)
    splits = np.asarray(split) if split is not None else np.full(len(coords), "all")
    markers = {s: SPLIT_MARKERS.get(s, "o") for s in pd.unique(splits)}
    if continuous:
        vmin, vmax = float(np.min(values)), float(np.max(values))
        for s, m in markers.items():
            sel = splits == s
            sc = ax.scatter(coords[sel, 0], coords[sel, 1], c=values[sel], cmap="viridis", vmin=vmin, vmax=vmax,
                            s=size, marker=m, alpha=0.8, linewidths=0)
        ax.figure.colorbar(sc, ax=ax, label=cbar_label)
    else:
        cats = sorted(pd.unique(values).tolist())
        palette = plt.get_cmap("tab20" if len(cats) > 10 else "tab10")
        for k, cat in enumerate(cats):
            for s, m in markers.items():
                sel = (values == cat) & (splits == s)
                if sel.any():
                    ax.scatter(coords[sel, 0], coords[sel, 1], color=palette(k % palette.N), s=size, marker=m,
                               alpha=0.8, linewidths=0, label=str(cat) if s == next(iter(markers)) else None)
        ax.legend(title=cbar_label or None, fontsize="small", markerscale=2, loc="best")
    if split is not None:
        for s, m in markers.items():
            ax.scatter([], [], marker=m, color="grey", label=f"{s} split")
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, labels, fontsize="small", markerscale=2, loc="best")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return ax


def draw_path(ax: Axes, coords: np.ndarray, *, label: str, color: str | None = None) -> Axes:
    """A path [shape=(steps, 2)] on a map: line with dots, start marked with a square, end with a star."""
    coords = np.asarray(coords)
    (line,) = ax.plot(coords[:, 0], coords[:, 1], "-o", ms=3, lw=1.5, color=color, label=label)
    ax.plot(*coords[0], "s", ms=8, color=line.get_color(), mec="k")
    ax.plot(*coords[-1], "*", ms=12, color=line.get_color(), mec="k")
    ax.legend(fontsize="small", loc="best")
    return ax


def descriptor_curves(ax: Axes, curves: Mapping[str, np.ndarray], *, title: str, ylabel: str,
                      xlabel: str = "position along the path (0 = instrument A, 1 = B)") -> Axes:
    """Descriptor values along paths, one line per named curve, plotted against positions 0..1."""
    for name, values in curves.items():
        ax.plot(np.linspace(0, 1, len(values)), values, "-o", ms=3, label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize="small")
    return ax
