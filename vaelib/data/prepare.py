"""The preprocessing stage: render the embedded dataset if needed, read and split it, cache features.

A missing ``data.root`` is rendered into only when no folder beside it (or beside the first missing
folder of its path) whose name it could be a typo of holds a dataset: a typo in ``data.root`` is
refused with "did you mean", not answered by rendering the embedded dataset into the misspelled
folder. A typo is a name at most ``TYPO_EDITS`` edits (insert, delete, replace a character) from the
existing one that does not extend it after a separator: beside ``gm_default``, ``gm_defualt`` and
``gm_defaults`` are typos, ``gm_default_v2`` and ``gm-default-2`` new names. Before a render the
feature cache folder is checked, since the rendered notes' features are built next.

``prepare_shard`` and ``merge_features`` are the stage in shards (``vaelib.data.shards``): they read an
existing dataset and never render one, since every shard process would render it at once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from vaelib.config import Config, TrainConfig, resolve_path
from vaelib.data.cache import FeatureCache, build_feature_cache, check_cache_folder
from vaelib.data.nsynth import SPLITS, load_dataset
from vaelib.data.render import check_rendered, render_dataset, rendered_sources, rendered_summary
from vaelib.data.shards import ShardResult, build_shard, merge_shards
from vaelib.data.soundfonts import source_names
from vaelib.exceptions import DataError, ParameterError
from vaelib.io import file_in_the_way, os_error_text

__all__ = ["ensure_dataset", "check_train_sources", "across_setting", "source_terms", "source_settings",
           "one_source_error", "prepare_features", "prepare_shard", "merge_features", "close_dataset", "is_typo_of"]

log = logging.getLogger(__name__)

TYPO_EDITS = 2  # edits at most between a misspelled folder name and the one meant (gm_defualt: 2)
NEW_NAME_SEPARATORS = "_-. "  # after an existing name, one of these starts a new name (gm_default_v2)


def _holds_dataset(folder: Path) -> bool:
    return (folder / "examples.json").is_file() or any((folder / f"nsynth-{s}").is_dir() for s in SPLITS)


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest characters inserted, deleted or replaced to turn ``a`` into ``b``."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _extends(longer: str, shorter: str) -> bool:
    """Whether ``longer`` is ``shorter`` followed by a separator and more (``gm_default_v2``, ``gm_default``)."""
    return len(longer) > len(shorter) and longer.startswith(shorter) and longer[len(shorter)] in NEW_NAME_SEPARATORS


def is_typo_of(name: str, existing: str) -> bool:
    """Whether folder name ``name`` reads as a misspelling of ``existing``: another name at most
    ``TYPO_EDITS`` edits from it, where neither extends the other after one of ``NEW_NAME_SEPARATORS``
    (beside ``gm_default``, ``gm_default_v2`` and ``gm_default-2`` are new names, and beside
    ``gm_default_2``, ``gm_default`` is one)."""
    if name == existing or _edit_distance(name, existing) > TYPO_EDITS:
        return False
    return not (_extends(name, existing) or _extends(existing, name))


def close_dataset(root: Path) -> Path | None:
    """An existing dataset whose path the missing ``root`` reads as a misspelling of, or None.

    The first missing folder of ``root`` is compared with the folders beside it; of those it is a typo
    of (:func:`is_typo_of`), the nearest whose path, completed with the rest of ``root``, holds a
    dataset (``examples.json`` or ``nsynth-*`` split folders) is returned.
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
    typos = sorted((_edit_distance(missing[0], name), name) for name in siblings if is_typo_of(missing[0], name))
    for _, name in typos:
        candidate = base.joinpath(name, *missing[1:])
        if _holds_dataset(candidate):
            return candidate
    return None


def source_terms(tc: TrainConfig) -> list[str]:
    """The training terms on that need each train note's SoundFont, as errors name them."""
    return [f"train.{k}" for k in ("source_align", "source_adversary") if getattr(tc, k) > 0]


