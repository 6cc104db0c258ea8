"""vaelib.data.griffin_lim: librosa's fast Griffin-Lim in torch, the same waveforms."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from vaelib.data.griffin_lim import _InverseSTFT, griffin_lim
from vaelib.exceptions import ParameterError

SR, N_FFT, HOP = 16_000, 512, 128


def _tone(seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    decay = np.exp(-3 * t)
    return (decay * (np.sin(2 * np.pi * 220 * t) + 0.3 * np.sin(2 * np.pi * 660 * t))).astype(np.float32)


@pytest.mark.parametrize(("n_iter", "seed"), [(1, 0), (16, 3)])
def test_the_waveform_is_librosas_to_float32_rounding(n_iter, seed):
    y = _tone()
    mag = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP))
    ours = griffin_lim(mag, n_iter=n_iter, n_fft=N_FFT, hop_length=HOP, length=len(y), seed=seed)
    ref = librosa.griffinlim(mag, n_iter=n_iter, hop_length=HOP, n_fft=N_FFT, center=True, length=len(y),
                             random_state=np.random.default_rng(seed))
    assert ours.shape == ref.shape == y.shape and ours.dtype == np.float32
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-3


def test_more_iterations_bring_the_magnitude_closer_and_the_seed_fixes_the_result():
    y = _tone()
    mag = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP))

    def error(n_iter: int) -> float:
        out = griffin_lim(mag, n_iter=n_iter, n_fft=N_FFT, hop_length=HOP, length=len(y))
        return float(np.abs(np.abs(librosa.stft(out, n_fft=N_FFT, hop_length=HOP)) - mag).mean() / mag.mean())

    assert error(32) < 0.5 * error(1)
    a = griffin_lim(mag, n_iter=4, n_fft=N_FFT, hop_length=HOP, length=len(y), seed=7)
    np.testing.assert_array_equal(a, griffin_lim(mag, n_iter=4, n_fft=N_FFT, hop_length=HOP, length=len(y), seed=7))
    assert not np.array_equal(a, griffin_lim(mag, n_iter=4, n_fft=N_FFT, hop_length=HOP, length=len(y), seed=8))


def test_bad_inputs_are_refused():
    ok = np.zeros((257, 8))  # 1 + 1000 // 128 frames
    with pytest.raises(ParameterError, match=r"magnitude: expected shape \(257, 8\) or \(notes, 257, 8\) for 1000 "
                                             r"samples at hop 128, got \(100, 8\)"):
        griffin_lim(np.zeros((100, 8)), n_iter=2, n_fft=N_FFT, hop_length=HOP, length=1000)
    with pytest.raises(ParameterError, match=r"got \(257, 26\)"):
        griffin_lim(np.zeros((257, 26)), n_iter=2, n_fft=N_FFT, hop_length=HOP, length=1000)
    with pytest.raises(ParameterError, match="n_iter: expected >= 1"):
        griffin_lim(ok, n_iter=0, n_fft=N_FFT, hop_length=HOP, length=1000)
    for momentum in (-1.0, 1.5):
        with pytest.raises(ParameterError, match="momentum: expected a value in"):
            griffin_lim(ok, n_iter=2, n_fft=N_FFT, hop_length=HOP, length=1000, momentum=momentum)
    assert griffin_lim(ok, n_iter=2, n_fft=N_FFT, hop_length=HOP, length=1000).shape == (1000,)
    # an odd n_fft re-analyses a length that is a multiple of the hop into one frame fewer than the magnitude's
    with pytest.raises(ParameterError, match="the STFT of the estimate has 100 frames against the magnitude's 101"):
        griffin_lim(np.ones((3, 201, 101), np.float32), n_iter=2, n_fft=401, hop_length=160, length=16_000)
    odd = griffin_lim(np.ones((201, 101), np.float32), n_iter=2, n_fft=401, hop_length=160, length=16_001)
    assert odd.shape == (16_001,) and np.isfinite(odd).all()
    with pytest.raises(ParameterError, match="hop_length 512 leaves gaps between windows of n_fft 512"):
        griffin_lim(np.zeros((257, 3)), n_iter=1, n_fft=N_FFT, hop_length=N_FFT, length=1024)


@pytest.mark.parametrize(("n_fft", "hop", "length"), [(2048, 500, 64_000), (512, 128, 8001), (400, 160, 16_000),
                                                      (512, 512 // 3, 3000)])
def test_the_inverse_stft_is_torchs(n_fft, hop, length):
    frames = 1 + length // hop
    spec = torch.randn(3, n_fft // 2 + 1, frames, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    window = torch.hann_window(n_fft)
    ref = torch.istft(spec, n_fft, hop, window=window, center=True, length=length)
    ours = _InverseSTFT(n_fft=n_fft, hop_length=hop, frames=frames, length=length, window=window)(spec)
    assert ours.shape == ref.shape == (3, length)
    assert float((ours - ref).norm() / ref.norm()) < 1e-6


def test_several_notes_at_once_give_each_note_its_own_result():
    y = _tone()
    mags = np.stack([np.abs(librosa.stft(g * y, n_fft=N_FFT, hop_length=HOP)) for g in (1.0, 0.3, 0.0)])
    together = griffin_lim(mags, n_iter=8, n_fft=N_FFT, hop_length=HOP, length=len(y), seed=5)
    assert together.shape == (3, len(y)) and together.dtype == np.float32
    for mag, out in zip(mags, together):
        alone = griffin_lim(mag, n_iter=8, n_fft=N_FFT, hop_length=HOP, length=len(y), seed=5)
        np.testing.assert_allclose(out, alone, rtol=0, atol=1e-6 * max(1.0, float(np.abs(alone).max())))
    assert not together[2].any()  # silence stays silent


def test_the_compiled_step_refuses_spectra_that_do_not_fit_its_magnitude():
    from vaelib.data.griffin_lim import _project

    mag = np.ones((4, 5), np.float32)
    fits = torch.zeros(4, 5, dtype=torch.complex64)
    _project(fits, fits.clone(), mag, keep=np.float32(0.5), out=fits.clone())
    for rebuilt, out in ((torch.zeros(3, 5, dtype=torch.complex64), fits.clone()),
                         (fits, torch.zeros(5, 4, dtype=torch.complex64).T)):
        with pytest.raises(ValueError, match="spectra of shapes"):
            _project(rebuilt, fits, mag, keep=np.float32(0.5), out=out)


@pytest.mark.parametrize("scale", [1e-12, 1e-20, 1e-22])
def test_tiny_magnitudes_keep_their_phase(scale):
    # the squares of such spectra underflow float32: the phase must still be normalised as librosa does
    y = _tone()
    mag = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP)).astype(np.float32)
    ours = griffin_lim(mag * np.float32(scale), n_iter=4, n_fft=N_FFT, hop_length=HOP, length=len(y), seed=1)
    ref = griffin_lim(mag, n_iter=4, n_fft=N_FFT, hop_length=HOP, length=len(y), seed=1) * np.float32(scale)
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-3
