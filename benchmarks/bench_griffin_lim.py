"""Griffin-Lim per note: ``librosa.griffinlim`` against vaelib's torch implementation (``vaelib.data.griffin_lim``).

05_listening inverts every clip it plays (its notes, their reconstructions, the interpolation steps and
the listening map's few hundred reconstructions) by Griffin-Lim, ``GRIFFIN_LIM_BATCH`` notes at a time.
Five ways: librosa; the same iteration in torch with ``torch.istft`` (``torch_istft``: vaelib's before its
own inverse STFT); with vaelib's inverse STFT and the step between the transforms as torch ops
(``torch_ops``: vaelib's before its compiled step, on ``GRIFFIN_LIM_BATCH`` notes); vaelib's note by note
(``torch``); and vaelib's on ``GRIFFIN_LIM_BATCH`` notes at a time (``torch_batched``, what 05 runs).
All invert the same magnitudes (the pseudo-inverse mel of test notes of the default features, or of
seeded noise shaped like them when the default dataset is not built), in an order reversed every
round, same thread count; the best round of each is kept, and the waveforms of each torch way are
compared with librosa's.

Writes ``benchmarks/results/griffin_lim.json`` (``--out``) with the machine and the load average.

Usage: ``.venv/bin/python benchmarks/bench_griffin_lim.py [--notes 16] [--iters 32] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import librosa
import numpy as np
import torch
from _record import conditions

from vaelib.config import PROJECT_ROOT, load_config, resolve_path
from vaelib.data.features import GRIFFIN_LIM_BATCH, log_mel_to_magnitude
from vaelib.data.griffin_lim import MOMENTUM, _InverseSTFT, griffin_lim
from vaelib.io import atomic_write_json

OUT = PROJECT_ROOT / "benchmarks" / "results" / "griffin_lim.json"


def magnitudes(cfg, n: int) -> tuple[np.ndarray, str]:
    """[shape=(n, n_fft // 2 + 1, frames + 1)] linear magnitudes as ``inverse_log_mel`` hands them over."""
    f = cfg.features
    if resolve_path(cfg.data.root).is_dir():
        from vaelib.data.prepare import prepare_features

        x, _ = prepare_features(cfg, show_progress=False).split("test")
        x, what = np.asarray(x[:n], np.float32), f"{n} test notes of the default dataset"
    else:
        x = np.random.default_rng(0).uniform(-1, 1, size=(n, 1, f.n_mels, f.frames)).astype(np.float32)
        what = f"{n} seeded uniform log-mels (default dataset not rendered)"
    return np.stack([log_mel_to_magnitude(xi, cfg=f, mel_inverse="pinv") for xi in x]), what


def griffin_lim_torch_istft(mag: np.ndarray, *, n_iter: int, n_fft: int, hop_length: int, length: int) -> np.ndarray:
    """The same iteration as ``griffin_lim`` with ``torch.istft`` as the inverse (the reference of the A/B)."""
    rng = np.random.default_rng(0)
    angles = torch.from_numpy(np.exp(2j * np.pi * rng.random(size=mag.shape)).astype(np.complex64))
    mag_t, window, tiny = torch.from_numpy(mag), torch.hann_window(n_fft), torch.finfo(torch.float32).tiny
    rebuilt = torch.zeros_like(angles)
    with torch.no_grad():
        for _ in range(n_iter):
            previous = rebuilt
            inverse = torch.istft(mag_t * angles, n_fft, hop_length, window=window, center=True, length=length)
            rebuilt = torch.stft(inverse, n_fft, hop_length, window=window, center=True, pad_mode="constant",
                                 return_complex=True)
            angles = rebuilt - (MOMENTUM / (1 + MOMENTUM)) * previous
            angles = angles / (angles.abs() + tiny)
        return torch.istft(mag_t * angles, n_fft, hop_length, window=window, center=True, length=length).numpy()


def griffin_lim_torch_ops(mag: np.ndarray, *, n_iter: int, n_fft: int, hop_length: int, length: int) -> np.ndarray:
    """The same iteration with vaelib's inverse STFT, ``torch.stft`` and the step as torch ops (bins-major)."""
    rng = np.random.default_rng(0)
    angles = torch.from_numpy(np.exp(2j * np.pi * rng.random(size=mag.shape[-2:])).astype(np.complex64))
    mag_t, window, tiny = torch.from_numpy(mag), torch.hann_window(n_fft), torch.finfo(torch.float32).tiny
    angles = angles.expand(mag_t.shape).clone()
    istft = _InverseSTFT(n_fft=n_fft, hop_length=hop_length, frames=mag.shape[-1], length=length, window=window)
    rebuilt = torch.zeros_like(angles)
    with torch.no_grad():
        for _ in range(n_iter):
            previous = rebuilt
            rebuilt = torch.stft(istft(mag_t * angles), n_fft, hop_length, window=window, center=True,
                                 pad_mode="constant", return_complex=True)
            angles = rebuilt - (MOMENTUM / (1 + MOMENTUM)) * previous
            angles = angles / (angles.abs() + tiny)
        return istft(mag_t * angles).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notes", type=int, default=16)
    ap.add_argument("--iters", type=int, default=32, help="iterations (05's map takes 32, its clips 64)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    cfg = load_config(PROJECT_ROOT / "params" / "default.yaml")
    f = cfg.features
    mags, what = magnitudes(cfg, args.notes)
    length = f.frames * f.hop_length
    def each(invert):
        return lambda: np.stack([invert(m) for m in mags])

    stft = {"n_iter": args.iters, "n_fft": f.n_fft, "hop_length": f.hop_length, "length": length}
    ways = {
        "librosa": each(lambda m: librosa.griffinlim(m, n_iter=args.iters, hop_length=f.hop_length, n_fft=f.n_fft,
                                                     center=True, length=length,
                                                     random_state=np.random.default_rng(0))),
        "torch_istft": each(lambda m: griffin_lim_torch_istft(m, **stft)),
        "torch_ops": lambda: np.concatenate([griffin_lim_torch_ops(mags[i:i + GRIFFIN_LIM_BATCH], **stft)
                                             for i in range(0, len(mags), GRIFFIN_LIM_BATCH)]),
        "torch": each(lambda m: griffin_lim(m, **stft)),
        "torch_batched": lambda: np.concatenate([griffin_lim(mags[i:i + GRIFFIN_LIM_BATCH], **stft)
                                                 for i in range(0, len(mags), GRIFFIN_LIM_BATCH)]),
    }
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    audio: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for way in (list(ways) if r % 2 == 0 else list(reversed(ways))):
            t0 = time.perf_counter()
            audio[way] = ways[way]()
            seconds[way].append((time.perf_counter() - t0) / len(mags))
            print(way, f"{seconds[way][-1] * 1e3:.1f} ms a note", flush=True)
    best = {way: min(s) for way, s in seconds.items()}
    ref = audio["librosa"]
    result = {
        "magnitudes": what, "iterations": args.iters, "n_fft": f.n_fft, "hop_length": f.hop_length,
        "samples": length, "best_ms_per_note": {w: round(s * 1e3, 2) for w, s in best.items()},
        "all_rounds_ms_per_note": {w: [round(x * 1e3, 2) for x in s] for w, s in seconds.items()},
        "batch": GRIFFIN_LIM_BATCH,
        "speedup": round(best["librosa"] / best["torch_batched"], 2),
        "speedup_vs_torch_istft": round(best["torch_istft"] / best["torch_batched"], 2),
        "speedup_vs_torch_ops": round(best["torch_ops"] / best["torch_batched"], 2),
        "relative_l2_difference": {w: float(np.linalg.norm(a - ref) / np.linalg.norm(ref))
                                   for w, a in audio.items() if w != "librosa"},
        "max_abs_difference": {w: float(np.abs(a - ref).max()) for w, a in audio.items() if w != "librosa"},
        **conditions(),
    }
    atomic_write_json(args.out, result)
    shown = ("best_ms_per_note", "speedup", "speedup_vs_torch_istft", "speedup_vs_torch_ops", "relative_l2_difference")
    print(json.dumps({k: result[k] for k in shown}, indent=2))


if __name__ == "__main__":
    main()
