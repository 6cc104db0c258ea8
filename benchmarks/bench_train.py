"""Seconds per training epoch of 12,678 notes (NSynth-valid's size): cached features vs a naive loop.

* **vaelib**: :func:`vaelib.model.train.train` itself, two epochs of the ``--params`` model (default:
  ``params/default.yaml``; the second reported) on an in-memory feature cache of 12,678 notes (the
  default dataset's cache when it is built, else the smoke set's features tiled to 12,678 notes;
  ``features_source`` says which). The time is the training loop only (the history's ``seconds``),
  without the valid evaluation.
* **baseline**: the naive loop: a ``Dataset`` that decodes the wav and computes the log-mel with
  librosa per item, the default ``DataLoader`` (batch 64, one process), the same model in fp32
  eager mode without channels-last, on the VAE loss only (no contrastive or pitch term). Timed on
  ``--baseline-notes`` items and extrapolated.
* **channels**: a few steps of each candidate channel list, extrapolated to an epoch: the measurement
  behind the plain model's ``model.channels`` (16-32-64, ``params/plain.yaml``).
* **FLOPs**: one training step counted by ``torch.utils.flop_counter``, per note, and the sustained
  GFLOP/s of the timed epoch, so the distance to the CPU's peak is visible beside the time.

Writes ``benchmarks/results/train.json`` (``--out``); ``make benchmarks`` also times the plain beta-VAE
(``--params params/plain.yaml``) into ``train_plain.json``, the model the 8 s target was set for
(the default model's is 40 s, in fp32 on a 2-core AVX2 CPU).
``--notes 289205 --skip-baseline`` times an epoch of NSynth-train's size (the cache tiled to it, held in
memory on the training device: about 12 GB in float32 there), e.g. on a GPU with ``--set train.device=cuda``.
A benchmark, not a test: timings depend on the load.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import torch

from vaelib.config import PROJECT_ROOT, load_config, project_relative, resolve_path
from vaelib.data.cache import FeatureCache
from vaelib.data.nsynth import load_dataset
from vaelib.data.prepare import ensure_dataset, prepare_features
from vaelib.io import atomic_write_json
from vaelib.model.device import autocast_dtype, machine_info, resolve_device, set_threads
from vaelib.model.loss import vae_loss
from vaelib.model.train import train
from vaelib.model.vae import ConvVAE, count_parameters

NOTES_PER_EPOCH = 12_678  # NSynth valid; --notes 289205 for NSynth-train
CANDIDATES = ((8, 16, 32), (16, 32, 64), (32, 64, 128))
OUT = PROJECT_ROOT / "benchmarks" / "results" / "train.json"
# fp32 on a 2-core AVX2 CPU: the default model's epoch within 40 s, the plain model's within 8 s
EPOCH_TARGET_S = {"default": 40.0, "plain": 8.0}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def wait_for_quiet(*, below: float = 1.0, max_wait_s: float = 180.0) -> float:
    """Wait (at most ``max_wait_s``) for the 1-minute load average to drop below ``below``; return it.

    On a shared machine other processes inflate wall-clock times, so each timed part starts when the
    machine is as quiet as it gets, and CPU times are recorded next to wall times.
    """
    t0 = time.time()
    while os.getloadavg()[0] >= below and time.time() - t0 < max_wait_s:
        time.sleep(5)
    return round(os.getloadavg()[0], 2)


def feature_source(default_cfg, smoke_cfg, notes: int) -> tuple[FeatureCache, str]:
    """The default dataset's cache if already built, else the smoke set's (rendered if missing)."""
    if resolve_path(default_cfg.data.root).is_dir():
        cache = prepare_features(default_cfg, show_progress=False)
        return cache, (f"default dataset cache {project_relative(cache.path)} ({len(cache.meta)} notes), "
                       f"tiled/cut to {notes}")
    cache = prepare_features(smoke_cfg, show_progress=False)
    return cache, (f"params/smoke.yaml features ({len(cache.meta)} notes of {cache.meta['instrument_str'].nunique()} "
                   f"instruments; data/gm_default not rendered) tiled to {notes}")


def tiled_cache(cache: FeatureCache, n_train: int, n_valid: int, key: str) -> FeatureCache:
    """An in-memory cache with ``n_train`` train and ``n_valid`` valid notes cycled from ``cache``."""
    n = len(cache.meta)
    idx = np.arange(n_train + n_valid) % n
    feats = np.asarray(cache.features)[idx]
    meta = cache.meta.iloc[idx].reset_index(drop=True).copy()
    meta["split"] = ["train"] * n_train + ["valid"] * n_valid
    return FeatureCache(path=cache.path, features=feats, meta=meta, manifest={**cache.manifest, "key": key})


def time_vaelib_epoch(cfg, cache: FeatureCache) -> dict:
    """Two epochs of ``train``; the second is reported: the first also pays oneDNN's one-off kernel creation
    (bf16 primitives are built on first use), which a 12-epoch run pays once."""
    with tempfile.TemporaryDirectory() as tmp:
        run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2, checkpoint_dir=tmp))
        t0, c0 = time.perf_counter(), time.process_time()
        res = train(run_cfg, cache, show_progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    seconds = res.history["seconds"]
    return {"epoch_seconds": float(seconds.iloc[-1]), "first_epoch_seconds": float(seconds.iloc[0]),
            "epochs": len(seconds), "call_seconds": wall, "call_cpu_seconds": cpu,
            "device": res.device, "dtype": res.dtype, "params_count": res.params_count,
            "train_recon": float(res.history["train_recon"].iloc[-1])}


class NaiveDataset(torch.utils.data.Dataset):
    """Decode the wav and compute the normalised log-mel with librosa for every item."""

    def __init__(self, paths: list[str], fcfg) -> None:
        self.paths, self.f = paths, fcfg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        f = self.f
        y, _ = librosa.load(self.paths[i], sr=f.sample_rate, duration=f.duration_s)
        y = librosa.util.fix_length(y, size=int(f.sample_rate * f.duration_s))
        mel = librosa.feature.melspectrogram(y=y, sr=f.sample_rate, n_fft=f.n_fft, hop_length=f.hop_length,
                                             n_mels=f.n_mels, fmin=f.fmin, fmax=f.fmax,
                                             htk=f.mel_scale == "htk")
        db = librosa.power_to_db(mel, ref=np.max, top_db=f.top_db)
        x = db[:, :f.frames] / (f.top_db / 2) + 1
        return torch.from_numpy(x.astype(np.float32))[None]


def time_baseline(cfg, paths: list[str], n_items: int, notes: int) -> dict:
    torch.manual_seed(0)
    model = ConvVAE(cfg.model, n_mels=cfg.features.n_mels, frames=cfg.features.frames)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    ds = NaiveDataset([paths[i % len(paths)] for i in range(n_items)], cfg.features)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True)
    t0, c0 = time.perf_counter(), time.process_time()
    seen = 0
    for x in loader:
        out = model(x)
        parts = vae_loss(x, out, beta=cfg.train.beta, free_bits=cfg.train.free_bits)
        opt.zero_grad()
        parts.total.backward()
        opt.step()
        seen += x.shape[0]
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"baseline_notes_timed": seen, "baseline_seconds_timed": sec, "baseline_cpu_seconds_timed": cpu,
            "baseline_epoch_seconds": sec / seen * notes}


def flops_per_note(cfg, x: torch.Tensor) -> dict:
    """FLOPs of one training step per note (forward, VAE loss, backward; ``torch.utils.flop_counter``, which
    counts the matrix products and convolutions, 2 per multiply-add), at the params' batch size."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = ConvVAE(cfg.model).to(memory_format=torch.channels_last)
    xb = x[:cfg.train.batch_size]
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(xb, generator=torch.Generator().manual_seed(0))
        forward = counter.get_total_flops()
        vae_loss(xb, out, beta=1.0, free_bits=0.25).total.backward()
    total = counter.get_total_flops()
    return {"flops_per_note_step": total / xb.shape[0], "forward_flops_per_note": forward / xb.shape[0],
            "flops_method": "torch.utils.flop_counter.FlopCounterMode over forward + VAE loss + backward of "
                            f"ConvVAE at batch {xb.shape[0]} (matmuls and convolutions; the contrastive and "
                            "pitch heads, a few MFLOP, left out)"}


