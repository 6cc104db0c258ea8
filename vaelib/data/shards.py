"""The feature cache built in shards: several processes (a job array, several machines) compute one slice
of the notes each, and a merge writes the cache a single build would have written, byte for byte.

Shard ``i`` of ``n`` holds rows ``start:stop`` of the cache of the same key (``cache_key``: the same
params and files). Slices are contiguous and their edges fall on multiples of ``features.batch_size``,
so every batch a shard computes is a batch a single build computes, with the same notes in it: the
rows come out the same by construction, whatever the FFT or BLAS kernels do with a batch. With more
shards than batches, the last shards are empty (a warning says so); they are built and merged like
the others, so that a job array of a fixed size works on a dataset of any size.

A shard lives in ``<cache_dir>/shards/<key>/shard-<i>-of-<n>/``: ``features.npy`` (its rows, float16)
and ``manifest.json`` (key, index, count, rows, batch size, the fixes of its wavs, and the size and
sha256 of its ``features.npy``). It is built in a partial folder
``.shard-<i>-of-<n>.build.<host>.<pid>.<random>`` beside it under a lock ``.shard-<i>-of-<n>.lock``
and renamed into place once whole: a killed shard build leaves only a partial folder, which is never
merged and which the next build of that shard removes (the rules of
``vaelib.data.cache.partial_is_stale``). A complete shard is not computed again, and neither is any
shard once the cache itself is built.

The merge checks every shard ``0..n-1`` (present, complete, of this key and this count, rows that
tile the notes, sizes and the sha256 of every file), refuses naming each shard that is missing,
damaged or mismatched, and otherwise writes the cache through ``build_feature_cache``: the same lock,
the same partial folder renamed into place, the same ``meta.parquet`` and ``manifest.json``. The
shards of the key are removed once the cache is built.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from vaelib.config import FeatureConfig, feature_representation, resolve_path
from vaelib.data.cache import (
    CACHE_VERSION,
    FEATURES_FILE,
    MANIFEST_FILE,
    CacheReadError,
    FeatureCache,
    NpyRowWriter,
    build_feature_cache,
    cache_key,
    cache_write_error,
    log_fixes,
    open_feature_cache,
    partial_is_stale,
    publish_folder,
    write_features,
)
from vaelib.data.features import feature_shape
from vaelib.data.nsynth import WavReport
from vaelib.exceptions import DataError, ParameterError
from vaelib.io import OWNER_TAG, FileLock, acquire_unless_unsupported, atomic_write_json, os_error_text, writable_folder

__all__ = ["SHARDS_DIR", "ShardResult", "parse_shard", "parse_shard_count", "shard_rows", "shard_name",
           "shard_folder", "build_shard", "check_shard", "merge_shards"]

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"  # in features.cache_dir; never a cache key (16 hex digits)
SHARD_KIND = "feature cache shard"
COPY_ROWS = 1024  # rows copied at once by the merge: 20 MB at 80 x 128, whatever the shard's size
LISTED = 10  # shards named in a message; the count says how many more
_SPEC = re.compile(r"^(\d+)/(\d+)$")
_SHARD = re.compile(r"^shard-(?P<index>\d+)-of-(?P<count>\d+)$")
_PARTIAL = re.compile(r"^\.(?P<name>shard-\d+-of-\d+)\.(?:build|damaged)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)"
                      r"\.[0-9a-f]+$")


@dataclass(frozen=True)
class ShardResult:
    """What ``build_shard`` did: ``status`` is ``"built"``, ``"present"`` (complete already) or
    ``"cache built"`` (the merged cache exists, so no shard is needed; ``path`` is the cache)."""

    index: int
    count: int
    start: int
    stop: int
    path: Path
    status: str


# --- Which rows a shard holds -------------------------------------------------------------------------------

MAX_SHARDS = 100_000  # far beyond any job array; a larger count is a typing slip


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (the ``--shard`` option) -> ``(i, n)``, with ``n >= 1`` and ``0 <= i < n``.

    Raises
    ------
    ParameterError
        Not of that form, or out of range; the message names ``--shard`` and what is expected.
    """
    m = _SPEC.match(text.strip())
    if m is None:
        raise ParameterError(f"--shard {text!r}: expected INDEX/COUNT, two whole numbers such as 0/8 (the first "
                             "of 8 shards; in a job array, $SLURM_ARRAY_TASK_ID/8 with --array=0-7)")
    index, count = int(m[1]), int(m[2])
    if not 1 <= count <= MAX_SHARDS:
        raise ParameterError(f"--shard {text!r}: expected a count from 1 to {MAX_SHARDS:,} after the '/'")
    if index >= count:
        raise ParameterError(f"--shard {text!r}: expected an index from 0 to {count - 1} for {count} shards "
                             "(shards are numbered from 0)")
    return index, count


