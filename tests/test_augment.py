"""Recording-chain augmentation: each part does to a log-mel what its physics says, and nothing else."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vaelib.config import FeatureConfig, TrainConfig, load_config
from vaelib.exceptions import ConfigError
from vaelib.model.augment import N_DRAWS, RT60_MIN_S, WET_DB, Augmenter, augment_on
from vaelib.model.checkpoint import checkpoint_dir

FC = FeatureConfig(mel_scale="htk", n_fft=2048)
HALF = FC.top_db / 2.0


def _aug(**on) -> Augmenter:
    return Augmenter(TrainConfig(**on), FC)


def _db(x: torch.Tensor) -> np.ndarray:
    return ((x.double() - 1.0) * HALF).numpy()


def _x_from_db(db: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((np.clip(db, -FC.top_db, 0.0) / HALF + 1.0).astype(np.float32))


def _draws(n: int, **cols) -> torch.Tensor:
    """Uniforms with the named columns set (0 detune, 1 tilt, 2 bell gain, 3 bell centre, 4 reverb on,
    5 rt60, 6 wet, 7 gain); the rest at 0.5, which is 0 for the signed settings."""
    u = torch.full((n, N_DRAWS), 0.5, dtype=torch.float64)
    for k, v in cols.items():
        u[:, int(k[1:])] = torch.as_tensor(v, dtype=torch.float64)
    return u


def _octaves() -> np.ndarray:
    from vaelib.data.features import mel_frequencies
    return np.log2(mel_frequencies(FC) / 1000.0)


def test_off_by_default_and_refused_where_it_would_do_nothing(tmp_path):
    assert not augment_on(TrainConfig())
    cfg = load_config(None, [])
    assert Augmenter.from_config(cfg) is None
    assert Augmenter.from_config(load_config(None, ["train.augment_tilt=2"])) is not None
    with pytest.raises(ConfigError, match=r"train\.augment_gain \(3\.0\).*features\.ref 'max'"):
        load_config(None, ["train.augment_gain=3"])
    load_config(None, ["train.augment_gain=3", "features.ref=fixed"])
    with pytest.raises(ConfigError, match=r"train\.augment_detune: 500.0 is above the maximum 100"):
        load_config(None, ["train.augment_detune=500"])


def test_a_run_folder_changes_only_when_an_augmentation_is_on():
    base = load_config(None, [])
    same = load_config(None, ["train.augment_rt60=3"])  # the tail's length without a tail
    assert checkpoint_dir(same, "k") == checkpoint_dir(base, "k")
    folders = {checkpoint_dir(load_config(None, [s]), "k")
               for s in ("train.augment_detune=10", "train.augment_tilt=1", "train.augment_eq=3",
                         "train.augment_reverb=0.5")}
    assert len(folders) == 4 and checkpoint_dir(base, "k") not in folders


def test_tilt_adds_its_slope_per_octave_and_keeps_the_peak_at_0_db():
    db = np.full((2, 1, FC.n_mels, FC.frames), -40.0)
    db[:, :, :, 60:] = -FC.top_db  # the note's end is silence
    x = _x_from_db(db)
    out = _db(_aug(augment_tilt=3.0)(x, _draws(2, u1=[1.0, 0.0])))  # +3 and -3 dB per octave
    octv = _octaves()
    for row, slope in ((0, 3.0), (1, -3.0)):
        expected = -40.0 + slope * octv
        expected = expected - expected.max()  # re-referenced: the peak is 0 dB again
        expected = np.broadcast_to(np.clip(expected, -FC.top_db, 0)[:, None], (FC.n_mels, 60))
        np.testing.assert_allclose(out[row, 0, :, :60], expected, atol=1e-3)
        assert (out[row, 0, :, 60:] == -FC.top_db).all()  # the floor stays the floor


def test_bell_boosts_around_its_centre_only():
    x = _x_from_db(np.full((1, 1, FC.n_mels, FC.frames), -30.0))
    octv = _octaves()
    centre_u = 0.5
    out = _db(_aug(augment_eq=6.0)(x, _draws(1, u2=1.0, u3=centre_u)))[0, 0, :, 0]
    centre = octv[0] + centre_u * (octv[-1] - octv[0])
    gain = out - out.min()
    near, far = np.abs(octv - centre) < 0.1, np.abs(octv - centre) > 2.0
    assert gain[near].min() > 5.8 and gain[far].max() < 6.0 * np.exp(-0.5 * 4.0 ** 2) + 1e-3
    assert abs(octv[np.argmax(out)] - centre) < 0.1


def test_detune_moves_a_harmonic_by_its_cents():
    from vaelib.data.features import mel_frequencies
    f = mel_frequencies(FC)
    db = np.full((3, 1, FC.n_mels, FC.frames), -FC.top_db)
    db[:, :, 40, :] = 0.0  # one partial at band 40
    x = _x_from_db(db)
    out = _aug(augment_detune=100.0)(x, _draws(3, u0=[1.0, 0.0, 0.5]))  # +100, -100, 0 cents
    power = 10.0 ** (_db(out)[:, 0, :, 0] / 10.0)
    power[_db(out)[:, 0, :, 0] <= -FC.top_db] = 0.0
    centroid = (power * np.log2(f)).sum(axis=1) / power.sum(axis=1)  # in octaves
    base = np.log2(f[40])
    # linear interpolation between band centres puts the energy's centroid where the partial went
    np.testing.assert_allclose(centroid - base, [1 / 12, -1 / 12, 0.0], atol=0.01)
    np.testing.assert_array_equal(out[2].numpy(), x[2].numpy())  # no detune: the note as it was


def test_reverb_adds_a_causal_tail_that_decays_at_its_rt60():
    db = np.full((2, 1, FC.n_mels, FC.frames), -FC.top_db)
    db[:, :, :, 10] = 0.0  # a click at frame 10
    x = _x_from_db(db)
    frame_s = FC.hop_length / FC.sample_rate
    out = _db(_aug(augment_reverb=0.5, augment_rt60=2.2)(x, _draws(2, u4=[0.0, 0.9], u5=0.5, u6=0.0)))
    rt60 = RT60_MIN_S + 0.5 * (2.2 - RT60_MIN_S)
    tail = out[0, 0, 20, :]
    assert (tail[:10] == -FC.top_db).all() and tail[10] == pytest.approx(0.0, abs=1e-4)  # nothing before it
    assert tail[11] == pytest.approx(WET_DB[0], abs=1e-3)
    np.testing.assert_allclose(np.diff(tail[11:40]), -60.0 * frame_s / rt60, atol=1e-3)
    np.testing.assert_array_equal(out[1], _db(x[1:2])[0])  # drawn above the share: no tail


def test_gain_moves_a_fixed_reference_note_and_each_note_is_its_own():
    fixed = dataclasses.replace(FC, ref="fixed")
    aug = Augmenter(TrainConfig(augment_gain=10.0), fixed)
    x = _x_from_db(np.full((2, 1, FC.n_mels, FC.frames), -50.0))
    out = _db(aug(x, _draws(2, u7=[1.0, 0.0])))
    np.testing.assert_allclose(out[0], -40.0, atol=1e-3)
    np.testing.assert_allclose(out[1], -60.0, atol=1e-3)


def test_a_slice_of_a_batch_gets_what_the_whole_batch_gives_its_notes():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, FC.n_mels, FC.frames, generator=gen) * 2 - 1
    aug = _aug(augment_detune=20, augment_tilt=2, augment_eq=6, augment_reverb=0.5)
    u = aug.draw(8, torch.Generator().manual_seed(1))
    whole = aug(x.contiguous(memory_format=torch.channels_last), u)
    assert whole.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(whole[3:6], aug(x[3:6], u[3:6]), rtol=0, atol=1e-6)
    assert whole.min() >= -1.0 and whole.max() == 1.0  # every note re-referenced to its peak
    assert not torch.allclose(whole, x)
    with pytest.raises(ValueError, match="do not match a batch of 8"):
        aug(x, u[:3])


def _envelope_draws(n: int, decay, darkening) -> torch.Tensor:
    """The recording chain's uniforms at 0.5 (off), then the envelope's two (0: nothing, 1: the most)."""
    env = torch.stack([torch.as_tensor(decay, dtype=torch.float64).expand(n),
                       torch.as_tensor(darkening, dtype=torch.float64).expand(n)], dim=1)
    return torch.cat([_draws(n), env], dim=1)


def _decaying_note(peak_frame: int = 10, slope_db_per_frame: float = -0.3) -> np.ndarray:
    """One note: a rise to a peak at ``peak_frame``, a linear decay in dB after it, flat across bands."""
    t = np.arange(FC.frames)
    level = np.where(t < peak_frame, -20.0 + 20.0 * t / peak_frame, slope_db_per_frame * (t - peak_frame))
    return np.broadcast_to(level, (1, 1, FC.n_mels, FC.frames)).copy()


FRAME_S = FC.hop_length / FC.sample_rate


def test_decay_adds_its_loss_per_second_after_the_loudest_bin_only():
    db = _decaying_note()
    aug = _aug(augment_decay=10.0)
    assert aug.n_draws == N_DRAWS + 2
    t = np.arange(FC.frames)
    for u, rate in ((1.0, 10.0), (0.5, 5.0), (0.0, 0.0)):
        out = _db(aug(_x_from_db(db), _envelope_draws(1, u, 0.0)))[0, 0]
        expected = db[0, 0] - rate * np.clip(t - 10, 0, None) * FRAME_S
        np.testing.assert_allclose(out, np.clip(expected, -FC.top_db, 0.0), atol=1e-3)
        np.testing.assert_allclose(out[:, :11], db[0, 0, :, :11], atol=1e-4)  # the attack is the note's own


def test_darkening_loses_more_per_octave_as_the_note_goes_on_and_nothing_in_the_lowest_band():
    db = _decaying_note(slope_db_per_frame=-0.1)
    out = _db(_aug(augment_darkening=2.0)(_x_from_db(db), _envelope_draws(1, 0.0, 1.0)))[0, 0]  # 2 dB/oct/s
    octv = _octaves()
    for frame in (10, 40, 100):
        slope = np.polyfit(octv, out[:, frame], 1)[0]
        assert slope == pytest.approx(-2.0 * max(frame - 10, 0) * FRAME_S, abs=1e-3)
    np.testing.assert_allclose(out[0], db[0, 0, 0], atol=1e-4)


def test_the_peak_bin_keeps_its_place_so_nothing_is_re_referenced_or_unclipped():
    # the loudest bin sits after the loudest frame (a low band peaking late): decay starts there, so the
    # reference the cache gave the note holds, and a bin at the floor stays at the floor
    db = np.full((1, 1, FC.n_mels, FC.frames), -30.0)
    db[..., :20] = -6.0  # the loudest frame by power: every band at -6 dB
    db[..., 0, 25] = 0.0  # the loudest bin, later
    db[..., 40:, 50:] = -FC.top_db  # clipped: below the floor in the cache
    out = _db(_aug(augment_decay=60.0, augment_darkening=6.0)(_x_from_db(db), _envelope_draws(1, 1.0, 1.0)))[0, 0]
    assert out.max() == 0.0 and out[0, 25] == 0.0
    np.testing.assert_allclose(out[:, :26], db[0, 0, :, :26], atol=1e-4)
    assert (out[40:, 50:] == -FC.top_db).all() and (out <= db[0, 0] + 1e-4).all()  # only losses
    assert np.isfinite(out).all()


def test_envelope_draws_come_after_the_recording_chain_and_only_when_on():
    chain = _aug(augment_tilt=2.0)
    both = _aug(augment_tilt=2.0, augment_decay=20.0)
    assert chain.n_draws == N_DRAWS
    a = chain.draw(5, torch.Generator().manual_seed(3))
    b = both.draw(5, torch.Generator().manual_seed(3))
    assert b.shape == (5, N_DRAWS + 2) and torch.equal(a, b[:, :N_DRAWS])
    with pytest.raises(ValueError, match=r"do not match"):
        both(torch.zeros(5, 1, FC.n_mels, FC.frames), a)
    silent = -torch.ones(1, 1, FC.n_mels, FC.frames)  # a floor note stays silent whatever the envelope does
    out = _aug(augment_decay=120.0, augment_darkening=12.0)(silent, _envelope_draws(1, 1.0, 1.0))
    assert torch.equal(out, silent)


def test_envelope_settings_key_their_own_run_folders_only_when_on():
    base = load_config(None, [])
    assert checkpoint_dir(load_config(None, ["train.augment_decay=0"]), "k") == checkpoint_dir(base, "k")
    on = {checkpoint_dir(load_config(None, [s]), "k") for s in ("train.augment_decay=10",
                                                                 "train.augment_darkening=1")}
    assert len(on) == 2 and checkpoint_dir(base, "k") not in on
    assert augment_on(TrainConfig(augment_darkening=1.0))
