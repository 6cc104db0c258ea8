"""Figures of 04_latent_map: maps of mu, the pitch probe's breakdown, interpolations. They draw what they are given."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from vaelib.analysis.latent_map import Interpolations, LatentSpace, PitchBreakdown
from vaelib.analysis.targets import TARGETS
from vaelib.config import FeatureConfig
from vaelib.report.plots.common import descriptor_curves, draw_path, grouped_bars, scatter_map, spectrogram_rows

__all__ = ["maps_figure", "pitch_breakdown_figure", "interpolation_strips_figure", "paths_on_maps_figure",
           "descriptors_along_paths_figure", "PITCH_TARGET"]

COLOURINGS = (("instrument_family_str", "family", False), ("pitch", "MIDI pitch", True),
              ("instrument_source_str", "source", False))
PITCH_TARGET = next(t.threshold for t in TARGETS if t.key == "pitch1_logreg")  # drawn as a line


def _axis_label(name: str, p, i: int) -> str:
    axis = "PC" if name == "PCA" else "UMAP "
    return f"{axis}{i + 1}" + (f" ({p.explained[i]:.0%} var.)" if p.explained else "")


def maps_figure(space: LatentSpace) -> Figure:
    """Every projection of mu (rows) coloured by family, pitch and source (columns); marker by split."""
    proj = space.projections
    fig, axes = plt.subplots(len(proj), 3, figsize=(18, 5.25 * len(proj)), constrained_layout=True, squeeze=False)
    for row, (name, p) in enumerate(proj.items()):
        for col, (column, label, continuous) in enumerate(COLOURINGS):
            scatter_map(axes[row, col], p.coords, space.table[column].to_numpy(), continuous=continuous,
                        cbar_label=label, split=space.split, title=f"{name} of mu, coloured by {label}",
                        xlabel=_axis_label(name, p, 0), ylabel=_axis_label(name, p, 1))
    return fig


def pitch_breakdown_figure(pitch: PitchBreakdown, *, target: float = PITCH_TARGET) -> Figure:
    """Pitch probe accuracy by octave (mu and PCA) and by test instrument (mu), with the target line."""
    fig, axes = plt.subplots(1, 2, figsize=(18, 4.8), constrained_layout=True, gridspec_kw={"width_ratios": [1, 2]})
    grouped_bars(axes[0], pitch.by_octave[[f"{name} accuracy" for name in pitch.errors]],
                 title="pitch probe by octave (test instruments)", ylabel="accuracy within a semitone",
                 xlabel="octave of the played pitch", hline=target, hline_label=f"target {target}")
    grouped_bars(axes[1], pitch.by_instrument[["accuracy"]].rename(columns={"accuracy": "mu"}),
                 title="pitch probe on mu by test instrument", ylabel="accuracy within a semitone",
                 xlabel="test instrument", hline=target, hline_label=f"target {target}")
    for ax in axes:
        ax.set_ylim(0, 1.2)
        ax.legend(loc="upper left", ncols=3)  # one row above the bars, which end at 1.0
    for bar in axes[1].patches:  # an instrument at 0 would otherwise be an empty slot
        axes[1].annotate(f"{bar.get_height():.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                         ha="center", va="bottom", fontsize=7)
    return fig


def interpolation_strips_figure(interp: Interpolations, *, cfg: FeatureConfig) -> Figure:
    """Each decoded path as a strip of spectrograms from instrument A (t=0) to B (t=1)."""
    ts = [f"t={t:.2f}" for t in np.linspace(0, 1, interp.steps)]
    return spectrogram_rows([walk["x"] for walk in interp.paths.values()], cfg=cfg,
                            row_titles=[f"{pair} ({method})" for pair, method in interp.paths],
                            col_titles=[ts] * len(interp.paths),
                            suptitle="decoded interpolations: instrument A (t=0) to instrument B (t=1)",
                            cell=(1.6, 1.5))


def paths_on_maps_figure(space: LatentSpace, interp: Interpolations) -> Figure:
    """The linear paths drawn on every map of mu."""
    proj = space.projections
    fig, axes = plt.subplots(1, len(proj), figsize=(8 * len(proj), 6.5), constrained_layout=True, squeeze=False)
    linear = [(pair, walk["z"]) for (pair, method), walk in interp.paths.items() if method == "linear"]
    for ax, (name, p) in zip(axes[0], proj.items()):
        scatter_map(ax, p.coords, space.table["instrument_family_str"].to_numpy(), cbar_label="family", size=5,
                    title=f"linear interpolation paths on the {name} map", xlabel=f"{name} 1", ylabel=f"{name} 2")
        for (pair, _z), xy in zip(linear, p.transform_each([z for _, z in linear])):
            draw_path(ax, xy, label=f"path {pair}")
    return fig


def descriptors_along_paths_figure(interp: Interpolations) -> Figure:
    """Spectral centroid and bandwidth of the decoded spectrogram along every path."""
    fig, axes = plt.subplots(1, 2, figsize=(14, 4), constrained_layout=True)
    rows = list(interp.table.itertuples())
    descriptor_curves(axes[0], {f"{r.pair} ({r.method})": np.array(r.centroids_hz) for r in rows},
                      title="spectral centroid along the paths", ylabel="centroid (Hz)")
    descriptor_curves(axes[1], {f"{r.pair} ({r.method})": np.array(r.bandwidths_hz) for r in rows},
                      title="spectral bandwidth along the paths", ylabel="bandwidth (Hz)")
    return fig