def across_setting(contrast_labels: str) -> list[str]:
    """The contrastive labels as errors name them when they need several SoundFonts (``program_across``,
    whose positives are another bank's renderings of the program); empty for any other labels."""
    return [f"train.contrast_labels {contrast_labels!r}"] if contrast_labels == "program_across" else []


def source_settings(tc: TrainConfig) -> list[str]:
    """The settings on that need the train split to hold notes of several SoundFonts, as errors name them:
    :func:`across_setting`, and :func:`source_terms`."""
    return across_setting(tc.contrast_labels) + source_terms(tc)


def one_source_error(settings: list[str], what: str, *, held_out: tuple[str, ...] = ()) -> ParameterError:
    """The refusal of ``settings`` (:func:`source_settings`) for ``what``, a train split of one SoundFont, with
    the way out of each; ``held_out``: the SoundFonts ``data.test_soundfonts`` keeps from it."""
    fixes = ["train.contrast_labels 'program'" if s.startswith("train.contrast_labels") else f"{s} 0"
             for s in settings]
    where = f" (data.test_soundfonts holds out {', '.join(held_out)})" if held_out else ""
    need = "they need" if len(settings) > 1 else "it needs"
    return ParameterError(f"{' and '.join(settings)}: {what} holds notes of one SoundFont{where}, and {need} "
                          f"several; set {' and '.join(fixes)}, or train on several SoundFonts")


def check_train_sources(cfg: Config) -> None:
    """Refuse, before a run writes anything, the settings of :func:`source_settings` when the params alone
    say the train split will hold one SoundFont: a dataset vaelib renders (or rendered) from
    ``render.soundfont``, less ``data.test_soundfonts``, with one source. A folder vaelib did not render,
    or one rendered from other sources than the params name (which :func:`ensure_dataset` refuses), is
    left to the training, which reads the notes.

    Raises
    ------
    ParameterError
        Naming every such setting, the SoundFont and the way out of each.
    DataError
        A missing ``data.root`` that reads as a typo of a dataset folder (as :func:`ensure_dataset`).
    """
    settings = source_settings(cfg.train)
    if not settings or not cfg.render.enabled:
        return
    names = source_names(cfg.render.soundfont)
    root = resolve_path(cfg.data.root)
    if root.exists():
        summary = rendered_summary(root)
    else:
        _refuse_misspelled_root(cfg, root)  # the folder meant may hold several SoundFonts: the typo comes first
        summary = {}
    if summary is None or (summary and rendered_sources(summary) != names):
        return
    train = [n for n in names if n not in cfg.data.test_soundfonts]
    if len(train) == 1:
        held = tuple(n for n in names if n in cfg.data.test_soundfonts)
        verb = "rendered from" if summary else "to be rendered from"
        raise one_source_error(settings, f"the train split of data.root {cfg.data.root!r} ({verb} {train[0]})",
                               held_out=held)


def _refuse_misspelled_root(cfg: Config, root: Path) -> None:
    """A missing ``data.root`` that reads as a typo of a dataset folder: refused, nothing rendered."""
    near = close_dataset(root)
    if near is not None:
        raise DataError(f"{root}: dataset folder not found (data.root={cfg.data.root!r}); did you mean {near}? "
                        f"Nothing was rendered; to render the embedded dataset into {root} on purpose, run "
                        f"`vaelib render --params <the same params> --out {root}` first")


