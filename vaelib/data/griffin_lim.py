"""Griffin-Lim phase reconstruction in torch: librosa's fast Griffin-Lim (Perraudin et al. 2013), same steps.

``librosa.griffinlim`` spends most of its time outside the FFTs, in per-frame NumPy work of its STFT and
overlap-add; ``torch.stft`` and ``torch.istft`` run the same transforms three times faster on 2 cores
for one 4-s note (`benchmarks/bench_griffin_lim.py`). The iteration, the momentum, the initial phase
(drawn from ``numpy.random.default_rng(seed)`` exactly as librosa draws it), the periodic Hann window,
the zero padding of the centred frames and the output length are librosa's, so the waveforms agree with
``librosa.griffinlim`` to float32 rounding (a test compares them).
"""

from __future__ import annotations

import numpy as np
import torch

from vaelib.exceptions import ParameterError

__all__ = ["griffin_lim", "MOMENTUM"]

MOMENTUM = 0.99  # librosa's default: the "fast" Griffin-Lim


def griffin_lim(magnitude: np.ndarray, *, n_iter: int, n_fft: int, hop_length: int, length: int,
                seed: int = 0, momentum: float = MOMENTUM) -> np.ndarray:
    """A waveform whose centred STFT magnitude approaches ``magnitude``.

    Parameters
    ----------
    magnitude : [shape=(n_fft // 2 + 1, 1 + length // hop_length)] non-negative linear STFT magnitude.
    n_iter : iterations (>= 1); hop_length, n_fft : of the STFT; length : samples returned.
    seed : seeds the random initial phase, so the output is reproducible.

    Returns
    -------
    [shape=(length,)] float32 waveform.
    """
    mag = np.asarray(magnitude, np.float32)
    frames = 1 + length // hop_length  # what a centred STFT of `length` samples has
    if mag.shape != (n_fft // 2 + 1, frames):
        raise ParameterError(f"magnitude: expected shape ({n_fft // 2 + 1}, {frames}) for {length} samples at hop "
                             f"{hop_length}, got {mag.shape}")
    if n_iter < 1:
        raise ParameterError(f"n_iter: expected >= 1, got {n_iter}")
    if not 0 <= momentum <= 1:
        raise ParameterError(f"momentum: expected a value in [0, 1] (librosa's range without its instability "
                             f"warning), got {momentum}")
    rng = np.random.default_rng(seed)
    angles = torch.from_numpy(np.exp(2j * np.pi * rng.random(size=mag.shape)).astype(np.complex64))
    mag_t = torch.from_numpy(mag)
    window = torch.hann_window(n_fft)
    tiny = torch.finfo(torch.float32).tiny
    rebuilt = torch.zeros_like(angles)
    with torch.no_grad():
        for _ in range(n_iter):
            previous = rebuilt
            inverse = torch.istft(mag_t * angles, n_fft, hop_length, window=window, center=True, length=length)
            rebuilt = torch.stft(inverse, n_fft, hop_length, window=window, center=True, pad_mode="constant",
                                 return_complex=True)
            angles = rebuilt - (momentum / (1 + momentum)) * previous
            angles = angles / (angles.abs() + tiny)
        audio = torch.istft(mag_t * angles, n_fft, hop_length, window=window, center=True, length=length)
    return audio.numpy()  # float32: the magnitude is, and so is every transform of it
