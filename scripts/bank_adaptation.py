"""Does adapting to a held-out bank's notes, without their labels, carry the family probe further?

Two test-time adaptations from unsupervised domain adaptation, each given every note of the held-out
bank (no label, no program) and scored as 04's transfer evaluation scores (the family logistic probe,
standardised, fitted on the run's train split, on the notes of GM programs the train split never plays):

- ``bank standardised``: each feature is shifted and scaled so that its mean and standard deviation over
  the bank's notes are those over the train split, before the probe (on mu, and on the PCA baseline alike);
- ``BatchNorm adapted`` (AdaBN): the encoder's BatchNorm statistics are those of the bank's notes, not of
  the training data, and mu is encoded again; with and without the bank standardisation after it.

A gap between banks that is a shift or scale of the features (a bank recorded louder, brighter) is undone
by either; one in how the notes' content is arranged is not. Reported beside the plain transfer: the family
accuracy on mu and PCA under each, pitch within a semitone on mu and the reconstruction MSE of the decoder
from the adapted mu (no adaptation of the decoder: its input is the adapted mu).

Writes ``scripts/results/bank_adaptation.json`` with the figures and the machine, again after each run.

Usage: ``.venv/bin/python scripts/bank_adaptation.py RUN [RUN ...]``
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch

from vaelib.analysis.diagnostics import pca_transform, recon_mse
from vaelib.analysis.latent import decode_latents, encode_features
from vaelib.analysis.pca_store import pca_store, spectrogram_pca
from vaelib.analysis.probes import accuracy, make_probe
from vaelib.analysis.run import load_trained_run
from vaelib.analysis.transfer import train_programs, transfer_cache, unseen_programs
from vaelib.io import atomic_write_text
from vaelib.model.device import machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "bank_adaptation.json"
CHUNK = 2048
ADAPT_BATCH = 256


def _blocks(x: np.ndarray, size: int | None = None):
    """``x`` (a float16 memmap too) in float32 blocks of ``size`` notes (default ``CHUNK``)."""
    size = size or CHUNK
    for start in range(0, len(x), size):
        yield np.asarray(x[start:start + size], dtype=np.float32)


def encode_mu(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """mu of every note of ``x``."""
    return np.concatenate([encode_features(model, part)[0] for part in _blocks(x)])


@torch.no_grad()
def adapt_batchnorm(model: torch.nn.Module, x: np.ndarray, *, batch: int = ADAPT_BATCH,
                    seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` whose encoder BatchNorm layers hold the statistics of the notes of ``x`` (the
    cumulative mean and variance over batches of ``batch`` notes drawn in a random order), in eval mode.
    ``model`` itself is left as it is."""
    adapted = copy.deepcopy(model).eval()
    norms = [m for m in adapted.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if not norms:
        raise ValueError("adapt_batchnorm: the encoder has no BatchNorm layer (model.norm is not 'batch')")
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the batches, not a moving one
        norm.train()
    order = np.random.default_rng(seed).permutation(len(x))
    for start in range(0, len(x), batch):
        idx = np.sort(order[start:start + batch])
        if len(idx) > 1:  # BatchNorm cannot normalise one note
            adapted.encoder(torch.from_numpy(np.asarray(x[idx], dtype=np.float32)))
    for norm in norms:
        norm.eval()
    return adapted


def restandardise(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``features`` with each column's mean and standard deviation made those of ``reference``'s column."""
    std = features.std(axis=0)
    return (features - features.mean(axis=0)) / np.where(std > 0, std, 1.0) * reference.std(axis=0) + \
        reference.mean(axis=0)


def per_note_mse(x: np.ndarray, reconstruct) -> np.ndarray:
    """[shape=(notes,)] the MSE of each note's reconstruction, ``reconstruct(block, start)``, against its log-mel."""
    out, start = [], 0
    for part in _blocks(x):
        out.append(recon_mse(part, reconstruct(part, start)))
        start += len(part)
    return np.concatenate(out)


def decoded_mse(model: torch.nn.Module, x: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """[shape=(notes,)] the MSE of each note's decode of its ``mu``."""
    return per_note_mse(x, lambda part, start: decode_latents(model, mu[start:start + len(part)]))


def run_figures(name: str) -> dict:
    """The figures of the module docstring on the unseen programs of each of the run's transfer sets."""
    run = load_trained_run(name)
    cfg, model = run.cfg, run.model.eval()
    train_x, train_meta = run.cache.split("train")
    pca = spectrogram_pca(train_x, n_components=cfg.model.latent_dim, seed=cfg.run.seed, store=pca_store(cfg))
    fit = {"mu": encode_mu(model, train_x), "pca": pca_transform(pca, train_x)}
    family = {k: make_probe("logreg", knn_k=1, seed=cfg.run.seed).fit(v, train_meta["instrument_family_str"])
              for k, v in fit.items()}
    pitch = make_probe("logreg", knn_k=1, seed=cfg.run.seed).fit(fit["mu"], train_meta["pitch"])
    programs = train_programs(run)
    out = {"train_notes": int(len(train_meta)), "sets": {}}
    for i, entry in enumerate(cfg.analysis.transfer):
        _, cache = transfer_cache(entry, cfg, index=i, show_progress=False)
        mask, why = unseen_programs(cache.meta, programs)
        if mask is None or not mask.any():
            out["sets"][entry.name] = {"note": why or "no note of a program unseen in training"}
            continue
        x = cache.features
        mu = encode_mu(model, x)
        mu_bn = encode_mu(adapt_batchnorm(model, x, seed=cfg.run.seed), x)
        coef = pca_transform(pca, x)
        feats = {"mu": ("mu", mu), "mu, bank standardised": ("mu", restandardise(mu, fit["mu"])),
                 "mu, BatchNorm adapted": ("mu", mu_bn),
                 "mu, BatchNorm adapted and bank standardised": ("mu", restandardise(mu_bn, fit["mu"])),
                 "pca": ("pca", coef), "pca, bank standardised": ("pca", restandardise(coef, fit["pca"]))}
        y = cache.meta["instrument_family_str"].to_numpy()[mask]
        notes_pitch = cache.meta["pitch"].to_numpy()[mask]
        out["sets"][entry.name] = {
            "notes": int(mask.sum()),
            "family_logreg": {k: accuracy(y, family[kind].predict(f[mask])) for k, (kind, f) in feats.items()},
            "pitch1_logreg": {k: accuracy(notes_pitch, pitch.predict(f[mask]), tolerance=1)
                              for k, f in (("mu", mu), ("mu, BatchNorm adapted", mu_bn))},
            "recon_mse": {
                "mu": float(decoded_mse(model, x, mu)[mask].mean()),
                "mu, BatchNorm adapted": float(decoded_mse(model, x, mu_bn)[mask].mean()),
                "pca": float(per_note_mse(x, lambda part, _: pca.inverse_transform(pca_transform(pca, part))
                                          .reshape(part.shape))[mask].mean())},
        }
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
