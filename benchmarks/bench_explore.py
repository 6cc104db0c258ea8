"""Latency of one explorer update (decode one latent vector, then its audio by Griffin-Lim) on this CPU.

* **update**: :func:`vaelib.analysis.explore.decode_point`, the decoder of the ``--params`` model
  (default: ``params/default.yaml``, the default network, latent 32) on one latent vector, then
  :func:`vaelib.analysis.explore.fast_inversion` with ``explore.DEFAULT_GL_ITERS`` iterations; decode and
  Griffin-Lim are timed apart, ``--repeats`` times after a warm-up, each at a new latent vector. The
  weights are the finished training of the params when its feature cache and checkpoint exist, else
  random (seeded): the time does not depend on them.
* **widget**: the same update through the explorer's Path tab (``vaelib.report.explorer.PathTab``),
  with the spectrogram drawn to PNG and the audio encoded to wav: what a move of the slider costs.
* **iterations**: Griffin-Lim time and quality for several iteration counts on real notes (the default
  dataset when it is rendered, else the smoke set's, rendered if missing, in the params' log-mel):
  the log-mel round-trip error of the audio (``vaelib.analysis.listening.roundtrip_mae_db``, every cell
  and the cells within 40 dB of the peak), the basis of ``DEFAULT_GL_ITERS``; and both mel inversions of
  ``inverse_log_mel`` (the filterbank's pseudo-inverse and librosa's NNLS solve) on the same notes at
  that count, the basis of ``analysis.mel_inversion``.

Writes ``benchmarks/results/explore.json`` (``--out``) with the machine (CPU model, flags, threads),
the load average and the date. A benchmark, not a test: timings depend on the load, so each part waits
(at most 3 minutes) for a quiet machine and CPU times are recorded beside wall times.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from bench_train import _load, wait_for_quiet

from vaelib.analysis.explore import (
    DECODE_THREADS,
    DEFAULT_GL_ITERS,
    decode_point,
    explore_space,
    fast_inversion,
    prior_point,
)
from vaelib.analysis.listening import choose_listening_notes, roundtrip_mae_db
from vaelib.config import MEL_INVERSES, PROJECT_ROOT, load_config, project_relative, resolve_path
from vaelib.data.features import inverse_log_mel, log_mel
from vaelib.data.nsynth import load_dataset, read_wav
from vaelib.data.prepare import ensure_dataset, prepare_features
from vaelib.io import atomic_write_json
from vaelib.model.checkpoint import find_checkpoint, load_model
from vaelib.model.device import cpu_flags, machine_info, set_threads
from vaelib.model.vae import ConvVAE, count_parameters

OUT = PROJECT_ROOT / "benchmarks" / "results" / "explore.json"
ITERATIONS = (8, 16, 32, 64, 128)
QUALITY_NOTES = 12  # real notes the iteration counts are compared on
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")  # what the FFTs and the convolutions can use


def model_of(cfg) -> tuple[torch.nn.Module, str]:
    """The finished training of ``cfg`` when its dataset, cache and checkpoint exist, else random weights."""
    if resolve_path(cfg.data.root).is_dir():
        checkpoint = find_checkpoint(cfg, prepare_features(cfg, show_progress=False))
        if checkpoint is not None:
            model, _ = load_model(checkpoint, cfg=cfg)
            return model, f"trained: {project_relative(checkpoint)}"
    torch.manual_seed(0)
    model = ConvVAE(cfg.model, n_mels=cfg.features.n_mels, frames=cfg.features.frames).eval()
    return model, "random weights (seed 0): no finished training of these params here"


def real_notes(cfg, smoke, root: str = "") -> tuple[np.ndarray, pd.DataFrame, str]:
    """Log-mels (the params' features) of ``QUALITY_NOTES`` notes, one per instrument near middle C, from
    ``root`` (an NSynth-layout folder), else the params' dataset when rendered, else the smoke set's."""
    src = cfg if resolve_path(cfg.data.root).is_dir() else smoke
    if root:
        src = load_config(PROJECT_ROOT / "params" / "smoke.yaml", [f"data.root={root}"])
    else:
        ensure_dataset(src, show_progress=False)
    df = load_dataset(src.data, seed=src.run.seed).reset_index(drop=True)
    rows = choose_listening_notes(df, n=QUALITY_NOTES, pitch=60, velocity=127)
    f = cfg.features
    n_samples = int(round(f.duration_s * f.sample_rate))
    x = np.stack([log_mel(read_wav(df["path"].iloc[i], sample_rate=f.sample_rate, n_samples=n_samples)[0], cfg=f)
                  for i in rows])
    source = f"{Path(src.data.root).name} ({len(rows)} notes, one per instrument)"
    return x, df.iloc[rows].reset_index(drop=True), source


def _timed(fn, *args, **kwargs) -> tuple[object, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0, time.process_time() - c0


def time_updates(model, cfg, repeats: int) -> dict:
    """``repeats`` updates (``decode_point``) at fresh prior draws after one warm-up: decode and Griffin-Lim
    wall times apart as the update records them, its CPU time, and Griffin-Lim's CPU time alone (the same
    call again on the same spectrogram); then the decode alone on all of torch's threads, for comparison."""
    f = cfg.features
    d = cfg.model.latent_dim
    decode_point(model, prior_point(d, seed=999), cfg=f)  # warm-up: oneDNN kernels, librosa's first call
    rows = []
    for i in range(repeats):
        c0 = time.process_time()
        out = decode_point(model, prior_point(d, seed=i), cfg=f, n_iter=DEFAULT_GL_ITERS)
        cpu = time.process_time() - c0
        _, _, gl_cpu = _timed(fast_inversion, out.x, cfg=f, n_iter=DEFAULT_GL_ITERS)
        rows.append({**out.seconds, "total": sum(out.seconds.values()), "cpu": cpu, "gl_cpu": gl_cpu})
        shared = decode_point(model, prior_point(d, seed=i), cfg=f, n_iter=1, threads=0)
        rows[-1]["decode_all_threads"] = shared.seconds["decode"]
    t = pd.DataFrame(rows)
    return {"update_seconds_median": float(t["total"].median()), "update_seconds_max": float(t["total"].max()),
            "decode_seconds_median": float(t["decode"].median()),
            "griffin_lim_seconds_median": float(t["inversion"].median()),
            "update_cpu_seconds_median": float(t["cpu"].median()),
            "griffin_lim_cpu_seconds_median": float(t["gl_cpu"].median()),
            "decode_threads": DECODE_THREADS,
            "decode_seconds_median_all_threads": float(t["decode_all_threads"].median()),
            "decode_seconds_max_all_threads": float(t["decode_all_threads"].max()),
            "repeats": repeats, "gl_iters": DEFAULT_GL_ITERS}


