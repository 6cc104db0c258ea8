"""vaelib.data.features: normalised log-mel (shape, range, band placement, librosa agreement) and its inverse."""

from __future__ import annotations

import dataclasses

import librosa
import numpy as np
import pytest
import torch

from vaelib.config import FeatureConfig
from vaelib.data.features import (
    LogMelWorkspace,
    _power,
    feature_shape,
    inverse_log_mel,
    inverse_log_mels,
    log_mel,
    log_mel_batch,
    mel_filterbank,
    mel_frequencies,
    mel_spacing_hz,
    normalized_to_db,
)
from vaelib.exceptions import ParameterError

SR = 16000
CFG = FeatureConfig()
T = np.arange(4 * SR) / SR


def harmonic(f0: float, *, decay_s: float = 2.0, amp: float = 0.5) -> np.ndarray:
    tone = sum(amp / k * np.sin(2 * np.pi * k * f0 * T) for k in range(1, 6) if k * f0 < SR / 2)
    return (tone * np.exp(-T / decay_s)).astype(np.float32)


def librosa_reference(y: np.ndarray, cfg: FeatureConfig = CFG) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                         n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax, center=True,
                                         pad_mode="constant", power=2.0, htk=cfg.mel_scale == "htk")
    db = librosa.power_to_db(mel, ref=np.max, top_db=cfg.top_db)
    return (db / (cfg.top_db / 2) + 1.0)[:, : cfg.frames]


def test_shape_dtype_and_range():
    batch = torch.from_numpy(np.stack([harmonic(110.0), harmonic(440.0), harmonic(1760.0, amp=0.01)]))
    x = log_mel_batch(batch, cfg=CFG)
    assert feature_shape(CFG) == (1, 80, 128)
    assert x.shape == (3, 1, 80, 128) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert x.min() >= -1.0 and x.max() <= 1.0
    # each note's peak is the 0 dB reference (+1), its quietest cells are clipped at -80 dB (-1)
    assert torch.allclose(x.amax(dim=(1, 2, 3)), torch.ones(3))
    assert (x.amin(dim=(1, 2, 3)) == -1.0).all()
    assert mel_filterbank(CFG).shape == (80, 513)


def test_one_khz_sine_lands_in_its_mel_band():
    x = log_mel(np.sin(2 * np.pi * 1000.0 * T).astype(np.float32), cfg=CFG)[0]
    centres = mel_frequencies(CFG)
    assert centres.shape == (80,) and np.all(np.diff(centres) > 0)
    assert centres[0] > CFG.fmin and centres[-1] < CFG.fmax
    band = int(np.argmax(x.mean(axis=1)))
    nearest = int(np.argmin(np.abs(centres - 1000.0)))
    assert band == nearest, f"1 kHz peaks in band {band} ({centres[band]:.0f} Hz), expected {nearest}"
    assert abs(centres[band] - 1000.0) < (centres[band + 1] - centres[band - 1]) / 2
    # and a 4 kHz sine lands higher, near its own band
    x4 = log_mel(np.sin(2 * np.pi * 4000.0 * T).astype(np.float32), cfg=CFG)[0]
    assert abs(centres[int(np.argmax(x4.mean(axis=1)))] - 4000.0) < 150.0


@pytest.mark.parametrize("f0", [55.0, 261.6, 880.0])
def test_batched_torch_matches_librosa(f0):
    y = harmonic(f0)
    ref = librosa_reference(y)
    x = log_mel_batch(torch.from_numpy(np.stack([y, harmonic(123.0)])), cfg=CFG)[0, 0].numpy()
    assert ref.shape == x.shape == (80, 128)
    np.testing.assert_allclose(x, ref, atol=1e-3)  # 1e-3 normalised = 0.04 dB


def test_librosa_agreement_other_params():
    cfg = dataclasses.replace(CFG, n_mels=64, n_fft=2048, hop_length=256, frames=250, fmin=50.0, top_db=60.0)
    y = harmonic(330.0)
    x = log_mel(y, cfg=cfg)
    assert x.shape == (1, 64, 250)
    np.testing.assert_allclose(x[0], librosa_reference(y, cfg), atol=1e-3)


HTK = dataclasses.replace(CFG, mel_scale="htk", n_fft=2048)


