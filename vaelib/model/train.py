"""Training stage: the VAE on the cached features, resumable, with early stopping and a NaN guard.

:func:`train` reads as its phases: set up the data, the model, optimiser and random streams,
restore them when resuming, then per epoch order the batches, step through them (schedules,
forward, objective, backward, step, log), evaluate, decide whether to stop, and checkpoint.

Speed on a small CPU comes from doing nothing per step but the model: the whole split is one
float32 tensor in memory (no DataLoader, no audio decoding), batches are rows picked by a
``torch.Generator``-seeded permutation, weights and activations are channels-last for oneDNN,
and bf16 autocast is used only where the hardware has native bf16 (see :mod:`vaelib.model.device`).

Reproducibility: every random draw comes from a seeded stream (:class:`RandomStreams`;
evaluation noise: a fresh generator per evaluation). The streams, the model, the optimiser, the
early stopping, the place in an interrupted epoch and the history are in every checkpoint, and the
beta and learning-rate schedules are pure functions of the step, so on CPU a resumed run ends with
the same numbers as an uninterrupted one.

Files of a run, in ``checkpoint_dir(cfg, cache_key)``:
``last.pt`` (written at every epoch end, and at the batch boundary where Ctrl-C / SIGTERM
arrived), ``best.pt`` (best valid reconstruction so far), ``history.csv``, ``config.yaml``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from vaelib.config import Config, TrainConfig, config_to_dict, save_config
from vaelib.data.cache import FeatureCache
from vaelib.exceptions import TrainingError
from vaelib.io import atomic_write_text
from vaelib.model.checkpoint import (
    CHECKPOINT_FORMAT,
    check_same_model,
    checkpoint_dir,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from vaelib.model.device import autocast_dtype, resolve_device, set_threads
from vaelib.model.loss import AUX_TERMS, VAE_TERMS, active_units, beta_at, lr_at, training_objective, vae_loss
from vaelib.model.progress import EarlyStopping, EpochProgress, RandomStreams
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

EVAL_BATCH = 256  # notes per forward pass when evaluating (no gradients, so larger is fine)
HISTORY_COLUMNS = (
    "epoch", "step", "beta", "lr", "seconds",
    "train_recon", "train_kl_raw", "train_kl_fb", "train_total",
    "train_contrast", "train_pitch_ce", "train_pitch_order",
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
    """The splits as tensors on the training device, and how the train split is cut into batches."""

    x: torch.Tensor  # [shape=(train notes, 1, n_mels, frames)], channels-last on the CPU
    pitch: torch.Tensor  # [shape=(train notes,)] int64 MIDI pitch
    instrument: torch.Tensor  # [shape=(train notes,)] int64, on the CPU, where the epoch order is drawn
    classes: torch.Tensor  # [shape=(train notes,)] int64 class ids of the contrastive term
    x_valid: torch.Tensor  # [shape=(valid notes, 1, n_mels, frames)]
    pitch_valid: torch.Tensor  # [shape=(valid notes,)]
    batch_size: int
    n_batches: int


def _to_tensor(features: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(features)).to(device=device, dtype=torch.float32)
    if device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _split_tensors(cache: FeatureCache, name: str,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    feats, meta = cache.split(name)
    if len(meta) < 2:
        raise TrainingError(f"{cache.path}: the {name!r} split has {len(meta)} note(s), at least 2 are needed; "
                            "check data.valid_fraction / data.test_fraction / the filters")
    pitch = torch.tensor(meta["pitch"].to_numpy(dtype=np.int64), device=device)
    instrument = torch.tensor(meta["instrument"].to_numpy(dtype=np.int64), device=device)
    return _to_tensor(feats, device), pitch, instrument


def _load_data(cache: FeatureCache, tc: TrainConfig, device: torch.device) -> _Data:
    x, pitch, instrument = _split_tensors(cache, "train", device)
    x_valid, pitch_valid, _ = _split_tensors(cache, "valid", device)
    n = x.shape[0]
    bs = min(tc.batch_size, n)
    # Drop a last batch of one note: BatchNorm cannot normalise a single sample.
    n_batches = n // bs + (1 if n % bs > 1 else 0)
    return _Data(x, pitch, instrument.cpu(), contrast_classes(cache, tc.contrast_labels, device),
                 x_valid, pitch_valid, bs, n_batches)


def contrast_classes(cache: FeatureCache, kind: str, device: torch.device) -> torch.Tensor:
    """Class id of every train note for the contrastive term, in the row order of ``cache.split("train")``:
    its ``instrument`` or its ``instrument_family``."""
    column = {"instrument": "instrument", "family": "instrument_family"}[kind]
    rows = cache.meta["split"].to_numpy() == "train"  # the mask cache.split uses
    return torch.tensor(cache.meta.loc[rows, column].to_numpy(dtype=np.int64), device=device)


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
    """Turns SIGINT / SIGTERM into a flag checked at batch boundaries, so the state saved is consistent."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ----------------------------------------------------------------------------- training

