"""Training stage: the VAE on the cached features, resumable, with early stopping and a NaN guard.

:func:`train` decides what to do with the run's folder (keep a finished run, continue an
unfinished one when asked, or train again beside it and replace it once finished), holding the
run's lock; ``_fit`` reads as the phases of training: set up the data, the model, optimiser and
random streams, restore them when resuming, then per epoch order the batches, step through them
(schedules, forward, objective, backward, step, log), evaluate, decide whether to stop, and checkpoint.
Non-finite features, losses and validation figures stop training with an error that says which.

Speed on a small CPU comes from doing nothing per step but the model: the whole split is one
float32 tensor in memory (no DataLoader, no audio decoding), batches are rows picked by a
``torch.Generator``-seeded permutation, weights and activations are channels-last for oneDNN,
and bf16 autocast is used only where the hardware has native bf16 (see :mod:`vaelib.model.device`).
A split too large for memory is streamed from the cache's file instead, a background thread
reading each batch's rows ahead of the step (:mod:`vaelib.model.stream`).

Reproducibility: every random draw comes from a seeded stream (:class:`RandomStreams`;
evaluation noise: a fresh generator per evaluation). The streams, the model, the optimiser, the
early stopping, the place in an interrupted epoch and the history are in every checkpoint, and the
beta and learning-rate schedules are pure functions of the step, so on CPU a resumed run ends with
the same numbers as an uninterrupted one.

Files of a run, in ``checkpoint_dir(cfg, cache_key)``:
``last.pt`` (written at every epoch end, and at the batch boundary where Ctrl-C / SIGTERM
arrived), ``best.pt`` (best valid reconstruction so far), ``history.csv``, ``config.yaml``;
beside it ``<run>.lock`` and, during a retrain, ``<run>.retrain/`` with the same files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from vaelib.config import Config, TrainConfig, config_to_dict, save_config
from vaelib.data.cache import FeatureCache
from vaelib.data.prepare import across_setting, one_source_error, source_terms
from vaelib.exceptions import CheckpointError, ParameterError, TrainingError
from vaelib.io import atomic_write_text
from vaelib.model.adversary import SourceAdversary
from vaelib.model.augment import Augmenter
from vaelib.model.checkpoint import (
    CHECKPOINT_FORMAT,
    RunLock,
    check_same_model,
    checkpoint_dir,
    find_checkpoint,
    holds_finished_training,
    load_checkpoint,
    recover_replaced_run,
    replace_run,
    save_checkpoint,
    staging_dir,
)
from vaelib.model.device import autocast_dtype, resolve_device, set_threads
from vaelib.model.distributed import SINGLE, Ranks, global_objective, setup, wrap_model
from vaelib.model.loss import AUX_TERMS, VAE_TERMS, active_units, beta_at, lr_at, training_objective, vae_loss
from vaelib.model.masking import draw_masks, mask_notes, masking_on
from vaelib.model.mixstyle import draw_style_mix
from vaelib.model.progress import EarlyStopping, EpochProgress, RandomStreams
from vaelib.model.stream import (
    MemoryRows,
    StreamRows,
    available_memory,
    batch_positions,
    block_order,
    choose_data,
)
from vaelib.model.vae import ConvVAE, count_parameters

__all__ = [
    "TrainResult",
    "train",
    "HISTORY_COLUMNS",
    "result_from_dir",
    "train_or_reuse",
    "train_metrics",
    "contrast_classes",
    "instrument_grouped_order",
]

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0  # several processes: a second signal this soon after the first is the same stop (see _StopFlag)
EVAL_BATCH = 256  # notes per forward pass when evaluating (no gradients, so larger is fine)
CHECK_ROWS = 1024  # notes checked for non-finite features at a time (bounds the temporary mask)
VALID_FIGURES = ("valid_", "mu_", "logvar_")  # the columns _evaluate fills (active_units is a count)
# How to continue an interrupted run, and how to start one over, for a run (False) or a retrain (True).
RESUME_HINT = {False: "`vaelib train --resume` (resume=True)",
               True: "`vaelib train --retrain --resume` (retrain=True, resume=True)"}
RESTART_HINT = {False: "`vaelib train --retrain` (retrain=True) trains it again from scratch beside it and "
                       "replaces it only once that training finishes",
                True: "`vaelib train --retrain` without --resume (retrain=True, resume=False) starts the retrain over"}
HISTORY_COLUMNS = (
    "epoch", "step", "beta", "lr", "seconds",
    "train_recon", "train_kl_raw", "train_kl_fb", "train_total",
    "train_contrast", "train_pitch_ce", "train_pitch_order", "train_source_align", "train_source_adversary",
    "valid_recon", "valid_kl_raw", "valid_kl_fb", "valid_total", "valid_mse",
    "mu_mean", "mu_std", "logvar_mean", "logvar_std", "active_units",
)


@dataclass
class TrainResult:
    """Outcome of :func:`train`. ``history`` has one row per epoch with :data:`HISTORY_COLUMNS`."""

    run_dir: Path
    best_path: Path
    last_path: Path
    history: pd.DataFrame
    best_epoch: int
    best_valid_recon: float
    stopped_early: bool
    device: str
    dtype: str
    params_count: int


# ----------------------------------------------------------------------------- data

class _Data(NamedTuple):
    """The splits on the training device, and how the train split is cut into batches."""

    x: MemoryRows | StreamRows  # the train notes' features, [shape=(1, n_mels, frames)] each, batch by batch
    pitch: torch.Tensor  # [shape=(train notes,)] int64 MIDI pitch
    instrument: torch.Tensor  # [shape=(train notes,)] int64, on the CPU, where the epoch order is drawn
    classes: torch.Tensor  # [shape=(train notes,)] int64 class ids of the contrastive term, or more columns:
    # (notes, 2) and the SoundFont, (notes, 3) and the family too (see contrast_classes)
    x_valid: torch.Tensor | None  # [shape=(valid notes, 1, n_mels, frames)]; None on ranks but 0 (rank 0 evaluates)
    pitch_valid: torch.Tensor | None  # [shape=(valid notes,)]
    batch_size: int
    n_batches: int


def _to_tensor(features: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(features)).to(device=device, dtype=torch.float32)
    if device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _check_split_size(cache: FeatureCache, name: str) -> None:
    n = int((cache.meta["split"].to_numpy() == name).sum())
    if n < 2:
        raise TrainingError(f"{cache.path}: the {name!r} split has {n} note(s), at least 2 are needed; "
                            "check data.valid_fraction / data.test_fraction / the filters")


def _split_tensors(cache: FeatureCache, name: str,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_split_size(cache, name)
    feats, meta = cache.split(name)
    _check_finite_features(feats, meta, split=name, where=cache.path)
    pitch = torch.tensor(meta["pitch"].to_numpy(dtype=np.int64), device=device)
    instrument = torch.tensor(meta["instrument"].to_numpy(dtype=np.int64), device=device)
    return _to_tensor(feats, device), pitch, instrument


def _check_finite_features(feats: np.ndarray, meta: pd.DataFrame, *, split: str, where: Path) -> None:
    """Raise :class:`TrainingError` naming the notes of ``split`` whose features hold a NaN or an infinity,
    before any step is taken on them.

    Parameters
    ----------
    feats : [shape=(notes, 1, n_mels, frames)] the split's features; meta : its rows, same order.
    """
    bad: list[int] = []
    for start in range(0, len(feats), CHECK_ROWS):
        rows = feats[start:start + CHECK_ROWS]
        bad.extend(start + np.flatnonzero(~np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)))
    if bad:
        names = meta["note_str"].iloc[bad[:5]].tolist() if "note_str" in meta else bad[:5]
        raise TrainingError(
            f"{where}: the {split!r} split's features hold non-finite values (NaN or infinity) in {len(bad)} of "
            f"{len(meta)} notes ({', '.join(map(str, names))}{', ...' if len(bad) > 5 else ''}); the cache is "
            "damaged: delete that folder to rebuild it (if the rebuilt one has them too, those notes' wavs hold "
            "non-finite samples)")


def _load_data(cache: FeatureCache, tc: TrainConfig, device: torch.device, ranks: Ranks = SINGLE) -> _Data:
    _check_split_size(cache, "train")
    _check_split_size(cache, "valid")
    if _data_mode(cache, tc, device, ranks) == "memory":
        x, pitch, instrument = _split_tensors(cache, "train", device)
        rows = MemoryRows(x)
    else:
        rows, pitch, instrument = _stream_rows(cache, tc, device)
    x_valid = pitch_valid = None
    if ranks.is_main:
        x_valid, pitch_valid, _ = _split_tensors(cache, "valid", device)
    n = rows.n_notes
    bs = min(tc.batch_size, n)
    # Drop a last batch of one note: BatchNorm cannot normalise a single sample.
    n_batches = n // bs + (1 if n % bs > 1 else 0)
    return _Data(rows, pitch, instrument.cpu(), contrast_classes(cache, tc.contrast_labels, device,
                                                                       sources=source_terms(tc)),
                 x_valid, pitch_valid, bs, n_batches)


def _data_mode(cache: FeatureCache, tc: TrainConfig, device: torch.device, ranks: Ranks) -> str:
    """``train.data`` resolved: memory or stream (a cache held in memory, with no file, is read from memory)."""
    streamable = isinstance(cache.features, np.memmap) and cache.features.filename is not None
    if tc.data == "stream" and not streamable:
        raise TrainingError(f"{cache.path}: train.data is 'stream' but this cache's features are an array in "
                            "memory, not a features file to read")
    if tc.data != "auto":
        return tc.data
    if not streamable:
        return "memory"
    n = int((cache.meta["split"].to_numpy() == "train").sum())
    values = n * int(np.prod(cache.features.shape[1:]))
    free_device = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    host = available_memory()
    mode = choose_data("auto", values=values, host_available=host, processes=ranks.local_world,
                       device_available=free_device)
    log.info("train.data auto: %s (loading the train split takes ~%.1f GB, %.1f GB available to each of %d "
             "process(es)%s)", mode, values * 6 / 1e9, host / 1e9 / ranks.local_world, ranks.local_world,
             f", {free_device / 1e9:.1f} GB free on {device}" if free_device is not None else "")
    return mode


def _stream_rows(cache: FeatureCache, tc: TrainConfig,
                 device: torch.device) -> tuple[StreamRows, torch.Tensor, torch.Tensor]:
    """The train split read from the cache's features file (:class:`vaelib.model.stream.StreamRows`), its
    pitches and instruments."""
    _check_split_size(cache, "train")
    rows = np.flatnonzero(cache.meta["split"].to_numpy() == "train")
    meta = cache.meta.iloc[rows]
    names = meta["note_str"].to_numpy() if "note_str" in meta else None
    reader = StreamRows(cache.features.filename, rows, row_shape=tuple(cache.features.shape[1:]), device=device,
                        prefetch=tc.prefetch, block=tc.shuffle_block, keep_blocks=2 * tc.shuffle_window,
                        names=names)
    pitch = torch.tensor(meta["pitch"].to_numpy(dtype=np.int64), device=device)
    instrument = torch.tensor(meta["instrument"].to_numpy(dtype=np.int64), device=device)
    return reader, pitch, instrument


def contrast_classes(cache: FeatureCache, kind: str, device: torch.device, *,
                     sources: Sequence[str] = ()) -> torch.Tensor:
    """Class id of every train note for the contrastive term, in the row order of ``cache.split("train")``:
    its ``instrument``, its ``instrument_family`` or its GM ``program`` (one class for a program in every
    SoundFont of a multi-source render, so the term pulls the banks' renderings of it together).

    The labels :func:`vaelib.model.loss.objective_from_terms` needs beside the class come as more columns:
    [shape=(notes, 2)], the class and the index of the note's SoundFont, for ``program_across`` (whose term
    leaves a program's pairs from one SoundFont out) or with ``sources``, the terms on that need each note's
    SoundFont, as errors name them (:func:`vaelib.data.prepare.source_terms`: the source-alignment term
    ``train.source_align``, the adversary ``train.source_adversary``); [shape=(notes, 3)], the program, the
    SoundFont (0 for all when ``sources`` is empty) and the family, for ``program_family`` (whose term leaves
    out the pairs of two programs of one family).

    Raises
    ------
    ParameterError
        ``program``, ``program_across`` or ``program_family`` on a dataset that records no GM program for
        every train note (NSynth's own notes); ``program_across`` or ``sources`` on a train split of one
        SoundFont.
    """
    column = {"instrument": "instrument", "family": "instrument_family", "program": "program",
              "program_across": "program", "program_family": "program"}[kind]
    rows = cache.meta["split"].to_numpy() == "train"  # the mask cache.split uses
    if column == "program" and (column not in cache.meta.columns or (cache.meta.loc[rows, column] < 0).any()):
        raise ParameterError(f"train.contrast_labels {kind!r}: the dataset of {cache.path} records no GM program for "
                             "every train note (only vaelib's renders of SoundFonts do); use 'instrument' or 'family'")
    classes = cache.meta.loc[rows, column].to_numpy(dtype=np.int64)
    banks = np.zeros_like(classes)
    if kind == "program_across" or sources:
        banks = pd.factorize(cache.meta.loc[rows, "soundfont"])[0] if "soundfont" in cache.meta.columns else []
        if len(set(banks)) < 2:
            raise one_source_error([*across_setting(kind), *sources], f"the train split of {cache.path}")
    if kind == "program_family":
        classes = np.stack([classes, banks, cache.meta.loc[rows, "instrument_family"].to_numpy(dtype=np.int64)],
                           axis=1)
    elif kind == "program_across" or sources:
        classes = np.stack([classes, banks], axis=1)
    return torch.tensor(classes, device=device)


def instrument_grouped_order(instruments: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """An epoch's order of the notes in which every run of ``k`` consecutive notes is one instrument's.

    Notes are shuffled, each instrument's notes cut into groups of ``k`` (its last group may be
    smaller), and the groups shuffled; cutting batches of a multiple of ``k`` from this order gives
    most notes ``k - 1`` notes of its own instrument in the batch (a short last group shifts the
    alignment, so ~5% get fewer), which the instrument-contrastive term needs (uniform batches of 64
    from ~60 instruments give it about one). Every note appears once,
    and the order is a pure function of ``gen``'s state, so a resumed run replays it.

    Parameters
    ----------
    instruments : [shape=(notes,)] integer instrument id of each note
    k : notes per group, >= 1
    """
    n = instruments.shape[0]
    perm = torch.randperm(n, generator=gen)
    shuffled = instruments[perm]
    by_instrument = torch.argsort(shuffled, stable=True)  # grouped, still shuffled within
    notes, inst = perm[by_instrument], shuffled[by_instrument]
    positions = torch.arange(n)
    starts = torch.ones(n, dtype=torch.bool)
    starts[1:] = inst[1:] != inst[:-1]
    run_start = torch.cummax(torch.where(starts, positions, 0), dim=0).values
    new_group = starts | ((positions - run_start) % k == 0)
    group = torch.cumsum(new_group.long(), dim=0) - 1
    rank = torch.empty(int(group[-1]) + 1, dtype=torch.long)
    rank[torch.randperm(len(rank), generator=gen)] = torch.arange(len(rank))
    return notes[torch.argsort(rank[group], stable=True)]


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def _evaluate(model: ConvVAE, x: torch.Tensor, pitch: torch.Tensor, *, beta: float, free_bits: float,
              seed: int, dtype: torch.dtype, pitched: bool) -> dict:
    """Valid-set loss parts (with sampled z from a fixed-seed generator) and latent statistics."""
    model.eval()
    device = x.device
    gen = torch.Generator(device=device).manual_seed(seed)
    n = x.shape[0]
    sums = dict.fromkeys(VAE_TERMS, 0.0)
    mus, logvars = [], []
    for i in range(0, n, EVAL_BATCH):
        xb = x[i:i + EVAL_BATCH]
        with _autocast(device, dtype):
            out = model(xb, pitch[i:i + EVAL_BATCH] if pitched else None, generator=gen)
        parts = vae_loss(xb, out, beta=beta, free_bits=free_bits)
        for k in VAE_TERMS:
            sums[k] += float(getattr(parts, k)) * xb.shape[0]
        mus.append(out.mu.float())
        logvars.append(out.logvar.float())
    model.train()
    mu, logvar = torch.cat(mus), torch.cat(logvars)
    pixels = x[0].numel()
    res = {f"valid_{k}": v / n for k, v in sums.items()}
    res["valid_mse"] = res["valid_recon"] / pixels
    # Free bits acts per dimension, so also report how many dimensions sit at the prior.
    res.update(mu_mean=float(mu.mean()), mu_std=float(mu.std()), logvar_mean=float(logvar.mean()),
               logvar_std=float(logvar.std()), active_units=active_units(mu) if n > 1 else 0)
    return res


# ----------------------------------------------------------------------------- interrupts

class _StopFlag:
    """Turns SIGINT / SIGTERM into a flag checked at batch boundaries, so the state saved is consistent.

    A second signal stops at once, unless it comes within ``grace_s`` of the first: under torchrun a
    Ctrl-C reaches each process twice (from the terminal, and relayed by torchrun), which is one stop.
    """

    def __init__(self, grace_s: float = 0.0) -> None:
        self.signum: int | None = None
        self.grace_s = grace_s
        self._first = 0.0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second Ctrl-C: stop now
            if time.monotonic() - self._first < self.grace_s:
                return
            raise KeyboardInterrupt
        self.signum, self._first = signum, time.monotonic()

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ----------------------------------------------------------------------------- training

def train(cfg: Config, cache: FeatureCache, *, resume: bool = False, retrain: bool = False,
          show_progress: bool = True, on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train the VAE of ``cfg`` on the train split of ``cache``, early-stopping on the valid split.

    What happens depends on what the run's folder (:func:`checkpoint_dir`) holds:

    - no run (no ``last.pt``): the run is trained from scratch in it;
    - a finished run: it is returned as it is (nothing is trained or written), unless ``retrain``;
    - an unfinished run (interrupted, killed, stopped by an error): ``resume`` continues it from
      ``last.pt``; otherwise it is left alone and a :class:`TrainingError` says so.

    ``retrain`` trains from scratch in the staging folder ``<run>.retrain`` beside it (continuing an
    interrupted retrain there when ``resume`` too), which takes the run folder's place only once
    that training has finished: a retrain that is interrupted or fails leaves the run as it was. A
    retrain stopped in the epoch that finishes it has finished, so it replaces the run before the stop
    goes on; one that finished but was killed before replacing the run replaces it at the next call
    of any kind (and ``retrain`` with ``resume`` then returns it).
    One process trains a run at a time (:class:`vaelib.model.checkpoint.RunLock`); under torchrun, one
    job of several processes does (:mod:`vaelib.model.distributed`): each trains its part of every
    global batch of ``train.batch_size``, with the numbers of one process, and rank 0 alone holds the
    lock, decides what to do with the folder, evaluates and writes. The train split is read from
    memory or streamed from the cache's file (``train.data``, :mod:`vaelib.model.stream`), with the
    same numbers.

    Parameters
    ----------
    cfg : Config
        ``model``, ``train`` and ``run.seed`` define the run; its folder is :func:`checkpoint_dir`.
    cache : FeatureCache
        Features with ``train`` and ``valid`` splits (from :func:`vaelib.data.prepare.prepare_features`).
    resume : bool
        Continue the unfinished run (with ``retrain``: the unfinished retrain) from its ``last.pt``.
    retrain : bool
        Train the run again even when it has finished, replacing it only once the new training finishes.
    show_progress : bool
        tqdm bar per epoch with the running loss parts.
    on_epoch : callable, optional
        Called with each row of the history (a dict of :data:`HISTORY_COLUMNS`, a copy) as it becomes
        known: the rows of a resumed run first, then each epoch once its checkpoint is written (e.g.
        ``vaelib.report.training_live.LiveHistory`` shows them as a table that updates in place). Not
        called for a finished run that is kept. It gets copies, so it cannot change the numbers; an
        exception it raises propagates once that epoch's checkpoint is written (the run can be resumed).

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingError
        On a non-finite loss or validation figure (naming the step or epoch, and whether the inputs
        or the training are at fault; ``last.pt`` keeps the last good epoch), on non-finite features
        (naming the notes), on an empty split, on an unfinished run asked for without ``resume`` or
        ``retrain``, when another process is training the run, and when the run's lock file cannot be
        created (naming the folder that is not writable).
    KeyboardInterrupt
        After Ctrl-C or SIGTERM, once ``last.pt`` holds the state at that batch boundary (and, when
        the stop came in the epoch that finished a retrain, once that retrain has replaced the run).
    CheckpointError
        When the ``last.pt`` to resume or reuse cannot be read (the message says how to start over),
        or its config differs from ``cfg``.
    """
    ranks = setup(resolve_device(cfg.train.device))  # one process, or this one of torchrun's
    if ranks.world > 1:  # before the run's folder is touched
        _check_one_process(cfg.train, ranks.world)
    run_dir = checkpoint_dir(cfg, cache.manifest["key"])
    # rank 0 alone holds the lock and decides what to do with the folder; the others are told
    with RunLock(run_dir) if ranks.is_main else contextlib.nullcontext():
        plan = ranks.from_main(lambda: _plan(run_dir, cfg, resume=resume, retrain=retrain))
        if isinstance(plan, TrainResult):
            return plan
        if not retrain:
            res = _fit(cfg, cache, run_dir, resume=resume, retrain=False, show_progress=show_progress,
                       on_epoch=on_epoch, ranks=ranks)
            ranks.barrier()
            return res
        # a new training beside the run, which replaces the run once it has finished
        staging = plan
        try:
            res = _fit(cfg, cache, staging, resume=resume, retrain=True, show_progress=show_progress,
                       on_epoch=on_epoch, ranks=ranks)
        except BaseException:
            # stopped (Ctrl-C, SIGTERM) or failed once its last epoch was saved: it has finished all the
            # same, so it replaces the run before the stop or the error goes on
            if ranks.is_main and holds_finished_training(staging):
                replace_run(staging, run_dir)
            raise
        if ranks.is_main:
            replace_run(staging, run_dir)
        ranks.barrier()
        return dataclasses.replace(res, run_dir=run_dir, best_path=run_dir / "best.pt",
                                   last_path=run_dir / "last.pt")


def _check_one_process(tc: TrainConfig, world: int) -> None:
    """Refuse the settings that one process alone can train: a MixStyle partner may be in another process's
    part of the batch, and the adversary's classifier is not shared across processes."""
    why = {"mixstyle": "a note's MixStyle partner may be in another process's part of the batch",
           "source_adversary": "the SoundFont classifier is not shared across processes"}
    on = [k for k in why if getattr(tc, k) > 0]
    if on:
        raise ParameterError("; ".join(f"train.{k}={getattr(tc, k)}: {why[k]}" for k in on)
                             + f": one process only, this run has {world} (set "
                             + " and ".join(f"train.{k}=0" for k in on) + " or run one process)")


def _plan(run_dir: Path, cfg: Config, *, resume: bool, retrain: bool) -> TrainResult | Path:
    """What :func:`train` does with ``run_dir`` (called holding its lock): the result of a run to return as
    it is, or the folder to train in (the run's, or its retrain's)."""
    completed = recover_replaced_run(run_dir)  # a finished retrain left beside the run replaces it first
    if retrain:
        if completed and resume:
            log.info("%s: the retrain to continue had finished; it is the run now, returned as it is", run_dir)
            return _result(run_dir, load_checkpoint(run_dir / "last.pt"))
        return _staging_dir(run_dir, resume=resume)
    # a finished run is kept; an unfinished one is continued only when asked to
    kept = _kept_run(run_dir, cfg, resume=resume)
    return kept if kept is not None else run_dir


def _fit(cfg: Config, cache: FeatureCache, run_dir: Path, *, resume: bool, retrain: bool,
         show_progress: bool, on_epoch: Callable[[dict], None] | None = None, ranks: Ranks = SINGLE) -> TrainResult:
    """Train in ``run_dir`` (from its ``last.pt`` when ``resume``); ``retrain`` only words the hints;
    ``on_epoch`` gets a copy of every history row (see :func:`train`). With several ``ranks`` (torchrun)
    each trains its part of every batch; rank 0 alone evaluates, writes and reports
    (:mod:`vaelib.model.distributed`)."""
    tc = cfg.train
    device, dtype = _device(tc, ranks)
    if ranks.is_main:
        _open_run_dir(cfg, run_dir)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    show_progress = show_progress and ranks.is_main

    # data
    data = ranks.together(lambda: _load_data(cache, tc, device, ranks))
    pitched = cfg.model.pitch_conditioning
    augment = Augmenter.from_config(cfg, device)
    masking = masking_on(tc)

    # model, optimiser, random streams and the state that must survive a resume
    streams = RandomStreams(cfg.run.seed, device)  # seeds the initialisation, so before the model
    model = _build_model(cfg, device)
    meta = _meta(cfg, cache, model, device, dtype)  # before wrap_model, which may freeze an unused head
    net = wrap_model(model, ranks, tc)  # the model itself in one process, DDP over it in several
    adversary = (SourceAdversary(cfg.model.latent_dim, int(data.classes[:, 1].max()) + 1).to(device)
                 if tc.source_adversary > 0 else None)
    optimizer = torch.optim.Adam([*model.parameters(), *(adversary.parameters() if adversary else ())], lr=tc.lr)
    early = EarlyStopping(tc.patience)
    progress = EpochProgress(data.n_batches, epochs=tc.epochs, terms=(*VAE_TERMS, *AUX_TERMS), show=show_progress)
    stateful = {"model": model, "optimizer": optimizer, "rng": streams, "best": early, "partial": progress,
                **({"adversary": adversary} if adversary else {})}

    # restore the state when resuming (every rank reads the same checkpoint)
    epoch, step, finished, history = (
        ranks.together(lambda: _restore(last_path, cfg, device, stateful, restart=RESTART_HINT[retrain]))
        if resume else (0, 0, False, []))
    if on_epoch is not None and ranks.is_main:
        for restored in history:  # the epochs of a resumed run first, so a live table starts complete
            on_epoch(dict(restored))

    def state() -> dict:
        return {**meta, **{key: obj.state_dict() for key, obj in stateful.items()},
                "epoch": epoch, "step": step, "finished": finished,
                "history": pd.DataFrame(history, columns=list(HISTORY_COLUMNS)).to_dict("list")}

    log.info("training %s on %s (%s): %d train / %d valid notes, %d parameters, %d steps an epoch%s", run_dir.name,
             device, meta["dtype"], data.x.n_notes, int((cache.meta["split"] == "valid").sum()),
             meta["params_count"], data.n_batches,
             "" if ranks.world == 1 else f", {ranks.world} processes ({ranks.backend}), {type(data.x).__name__}")
    part = None if ranks.world == 1 else ranks.part  # a batch of n notes -> this process's (start, stop)
    model.train()
    with _StopFlag(grace_s=0.0 if ranks.world == 1 else STOP_GRACE_S) as stop:
        while not finished and epoch < tc.epochs:
            # order the batches (an interrupted epoch is redrawn as it was); the source reads them from there
            perm = progress.start(epoch, streams, draw=lambda gen: _epoch_order(data, tc, gen))
            with data.x.epoch(perm, batch_size=data.batch_size, first=progress.first, n_batches=data.n_batches,
                              part=part) as batches:
                for b in progress:
                    # this process's notes of the batch (all of them in one process)
                    n_batch = min(data.batch_size, len(perm) - b * data.batch_size)
                    idx = batch_positions(perm, b, batch_size=data.batch_size, part=part).to(device)
                    xb, pb = batches.get(b), data.pitch[idx]
                    if augment is not None:  # drawn for the whole batch, so each process takes its notes' rows
                        draws = augment.draw(n_batch, streams.augment)
                        xb = augment(xb, draws if part is None else draws[slice(*part(n_batch))])
                    x_in = xb  # what the encoder hears; the objective's target stays xb
                    if masking:  # after the chain's draws, so a run without masks draws what it drew before
                        u = draw_masks(n_batch, streams.augment)
                        x_in = mask_notes(xb, u if part is None else u[slice(*part(n_batch))],
                                          bands=tc.augment_mask_bands, frames=tc.augment_mask_frames)
                    mix = None if tc.mixstyle == 0 else draw_style_mix(n_batch, tc, streams.style, device)
                    # schedules: pure functions of the step, so a resumed run continues them
                    beta = beta_at(step, cfg=tc)
                    lr = lr_at(step, cfg=tc, total_steps=tc.epochs * data.n_batches)
                    # forward and objective (of the whole batch, in several processes)
                    with _autocast(device, dtype):
                        out = net(x_in, pb if pitched else None, generator=streams.noise,
                                  noise_rows=None if part is None else (part(n_batch)[0], n_batch), mix=mix)
                    if ranks.world == 1:
                        loss, parts = training_objective(xb, out, model, pitch=pb, classes=data.classes[idx],
                                                         beta=beta, cfg=tc, adversary=adversary)
                    else:
                        loss, parts = global_objective(xb, out, model, pitch=pb, classes=data.classes[idx],
                                                       beta=beta, cfg=tc, ranks=ranks, batch=n_batch)
                    # the stop asked on any process, agreed by all before the step that follows it
                    stop_asked = ranks.agree(stop.signum is not None)[0] if ranks.world > 1 else False
                    _check_finite(loss, parts, xb, beta=beta, step=step, epoch=epoch, batch=b,
                                  n_batches=data.n_batches, last_path=last_path, bf16=dtype == torch.bfloat16)
                    # backward and step
                    _optimizer_step(optimizer, net, loss, lr=lr, grad_clip=tc.grad_clip)
                    step += 1
                    # log
                    progress.add(parts, notes=n_batch, batch=b, beta=beta)
                    # Ctrl-C / SIGTERM: save this batch boundary and stop
                    if ranks.world == 1:
                        stop_asked = stop.signum is not None
                    if stop_asked and b < data.n_batches - 1:
                        progress.pause(b + 1, streams)
                        if ranks.is_main:
                            save_checkpoint(state(), last_path)
                            log.warning("interrupted at step %d: state saved to %s; continue with %s", step,
                                        last_path, RESUME_HINT[retrain])
                        ranks.barrier()  # no rank ends before rank 0 has saved (torchrun would stop it)
                        raise KeyboardInterrupt
            # evaluate (rank 0, which gives every rank its figures)
            epoch += 1
            row = {"epoch": epoch, "step": step, "beta": beta_at(max(step - 1, 0), cfg=tc),
                   "lr": optimizer.param_groups[0]["lr"], **progress.finish()}
            row = ranks.from_main(lambda row=row: _validated(row, model, data, cfg, dtype=dtype, pitched=pitched,
                                                             last_path=last_path))
            history.append({c: row[c] for c in HISTORY_COLUMNS})
            # decide to stop
            improved = early.update(row["valid_recon"], epoch=epoch)
            finished = epoch >= tc.epochs or early.should_stop
            # checkpoint
            if ranks.is_main:
                ckpt = state()
                if improved:
                    save_checkpoint(ckpt, best_path)
                save_checkpoint(ckpt, last_path)
                atomic_write_text(run_dir / "history.csv",
                                  pd.DataFrame(history, columns=list(HISTORY_COLUMNS)).to_csv(index=False))
                log.info("epoch %d: train recon %.2f, valid recon %.2f, kl %.2f, beta %.3f, AU %d, %.1f s%s",
                         epoch, row["train_recon"], row["valid_recon"], row["valid_kl_raw"], row["beta"],
                         row["active_units"], row["seconds"], " (best)" if improved else "")
            # report the epoch to the caller (a live table), once it is safe on disk
            if on_epoch is not None and ranks.is_main:
                on_epoch(dict(history[-1]))
            # a stop during the epoch's end, agreed once rank 0 has saved
            if ranks.agree(stop.signum is not None)[0]:
                if finished:  # the stop came in the epoch that finished the run: nothing is left to continue
                    log.warning("interrupted in epoch %d, which finished the training: it is complete%s", epoch,
                                " and replaces the run" if retrain else "")
                else:
                    log.warning("interrupted after epoch %d: continue with %s", epoch, RESUME_HINT[retrain])
                raise KeyboardInterrupt

    hist = pd.DataFrame(history, columns=list(HISTORY_COLUMNS))
    return TrainResult(run_dir=run_dir, best_path=best_path, last_path=last_path, history=hist,
                       best_epoch=early.best_epoch, best_valid_recon=float(early.best_value),
                       stopped_early=bool(len(hist) < tc.epochs), device=meta["device"], dtype=meta["dtype"],
                       params_count=meta["params_count"])


def _validated(row: dict, model: ConvVAE, data: _Data, cfg: Config, *, dtype: torch.dtype, pitched: bool,
               last_path: Path) -> dict:
    """The epoch's ``row`` with its validation figures, checked finite (:func:`_check_valid_finite`)."""
    row = {**row, **_evaluate(model, data.x_valid, data.pitch_valid, beta=row["beta"], free_bits=cfg.train.free_bits,
                              seed=cfg.run.seed + 2, dtype=dtype, pitched=pitched)}
    _check_valid_finite(row, data.x_valid, epoch=row["epoch"], last_path=last_path)
    return row


# ----------------------------------------------------------------------------- the phases

def _device(tc: TrainConfig, ranks: Ranks = SINGLE) -> tuple[torch.device, torch.dtype]:
    """Where training runs and its autocast dtype (float32: none): with several processes on a node, each
    its own GPU, or its share of the cores when ``train.num_threads`` is 0."""
    device = resolve_device(tc.device)
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", ranks.local_rank)
    if device.type == "cpu":
        set_threads(tc.num_threads or max(1, (os.cpu_count() or 1) // ranks.local_world))
    return device, autocast_dtype(device, enabled=tc.bf16)


def _kept_run(run_dir: Path, cfg: Config, *, resume: bool) -> TrainResult | None:
    """The run in ``run_dir`` when it has finished; None when there is none, or it is to be resumed.

    Raises
    ------
    TrainingError
        When the run is unfinished and ``resume`` is false: it is neither continued nor replaced unasked.
    CheckpointError
        When its ``last.pt`` cannot be read (saying how to train it again) or does not match ``cfg``, or is
        missing beside a ``history.csv``.
    """
    last_path = run_dir / "last.pt"
    if not last_path.is_file():
        # history.csv is written after last.pt, so with it and without last.pt the run's state was lost, finished
        # or not: training in its folder from scratch would overwrite its best model epoch by epoch. A best.pt
        # alone is an epoch killed between its two saves: started over, as a requeued job expects
        if (run_dir / "history.csv").is_file():
            raise CheckpointError(f"{run_dir} holds history.csv but no last.pt: it cannot be told whether the run "
                                  f"finished, nor can it be resumed, and it is not trained over; {RESTART_HINT[False]}")
        return None
    try:
        last = load_checkpoint(last_path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; the run can be neither reused nor resumed: {RESTART_HINT[False]}") from exc
    check_same_model(last, cfg, last_path)
    if last.get("finished"):
        if not (run_dir / "best.pt").is_file():
            raise CheckpointError(f"{run_dir}: the run has finished but its best.pt is missing; {RESTART_HINT[False]}")
        try:  # a damaged best.pt would otherwise surface only in the notebook that loads the model
            load_checkpoint(run_dir / "best.pt")
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; the run has finished but its best model cannot be read: "
                                  f"{RESTART_HINT[False]}") from exc
        log.info("%s is a finished run: returned as it is, nothing trained (retrain=True, `vaelib train --retrain`, "
                 "trains it again)", run_dir)
        return _result(run_dir, last)
    if not resume:
        raise TrainingError(
            f"{run_dir} holds an unfinished training ({last['epoch']} of {last['config']['train']['epochs']} "
            f"epochs, in {last_path.name}): {RESUME_HINT[False]} continues it; {RESTART_HINT[False]}")
    return None


def _staging_dir(run_dir: Path, *, resume: bool) -> Path:
    """The retrain's folder beside ``run_dir``; an earlier unfinished retrain there is discarded unless
    ``resume``."""
    staging = staging_dir(run_dir)
    if staging.exists() and not resume:
        log.info("discarding the unfinished retrain in %s: retraining from scratch", staging)
        shutil.rmtree(staging)
    return staging


def _open_run_dir(cfg: Config, run_dir: Path) -> None:
    """Create the folder the run trains in and save the config it trains in it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")


def _build_model(cfg: Config, device: torch.device) -> ConvVAE:
    model = ConvVAE(cfg.model, n_mels=cfg.features.n_mels, frames=cfg.features.frames).to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model


def _meta(cfg: Config, cache: FeatureCache, model: ConvVAE, device: torch.device, dtype: torch.dtype) -> dict:
    """What every checkpoint of the run holds besides its state: format, config, sizes, where it ran."""
    return {"format": CHECKPOINT_FORMAT, "config": config_to_dict(cfg), "cache_key": cache.manifest["key"],
            "n_mels": cfg.features.n_mels, "frames": cfg.features.frames, "params_count": count_parameters(model),
            "device": str(device), "dtype": str(dtype).replace("torch.", "")}


def _restore(path: Path, cfg: Config, device: torch.device, stateful: dict[str, Any], *,
             restart: str) -> tuple[int, int, bool, list[dict]]:
    """Load checkpoint ``path`` into each object of ``stateful`` (keyed as in the checkpoint).

    Returns the epochs finished, the step, whether the run had finished and the history rows; a
    fresh start (0, 0, False, []) when there is no checkpoint.

    Raises
    ------
    CheckpointError
        When the checkpoint is unreadable (the message ends with ``restart``, how to start over) or
        its model or log-mel differ from ``cfg``'s.
    """
    if not path.is_file():
        log.info("no checkpoint in %s: starting from scratch", path.parent)
        return 0, 0, False, []
    try:
        # on the CPU, then copied where each object lives: a checkpoint written on one device (cuda:1) resumes
        # on another, and generator states must be CPU tensors whatever the generator's device
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; there is nothing to resume from: {restart}") from exc
    check_same_model(ckpt, cfg, path)  # the folder's hash covers the rest of the config
    for key, obj in stateful.items():
        obj.load_state_dict(ckpt[key])
    epoch, step, partial = ckpt["epoch"], ckpt["step"], ckpt["partial"]
    log.info("resuming %s at epoch %d, step %d%s", path.parent, epoch, step,
             f" (batch {partial['batch']} of epoch {epoch + 1})" if partial else "")
    # a term added since the checkpoint was written was off in its run: 0, as its later epochs log it
    added = {f"train_{term}": 0.0 for term in AUX_TERMS}
    return epoch, step, bool(ckpt.get("finished")), [{**added, **row} for row in
                                                      pd.DataFrame(ckpt["history"]).to_dict("records")]


def _epoch_order(data: _Data, tc: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """The epoch's order of the train notes, whichever source serves their rows: grouped by instrument when
    ``train.notes_per_instrument``, by contrastive class when ``train.notes_per_class``, in blocks of the file's
    rows when ``train.shuffle_block`` (:func:`vaelib.model.stream.block_order`), else uniform."""
    if tc.notes_per_instrument:
        return instrument_grouped_order(data.instrument, tc.notes_per_instrument, gen)
    if tc.notes_per_class:
        classes = data.classes.cpu()
        return instrument_grouped_order(classes if classes.ndim == 1 else classes[:, 0], tc.notes_per_class, gen)
    if tc.shuffle_block:
        return block_order(data.x.n_notes, block=tc.shuffle_block, window=tc.shuffle_window, gen=gen)
    return torch.randperm(data.x.n_notes, generator=gen)


def _check_finite(loss: torch.Tensor, parts: dict[str, float], x: torch.Tensor, *, beta: float, step: int,
                  epoch: int, batch: int, n_batches: int, last_path: Path, bf16: bool = False) -> None:
    """Raise :class:`TrainingError` naming the step and the terms when ``loss`` is not finite, and
    whether the batch's inputs ``x`` are non-finite (damaged features) or the training diverged.

    ``epoch`` counts the epochs finished (so ``last.pt``, when there is one, holds epoch ``epoch``)
    and ``batch`` is 0-based.
    """
    if math.isfinite(loss.detach().item()):
        return
    kept = f"{last_path} (epoch {epoch})" if last_path.is_file() else "none (no epoch had finished)"
    bad_notes = int((~torch.isfinite(x.flatten(1))).any(dim=1).sum())
    if bad_notes:
        cause = (f"{bad_notes} of the batch's {x.shape[0]} input notes hold non-finite features, so the features "
                 "are damaged, not the training: rebuild the feature cache (delete its folder)")
    else:
        cause = "the inputs are finite, so the training diverged: try a lower train.lr or a smaller model.logvar_bound"
        if bf16:  # bf16's 8-bit mantissa can overflow where float32 does not, first in very small feature maps
            cause += ", or train.bf16=false (float32)"
    raise TrainingError(
        f"non-finite loss at step {step} (epoch {epoch + 1}, batch {batch + 1}/{n_batches}): "
        f"recon={parts['recon']}, kl_raw={parts['kl_raw']}, beta={beta}"
        + "".join(f", {k}={parts[k]}" for k in AUX_TERMS if k in parts) + f"; {cause}. Training stopped; "
        f"last good checkpoint: {kept}.")


def _check_valid_finite(row: dict[str, float], x_valid: torch.Tensor, *, epoch: int, last_path: Path) -> None:
    """Raise :class:`TrainingError` when a validation figure of epoch ``epoch`` (1-based) is not finite:
    early stopping and ``best.pt`` would otherwise rest on it."""
    bad = {k: v for k, v in row.items() if k.startswith(VALID_FIGURES) and not math.isfinite(v)}
    if not bad:
        return
    kept = f"{last_path} (epoch {epoch - 1})" if last_path.is_file() else "none (no epoch had finished)"
    if bool(torch.isfinite(x_valid).all()):
        cause = ("the valid notes are finite, so the model gives non-finite outputs on them: try a lower train.lr "
                 "or a smaller model.logvar_bound")
    else:
        cause = "the valid split's features hold non-finite values: rebuild the feature cache (delete its folder)"
    raise TrainingError(f"non-finite validation figures after epoch {epoch}: "
                        + ", ".join(f"{k}={v}" for k, v in bad.items())
                        + f"; {cause}. Training stopped; last good checkpoint: {kept}.")


def _optimizer_step(optimizer: torch.optim.Optimizer, model: ConvVAE, loss: torch.Tensor, *, lr: float,
                    grad_clip: float) -> None:
    """One Adam step on ``loss`` at learning rate ``lr``, the gradient norm clipped to ``grad_clip`` (0: off)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


# ----------------------------------------------------------------------------- reporting

def result_from_dir(run_dir: Path) -> TrainResult:
    """The :class:`TrainResult` of a finished run, read back from its folder."""
    return _result(run_dir, load_checkpoint(run_dir / "last.pt"))


def _result(run_dir: Path, last: dict) -> TrainResult:
    """The :class:`TrainResult` of the run in ``run_dir`` whose ``last.pt`` holds ``last``."""
    hist = pd.DataFrame(last["history"], columns=list(HISTORY_COLUMNS))
    cfg_epochs = last["config"]["train"]["epochs"]
    return TrainResult(run_dir=run_dir, best_path=run_dir / "best.pt", last_path=run_dir / "last.pt",
                       history=hist, best_epoch=int(last["best"]["epoch"]),
                       best_valid_recon=float(last["best"]["valid_recon"]), stopped_early=len(hist) < cfg_epochs,
                       device=last["device"], dtype=last["dtype"], params_count=int(last["params_count"]))


def train_or_reuse(cfg: Config, cache: FeatureCache, *, retrain: bool = False, show_progress: bool = True,
                   on_epoch: Callable[[dict], None] | None = None) -> tuple[TrainResult, bool]:
    """Reuse the finished run of this config (unless ``retrain``), else train (resuming a partial run).

    With ``retrain`` the run is trained again from scratch beside the old one, which it replaces only
    once finished (see :func:`train`). ``on_epoch`` is handed to :func:`train` (not called when the run
    is reused).

    Returns the result and whether training ran.
    """
    found = None if retrain else find_checkpoint(cfg, cache)
    if found is not None:
        log.info("reusing %s", found)
        return result_from_dir(found.parent), False
    return train(cfg, cache, resume=not retrain, retrain=retrain, show_progress=show_progress,
                 on_epoch=on_epoch), True


def train_metrics(res: TrainResult, cfg: Config, *, trained: bool) -> dict:
    """The final numbers of a run, as written to ``train_metrics.json`` by 02_train."""
    h = res.history
    last = h.iloc[-1]
    return {
        "latent_dim": cfg.model.latent_dim,
        "channels": list(cfg.model.channels),
        "depth": cfg.model.depth,
        "free_bits": cfg.train.free_bits,
        "beta": cfg.train.beta,
        "contrast": cfg.train.contrast,
        "contrast_labels": cfg.train.contrast_labels,
        "source_align": cfg.train.source_align,
        "source_adversary": cfg.train.source_adversary,
        "mixstyle": cfg.train.mixstyle,
        "pitch_head_weight": cfg.train.pitch_weight if cfg.model.pitch_head else 0.0,
        "pitch_order": cfg.train.pitch_order,
        "epochs_run": len(h),
        "stopped_early": res.stopped_early,
        "best_epoch": res.best_epoch,
        "best_valid_recon": res.best_valid_recon,
        "best_valid_mse": float(h.loc[h["epoch"] == res.best_epoch, "valid_mse"].iloc[0]),
        "final_train_recon": float(last["train_recon"]),
        "final_valid_recon": float(last["valid_recon"]),
        "final_train_kl_raw": float(last["train_kl_raw"]),
        "final_valid_kl_raw": float(last["valid_kl_raw"]),
        "final_valid_kl_fb": float(last["valid_kl_fb"]),
        "final_beta": float(last["beta"]),
        "active_units": int(last["active_units"]),
        "epoch_seconds_median": float(h["seconds"].median()),
        "params_count": res.params_count,
        "device": res.device,
        "dtype": res.dtype,
        "checkpoint": str(res.best_path),
        "trained_now": trained,
    }
