"""vaelib.analysis.probes: high accuracy on separable synthetic data, chance on shuffled labels, grouped CV."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _fixtures_analysis import random_spectrograms, synthetic_meta

from vaelib.analysis.probes import (
    PROBE_KEYS,
    accuracy,
    cv_probes,
    grouped_predictions,
    midi_hz,
    octave_label,
    pca_features,
    pitch_errors,
    probe_table,
    score_probes,
)
from vaelib.config import FeatureConfig
from vaelib.data.features import mel_spacing_hz
from vaelib.exceptions import ParameterError


def separable(meta, *, seed: int = 0, noise: float = 0.1) -> np.ndarray:
    """Features that hold family (one-hot), source (one-hot) and pitch (a line) plainly."""
    rng = np.random.default_rng(seed)
    fam = (meta["instrument_family_str"].to_numpy()[:, None] == np.unique(meta["instrument_family_str"])).astype(float)
    src = (meta["instrument_source_str"].to_numpy()[:, None] == np.unique(meta["instrument_source_str"])).astype(float)
    pitch = meta["pitch"].to_numpy()[:, None] / 4.0
    x = np.concatenate([fam, src, pitch], axis=1)
    return (x + noise * rng.normal(size=x.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def meta():
    return synthetic_meta(per_family=4)


def test_separable_features_are_read_by_every_probe(meta):
    x = separable(meta)
    train, test = (meta["split"] == "train").to_numpy(), (meta["split"] == "test").to_numpy()
    scores = score_probes(x[train], meta[train], x[test], meta[test], knn_k=3)
    assert list(scores) == list(PROBE_KEYS)
    assert all(v >= 0.9 for v in scores.values()), scores


def test_shuffled_labels_score_at_chance(meta):
    rng = np.random.default_rng(1)
    big = synthetic_meta(per_family=8, pitches=tuple(range(40, 80, 4)))
    x = separable(big)
    shuffled = big.copy()
    for col in ("instrument_family_str", "pitch"):
        shuffled[col] = rng.permutation(shuffled[col].to_numpy())
    half = np.arange(len(big)) % 2 == 0
    scores = score_probes(x[half], shuffled[half], x[~half], shuffled[~half], knn_k=5)
    # 4 families (chance 0.25), 10 pitches (chance 0.1, within one step 0.1 too: steps are 4 semitones)
    assert scores["family_logreg"] < 0.4 and scores["family_knn"] < 0.4, scores
    assert scores["pitch_logreg"] < 0.22 and scores["pitch_knn"] < 0.22, scores


def test_grouped_cv_keeps_instruments_apart(meta):
    x = separable(meta)
    cv = cv_probes(x, meta, groups=meta["instrument_str"].to_numpy(), n_folds=4, knn_k=3)
    assert set(cv) == set(PROBE_KEYS)
    assert all(len(v["folds"]) == 4 and 0 <= v["std"] <= 0.5 for v in cv.values())
    assert cv["family_logreg"]["mean"] > 0.9
    with pytest.raises(ParameterError, match="n_folds"):
        cv_probes(x, meta, groups=meta["instrument_str"].to_numpy(), n_folds=100, knn_k=3)


def test_grouped_predictions_never_come_from_a_probe_that_saw_the_group():
    # each of 20 groups has its own one-hot feature and a label drawn for the group: a probe that saw a group
    # reads its label off that feature; one that did not sees only zeros there and guesses
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(20), 10)
    labels = rng.permutation(np.repeat(["a", "b"], 10))[groups]
    x = (groups[:, None] == np.arange(20)).astype(np.float32) + 0.01 * rng.normal(size=(200, 20))
    seen = score_probes(x, _labelled(labels), x, _labelled(labels), knn_k=1)["family_logreg"]
    unseen = accuracy(labels, grouped_predictions("logreg", x, labels, groups=groups, n_folds=5, knn_k=1))
    assert seen == 1.0 and unseen <= 0.65, (seen, unseen)
    # a label the features carry across groups is read from groups never fitted on
    plain = np.where(labels == "a", 1.0, -1.0)[:, None] + 0.1 * rng.normal(size=(200, 1))
    assert accuracy(labels, grouped_predictions("logreg", plain, labels, groups=groups, n_folds=5, knn_k=1)) > 0.95
    with pytest.raises(ParameterError, match="n_folds: 5 folds need at least as many groups, got 3"):
        grouped_predictions("logreg", x, labels, groups=groups % 3, n_folds=5, knn_k=1)
    with pytest.raises(ParameterError, match="200 features, 199 labels"):
        grouped_predictions("logreg", x, labels[1:], groups=groups, n_folds=5, knn_k=1)


def _labelled(family: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"instrument_family_str": family, "instrument_source_str": "acoustic", "pitch": 60})


def test_accuracy_within_tolerance():
    assert accuracy(np.array([60, 61, 62]), np.array([60, 62, 65])) == pytest.approx(1 / 3)
    assert accuracy(np.array([60, 61, 62]), np.array([60, 62, 65]), tolerance=1) == pytest.approx(2 / 3)
    with pytest.raises(ParameterError):
        accuracy(np.array([1]), np.array([]))


def test_pca_features_and_table():
    x = random_spectrograms(20).astype(np.float32)
    feats = pca_features(x[:15], x, n_components=4)
    assert feats.shape == (20, 4) and np.all(np.isfinite(feats))
    res = {k: 0.5 for k in PROBE_KEYS}
    cv = {k: {"mean": 0.4, "std": 0.1, "folds": [0.3, 0.5]} for k in PROBE_KEYS}
    table = probe_table({"mu": res, "pca": res}, cv={"mu": cv})
    assert list(table.columns) == ["mu", "pca", "mu (grouped CV)"] and len(table) == len(PROBE_KEYS)


def test_pitch_errors_show_where_the_probe_fails():
    # pitch held plainly above MIDI 48 and not at all below it: the breakdown puts the failure in the
    # low octaves, its overall score is score_probes' pitch1, and octave slips are flagged as such
    meta = synthetic_meta(per_family=5, pitches=tuple(range(24, 72, 2)))
    rng = np.random.default_rng(0)
    pitch = meta["pitch"].to_numpy()
    x = np.where(pitch[:, None] >= 48, pitch[:, None] / 4.0, rng.normal(size=(len(meta), 1)) * 3.0).astype(np.float32)
    fit, ev = (meta["split"] == "train").to_numpy(), (meta["split"] == "test").to_numpy()
    err = pitch_errors(x[fit], meta[fit], x[ev], meta[ev], kind="knn", knn_k=3)
    assert len(err) == ev.sum() and list(err["instrument_str"]) == list(meta.loc[ev, "instrument_str"])
    scores = score_probes(x[fit], meta[fit], x[ev], meta[ev], knn_k=3)
    assert err["right"].mean() == pytest.approx(scores["pitch1_knn"])
    by_octave = err.groupby("octave")["right"].mean()
    assert list(by_octave.index) == [1, 2, 3, 4]  # MIDI 24-71: C1 to B4
    assert by_octave[3] > 0.9 and by_octave[4] > 0.9 and by_octave[1] < 0.5 and by_octave[2] < 0.5
    np.testing.assert_array_equal(err["error"], err["predicted"] - err["pitch"])
    assert (err["octave_error"] == err["error"].abs().isin([11, 12, 13, 23, 24, 25])).all()
    with pytest.raises(ParameterError, match="pitch_errors"):
        pitch_errors(x[fit], meta[ev], x[ev], meta[ev])


def test_octave_labels_and_mel_spacing():
    assert octave_label(4) == "C4-B4 (262-494 Hz)" and octave_label(1) == "C1-B1 (33-62 Hz)"
    assert midi_hz(69) == pytest.approx(440.0) and midi_hz(57) == pytest.approx(220.0)
    # Slaney's mel is linear below 1 kHz: 80 bands over 30-8000 Hz are ~37 Hz apart there, wider above
    spacing = mel_spacing_hz(FeatureConfig(), [65.0, 262.0, 4000.0])
    assert spacing[0] == pytest.approx(spacing[1]) and 30 < spacing[0] < 45 and spacing[2] > 3 * spacing[0]
    assert mel_spacing_hz(FeatureConfig(n_mels=160), 65.0) < 0.6 * spacing[0]
