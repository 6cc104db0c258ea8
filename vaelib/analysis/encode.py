"""Sounds from outside the dataset: any audio file brought to a run's features, encoded and placed on its map.

A file of any common format, rate and channel count (whatever libsndfile reads: wav, flac, ogg, aiff,
and mp3 with libsndfile >= 1.1) needs no NSynth metadata. It is brought to the features of the trained
run by the steps the feature cache applies to NSynth wavs: channels downmixed by their mean, resampled to
``features.sample_rate`` with librosa, padded with silence or cut to ``features.duration_s``, then the
log-mel of :func:`vaelib.data.features.log_mel_batch`.

Loudness: with ``features.ref='max'`` every log-mel is relative to the note's own peak, so the gain of a
file changes nothing. With ``ref='fixed'`` the log-mel is measured against ``features.ref_power`` and the
file's level is used as it is: a quieter recording of the same note lands elsewhere (a warning says so).

What places meaningfully is what the model was trained on: a single sustained note of about
``duration_s`` seconds, one pitch, its onset at the start. A chord, speech, a loop or a phrase is placed
somewhere all the same, but its point means little.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from vaelib.analysis.latent import Projection, encode_features, project_pca
from vaelib.config import FeatureConfig
from vaelib.data.features import log_mel_batch
from vaelib.exceptions import DataError, ParameterError
from vaelib.io import atomic_path

__all__ = [
    "AUDIO_SUFFIXES",
    "Sound",
    "find_sounds",
    "read_sound",
    "read_sounds",
    "sound_features",
    "encode_sounds",
    "sounds_table",
    "write_sounds_table",
    "place_on_map",
    "nearest_notes",
]

# What a folder is searched for (case-insensitive); a file named explicitly is read whatever its suffix.
AUDIO_SUFFIXES = (".wav", ".wave", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".aifc", ".mp3")
MAX_NAMED_PROBLEMS = 10  # bad files named in one error message; the rest are counted


@dataclass(frozen=True)
class Sound:
    """One file brought to a run's features.

    audio : [shape=(round(duration_s * sample_rate),)] float32 mono at the features' rate, padded or cut.
    source_* : what the file held: its rate (Hz), channels and length (s).
    cut : whether it was longer than ``duration_s`` (then only its beginning is encoded).
    """

    name: str
    path: str
    audio: np.ndarray
    source_rate: int
    source_channels: int
    source_seconds: float
    cut: bool  # longer than features.duration_s: only its beginning is encoded


def find_sounds(paths: Iterable[str | Path]) -> list[Path]:
    """The audio files named by ``paths``: each file as named, each folder searched recursively for
    ``AUDIO_SUFFIXES`` (sorted, hidden files and folders left out).

    Raises
    ------
    ParameterError
        When a path does not exist, or nothing to encode is found.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not inside:
                raise ParameterError(f"{path}: no audio file ({', '.join(AUDIO_SUFFIXES)}) in this folder")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise ParameterError(f"{path}: no such file or folder")
    if not found:
        raise ParameterError("no audio file given")
    return list(dict.fromkeys(found))


