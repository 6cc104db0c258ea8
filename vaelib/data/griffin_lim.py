"""Griffin-Lim phase reconstruction in torch: librosa's fast Griffin-Lim (Perraudin et al. 2013), same steps.

``librosa.griffinlim`` spends most of its time outside the FFTs, in per-frame NumPy work of its STFT and
overlap-add; torch runs the same transforms several times faster on 2 cores (`benchmarks/bench_griffin_lim.py`).
The iteration, the momentum, the initial phase (drawn from ``numpy.random.default_rng(seed)`` exactly as
librosa draws it), the periodic Hann window, the zero padding of the centred frames and the output length
are librosa's, so the waveforms agree with ``librosa.griffinlim`` to float32 rounding (a test compares them).

The inverse STFT is not ``torch.istft``: that recomputes the window's overlap-add envelope and checks it on
every call, which cost more than its FFTs for a 4-s note. :class:`_InverseSTFT` computes the envelope once
per call of :func:`griffin_lim` and overlap-adds with a few shifted slice additions.

The spectra are kept frames-major (``(notes, frames, bins)``, as ``rfft`` of the frames returns them), and
the step between the transforms (momentum, phase of the result, times the target magnitude) is one
compiled pass over them: as torch ops it was six passes over a transposed tensor and took twice the time
of the FFTs (``benchmarks/bench_griffin_lim.py``).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from vaelib.exceptions import ParameterError

__all__ = ["griffin_lim", "MOMENTUM"]

MOMENTUM = 0.99  # librosa's default: the "fast" Griffin-Lim
_NOLA_TINY = 1e-11  # torch.istft's floor for the window envelope (the NOLA condition)
_SQUARES_UNDERFLOW = np.float32(1e-30)  # below it re * re + im * im has lost bits to float32's underflow


class _InverseSTFT:
    """The inverse of a centred, Hann-windowed STFT of ``frames`` frames, cut to ``length`` samples.

    Equal to ``torch.istft(..., center=True, length=length)`` to float32 rounding: frames by ``irfft``,
    windowed, overlap-added, divided by the summed squared window and the centre padding removed.
    """

    def __init__(self, *, n_fft: int, hop_length: int, frames: int, length: int, window: torch.Tensor) -> None:
        self.n_fft, self.hop, self.frames, self.length = n_fft, hop_length, frames, length
        self.window = window
        # Each frame, zero-padded to `blocks` hops, adds block j of itself to output block t + j.
        self.blocks = math.ceil(n_fft / hop_length)
        envelope = self._overlap_add(window.square().expand(frames, n_fft))
        start = n_fft // 2
        kept = envelope[start:start + length]
        if kept.numel() and float(kept.abs().min()) < _NOLA_TINY:
            raise ParameterError(f"hop_length {hop_length} leaves gaps between windows of n_fft {n_fft} "
                                 "(the overlap-add is not invertible); use a hop of at most n_fft")
        self.start = start
        self.inv_envelope = 1.0 / kept

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """[shape=(..., frames, n_fft)] -> [shape=(..., n_fft + hop * (frames - 1))] summed at hop steps."""
        lead, (t, n) = frames.shape[:-2], frames.shape[-2:]
        padded = torch.nn.functional.pad(frames, (0, self.blocks * self.hop - n)).reshape(
            *lead, t, self.blocks, self.hop)
        out = frames.new_zeros(*lead, t + self.blocks - 1, self.hop)
        for j in range(self.blocks):
            out[..., j:j + t, :] += padded[..., j, :]
        return out.reshape(*lead, -1)[..., :self.n_fft + self.hop * (t - 1)]

    def __call__(self, spec: torch.Tensor) -> torch.Tensor:
        """[shape=(..., n_fft // 2 + 1, frames)] complex -> [shape=(..., length)] real."""
        return self.frames_major(spec.transpose(-1, -2))

    def frames_major(self, spec: torch.Tensor) -> torch.Tensor:
        """[shape=(..., frames, n_fft // 2 + 1)] complex -> [shape=(..., length)] real."""
        frames = torch.fft.irfft(spec, n=self.n_fft).mul_(self.window)  # (..., frames, n_fft)
        audio = self._overlap_add(frames)[..., self.start:self.start + self.length]
        if audio.shape[-1] < self.length:  # torch.istft pads a `length` past the last frame with zeros
            audio = torch.nn.functional.pad(audio, (0, self.length - audio.shape[-1]))
            return audio * torch.nn.functional.pad(self.inv_envelope, (0, self.length - len(self.inv_envelope)))
        return audio * self.inv_envelope


@numba.njit(nogil=True, cache=True)
def _project_kernel(rebuilt: np.ndarray, previous: np.ndarray, mag: np.ndarray, keep: float, tiny: float,
                    out: np.ndarray) -> None:  # pragma: no cover - compiled
    rows, bins = mag.shape
    for r in range(rows):
        for k in range(bins):
            re = rebuilt[r, k, 0] - keep * previous[r, k, 0]
            im = rebuilt[r, k, 1] - keep * previous[r, k, 1]
            squares = re * re + im * im
            if squares < _SQUARES_UNDERFLOW:  # rare: squares near float32's underflow, the norm from float64's
                norm = np.float32(np.sqrt(np.float64(re) ** 2 + np.float64(im) ** 2))
            else:
                norm = np.sqrt(squares)
            scale = mag[r, k] / (norm + tiny)
            out[r, k, 0] = re * scale
            out[r, k, 1] = im * scale


def _project(rebuilt: torch.Tensor, previous: torch.Tensor, mag: np.ndarray, *, keep: np.float32,
             out: torch.Tensor) -> None:
    """``out = mag * phase(rebuilt - keep * previous)`` over frames-major spectra, in one pass.

    One thread: the pass is bound by memory, and a second thread did not shorten it between torch's FFTs.
    """
    if not rebuilt.shape == previous.shape == out.shape or not out.is_contiguous() or rebuilt.numel() != mag.size:
        # the kernel reads and writes without bounds checks, and writes into `out` through a view
        raise ValueError(f"spectra of shapes {tuple(rebuilt.shape)}, {tuple(previous.shape)}, {tuple(out.shape)} "
                         f"for a magnitude of {mag.shape}")
    r, p, o = (torch.view_as_real(t).reshape(-1, mag.shape[1], 2).numpy() for t in (rebuilt, previous, out))
    _project_kernel(r, p, mag, keep, np.float32(torch.finfo(torch.float32).tiny), o)


def griffin_lim(magnitude: np.ndarray, *, n_iter: int, n_fft: int, hop_length: int, length: int,
                seed: int = 0, momentum: float = MOMENTUM) -> np.ndarray:
    """A waveform whose centred STFT magnitude approaches ``magnitude``, for one note or several at once.

    Parameters
    ----------
    magnitude : [shape=(n_fft // 2 + 1, 1 + length // hop_length)] non-negative linear STFT magnitude, or
        [shape=(notes, n_fft // 2 + 1, 1 + length // hop_length)]: each note is inverted as if alone (the same
        initial phase, the same result).
    n_iter : iterations (>= 1); hop_length, n_fft : of the STFT; length : samples returned.
    seed : seeds the random initial phase, so the output is reproducible.

    Returns
    -------
    [shape=(length,)] float32 waveform, or [shape=(notes, length)].
    """
    mag = np.asarray(magnitude, np.float32)
    frames = 1 + length // hop_length  # what a centred STFT of `length` samples has
    if mag.ndim not in (2, 3) or mag.shape[-2:] != (n_fft // 2 + 1, frames):
        raise ParameterError(f"magnitude: expected shape ({n_fft // 2 + 1}, {frames}) or (notes, {n_fft // 2 + 1}, "
                             f"{frames}) for {length} samples at hop {hop_length}, got {mag.shape}")
    reanalysed = 1 + (length - n_fft % 2) // hop_length  # frames of the STFT of the estimate, as torch frames it
    if reanalysed != frames:
        raise ParameterError(f"n_fft {n_fft}, hop_length {hop_length}, length {length}: the STFT of the estimate has "
                             f"{reanalysed} frames against the magnitude's {frames} (an odd n_fft with a length "
                             "that is a multiple of the hop); use an even n_fft or another length")
    if n_iter < 1:
        raise ParameterError(f"n_iter: expected >= 1, got {n_iter}")
    if not 0 <= momentum <= 1:
        raise ParameterError(f"momentum: expected a value in [0, 1] (librosa's range without its instability "
                             f"warning), got {momentum}")
    rng = np.random.default_rng(seed)
    # drawn (bins, frames) as librosa draws it, then turned frames-major like every spectrum below
    angles = torch.from_numpy(np.exp(2j * np.pi * rng.random(size=mag.shape[-2:])).astype(np.complex64)).T
    mag_t = torch.from_numpy(np.ascontiguousarray(np.swapaxes(mag, -1, -2)))  # (..., frames, bins)
    window = torch.hann_window(n_fft)
    istft = _InverseSTFT(n_fft=n_fft, hop_length=hop_length, frames=frames, length=length, window=window)
    half = n_fft // 2
    spec = (mag_t * angles).contiguous()  # the magnitude with its current phase: what is inverted
    mag_rows, keep = mag_t.reshape(-1, mag_t.shape[-1]).numpy(), np.float32(momentum / (1 + momentum))
    rebuilt = torch.zeros_like(spec)
    with torch.no_grad():
        for _ in range(n_iter):
            previous = rebuilt
            inverse = istft.frames_major(spec)
            # torch.stft's centred, zero-padded, windowed frames, kept frames-major
            padded = torch.nn.functional.pad(inverse, (half, half))
            rebuilt = torch.fft.rfft(padded.unfold(-1, n_fft, hop_length) * window)
            _project(rebuilt, previous, mag_rows, keep=keep, out=spec)
        audio = istft.frames_major(spec)
    return audio.numpy()  # float32: the magnitude is, and so is every transform of it
