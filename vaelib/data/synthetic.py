"""A feature cache of any size written without audio: training and its benchmarks at NSynth scale.

:func:`build_synthetic_cache` writes a cache in the format of :mod:`vaelib.data.cache` (``features.npy``
float16 [shape=(notes, 1, n_mels, frames)], ``meta.parquet`` with the dataset's columns and ``split``,
``manifest.json`` with sizes and checksums) through :func:`vaelib.data.cache.build_feature_cache`, so
it is opened, checked, locked and written atomically like a real one, and ``vaelib train --cache``
and the benchmarks read it as they read a real one. ``NSYNTH_SPLITS`` is NSynth's shape: 289,205
train, 12,678 valid and 4,096 test notes; at 80 x 128 the train rows alone are 5.9 GB.

What a note holds: a log-mel-like image in [-1, 1], its instrument's spectral envelope (a smooth
random curve over the bands), a ridge at the band of its pitch, a decay over the frames that its
velocity slows, and noise taken from a fixed bank, so that writing costs little more than the disk.
Not music: a model learns it fast, which is all that throughput and plumbing need. Rows are grouped
by instrument and sorted like NSynth's (train, then valid, then test; by ``note_str`` within each), so
what the block order does to batches (:mod:`vaelib.model.stream`) shows here as it would there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from vaelib.config import NSYNTH_FAMILIES, NSYNTH_SOURCES, FeatureConfig, feature_representation
from vaelib.data.cache import CACHE_VERSION, FeatureCache, NpyRowWriter, build_feature_cache
from vaelib.data.features import feature_shape
from vaelib.data.nsynth import WavReport
from vaelib.exceptions import ParameterError

__all__ = ["NSYNTH_SPLITS", "SYNTHETIC_VERSION", "build_synthetic_cache", "synthetic_table", "synthetic_key",
           "parse_synthetic_spec"]

NSYNTH_SPLITS = (289_205, 12_678, 4_096)  # NSynth's train, valid and test notes
MAX_SYNTHETIC_NOTES = 10_000_000  # over 30 NSynths; the table of notes alone would fill a machine's memory first
SYNTHETIC_VERSION = 1  # in the key: raised when what a synthetic note holds changes
PER_INSTRUMENT = 304  # NSynth-train: 289,205 notes of 953 instruments
VELOCITIES = (25, 50, 75, 100, 127)
PITCHES = tuple(range(21, 109))
CHUNK = 1024  # notes made and written at a time
NOISE_BANK = 61  # noise images cycled over the notes (a prime, so neighbours never share one)


def parse_synthetic_spec(text: str) -> tuple[int, int, int]:
    """``"nsynth"`` (:data:`NSYNTH_SPLITS`) or ``"TRAIN[:VALID[:TEST]]"`` notes; VALID defaults to
    TRAIN / 23 (NSynth's ratio, at least 2) and TEST to 0.

    Raises
    ------
    ParameterError
        Naming ``--synthetic`` and what it expects.
    """
    if text.strip().lower() == "nsynth":
        return NSYNTH_SPLITS
    parts = text.split(":")
    try:
        counts = [int(p) for p in parts]
    except ValueError:
        counts = []
    if not 1 <= len(counts) <= 3 or any(c < 0 for c in counts) or (counts and counts[0] < 2):
        raise ParameterError(f"--synthetic {text!r}: expected 'nsynth' or TRAIN[:VALID[:TEST]] note counts "
                             "(TRAIN >= 2), e.g. 2000 or 2000:200:0")
    train = counts[0]
    valid = counts[1] if len(counts) > 1 else max(2, train // 23)
    test = counts[2] if len(counts) > 2 else 0
    if valid < 2:
        raise ParameterError(f"--synthetic {text!r}: VALID must be >= 2 (training evaluates on it)")
    if train + valid + test > MAX_SYNTHETIC_NOTES:
        raise ParameterError(f"--synthetic {text!r}: {train + valid + test:,} notes; at most "
                             f"{MAX_SYNTHETIC_NOTES:,} in all")
    return train, valid, test


def synthetic_key(cfg: FeatureConfig, counts: tuple[int, int, int], *, per_instrument: int, seed: int) -> str:
    """The cache key (16 hex digits) of a synthetic cache: a hash of what makes its notes."""
    payload = {"synthetic": SYNTHETIC_VERSION, "cache": CACHE_VERSION, "counts": list(counts),
               "per_instrument": per_instrument, "seed": seed, "features": feature_representation(cfg)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def synthetic_table(counts: tuple[int, int, int], *, per_instrument: int = PER_INSTRUMENT,
                    seed: int = 0) -> pd.DataFrame:
    """The metadata of a synthetic cache: NSynth's columns, ``split`` and an empty ``path``, one row per
    note; each split's instruments are its own, ``per_instrument`` notes each (the last fewer)."""
    if not 1 <= per_instrument <= len(PITCHES) * len(VELOCITIES):
        raise ParameterError(f"per_instrument: {per_instrument} is outside 1..{len(PITCHES) * len(VELOCITIES)}")
    rng = np.random.default_rng(seed)
    parts, first_instrument = [], 0
    for split, n in zip(("train", "valid", "test"), counts):
        if n == 0:
            continue
        j = np.arange(n)
        local = j // per_instrument
        instrument = first_instrument + local
        first_instrument += int(local[-1]) + 1
        family = rng.integers(0, len(NSYNTH_FAMILIES), int(local[-1]) + 1)[local]
        source = rng.integers(0, len(NSYNTH_SOURCES), int(local[-1]) + 1)[local]
        k = j % per_instrument
        pitch = np.asarray(PITCHES)[(k // len(VELOCITIES)) % len(PITCHES)]
        velocity = np.asarray(VELOCITIES)[k % len(VELOCITIES)]
        fam = np.asarray(NSYNTH_FAMILIES)[family]
        src = np.asarray(NSYNTH_SOURCES)[source]
        inst_str = [f"{f}_{s}_{i:04d}" for f, s, i in zip(fam, src, instrument)]
        part = pd.DataFrame({
            "instrument": instrument, "instrument_family": family, "instrument_source": source,
            "pitch": pitch, "velocity": velocity, "sample_rate": 16000,
            "note_str": [f"{s}-{p:03d}-{v:03d}" for s, p, v in zip(inst_str, pitch, velocity)],
            "instrument_str": inst_str, "instrument_family_str": fam, "instrument_source_str": src,
        })
        part = part.sort_values("note_str", kind="stable").reset_index(drop=True)
        part["split"] = split
        parts.append(part)
    df = pd.concat(parts, ignore_index=True)
    df.insert(0, "note", np.arange(len(df), dtype=np.int64))
    df["qualities"] = [[0] * 10] * len(df)
    df["qualities_str"] = [[] for _ in range(len(df))]
    df["path"] = ""
    return df


def _notes(df: pd.DataFrame, start: int, stop: int, *, envelopes: np.ndarray, noise: np.ndarray,
           frames: int) -> np.ndarray:
    """Rows ``start:stop`` of the features: [shape=(stop - start, 1, n_mels, frames)] float16 in [-1, 1]."""
    n_mels = envelopes.shape[1]
    rows = df.iloc[start:stop]
    env = envelopes[rows["instrument"].to_numpy() % len(envelopes)]  # (n, n_mels)
    band = (rows["pitch"].to_numpy() - PITCHES[0]) / (PITCHES[-1] - PITCHES[0]) * (n_mels - 1)
    ridge = 0.6 * np.exp(-0.5 * ((np.arange(n_mels)[None, :] - band[:, None]) / 2.0) ** 2)
    rate = 1.5 - rows["velocity"].to_numpy() / 127.0  # louder notes decay slower
    decay = -rate[:, None] * np.linspace(0.0, 1.0, frames)[None, :]  # (n, frames)
    x = (env + ridge)[:, :, None] + decay[:, None, :] + noise[np.arange(start, stop) % len(noise)]
    return np.clip(x, -1.0, 1.0).astype(np.float16)[:, None]


def build_synthetic_cache(cfg: FeatureConfig, counts: tuple[int, int, int], *, per_instrument: int = PER_INSTRUMENT,
                          seed: int = 0, show_progress: bool = True) -> FeatureCache:
    """The synthetic cache of ``counts`` = (train, valid, test) notes of shape ``feature_shape(cfg)`` in
    ``cfg.cache_dir``, written if missing (see the module docstring; same key, same cache).

    Raises
    ------
    ParameterError
        On a count below 0, fewer than 2 train or valid notes.
    DataError
        When the cache folder cannot be written or the disk lacks the space (checked before writing).
    """
    train, valid, test = counts
    if train < 2 or valid < 2 or test < 0:
        raise ParameterError(f"synthetic counts {list(counts)}: at least 2 train and 2 valid notes, test >= 0")
    df = synthetic_table(counts, per_instrument=per_instrument, seed=seed)
    shape = (len(df), *feature_shape(cfg))
    rng = np.random.default_rng(seed + 1)
    n_instruments = int(df["instrument"].max()) + 1
    walk = np.cumsum(rng.normal(0.0, 0.15, (n_instruments, cfg.n_mels)), axis=1)
    walk -= walk.mean(axis=1, keepdims=True)
    envelopes = np.clip(walk, -0.7, 0.7) - 0.2  # (instruments, n_mels)
    noise = rng.normal(0.0, 0.08, (NOISE_BANK, cfg.n_mels, cfg.frames)).astype(np.float32)

    def fill(path: Path) -> WavReport:
        with NpyRowWriter(path, shape) as out, \
                tqdm(total=len(df), desc="synthetic", unit="note", disable=not show_progress) as bar:
            for start in range(0, len(df), CHUNK):
                stop = min(start + CHUNK, len(df))
                out[start:stop] = _notes(df, start, stop, envelopes=envelopes, noise=noise, frames=cfg.frames)
                bar.update(stop - start)
            out.sync()
        return WavReport()

    key = synthetic_key(cfg, counts, per_instrument=per_instrument, seed=seed)
    return build_feature_cache(df, cfg, features=fill, key=key, show_progress=show_progress,
                               manifest_extra={"synthetic": {"version": SYNTHETIC_VERSION, "counts": list(counts),
                                                             "per_instrument": per_instrument, "seed": seed}})
