"""04_latent_map as calls: the embedding table, 2-D maps, probes against PCA, where the pitch probe
fails, and interpolations between instruments, with the metrics they give."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vaelib.analysis.interpolate import choose_pairs, interpolate_pairs, summarize_paths
from vaelib.analysis.latent import Projection, maps_of_mu, write_embedding_table
from vaelib.analysis.latent_cache import run_latents
from vaelib.analysis.map_store import map_store
from vaelib.analysis.pca_store import pca_store
from vaelib.analysis.probes import (
    cv_probes,
    midi_hz,
    octave_label,
    pca_features,
    pitch_errors,
    score_probes,
)
from vaelib.analysis.run import TrainedRun
from vaelib.analysis.targets import evaluate_targets
from vaelib.config import FeatureConfig
from vaelib.data.features import mel_spacing_hz

__all__ = ["LatentSpace", "PitchBreakdown", "Interpolations", "embed_run", "map_latent_space", "probe_latent_space",
           "pitch_breakdown", "interpolate_run", "latent_map_metrics", "markdown_escape"]

SPLITS = ("train", "valid", "test")


def markdown_escape(text: str) -> str:
    """``text`` (a name from metadata) safe inside markdown shown in a report: HTML-escaped, and ``$``
    escaped so that the page's MathJax does not read what lies between two of them as TeX."""
    return html.escape(text).replace("$", "\\$")


@dataclass
class LatentSpace:
    """The embedding of every note of a run and its 2-D maps."""

    table: pd.DataFrame  # one row per note: metadata, mu_*, logvar_*
    mu: np.ndarray  # [shape=(notes, latent_dim)]
    split: np.ndarray  # [shape=(notes,)] 'train' / 'valid' / 'test'
    projections: dict[str, Projection]  # 'PCA' (and 'UMAP')

    @property
    def is_train(self) -> np.ndarray:
        return self.split == "train"

    @property
    def is_test(self) -> np.ndarray:
        return self.split == "test"

    def counts(self) -> tuple[dict, dict]:
        """Notes and instruments per split."""
        notes = {s: int((self.split == s).sum()) for s in SPLITS}
        instruments = {s: int(self.table.loc[self.split == s, "instrument_str"].nunique()) for s in SPLITS}
        return notes, instruments


@dataclass
class PitchBreakdown:
    """Where the logistic pitch probe fails on the test instruments, on mu and on PCA."""

    errors: dict[str, pd.DataFrame]  # features -> pitch_errors rows
    by_octave: pd.DataFrame  # per octave: notes, accuracy per features, f0, semitone and mel band spacing (Hz)
    by_instrument: pd.DataFrame  # per test instrument on mu: family, notes, accuracy, octave error share
    unresolved_share: float  # share of test notes whose harmonics are closer than two mel bands
    accuracy_unresolved: dict[str, float | None]  # None (not NaN, which is not JSON) for an empty group
    accuracy_resolved: dict[str, float | None]
    octave_error_share: float  # share of the wrong predictions on mu that are octave errors

    @property
    def text(self) -> str:
        """The breakdown in two sentences, for the report (markdown; instrument names HTML-escaped, since
        they come from metadata anyone may have written)."""
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        weakest = self.by_instrument.head(3)
        return (f"On mu, {self.unresolved_share:.0%} of the test notes have harmonics closer than two mel bands; "
                f"they score **{fmt(self.accuracy_unresolved['mu'])}** against "
                f"**{fmt(self.accuracy_resolved['mu'])}** for the others (PCA: {fmt(self.accuracy_unresolved['pca'])}"
                f" / {fmt(self.accuracy_resolved['pca'])}). {self.octave_error_share:.0%} of the wrong predictions "
                "on mu are octave errors. Weakest test instruments: "
                + "; ".join(f"{markdown_escape(name)} ({markdown_escape(r.family)}) {r.accuracy:.2f}, "
                            f"{r.octave_errors:.0%} octave errors"
                            for name, r in weakest.iterrows()) + ".")