@pytest.mark.parametrize("f0", [41.2, 440.0])
def test_htk_scale_matches_librosa_and_blocked_product(f0):
    y = harmonic(f0)
    x = log_mel(y, cfg=HTK)
    np.testing.assert_allclose(x[0], librosa_reference(y, HTK), atol=1e-3)
    torch.testing.assert_close(torch.from_numpy(x)[None], _dense_log_mel(torch.from_numpy(y)[None], HTK),
                               atol=1e-4, rtol=0)
    assert not np.allclose(x, log_mel(y, cfg=dataclasses.replace(HTK, mel_scale="slaney")), atol=0.05)


def test_htk_bands_are_narrower_than_slaney_at_low_frequencies():
    # why the scale is a parameter: Slaney's 80 bands from 30 Hz are 37 Hz apart up to 1 kHz, wider than
    # a whole tone anywhere below 300 Hz; HTK's are 23-29 Hz apart up to 250 Hz, 52 Hz at 1 kHz
    low = np.array([60.0, 100.0, 200.0])
    slaney, htk = mel_spacing_hz(CFG, low), mel_spacing_hz(HTK, low)
    np.testing.assert_allclose(slaney, 37.0, atol=1.0)
    assert np.all(htk < 0.8 * slaney) and np.all(np.diff(htk) > 0)
    assert mel_spacing_hz(HTK, 1000.0) > 1.3 * mel_spacing_hz(CFG, 1000.0)  # the price, around 1-2 kHz
    centres = mel_frequencies(HTK)
    assert centres.shape == (80,) and np.all(np.diff(centres) > 0)
    assert centres[0] < mel_frequencies(CFG)[0]  # HTK's first band sits lower (53 against 67 Hz)
    with pytest.raises(ParameterError, match="features.mel_scale.*'mel'"):
        mel_filterbank(dataclasses.replace(HTK, mel_scale="mel"))
    # a 1 kHz sine still lands in the band nearest 1 kHz on this scale
    band = int(np.argmax(log_mel(np.sin(2 * np.pi * 1000.0 * T).astype(np.float32), cfg=HTK)[0].mean(axis=1)))
    assert band == int(np.argmin(np.abs(centres - 1000.0)))


def test_batch_equals_one_by_one():
    ys = [harmonic(f) for f in (98.0, 392.0, 1568.0)]
    batch = log_mel_batch(torch.from_numpy(np.stack(ys)), cfg=CFG).numpy()
    for i, y in enumerate(ys):
        np.testing.assert_allclose(batch[i], log_mel(y, cfg=CFG), atol=1e-5)


def test_reference_modes():
    loud, quiet = harmonic(440.0, amp=0.5), harmonic(440.0, amp=0.05)
    np.testing.assert_allclose(log_mel(loud, cfg=CFG), log_mel(quiet, cfg=CFG), atol=1e-4)  # 'max': level-free
    fixed = dataclasses.replace(CFG, ref="fixed", ref_power=1e4)
    d = log_mel(loud, cfg=fixed).max() - log_mel(quiet, cfg=fixed).max()
    assert abs(d - 20.0 / 40.0) < 1e-3  # 20 dB quieter = 0.5 lower in the normalised scale


def test_short_audio_padded_with_silence():
    x = log_mel(harmonic(440.0)[: 2 * SR], cfg=CFG)[0]
    assert x.shape == (80, 128)
    assert np.all(x[:, 66:] == -1.0) and x[:, :60].max() == 1.0


def test_normalized_to_db():
    np.testing.assert_allclose(normalized_to_db(np.array([-1.0, 0.0, 1.0, 1.5]), cfg=CFG), [-80, -40, 0, 0])


@pytest.mark.parametrize("cfg", [CFG, HTK], ids=["slaney", "htk"])
def test_inverse_log_mel_round_trip(cfg):
    x = log_mel(harmonic(220.0), cfg=cfg)
    audio = inverse_log_mel(x, cfg=cfg, n_iter=16, seed=0)
    assert audio.shape == (128 * 500,) and audio.dtype == np.float32
    assert np.isfinite(audio).all() and abs(np.abs(audio).max() - 0.9) < 1e-4
    back = log_mel(audio, cfg=cfg)
    loud = x > 0.0  # cells above -40 dB
    assert np.abs(back - x)[loud].mean() < 0.1  # < 4 dB on the note itself
    # 0.82 at n_fft 1024, 0.71 at 2048: the longer window's quiet cells come back less exactly
    assert np.corrcoef(back.ravel(), x.ravel())[0, 1] > (0.75 if cfg.n_fft == 1024 else 0.65)
    # ... and far closer to its input than to another sound's log-mel
    other = log_mel(np.random.default_rng(0).standard_normal(4 * SR).astype(np.float32) * 0.1, cfg=cfg)
    assert np.abs(back - x).mean() < 0.3 * np.abs(other - x).mean()
    np.testing.assert_array_equal(audio, inverse_log_mel(x[0], cfg=cfg, n_iter=16, seed=0))


