"""Probes of what a representation holds: linear and nearest-neighbour classifiers of family, source, pitch.

A probe is fitted on the features of one set of instruments and scored on unseen instruments,
either once (train split -> test split) or under cross-validation grouped by instrument.
Features are standardised on the fitting set. ``pitch1`` scores a pitch prediction within one
semitone as right.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from vaelib.analysis.diagnostics import pca_transform
from vaelib.analysis.pca_store import spectrogram_pca
from vaelib.exceptions import ParameterError

__all__ = [
    "PROBE_TARGETS",
    "PROBE_KINDS",
    "PROBE_KEYS",
    "make_probe",
    "accuracy",
    "FittedProbes",
    "fit_probes",
    "score_probes",
    "cv_probes",
    "grouped_predictions",
    "pca_features",
    "probe_table",
    "pitch_errors",
    "octave_label",
    "midi_hz",
]

# target name -> metadata column it predicts
PROBE_TARGETS = {"family": "instrument_family_str", "source": "instrument_source_str", "pitch": "pitch"}
PROBE_KINDS = ("logreg", "knn")
# The keys every probe result carries: family/source/pitch exact, and pitch within one semitone.
PROBE_KEYS = tuple(f"{t}_{k}" for t in ("family", "source", "pitch", "pitch1") for k in PROBE_KINDS)
LOGREG_MAX_ITER = 2000


def make_probe(kind: str, *, knn_k: int, seed: int = 0) -> Pipeline:
    """A standardising probe: ``logreg`` (multinomial logistic regression) or ``knn`` (k nearest neighbours)."""
    if kind == "logreg":
        clf = LogisticRegression(max_iter=LOGREG_MAX_ITER, random_state=seed)
    elif kind == "knn":
        if knn_k < 1:
            raise ParameterError(f"knn_k: expected >= 1, got {knn_k}")
        clf = KNeighborsClassifier(n_neighbors=knn_k)
    else:
        raise ParameterError(f"kind: expected one of {PROBE_KINDS}, got {kind!r}")
    return make_pipeline(StandardScaler(), clf)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray, *, tolerance: int = 0) -> float:
    """Share of right predictions; with ``tolerance`` > 0 (numeric labels) within that distance counts as right."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) != len(y_pred) or len(y_true) == 0:
        raise ParameterError(f"accuracy: {len(y_true)} labels and {len(y_pred)} predictions")
    if tolerance:
        return float(np.mean(np.abs(y_true.astype(np.int64) - y_pred.astype(np.int64)) <= tolerance))
    return float(np.mean(y_true == y_pred))


class _Constant:
    """A probe fitted on one class: every prediction is that class (sklearn's logistic regression refuses this)."""

    def __init__(self, label: object) -> None:
        self.label = label

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.label)


def _serial_blas() -> threadpool_limits:
    """One BLAS thread while probes fit and predict. Their products are small (notes x 32 dimensions against
    32 x classes): OpenBLAS's second thread costs more in hand-offs and spinning than it computes, and on 2
    cores the probes of the default run took 22.7 s with it and 10.4 s without."""
    return threadpool_limits(limits=1, user_api="blas")


def _fit(kind: str, x_fit: np.ndarray, y_fit: np.ndarray, *, knn_k: int, seed: int) -> Pipeline | _Constant:
    if len(np.unique(y_fit)) < 2:
        return _Constant(y_fit[0])
    k = min(knn_k, len(x_fit))
    return make_probe(kind, knn_k=k, seed=seed).fit(x_fit, y_fit)


def _fit_predict(kind: str, x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray, *, knn_k: int,
                 seed: int) -> np.ndarray:
    with _serial_blas():
        return _fit(kind, x_fit, y_fit, knn_k=knn_k, seed=seed).predict(x_eval)