@dataclass
class Interpolations:
    """Decoded paths between pairs of instruments and their continuity measures."""

    table: pd.DataFrame  # one row per (pair, method): the pair, path_measures
    paths: dict[tuple[str, str], dict]  # (pair, method) -> {"z", "x"}
    skipped: list[str]  # a sentence per pair that could not be formed
    summary: dict  # summarize_paths
    steps: int

    @property
    def skipped_text(self) -> str:
        """One line per pair that could not be formed (empty when every pair was)."""
        return "\n".join(f"skipped: {line}" for line in self.skipped)

    @property
    def text(self) -> str:
        s = self.summary
        return (f"Median largest-to-mean step ratio: **{s['interp_step_ratio_median']}** over {s['interp_n_paths']} "
                f"paths; median |Spearman| of the centroid: **{s['interp_centroid_spearman_median']}** over the "
                f"{s['interp_n_centroid_eligible']} paths whose end centroids differ by more than "
                f"{s['interp_centroid_min_rel_diff']:.0%}.")


def embed_run(run: TrainedRun, *, out: Path) -> LatentSpace:
    """Every note of the run encoded (``run_latents``: once for 03, 04 and 05), the table ``vaelib embed``
    writes for the run written to ``out`` (atomically; its folder checked before the work)."""
    from vaelib.io import writable_folder

    out = Path(out)
    writable_folder(out.parent)
    mu, logvar = run_latents(run)
    table = write_embedding_table(run.cache.meta, mu, logvar, out)
    split = table["split"].to_numpy()
    return LatentSpace(table=table, mu=mu, split=split, projections={})


def map_latent_space(space: LatentSpace, run: TrainedRun) -> dict[str, Projection]:
    """PCA (fitted on the train notes) and, unless ``analysis.umap`` is false, UMAP of mu."""
    space.projections = maps_of_mu(space.mu, is_train=space.is_train, cfg=run.cfg.analysis, seed=run.cfg.run.seed,
                                   store=map_store(run.cfg))
    return space.projections


def probe_latent_space(space: LatentSpace, run: TrainedRun) -> tuple[dict[str, np.ndarray], dict, dict, int]:
    """Probes of family, source and pitch on mu and on PCA features of the spectrograms, train -> test and
    under instrument-grouped cross-validation over every note.

    Returns
    -------
    features ('mu', 'pca' -> [shape=(notes, latent_dim)]), train-to-test scores, CV scores, folds used.
    """
    cfg, cache = run.cfg, run.cache
    train_x, _ = cache.split("train")
    features = {"mu": space.mu,
                "pca": pca_features(train_x, cache.features, n_components=cfg.model.latent_dim, seed=cfg.run.seed,
                                    store=pca_store(cfg))}
    tr, te, table = space.is_train, space.is_test, space.table
    probes = {name: score_probes(f[tr], table[tr], f[te], table[te], knn_k=cfg.analysis.knn_k, seed=cfg.run.seed)
              for name, f in features.items()}
    groups = table["instrument_str"].to_numpy()
    n_folds = min(cfg.analysis.probe_folds, len(np.unique(groups)))
    probes_cv = {name: cv_probes(f, table, groups=groups, n_folds=n_folds, knn_k=cfg.analysis.knn_k,
                                 seed=cfg.run.seed) for name, f in features.items()}
    return features, probes, probes_cv, n_folds


def _share_right(errors: pd.DataFrame, mask: np.ndarray) -> float | None:
    return float(errors.loc[mask, "right"].mean()) if mask.any() else None


