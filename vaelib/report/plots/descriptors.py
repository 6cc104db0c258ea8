"""Figures of 04_latent_map's descriptor section: the maps of mu coloured by each descriptor, the
descriptors of the decoded grid over the PCA plane, and their R^2 from mu against PCA. They draw what
they are given."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from vaelib.analysis.descriptors import LABELS, DescriptorStudy, descriptor_label
from vaelib.analysis.latent_map import LatentSpace
from vaelib.report.plots.common import SPLIT_MARKERS, grouped_bars

__all__ = ["descriptor_maps_figure", "descriptor_grid_figure", "descriptor_r2_figure"]

PANEL = (4.2, 3.6)  # inches per panel
R2_FLOOR = -1.0  # the R^2 axis stops here: below, a regression is worse than the mean and its depth says little


def _axis_label(name: str, space: LatentSpace, i: int) -> str:
    p = space.projections[name]
    axis = "PC" if name == "PCA" else f"{name} "
    return f"{axis}{i + 1}" + (f" ({p.explained[i]:.0%} var.)" if p.explained else "")


def _descriptor_scatter(ax: Axes, coords: np.ndarray, values: np.ndarray, *, split: np.ndarray,
                        limits: tuple[float, float], label: str) -> None:
    """Notes on a map coloured by a descriptor over ``limits`` (a colour bar extended at both ends:
    notes outside the range take its end colours); train, valid and test notes get different markers."""
    for name in pd.unique(split):
        sel = split == name
        sc = ax.scatter(coords[sel, 0], coords[sel, 1], c=values[sel], cmap="viridis", vmin=limits[0],
                        vmax=limits[1], s=5, marker=SPLIT_MARKERS.get(name, "o"), alpha=0.8, linewidths=0,
                        label=f"{name} split")
    ax.figure.colorbar(sc, ax=ax, label=label, extend="both")


def descriptor_maps_figure(space: LatentSpace, study: DescriptorStudy) -> Figure:
    """Every map of mu (rows: PCA, and UMAP when present) coloured by each descriptor of the notes
    (columns), over ``study.colour_limits()``, with a colour bar in the descriptor's unit; marker by split."""
    names = list(study.values.columns)
    limits = study.colour_limits()
    proj = space.projections
    fig, axes = plt.subplots(len(proj), len(names), figsize=(PANEL[0] * len(names), PANEL[1] * len(proj)),
                             constrained_layout=True, squeeze=False)
    split = np.asarray(space.split)
    for row, (map_name, p) in enumerate(proj.items()):
        for col, name in enumerate(names):
            ax = axes[row, col]
            _descriptor_scatter(ax, np.asarray(p.coords), study.values[name].to_numpy(), split=split,
                                limits=limits[name], label=descriptor_label(name))
            ax.set(title=f"{map_name} of mu: {LABELS[name]}", xlabel=_axis_label(map_name, space, 0),
                   ylabel=_axis_label(map_name, space, 1))
    axes[0, 0].legend(fontsize="small", markerscale=2, loc="best")  # the split markers, once
    fig.suptitle("the notes' descriptors on the maps of mu (colours span their 2-98% range)")
    return fig


def descriptor_grid_figure(study: DescriptorStudy, *, points: np.ndarray | None = None) -> Figure:
    """The descriptors of the spectrograms decoded from the grid over the PCA plane, one heatmap per
    descriptor in PC units with a colour bar in its unit; ``points`` [shape=(notes, 2)] (the notes' PCA
    coordinates) are dotted over it in white, to show where the grid is on the data and where it is off it."""
    grid = study.grid
    names = list(grid.values)
    n_cols = 3
    n_rows = -(-len(names) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(PANEL[0] * n_cols + 1, PANEL[1] * n_rows + 0.4),
                             constrained_layout=True, squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        im = ax.imshow(grid.values[name], origin="lower", aspect="auto", cmap="viridis", extent=grid.extent,
                       interpolation="nearest")
        fig.colorbar(im, ax=ax, label=descriptor_label(name))
        if points is not None:
            ax.scatter(points[:, 0], points[:, 1], s=1, color="w", alpha=0.35, linewidths=0)
        ax.set(title=LABELS[name], xlabel="PC1", ylabel="PC2")
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    pitch = "" if grid.pitch is None else f", decoded at MIDI pitch {grid.pitch}"
    dots = "" if points is None else "; white dots: the notes"
    fig.suptitle(f"descriptors of the decoded {grid.size} x {grid.size} grid over the PCA plane of mu{pitch}{dots}")
    return fig


def descriptor_r2_figure(study: DescriptorStudy) -> Figure:
    """R^2 of the ridge regression of each descriptor on the test instruments, from mu and from PCA."""
    fig, ax = plt.subplots(figsize=(10, 4), constrained_layout=True)
    grouped_bars(ax, study.r2_table, title="descriptors predicted from mu and from PCA (ridge, test instruments)",
                 ylabel="R^2 on the test split", xlabel="descriptor", hline=0.0, hline_label="the test mean (R^2 = 0)")
    lowest = float(study.r2.to_numpy().min())
    ax.set_ylim(max(R2_FLOOR, min(-0.1, lowest - 0.05)), 1.1)  # a bar below R2_FLOOR is cut, its value printed
    for bar in ax.patches:
        ax.annotate(f"{bar.get_height():.2f}", (bar.get_x() + bar.get_width() / 2, max(bar.get_height(), R2_FLOOR)),
                    ha="center", va="bottom" if bar.get_height() >= 0 else "top", fontsize=7)
    return fig