def train(cfg: Config, cache: FeatureCache, *, resume: bool = False, show_progress: bool = True) -> TrainResult:
    """Train the VAE of ``cfg`` on the train split of ``cache``, early-stopping on the valid split.

    Parameters
    ----------
    cfg : Config
        ``model``, ``train`` and ``run.seed`` define the run; its folder is :func:`checkpoint_dir`.
    cache : FeatureCache
        Features with ``train`` and ``valid`` splits (from :func:`vaelib.data.prepare.prepare_features`).
    resume : bool
        Continue from ``last.pt`` of this config's folder when there is one (a finished run is
        returned as it is); otherwise start from scratch, replacing any earlier run of this config.
    show_progress : bool
        tqdm bar per epoch with the running loss parts.

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingError
        On a non-finite loss (naming the step; ``last.pt`` keeps the last good epoch) or an empty split.
    KeyboardInterrupt
        After Ctrl-C or SIGTERM, once ``last.pt`` holds the state at that batch boundary.
    CheckpointError
        When resuming from a checkpoint whose config differs from ``cfg``.
    """
    tc = cfg.train
    device, dtype = _device(tc)
    run_dir = _run_dir(cfg, cache)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"

    # data
    data = _load_data(cache, tc, device)
    pitched = cfg.model.pitch_conditioning

    # model, optimiser, random streams and the state that must survive a resume
    streams = RandomStreams(cfg.run.seed, device)  # seeds the initialisation, so before the model
    model = _build_model(cfg, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    early = EarlyStopping(tc.patience)
    progress = EpochProgress(data.n_batches, epochs=tc.epochs, terms=(*VAE_TERMS, *AUX_TERMS), show=show_progress)
    stateful = {"model": model, "optimizer": optimizer, "rng": streams, "best": early, "partial": progress}

    # restore the state when resuming
    epoch, step, finished, history = _restore(last_path, cfg, device, stateful) if resume else (0, 0, False, [])
    meta = _meta(cfg, cache, model, device, dtype)

    def state() -> dict:
        return {**meta, **{key: obj.state_dict() for key, obj in stateful.items()},
                "epoch": epoch, "step": step, "finished": finished,
                "history": pd.DataFrame(history, columns=list(HISTORY_COLUMNS)).to_dict("list")}

    log.info("training %s on %s (%s): %d train / %d valid notes, %d parameters, %d steps an epoch", run_dir.name,
             device, meta["dtype"], data.x.shape[0], data.x_valid.shape[0], meta["params_count"], data.n_batches)
    model.train()
    with _StopFlag() as stop:
        while not finished and epoch < tc.epochs:
            # order the batches (an interrupted epoch is redrawn as it was)
            perm = progress.start(epoch, streams, draw=lambda gen: _epoch_order(data, tc, gen))
            for b in progress:
                idx = perm[b * data.batch_size:(b + 1) * data.batch_size].to(device)
                xb, pb = data.x[idx], data.pitch[idx]
                # schedules: pure functions of the step, so a resumed run continues them
                beta = beta_at(step, cfg=tc)
                lr = lr_at(step, cfg=tc, total_steps=tc.epochs * data.n_batches)
                # forward and objective
                with _autocast(device, dtype):
                    out = model(xb, pb if pitched else None, generator=streams.noise)
                loss, parts = training_objective(xb, out, model, pitch=pb, classes=data.classes[idx], beta=beta,
                                                 cfg=tc)
                _check_finite(loss, parts, beta=beta, step=step, epoch=epoch, batch=b, n_batches=data.n_batches,
                              last_path=last_path)
                # backward and step
                _optimizer_step(optimizer, model, loss, lr=lr, grad_clip=tc.grad_clip)
                step += 1
                # log
                progress.add(parts, notes=xb.shape[0], batch=b, beta=beta)
                # Ctrl-C / SIGTERM: save this batch boundary and stop
                if stop.signum is not None and b < data.n_batches - 1:
                    progress.pause(b + 1, streams)
                    save_checkpoint(state(), last_path)
                    log.warning("interrupted at step %d: state saved to %s; continue with --resume", step, last_path)
                    raise KeyboardInterrupt
            # evaluate
            epoch += 1
            row = {"epoch": epoch, "step": step, "beta": beta_at(max(step - 1, 0), cfg=tc),
                   "lr": optimizer.param_groups[0]["lr"], **progress.finish()}
            row.update(_evaluate(model, data.x_valid, data.pitch_valid, beta=row["beta"], free_bits=tc.free_bits,
                                 seed=cfg.run.seed + 2, dtype=dtype, pitched=pitched))
            history.append({c: row[c] for c in HISTORY_COLUMNS})
            # decide to stop
            improved = early.update(row["valid_recon"], epoch=epoch)
            finished = epoch >= tc.epochs or early.should_stop
            # checkpoint
            ckpt = state()
            if improved:
                save_checkpoint(ckpt, best_path)
            save_checkpoint(ckpt, last_path)
            atomic_write_text(run_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
            log.info("epoch %d: train recon %.2f, valid recon %.2f, kl %.2f, beta %.3f, AU %d, %.1f s%s",
                     epoch, row["train_recon"], row["valid_recon"], row["valid_kl_raw"], row["beta"],
                     row["active_units"], row["seconds"], " (best)" if improved else "")
            if stop.signum is not None:
                log.warning("interrupted after epoch %d: continue with --resume", epoch)
                raise KeyboardInterrupt

    hist = pd.DataFrame(history, columns=list(HISTORY_COLUMNS))
    return TrainResult(run_dir=run_dir, best_path=best_path, last_path=last_path, history=hist,
                       best_epoch=early.best_epoch, best_valid_recon=float(early.best_value),
                       stopped_early=bool(len(hist) < tc.epochs), device=meta["device"], dtype=meta["dtype"],
                       params_count=meta["params_count"])


# ----------------------------------------------------------------------------- the phases

def _device(tc: TrainConfig) -> tuple[torch.device, torch.dtype]:
    """Where training runs and its autocast dtype (float32: none)."""
    device = resolve_device(tc.device)
    if device.type == "cpu":
        set_threads(tc.num_threads)
    return device, autocast_dtype(device, enabled=tc.bf16)


def _run_dir(cfg: Config, cache: FeatureCache) -> Path:
    """The run's folder, created, with the config it trains saved in it."""
    run_dir = checkpoint_dir(cfg, cache.manifest["key"])
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


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


def _restore(path: Path, cfg: Config, device: torch.device,
             stateful: dict[str, Any]) -> tuple[int, int, bool, list[dict]]:
    """Load checkpoint ``path`` into each object of ``stateful`` (keyed as in the checkpoint).

    Returns the epochs finished, the step, whether the run had finished and the history rows; a
    fresh start (0, 0, False, []) when there is no checkpoint.

    Raises
    ------
    CheckpointError
        When the checkpoint is unreadable or its model or log-mel differ from ``cfg``'s.
    """
    if not path.is_file():
        log.info("no checkpoint in %s: starting from scratch", path.parent)
        return 0, 0, False, []
    ckpt = load_checkpoint(path, device=device)
    check_same_model(ckpt, cfg, path)  # the folder's hash covers the rest of the config
    for key, obj in stateful.items():
        obj.load_state_dict(ckpt[key])
    epoch, step, partial = ckpt["epoch"], ckpt["step"], ckpt["partial"]
    log.info("resuming %s at epoch %d, step %d%s", path.parent, epoch, step,
             f" (batch {partial['batch']} of epoch {epoch + 1})" if partial else "")
    return epoch, step, bool(ckpt.get("finished")), pd.DataFrame(ckpt["history"]).to_dict("records")


def _epoch_order(data: _Data, tc: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """The epoch's order of the train notes: grouped by instrument when ``train.notes_per_instrument``."""
    if tc.notes_per_instrument:
        return instrument_grouped_order(data.instrument, tc.notes_per_instrument, gen)
    return torch.randperm(data.x.shape[0], generator=gen)


def _check_finite(loss: torch.Tensor, parts: dict[str, float], *, beta: float, step: int, epoch: int, batch: int,
                  n_batches: int, last_path: Path) -> None:
    """Raise :class:`TrainingError` naming the step and the terms when ``loss`` is not finite.

    ``epoch`` counts the epochs finished (so ``last.pt``, when there is one, holds epoch ``epoch``)
    and ``batch`` is 0-based.
    """
    if math.isfinite(loss.detach().item()):
        return
    kept = f"{last_path} (epoch {epoch})" if last_path.is_file() else "none (no epoch had finished)"
    raise TrainingError(
        f"non-finite loss at step {step} (epoch {epoch + 1}, batch {batch + 1}/{n_batches}): "
        f"recon={parts['recon']}, kl_raw={parts['kl_raw']}, beta={beta}"
        + "".join(f", {k}={parts[k]}" for k in AUX_TERMS if k in parts) + "; training stopped. "
        f"Last good checkpoint: {kept}. Try a lower train.lr or a smaller model.logvar_bound.")


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
    last = load_checkpoint(run_dir / "last.pt")
    hist = pd.DataFrame(last["history"], columns=list(HISTORY_COLUMNS))
    cfg_epochs = last["config"]["train"]["epochs"]
    return TrainResult(run_dir=run_dir, best_path=run_dir / "best.pt", last_path=run_dir / "last.pt",
                       history=hist, best_epoch=int(last["best"]["epoch"]),
                       best_valid_recon=float(last["best"]["valid_recon"]), stopped_early=len(hist) < cfg_epochs,
                       device=last["device"], dtype=last["dtype"], params_count=int(last["params_count"]))


def train_or_reuse(cfg: Config, cache: FeatureCache, *, retrain: bool = False,
                   show_progress: bool = True) -> tuple[TrainResult, bool]:
    """Reuse the finished run of this config (unless ``retrain``), else train (resuming a partial run).

    Returns the result and whether training ran.
    """
    found = None if retrain else find_checkpoint(cfg, cache)
    if found is not None:
        log.info("reusing %s", found)
        return result_from_dir(found.parent), False
    return train(cfg, cache, resume=not retrain, show_progress=show_progress), True


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
