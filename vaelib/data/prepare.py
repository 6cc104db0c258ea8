"""The preprocessing stage: render the embedded dataset if needed, read and split it, cache features.

A missing ``data.root`` is rendered into only when no folder of a close name beside it (or beside the
first missing folder of its path) holds a dataset: a typo in ``data.root`` is refused with "did you
mean", not answered by rendering the embedded dataset into the misspelled folder.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path

from vaelib.config import Config, resolve_path
from vaelib.data.cache import FeatureCache, build_feature_cache
from vaelib.data.nsynth import SPLITS, load_dataset
from vaelib.data.render import render_dataset
from vaelib.exceptions import DataError
from vaelib.io import os_error_text

__all__ = ["ensure_dataset", "prepare_features", "close_dataset"]

log = logging.getLogger(__name__)

CLOSE_NAME = 0.8  # difflib ratio above which two folder names read as one misspelled (gm_defualt, gm_default)


def _holds_dataset(folder: Path) -> bool:
    return (folder / "examples.json").is_file() or any((folder / f"nsynth-{s}").is_dir() for s in SPLITS)


def close_dataset(root: Path) -> Path | None:
    """An existing dataset whose path differs from the missing ``root`` by a close name, or None.

    The first missing folder of ``root`` is compared with the folders beside it; a close name whose
    path, completed with the rest of ``root``, holds a dataset (``examples.json`` or ``nsynth-*``
    split folders) is returned.
    """
    missing: list[str] = []
    base = root
    while not base.exists():
        missing.insert(0, base.name)
        base = base.parent
    if not missing or not base.is_dir():
        return None
    try:
        siblings = [e.name for e in os.scandir(base) if e.is_dir()]
    except OSError:
        return None
    for name in difflib.get_close_matches(missing[0], siblings, n=5, cutoff=CLOSE_NAME):
        candidate = base.joinpath(name, *missing[1:])
        if _holds_dataset(candidate):
            return candidate
    return None


def _file_in_the_way(root: Path) -> Path | None:
    """The existing non-folder that stands where ``root`` or one of its parents should be a folder."""
    for folder in (root, *root.parents):
        if folder.exists():
            return None if folder.is_dir() else folder
    return None


def ensure_dataset(cfg: Config, *, show_progress: bool = True) -> None:
    """Render the GM dataset into ``data.root`` when it is missing and ``render.enabled``.

    Raises
    ------
    DataError
        The folder is missing and rendering is off; a file stands where ``data.root`` or a parent of
        it should be a folder; a folder of a close name holds a dataset ("did you mean"; render there
        on purpose with ``vaelib render --out``); the rendering cannot write its folder.
    """
    root = resolve_path(cfg.data.root)
    blocker = _file_in_the_way(root)
    if blocker is not None:
        raise DataError(f"{root}: {blocker} is a file, not a folder (data.root={cfg.data.root!r}); "
                        "set data.root to a dataset folder")
    if root.exists():
        return
    if not cfg.render.enabled:
        raise DataError(f"{root}: dataset folder not found (data.root={cfg.data.root!r}) "
                        "and render.enabled is false")
    near = close_dataset(root)
    if near is not None:
        raise DataError(f"{root}: dataset folder not found (data.root={cfg.data.root!r}); did you mean {near}? "
                        f"Nothing was rendered; to render the embedded dataset into {root} on purpose, run "
                        f"`vaelib render --params <the same params> --out {root}` first")
    log.info("%s missing: rendering the embedded GM dataset", root)
    try:
        render_dataset(cfg.render, root, show_progress=show_progress)
    except OSError as exc:
        raise DataError(f"cannot render the embedded dataset into {root}: {os_error_text(exc)}; set data.root to "
                        "a folder you can write") from exc


def prepare_features(cfg: Config, *, show_progress: bool = True) -> FeatureCache:
    """Dataset (rendered if needed) -> instrument-disjoint splits -> cached log-mel features."""
    ensure_dataset(cfg, show_progress=show_progress)
    df = load_dataset(cfg.data, seed=cfg.run.seed)
    return build_feature_cache(df, cfg.features, resample=cfg.data.resample, show_progress=show_progress)
