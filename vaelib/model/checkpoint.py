"""Checkpoints of a training run: where they live, how they are written, read and matched to a config.

A run's folder is named by a hash of everything that changes what training computes (model,
training, feature and data config, seed, feature cache). Files are written atomically; they are
read with ``torch.load(..., weights_only=True)``, so a checkpoint holds only tensors and plain types
(the numpy RNG state included).

Beside a run's folder ``<hash>`` in ``train.checkpoint_dir`` live ``<hash>.lock`` (while one
process trains the run, :class:`RunLock`) and, while the run is trained again,
``<hash>.retrain`` (the new training, which replaces the run's folder only once it has finished:
:func:`replace_run`; a finished one that a stop or a kill kept from doing so replaces it at the next
training of the run: :func:`recover_replaced_run`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import torch

from vaelib.config import (
    Config,
    config_from_dict,
    config_to_dict,
    feature_representation,
    resolve_path,
    section_hash,
)
from vaelib.data.cache import FeatureCache
from vaelib.exceptions import CheckpointError, ConfigError, TrainingError
from vaelib.io import FileLock, acquire_unless_unsupported, atomic_path, os_error_text
from vaelib.model.vae import ConvVAE

__all__ = ["CHECKPOINT_FORMAT", "checkpoint_dir", "load_checkpoint", "load_model", "find_checkpoint",
           "check_same_model", "model_differences", "save_checkpoint", "rng_state", "set_rng_state", "RunLock",
           "staging_dir", "holds_finished_training", "replace_run", "recover_replaced_run"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
_REQUIRED_KEYS = ("format", "config", "model")  # what load_model and the commands read
# Training parameters that change where or how fast a run goes, not what it computes.
_RUNTIME_ONLY = {"device": "auto", "num_threads": 0, "checkpoint_dir": ""}
# Data parameters added after runs were first keyed, with the value that leaves the data as it was: at that
# value they are left out of the key, so the runs trained before them keep their folders.
_DATA_ADDED_OFF = {"test_soundfonts": [], "split_by": "instrument"}
# Training parameters that change where or how fast a run goes and came after the runs the hash names: left
# out of it, so that those runs keep their folders.
_UNHASHED = ("data", "prefetch")
# Parameters that came after those runs, left out of the hash while they are off (their runs compute what
# runs before them did): (key, the value that turns them off, keys that only matter when they are on).
_UNHASHED_WHEN_OFF = (("shuffle_block", 0, ("shuffle_window",)), ("augment_detune", 0.0, ()),
                      ("augment_tilt", 0.0, ()), ("augment_eq", 0.0, ()), ("augment_reverb", 0.0, ("augment_rt60",)),
                      ("augment_gain", 0.0, ()), ("notes_per_class", 0, ()),
                      ("source_align", 0.0, ()), ("mixstyle", 0.0, ("mixstyle_alpha",)),
                      ("source_adversary", 0.0, ()), ("augment_decay", 0.0, ()), ("augment_darkening", 0.0, ()),
                      ("augment_mask_bands", 0, ()), ("augment_mask_frames", 0, ()))


def checkpoint_dir(cfg: Config, cache_key: str) -> Path:
    """Folder of the run defined by the model, training, feature and data config, seed and cache.

    ``train.device``, ``train.num_threads``, ``train.checkpoint_dir``, ``train.data``, ``train.prefetch``
    and the feature cache's ``batch_size``, ``workers`` and ``cache_dir`` are left out of the hash: they
    change where the run goes or how fast, not what it computes. ``train.shuffle_block`` and
    ``train.shuffle_window`` are left out while the block order is off (``shuffle_block`` 0), as are
    ``train.notes_per_class``, ``train.source_align``, ``train.source_adversary`` and ``train.mixstyle``
    (with ``mixstyle_alpha``) while 0, the ``train.augment_*`` fields while each is 0 (``augment_rt60``
    while ``augment_reverb`` is), and ``data.test_soundfonts`` while empty and ``data.split_by`` while
    'instrument', so a run keeps the folder it had before they existed (the split they make is in the
    cache key anyway).
    """
    data = {k: v for k, v in config_to_dict(cfg.data).items() if _DATA_ADDED_OFF.get(k, object()) != v}
    key = section_hash(cfg.model, _hashed_train(cfg), data, extra={
        "features": feature_representation(cfg.features), "seed": cfg.run.seed, "cache": cache_key})
    return resolve_path(cfg.train.checkpoint_dir) / key


def _hashed_train(cfg: Config) -> dict:
    """The training section as the run's hash covers it (see :func:`checkpoint_dir`)."""
    train = config_to_dict(dataclasses.replace(cfg.train, **_RUNTIME_ONLY))
    for key in _UNHASHED:
        del train[key]
    for key, off, dependent in _UNHASHED_WHEN_OFF:
        if train[key] == off:
            for k in (key, *dependent):
                del train[k]
    return train