@dataclass
class FittedProbes:
    """Every probe of ``PROBE_TARGETS`` x ``PROBE_KINDS`` fitted once, to score any number of note sets."""

    models: dict[tuple[str, str], Pipeline | _Constant]  # (target, kind) -> fitted probe
    dims: int

    def score(self, x_eval: np.ndarray, meta_eval: pd.DataFrame) -> dict[str, float]:
        """Accuracy in [0, 1] on (``x_eval`` [shape=(notes, dims)], ``meta_eval``) for every key of ``PROBE_KEYS``.

        Raises
        ------
        ParameterError
            ``x_eval`` and ``meta_eval`` differ in length, there are no notes, or the dimensions differ
            from the fitted ones.
        """
        if len(x_eval) != len(meta_eval) or len(x_eval) == 0:
            raise ParameterError(f"score: {len(x_eval)} eval features for {len(meta_eval)} rows (at least one needed)")
        if np.ndim(x_eval) != 2 or np.shape(x_eval)[1] != self.dims:
            raise ParameterError(f"score: features of shape {np.shape(x_eval)}, the probes were fitted on {self.dims}"
                                 " dimensions")
        out: dict[str, float] = {}
        with _serial_blas():
            for (target, kind), model in self.models.items():
                y_eval = meta_eval[PROBE_TARGETS[target]].to_numpy()
                pred = model.predict(x_eval)
                out[f"{target}_{kind}"] = accuracy(y_eval, pred)
                if target == "pitch":
                    out[f"pitch1_{kind}"] = accuracy(y_eval, pred, tolerance=1)
        return {k: out[k] for k in PROBE_KEYS}


def fit_probes(x_fit: np.ndarray, meta_fit: pd.DataFrame, *, knn_k: int, seed: int = 0) -> FittedProbes:
    """Fit every probe on (``x_fit`` [shape=(notes, dims)], ``meta_fit`` with the columns of ``PROBE_TARGETS``)."""
    if len(x_fit) != len(meta_fit) or len(x_fit) == 0:
        raise ParameterError(f"fit_probes: {len(x_fit)} fit features for {len(meta_fit)} rows (at least one needed)")
    with _serial_blas():
        models = {(target, kind): _fit(kind, x_fit, meta_fit[column].to_numpy(), knn_k=knn_k, seed=seed)
                  for target, column in PROBE_TARGETS.items() for kind in PROBE_KINDS}
    return FittedProbes(models=models, dims=int(np.shape(x_fit)[1]))


def score_probes(x_fit: np.ndarray, meta_fit: pd.DataFrame, x_eval: np.ndarray, meta_eval: pd.DataFrame, *,
                 knn_k: int, seed: int = 0) -> dict[str, float]:
    """Fit every probe on (``x_fit``, ``meta_fit``) and score it on (``x_eval``, ``meta_eval``).

    Parameters
    ----------
    x_fit, x_eval : [shape=(notes, dims)] features (e.g. mu, or PCA coefficients).
    meta_fit, meta_eval : the notes' metadata with the columns of ``PROBE_TARGETS``.

    Returns
    -------
    Accuracy in [0, 1] for every key of ``PROBE_KEYS``.
    """
    if len(x_fit) != len(meta_fit) or len(x_eval) != len(meta_eval):
        raise ParameterError(f"score_probes: {len(x_fit)}/{len(meta_fit)} fit and "
                             f"{len(x_eval)}/{len(meta_eval)} eval features/rows")
    return fit_probes(x_fit, meta_fit, knn_k=knn_k, seed=seed).score(x_eval, meta_eval)


def _check_folds(n_folds: int, groups: np.ndarray) -> None:
    n_groups = len(np.unique(groups))
    if n_folds < 2 or n_groups < n_folds:
        raise ParameterError(f"n_folds: {n_folds} folds need at least as many groups, got {n_groups}")


def cv_probes(x: np.ndarray, meta: pd.DataFrame, *, groups: np.ndarray, n_folds: int, knn_k: int,
              seed: int = 0) -> dict[str, dict]:
    """Every probe under cross-validation grouped by ``groups`` (instruments): no instrument is in
    both the fitting and the scoring folds.

    Returns
    -------
    For every key of ``PROBE_KEYS``: ``{"mean", "std", "folds": [accuracy per fold]}``.
    """
    groups = np.asarray(groups)
    _check_folds(n_folds, groups)
    per_fold: dict[str, list[float]] = {k: [] for k in PROBE_KEYS}
    for fit_idx, eval_idx in GroupKFold(n_splits=n_folds).split(x, groups=groups):
        scores = score_probes(x[fit_idx], meta.iloc[fit_idx], x[eval_idx], meta.iloc[eval_idx],
                              knn_k=knn_k, seed=seed)
        for k, v in scores.items():
            per_fold[k].append(v)
    return {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "folds": [float(a) for a in v]}
            for k, v in per_fold.items()}