def read_sound(source: str | Path | bytes, *, cfg: FeatureConfig, name: str | None = None) -> Sound:
    """Read one audio file (a path, or its bytes as uploaded) and bring it to the features' rate and length.

    Parameters
    ----------
    source : a file path, or the file's content (any format libsndfile reads).
    cfg : the run's features: ``sample_rate``, ``duration_s`` and ``n_fft`` (the shortest file accepted).
    name : what to call it in messages and tables (default: the path's file name, or 'upload').

    Returns
    -------
    Sound, its ``audio`` [shape=(round(duration_s * sample_rate),)] float32.

    Raises
    ------
    DataError
        Naming the file: unreadable (not audio, or a format libsndfile does not read), empty, holding
        NaN or infinite samples, shorter than one STFT frame (``n_fft`` samples at the features' rate),
        or digitally silent in the part that is encoded.
    """
    path = "" if isinstance(source, (bytes, bytearray)) else str(source)
    name = name or (Path(path).name if path else "upload")
    where = path or name
    try:
        data, rate = sf.read(io.BytesIO(bytes(source)) if not path else path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        if path and not Path(path).is_file():
            raise DataError(f"{where}: file not found") from exc
        raise DataError(f"{where}: not a readable audio file ({exc})") from exc
    if data.size == 0:
        raise DataError(f"{where}: the file holds no samples")
    if not np.isfinite(data).all():
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        raise DataError(f"{where}: {bad} of {data.size} samples are NaN or infinite")
    channels, source_seconds = data.shape[1], data.shape[0] / rate
    audio = data.mean(axis=1) if channels > 1 else data[:, 0]
    if rate != cfg.sample_rate:
        if math.ceil(len(audio) * cfg.sample_rate / rate) < cfg.n_fft:  # too short even to resample usefully
            raise _too_short(where, len(audio), rate, cfg)
        import librosa

        audio = librosa.resample(audio, orig_sr=rate, target_sr=cfg.sample_rate).astype(np.float32)
    if len(audio) < cfg.n_fft:
        raise _too_short(where, len(audio), cfg.sample_rate, cfg)
    n_samples = int(round(cfg.duration_s * cfg.sample_rate))
    out = np.zeros(n_samples, np.float32)
    m = min(len(audio), n_samples)
    out[:m] = audio[:m]
    if not np.any(out):
        part = "every sample is 0" if not np.any(audio) else f"its first {cfg.duration_s:g} s, the part encoded"
        raise DataError(f"{where}: digital silence ({part}); there is no sound to place")
    return Sound(name=name, path=path, audio=out, source_rate=int(rate), source_channels=int(channels),
                 source_seconds=float(source_seconds), cut=len(audio) > n_samples)


def _too_short(where: str, n: int, rate: int, cfg: FeatureConfig) -> DataError:
    return DataError(f"{where}: {n} samples at {rate} Hz ({1000 * n / rate:.1f} ms) is shorter than one STFT frame "
                     f"(features.n_fft = {cfg.n_fft} samples at {cfg.sample_rate} Hz, "
                     f"{1000 * cfg.n_fft / cfg.sample_rate:.1f} ms)")


def read_sounds(paths: Iterable[str | Path], *, cfg: FeatureConfig) -> list[Sound]:
    """:func:`read_sound` of every file of :func:`find_sounds` (paths), all checked before any is used.

    Raises
    ------
    DataError
        Naming every file that cannot be placed and why (the first ``MAX_NAMED_PROBLEMS``; the rest counted).
    """
    files = find_sounds(paths)
    sounds, problems = [], []
    for path in files:
        try:
            sounds.append(read_sound(path, cfg=cfg))
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        shown = problems[:MAX_NAMED_PROBLEMS]
        more = len(problems) - len(shown)
        raise DataError(f"{len(problems)} of {len(files)} files cannot be placed: " + "; ".join(shown)
                        + (f"; and {more} more" if more else ""))
    cut = [s.name for s in sounds if s.cut]
    if cut:
        warnings.warn(f"{len(cut)} file(s) longer than features.duration_s = {cfg.duration_s:g} s, only their "
                      f"beginning is encoded: {', '.join(cut[:MAX_NAMED_PROBLEMS])}"
                      + (", ..." if len(cut) > MAX_NAMED_PROBLEMS else ""), stacklevel=2)
    if cfg.ref == "fixed":
        warnings.warn("features.ref is 'fixed': the log-mel is measured against features.ref_power, so each file's "
                      "level is used as it is and a quieter recording of one note lands elsewhere", stacklevel=2)
    return sounds


def sound_features(sounds: list[Sound], *, cfg: FeatureConfig) -> np.ndarray:
    """Normalised log-mel of each sound, [shape=(sounds, 1, n_mels, frames)] float32 in [-1, 1].

    Raises
    ------
    DataError
        Naming the sounds whose log-mel is not finite (samples so far beyond full scale that power overflows).
    """
    if not sounds:
        raise ParameterError("sounds: none given")
    audio = torch.from_numpy(np.stack([s.audio for s in sounds]))  # (n, samples)
    features = log_mel_batch(audio, cfg=cfg).numpy()
    bad = [i for i in range(len(sounds)) if not np.isfinite(features[i]).all()]
    if bad:  # finite samples so loud that their power overflows
        named = [f"{sounds[i].name} (peak {float(np.abs(sounds[i].audio).max()):.3g})"
                 for i in bad[:MAX_NAMED_PROBLEMS]]
        raise DataError(f"{len(bad)} of {len(sounds)} files give non-finite log-mel values, their samples far "
                        f"outside full scale (+-1): {', '.join(named)}"
                        + (", ..." if len(bad) > MAX_NAMED_PROBLEMS else ""))
    return features


def encode_sounds(model: torch.nn.Module, sounds: list[Sound], *, cfg: FeatureConfig,
                  device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, mu and logvar of each sound.

    Returns
    -------
    features : [shape=(sounds, 1, n_mels, frames)]; mu, logvar : [shape=(sounds, latent_dim)] float32.
    """
    features = sound_features(sounds, cfg=cfg)
    mu, logvar = encode_features(model, features, device=device)
    return features, mu, logvar


def sounds_table(sounds: list[Sound], mu: np.ndarray, logvar: np.ndarray) -> pd.DataFrame:
    """One row per sound: ``file``, ``path``, ``source_rate``, ``source_channels``, ``source_seconds``,
    ``mu_0..`` and ``logvar_0..``."""
    if len(sounds) != len(mu) or mu.shape != logvar.shape:
        raise ParameterError(f"sounds_table: {len(sounds)} sounds, mu {mu.shape}, logvar {logvar.shape}")
    d = mu.shape[1]
    table = pd.DataFrame({"file": [s.name for s in sounds], "path": [s.path for s in sounds],
                          "source_rate": [s.source_rate for s in sounds],
                          "source_channels": [s.source_channels for s in sounds],
                          "source_seconds": [s.source_seconds for s in sounds]})
    lat = pd.DataFrame(np.concatenate([mu, logvar], axis=1).astype(np.float32),
                       columns=[f"mu_{i}" for i in range(d)] + [f"logvar_{i}" for i in range(d)])
    return pd.concat([table, lat], axis=1)


def write_sounds_table(table: pd.DataFrame, out: str | Path) -> Path:
    """Write the table as Parquet, atomically (whole or not at all)."""
    with atomic_path(out, suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)
    return Path(out)


def place_on_map(run_mu: np.ndarray, new_mu: np.ndarray, *, seed: int = 0) -> tuple[Projection, np.ndarray]:
    """The PCA map of the run's notes and the new points on it.

    Parameters
    ----------
    run_mu : [shape=(notes, latent_dim)] mu of the run's notes, which the axes are fitted on.
    new_mu : [shape=(sounds, latent_dim)] mu of the sounds placed.

    Returns
    -------
    The projection (``coords`` of the run's notes) and the sounds' coordinates [shape=(sounds, 2)].
    """
    new_mu = np.asarray(new_mu, np.float32)
    if new_mu.ndim != 2 or new_mu.shape[1] != np.shape(run_mu)[1]:
        raise ParameterError(f"new_mu: expected shape (sounds, {np.shape(run_mu)[1]}), got {new_mu.shape}")
    projection = project_pca(run_mu, seed=seed)
    return projection, projection.transform(new_mu)


def nearest_notes(run_mu: np.ndarray, mu: np.ndarray, *, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` notes of the run nearest each point in mu (Euclidean), nearest first.

    Parameters
    ----------
    run_mu : [shape=(notes, latent_dim)]; mu : [shape=(points, latent_dim)].

    Returns
    -------
    rows : [shape=(points, k)] int row positions into ``run_mu``; distances : [shape=(points, k)] float.
    """
    run_mu, mu = np.asarray(run_mu, np.float64), np.atleast_2d(np.asarray(mu, np.float64))
    if run_mu.ndim != 2 or mu.shape[1] != run_mu.shape[1]:
        raise ParameterError(f"mu: expected shape (points, {run_mu.shape[-1]}), got {mu.shape}")
    if not 1 <= k <= len(run_mu):
        raise ParameterError(f"k: expected 1..{len(run_mu)}, got {k}")
    distance = np.linalg.norm(run_mu[None] - mu[:, None], axis=2)  # (points, notes)
    rows = np.argsort(distance, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(distance, rows, axis=1)