def test_inverse_log_mels_in_batches_give_each_note_what_it_gets_alone():
    # 6 notes: a batch of GRIFFIN_LIM_BATCH and a short one; a silent note stays silent, not NaN
    notes = [harmonic(f) for f in (110.0, 220.0, 330.0, 440.0, 550.0)] + [np.zeros(4 * SR, np.float32)]
    x = np.stack([log_mel(y, cfg=HTK) for y in notes])
    together = inverse_log_mels(x, cfg=HTK, n_iter=4, seed=3, mel_inverse="pinv")
    assert together.shape == (6, 128 * 500) and together.dtype == np.float32
    for xi, out in zip(x, together):
        alone = inverse_log_mel(xi, cfg=HTK, n_iter=4, seed=3, mel_inverse="pinv")
        np.testing.assert_allclose(out, alone, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.abs(together[:5]).max(axis=1), 0.9, atol=1e-6)
    assert np.isfinite(together).all()
    with pytest.raises(ParameterError, match=r"x: expected shape \(notes, 1, 80, 128\)"):
        inverse_log_mels(x[0, 0], cfg=HTK)


def _dense_log_mel(y: torch.Tensor, cfg) -> torch.Tensor:
    """The same pipeline with the full filterbank over every FFT bin (no cropping to its support)."""
    spec = torch.stft(y, n_fft=cfg.n_fft, hop_length=cfg.hop_length, window=torch.hann_window(cfg.n_fft),
                      center=True, pad_mode="constant", return_complex=True)
    mel = torch.from_numpy(mel_filterbank(cfg)) @ spec.abs().square()
    db = 10 * torch.log10(mel.clamp_min(1e-10))
    db = (db - db.amax(dim=(1, 2), keepdim=True)).clamp(-cfg.top_db, 0)
    x = (db / (cfg.top_db / 2) + 1)[..., : cfg.frames]
    return torch.nn.functional.pad(x, (0, cfg.frames - x.shape[-1]), value=-1.0).unsqueeze(1)


def test_blocked_filterbank_matches_the_dense_product():
    ys = torch.from_numpy(np.stack([harmonic(f) for f in (41.2, 196.0, 2093.0)]))
    torch.testing.assert_close(log_mel_batch(ys, cfg=CFG), _dense_log_mel(ys, CFG), atol=1e-4, rtol=0)
    odd = dataclasses.replace(CFG, n_mels=37, n_fft=512, hop_length=160, frames=300, fmin=300.0, fmax=5000.0)
    y = torch.from_numpy(harmonic(330.0)[None, : 3 * SR])
    torch.testing.assert_close(log_mel_batch(y, cfg=odd), _dense_log_mel(y, odd), atol=1e-4, rtol=0)
    # more bands than low-frequency bins: some bands read no bin at all (librosa warns) and stay silent
    narrow = dataclasses.replace(CFG, n_mels=128, n_fft=256, hop_length=128, frames=500, fmin=0.0)
    with pytest.warns(UserWarning, match="13 of the 128 mel bands hold no FFT bin"):
        dense = _dense_log_mel(y, narrow)
    torch.testing.assert_close(log_mel_batch(y, cfg=narrow), dense, atol=1e-4, rtol=0)


@pytest.mark.parametrize("change", [dict(fmin=7999.0, fmax=8000.0), dict(n_mels=256, n_fft=64, hop_length=64)])
def test_a_bank_whose_bands_mostly_read_no_bin_is_refused(change):
    with pytest.raises(ParameterError, match=r"features: \d+ of the \d+ mel bands .* hold no FFT bin"):
        mel_filterbank(dataclasses.replace(CFG, **change))