def pitch_breakdown(features: dict[str, np.ndarray], space: LatentSpace, *, cfg: FeatureConfig,
                    seed: int) -> PitchBreakdown:
    """The logistic pitch probe note by note on the test instruments: accuracy by octave beside what
    the log-mel resolves there (a semitone against the mel band spacing at the octave's lowest note),
    by instrument, and for notes whose harmonics fall closer than two mel bands."""
    tr, te, table = space.is_train, space.is_test, space.table
    errors = {name: pitch_errors(f[tr], table[tr], f[te], table[te], seed=seed) for name, f in features.items()}
    mu_err = errors["mu"]
    octaves = np.array(sorted(mu_err["octave"].unique()))
    low_note = np.array([mu_err.loc[mu_err["octave"] == o, "pitch"].min() for o in octaves])
    by_octave = pd.DataFrame({
        "notes": mu_err.groupby("octave").size().to_numpy(),
        **{f"{name} accuracy": e.groupby("octave")["right"].mean().to_numpy() for name, e in errors.items()},
        "lowest f0 (Hz)": midi_hz(low_note),
        "semitone there (Hz)": midi_hz(low_note) * (2 ** (1 / 12) - 1),
        "mel band spacing there (Hz)": mel_spacing_hz(cfg, midi_hz(low_note)),
    }, index=[octave_label(o) for o in octaves]).rename_axis("octave of the played pitch")
    by_instrument = (mu_err.groupby("instrument_str")
                     .agg(family=("instrument_family_str", "first"), notes=("right", "size"),
                          accuracy=("right", "mean"), octave_errors=("octave_error", "mean"))
                     .sort_values("accuracy"))
    wrong = ~mu_err["right"]
    f0 = midi_hz(mu_err["pitch"])
    unresolved = np.asarray(f0 < 2 * mel_spacing_hz(cfg, f0))
    return PitchBreakdown(
        errors=errors, by_octave=by_octave, by_instrument=by_instrument, unresolved_share=float(unresolved.mean()),
        accuracy_unresolved={name: _share_right(e, unresolved) for name, e in errors.items()},
        accuracy_resolved={name: _share_right(e, ~unresolved) for name, e in errors.items()},
        octave_error_share=float(mu_err.loc[wrong, "octave_error"].mean()) if wrong.any() else 0.0)


def interpolate_run(space: LatentSpace, run: TrainedRun) -> Interpolations:
    """Linear and spherical paths for every family pair of ``analysis.interp_pairs``, decoded and measured."""
    a = run.cfg.analysis
    choices, skipped = choose_pairs(space.table, a.interp_pairs, pitch=a.interp_pitch, velocity=a.interp_velocity)
    table, paths = interpolate_pairs(run.model, space.mu, choices, cfg=run.cfg.features, steps=a.interp_steps,
                                     pitch_conditioning=run.cfg.model.pitch_conditioning)
    return Interpolations(table=table, paths=paths, skipped=skipped, summary=summarize_paths(table),
                          steps=a.interp_steps)


def latent_map_metrics(space: LatentSpace, probes: dict, probes_cv: dict, n_folds: int, pitch: PitchBreakdown,
                       interp: Interpolations, *, run: TrainedRun, descriptors: dict | None = None,
                       transfer: dict | None = None) -> dict:
    """What 04_latent_map writes to ``latent_map.json``, its targets included; ``descriptors`` (the
    ``metrics`` of ``vaelib.analysis.descriptors.describe_run``) goes under the key of that name, and
    ``transfer`` (the ``metrics`` of ``vaelib.analysis.transfer.evaluate_transfer``) under ``transfer``
    when it holds a dataset."""
    n_notes, n_instruments = space.counts()
    metrics = {
        "latent_dim": run.cfg.model.latent_dim,
        "embedded_notes": n_notes,
        "embedded_instruments": n_instruments,
        "probes": probes,
        "probes_cv": probes_cv,
        "probes_cv_folds": n_folds,
        "pitch1_logreg_by_octave": {name: dict(zip(pitch.by_octave.index, pitch.by_octave[f"{name} accuracy"]
                                                   .astype(float))) for name in pitch.errors},
        "pitch1_logreg_by_instrument": pitch.by_instrument["accuracy"].astype(float).to_dict(),
        "pitch1_logreg_unresolved_harmonics": pitch.accuracy_unresolved,
        "pitch1_logreg_resolved_harmonics": pitch.accuracy_resolved,
        "pitch_unresolved_share": pitch.unresolved_share,
        "pitch_octave_error_share": pitch.octave_error_share,
        "family_logreg_margin_vs_pca": probes["mu"]["family_logreg"] - probes["pca"]["family_logreg"],
        "pca_explained_2d": list(space.projections["PCA"].explained),
        **interp.summary,
        "interp_pairs": interp.table.drop(columns=["centroids_hz", "bandwidths_hz"]).to_dict(orient="records"),
        "interp_skipped": interp.skipped,
        "projection_shapes": {name: list(p.coords.shape) for name, p in space.projections.items()},
    }
    if descriptors is not None:
        metrics["descriptors"] = descriptors
    if transfer:
        metrics["transfer"] = transfer
    metrics["targets"] = evaluate_targets(metrics, notebook="04_latent_map", cfg=run.cfg)
    return metrics
