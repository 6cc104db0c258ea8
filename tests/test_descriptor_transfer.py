"""scripts/descriptor_transfer.py: the descriptors a family probe is fitted on beside mu and PCA."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from vaelib.config import PROJECT_ROOT, FeatureConfig

_spec = importlib.util.spec_from_file_location("descriptor_transfer",
                                               PROJECT_ROOT / "scripts" / "descriptor_transfer.py")
descriptor_transfer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(descriptor_transfer)

CFG = FeatureConfig()


def _note(decay_db_per_frame: float, band: int, glide: float = 0.0) -> np.ndarray:
    """One note lit in one band (gliding ``glide`` bands a frame), its level falling by the rate given."""
    x = np.full((1, 1, CFG.n_mels, CFG.frames), -1.0, np.float32)
    for f in range(CFG.frames):
        b = min(CFG.n_mels - 1, int(round(band + glide * f)))
        x[0, 0, b, f] = 1.0 - decay_db_per_frame * f / (CFG.top_db / 2)
    return x


def test_the_envelope_and_the_centroid_trajectory_are_read_off_the_note():
    from vaelib.analysis.descriptors import DESCRIPTORS

    assert set(descriptor_transfer.LOG_SCALED) < set(DESCRIPTORS)  # a renamed descriptor would lose its log
    n6, env, cen = 6, descriptor_transfer.ENVELOPE_POINTS, descriptor_transfer.CENTROID_POINTS
    steady, decaying, gliding = (descriptor_transfer.descriptor_features(x, CFG) for x in (
        _note(0.0, 30), _note(0.3, 30), _note(0.0, 20, glide=0.5)))
    assert steady.shape == (1, n6 + env + cen)
    frames = np.linspace(0, CFG.frames - 1, env).astype(int)
    # the envelope: 0 dB throughout for the steady note, 0.3 dB a frame below its first for the decaying one
    # (down to 38 dB, where the other bands' floor adds under 0.05 dB)
    np.testing.assert_allclose(steady[0, n6:n6 + env], 0.0, atol=1e-3)
    np.testing.assert_allclose(decaying[0, n6:n6 + env], -0.3 * frames, atol=0.05)
    # the centroid relative to the note's onset: flat for both, rising half a band a frame for the glide
    np.testing.assert_allclose(steady[0, n6 + env:], 0.0, atol=1e-3)
    np.testing.assert_allclose(decaying[0, n6 + env:], 0.0, atol=0.05)  # the floor pulls it up a little
    rise = gliding[0, n6 + env:]
    # at the end: the top band (79, where the glide stops) less the mean of its first 8 frames' bands (21.75)
    assert np.all(np.diff(rise) > 0) and rise[-1] == pytest.approx(79 - 21.75, abs=0.5)
    # an attack inside the first frame is one frame's log, not an outlier
    assert steady[0, 4] == pytest.approx(np.log(CFG.hop_length / CFG.sample_rate))
    # the register is left to the six descriptors: two steady notes in other bands have one shape
    np.testing.assert_allclose(descriptor_transfer.descriptor_features(_note(0.0, 60), CFG)[0, n6:], steady[0, n6:],
                               atol=1e-3)


def test_a_family_read_from_the_shape_is_found_and_one_from_noise_is_not():
    rng = np.random.default_rng(0)
    x = np.concatenate([_note(d, int(b)) for d, b in zip([0.0] * 20 + [1.5] * 20, rng.integers(10, 70, 40))])
    y = np.array(["organ"] * 20 + ["mallet"] * 20)
    feats = {"descriptors": descriptor_transfer.descriptor_features(x, CFG), "noise": rng.normal(size=(40, 5))}
    fit, held = np.arange(40) % 2 == 0, np.arange(40) % 2 == 1
    acc = descriptor_transfer.family_accuracy({k: v[fit] for k, v in feats.items()}, y[fit],
                                              {k: v[held] for k, v in feats.items()}, y[held])
    assert acc["descriptors"] == 1.0 and acc["noise"] < 0.85
