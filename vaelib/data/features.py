"""Log-mel features of the study and their inverse back to audio.

Forward: batched torch STFT -> power -> librosa mel filterbank -> dB against the reference ->
clipped to [-top_db, 0] -> normalised to [-1, 1] -> padded/cropped to ``frames``.
Inverse: normalised log-mel -> dB -> power mel -> linear spectrogram (librosa's NNLS mel
inversion, or the filterbank's pseudo-inverse) -> audio by Griffin-Lim.
"""

from __future__ import annotations

import functools
import warnings

import librosa
import numba
import numpy as np
import torch

from vaelib.config import MEL_INVERSES, MEL_SCALES, FeatureConfig
from vaelib.data.griffin_lim import griffin_lim
from vaelib.exceptions import ParameterError

__all__ = [
    "mel_filterbank",
    "log_mel_batch",
    "LogMelWorkspace",
    "log_mel",
    "normalize_db",
    "normalized_to_db",
    "mel_frequencies",
    "mel_spacing_hz",
    "inverse_log_mel",
    "inverse_log_mels",
    "log_mel_to_magnitude",
    "feature_shape",
]

AMIN = 1e-10  # power floor before the log, as librosa.power_to_db
SILENT_DB = 10.0 * np.log10(AMIN) + 1e-3  # a note whose loudest bin is at the floor is silent


@functools.lru_cache(maxsize=8)
def _filterbank_cached(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # librosa's "Empty filters": counted and said below
        fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk)
    empty = int((~fb.any(axis=1)).sum())
    # a few empty bands at the bottom of a fine bank are silent rows; most of the bank empty is no feature
    if empty > n_mels // 2:
        raise ParameterError(f"features: {empty} of the {n_mels} mel bands (features.n_mels) between features.fmin "
                             f"{fmin:g} Hz and features.fmax {fmax:g} Hz hold no FFT bin of features.n_fft {n_fft} "
                             f"at {sr} Hz, so they would be constant: fewer bands, a wider range or a larger n_fft")
    if empty:
        warnings.warn(f"features: {empty} of the {n_mels} mel bands hold no FFT bin (n_fft {n_fft} at {sr} Hz, "
                      f"{fmin:g}-{fmax:g} Hz) and stay silent", UserWarning, stacklevel=3)
    return fb.astype(np.float32)


# Griffin-Lim on 4 notes at once ran about a fifth faster a note than on one on 2 cores (more notes: no
# faster, their spectra leave the cache); bench_griffin_lim measures it
GRIFFIN_LIM_BATCH = 4
BAND_GROUP = 5  # mel bands per block of the filterbank product (see _band_blocks)


@functools.lru_cache(maxsize=8)
def _band_blocks(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float,
                 htk: bool) -> tuple[tuple[int, int, int, torch.Tensor], ...]:
    """The filterbank as blocks ``(band0, bin0, bin1, weights)`` of ``BAND_GROUP`` adjacent bands.

    Each FFT bin feeds at most two bands, so the dense (n_mels x bins) product is ~97% zeros; a block
    of adjacent bands reads only the bins its triangles span: with 80 bands and n_fft 1024 the
    blocks read 600 bin columns instead of 80 x 510 (timings in docs/benchmarks.md).
    """
    fb = _filterbank_cached(sr, n_fft, n_mels, fmin, fmax, htk)
    blocks = []
    for b0 in range(0, n_mels, BAND_GROUP):
        cols = np.flatnonzero(fb[b0:b0 + BAND_GROUP].any(axis=0))
        if cols.size == 0:  # bands narrower than a bin at a very small n_fft: all-zero rows
            continue
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        blocks.append((b0, c0, c1, torch.from_numpy(np.ascontiguousarray(fb[b0:b0 + BAND_GROUP, c0:c1]))))
    return tuple(blocks)


def _htk(cfg: FeatureConfig) -> bool:
    # load_config checks the choice; a FeatureConfig built in code is not, and would fall back silently
    if cfg.mel_scale not in MEL_SCALES:
        raise ParameterError(f"features.mel_scale: expected one of {MEL_SCALES}, got {cfg.mel_scale!r}")
    return cfg.mel_scale == "htk"


def mel_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """librosa's mel filterbank (Slaney or HTK scale, Slaney area norm), [shape=(n_mels, n_fft // 2 + 1)]."""
    return _filterbank_cached(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax, _htk(cfg))


def mel_frequencies(cfg: FeatureConfig) -> np.ndarray:
    """Centre frequency in Hz of each mel band, [shape=(n_mels,)]."""
    return librosa.mel_frequencies(n_mels=cfg.n_mels + 2, fmin=cfg.fmin, fmax=cfg.fmax, htk=_htk(cfg))[1:-1]