def rng_state(batch_gen: torch.Generator, noise_gen: torch.Generator, augment_gen: torch.Generator,
              style_gen: torch.Generator) -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "batch": batch_gen.get_state(),
        "noise": noise_gen.get_state(),
        "augment": augment_gen.get_state(),
        "style": style_gen.get_state(),
        # numpy's legacy global state as plain types, so weights_only loading accepts it
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, batch_gen: torch.Generator, noise_gen: torch.Generator,
                  augment_gen: torch.Generator, style_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    batch_gen.set_state(state["batch"])
    noise_gen.set_state(state["noise"])
    if "augment" in state:  # saved before augmentation existed: its runs never drew from it
        augment_gen.set_state(state["augment"])
    if "style" in state:  # saved before MixStyle existed: likewise
        style_gen.set_state(state["style"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        # the GPUs of the machine that saved it, as many as this one has: a run of a node of 4 resumes on 1
        for i, gpu_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state, i)


def save_checkpoint(obj: dict, path: Path) -> None:
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (RuntimeError, OSError) as exc:  # a full disk: torch raises RuntimeError from its zip writer
        reason = os_error_text(exc) if isinstance(exc, OSError) else str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: could not write the checkpoint ({reason}; is the disk full?)") from exc


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``.

    Raises
    ------
    CheckpointError
        When the file is missing, unreadable or not a vaelib checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's text advises weights_only=False: never relayed
        raise CheckpointError(f"{path}: not a vaelib checkpoint, or it holds code, which is never run "
                              f"(read with weights_only=True) ({type(exc).__name__})") from exc
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {first})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a vaelib checkpoint (format {CHECKPOINT_FORMAT})")
    missing = [k for k in _REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a complete vaelib checkpoint: missing {', '.join(map(repr, missing))}")
    return ckpt


def _config_diff(a: dict, b: dict, prefix: str) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{prefix}.{k} (checkpoint {a.get(k)!r}, asked {b.get(k)!r})" for k in keys if a.get(k) != b.get(k)]


def _saved_section(ckpt: dict, path: Path, name: str) -> dict:
    """Section ``name`` of the checkpoint's config read through the dataclass, so a key added since it
    was written reads as its default instead of as a difference."""
    try:
        return config_to_dict(getattr(config_from_dict(ckpt["config"], where=str(path)), name))
    except ConfigError:  # a value no longer valid here: compare what was saved, defaults filling the gaps
        saved = ckpt["config"].get(name)
        if not isinstance(saved, dict):
            raise CheckpointError(f"{path}: the checkpoint's config has no {name!r} section") from None
        return {**config_to_dict(getattr(Config(), name)), **saved}


def model_differences(ckpt: dict, cfg: Config, path: Path) -> list[str]:
    """Every model and log-mel key (``feature_representation``) whose value in checkpoint ``ckpt`` (read
    from ``path``) differs from ``cfg``'s, each as ``"model.latent_dim (checkpoint 8, asked 4)"``; empty
    when they match. Keys added since the checkpoint was written read as their defaults."""
    diffs = _config_diff(_saved_section(ckpt, path, "model"), config_to_dict(cfg.model), "model")
    saved = _saved_section(ckpt, path, "features")
    for k, asked in feature_representation(cfg.features).items():
        if saved.get(k) != asked:
            diffs.append(f"features.{k} (checkpoint {saved.get(k)!r}, asked {asked!r})")
    return diffs


def check_same_model(ckpt: dict, cfg: Config, path: Path) -> None:
    """Raise when ``cfg``'s model or log-mel differs from the checkpoint's: a model trained on one
    log-mel is wrong on another of the same shape (a Slaney-scale model fed HTK bands, or inverted to
    audio on the wrong scale)."""
    diffs = model_differences(ckpt, cfg, path)
    if diffs:
        raise CheckpointError(f"{path}: checkpoint does not match the model asked for: " + "; ".join(diffs))


def load_model(path: str | Path, *, cfg: Config | None = None,
               device: str | torch.device = "cpu") -> tuple[ConvVAE, dict]:
    """The model of a checkpoint, in eval mode on ``device``, and the checkpoint dict.

    Raises
    ------
    CheckpointError
        When the file cannot be read, or ``cfg`` is given and its model or log-mel parameters
        (``feature_representation``) differ from the checkpoint's; the message names every differing key.
    """
    path = Path(path)
    ckpt = load_checkpoint(path, device=device)
    if cfg is not None:
        check_same_model(ckpt, cfg, path)
    try:
        saved = config_from_dict(ckpt["config"], where=str(path))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: the checkpoint's config is not valid here ({exc})") from exc
    model = ConvVAE(saved.model, n_mels=saved.features.n_mels, frames=saved.features.frames)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: its weights do not fit the model its own config describes "
                              f"({' '.join(line.strip() for line in first[:3])[:400]}): the file is damaged or "
                              "was edited; use another checkpoint, or train again") from exc
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}): every latent would be NaN; use another "
                              "checkpoint, or train again")
    model.to(device).eval()
    return model, ckpt


