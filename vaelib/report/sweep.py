"""Experiment sweeps: several params files run one after the other, compared on one page."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib.pyplot as plt

from vaelib.config import REPORTS_DIR, load_config
from vaelib.data.prepare import check_train_sources
from vaelib.data.soundfonts import check_soundfonts
from vaelib.exceptions import ConfigError
from vaelib.io import atomic_write_text
from vaelib.report.html import flatten_metrics, png_data_uri, sweep_index_html
from vaelib.report.pipeline import refresh_reports_index, run_pipeline
from vaelib.report.plots.sweep import active_units_figure, tradeoff_figure

__all__ = ["run_sweep", "write_sweep_index"]

log = logging.getLogger(__name__)


def run_sweep(params_files: list[str | Path], overrides: list[str] = (), *, reports_root: Path | None = None,
              keep_code: bool | None = None) -> Path:
    """Run every experiment into ``<reports_root>/experiments/<run.name>/`` and write the comparison page.

    All params are validated, and their run names checked for clashes, before the first one runs.
    Experiments that share data and feature params share the dataset and the feature cache.
    """
    reports_root = Path(reports_root or REPORTS_DIR)
    if not params_files:
        raise ConfigError("sweep: no params files given")
    names: dict[str, Path] = {}
    for path in params_files:
        cfg = load_config(path, overrides)
        check_soundfonts(cfg)  # every experiment's files, before the first one runs
        check_train_sources(cfg)
        if cfg.run.name in names:
            raise ConfigError(f"{path}: run.name {cfg.run.name!r} is also the name of {names[cfg.run.name]}")
        names[cfg.run.name] = Path(path)
    root = reports_root / "experiments"
    for i, (name, path) in enumerate(names.items(), 1):
        log.info("experiment %d/%d: %s (%s)", i, len(names), name, path)
        run_pipeline(path, overrides, reports_root=root, keep_code=keep_code)
    out = write_sweep_index(root, list(names))
    refresh_reports_index(reports_root)
    return out


def write_sweep_index(root: Path, names: list[str] | None = None) -> Path:
    """Write ``<root>/index.html`` from the metrics.json of each experiment folder under ``root``."""
    if names is None:
        names = sorted(p.parent.name for p in root.glob("*/metrics.json") if not p.parent.name.startswith("."))
    runs = [(n, json.loads((root / n / "metrics.json").read_text())) for n in names
            if (root / n / "metrics.json").is_file()]
    flats = [flatten_metrics(m) for _, m in runs]
    figures = []
    usable = [(n, f) for (n, _), f in zip(runs, flats)
              if "test_recon_mse" in f and "probes.mu.family_logreg" in f]
    if usable:
        pca = usable[0][1]
        fig = tradeoff_figure([n for n, _ in usable], [f["test_recon_mse"] for _, f in usable],
                              [f["probes.mu.family_logreg"] for _, f in usable],
                              pca.get("pca_test_recon_mse"), pca.get("probes.pca.family_logreg"))
        figures.append(("Reconstruction vs family probe accuracy", png_data_uri(fig)))
        plt.close(fig)
    active = [(n, f) for (n, _), f in zip(runs, flats) if "active_units" in f and "latent_dim" in f]
    if active:
        fig = active_units_figure([n for n, _ in active], [f["active_units"] for _, f in active],
                                  [f["latent_dim"] for _, f in active])
        figures.append(("Active units", png_data_uri(fig)))
        plt.close(fig)
    out = root / "index.html"
    atomic_write_text(out, sweep_index_html(runs, figures))
    return out
