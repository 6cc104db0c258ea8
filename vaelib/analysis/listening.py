"""Spectrograms back to sound, and an objective check of that path.

Audio comes from ``vaelib.data.features.inverse_log_mel`` (NNLS mel inversion, then Griffin-Lim). The
check inverts a log-mel to audio, computes the log-mel of the result again and reports the mean absolute
difference in dB: what the listener hears is only as faithful as this number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from vaelib.config import FeatureConfig
from vaelib.data.features import inverse_log_mel, log_mel, normalized_to_db
from vaelib.exceptions import ParameterError
from vaelib.io import atomic_path

__all__ = ["invert_to_audio", "roundtrip_mae_db", "invert_and_check", "choose_listening_notes", "write_wav"]


def invert_to_audio(x: np.ndarray, *, cfg: FeatureConfig, n_iter: int, seed: int = 0) -> np.ndarray:
    """Audio of normalised log-mels [shape=(notes, 1, n_mels, frames)] by Griffin-Lim.

    Returns
    -------
    [shape=(notes, frames * hop_length)] float32 waveforms at ``cfg.sample_rate``, each peak 0.9.
    """
    if n_iter < 1:
        raise ParameterError(f"n_iter: expected >= 1, got {n_iter}")
    x = np.asarray(x, np.float32)
    if x.ndim != 4:
        raise ParameterError(f"x: expected shape (notes, 1, n_mels, frames), got {x.shape}")
    return np.stack([inverse_log_mel(xi, cfg=cfg, n_iter=n_iter, seed=seed) for xi in x])


def roundtrip_mae_db(x: np.ndarray, audio: np.ndarray, *, cfg: FeatureConfig,
                     above_db: float | None = None) -> np.ndarray:
    """Mean absolute difference in dB between the log-mel of inverted audio and the log-mel it came from.

    Parameters
    ----------
    x : [shape=(notes, 1, n_mels, frames)] normalised log-mel the audio was inverted from.
    audio : [shape=(notes, samples)] waveforms inverted from ``x``.
    above_db : average only over the cells where the source is at least this loud (e.g. -40: the
        note itself, not the floor, where Griffin-Lim's phase noise dominates); None: every cell.
        A note with no such cell gets NaN.

    Returns
    -------
    [shape=(notes,)] dB, averaged over the mel bins and frames (both clipped to [-top_db, 0]).

    Notes
    -----
    With ``ref='max'`` a log-mel carries no absolute level: the log-mel of any audible audio peaks at
    0 dB (digital silence stays at -top_db).
    A decoded spectrogram may peak below 0 dB, so it is first re-referenced to its own peak (and
    clipped again), as the features of its audio necessarily are; otherwise the check would count
    that level offset in every bin.
    """
    if len(x) != len(audio):
        raise ParameterError(f"audio: {len(audio)} waveforms for {len(x)} spectrograms")
    out = np.empty(len(x), np.float64)
    for i, (xi, ai) in enumerate(zip(x, audio)):
        source = normalized_to_db(np.asarray(xi, np.float32), cfg=cfg)
        if cfg.ref == "max" and source.max() > -cfg.top_db:  # a silent source stays silent
            source = np.clip(source - source.max(), -cfg.top_db, 0.0)
        err = np.abs(normalized_to_db(log_mel(ai, cfg=cfg), cfg=cfg) - source)
        if above_db is not None:
            err = err[source >= above_db]
        out[i] = np.mean(err) if err.size else np.nan  # no cell that loud (only with ref='fixed')
    return out


def invert_and_check(x: np.ndarray, *, cfg: FeatureConfig, n_iter: int, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``invert_to_audio`` then ``roundtrip_mae_db``: waveforms [shape=(notes, samples)] and dB per note."""
    audio = invert_to_audio(x, cfg=cfg, n_iter=n_iter, seed=seed)
    return audio, roundtrip_mae_db(x, audio, cfg=cfg)


def choose_listening_notes(meta: pd.DataFrame, *, n: int, pitch: int, velocity: int) -> np.ndarray:
    """Row positions of ``n`` notes to listen to: families in turn, in each the note nearest ``pitch``
    and ``velocity`` of the next unused instrument (name order).

    Returns
    -------
    [shape=(min(n, notes),)] int row positions into ``meta``.
    """
    if n < 1:
        raise ParameterError(f"n: expected >= 1, got {n}")
    cost = (meta["pitch"] - pitch).abs() * 1000 + (meta["velocity"] - velocity).abs()
    order = meta.assign(_cost=cost.to_numpy(), _pos=np.arange(len(meta)))
    per_family = {}
    for fam, g in order.sort_values(["instrument_str", "_cost", "_pos"]).groupby("instrument_family_str", sort=True):
        per_family[fam] = list(g.groupby("instrument_str", sort=True)["_pos"].first())
    picked: list[int] = []
    while len(picked) < min(n, len(meta)) and any(per_family.values()):
        for fam in sorted(per_family):
            if per_family[fam] and len(picked) < n:
                picked.append(int(per_family[fam].pop(0)))
    return np.array(picked, dtype=np.int64)


def write_wav(path: str | Path, audio: np.ndarray, *, sample_rate: int) -> Path:
    """Write a mono float waveform as 16-bit PCM wav, atomically."""
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1 or not np.all(np.isfinite(audio)):
        raise ParameterError(f"audio: expected a finite 1-D waveform, got shape {audio.shape}")
    with atomic_path(path, suffix=".wav") as tmp:
        sf.write(tmp, np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return Path(path)
