"""Reading NSynth `jsonwav` splits: metadata table, filters, instrument-disjoint splits, wav decoding.

A split folder holds ``examples.json`` (``{note_str: {...}}``) and ``audio/<note_str>.wav``
(16 kHz mono 16-bit, 4 s). The schema is in ``docs/data.md``.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from vaelib.config import NSYNTH_FAMILIES, NSYNTH_SOURCES, SPLIT_UNITS, DataConfig, resolve_path
from vaelib.exceptions import DataError, ParameterError
from vaelib.io import file_in_the_way

__all__ = [
    "SCHEMA_FIELDS",
    "SOURCE_FIELDS",
    "INT_FIELDS",
    "QUALITIES",
    "SPLITS",
    "read_examples",
    "filter_examples",
    "split_by_instrument",
    "load_dataset",
    "read_wav",
    "WavReport",
    "NonFiniteAudioError",
    "FULL_SCALE",
    "CLIP_RUN",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
QUALITIES = (
    "bright", "dark", "distortion", "fast_decay", "long_release",
    "multiphonic", "nonlinear_env", "percussive", "reverb", "tempo-synced",
)
INT_FIELDS = ("note", "instrument", "instrument_family", "instrument_source", "pitch", "velocity", "sample_rate")
STR_FIELDS = ("note_str", "instrument_str", "instrument_family_str", "instrument_source_str")
SCHEMA_FIELDS = INT_FIELDS + STR_FIELDS + ("qualities", "qualities_str")
# Fields beyond NSynth's that vaelib's renders write: the source SoundFont's file name and the GM program.
# Read when a dataset has them (a column each); a note without one reads "" / -1.
SOURCE_FIELDS = {"soundfont": "", "program": -1}
FULL_SCALE = 32767 / 32768  # the largest positive 16-bit sample: a sample this loud or louder is at the rail
CLIP_RUN = 3  # consecutive samples at the rail that mark a file clipped (one peak at 0 dBFS is not clipping)


class NonFiniteAudioError(DataError):
    """A wav holds NaN or infinite samples: no feature of it means anything."""


def _as_int(value: object, where: str) -> int:
    """NSynth means ints but some copies write ``60.0``: accept integral floats, refuse the rest."""
    if isinstance(value, bool):
        raise DataError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if not -2**63 <= value < 2**63:  # the table holds int64
            raise DataError(f"{where}: {value} is out of range for an integer field (64-bit)")
        return value
    raise DataError(f"{where}: expected an integer, got {value!r}")


def _check_note_str(note_str: str, where: str) -> None:
    # The key becomes a file name: anything that could leave audio/ is refused.
    if (not isinstance(note_str, str) or not note_str or note_str in (".", "..")
            or "/" in note_str or "\\" in note_str or ".." in note_str or "\x00" in note_str):
        raise DataError(f"{where}: note_str {note_str!r} is not a plain file name "
                        "(no path separators or '..' allowed)")


def _unique_keys(pairs: list[tuple[str, object]], path: Path) -> dict:
    """``object_pairs_hook`` of ``json.loads``: a key given twice in one object is an error, not a silent overwrite."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise DataError(f"{path}: key {k!r} appears twice in one object (a note or field given twice)")
        out[k] = v
    return out