def parse_shard_count(text: str) -> int:
    """The ``--merge`` option: the number of shards, a whole number ``>= 1``.

    Raises
    ------
    ParameterError
        Anything else, naming ``--merge``.
    """
    if not re.fullmatch(r"\d+", text.strip()) or not 1 <= int(text) <= MAX_SHARDS:
        raise ParameterError(f"--merge {text!r}: expected the number of shards to merge, a whole number from 1 to "
                             f"{MAX_SHARDS:,} (the COUNT of --shard INDEX/COUNT)")
    return int(text)


def _check_index(index: int, count: int) -> None:
    if not isinstance(count, int) or count < 1:
        raise ParameterError(f"count={count!r}: expected a number of shards of at least 1")
    if not isinstance(index, int) or not 0 <= index < count:
        raise ParameterError(f"index={index!r}: expected a shard index from 0 to {count - 1}")


def shard_rows(n_notes: int, *, index: int, count: int, batch_size: int) -> tuple[int, int]:
    """Rows ``(start, stop)`` of shard ``index`` of ``count`` over ``n_notes`` notes.

    The ``ceil(n_notes / batch_size)`` batches are dealt out contiguously, the first shards getting
    one batch more than the others when they do not divide evenly; with more shards than batches, the
    shards past the last batch are empty (``start == stop == n_notes``). The shards of one count tile
    ``0..n_notes`` in order.
    """
    _check_index(index, count)
    per_shard, extra = divmod(-(-n_notes // batch_size), count)
    return tuple(min(n_notes, (i * per_shard + min(i, extra)) * batch_size) for i in (index, index + 1))


def shard_name(index: int, count: int) -> str:
    """``shard-<i>-of-<n>``, ``i`` padded to the width of ``n`` so that a listing sorts in order."""
    return f"shard-{index:0{len(str(count))}d}-of-{count}"


def shard_folder(cfg: FeatureConfig, key: str, index: int, count: int) -> Path:
    """Where shard ``index`` of ``count`` of the cache ``key`` lives (complete)."""
    return resolve_path(cfg.cache_dir) / SHARDS_DIR / key / shard_name(index, count)


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


# --- A shard: checked, built ------------------------------------------------------------------------------

def _sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def check_shard(folder: Path, *, key: str, index: int, count: int, cfg: FeatureConfig) -> dict:
    """The manifest of the complete shard in ``folder``, once every check has passed.

    Checks the manifest (a shard of cache ``key``, this index and count, this cache version and
    feature parameters), the size, dtype and shape of ``features.npy`` against the rows the manifest
    gives, and the sha256 of the whole file.

    Raises
    ------
    CacheReadError
        A file cannot be read for another reason than damage (no permission, an I/O error).
    DataError
        Not complete (no manifest) or damaged or another shard: the message says what differs.
    """
    manifest_path, features_path = folder / MANIFEST_FILE, folder / FEATURES_FILE
    if not manifest_path.is_file():
        raise DataError(f"{folder}: not a complete shard (no {MANIFEST_FILE})")
    try:
        m = json.loads(manifest_path.read_text())
        if m.get("kind") != SHARD_KIND or m.get("version") != CACHE_VERSION:
            raise DataError(f"{manifest_path}: not a shard of cache version {CACHE_VERSION} ({m.get('kind')!r}, "
                            f"version {m.get('version')!r})")
        if m["key"] != key:
            raise DataError(f"{manifest_path}: a shard of cache {m['key']}, not of {key} (built from other params "
                            "or other files)")
        if (m["index"], m["count"]) != (index, count):
            raise DataError(f"{manifest_path}: shard {m['index']}/{m['count']}, expected {index}/{count}")
        if m["features"] != feature_representation(cfg):
            raise DataError(f"{manifest_path}: other feature parameters than the cache's")
        shape = [m["stop"] - m["start"], *feature_shape(cfg)]
        size = features_path.stat().st_size
        if size != m["integrity"][FEATURES_FILE]["bytes"]:
            raise DataError(f"{features_path}: {size} bytes, the manifest records "
                            f"{m['integrity'][FEATURES_FILE]['bytes']} (truncated or overwritten)")
        rows = np.load(features_path, mmap_mode="r")
        if list(rows.shape) != shape or rows.dtype != np.float16:
            raise DataError(f"{features_path}: {rows.dtype} {list(rows.shape)}, expected float16 {shape} (rows "
                            f"{m['start']}:{m['stop']})")
        del rows
        if _sha256_file(features_path) != m["integrity"][FEATURES_FILE]["sha256"]:
            raise DataError(f"{features_path}: its sha256 differs from the manifest's (the file was changed)")
    except DataError:
        raise
    except OSError as exc:
        if exc.errno not in (None, errno.ENOENT):
            raise CacheReadError(f"cannot read {exc.filename or folder}: {exc.strerror or exc}") from exc
        raise DataError(f"{folder}: damaged shard ({type(exc).__name__}: {exc})") from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{folder}: damaged shard ({type(exc).__name__}: {exc})") from exc
    return m


def _remove_stale_shard_partials(set_dir: Path, name: str) -> None:
    """Remove the partial folders of shard ``name`` whose build is over (its lock is held by the caller)."""
    for entry in sorted(os.scandir(set_dir), key=lambda e: e.name):
        m = _PARTIAL.match(entry.name)
        if m is None or m["name"] != name:
            continue
        folder = Path(entry.path)
        try:
            if partial_is_stale(folder, host=m["host"], pid=int(m["pid"])):
                shutil.rmtree(folder)
                log.warning("removed %s, left by a shard build that was killed", folder)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("could not remove %s, a partial shard build: %s", folder, os_error_text(exc))


def _discard(folder: Path) -> None:
    """Remove a damaged shard, renamed aside first so that no merge reads it half removed."""
    aside = folder.with_name(f".{folder.name}.damaged.{OWNER_TAG}.{secrets.token_hex(4)}")
    os.replace(folder, aside)
    shutil.rmtree(aside)


def _built_cache(cfg: FeatureConfig, key: str) -> Path | None:
    """The cache folder of ``key`` when it is complete and sound (no shard is needed then), else None."""
    final = resolve_path(cfg.cache_dir) / key
    if not (final / MANIFEST_FILE).is_file():
        return None
    try:
        open_feature_cache(final)
    except CacheReadError:
        raise
    except DataError:
        return None  # damaged: the shards are built, and the merge replaces it
    return final


def build_shard(df: pd.DataFrame, cfg: FeatureConfig, *, index: int, count: int, resample: bool = True,
                show_progress: bool = True) -> ShardResult:
    """Compute shard ``index`` of ``count`` of the cache of ``df`` (with its ``split`` column), unless it
    or the cache is already built.

    ``df`` and ``cfg`` must be those of the single build (the same params and files: the same
    ``cache_key``). The shard is written in a partial folder and renamed into place once whole; a
    damaged shard is rebuilt with a warning.

    Raises
    ------
    ParameterError
        ``index`` or ``count`` out of range.
    DataError
        A bad input (see ``vaelib.data.cache.compute_features``), or the cache folder cannot be written
        (the message names the path and what to do; nothing partial is kept).
    """
    _check_index(index, count)
    if "split" not in df.columns:
        raise DataError("build_shard: the table needs a 'split' column (see load_dataset)")
    key = cache_key(df, cfg)
    start, stop = shard_rows(len(df), index=index, count=count, batch_size=cfg.batch_size)

    def result(path: Path, status: str) -> ShardResult:
        return ShardResult(index, count, start, stop, path, status)

    cache = _built_cache(cfg, key)
    if cache is not None:
        log.info("feature cache %s is built: shard %d/%d is not needed", cache, index, count)
        return result(cache, "cache built")
    folder = shard_folder(cfg, key, index, count)
    set_dir, name = folder.parent, folder.name

    damage = None  # a damaged shard is settled under the lock

    def built() -> bool:
        """Whether the shard is built and passes its check; a damaged one's error is kept in ``damage``."""
        nonlocal damage
        if not (folder / MANIFEST_FILE).is_file():
            return False
        try:
            check_shard(folder, key=key, index=index, count=count, cfg=cfg)
            return True
        except CacheReadError:
            raise
        except DataError as exc:
            damage = exc
            return False

    if built():
        log.info("shard %s is built", folder)
        return result(folder, "present")
    root = resolve_path(cfg.cache_dir)
    try:
        writable_folder(set_dir)
        lock = FileLock(set_dir / f".{name}.lock")
        acquire_unless_unsupported(lock, unlocked="building the shard without one",
                                   on_wait=lambda lk: log.info("waiting for %s: another process (%s) is building "
                                                               "it", folder, lk.holder() or "unknown"))
    except OSError as exc:
        raise cache_write_error(exc, root) from exc
    tmp = None
    try:
        if built():
            log.info("shard %s is built (by another process meanwhile)", folder)
            return result(folder, "present")
        _remove_stale_shard_partials(set_dir, name)
        if folder.exists():
            if damage is not None:
                log.warning("shard %s is damaged (%s): rebuilding it", folder, damage)
            _discard(folder)
        if start == stop:
            batches = -(-len(df) // cfg.batch_size)
            log.warning("shard %d/%d holds no notes: %d notes make %d batches of features.batch_size=%d, so at "
                        "most %d shards hold notes", index, count, len(df), batches, cfg.batch_size, batches)
        tmp = set_dir / f".{name}.build.{OWNER_TAG}.{secrets.token_hex(4)}"
        tmp.mkdir()
        report = write_features(tmp / FEATURES_FILE, list(df["path"].iloc[start:stop]), cfg, resample=resample,
                                show_progress=show_progress, whole_set=False)
        log_fixes(report)
        atomic_write_json(tmp / MANIFEST_FILE, {
            "kind": SHARD_KIND, "key": key, "version": CACHE_VERSION, "index": index, "count": count,
            "start": start, "stop": stop, "n_notes": len(df), "batch_size": cfg.batch_size,
            "features": feature_representation(cfg), "fixes": report.counts(),
            "fixed_files": report.files[:100], "truncated_files": report.truncated_files[:100],
            "clipped_files": report.clipped_files[:100],
            "integrity": {FEATURES_FILE: {"bytes": (tmp / FEATURES_FILE).stat().st_size,
                                          "sha256": _sha256_file(tmp / FEATURES_FILE)}},
        })
        publish_folder(tmp, folder)
    except OSError as exc:
        raise cache_write_error(exc, root) from exc
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        lock.release()
    log.info("shard %s built: rows %d:%d of %d", folder, start, stop, len(df))
    return result(folder, "built")


# --- The merge ----------------------------------------------------------------------------------------------

def _other_shards(root: Path, key: str, count: int) -> str:
    """What else the shards folder holds, for a message about missing shards: other counts of this key,
    shards of other keys (other params, or copies of the files with other modification times)."""
    found: dict[str, set[int]] = {}
    try:
        for entry in os.scandir(root / SHARDS_DIR):
            if entry.is_dir() and not entry.name.startswith("."):
                found[entry.name] = {int(m["count"]) for e in os.scandir(entry.path) if (m := _SHARD.match(e.name))}
    except OSError:
        return ""
    notes = []
    other_counts = sorted(found.get(key, set()) - {count})
    if other_counts:
        notes.append(f"shards of this cache for other counts are there ({', '.join(map(str, other_counts))})")
    other_keys = sorted(k for k, counts in found.items() if k != key and counts)
    if other_keys:
        notes.append(f"shards of other caches are there ({_listed(other_keys)}): built from other params or "
                     "other files (a copy of the dataset whose files have other sizes or modification times?)")
    return "; " + "; ".join(notes) if notes else ""


def _checked_shards(df: pd.DataFrame, cfg: FeatureConfig, key: str, count: int) -> list[dict]:
    """The manifests of shards ``0..count-1`` of ``key``, once each is complete and they tile the notes.

    Raises
    ------
    DataError
        Naming every shard that is missing, damaged or whose rows do not fit the others'.
    """
    root = resolve_path(cfg.cache_dir)
    set_dir = root / SHARDS_DIR / key
    partials = set()
    if set_dir.is_dir():
        partials = {m["name"] for e in os.scandir(set_dir) if (m := _PARTIAL.match(e.name))}
    missing, damaged, manifests = [], [], []
    for i in range(count):
        folder = set_dir / shard_name(i, count)
        if not folder.exists():
            killed = " (a partial build is there: killed, or still running)" if folder.name in partials else ""
            missing.append(f"{i}{killed}")
            continue
        try:
            manifests.append(check_shard(folder, key=key, index=i, count=count, cfg=cfg))
        except CacheReadError:
            raise
        except DataError as exc:
            damaged.append(f"{i} ({exc})")
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {count} shards missing: {_listed(missing)}")
    if damaged:
        problems.append(f"{len(damaged)} damaged: {_listed(damaged)}")
    if not problems:
        sizes = sorted({m["batch_size"] for m in manifests})
        if len(sizes) > 1:
            by_size = {s: [str(m["index"]) for m in manifests if m["batch_size"] == s] for s in sizes}
            problems.append("built with different features.batch_size, so their rows do not fit together: "
                            + "; ".join(f"{s}: shards {_listed(ix)}" for s, ix in by_size.items()))
        else:
            misfit = []
            for m in manifests:
                rows = shard_rows(len(df), index=m["index"], count=count, batch_size=sizes[0])
                if (m["start"], m["stop"]) != rows or m["n_notes"] != len(df):
                    misfit.append(f"{m['index']} (rows {m['start']}:{m['stop']} of {m['n_notes']}, expected "
                                  f"{rows[0]}:{rows[1]} of {len(df)})")
            if misfit:
                problems.append(f"rows that do not tile the notes: {_listed(misfit)}")
    if problems:
        raise DataError(f"cannot merge the {count} shards of feature cache {key} in {set_dir}: "
                        + "; ".join(problems) + _other_shards(root, key, count)
                        + f"; build them with `vaelib preprocess --shard INDEX/{count}` (the same params), "
                          "then merge again")
    return manifests


def _merged_report(manifests: list[dict]) -> WavReport:
    """The fixes of all shards, as one build over their notes in order would have counted them (each
    shard keeps the first 100 files of each list, and so the merge keeps the first 100 of all)."""
    report = WavReport()
    for m in manifests:
        report.add(WavReport(**m["fixes"], files=list(m["fixed_files"]), truncated_files=list(m["truncated_files"]),
                             clipped_files=list(m["clipped_files"])))
    return report


def _remove_shards(root: Path, key: str) -> None:
    """Remove the shards of ``key`` once its cache is built (renamed aside first, like a damaged cache)."""
    folder = root / SHARDS_DIR / key
    if not folder.is_dir():
        return
    aside = folder.with_name(f".{key}.merged.{OWNER_TAG}.{secrets.token_hex(4)}")
    try:
        os.replace(folder, aside)
        shutil.rmtree(aside)
        (root / SHARDS_DIR).rmdir()  # only when no other cache's shards are left
    except FileNotFoundError:
        pass  # another merge removed them first
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            log.warning("could not remove the shards %s of a built cache: %s", folder, os_error_text(exc))


def _blocks(path: Path):
    """``(first row, rows)`` of a shard's ``features.npy``, ``COPY_ROWS`` at a time; a read error is a
    ``CacheReadError`` naming the file (a write error of the cache is not caught here)."""
    try:
        rows = np.load(path, mmap_mode="r")
    except OSError as exc:
        raise CacheReadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    for a in range(0, len(rows), COPY_ROWS):
        try:
            block = np.asarray(rows[a:a + COPY_ROWS])
        except OSError as exc:
            raise CacheReadError(f"cannot read {path}: {exc.strerror or exc}") from exc
        yield a, block


def merge_shards(df: pd.DataFrame, cfg: FeatureConfig, *, count: int, show_progress: bool = True) -> FeatureCache:
    """The cache of ``df``, merged from its ``count`` shards unless it is already built.

    Every shard is checked first (:func:`check_shard`; their rows must tile the notes); then
    ``build_feature_cache`` writes the cache as a single build would (the same lock, partial folder and
    files), its features copied from the shards. The shards of the cache are removed afterwards.

    Raises
    ------
    ParameterError
        ``count`` below 1.
    DataError
        Some shards are missing, damaged or mismatched (each named), or the cache cannot be written.
    """
    _check_index(0, count)
    key = cache_key(df, cfg)
    root = resolve_path(cfg.cache_dir)

    def features(path: Path) -> WavReport:
        manifests = _checked_shards(df, cfg, key, count)
        set_dir = root / SHARDS_DIR / key
        with NpyRowWriter(path, (len(df), *feature_shape(cfg))) as out, \
                tqdm(total=len(df), desc="merge", unit="note", disable=not show_progress) as bar:
            for m in manifests:
                shard = set_dir / shard_name(m["index"], count) / FEATURES_FILE
                for a, block in _blocks(shard):
                    out[m["start"] + a:m["start"] + a + len(block)] = block
                    bar.update(len(block))
            out.sync()
        log.info("merged %d shards of feature cache %s", count, key)
        return _merged_report(manifests)

    cache = build_feature_cache(df, cfg, show_progress=show_progress, features=features)
    _remove_shards(root, key)
    return cache
