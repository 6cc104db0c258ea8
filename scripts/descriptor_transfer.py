"""Do hand-made audio descriptors carry a family probe to other SoundFonts better than the learned space?

For each finished run named, the family logistic probe of 04's transfer evaluation (standardised
features, fitted on the run's train split, scored on the notes of GM programs the train split never
plays) is fitted on four more feature sets beside mu and the PCA baseline:

- ``descriptors``: the six of ``vaelib.analysis.descriptors`` (centroid, bandwidth and roll-off in log Hz,
  flatness, the log of the attack time plus one frame, so that an attack inside the first frame is not an
  outlier, temporal centroid) and the shape of the note over time: the frame energy at 16 evenly spaced
  frames (dB below the note's loudest frame) and the mel-band centroid at 8 (bands above its mean over
  the first ``ONSET_FRAMES``, so the trajectory and not the register);
- ``pca + descriptors`` and ``mu + descriptors``: each beside the descriptors.

The descriptors name what a family is made of in any synthesis (a struck note decays, a brass note
brightens as it swells), so if they read the held-out banks' families better than PCA does, a model
asked to keep them in mu would be one way to the transfer target. Each run's ``analysis.transfer``
datasets are read as its 04 reads them: rendered and their features cached first when missing.

Writes ``scripts/results/descriptor_transfer.json`` with the figures and the machine, again after each run.

Usage: ``.venv/bin/python scripts/descriptor_transfer.py RUN [RUN ...]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from vaelib.analysis.descriptors import mel_power, note_descriptors
from vaelib.analysis.diagnostics import pca_transform
from vaelib.analysis.latent import encode_features
from vaelib.analysis.pca_store import pca_store, spectrogram_pca
from vaelib.analysis.probes import make_probe
from vaelib.analysis.run import load_trained_run
from vaelib.analysis.transfer import train_programs, transfer_cache, unseen_programs
from vaelib.config import FeatureConfig
from vaelib.io import atomic_write_text
from vaelib.model.device import machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "descriptor_transfer.json"
LOG_SCALED = ("centroid", "bandwidth", "rolloff")  # spans of octaves: read in logs
ENVELOPE_POINTS = 16
CENTROID_POINTS = 8
ONSET_FRAMES = 8  # the centroid's reference: its mean over the note's first 250 ms
CHUNK = 2048


def descriptor_features(x: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """[shape=(notes, 6 + ENVELOPE_POINTS + CENTROID_POINTS)] the descriptors of every note of ``x``
    (normalised log-mel, [shape=(notes, 1, n_mels, frames)]), as the module docstring lists them."""
    table = note_descriptors(x, cfg=cfg)
    frame_s = cfg.hop_length / cfg.sample_rate
    six = np.column_stack([np.log(table[c]) if c in LOG_SCALED else np.log(table[c] + frame_s) if c == "attack"
                           else table[c] for c in table.columns])
    frames = np.linspace(0, cfg.frames - 1, ENVELOPE_POINTS).astype(int)
    centroid_frames = np.linspace(0, cfg.frames - 1, CENTROID_POINTS).astype(int)
    shape = []
    for start in range(0, len(x), CHUNK):
        power = mel_power(np.asarray(x[start:start + CHUNK], dtype=np.float32), cfg=cfg)  # (B, bands, frames)
        energy = power.sum(axis=1)
        envelope = 10 * np.log10(energy / energy.max(axis=1, keepdims=True) + 1e-6)[:, frames]
        weights = power / (power.sum(axis=1, keepdims=True) + 1e-12)
        centroid = (weights * np.arange(cfg.n_mels)[None, :, None]).sum(axis=1)  # in bands, per frame
        onset = centroid[:, :ONSET_FRAMES].mean(axis=1, keepdims=True)
        shape.append(np.hstack([envelope, centroid[:, centroid_frames] - onset]))
    return np.hstack([six, np.concatenate(shape)])


def family_accuracy(fit: dict[str, np.ndarray], y_fit: np.ndarray, scored: dict[str, np.ndarray],
                    y: np.ndarray, *, seed: int = 0) -> dict[str, float]:
    """Accuracy of the family logistic probe of each feature set, fitted on ``fit``, on ``scored``."""
    return {name: float(np.mean(make_probe("logreg", knn_k=1, seed=seed).fit(x, y_fit).predict(scored[name]) == y))
            for name, x in fit.items()}


def _feature_sets(model: torch.nn.Module, pca, x: np.ndarray, cfg: FeatureConfig) -> dict[str, np.ndarray]:
    """Every feature set of the notes of ``x`` (a float16 memmap is read in blocks)."""
    mu = np.concatenate([encode_features(model, np.asarray(x[s:s + CHUNK], dtype=np.float32))[0]
                         for s in range(0, len(x), CHUNK)])
    coef, desc = pca_transform(pca, x), descriptor_features(x, cfg)
    return {"mu": mu, "pca": coef, "descriptors": desc, "pca + descriptors": np.hstack([coef, desc]),
            "mu + descriptors": np.hstack([mu, desc])}


def run_figures(name: str) -> dict:
    """The family probes of every feature set on the unseen programs of each of the run's transfer sets."""
    run = load_trained_run(name)
    cfg = run.cfg
    train_x, train_meta = run.cache.split("train")
    pca = spectrogram_pca(train_x, n_components=cfg.model.latent_dim, seed=cfg.run.seed, store=pca_store(cfg))
    fit = _feature_sets(run.model, pca, train_x, cfg.features)
    programs = train_programs(run)
    out = {"train_notes": int(len(train_meta)), "sets": {}}
    for i, entry in enumerate(cfg.analysis.transfer):
        _, cache = transfer_cache(entry, cfg, index=i, show_progress=False)
        mask, why = unseen_programs(cache.meta, programs)
        if mask is None or not mask.any():
            out["sets"][entry.name] = {"note": why or "no note of a program unseen in training"}
            continue
        scored = {k: v[mask] for k, v in _feature_sets(run.model, pca, cache.features, cfg.features).items()}
        y = cache.meta["instrument_family_str"].to_numpy()[mask]
        out["sets"][entry.name] = {"notes": int(mask.sum()), "family_logreg": family_accuracy(
            fit, train_meta["instrument_family_str"].to_numpy(), scored, y, seed=cfg.run.seed)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="names of finished runs (reports/<run>/) with analysis.transfer")
    args = ap.parse_args()
    figures = {}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for name in args.runs:
        figures[name] = run_figures(name)
        for bank, f in figures[name]["sets"].items():
            print(name, bank, {k: round(v, 3) for k, v in f.get("family_logreg", {}).items()}, flush=True)
        # after every run: a run that fails later leaves the figures of those before it
        atomic_write_text(RESULTS, json.dumps({"runs": figures, "machine": machine_info()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