def test_digital_silence_is_minus_one_not_full_scale():
    ys = torch.from_numpy(np.stack([np.zeros(4 * SR, np.float32), harmonic(440.0, amp=1e-4)]))
    x = log_mel_batch(ys, cfg=CFG)
    assert torch.all(x[0] == -1.0)  # against its own maximum it would have been +1 everywhere
    assert x[1].max() == 1.0  # a very quiet note is still measured against its own peak


def test_reused_workspace_matches_a_fresh_computation():
    # batches of 3, then 1 (a short last batch), then 2 decoded in place, through one workspace:
    # nothing of an earlier batch leaks into a later one, and each result owns its memory
    ys = torch.from_numpy(np.stack([harmonic(f, amp=a) for f, a in
                                    ((55.0, 0.5), (440.0, 1e-3), (1760.0, 0.2), (98.0, 0.9), (3000.0, 0.05))]))
    ws = LogMelWorkspace(3, ys.shape[1], CFG)
    first = log_mel_batch(ys[:3], cfg=CFG, workspace=ws)
    second = log_mel_batch(ys[3:4], cfg=CFG, workspace=ws)
    ws.audio(2).copy_(ys[3:5])
    third = log_mel_batch(ws.audio(2), cfg=CFG, workspace=ws)
    torch.testing.assert_close(first, log_mel_batch(ys[:3], cfg=CFG), atol=0, rtol=0)
    torch.testing.assert_close(second, log_mel_batch(ys[3:4], cfg=CFG), atol=0, rtol=0)
    torch.testing.assert_close(third, log_mel_batch(ys[3:5], cfg=CFG), atol=0, rtol=0)
    assert first.data_ptr() != second.data_ptr() and not torch.equal(first[0], first[1])
    torch.testing.assert_close(first, librosa_batch(ys[:3]), atol=2e-3, rtol=0)
    # a batch larger than the workspace, or of another length, gets buffers of its own
    torch.testing.assert_close(log_mel_batch(ys, cfg=CFG, workspace=ws), log_mel_batch(ys, cfg=CFG), atol=0, rtol=0)
    short = ys[:2, : 2 * SR]
    torch.testing.assert_close(log_mel_batch(short, cfg=CFG, workspace=ws), log_mel_batch(short, cfg=CFG),
                               atol=0, rtol=0)
    # so does another feature config; an odd n_fft counts one frame fewer when the hop divides the length
    odd = dataclasses.replace(CFG, n_fft=1023, hop_length=250, frames=300)
    torch.testing.assert_close(log_mel_batch(ys[:2], cfg=odd, workspace=ws), _dense_log_mel(ys[:2], odd),
                               atol=1e-4, rtol=0)


def librosa_batch(ys: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.stack([librosa_reference(y.numpy()) for y in ys])[:, None].astype(np.float32))


@pytest.mark.filterwarnings("ignore:Empty filters detected")
def test_workspace_is_not_reused_across_filterbanks():
    # At n_fft 64 whole blocks of bands read no FFT bin and are never written: which ones depends on fmin
    # and the scale, so a workspace filled under one filterbank must not serve another.
    written = dataclasses.replace(CFG, n_fft=64, fmin=300.0)  # every band reads a bin
    sparse = dataclasses.replace(written, fmin=100.0)  # bands 5-9 read none: they must stay at the floor
    ys = torch.from_numpy(np.stack([harmonic(220.0 * (i + 1)) for i in range(2)]))
    ws = LogMelWorkspace(2, ys.shape[1], written)
    log_mel_batch(ys, cfg=written, workspace=ws)
    assert not ws.fits(ys, sparse) and not ws.fits(ys, dataclasses.replace(written, mel_scale="htk"))
    fresh = log_mel_batch(ys, cfg=sparse)
    assert (fresh[:, 0, 5:10] == -1).all()
    torch.testing.assert_close(log_mel_batch(ys, cfg=sparse, workspace=ws), fresh, atol=0, rtol=0)


def test_compiled_power_equals_torch_power_and_the_fallback():
    # the CPU kernel and the path other devices (and non-contiguous spectra) take give |X|^2 alike
    spec = torch.fft.rfft(torch.from_numpy(harmonic(220.0)[: 125 * 512].reshape(125, 512)))
    expected = spec.abs().square()
    out = torch.empty(spec.shape)
    _power(spec, out=out)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    strided = torch.empty(spec.shape[1], spec.shape[0]).T  # not contiguous: torch's ops
    _power(spec.clone(), out=strided)
    torch.testing.assert_close(strided, expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(out, torch.zeros_like(out))
