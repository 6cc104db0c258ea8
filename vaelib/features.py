"""Log-mel features of the study and their inverse back to audio.

Forward: batched torch STFT -> power -> librosa mel filterbank -> dB against the reference ->
clipped to [-top_db, 0] -> normalised to [-1, 1] -> padded/cropped to ``frames``.
Inverse: normalised log-mel -> dB -> power mel -> linear spectrogram (librosa's NNLS mel
inversion) -> audio by Griffin-Lim.
"""

from __future__ import annotations

import functools
import threading

import librosa
import numpy as np
import scipy.fft
import torch

from vaelib.config import FeatureConfig
from vaelib.exceptions import ParameterError

__all__ = [
    "mel_filterbank",
    "log_mel_batch",
    "log_mel",
    "normalized_to_db",
    "mel_frequencies",
    "inverse_log_mel",
    "feature_shape",
]

AMIN = 1e-10  # power floor before the log, as librosa.power_to_db


@functools.lru_cache(maxsize=8)
def _filterbank_cached(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    return fb.astype(np.float32)


# Notes per FFT block on the CPU path: ~8 MB of frames, so each block stays in cache.
_CPU_BLOCK = 16


def _mel_power_cpu(audio: np.ndarray, *, cfg: FeatureConfig) -> np.ndarray:
    """Mel power of a batch on the CPU, the same numbers as ``torch.stft`` (centred, zero-padded,
    periodic Hann) but with scipy's pocketfft, several times faster than torch's CPU FFT here.

    Parameters
    ----------
    audio : [shape=(batch, samples)] float32.

    Returns
    -------
    [shape=(batch, n_mels, 1 + samples // hop_length)] float32 power.
    """
    n_fft, hop = cfg.n_fft, cfg.hop_length
    batch, n = audio.shape
    n_frames = 1 + n // hop
    window = _hann_cached(n_fft)
    groups = _band_groups_cached(cfg.sample_rate, n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
    n_bins = n_fft // 2 + 1
    blk = max(1, min(_CPU_BLOCK, batch))
    half = n_fft // 2
    # Per-thread buffers reused from call to call: fresh multi-MB arrays cost page faults each time.
    padded = _scratch("padded", (blk, n + n_fft))  # centre=True, pad_mode='constant'
    padded[:, :half] = 0.0
    padded[:, half + n:] = 0.0
    frames_buf = _scratch("frames", (blk, n_frames, n_fft))
    power_buf = _scratch("power", (blk, n_frames, n_bins))
    out = np.empty((batch, cfg.n_mels, n_frames), dtype=np.float32)
    for i in range(0, batch, blk):
        b = min(blk, batch - i)
        padded[:b, half:half + n] = audio[i:i + b]
        view = np.lib.stride_tricks.sliding_window_view(padded[:b], n_fft, axis=-1)[:, ::hop][:, :n_frames]
        frames = np.multiply(view, window, out=frames_buf[:b])  # (b, T, n_fft)
        spec = scipy.fft.rfft(frames, axis=-1, workers=_fft_workers())  # (b, T, n_bins) complex64
        ri = spec.view(np.float32)  # (b, T, 2 * n_bins): re, im interleaved
        np.square(ri, out=ri)
        power = np.add(ri[..., 0::2], ri[..., 1::2], out=power_buf[:b])  # (b, T, n_bins)
        flat_power = torch.from_numpy(power.reshape(b * n_frames, n_bins))  # (b*T, n_bins)
        mel_t = torch.empty(cfg.n_mels, b * n_frames)  # (n_mels, b*T)
        # The filterbank is ~2% non-zero (each bin feeds at most two bands): each group of bands is
        # multiplied only by the bins it covers, ~9x fewer multiply-adds than the dense GEMM. torch's
        # GEMM, so that torch.set_num_threads governs every step of the feature path.
        for lo, hi, m0, m1, weights_t in groups:
            if hi > lo:
                torch.mm(weights_t, flat_power[:, lo:hi].T, out=mel_t[m0:m1])  # (m1-m0, b*T)
            else:
                mel_t[m0:m1] = 0.0
        out[i:i + b] = mel_t.view(cfg.n_mels, b, n_frames).permute(1, 0, 2).numpy()
    return out


@functools.lru_cache(maxsize=8)
def _hann_cached(n_fft: int) -> np.ndarray:
    return torch.hann_window(n_fft).numpy()  # periodic, as torch.stft and librosa use


_BANDS_PER_GROUP = 8  # 10 GEMMs for 80 bands: 4,504 multiply-adds per frame instead of 41,040


@functools.lru_cache(maxsize=8)
def _band_groups_cached(sr: int, n_fft: int, n_mels: int, fmin: float,
                        fmax: float) -> tuple[tuple[int, int, int, int, torch.Tensor], ...]:
    """Consecutive mel bands in groups, each with the FFT-bin range it covers and its weights:
    ``(lo, hi, m0, m1, weights [shape=(m1 - m0, hi - lo)])``."""
    fb = _filterbank_cached(sr, n_fft, n_mels, fmin, fmax)
    groups = []
    for m0 in range(0, n_mels, _BANDS_PER_GROUP):
        m1 = min(n_mels, m0 + _BANDS_PER_GROUP)
        cols = np.flatnonzero(fb[m0:m1].any(axis=0))
        lo, hi = (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 0)
        groups.append((lo, hi, m0, m1, torch.from_numpy(np.ascontiguousarray(fb[m0:m1, lo:hi]))))
    return tuple(groups)


_LOCAL = threading.local()


def _scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 work array of ``shape`` owned by the calling thread, reused across calls."""
    bufs = _LOCAL.__dict__.setdefault("bufs", {})
    buf = bufs.get(name)
    if buf is None or buf.shape != shape:
        buf = bufs[name] = np.empty(shape, dtype=np.float32)
    return buf


def _fft_workers() -> int:
    return max(1, torch.get_num_threads())


def mel_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """librosa's Slaney mel filterbank, [shape=(n_mels, n_fft // 2 + 1)]."""
    return _filterbank_cached(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)


def mel_frequencies(cfg: FeatureConfig) -> np.ndarray:
    """Centre frequency in Hz of each mel band, [shape=(n_mels,)]."""
    return librosa.mel_frequencies(n_mels=cfg.n_mels + 2, fmin=cfg.fmin, fmax=cfg.fmax)[1:-1]


def feature_shape(cfg: FeatureConfig) -> tuple[int, int, int]:
    return (1, cfg.n_mels, cfg.frames)


def log_mel_batch(audio: torch.Tensor, *, cfg: FeatureConfig) -> torch.Tensor:
    """Normalised log-mel of a batch of notes.

    Parameters
    ----------
    audio : [shape=(batch, samples)] float32 waveform in [-1, 1] at ``cfg.sample_rate``.

    Returns
    -------
    [shape=(batch, 1, n_mels, frames)] float32 in [-1, 1]; -1 is ``-top_db`` dB (silence),
    +1 is the reference (each note's peak when ``ref='max'``).
    """
    if audio.ndim != 2:
        raise ParameterError(f"audio: expected shape (batch, samples), got {tuple(audio.shape)}")
    if audio.device.type == "cpu" and not audio.requires_grad:
        mel = torch.from_numpy(_mel_power_cpu(audio.numpy(), cfg=cfg))
    else:
        window = torch.hann_window(cfg.n_fft, device=audio.device)
        spec = torch.stft(audio, n_fft=cfg.n_fft, hop_length=cfg.hop_length, window=window,
                          center=True, pad_mode="constant", return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (B, n_fft//2+1, T)
        fb = torch.from_numpy(mel_filterbank(cfg)).to(audio.device)
        mel = torch.matmul(fb, power)  # (B, n_mels, T)
    db = 10.0 * torch.log10(mel.clamp_min(AMIN))
    if cfg.ref == "max":
        ref_db = db.amax(dim=(1, 2), keepdim=True)
    else:
        ref_db = torch.full_like(db[:, :1, :1], 10.0 * np.log10(max(cfg.ref_power, AMIN)))
    db = (db - ref_db).clamp(-cfg.top_db, 0.0)
    x = db / (cfg.top_db / 2.0) + 1.0
    frames = x.shape[-1]
    if frames >= cfg.frames:
        x = x[..., : cfg.frames]
    else:
        x = torch.nn.functional.pad(x, (0, cfg.frames - frames), value=-1.0)
    return x.unsqueeze(1).contiguous()


def log_mel(audio: np.ndarray, *, cfg: FeatureConfig) -> np.ndarray:
    """Normalised log-mel of one note, [shape=(1, n_mels, frames)] float32 (see ``log_mel_batch``)."""
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).reshape(1, -1)
    return log_mel_batch(x, cfg=cfg)[0].numpy()


def normalized_to_db(x: np.ndarray, *, cfg: FeatureConfig) -> np.ndarray:
    """Normalised log-mel in [-1, 1] back to dB relative to the reference, in [-top_db, 0]."""
    return (np.clip(x, -1.0, 1.0) - 1.0) * (cfg.top_db / 2.0)


def inverse_log_mel(x: np.ndarray, *, cfg: FeatureConfig, n_iter: int = 64, seed: int = 0) -> np.ndarray:
    """Audio from a normalised log-mel: dB -> power mel -> linear magnitude -> Griffin-Lim.

    Parameters
    ----------
    x : [shape=(1, n_mels, frames) or (n_mels, frames)] normalised log-mel.
    n_iter : Griffin-Lim iterations.
    seed : seeds Griffin-Lim's random initial phase, so the output is reproducible.

    Returns
    -------
    [shape=(frames * hop_length,)] float32 waveform, peak-normalised to 0.9 (the dB reference
    with ``ref='max'`` carries no absolute level).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[0]
    if x.shape != (cfg.n_mels, cfg.frames):
        raise ParameterError(f"x: expected shape (1, {cfg.n_mels}, {cfg.frames}), got {x.shape}")
    power_mel = librosa.db_to_power(normalized_to_db(x, cfg=cfg))
    stft_mag = librosa.feature.inverse.mel_to_stft(
        power_mel, sr=cfg.sample_rate, n_fft=cfg.n_fft, power=2.0, fmin=cfg.fmin, fmax=cfg.fmax)
    length = cfg.frames * cfg.hop_length
    # A centred STFT of `length` samples has 1 + length // hop frames (129 for 128 kept): Griffin-Lim
    # re-analyses its estimate at that size, so the magnitude gets the cropped last frame back (edge copy).
    n_stft = 1 + length // cfg.hop_length
    if stft_mag.shape[1] < n_stft:
        stft_mag = np.pad(stft_mag, ((0, 0), (0, n_stft - stft_mag.shape[1])), mode="edge")
    audio = librosa.griffinlim(
        stft_mag, n_iter=n_iter, hop_length=cfg.hop_length, n_fft=cfg.n_fft, center=True,
        length=length, random_state=np.random.default_rng(seed))
    peak = float(np.abs(audio).max())
    if peak > 0:
        audio = audio * (0.9 / peak)
    return audio.astype(np.float32)
