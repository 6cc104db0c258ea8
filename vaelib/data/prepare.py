"""The preprocessing stage: render the embedded dataset if needed, read and split it, cache features."""

from __future__ import annotations

import logging

from vaelib.config import Config, resolve_path
from vaelib.data.cache import FeatureCache, build_feature_cache
from vaelib.data.nsynth import load_dataset
from vaelib.data.render import render_dataset
from vaelib.exceptions import DataError

__all__ = ["ensure_dataset", "prepare_features"]

log = logging.getLogger(__name__)


def ensure_dataset(cfg: Config, *, show_progress: bool = True) -> None:
    """Render the GM dataset into ``data.root`` when it is missing and ``render.enabled``."""
    root = resolve_path(cfg.data.root)
    if root.exists():
        return
    if not cfg.render.enabled:
        raise DataError(f"{root}: dataset folder not found (data.root={cfg.data.root!r}) "
                        "and render.enabled is false")
    log.info("%s missing: rendering the embedded GM dataset", root)
    render_dataset(cfg.render, root, show_progress=show_progress)


def prepare_features(cfg: Config, *, show_progress: bool = True) -> FeatureCache:
    """Dataset (rendered if needed) -> instrument-disjoint splits -> cached log-mel features."""
    ensure_dataset(cfg, show_progress=show_progress)
    df = load_dataset(cfg.data, seed=cfg.run.seed)
    return build_feature_cache(df, cfg.features, resample=cfg.data.resample, show_progress=show_progress)
