"""scripts/pitch_proxy.py: the grouped-CV probe the default features were chosen on."""

from __future__ import annotations

import importlib.util

import numpy as np

from vaelib.config import PROJECT_ROOT, config_from_dict

_spec = importlib.util.spec_from_file_location("pitch_proxy", PROJECT_ROOT / "scripts" / "pitch_proxy.py")
pitch_proxy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pitch_proxy)


def _notes(rng: np.random.Generator, n_instruments: int = 10, pitches=range(40, 80, 2)):
    pitch = np.array([p for _ in range(n_instruments) for p in pitches])
    groups = np.repeat([f"inst_{i}" for i in range(n_instruments)], len(pitches))
    # a pitch-dependent bump over 80 "bands" plus an instrument-specific tilt and noise
    bands = np.arange(80)
    x = np.exp(-0.5 * ((bands[None] - (pitch[:, None] - 30)) / 1.5) ** 2)
    tilt = rng.normal(size=(n_instruments, 80))[np.repeat(np.arange(n_instruments), len(pitches))]
    return x + 0.1 * tilt + 0.05 * rng.normal(size=x.shape), pitch, groups


def test_probe_finds_pitch_on_unseen_instruments_and_not_on_shuffled_labels():
    rng = np.random.default_rng(0)
    x, pitch, groups = _notes(rng)
    folds = pitch_proxy.grouped_cv_pitch(x, pitch, groups, 5)
    assert len(folds) == 5 and min(folds) > 0.9
    shuffled = pitch_proxy.grouped_cv_pitch(x, rng.permutation(pitch), groups, 5)
    assert np.mean(shuffled) < 0.3  # 20 pitches 2 apart: chance within a semitone is 1/20


def test_candidates_are_valid_feature_settings():
    for name, changes in pitch_proxy.CANDIDATES.items():
        # through the params validator, which checks names, choices and ranges (dataclasses.replace does not)
        cfg = config_from_dict({"features": changes}, where=f"CANDIDATES[{name!r}]").features
        assert {k: getattr(cfg, k) for k in changes} == changes, name
    assert pitch_proxy.CANDIDATES["htk_2048"] == {"mel_scale": "htk", "n_fft": 2048}
    assert pitch_proxy.CANDIDATES["slaney_1024"] == {"mel_scale": "slaney", "n_fft": 1024}