def find_checkpoint(cfg: Config, cache: FeatureCache) -> Path | None:
    """``best.pt`` of a finished run with this config and cache, else None."""
    run_dir = checkpoint_dir(cfg, cache.manifest["key"])
    best, last = run_dir / "best.pt", run_dir / "last.pt"
    if not (best.is_file() and last.is_file()):
        return None
    try:
        ckpt = load_checkpoint(last)
        same = _saved_section(ckpt, last, "model") == config_to_dict(cfg.model)
    except CheckpointError as exc:
        log.warning("ignoring %s: %s", last, exc)
        return None
    staging = staging_dir(run_dir)
    if staging.is_dir() and holds_finished_training(staging):
        log.warning("%s holds a finished retrain that has not replaced the run yet (stopped or killed before it "
                    "could); the next `vaelib train` of these params puts it in place; until then the run as it is "
                    "is used", staging)
    return best if ckpt.get("finished") and same else None


# ----------------------------------------------------------------------------- one trainer per run

class RunLock:
    """Exclusive right to train the run in ``run_dir``: a :class:`vaelib.io.FileLock` on
    ``<run_dir>.lock`` beside it.

    The lock is not waited for: a second process that asks for it while the first trains gets a
    :class:`TrainingError` naming that process, instead of two trainers writing the same checkpoints.
    The kernel drops the lock of a killed trainer, so none is left stale. It lies beside the folder,
    not inside it, because a finished retrain replaces the folder. On a file system without locks the
    run is trained unlocked, with a warning (:func:`vaelib.io.acquire_unless_unsupported`); a lock file
    that cannot be created (a read-only folder) is a :class:`TrainingError` naming the folder.

    Parameters
    ----------
    run_dir : Path, a run's folder (:func:`checkpoint_dir`); its parent is created if missing.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.lock = FileLock(self.run_dir.with_name(self.run_dir.name + ".lock"))

    def __enter__(self) -> RunLock:
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            got = acquire_unless_unsupported(
                self.lock, blocking=False,
                unlocked=f"training run {self.run_dir.name} without one: nothing stops a second process from "
                         "training it at the same time, so start one trainer per run")
        except OSError as exc:
            raise TrainingError(f"cannot take the lock of run {self.run_dir.name}: {os_error_text(exc)}; "
                                "set train.checkpoint_dir to a folder you can write") from exc
        if not got:
            host, _, pid = self.lock.holder().rpartition(".")
            who = f"process {pid} on {host}" if pid else "another process"
            raise TrainingError(f"run {self.run_dir.name} is being trained by {who} (lock {self.lock.path}); "
                                "wait for it to finish or stop it, then try again")
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def staging_dir(run_dir: Path) -> Path:
    """``<run_dir>.retrain``: where a new training of the run goes until it replaces ``run_dir``."""
    return run_dir.with_name(run_dir.name + ".retrain")


def _replaced_dir(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + ".replaced")


def holds_finished_training(folder: Path) -> bool:
    """Whether ``folder`` holds a training that has finished: a readable ``last.pt`` that says so, and
    its ``best.pt``."""
    try:
        return bool(load_checkpoint(folder / "last.pt").get("finished")) and (folder / "best.pt").is_file()
    except CheckpointError:
        return False


def replace_run(staging: Path, run_dir: Path) -> None:
    """Put the finished training in ``staging`` in the place of ``run_dir`` (which may be missing).

    Two renames: ``run_dir`` to ``<run_dir>.replaced``, ``staging`` to ``run_dir``; then the old
    folder is removed. A process killed between the renames leaves both folders, which
    :func:`recover_replaced_run` puts right. Call it holding :class:`RunLock`.
    """
    old = _replaced_dir(run_dir)
    if old.exists():
        shutil.rmtree(old)
    if run_dir.exists():
        os.rename(run_dir, old)
    os.rename(staging, run_dir)
    shutil.rmtree(old, ignore_errors=True)
    log.info("%s replaced by the training finished in %s", run_dir, staging.name)


def recover_replaced_run(run_dir: Path) -> bool:
    """Put right a retrain of ``run_dir`` that finished but did not replace it (logged); else nothing.

    Returns whether a finished retrain now is the run. The cases:

    - a :func:`replace_run` killed between its renames (``<run_dir>.replaced`` exists): with no
      ``run_dir``, the finished training in the staging folder takes its place, or, when there is
      none, the replaced run is put back; a leftover ``<run_dir>.replaced`` beside a ``run_dir`` is
      removed;
    - a finished training in the staging folder that never got to :func:`replace_run` (the process
      was stopped or killed after the training's last checkpoint): it replaces the run now.

    Call it holding :class:`RunLock`, before anything reads or discards the staging folder.
    """
    old, staging = _replaced_dir(run_dir), staging_dir(run_dir)
    completed = False
    if old.exists():
        if not run_dir.exists():
            if staging.is_dir() and holds_finished_training(staging):
                os.rename(staging, run_dir)
                completed = True
                log.warning("repaired %s: an interrupted replacement by its retrain is completed", run_dir)
            else:
                os.rename(old, run_dir)
                log.warning("repaired %s: an interrupted replacement is undone, the run is back", run_dir)
        shutil.rmtree(old, ignore_errors=True)
    if staging.is_dir() and holds_finished_training(staging):
        log.warning("repaired %s: the retrain in %s had finished but had not replaced the run (stopped or killed "
                    "before it could): it replaces the run now", run_dir, staging.name)
        replace_run(staging, run_dir)
        completed = True
    return completed