def ensure_dataset(cfg: Config, *, show_progress: bool = True,
                   before_render: Callable[[], None] | None = None) -> None:
    """Render the GM dataset into ``data.root`` when it is missing and ``render.enabled``.

    ``before_render`` is called once every check of ``data.root`` has passed, just before a render
    (:func:`prepare_features` checks the feature cache folder there); not when nothing is rendered.
    An existing ``data.root`` that vaelib rendered from other SoundFonts than ``render.soundfont``
    names is refused while ``render.enabled``: a render is keyed by its sources, and reading the old
    one would train on other notes than the params describe.

    Raises
    ------
    DataError
        The folder is missing and rendering is off; a file stands where ``data.root`` or a parent of
        it should be a folder; a folder whose name ``data.root`` reads as a typo of holds a dataset
        ("did you mean"; render there on purpose with ``vaelib render --out``); ``data.root`` was
        rendered from other SoundFonts; the rendering cannot write its folder.
    """
    root = resolve_path(cfg.data.root)
    blocker = file_in_the_way(root)
    if blocker is not None:
        raise DataError(f"{root}: {blocker} is a file, not a folder (data.root={cfg.data.root!r}); "
                        "set data.root to a dataset folder")
    if root.exists():
        if cfg.render.enabled:
            check_rendered(root, cfg.render, asked_by="render.soundfont", folder_key="data.root",
                           hint="or set render.enabled: false to read it as it is")
        return
    if not cfg.render.enabled:
        raise DataError(f"{root}: dataset folder not found (data.root={cfg.data.root!r}) "
                        "and render.enabled is false")
    _refuse_misspelled_root(cfg, root)
    if before_render is not None:
        before_render()
    log.info("%s missing: rendering the embedded GM dataset", root)
    try:
        render_dataset(cfg.render, root, show_progress=show_progress)
    except OSError as exc:
        raise DataError(f"cannot render the embedded dataset into {root}: {os_error_text(exc)}; set data.root to "
                        "a folder you can write") from exc


def prepare_features(cfg: Config, *, show_progress: bool = True) -> FeatureCache:
    """Dataset (rendered if needed) -> instrument-disjoint splits -> cached log-mel features.

    Before a render, ``features.cache_dir`` is checked (:func:`vaelib.data.cache.check_cache_folder`):
    the rendered notes' features are always built, so a cache folder that cannot be written fails
    first, before minutes of rendering.
    """
    ensure_dataset(cfg, show_progress=show_progress, before_render=lambda: check_cache_folder(cfg.features))
    df = load_dataset(cfg.data, seed=cfg.run.seed)
    return build_feature_cache(df, cfg.features, resample=cfg.data.resample, show_progress=show_progress)


def _existing_dataset(cfg: Config) -> None:
    """``ensure_dataset``'s checks of ``data.root``, with a missing dataset refused instead of rendered."""
    def refuse() -> None:
        root = resolve_path(cfg.data.root)
        raise DataError(f"{root}: dataset folder not found (data.root={cfg.data.root!r}); sharded preprocessing "
                        "reads an existing dataset, since every shard would render it at once: render it first "
                        "with `vaelib render --params <the same params>`")

    ensure_dataset(cfg, show_progress=False, before_render=refuse)


def prepare_shard(cfg: Config, *, index: int, count: int, show_progress: bool = True) -> ShardResult:
    """Dataset -> splits -> shard ``index`` of ``count`` of the cache ``prepare_features`` builds
    (:func:`vaelib.data.shards.build_shard`); nothing is done when that shard or the cache is built.

    Raises
    ------
    DataError
        ``data.root`` does not exist (it is not rendered here), or what ``build_shard`` raises.
    """
    _existing_dataset(cfg)
    df = load_dataset(cfg.data, seed=cfg.run.seed)
    return build_shard(df, cfg.features, index=index, count=count, resample=cfg.data.resample,
                       show_progress=show_progress)


def merge_features(cfg: Config, *, count: int, show_progress: bool = True) -> FeatureCache:
    """The cache ``prepare_features`` returns, merged from its ``count`` shards when it is not built yet
    (:func:`vaelib.data.shards.merge_shards`).

    Raises
    ------
    DataError
        ``data.root`` does not exist, or shards are missing, damaged or mismatched (each named).
    """
    _existing_dataset(cfg)
    df = load_dataset(cfg.data, seed=cfg.run.seed)
    return merge_shards(df, cfg.features, count=count, show_progress=show_progress)