def mel_spacing_hz(cfg: FeatureConfig, freq_hz: np.ndarray | float) -> np.ndarray:
    """Distance in Hz between neighbouring mel band centres around ``freq_hz``: what the log-mel can
    tell apart there (Slaney's mel is linear below 1 kHz, so its low bands are all equally wide; HTK's
    narrows them towards 0 Hz)."""
    centres = mel_frequencies(cfg)
    return np.interp(freq_hz, 0.5 * (centres[1:] + centres[:-1]), np.diff(centres))


def feature_shape(cfg: FeatureConfig) -> tuple[int, int, int]:
    return (1, cfg.n_mels, cfg.frames)


def _workspace_key(cfg: FeatureConfig) -> tuple:
    # the filterbank settings too: which mel rows no block writes (and so stay 0) depends on them
    return (cfg.n_fft, cfg.hop_length, cfg.n_mels, cfg.frames, cfg.sample_rate, cfg.fmin, cfg.fmax, cfg.mel_scale)


class LogMelWorkspace:
    """Buffers for ``log_mel_batch``, reused from call to call by one thread.

    The frames and spectrum of a note and the power of a batch are megabytes. Allocated afresh on every call,
    malloc hands them back to the kernel and takes them again, and the page faults cost as much as the
    FFT itself (figures in docs/benchmarks.md). Not thread safe: give each thread its own.
    """

    def __init__(self, max_batch: int, n_samples: int, cfg: FeatureConfig, device: torch.device | str = "cpu"):
        half = cfg.n_fft // 2
        self.max_batch, self.n_samples, self.start = max_batch, n_samples, half
        # frames of a centred STFT (as torch.stft counts them, odd n_fft included), cropped to cfg.frames
        self.n_frames = min(cfg.frames, (n_samples + 2 * half - cfg.n_fft) // cfg.hop_length + 1)
        self.cfg_key = _workspace_key(cfg)
        bins = half + 1
        # The pad columns are zeroed once and never written: they are the STFT's constant padding.
        self.padded = torch.zeros(max_batch, n_samples + 2 * half, device=device)
        # one note's worth: the window, FFT and power passes run note by note (see log_mel_batch). No
        # spectrum buffer: torch's rfft with out= computes into a temporary and copies it over (a whole
        # pass more than the fresh tensor it returns without one).
        self.frames = torch.empty(self.n_frames, cfg.n_fft, device=device)
        self.power = torch.empty(max_batch, self.n_frames, bins, device=device)
        # Bands that read no FFT bin are never written and stay 0 (-> the AMIN floor).
        self.mel = torch.zeros(max_batch, cfg.n_mels, self.n_frames, device=device)
        self.window = torch.hann_window(cfg.n_fft, device=device)

    def audio(self, batch: int) -> torch.Tensor:
        """[shape=(batch, n_samples)] view where a batch may be decoded in place (saves a copy)."""
        return self.padded[:batch, self.start:self.start + self.n_samples]

    def fits(self, audio: torch.Tensor, cfg: FeatureConfig) -> bool:
        return (audio.shape[0] <= self.max_batch and audio.shape[1] == self.n_samples
                and audio.device == self.padded.device and self.cfg_key == _workspace_key(cfg))


@numba.njit(nogil=True, cache=True)
def _power_kernel(re_im: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    frames, bins = out.shape
    for t in range(frames):
        for k in range(bins):
            out[t, k] = re_im[t, k, 0] * re_im[t, k, 0] + re_im[t, k, 1] * re_im[t, k, 1]


def _power(spec: torch.Tensor, *, out: torch.Tensor) -> None:
    """``out = |spec|^2`` for a (frames, bins) complex64 spectrum.

    On the CPU one compiled pass reads each bin once; torch needs two (square in place, then add the
    halves), about 1.6x the time (docs/benchmarks.md). Other devices keep torch's ops.
    """
    re_im = torch.view_as_real(spec)
    if spec.device.type == "cpu" and re_im.is_contiguous() and out.is_contiguous():
        _power_kernel(re_im.numpy(), out.numpy())
    else:
        _power_torch(spec, out=out)


def _power_torch(spec: torch.Tensor, *, out: torch.Tensor) -> None:
    """``out = |spec|^2`` by torch's ops, overwriting ``spec`` (the fastest two: an in-place square, one add)."""
    re_im = torch.view_as_real(spec).square_()
    torch.add(re_im[..., 0], re_im[..., 1], out=out)


def log_mel_batch(audio: torch.Tensor, *, cfg: FeatureConfig,
                  workspace: LogMelWorkspace | None = None) -> torch.Tensor:
    """Normalised log-mel of a batch of notes.

    Parameters
    ----------
    audio : [shape=(batch, samples)] float32 waveform in [-1, 1] at ``cfg.sample_rate``.
    workspace : buffers to reuse (see ``LogMelWorkspace``); one sized to this batch is made if omitted
        or too small.

    Returns
    -------
    [shape=(batch, 1, n_mels, frames)] float32 in [-1, 1], a new tensor; -1 is ``-top_db`` dB (silence),
    +1 is the reference (each note's peak when ``ref='max'``; a digitally silent note is -1 everywhere).
    Equal to ``torch.stft`` (centred, zero padding, Hann window) -> power -> filterbank -> dB.
    Computed in place in reused buffers: not differentiable.
    """
    if audio.ndim != 2:
        raise ParameterError(f"audio: expected shape (batch, samples), got {tuple(audio.shape)}")
    ws = workspace
    if ws is None or not ws.fits(audio, cfg):
        ws = LogMelWorkspace(audio.shape[0], audio.shape[1], cfg, device=audio.device)
    b = audio.shape[0]
    dst = ws.audio(b)
    if audio.data_ptr() != dst.data_ptr() or audio.stride() != dst.stride():  # not decoded in place
        dst.copy_(audio)
    framed = ws.padded[:b].unfold(-1, cfg.n_fft, cfg.hop_length)[:, : ws.n_frames]  # a view, no copy
    # Note by note through one note-sized frames buffer (and a note's fresh spectrum), which stay in cache from
    # pass to pass and note to note; a whole batch's would spill out of it (see docs/benchmarks.md).
    for i in range(b):
        spec = torch.fft.rfft(torch.mul(framed[i], ws.window, out=ws.frames))  # (T, bins)
        _power(spec, out=ws.power[i])
    power = ws.power[:b].transpose(1, 2)  # (B, bins, T) view
    mel = ws.mel[:b]
    for b0, c0, c1, w in _band_blocks(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax, _htk(cfg)):
        mel[:, b0:b0 + w.shape[0]] = torch.matmul(w.to(audio.device), power[:, c0:c1])
    db = mel.clamp_min(AMIN).log10_().mul_(10.0)  # the first op copies: the result owns its memory
    if cfg.ref != "max":
        db = db.sub_(torch.full_like(db[:, :1, :1], 10.0 * np.log10(max(cfg.ref_power, AMIN))))
    x = normalize_db(db, cfg=cfg)
    if x.shape[-1] < cfg.frames:
        x = torch.nn.functional.pad(x, (0, cfg.frames - x.shape[-1]), value=-1.0)
    return x.unsqueeze(1)


def log_mel(audio: np.ndarray, *, cfg: FeatureConfig) -> np.ndarray:
    """Normalised log-mel of one note, [shape=(1, n_mels, frames)] float32 (see ``log_mel_batch``)."""
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).reshape(1, -1)
    return log_mel_batch(x, cfg=cfg)[0].numpy()


def normalize_db(db: torch.Tensor, *, cfg: FeatureConfig, silent_db: float = SILENT_DB) -> torch.Tensor:
    """dB of notes (``[..., n_mels, frames]``, relative to ``cfg.ref_power`` under ``ref='fixed'``) to the
    normalised log-mel, in place: under ``ref='max'`` each note's peak to 0 dB, then clipped to
    [-top_db, 0] and scaled to [-1, 1].

    A note at or below ``silent_db`` everywhere (digital silence at the power floor) keeps 0 dB as its
    reference: against its own maximum it would read as full scale (+1, as librosa's ref=np.max gives);
    measured against 0 dB it is silence (-1).
    """
    if cfg.ref == "max":
        peak = db.amax(dim=(-2, -1), keepdim=True)
        db = db.sub_(torch.where(peak <= silent_db, torch.zeros_like(peak), peak))
    return db.clamp_(-cfg.top_db, 0.0).div_(cfg.top_db / 2.0).add_(1.0)


def normalized_to_db(x: np.ndarray, *, cfg: FeatureConfig) -> np.ndarray:
    """Normalised log-mel in [-1, 1] back to dB relative to the reference, in [-top_db, 0]."""
    return (np.clip(x, -1.0, 1.0) - 1.0) * (cfg.top_db / 2.0)


@functools.lru_cache(maxsize=8)
def _mel_pinv(cfg: FeatureConfig) -> np.ndarray:
    """[shape=(n_fft // 2 + 1, n_mels)] pseudo-inverse of the filterbank (cached: an SVD per call would dominate)."""
    return np.linalg.pinv(mel_filterbank(cfg)).astype(np.float32)


def log_mel_to_magnitude(x: np.ndarray, *, cfg: FeatureConfig, mel_inverse: str = "nnls") -> np.ndarray:
    """The linear STFT magnitude a normalised log-mel stands for: dB -> power mel -> linear frequency.

    Parameters
    ----------
    x : [shape=(1, n_mels, frames) or (n_mels, frames)] normalised log-mel.
    mel_inverse : how the mel power goes back to linear frequency. ``"nnls"``: librosa's non-negative
        least squares (``mel_to_stft``), ``"pinv"``: the filterbank's pseudo-inverse, clipped at 0, a
        matrix product that costs a fraction of the solve for the same error where the note is
        (``benchmarks/bench_explore.py``, docs/explore.md).

    Returns
    -------
    [shape=(n_fft // 2 + 1, frames + 1)] float32: the frames of a centred STFT of the note's
    ``frames * hop_length`` samples, the cropped last frame given back as a copy of the one before it.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[0]
    if x.shape != (cfg.n_mels, cfg.frames):
        raise ParameterError(f"x: expected shape (1, {cfg.n_mels}, {cfg.frames}), got {x.shape}")
    if mel_inverse not in MEL_INVERSES:
        raise ParameterError(f"mel_inverse: expected one of {MEL_INVERSES}, got {mel_inverse!r}")
    power_mel = librosa.db_to_power(normalized_to_db(x, cfg=cfg))
    if mel_inverse == "pinv":
        # in torch, not NumPy: OpenBLAS's threads spin on after a NumPy product and, on 2 cores, held the
        # FFTs of the Griffin-Lim that follows to about half speed
        stft_mag = torch.from_numpy(_mel_pinv(cfg)).matmul(torch.from_numpy(power_mel)).clamp_(min=0.0).sqrt_().numpy()
    else:
        stft_mag = librosa.feature.inverse.mel_to_stft(
            power_mel, sr=cfg.sample_rate, n_fft=cfg.n_fft, power=2.0, fmin=cfg.fmin, fmax=cfg.fmax,
            htk=_htk(cfg))
    # A centred STFT of frames * hop samples has frames + 1 frames (129 for 128 kept): Griffin-Lim
    # re-analyses its estimate at that size, so the magnitude gets the cropped last frame back (edge copy).
    n_stft = cfg.frames + 1
    if stft_mag.shape[1] < n_stft:
        stft_mag = np.pad(stft_mag, ((0, 0), (0, n_stft - stft_mag.shape[1])), mode="edge")
    return np.asarray(stft_mag, np.float32)


def inverse_log_mel(x: np.ndarray, *, cfg: FeatureConfig, n_iter: int = 64, seed: int = 0,
                    mel_inverse: str = "nnls") -> np.ndarray:
    """Audio from a normalised log-mel: ``log_mel_to_magnitude``, then Griffin-Lim.

    Parameters
    ----------
    x : [shape=(1, n_mels, frames) or (n_mels, frames)] normalised log-mel.
    n_iter : Griffin-Lim iterations.
    seed : seeds Griffin-Lim's random initial phase, so the output is reproducible.
    mel_inverse : see ``log_mel_to_magnitude``.

    Returns
    -------
    [shape=(frames * hop_length,)] float32 waveform, peak-normalised to 0.9 (the dB reference
    with ``ref='max'`` carries no absolute level).
    """
    return inverse_log_mels(np.asarray(x)[None], cfg=cfg, n_iter=n_iter, seed=seed, mel_inverse=mel_inverse)[0]


def inverse_log_mels(x: np.ndarray, *, cfg: FeatureConfig, n_iter: int = 64, seed: int = 0,
                     mel_inverse: str = "nnls") -> np.ndarray:
    """``inverse_log_mel`` of several notes [shape=(notes, 1, n_mels, frames) or (notes, n_mels, frames)],
    Griffin-Lim run on ``GRIFFIN_LIM_BATCH`` notes at a time; each note's audio is what it gets alone.

    Returns
    -------
    [shape=(notes, frames * hop_length)] float32 waveforms, each peak-normalised to 0.9.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim not in (3, 4):
        raise ParameterError(f"x: expected shape (notes, 1, {cfg.n_mels}, {cfg.frames}), got {x.shape}")
    length = cfg.frames * cfg.hop_length
    out = np.empty((len(x), length), np.float32)
    for start in range(0, len(x), GRIFFIN_LIM_BATCH):
        mags = np.stack([log_mel_to_magnitude(xi, cfg=cfg, mel_inverse=mel_inverse)
                         for xi in x[start:start + GRIFFIN_LIM_BATCH]])
        out[start:start + len(mags)] = griffin_lim(mags, n_iter=n_iter, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                                   length=length, seed=seed)
    peak = np.abs(out).max(axis=1, keepdims=True).astype(np.float64)
    out *= np.where(peak > 0, 0.9 / np.where(peak > 0, peak, 1.0), 1.0).astype(np.float32)
    return out
