"""One run, named once: its folder, its resolved params, and its trained model, as the notebooks load them.

``01_preprocess`` starts a run: it resolves the params file and overrides once and writes them to
``<run folder>/params.yaml`` (``vaelib run`` writes the same file before the first notebook). Every
later notebook reads that file instead of taking params of its own, so the notebooks of one run
cannot silently analyse different models; the run folder is ``reports/<run.name>/`` unless a
notebook is handed another (``vaelib run`` hands each its staging folder).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from vaelib.config import REPORTS_DIR, Config, config_to_dict, load_config, save_config
from vaelib.data.cache import FeatureCache
from vaelib.data.prepare import check_train_sources, prepare_features
from vaelib.data.soundfonts import check_soundfonts
from vaelib.exceptions import CheckpointError, ConfigError
from vaelib.model.checkpoint import find_checkpoint, load_model

__all__ = ["RUN_PARAMS", "TRAIN_RECORD", "TrainedRun", "run_folder", "start_run", "read_run_config", "load_trained_run"]

log = logging.getLogger(__name__)

RUN_PARAMS = "params.yaml"  # the resolved params of a run, in its folder
TRAIN_RECORD = "train_metrics.json"  # written by 02_train; names the checkpoint the run's analysis must use


@dataclass
class TrainedRun:
    """What the analysis notebooks of a run work on: its params, features and finished model."""

    cfg: Config
    run_dir: Path
    cache: FeatureCache
    checkpoint: Path
    model: torch.nn.Module
    ckpt: dict


def run_folder(run: str, run_dir: str | os.PathLike = "") -> Path:
    """The folder of run ``run``: ``run_dir`` when given, else ``reports/<run>/``."""
    if run_dir:
        return Path(run_dir)
    if not run or Path(run).name != run:
        raise ConfigError(f"run: expected a run name (a folder under {REPORTS_DIR}), got {run!r}")
    return REPORTS_DIR / run


def start_run(params_file: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (), *,
              run_dir: str | os.PathLike = "") -> tuple[Config, Path]:
    """Resolve the params of a run once and write them to its folder.

    Parameters
    ----------
    params_file : a params YAML
    overrides : ``section.key=value`` strings, as for ``vaelib --set``
    run_dir : the run folder; '' for ``reports/<run.name>/``

    Returns
    -------
    The validated config and the run folder (created).

    Raises
    ------
    ConfigError
        When the params are invalid (before anything is written).
    ParameterError
        When a SoundFont the params name is missing (``check_soundfonts``), or a setting that needs several
        SoundFonts in the train split has one (``check_train_sources``); before anything is written.
    """
    cfg = load_config(params_file, list(overrides))
    check_soundfonts(cfg)
    check_train_sources(cfg)
    folder = run_folder(cfg.run.name, run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / RUN_PARAMS
    if target.is_file():
        try:
            earlier = config_to_dict(load_config(target))
        except ConfigError:
            earlier = None
        if earlier is not None and earlier != config_to_dict(cfg):
            log.warning("%s: replacing the params of an earlier run in this folder; rerun every later notebook "
                        "(02_train first), or they will refuse the run's older outputs", target)
    save_config(cfg, target)
    return cfg, folder


def read_run_config(run_dir: str | os.PathLike) -> Config:
    """The resolved params of the run in ``run_dir`` (written by ``start_run``).

    Raises
    ------
    ConfigError
        When the folder has no ``params.yaml`` (01_preprocess has not run there) or it is invalid.
    """
    path = Path(run_dir) / RUN_PARAMS
    if not path.is_file():
        raise ConfigError(f"{path}: no params for this run; execute 01_preprocess for it first (it writes the "
                          "run's resolved params), or pass the run folder of an existing run")
    return load_config(path)


def _training_record(run_dir: Path) -> dict | None:
    path = run_dir / TRAIN_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and record.get("checkpoint") else None


def _same_training(record: dict, checkpoint: Path, ckpt: dict) -> bool:
    """Whether the training 02 recorded is the one ``checkpoint`` holds: the same run folder (named by the
    config's hash; compared by name, so a moved checkout still matches) and the same best epoch and valid
    figure (a retrain of the same config that ended elsewhere is another model)."""
    best = ckpt.get("best") or {}
    return (Path(record["checkpoint"]).parent.name == checkpoint.parent.name
            and record.get("best_epoch") == best.get("epoch")
            and record.get("best_valid_recon") == best.get("valid_recon"))


def load_trained_run(run: str = "default", run_dir: str | os.PathLike = "", *,
                     device: str | torch.device = "cpu") -> TrainedRun:
    """Params, feature cache and finished checkpoint of a run, in one call.

    Parameters
    ----------
    run : run name (``reports/<run>/``)
    run_dir : the run folder instead of the name's
    device : where the model is loaded

    Raises
    ------
    ConfigError
        When the run folder has no params (01_preprocess has not run).
    CheckpointError
        When no finished training matches the run's params (02_train has not run), or when the run's
        ``train_metrics.json`` names another checkpoint than the one its params now match (the params
        were changed after training): the message names both.
    """
    folder = run_folder(run, run_dir)
    cfg = read_run_config(folder)
    cache = prepare_features(cfg, show_progress=False)
    checkpoint = find_checkpoint(cfg, cache)
    if checkpoint is None:
        raise CheckpointError(f"{folder / RUN_PARAMS}: no finished training matches this run's params; "
                              "execute 02_train for it first")
    model, ckpt = load_model(checkpoint, cfg=cfg, device=device)
    record = _training_record(folder)
    if record is not None and not _same_training(record, checkpoint, ckpt):
        raise CheckpointError(f"{folder / TRAIN_RECORD} was written for checkpoint {record['checkpoint']} (best "
                              f"epoch {record.get('best_epoch')}), but the run's params now match {checkpoint} "
                              f"(best epoch {(ckpt.get('best') or {}).get('epoch')}): the params or the training "
                              "changed after 02_train; execute 02_train again for this run")
    return TrainedRun(cfg=cfg, run_dir=folder, cache=cache, checkpoint=checkpoint, model=model, ckpt=ckpt)
