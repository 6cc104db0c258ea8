"""Training stage: the VAE on the cached features, resumable, with early stopping and a NaN guard.

Speed on a small CPU comes from doing nothing per step but the model: the whole split is one
float32 tensor in memory (no DataLoader, no audio decoding), batches are rows picked by a
``torch.Generator``-seeded permutation, weights and activations are channels-last for oneDNN,
and bf16 autocast is used only where the hardware has native bf16 (see :mod:`vaelib.model.device`).

Reproducibility: every random draw comes from a seeded generator (initialisation: the torch
global RNG seeded by ``run.seed``; batch order: ``batch_gen``; reparameterization noise:
``noise_gen``; evaluation noise: a fresh generator per evaluation). All their states, the model,
the optimiser, the early-stopping state and the history are in every checkpoint, and the beta
and learning-rate schedules are pure functions of the step, so on CPU a resumed run ends with the same numbers as an
uninterrupted one.

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from vaelib.config import Config, config_to_dict, save_config
from vaelib.data.cache import FeatureCache
from vaelib.exceptions import TrainingError
from vaelib.io import atomic_write_text
from vaelib.model.checkpoint import (
    CHECKPOINT_FORMAT,
    check_same_model,
    checkpoint_dir,
    find_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vaelib.model.device import autocast_dtype, resolve_device, set_threads
from vaelib.model.loss import active_units, attribute_order, beta_at, instrument_contrast, lr_at, vae_loss
from vaelib.model.vae import ConvVAE, count_parameters

__all__ = [
    "TrainResult",
    "train",
    "HISTORY_COLUMNS",
    "result_from_dir",
    "train_or_reuse",
    "train_metrics",
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
_SUM_KEYS = ("recon", "kl_raw", "kl_fb", "total")
_AUX_KEYS = ("contrast", "pitch_ce", "pitch_order")  # optional terms beside the VAE objective, logged when on


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
    sums = dict.fromkeys(_SUM_KEYS, 0.0)
    mus, logvars = [], []
    for i in range(0, n, EVAL_BATCH):
        xb = x[i:i + EVAL_BATCH]
        with _autocast(device, dtype):
            out = model(xb, pitch[i:i + EVAL_BATCH] if pitched else None, generator=gen)
        parts = vae_loss(xb, out, beta=beta, free_bits=free_bits)
        for k in _SUM_KEYS:
            sums[k] += float(getattr(parts, k)) * xb.shape[0]
        mus.append(out.mu.float())
        logvars.append(out.logvar.float())
    model.train()
    mu, logvar = torch.cat(mus), torch.cat(logvars)
    pixels = x[0].numel()
    res = {f"valid_{k}": v / n for k, v in sums.items()}
    res["valid_mse"] = res["valid_recon"] / pixels
    res.update(mu_mean=float(mu.mean()), mu_std=float(mu.std()), logvar_mean=float(logvar.mean()),
               logvar_std=float(logvar.std()), active_units=active_units(mu) if n > 1 else 0)
    # Free bits was tuned per dimension; also report how many dimensions sit at the prior.
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
    device = resolve_device(tc.device)
    if device.type == "cpu":
        set_threads(tc.num_threads)
    dtype = autocast_dtype(device, enabled=tc.bf16)
    run_dir = checkpoint_dir(cfg, cache.manifest["key"])
    run_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    save_config(cfg, run_dir / "config.yaml")

    x_train, p_train, i_train = _split_tensors(cache, "train", device)
    c_train = contrast_classes(cache, tc.contrast_labels, device)
    x_valid, p_valid, _ = _split_tensors(cache, "valid", device)
    i_train_cpu = i_train.cpu()  # the epoch order is drawn on the CPU generator
    n_train = x_train.shape[0]
    bs = min(tc.batch_size, n_train)
    # Drop a last batch of one note: BatchNorm cannot normalise a single sample.
    n_batches = n_train // bs + (1 if n_train % bs > 1 else 0)
    pitched = cfg.model.pitch_conditioning

    torch.manual_seed(cfg.run.seed)
    np.random.seed(cfg.run.seed)
    model = ConvVAE(cfg.model, n_mels=cfg.features.n_mels, frames=cfg.features.frames).to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    batch_gen = torch.Generator().manual_seed(cfg.run.seed)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.run.seed + 1)

    history: list[dict] = []
    epoch, step = 0, 0
    best = {"valid_recon": math.inf, "epoch": 0, "bad_epochs": 0}
    partial: dict | None = None
    finished = False
    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path, device=device)
        check_same_model(ckpt, cfg, last_path)  # the folder's hash covers the rest of the config
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"], batch_gen, noise_gen)
        epoch, step = ckpt["epoch"], ckpt["step"]
        history = pd.DataFrame(ckpt["history"]).to_dict("records")
        best, partial, finished = dict(ckpt["best"]), ckpt.get("partial"), bool(ckpt.get("finished"))
        log.info("resuming %s at epoch %d, step %d%s", run_dir, epoch, step,
                 f" (batch {partial['batch']} of epoch {epoch + 1})" if partial else "")
    elif resume:
        log.info("no checkpoint in %s: starting from scratch", run_dir)

    params_count = count_parameters(model)
    meta = {"format": CHECKPOINT_FORMAT, "config": config_to_dict(cfg), "cache_key": cache.manifest["key"],
            "n_mels": cfg.features.n_mels, "frames": cfg.features.frames, "params_count": params_count,
            "device": str(device), "dtype": str(dtype).replace("torch.", "")}

    def state(*, part: dict | None = None) -> dict:
        return {**meta, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": rng_state(batch_gen, noise_gen), "epoch": epoch, "step": step,
                "history": pd.DataFrame(history, columns=list(HISTORY_COLUMNS)).to_dict("list"),
                "best": dict(best), "finished": finished, "partial": part}

    log.info("training %s on %s (%s): %d train / %d valid notes, %d parameters, %d steps an epoch",
             run_dir.name, device, meta["dtype"], n_train, x_valid.shape[0], params_count, n_batches)
    model.train()
    with _StopFlag() as stop:
        while not finished and epoch < tc.epochs:
            if partial is not None:
                batch_gen.set_state(partial["epoch_gen_state"])
            epoch_gen_state = batch_gen.get_state()
            perm = (instrument_grouped_order(i_train_cpu, tc.notes_per_instrument, batch_gen)
                    if tc.notes_per_instrument else torch.randperm(n_train, generator=batch_gen))
            if partial is not None:
                first, sums = partial["batch"], {**dict.fromkeys(_AUX_KEYS, 0.0), **partial["sums"]}
                seen, elapsed = partial["seen"], partial["seconds"]
                set_rng_state(partial["rng_after"], batch_gen, noise_gen)
                partial = None
            else:
                first, sums, seen, elapsed = 0, dict.fromkeys((*_SUM_KEYS, *_AUX_KEYS), 0.0), 0, 0.0
            t0 = time.perf_counter()
            bar = tqdm(range(first, n_batches), total=n_batches, initial=first, desc=f"epoch {epoch + 1}/{tc.epochs}",
                       unit="batch", disable=not show_progress, leave=False)
            for b in bar:
                idx = perm[b * bs:(b + 1) * bs].to(device)
                xb = x_train[idx]
                beta = beta_at(step, cfg=tc)
                with _autocast(device, dtype):
                    out = model(xb, p_train[idx] if pitched else None, generator=noise_gen)
                parts = vae_loss(xb, out, beta=beta, free_bits=tc.free_bits)
                loss, aux_now = parts.total, {}
                if tc.contrast > 0:
                    contrast = instrument_contrast(model.contrast_features(out.mu.float(), tc.contrast_dims),
                                                   c_train[idx], temperature=tc.contrast_temperature)
                    loss = loss + tc.contrast * contrast
                    aux_now["contrast"] = contrast.detach().item()
                if model.pitch_logits is not None:
                    pitch_ce = torch.nn.functional.cross_entropy(model.pitch_scores(out.mu.float()), p_train[idx])
                    loss = loss + tc.pitch_weight * pitch_ce
                    aux_now["pitch_ce"] = pitch_ce.detach().item()
                if tc.pitch_order > 0:
                    order = attribute_order(out.mu, p_train[idx], dim=-1)
                    loss = loss + tc.pitch_order * order
                    aux_now["pitch_order"] = order.detach().item()
                total = loss.detach().item()
                if not math.isfinite(total):
                    kept = f"{last_path} (epoch {epoch})" if last_path.is_file() else "none (no epoch had finished)"
                    raise TrainingError(
                        f"non-finite loss at step {step} (epoch {epoch + 1}, batch {b + 1}/{n_batches}): "
                        f"recon={parts.recon.item()}, kl_raw={parts.kl_raw.item()}, beta={beta}"
                        + "".join(f", {k}={v}" for k, v in aux_now.items()) + "; training stopped. "
                        f"Last good checkpoint: {kept}. Try a lower train.lr or a smaller model.logvar_bound.")
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, cfg=tc, total_steps=tc.epochs * n_batches)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                step += 1
                for k in _SUM_KEYS:
                    sums[k] += getattr(parts, k).detach().item() * xb.shape[0]
                for k, v in aux_now.items():
                    sums[k] += v * xb.shape[0]
                seen += xb.shape[0]
                if show_progress and (b % 10 == 0 or b == n_batches - 1):
                    bar.set_postfix(recon=f"{sums['recon'] / seen:.1f}", kl=f"{sums['kl_raw'] / seen:.2f}",
                                    kl_fb=f"{sums['kl_fb'] / seen:.2f}", beta=f"{beta:.3f}")
                if stop.signum is not None and b < n_batches - 1:
                    part = {"batch": b + 1, "epoch_gen_state": epoch_gen_state, "sums": sums, "seen": seen,
                            "seconds": elapsed + time.perf_counter() - t0,
                            "rng_after": rng_state(batch_gen, noise_gen)}
                    save_checkpoint(state(part=part), last_path)
                    bar.close()
                    log.warning("interrupted at step %d: state saved to %s; continue with --resume", step, last_path)
                    raise KeyboardInterrupt
            bar.close()
            seconds = elapsed + time.perf_counter() - t0
            epoch += 1
            row = {"epoch": epoch, "step": step, "beta": beta_at(max(step - 1, 0), cfg=tc),
                   "lr": optimizer.param_groups[0]["lr"], "seconds": seconds,
                   **{f"train_{k}": v / seen for k, v in sums.items()}}
            ev = _evaluate(model, x_valid, p_valid, beta=row["beta"], free_bits=tc.free_bits,
                           seed=cfg.run.seed + 2, dtype=dtype, pitched=pitched)
            row.update(ev)
            history.append({c: row[c] for c in HISTORY_COLUMNS})
            improved = row["valid_recon"] < best["valid_recon"]
            if improved:
                best = {"valid_recon": row["valid_recon"], "epoch": epoch, "bad_epochs": 0}
            else:
                best["bad_epochs"] += 1
            finished = epoch >= tc.epochs or best["bad_epochs"] >= tc.patience
            ckpt = state()
            if improved:
                save_checkpoint(ckpt, best_path)
            save_checkpoint(ckpt, last_path)
            atomic_write_text(run_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
            log.info("epoch %d: train recon %.2f, valid recon %.2f, kl %.2f, beta %.3f, AU %d, %.1f s%s",
                     epoch, row["train_recon"], row["valid_recon"], row["valid_kl_raw"], row["beta"],
                     row["active_units"], seconds, " (best)" if improved else "")
            if stop.signum is not None:
                log.warning("interrupted after epoch %d: continue with --resume", epoch)
                raise KeyboardInterrupt

    hist = pd.DataFrame(history, columns=list(HISTORY_COLUMNS))
    return TrainResult(run_dir=run_dir, best_path=best_path, last_path=last_path, history=hist,
                       best_epoch=int(best["epoch"]), best_valid_recon=float(best["valid_recon"]),
                       stopped_early=bool(len(hist) < tc.epochs), device=str(device),
                       dtype=meta["dtype"], params_count=params_count)


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