def read_examples(split_dir: str | Path) -> pd.DataFrame:
    """Read ``<split_dir>/examples.json`` into a table with every schema field, ints typed as ints.

    Parameters
    ----------
    split_dir : folder holding ``examples.json`` and ``audio/``.

    Returns
    -------
    DataFrame, one row per note sorted by ``note_str``, columns ``SCHEMA_FIELDS``, then each of
    ``SOURCE_FIELDS`` that some note of the file has, then ``path`` (the wav's expected location;
    existence is checked when it is read). Other extra fields are ignored.

    Raises
    ------
    DataError
        Missing ``examples.json``, malformed JSON, an entry missing a field or with a wrong type,
        a ``note_str`` that is not a plain file name or that differs from its key.
    """
    split_dir = Path(split_dir)
    path = split_dir / "examples.json"
    if not path.is_file():
        raise DataError(f"{path}: examples.json not found (expected an NSynth jsonwav split folder)")
    try:
        raw = json.loads(path.read_text(), object_pairs_hook=lambda pairs: _unique_keys(pairs, path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: malformed JSON ({exc})") from exc
    except RecursionError as exc:
        raise DataError(f"{path}: JSON nested too deeply to be NSynth metadata (an object of note objects)") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object {{note_str: {{...}}}}, got {type(raw).__name__}")
    rows = []
    for key, entry in raw.items():
        where = f"{path}: entry {key!r}"
        _check_note_str(key, where)
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
        missing = [f for f in SCHEMA_FIELDS if f not in entry]
        if missing:
            raise DataError(f"{where}: missing field(s) {missing}")
        row = {f: _as_int(entry[f], f"{where} field {f!r}") for f in INT_FIELDS}
        for f in STR_FIELDS:
            if not isinstance(entry[f], str):
                raise DataError(f"{where} field {f!r}: expected a string, got {entry[f]!r}")
            row[f] = entry[f]
        if row["note_str"] != key:
            raise DataError(f"{where}: note_str {row['note_str']!r} differs from its key")
        quals = entry["qualities"]
        if not isinstance(quals, list) or len(quals) != len(QUALITIES):
            raise DataError(f"{where} field 'qualities': expected a list of {len(QUALITIES)} 0/1 flags, got {quals!r}")
        row["qualities"] = [_as_int(q, f"{where} field 'qualities'") for q in quals]
        if any(q not in (0, 1) for q in row["qualities"]):
            raise DataError(f"{where} field 'qualities': expected a list of {len(QUALITIES)} 0/1 flags, got {quals!r}")
        qs = entry["qualities_str"]
        if not isinstance(qs, list) or not all(isinstance(q, str) for q in qs):
            raise DataError(f"{where} field 'qualities_str': expected a list of strings, got {qs!r}")
        row["qualities_str"] = list(qs)
        if not 0 <= row["instrument_family"] < len(NSYNTH_FAMILIES):
            raise DataError(f"{where} field 'instrument_family': {row['instrument_family']} is not in 0-10")
        if not 0 <= row["instrument_source"] < len(NSYNTH_SOURCES):
            raise DataError(f"{where} field 'instrument_source': {row['instrument_source']} is not in 0-2")
        if not 0 <= row["pitch"] <= 127:
            raise DataError(f"{where} field 'pitch': {row['pitch']} is not a MIDI pitch (0-127)")
        if row["sample_rate"] <= 0:
            raise DataError(f"{where} field 'sample_rate': {row['sample_rate']} is not a sample rate (Hz, above 0)")
        if not 0 <= row["velocity"] <= 127:
            raise DataError(f"{where} field 'velocity': {row['velocity']} is not a MIDI velocity (0-127)")
        for f, names, id_field in (("instrument_family_str", NSYNTH_FAMILIES, "instrument_family"),
                                   ("instrument_source_str", NSYNTH_SOURCES, "instrument_source")):
            expected = names[row[id_field]]
            if row[f] != expected:
                known = "" if row[f] in names else f", not one of {list(names)}"
                raise DataError(f"{where} field {f!r}: {row[f]!r}{known}; expected {expected!r} "
                                f"for {id_field} {row[id_field]}")
        if "soundfont" in entry:
            if not isinstance(entry["soundfont"], str):
                raise DataError(f"{where} field 'soundfont': expected a file name, got {entry['soundfont']!r}")
            row["soundfont"] = entry["soundfont"]
        if "program" in entry:
            row["program"] = _as_int(entry["program"], f"{where} field 'program'")
            if not 0 <= row["program"] <= 127:
                raise DataError(f"{where} field 'program': {row['program']} is not a GM program (0-127)")
        row["path"] = str(split_dir / "audio" / f"{key}.wav")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: holds no notes")
    extra = [f for f in SOURCE_FIELDS if any(f in r for r in rows)]
    for r in rows:
        for f in extra:
            r.setdefault(f, SOURCE_FIELDS[f])
    df = pd.DataFrame(rows, columns=list(SCHEMA_FIELDS) + extra + ["path"])
    # an instrument is one family and one source: its notes are split, probed and mapped as one
    values = df.groupby("instrument_str")[["instrument_family_str", "instrument_source_str"]].nunique()
    for label_field in values.columns:
        mixed = values[label_field]
        if (mixed > 1).any():
            name = str(mixed[mixed > 1].index[0])
            notes = df[df["instrument_str"] == name].drop_duplicates(label_field)
            raise DataError(f"{path}: instrument {name!r} has notes of {len(notes)} values of {label_field!r} ("
                            + ", ".join(f"{v!r} in {n!r}" for v, n in zip(notes[label_field], notes["note_str"]))
                            + f"); {int((mixed > 1).sum())} instrument(s) so: an instrument needs one")
    if "program" in extra:
        df["program"] = df["program"].astype("int64")
    for f in INT_FIELDS:
        df[f] = df[f].astype("int64")
    return df.sort_values("note_str", kind="stable").reset_index(drop=True)


def filter_examples(
    df: pd.DataFrame,
    *,
    families: tuple[str, ...] = (),
    sources: tuple[str, ...] = (),
    pitch_min: int = 21,
    pitch_max: int = 108,
    velocities: tuple[int, ...] = (),
    instruments: tuple[str, ...] = (),
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Keep the notes that pass every filter; return them and the count dropped by each filter.

    Every drop is logged with its count, so nothing disappears silently (the real NSynth-valid
    holds notes up to pitch 120, outside the 21-108 piano range of the study).
    """
    if pitch_min > pitch_max:
        raise ParameterError(f"pitch_min ({pitch_min}) is above pitch_max ({pitch_max})")
    dropped: dict[str, int] = {}
    masks = {
        "pitch_range": df["pitch"].between(pitch_min, pitch_max),
        "families": df["instrument_family_str"].isin(families) if families else None,
        "sources": df["instrument_source_str"].isin(sources) if sources else None,
        "velocities": df["velocity"].isin(velocities) if velocities else None,
        "instruments": df["instrument_str"].isin(instruments) if instruments else None,
    }
    keep = pd.Series(True, index=df.index)
    for name, mask in masks.items():
        if mask is None:
            continue
        n = int((keep & ~mask).sum())
        dropped[name] = n
        if n:
            detail = f" outside {pitch_min}-{pitch_max}" if name == "pitch_range" else ""
            log.warning("filter %s dropped %d of %d notes%s", name, n, len(df), detail)
        keep &= mask
    return df[keep].reset_index(drop=True), dropped


def split_by_instrument(
    df: pd.DataFrame, *, seed: int, valid_fraction: float, test_fraction: float, by: str = "instrument"
) -> pd.Series:
    """Assign every instrument to one of train/valid/test, by family, from one seed.

    Within each family the instruments are shuffled and about ``test_fraction`` and
    ``valid_fraction`` of them held out, always leaving at least one in train, so no family
    is missing from training and no instrument appears in two splits. With ``by='program'`` the
    unit is the GM program (the ``program`` field of vaelib's renders): the instruments of one
    program, from every SoundFont, share a split.

    Returns
    -------
    Series of split names aligned with ``df``.

    Raises
    ------
    ParameterError
        ``by='program'`` on a dataset that records no GM program per note.
    """
    key = "instrument_str"
    if by == "program":
        if "program" not in df.columns or (df["program"] < 0).any():
            raise ParameterError("data.split_by 'program': the dataset records no GM program for every note (only "
                                 "vaelib's renders of SoundFonts do); use data.split_by 'instrument'")
        key = "program"
    elif by not in SPLIT_UNITS:
        raise ParameterError(f"data.split_by: expected one of {SPLIT_UNITS}, got {by!r}")
    rng = np.random.default_rng(seed)
    assignment: dict = {}
    for _family, group in df.groupby("instrument_family_str", sort=True):
        names = np.array(sorted(group[key].unique()))
        rng.shuffle(names)
        n = len(names)
        n_test = int(round(n * test_fraction)) if n >= 3 else 0
        n_valid = int(round(n * valid_fraction)) if n >= 3 else 0
        if n_test + n_valid >= n:
            n_valid = max(0, n - 1 - n_test)
        for i, name in enumerate(names):
            assignment[name] = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
    return df[key].map(assignment).rename("split")


def _subsample(df: pd.DataFrame, max_notes: int, seed: int) -> pd.DataFrame:
    if not max_notes or len(df) <= max_notes:
        return df
    return df.sample(n=max_notes, random_state=seed).sort_values("note_str").reset_index(drop=True)


def held_out_soundfonts(df: pd.DataFrame, names: tuple[str, ...], *, root: Path) -> np.ndarray:
    """Which notes come from the SoundFonts ``names`` (``data.test_soundfonts``), [shape=(notes,)] bool.

    Raises
    ------
    ParameterError
        The dataset records no ``soundfont`` (not a vaelib render), a name is none of its sources, or
        every note would be held out.
    DataError
        An instrument has notes from a held-out SoundFont and from another (the test split would share
        an instrument with train).
    """
    if not names:
        return np.zeros(len(df), dtype=bool)
    if "soundfont" not in df.columns:
        raise ParameterError(f"data.test_soundfonts {list(names)}: {root} records no `soundfont` per note (it was "
                             "not rendered by vaelib from several SoundFonts); leave data.test_soundfonts empty")
    sources = sorted(set(df["soundfont"]) - {""})
    unknown = [n for n in names if n not in sources]
    if unknown:
        raise ParameterError(f"data.test_soundfonts: {unknown} is not a source of {root} (its sources: {sources})")
    held = df["soundfont"].isin(names).to_numpy()
    if held.all():
        raise ParameterError(f"data.test_soundfonts {list(names)}: every note of {root} comes from them, "
                             "leaving nothing to train on")
    shared = sorted(set(df.loc[held, "instrument_str"]) & set(df.loc[~held, "instrument_str"]))
    if shared:
        raise DataError(f"{root}: instrument(s) {shared[:5]} have notes from a held-out SoundFont and from another; "
                        "a held-out SoundFont needs instrument names of its own")
    return held


def load_dataset(cfg: DataConfig, *, seed: int = 0, root: str | Path | None = None) -> pd.DataFrame:
    """Read, filter and split an NSynth-layout dataset.

    When the root holds ``nsynth-train``/``nsynth-valid``/``nsynth-test`` those are NSynth's own
    instrument-disjoint splits; otherwise the root is one split folder, split by instrument here.
    Either way the notes of ``cfg.test_soundfonts`` all go to test (:func:`held_out_soundfonts`);
    in one folder the other notes are split by instrument among themselves.

    Returns
    -------
    DataFrame of the kept notes with a ``split`` column (train/valid/test).
    """
    root = Path(root) if root is not None else resolve_path(cfg.root)
    blocker = file_in_the_way(root)
    if blocker is not None:
        where = "is a file" if blocker == root else f"{blocker} is a file"
        raise DataError(f"{root}: {where}, expected a dataset folder (data.root={cfg.root!r})")
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found (data.root={cfg.root!r})")
    filters = dict(families=cfg.families, sources=cfg.sources, pitch_min=cfg.pitch_min,
                   pitch_max=cfg.pitch_max, velocities=cfg.velocities, instruments=cfg.instruments)
    own = [root / f"nsynth-{s}" for s in SPLITS]
    if any(p.is_dir() for p in own):
        parts = []
        for split, folder in zip(SPLITS, own):
            if not folder.is_dir():
                log.warning("%s: no such split folder; split %s is empty", folder, split)
                continue
            part, _ = filter_examples(read_examples(folder), **filters)
            part = _subsample(part, cfg.max_notes, seed)
            parts.append(part.assign(split=split))
        df = pd.concat(parts, ignore_index=True)
        for f, missing in SOURCE_FIELDS.items():  # split folders of which only some record the field
            if f in df.columns:
                df[f] = df[f].fillna(missing).astype(type(missing))
        df.loc[held_out_soundfonts(df, cfg.test_soundfonts, root=root), "split"] = "test"
    else:
        df, _ = filter_examples(read_examples(root), **filters)
        held = held_out_soundfonts(df, cfg.test_soundfonts, root=root)
        split = pd.Series("test", index=df.index, name="split")
        kept = df[~held]
        split[~held] = split_by_instrument(kept, seed=seed, valid_fraction=cfg.valid_fraction,
                                           test_fraction=cfg.test_fraction, by=cfg.split_by)
        df = df.assign(split=split)
        if cfg.max_notes:
            df = pd.concat([_subsample(g, cfg.max_notes, seed) for _, g in df.groupby("split", sort=True)],
                           ignore_index=True)
    if df.empty:
        raise DataError(f"{root}: no notes left after the filters {filters}")
    return df.sort_values(["split", "note_str"], kind="stable").reset_index(drop=True)


@dataclass
class WavReport:
    """What ``read_wav`` had to fix or found suspicious, counted over a batch of files.

    ``padded`` counts complete files shorter than the note, ``truncated`` files whose data chunk ends
    before the size their header gives (a copy cut short; its missing samples read as zeros), ``cut``
    longer files. ``clipped`` counts files with ``CLIP_RUN`` consecutive samples at or beyond full
    scale: they are used as they are. ``files`` lists the fixed files (not the merely clipped ones);
    ``truncated_files`` and ``clipped_files`` name those two kinds.
    """

    resampled: int = 0
    downmixed: int = 0
    padded: int = 0
    truncated: int = 0
    cut: int = 0
    clipped: int = 0
    files: list[str] = field(default_factory=list)
    truncated_files: list[str] = field(default_factory=list)
    clipped_files: list[str] = field(default_factory=list)

    COUNTS = ("resampled", "downmixed", "padded", "truncated", "cut", "clipped")

    def add(self, other: WavReport) -> None:
        for name in self.COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.files += other.files
        self.truncated_files += other.truncated_files
        self.clipped_files += other.clipped_files

    def counts(self) -> dict[str, int]:
        """The counts by kind, every kind present (0 when none)."""
        return {name: getattr(self, name) for name in self.COUNTS}


def _at_rail(x: np.ndarray, rail: float) -> bool:
    """Whether ``x`` [shape=(samples,) or (samples, channels)] holds ``CLIP_RUN`` consecutive samples of
    one channel at or beyond ``rail``. The peak is checked first: most files are nowhere near it."""
    if x.size == 0 or (x.max() < rail and x.min() > -rail):
        return False
    at = np.abs(x.astype(np.float32)) >= rail
    if at.ndim == 1:
        at = at[:, None]
    run = at[: len(at) - CLIP_RUN + 1].copy()
    for k in range(1, CLIP_RUN):
        run &= at[k: len(at) - CLIP_RUN + 1 + k]
    return bool(run.any())


def _truncated(path: Path) -> bool:
    """Whether a RIFF wav's data chunk claims more bytes than the file holds (a copy or download cut short).

    A size of 0 or 0xFFFFFFFF is a writer that never closed the file (or a stream): libsndfile takes
    the rest of the file as the data, and nothing is known to be missing.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return False
    if len(head) < 12 or _RIFF_HEAD.unpack_from(head)[::2] != (b"RIFF", b"WAVE"):
        return False
    pos = 12
    while pos + 8 <= len(head):
        cid, n = _CHUNK_HEAD.unpack_from(head, pos)
        if cid == b"data":
            return n not in (0, 0xFFFFFFFF) and pos + 8 + n > size
        pos += 8 + n + (n & 1)
    return False


_RIFF_HEAD = struct.Struct("<4sI4s")
_CHUNK_HEAD = struct.Struct("<4sI")
_FMT_PCM = struct.Struct("<HHIIHH")  # format tag, channels, rate, byte rate, block align, bits


def _not_a_file(path: Path) -> DataError:
    return DataError(f"{path}: not a regular file (a folder, a device or a pipe); expected a wav file")


def _read_canonical_wav(path: Path, sample_rate: int, out: np.ndarray) -> WavReport | None:
    """Decode a complete 16-bit PCM mono RIFF wav at ``sample_rate`` into ``out``; None for any other file.

    NSynth's own format, and the embedded dataset's. libsndfile's Python wrapper spends as long in
    Python that holds the GIL as the decode itself, and the feature threads queue on it (figures in
    docs/benchmarks.md): read here, the file is one ``read`` and one scaling pass, both outside the
    GIL, and the numbers are libsndfile's (int16 / 32768). Anything not plainly that format goes to
    libsndfile, which also repairs what it can (a data size of 0 left by a writer that never closed the
    file) and words the errors: other encodings, channels or rates, a truncated or odd-sized data
    chunk, a second ``fmt `` or ``data``, a chunk id that is not printable (garbage, not a chunk), a file
    well over ``out``'s length.
    """
    limit = 2 * len(out) + 65536  # the samples and generous headers: longer files are rare, and counted
    # non-blocking, so that a pipe with no writer is told apart by fstat (of the open file: no extra lookup)
    # instead of blocking the read, here and in libsndfile
    with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise _not_a_file(path)
        data = fh.read(limit + 1)
    if len(data) < 12 or len(data) > limit:
        return None
    riff, _, wave = _RIFF_HEAD.unpack_from(data)
    if riff != b"RIFF" or wave != b"WAVE":
        return None
    pos, fmt_seen, found = 12, False, None
    while pos + 8 <= len(data):
        cid, size = _CHUNK_HEAD.unpack_from(data, pos)
        if not all(0x20 <= c <= 0x7E for c in cid):
            return None
        body = pos + 8
        if cid == b"fmt ":
            if fmt_seen or found is not None or size < _FMT_PCM.size or body + _FMT_PCM.size > len(data):
                return None
            tag, channels, rate, _, align, bits = _FMT_PCM.unpack_from(data, body)
            if (tag, channels, rate, align, bits) != (1, 1, sample_rate, 2, 16):
                return None
            fmt_seen = True
        elif cid == b"data":
            if not fmt_seen or found is not None or size == 0 or size % 2 or body + size > len(data):
                return None
            found = (body, size // 2)
        pos = body + size + (size & 1)  # chunks are padded to an even length
    if found is None:
        return None
    body, n = found
    m = min(n, len(out))
    pcm = np.frombuffer(data, "<i2", count=m, offset=body)
    np.multiply(pcm, np.float32(1.0 / 32768.0), out=out[:m])
    out[m:] = 0.0
    report = WavReport(padded=int(n < len(out)), cut=int(n > len(out)))
    if n != len(out):
        report.files.append(str(path))
    if _at_rail(pcm, 32767):
        report.clipped = 1
        report.clipped_files.append(str(path))
    return report


def read_wav(path: str | Path, *, sample_rate: int = 16000, n_samples: int = 64000, resample: bool = True,
             out: np.ndarray | None = None) -> tuple[np.ndarray, WavReport]:
    """Decode one wav to float32 mono at ``sample_rate``, padded with zeros or cut to ``n_samples``.

    Parameters
    ----------
    out : [shape=(n_samples,)] float32 array to decode into (a row of a batch buffer: saves a copy).

    Returns
    -------
    audio : [shape=(n_samples,)] float32 in [-1, 1] (``out`` if given)
    report : which fixes were applied (stereo downmix, resampling, pad, cut, a truncated file's missing
        samples read as zeros, with a warning) and whether the file is clipped (counted, used as it is)

    Raises
    ------
    NonFiniteAudioError
        (a ``DataError``) The file holds NaN or infinite samples (only float wavs can).
    DataError
        Missing or unreadable file, or another rate with ``resample=False``.
    """
    path = Path(path)
    if out is not None and out.shape != (n_samples,):
        raise ParameterError(f"out: expected shape ({n_samples},), got {out.shape}")
    if out is None:
        out = np.empty(n_samples, np.float32)
    in_place = False
    try:
        report = _read_canonical_wav(path, sample_rate, out)
        if report is not None:
            return out, report
        with sf.SoundFile(path) as fh:
            sr = fh.samplerate
            # NSynth's 16-bit PCM read as int16 and scaled in one pass, which is faster than libsndfile's
            # float path, and the read stops at n_samples when the rate needs no resampling.
            frames = n_samples if sr == sample_rate else -1
            too_long = fh.frames > n_samples and sr == sample_rate
            if fh.subtype == "PCM_16":
                raw = fh.read(frames, dtype="int16", always_2d=True)
                if raw.shape[1] == 1 and sr == sample_rate:  # the common case, straight into its place
                    audio = np.multiply(raw, np.float32(1.0 / 32768.0), out=out[:len(raw), None])  # libsndfile's scale
                    in_place = True
                else:
                    audio = np.multiply(raw, np.float32(1.0 / 32768.0), dtype=np.float32)
            else:
                audio = fh.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, OSError) as exc:
        if not path.is_file():  # checked only on failure: a stat per note would slow every build
            raise (_not_a_file(path) if path.exists() else DataError(f"{path}: wav file not found")) from exc
        raise DataError(f"{path}: unreadable wav ({exc})") from exc
    report = WavReport()
    if not in_place and not np.isfinite(audio).all():  # PCM decoded in place is finite by construction
        bad = int(audio.size - np.count_nonzero(np.isfinite(audio)))
        raise NonFiniteAudioError(f"{path}: {bad} of {audio.size} samples are NaN or infinite; "
                                  "re-export the file or remove its note from examples.json")
    if _at_rail(audio, FULL_SCALE):
        report.clipped = 1
        report.clipped_files.append(str(path))
    if audio.shape[1] > 1:
        warnings.warn(f"{path}: {audio.shape[1]} channels, downmixed to mono", stacklevel=2)
        report.downmixed = 1
    audio = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if sr != sample_rate:
        if not resample:
            raise DataError(f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz "
                            "(set data.resample=true to resample)")
        import librosa

        warnings.warn(f"{path}: sample rate {sr} Hz resampled to {sample_rate} Hz", stacklevel=2)
        audio = librosa.resample(audio, orig_sr=sr, target_sr=sample_rate).astype(np.float32)
        report.resampled = 1
    if _truncated(path):
        # cut short in a copy: counted apart from a complete short file, which is legitimate
        warnings.warn(f"{path}: truncated (its data chunk ends before the size its header gives); "
                      "the missing samples are zeros", stacklevel=2)
        report.truncated = 1
        report.truncated_files.append(str(path))
    if len(audio) < n_samples and not report.truncated:
        report.padded = 1
    elif len(audio) > n_samples or too_long:
        report.cut = 1
    if report.resampled or report.downmixed or report.padded or report.truncated or report.cut:
        report.files.append(str(path))
    m = min(len(audio), n_samples)
    if not in_place:
        out[:m] = audio[:m]
    out[m:] = 0.0
    return out, report