def time_channels(cfg, x: torch.Tensor, steps: int, notes: int) -> list[dict]:
    """Extrapolated epoch seconds of each candidate channel list (the training step of vaelib.model.train)."""
    out = []
    device = resolve_device(cfg.train.device)
    dtype = autocast_dtype(device, enabled=cfg.train.bf16)
    bs = cfg.train.batch_size
    for ch in CANDIDATES:
        mcfg = dataclasses.replace(cfg.model, channels=ch, depth=len(ch))
        torch.manual_seed(0)
        model = ConvVAE(mcfg).to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)

        def step(i: int, model=model, opt=opt, gen=gen) -> None:
            xb = x[(i * bs) % (x.shape[0] - bs):][:bs]
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                o = model(xb, generator=gen)
            loss = vae_loss(xb, o, beta=1.0, free_bits=0.25).total
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for i in range(2):
            step(i)
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        sec = (time.perf_counter() - t0) / steps
        out.append({"channels": list(ch), "params_count": count_parameters(model), "seconds_per_step": sec,
                    "epoch_seconds_extrapolated": sec / bs * notes, "steps_timed": steps})
        print(f"channels {ch}: {sec * 1000:.0f} ms/step -> {sec / bs * notes:.1f} s/epoch", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(PROJECT_ROOT / "params" / "default.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--notes", type=int, default=NOTES_PER_EPOCH,
                    help="train notes an epoch (289205: NSynth-train's size, tiled from the cache)")
    ap.add_argument("--baseline-notes", type=int, default=512)
    ap.add_argument("--skip-baseline", action="store_true", help="leave the naive loop out (e.g. on a GPU)")
    ap.add_argument("--channel-steps", type=int, default=10)
    ap.add_argument("--skip-channels", action="store_true")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    if args.notes < 1:
        ap.error(f"--notes: expected at least 1, got {args.notes}")
    notes = args.notes
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.params, args.overrides)
    smoke = load_config(PROJECT_ROOT / "params" / "smoke.yaml")
    set_threads(cfg.train.num_threads)
    load_before = _load()

    cache, source = feature_source(cfg, smoke, notes)
    bench_cache = tiled_cache(cache, notes, 256, key=f"bench-{cache.manifest['key']}-{notes}")
    print(f"features: {source}", flush=True)
    quiet = {"vaelib": wait_for_quiet()}
    ours = time_vaelib_epoch(cfg, bench_cache)
    print(f"vaelib: {ours['epoch_seconds']:.1f} s/epoch ({ours['device']}, {ours['dtype']}; first epoch "
          f"{ours['first_epoch_seconds']:.1f} s)", flush=True)

    base = None
    if not args.skip_baseline:
        src_cfg = cfg if resolve_path(cfg.data.root).is_dir() else smoke
        ensure_dataset(src_cfg, show_progress=False)
        paths = list(load_dataset(src_cfg.data, seed=src_cfg.run.seed)["path"])
        quiet["baseline"] = wait_for_quiet()
        base = time_baseline(cfg, paths, args.baseline_notes, notes)
        print(f"baseline: {base['baseline_epoch_seconds']:.1f} s/epoch (extrapolated from "
              f"{base['baseline_notes_timed']} notes)", flush=True)

    x = torch.from_numpy(np.asarray(bench_cache.features[:1024], dtype=np.float32)).contiguous(
        memory_format=torch.channels_last)
    quiet["channels"] = wait_for_quiet()
    channels = [] if args.skip_channels else time_channels(cfg, x, args.channel_steps, notes)
    threads = torch.get_num_threads()
    flops = flops_per_note(cfg, x)
    sustained = flops["flops_per_note_step"] * notes / ours["epoch_seconds"] / 1e9
    print(f"{flops['flops_per_note_step'] / 1e6:.0f} MFLOP per note and step; {sustained:.0f} GFLOP/s sustained",
          flush=True)

    result = {
        "notes_per_epoch": notes,
        "epoch_seconds": ours["epoch_seconds"],
        "first_epoch_seconds": ours["first_epoch_seconds"],
        "device": ours["device"],
        "dtype": ours["dtype"],
        "params_count": ours["params_count"],
        "model": {"channels": list(cfg.model.channels), "depth": cfg.model.depth,
                  "kernel_size": cfg.model.kernel_size, "latent_dim": cfg.model.latent_dim,
                  "norm": cfg.model.norm},
        "batch_size": cfg.train.batch_size,
        "features_source": source,
        "vaelib_method": "vaelib.model.train.train, 2 epochs, the second reported, in-memory float32 channels-last "
                         "tensor, seeded permutation batches, no DataLoader; time of the training loop (valid "
                         "evaluation excluded)",
        "channel_candidates": channels,
        **flops,
        "sustained_gflops_per_s": sustained,
        "target": {"epoch_seconds_max": EPOCH_TARGET_S.get(cfg.run.name) if notes == NOTES_PER_EPOCH else None,
                   "speedup_min": 5.0},
        "machine": machine_info(),
        "cpu_seconds_note": "process CPU seconds / torch threads: a wall-time estimate that other processes on "
                            "the shared cores do not inflate (vaelib figure includes setup and valid evaluation)",
        "epoch_cpu_seconds_per_thread": ours["call_cpu_seconds"] / ours["epochs"] / threads,
        "load_average_before": load_before,
        "load_1min_at_start_of_each_part": quiet,
        "load_average_after": _load(),
        "date": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
    }
    if base is not None:
        result |= {
            "baseline_epoch_seconds": base["baseline_epoch_seconds"],
            "speedup": base["baseline_epoch_seconds"] / ours["epoch_seconds"],
            "baseline_method": (f"Dataset decoding the wav + librosa melspectrogram per item, default DataLoader "
                                f"(batch {cfg.train.batch_size}, shuffle, 0 workers), fp32 eager, NCHW; "
                                f"{base['baseline_notes_timed']} notes timed, extrapolated to {notes}"),
            "baseline_notes_timed": base["baseline_notes_timed"],
            "baseline_seconds_timed": base["baseline_seconds_timed"],
            "baseline_epoch_cpu_seconds_per_thread": base["baseline_cpu_seconds_timed"] / threads
            / base["baseline_notes_timed"] * notes,
            "speedup_cpu": (base["baseline_cpu_seconds_timed"] / base["baseline_notes_timed"] * notes)
            / (ours["call_cpu_seconds"] / ours["epochs"]),
        }
    atomic_write_json(Path(args.out), result)
    print(f"speedup {result['speedup']:.1f}x; wrote {args.out}" if base is not None else f"wrote {args.out}")


if __name__ == "__main__":
    main()
