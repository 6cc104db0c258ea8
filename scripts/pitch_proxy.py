"""Which log-mel resolves pitch best, judged without the test split.

For each candidate feature setting (mel scale, FFT size, fmin) this builds the feature cache of the
``--params`` dataset, takes each note's mean spectrum over its held part (frames 4-39, ~0.1-1.2 s:
80 numbers), and scores a logistic pitch probe under 5-fold cross-validation grouped by instrument over
the **train and valid** instruments only. It is the cheap proxy the default run's features were chosen
on (docs/results.md, "The representation"); a training per candidate would cost minutes each.

Writes ``scripts/results/pitch_proxy.json`` with the figures and the machine.

Usage: ``.venv/bin/python scripts/pitch_proxy.py [--params params/default.yaml] [--folds 5]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vaelib.config import PROJECT_ROOT, load_config, project_relative
from vaelib.data.cache import build_feature_cache
from vaelib.data.nsynth import load_dataset
from vaelib.data.prepare import ensure_dataset
from vaelib.io import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "pitch_proxy.json"
HELD_FRAMES = slice(4, 40)  # past the onset, before the release at 3 s
CANDIDATES = {
    "slaney_1024": {"mel_scale": "slaney", "n_fft": 1024},
    "slaney_2048": {"mel_scale": "slaney", "n_fft": 2048},
    "htk_1024": {"mel_scale": "htk", "n_fft": 1024},
    "htk_2048": {"mel_scale": "htk", "n_fft": 2048},
    "htk_2048_fmin0": {"mel_scale": "htk", "n_fft": 2048, "fmin": 0.0},
    "htk_2048_fmin20": {"mel_scale": "htk", "n_fft": 2048, "fmin": 20.0},
    "htk_4096": {"mel_scale": "htk", "n_fft": 4096},
}


def grouped_cv_pitch(x: np.ndarray, pitch: np.ndarray, groups: np.ndarray, folds: int) -> list[float]:
    """Accuracy within one semitone of a logistic probe, one figure per instrument-grouped fold."""
    scores = []
    for fit, held in GroupKFold(folds).split(x, pitch, groups):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        probe.fit(x[fit], pitch[fit])
        scores.append(float(np.mean(np.abs(probe.predict(x[held]) - pitch[held]) <= 1)))
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=PROJECT_ROOT / "params" / "default.yaml")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    cfg = load_config(args.params)
    ensure_dataset(cfg)
    df = load_dataset(cfg.data, seed=cfg.run.seed)
    seen = df[df["split"] != "test"].reset_index(drop=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="pitch_proxy_") as tmp:
        for name, changes in CANDIDATES.items():
            feat = dataclasses.replace(cfg.features, **changes, cache_dir=tmp)
            cache = build_feature_cache(seen, feat, show_progress=False)
            x = np.asarray(cache.features[:, 0, :, HELD_FRAMES], dtype=np.float32).mean(axis=-1)
            folds = grouped_cv_pitch(x, cache.meta["pitch"].to_numpy(), cache.meta["instrument_str"].to_numpy(),
                                     args.folds)
            results[name] = {"features": changes, "folds": folds, "mean": float(np.mean(folds)),
                             "std": float(np.std(folds))}
            print(f"{name:18s} {np.mean(folds):.3f} +- {np.std(folds):.3f}", flush=True)
    out = {
        "what": "logistic pitch probe (within one semitone) on each note's mean log-mel over frames 4-39, "
                f"{args.folds}-fold CV grouped by instrument over the train+valid instruments (test unused)",
        "params": project_relative(args.params), "n_notes": len(seen),
        "n_instruments": int(seen["instrument_str"].nunique()),
        "candidates": results,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