def time_widget(model, cfg, x: np.ndarray, meta: pd.DataFrame, repeats: int) -> dict:
    """A move of the Path tab's slider: update + PNG of the spectrogram + wav bytes, as the widget does it."""
    from vaelib.report.explorer import PathTab

    space = explore_space(model, x, meta, cfg=cfg.features, pitch_conditioning=cfg.model.pitch_conditioning)
    names = space.instruments()
    tab = PathTab(model, space, instrument_a=names[0], instrument_b=names[-1], pitch=space.pitches()[0],
                  method="slerp", n_iter=DEFAULT_GL_ITERS, seed=0)
    tab.refresh()  # warm-up
    times = []
    for t in np.linspace(0.05, 0.95, repeats):
        t0 = time.perf_counter()
        tab.slider.value = float(t)  # the callback runs here, as in the frontend
        times.append(time.perf_counter() - t0)
    return {"widget_update_seconds_median": float(np.median(times)), "widget_update_seconds_max": float(max(times)),
            "repeats": repeats}


def time_iterations(x: np.ndarray, cfg) -> list[dict]:
    """Griffin-Lim time and round-trip error per iteration count, and both mel inversions at the default count."""
    f = cfg.features
    out = []
    for n_iter in ITERATIONS:
        audio, walls, cpus = [], [], []
        for xi in x:
            a, wall, cpu = _timed(fast_inversion, xi, cfg=f, n_iter=n_iter)
            audio.append(a)
            walls.append(wall)
            cpus.append(cpu)
        audio = np.stack(audio)
        out.append({"method": "explorer: filterbank pseudo-inverse + Griffin-Lim", "gl_iters": n_iter,
                    "seconds_median": float(np.median(walls)), "cpu_seconds_median": float(np.median(cpus)),
                    "roundtrip_mae_db": float(np.mean(roundtrip_mae_db(x, audio, cfg=f))),
                    "roundtrip_mae_db_loud": float(np.nanmean(roundtrip_mae_db(x, audio, cfg=f, above_db=-40.0)))})
        print(f"GL {n_iter:4d}: {out[-1]['seconds_median'] * 1000:.0f} ms, round trip {out[-1]['roundtrip_mae_db']:.2f}"
              f" dB ({out[-1]['roundtrip_mae_db_loud']:.2f} dB within 40 dB of the peak)", flush=True)
    for mel_inverse in MEL_INVERSES:  # side by side on the same notes, at the same count and seed
        audio, walls, cpus = [], [], []
        for xi in x:
            a, wall, cpu = _timed(inverse_log_mel, xi, cfg=f, n_iter=DEFAULT_GL_ITERS, mel_inverse=mel_inverse)
            audio.append(a)
            walls.append(wall)
            cpus.append(cpu)
        audio = np.stack(audio)
        out.append({"method": f"05_listening: {mel_inverse} mel inversion (analysis.mel_inversion) + Griffin-Lim",
                    "mel_inverse": mel_inverse, "gl_iters": DEFAULT_GL_ITERS, "notes": len(audio),
                    "seconds_median": float(np.median(walls)), "cpu_seconds_median": float(np.median(cpus)),
                    "roundtrip_mae_db": float(np.mean(roundtrip_mae_db(x, audio, cfg=f))),
                    "roundtrip_mae_db_loud": float(np.nanmean(roundtrip_mae_db(x, audio, cfg=f, above_db=-40.0)))})
        print(f"{mel_inverse} + GL {DEFAULT_GL_ITERS}: {out[-1]['seconds_median'] * 1000:.0f} ms, round trip "
              f"{out[-1]['roundtrip_mae_db']:.2f} dB ({out[-1]['roundtrip_mae_db_loud']:.2f} dB loud)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(PROJECT_ROOT / "params" / "default.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--notes-data", default="", help="NSynth-layout folder of the notes the iteration counts are "
                                                     "compared on (default: the params' dataset, else the smoke set)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.params, args.overrides)
    smoke = load_config(PROJECT_ROOT / "params" / "smoke.yaml")
    threads = set_threads(cfg.train.num_threads)
    load_before = _load()
    model, weights = model_of(cfg)
    x, meta, notes_source = real_notes(cfg, smoke, args.notes_data)
    print(f"model: {weights}; notes: {notes_source}", flush=True)

    quiet = {"updates": wait_for_quiet()}
    updates = time_updates(model, cfg, args.repeats)
    ms = {k: 1000 * v for k, v in updates.items() if k.endswith("seconds_median") or k.endswith("seconds_max")}
    print(f"update: {ms['update_seconds_median']:.0f} ms median (decode {ms['decode_seconds_median']:.0f} ms + "
          f"Griffin-Lim {ms['griffin_lim_seconds_median']:.0f} ms), max {ms['update_seconds_max']:.0f} ms", flush=True)
    quiet["widget"] = wait_for_quiet()
    widget = time_widget(model, cfg, x, meta, max(5, args.repeats // 2))
    print(f"widget update: {widget['widget_update_seconds_median'] * 1000:.0f} ms median", flush=True)
    quiet["iterations"] = wait_for_quiet()
    iterations = time_iterations(x, cfg)

    machine = machine_info()
    result = {
        **updates,
        **{k: v for k, v in widget.items() if k != "repeats"},
        "widget_repeats": widget["repeats"],
        "target": {"update_seconds_max": 1.0},
        "cpu_seconds_note": "process CPU seconds of each part, summed over the threads it ran on (torch's FFT "
                            "threads inside Griffin-Lim, torch_threads for the decoder where not DECODE_THREADS)",
        "model": {"channels": list(cfg.model.channels), "depth": cfg.model.depth, "latent_dim": cfg.model.latent_dim,
                  "params_count": count_parameters(model), "weights": weights},
        "features": {"n_fft": cfg.features.n_fft, "hop_length": cfg.features.hop_length,
                     "n_mels": cfg.features.n_mels, "frames": cfg.features.frames,
                     "mel_scale": cfg.features.mel_scale, "sample_rate": cfg.features.sample_rate},
        "params_file": project_relative(Path(args.params)),
        "iterations": iterations,
        "iterations_notes": notes_source,
        "machine": {**machine, "cpu_flags": sorted(cpu_flags() & set(FLAGS))},
        "torch_threads": threads,
        "load_average_before": load_before,
        "load_1min_at_start_of_each_part": quiet,
        "load_average_after": _load(),
        "date": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
    }
    atomic_write_json(Path(args.out), result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
