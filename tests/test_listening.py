"""vaelib.analysis.listening: Griffin-Lim rendering, the log-mel round trip check, wav writing, note choice."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from _fixtures_analysis import synthetic_meta

from vaelib.analysis.listening import (
    choose_listening_notes,
    invert_and_check,
    invert_to_audio,
    roundtrip_mae_db,
    write_wav,
)
from vaelib.config import FeatureConfig
from vaelib.data.features import log_mel
from vaelib.exceptions import ParameterError

CFG = FeatureConfig()


def harmonic_note(f0: float = 220.0) -> np.ndarray:
    t = np.arange(64000) / 16000
    env = np.exp(-t)
    return (0.3 * env * sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))).astype(np.float32)


def test_griffin_lim_output_length_and_finiteness():
    x = log_mel(harmonic_note(), cfg=CFG)[None]
    audio = invert_to_audio(x, cfg=CFG, n_iter=4)
    assert audio.shape == (1, CFG.frames * CFG.hop_length)
    assert audio.dtype == np.float32 and np.all(np.isfinite(audio))
    assert np.abs(audio).max() == pytest.approx(0.9, rel=1e-5)
    np.testing.assert_array_equal(audio, invert_to_audio(x, cfg=CFG, n_iter=4))  # seeded
    with pytest.raises(ParameterError):
        invert_to_audio(x, cfg=CFG, n_iter=0)


def test_round_trip_error_is_small_for_own_audio_and_large_for_other_audio():
    x = np.stack([log_mel(harmonic_note(220.0), cfg=CFG), log_mel(harmonic_note(1760.0), cfg=CFG)])
    audio, mae = invert_and_check(x, cfg=CFG, n_iter=16)
    assert mae.shape == (2,) and np.all(mae < 16.0), mae
    swapped = roundtrip_mae_db(x, audio[::-1], cfg=CFG)
    assert np.all(swapped > mae + 5.0), (mae, swapped)
    loud = roundtrip_mae_db(x, audio, cfg=CFG, above_db=-40.0)  # the note itself, without the -80 dB floor
    assert np.all(loud < mae) and np.all(loud < 8.0), (loud, mae)


def test_round_trip_ignores_the_level_of_the_source_under_ref_max():
    x = np.maximum(log_mel(harmonic_note(), cfg=CFG)[None], -0.5)  # floor at -40 dB, so nothing clips below
    quieter = x - 0.25  # 10 dB lower everywhere: the same sound under ref='max'
    audio = invert_to_audio(x, cfg=CFG, n_iter=8)
    np.testing.assert_allclose(roundtrip_mae_db(quieter, audio, cfg=CFG), roundtrip_mae_db(x, audio, cfg=CFG),
                               atol=1e-4)


def test_write_wav(tmp_path):
    audio = 0.5 * np.sin(np.linspace(0, 100, 16000)).astype(np.float32)
    path = write_wav(tmp_path / "a" / "note.wav", audio, sample_rate=16000)
    back, sr = sf.read(path, dtype="float32")
    assert sr == 16000 and len(back) == 16000
    np.testing.assert_allclose(back, audio, atol=1e-4)
    with pytest.raises(ParameterError):
        write_wav(tmp_path / "bad.wav", np.array([np.nan]), sample_rate=16000)


def test_listening_notes_cycle_through_families():
    meta = synthetic_meta()
    idx = choose_listening_notes(meta, n=6, pitch=58, velocity=127)
    picked = meta.iloc[idx]
    assert len(idx) == 6 and picked["instrument_str"].is_unique
    assert set(picked["instrument_family_str"].iloc[:4]) == {"keyboard", "string", "brass", "guitar"}
    assert set(picked["pitch"]) == {56} and set(picked["velocity"]) == {127}


def test_round_trip_of_silence_is_silence():
    silent = -np.ones((1, 1, CFG.n_mels, CFG.frames), np.float32)
    audio = np.zeros((1, CFG.frames * CFG.hop_length), np.float32)
    np.testing.assert_array_equal(roundtrip_mae_db(silent, audio, cfg=CFG), [0.0])
    assert np.isnan(roundtrip_mae_db(silent, audio, cfg=CFG, above_db=-40.0)[0])  # no loud cell to average