def grouped_predictions(kind: str, x: np.ndarray, y: np.ndarray, *, groups: np.ndarray, n_folds: int,
                        knn_k: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions of one probe: each note predicted by the probe fitted on the folds that hold
    none of its group (``GroupKFold`` over ``groups``), so no group is predicted by a probe that saw it.
    ``knn_k`` is the neighbours of a ``knn`` probe (a ``logreg`` one has none).

    Raises
    ------
    ParameterError
        Fewer groups than folds, fewer than 2 folds, or ``x``, ``y`` and ``groups`` of different lengths.
    """
    groups, y = np.asarray(groups), np.asarray(y)
    if not len(x) == len(y) == len(groups):
        raise ParameterError(f"grouped_predictions: {len(x)} features, {len(y)} labels, {len(groups)} groups")
    _check_folds(n_folds, groups)
    pred = np.empty(len(y), dtype=y.dtype)
    for fit_idx, eval_idx in GroupKFold(n_splits=n_folds).split(x, groups=groups):
        pred[eval_idx] = _fit_predict(kind, x[fit_idx], y[fit_idx], x[eval_idx], knn_k=knn_k, seed=seed)
    return pred


def pca_features(fit: np.ndarray, data: np.ndarray, *, n_components: int, seed: int = 0,
                 store: Path | None = None) -> np.ndarray:
    """The baseline features: PCA coefficients of the flattened spectrograms, axes fitted on ``fit``.

    Parameters
    ----------
    fit, data : [shape=(notes, 1, n_mels, frames)] spectrograms.
    store : folder of fitted PCAs to read the fit from or add it to (``vaelib.analysis.pca_store``).

    Returns
    -------
    [shape=(len(data), n_components)] float32
    """
    return pca_transform(spectrogram_pca(fit, n_components=n_components, seed=seed, store=store), data)


def probe_table(results: dict[str, dict], *, cv: dict[str, dict] | None = None) -> pd.DataFrame:
    """Side-by-side table: one row per probe key, one column per feature set (and ``<set> cv`` as
    'mean ± std' strings when ``cv`` is given)."""
    table = pd.DataFrame({name: [res[k] for k in PROBE_KEYS] for name, res in results.items()}, index=PROBE_KEYS)
    if cv:
        for name, res in cv.items():
            table[f"{name} (grouped CV)"] = [f"{res[k]['mean']:.3f} ± {res[k]['std']:.3f}" for k in PROBE_KEYS]
    return table.rename_axis("probe")


def midi_hz(pitch: np.ndarray | int) -> np.ndarray:
    """Fundamental frequency in Hz of a MIDI pitch (A4 = 69 = 440 Hz)."""
    return 440.0 * 2.0 ** ((np.asarray(pitch, dtype=np.float64) - 69.0) / 12.0)


def octave_label(octave: int) -> str:
    """'C2-B2 (65-123 Hz)': an octave by scientific pitch notation (C4 = MIDI 60) with its fundamentals."""
    lo, hi = (octave + 1) * 12, (octave + 1) * 12 + 11
    return f"C{octave}-B{octave} ({midi_hz(lo):.0f}-{midi_hz(hi):.0f} Hz)"


def pitch_errors(x_fit: np.ndarray, meta_fit: pd.DataFrame, x_eval: np.ndarray, meta_eval: pd.DataFrame, *,
                 kind: str = "logreg", knn_k: int = 5, seed: int = 0) -> pd.DataFrame:
    """The pitch probe's prediction for every evaluated note, to see where (which octaves, which
    instruments) the pitch probe of ``score_probes`` fails.

    Returns
    -------
    One row per row of ``meta_eval``: ``pitch``, ``predicted``, ``error`` (semitones, predicted -
    pitch), ``right`` (within one semitone, as ``pitch1``), ``octave`` (scientific: C4 = MIDI 60 is
    octave 4), ``octave_error`` (off by 12 or 24 semitones, +-1: the harmonic ambiguity of pitch),
    ``instrument_str``, ``instrument_family_str``.
    """
    if len(x_fit) != len(meta_fit) or len(x_eval) != len(meta_eval):
        raise ParameterError(f"pitch_errors: {len(x_fit)}/{len(meta_fit)} fit and "
                             f"{len(x_eval)}/{len(meta_eval)} eval features/rows")
    column = PROBE_TARGETS["pitch"]
    truth = meta_eval[column].to_numpy().astype(np.int64)
    pred = _fit_predict(kind, x_fit, meta_fit[column].to_numpy(), x_eval, knn_k=knn_k, seed=seed).astype(np.int64)
    error = pred - truth
    off = np.abs(error)
    return pd.DataFrame({
        "pitch": truth, "predicted": pred, "error": error, "right": off <= 1, "octave": truth // 12 - 1,
        "octave_error": (np.abs(off - 12) <= 1) | (np.abs(off - 24) <= 1),
        "instrument_str": meta_eval["instrument_str"].to_numpy(),
        "instrument_family_str": meta_eval["instrument_family_str"].to_numpy(),
    })
