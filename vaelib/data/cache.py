"""On-disk cache of a dataset's log-mel features: one array file plus a metadata table.

The cache folder is named by a hash of the feature parameters, of the metadata table (labels and
split of every note) and of the input files (name, size, modification time), so a change of any of
them builds a new cache and a rerun reuses the old one; the labels a cache serves are always those of
the current ``examples.json``.

Built in a partial folder ``.<key>.build.<host>.<pid>.<random>`` and renamed into place when
complete, so an interrupted build leaves nothing that a later run would read. One process builds a
given key at a time (a lock file ``.<key>.lock``); another that wants the same cache waits for it and
then reads it. A build first removes the partial folders left by builds that were killed (see
``remove_stale_partials``). The manifest records each file's size, the metadata file's sha256 and the
sha256 of a sample of feature rows; a cache that fails these checks (or whose files are missing or
cannot be parsed) is rebuilt with a warning. A cache that cannot be read for another reason (no
permission, too many open files, an I/O error) is an error naming the file, and is left as it is.
A build's features may come from elsewhere than ``compute_features``: ``vaelib.data.shards`` merges
shards built by several processes into the same files, through the same build.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from vaelib.config import FeatureConfig, feature_representation, resolve_path
from vaelib.data.features import LogMelWorkspace, feature_shape, log_mel_batch
from vaelib.data.nsynth import NonFiniteAudioError, WavReport, read_wav
from vaelib.exceptions import DataError
from vaelib.io import (
    HOST,
    OWNER_TAG,
    FileLock,
    acquire_unless_unsupported,
    atomic_write_json,
    os_error_text,
    owner_gone,
    writable_folder,
)

__all__ = ["FeatureCache", "CacheReadError", "cache_key", "build_feature_cache", "open_feature_cache",
           "check_cache_folder", "compute_features", "write_features", "log_fixes", "NpyRowWriter",
           "remove_stale_partials", "partial_is_stale", "cache_write_error", "publish_folder"]

log = logging.getLogger(__name__)

# In the cache key: raised when what a cache holds changes (2: a digitally silent note is -1;
# 3: the key covers the metadata table, the manifest records sizes and checksums).
CACHE_VERSION = 3
FEATURES_FILE = "features.npy"
META_FILE = "meta.parquet"
MANIFEST_FILE = "manifest.json"
SAMPLE_ROWS = 257  # feature rows hashed on every open: a few MB read, not the whole file (220 MB by default)
NAMED = 10  # files named in a message; the count says how many more
IDLE_STALE_S = 3600.0  # a partial folder of unknown or remote owner is stale once unwritten this long
_PARTIAL = re.compile(r"^\.(?P<key>[0-9a-f]{16})\.(?P<kind>build|damaged)\.(?P<host>[A-Za-z0-9-]+)\."
                      r"(?P<pid>\d+)\.[0-9a-f]+$")
# A partial folder named like tempfile.mkdtemp's (".<key>.<8 characters>"): its name records no owner, so
# only how long nothing in it was written tells whether its build is over.
_UNOWNED_PARTIAL = re.compile(r"^\.(?P<key>[0-9a-f]{16})\.[A-Za-z0-9_]{8}$")
_LOCK = re.compile(r"^\.(?P<key>[0-9a-f]{16})\.lock$")


class CacheReadError(DataError):
    """A cache folder that could not be read for a reason other than damage (no permission, too many open
    files, an I/O error): it is not rebuilt, since nothing shows that it is wrong."""


@dataclass
class FeatureCache:
    """A built cache: ``features`` [shape=(notes, 1, n_mels, frames)] float16 (memory-mapped), and
    ``meta``, one row per note in the same order, with the dataset columns and ``split``."""

    path: Path
    features: np.ndarray
    meta: pd.DataFrame
    manifest: dict

    def split(self, name: str) -> tuple[np.ndarray, pd.DataFrame]:
        """Features (loaded into memory) and metadata of one split."""
        idx = np.flatnonzero(self.meta["split"].to_numpy() == name)
        return np.asarray(self.features[idx]), self.meta.iloc[idx].reset_index(drop=True)


def _meta_table(df: pd.DataFrame) -> pd.DataFrame:
    """The table a cache stores: every column of ``df`` but the wav path."""
    return df.drop(columns=["path"]).reset_index(drop=True)


def cache_key(df: pd.DataFrame, cfg: FeatureConfig) -> str:
    """Hash of the feature parameters, of the metadata table and, per note, of its name, split, wav size
    and mtime.

    The metadata table is every column but ``path``: pitch, family, qualities and the rest are what
    the probes and the checkpoint's name rest on, so an edit of ``examples.json`` alone makes a new
    cache (and a new checkpoint folder), never old labels served from an old one.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "features": feature_representation(cfg)}, sort_keys=True).encode())
    meta = _meta_table(df)
    h.update(json.dumps([[str(c), str(t)] for c, t in meta.dtypes.items()]).encode())
    # the column names and dtypes are hashed above; "values" is the fastest orient (C, lists included)
    h.update(meta.to_json(orient="values", double_precision=15, default_handler=str).encode())
    for note, split, path in zip(df["note_str"], df["split"], df["path"]):
        try:
            st = os.stat(path)
        except FileNotFoundError as exc:
            raise DataError(f"{path}: wav file not found (note {note})") from exc
        except OSError as exc:
            raise DataError(f"{os_error_text(exc)} (the wav of note {note})") from exc
        h.update(f"{note}\t{split}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _named(paths: list[str], total: int | None = None) -> str:
    """Up to ``NAMED`` paths, and how many more (of ``total``, when ``paths`` is itself a part of the list)."""
    total = len(paths) if total is None else total
    more = f" and {total - NAMED} more" if total > NAMED else ""
    return ", ".join(paths[:NAMED]) + more


class NpyRowWriter:
    """A new ``.npy`` file whose rows are written with ``os.pwrite`` (``writer[i:j] = rows``).

    Worker threads store their batches this way instead of through a memory map: the kernel copies
    into the page cache without a page fault per 4 KiB, and ``pwrite`` releases the GIL; ``sync`` costs
    what ``msync`` would (figures in docs/benchmarks.md).
    Thread safe. ``close`` does not wait, but the descriptor is closed only when the last write in
    flight ends (a second Ctrl-C can unwind the build while a worker still writes), and a write after
    ``close`` raises: no late write lands in another file that reused the descriptor number.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype | type = np.float16):
        # open_memmap writes the header and sizes the file; its data offset is where rows go.
        header = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        self.offset, self.dtype, self.shape = header.offset, header.dtype, tuple(shape)
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * header.dtype.itemsize
        del header
        self.path = Path(path)
        self.fd = os.open(path, os.O_WRONLY)
        self._lock = threading.Lock()
        self._writing = 0
        self._closed = False

    def __setitem__(self, rows: slice, block: np.ndarray) -> None:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1 or block.shape != (stop - start, *self.shape[1:]):
            raise ValueError(f"{self.path}: rows {start}:{stop}:{step} of shape {self.shape} do not match a "
                             f"block of shape {block.shape}")
        data = memoryview(np.ascontiguousarray(block, dtype=self.dtype)).cast("B")
        with self._lock:
            if self._closed:
                raise ValueError(f"{self.path}: write to a closed NpyRowWriter")
            self._writing += 1
        try:
            pos = self.offset + start * self.row_bytes
            while data:
                n = os.pwrite(self.fd, data, pos)
                if n <= 0:
                    raise OSError(f"{self.path}: pwrite wrote nothing at byte {pos}")
                data, pos = data[n:], pos + n
        finally:
            with self._lock:
                self._writing -= 1
                if self._closed and not self._writing:
                    os.close(self.fd)

    def sync(self) -> None:
        """Flush the rows to the disk, so that a manifest written after them never outlives them."""
        os.fsync(self.fd)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self._writing:
                os.close(self.fd)

    def __enter__(self) -> NpyRowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def compute_features(paths: list[str], cfg: FeatureConfig, *, resample: bool = True,
                     show_progress: bool = True, out: np.ndarray | NpyRowWriter | None = None,
                     whole_set: bool = True) -> tuple[np.ndarray | NpyRowWriter, WavReport]:
    """Decode wavs and compute their log-mels, one batch per task on ``cfg.workers`` threads.

    Each thread runs a whole batch (decode, STFT, mel, dB, float16 store) in buffers of its own that
    it reuses (``LogMelWorkspace``), with torch limited to one thread: coarse-grained parallelism
    needs no OpenMP barriers, which stall badly when the cores are shared. libsndfile, the FFT,
    numpy and torch release the GIL. At most ``2 * workers`` batches are in flight, so memory stays
    bounded on a dataset of any size.

    No non-finite value is ever stored: a wav with NaN or infinite samples, and a note whose log-mel is
    not finite (samples far beyond full scale), are collected over the whole pass (their rows hold
    -1) and refused together at its end, so one run names them all. Digitally silent notes are kept at
    the floor and named in a warning; when every note of ``paths`` is silent and ``whole_set`` (not one
    shard of a set), the set is refused: there is nothing to learn from.

    Returns
    -------
    features : [shape=(len(paths), 1, n_mels, frames)] float16 (``out`` if given: an array or a
        ``NpyRowWriter``)
    report : counts of resampled, downmixed, padded, truncated, cut and clipped files

    Raises
    ------
    DataError
        A wav is missing or unreadable (the first one met), or some hold non-finite samples or give
        non-finite features (all of them, up to ``NAMED`` named, with their count), or every note is
        silent (``whole_set``).
    """
    n_samples = int(round(cfg.duration_s * cfg.sample_rate))
    if out is None:
        out = np.empty((len(paths), *feature_shape(cfg)), dtype=np.float16)
    report = WavReport()
    bad_audio: list[str] = []
    bad_features: list[str] = []
    silent_notes: list[str] = []
    bs = cfg.batch_size

    local = threading.local()

    def work(start: int) -> tuple[int, list[WavReport], list[str], list[str], list[str]]:
        if not hasattr(local, "ws"):
            local.ws = LogMelWorkspace(bs, n_samples, cfg)
        batch = paths[start:start + bs]
        audio = local.ws.audio(len(batch))
        rows = audio.numpy()
        reports, nonfinite = [], []
        for p, row in zip(batch, rows):
            try:
                reports.append(read_wav(p, sample_rate=cfg.sample_rate, n_samples=n_samples, resample=resample,
                                        out=row)[1])
            except NonFiniteAudioError:
                row[:] = 0.0  # refused at the end; silence keeps the rest of the batch's numbers finite
                nonfinite.append(str(p))
        refused = set(nonfinite)
        silent = [str(p) for p, row in zip(batch, rows) if not row.any() and str(p) not in refused]
        with torch.no_grad():
            x = log_mel_batch(audio, cfg=cfg, workspace=local.ws)
        # A row's sum is finite iff the row is: past the clamp to [-1, 1] only NaN can remain, and it
        # propagates. One reduction pass: an elementwise isfinite over the batch is many times slower.
        finite = torch.isfinite(x.flatten(1).sum(dim=1))
        bad = []
        if not bool(finite.all()):
            bad = [str(batch[i]) for i in torch.nonzero(~finite).flatten().tolist()]
            x[~finite] = -1.0  # never written: the build is refused, but no partial file holds NaN either
        out[start:start + len(batch)] = x.half().numpy()  # values in [-1, 1] stay finite in float16
        return len(batch), reports, nonfinite, bad, silent

    starts = iter(range(0, len(paths), bs))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=cfg.workers) as pool, \
                tqdm(total=len(paths), desc="log-mel", unit="note", disable=not show_progress) as bar:
            pending = deque(pool.submit(work, s) for s in itertools.islice(starts, 2 * cfg.workers))
            try:
                while pending:
                    n, reports, nonfinite, bad, silent = pending.popleft().result()
                    for r in reports:
                        report.add(r)
                    bad_audio += nonfinite
                    bad_features += bad
                    silent_notes += silent
                    bar.update(n)
                    nxt = next(starts, None)
                    if nxt is not None:
                        pending.append(pool.submit(work, nxt))
            except BaseException:
                for f in pending:
                    f.cancel()
                raise
    finally:
        torch.set_num_threads(threads)
    problems = []
    if bad_audio:
        problems.append(f"{len(bad_audio)} wav file(s) hold NaN or infinite samples: {_named(bad_audio)}")
    if bad_features:
        problems.append(f"{len(bad_features)} note(s) give non-finite log-mel values (samples far beyond full "
                        f"scale?): {_named(bad_features)}")
    # a shard is a part of the set: silent throughout, it may still be one of a set that is not
    if whole_set and not problems and paths and len(silent_notes) == len(paths):
        problems.append(f"every one of the {len(paths)} notes is digital silence (all samples 0) in the part "
                        f"read: there is nothing to learn from: {_named(silent_notes)}")
    if problems:
        raise DataError("; ".join(problems) + "; re-export these files or remove their notes from examples.json")
    if silent_notes:
        log.warning("%d note(s) are digital silence (all samples 0 in the part read), kept at the floor: %s",
                    len(silent_notes), _named(silent_notes))
    return out, report


# --- Integrity: what the manifest records, and the checks of every open ----------------------------------

def _sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _sample_sha256(path: Path, features: np.ndarray) -> str:
    """sha256 of the .npy header and of ``SAMPLE_ROWS`` rows spread evenly, the last one included."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(features.offset))
    n = features.shape[0]
    if n:
        idx = np.unique(np.linspace(0, n - 1, min(n, SAMPLE_ROWS)).round().astype(np.int64))
        h.update(np.ascontiguousarray(features[idx]).tobytes())
    return h.hexdigest()


def _integrity(path: Path) -> dict:
    """The sizes and checksums of a written cache folder, as the manifest records them."""
    features = np.load(path / FEATURES_FILE, mmap_mode="r")
    return {
        FEATURES_FILE: {"bytes": (path / FEATURES_FILE).stat().st_size},
        META_FILE: {"bytes": (path / META_FILE).stat().st_size, "sha256": _sha256_file(path / META_FILE)},
        "features_sample": {"rows": min(features.shape[0], SAMPLE_ROWS),
                            "sha256": _sample_sha256(path / FEATURES_FILE, features)},
    }


def open_feature_cache(path: str | Path) -> FeatureCache:
    """Open a complete cache folder (one whose manifest was written), checking it against its manifest.

    The checks: the manifest's version and key, the size of both files, the sha256 of the metadata
    file and of a sample of feature rows (``SAMPLE_ROWS``: a few MB read, so a hit stays cheap on a
    dataset of any size; the whole features file is not hashed), the shape and the row count.

    A damaged cache is one whose files differ from the manifest (sizes, checksums, shape, rows), cannot
    be parsed, or are missing; any other error of reading one (no permission, too many open files, an
    I/O error) says nothing about its contents and is a :class:`CacheReadError` instead.

    Raises
    ------
    CacheReadError
        A file of the cache cannot be read: "cannot read <path>: <reason>".
    DataError
        Not a complete cache, or a damaged one: names the file and what differs.
    """
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise DataError(f"{path}: not a complete feature cache (no {MANIFEST_FILE})")
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("version") != CACHE_VERSION:
            raise DataError(f"{manifest_path}: cache version {manifest.get('version')!r}, this vaelib reads "
                            f"{CACHE_VERSION}")
        if manifest.get("key") != path.name:
            raise DataError(f"{manifest_path}: key {manifest.get('key')!r} differs from the folder's name")
        recorded = manifest["integrity"]
        for name in (FEATURES_FILE, META_FILE):
            size = (path / name).stat().st_size
            if size != recorded[name]["bytes"]:
                raise DataError(f"{path / name}: {size} bytes, the manifest records {recorded[name]['bytes']} "
                                "(truncated or overwritten)")
        if _sha256_file(path / META_FILE) != recorded[META_FILE]["sha256"]:
            raise DataError(f"{path / META_FILE}: its sha256 differs from the manifest's (the file was changed)")
        features = np.load(path / FEATURES_FILE, mmap_mode="r")
        if list(features.shape) != manifest["shape"] or features.dtype != np.float16:
            raise DataError(f"{path / FEATURES_FILE}: {features.dtype} {list(features.shape)}, the manifest "
                            f"records float16 {manifest['shape']}")
        if _sample_sha256(path / FEATURES_FILE, features) != recorded["features_sample"]["sha256"]:
            raise DataError(f"{path / FEATURES_FILE}: the sha256 of its sampled rows differs from the manifest's "
                            "(the file was changed)")
        meta = pd.read_parquet(path / META_FILE)
    except DataError:
        raise
    except OSError as exc:
        if exc.errno not in (None, errno.ENOENT):  # None: a parse error (a bad npy header, parquet's thrift)
            where = exc.filename if exc.filename is not None else path
            raise CacheReadError(f"cannot read {where}: {exc.strerror or exc} (the feature cache {path} is left "
                                 "as it is)") from exc
        raise DataError(f"{path}: damaged feature cache ({type(exc).__name__}: {exc})") from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # json, the npy header, parquet (pyarrow's ArrowInvalid is a ValueError), a field missing or mistyped
        raise DataError(f"{path}: damaged feature cache ({type(exc).__name__}: {exc})") from exc
    if len(meta) != features.shape[0]:
        raise DataError(f"{path}: {len(meta)} metadata rows for {features.shape[0]} feature rows")
    return FeatureCache(path=path, features=features, meta=meta, manifest=manifest)


# --- Partial folders of killed builds ------------------------------------------------------------------

def _newest_write(folder: Path) -> float:
    """The latest mtime of ``folder`` and of the files in it (a live build writes its rows continuously)."""
    newest = folder.stat().st_mtime
    for entry in os.scandir(folder):
        try:
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
        except FileNotFoundError:
            pass
    return newest


def _lock_is_free(root: Path, key: str, held: str | None) -> bool:
    """Whether nobody builds ``key`` now; a lock file that cannot be opened counts as held."""
    if key == held:
        return True
    lock = FileLock(root / f".{key}.lock")
    try:
        if not lock.acquire(blocking=False):
            return False
    except OSError:
        return False
    lock.release()
    return True


def partial_is_stale(folder: Path, *, host: str | None = None, pid: int | None = None) -> bool:
    """Whether the build that left partial folder ``folder`` is over, by its owner ``host`` and ``pid``.

    Over when its owner ran on this host and that process is gone, or is this very process (pids are
    reused, by containers especially); when it ran on another host, whose processes cannot be checked,
    or is unknown (``pid`` None), once nothing in the folder was written for ``IDLE_STALE_S`` (a live
    build writes its rows continuously). The caller holds the lock of what the folder builds.
    """
    if pid is not None and host == HOST:
        return owner_gone(host, pid) or pid == os.getpid()
    return time.time() - _newest_write(folder) > IDLE_STALE_S


def remove_stale_partials(root: str | Path, *, held: str | None = None) -> list[Path]:
    """Remove the partial folders in cache folder ``root`` whose build is over, and return them.

    A partial folder is named ``.<key>.<build|damaged>.<host>.<pid>.<random>``. It is removed when
    nobody holds the lock of its key (``held``: the key whose lock the caller holds) and
    - its owner ran on this host and that process is gone, or is this very process (pids are reused,
      by containers especially), or
    - its owner ran on another host, whose processes cannot be checked, and nothing in it was written
      for ``IDLE_STALE_S`` (a live build writes its rows continuously); the same for partial folders
      named ``.<key>.<8 characters>``, whose names record no owner.
    A build of a live process of this host is never removed. Lock files nobody holds are removed too.
    A folder that cannot be removed (another user's) is logged and left: it never stops a build.
    """
    root = Path(root)
    removed = []
    try:
        entries = sorted(e.name for e in os.scandir(root))
    except FileNotFoundError:
        return removed
    for name in entries:
        folder = root / name
        m = _PARTIAL.match(name) or _UNOWNED_PARTIAL.match(name)
        if m is None:
            lock = _LOCK.match(name)
            if lock and lock["key"] != held:
                _lock_is_free(root, lock["key"], held)  # acquiring and releasing removes the file
            continue
        try:
            if not folder.is_dir():
                continue
            owner = m.groupdict()
            stale = partial_is_stale(folder, host=owner.get("host"),
                                     pid=int(owner["pid"]) if "pid" in owner else None)
            if stale and _lock_is_free(root, m["key"], held):
                shutil.rmtree(folder)
                removed.append(folder)
        except FileNotFoundError:  # another process removed it first
            continue
        except OSError as exc:
            log.warning("could not remove %s, a partial feature cache build: %s", folder, os_error_text(exc))
    return removed


# --- Building ----------------------------------------------------------------------------------------------

def cache_write_error(exc: OSError, root: Path) -> DataError:
    """A one-line DataError for an OSError met while writing in cache folder ``root``: where, why, what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free space on that disk or set features.cache_dir to a folder on another one"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "make it writable or set features.cache_dir to a folder you can write"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
        advice = "remove that file or set features.cache_dir to another folder"
    else:
        advice = "set features.cache_dir to another folder"
    return DataError(f"cannot write the feature cache in {root}: {os_error_text(exc)}; {advice} "
                     "(no partial cache was kept)")


def check_cache_folder(cfg: FeatureConfig) -> Path:
    """``cfg.cache_dir``, resolved and created if missing, once a file could be created in it.

    For work that comes before a build that must happen (rendering a dataset, whose features no cache
    holds yet), so that a cache folder that cannot be written fails before that work, not after it.

    Raises
    ------
    DataError
        The message a build would give: a file where a folder is needed, a read-only folder; it names
        the path and what to do.
    """
    root = resolve_path(cfg.cache_dir)
    try:
        return writable_folder(root)
    except OSError as exc:
        raise cache_write_error(exc, root) from exc


def _check_space(root: Path, n_bytes: int) -> None:
    free = shutil.disk_usage(root).free
    if free < n_bytes:
        raise DataError(f"{root}: {free / 1e6:.0f} MB free, the feature cache needs about {n_bytes / 1e6:.0f} MB; "
                        "free space on that disk or set features.cache_dir to a folder on another one")


def _discard(folder: Path, key: str) -> None:
    """Remove a damaged cache folder: renamed aside first, so that no reader takes a half-removed one for
    a cache, and a removal cut short is swept later like a partial build."""
    aside = folder.with_name(f".{key}.damaged.{OWNER_TAG}.{secrets.token_hex(4)}")
    os.replace(folder, aside)
    shutil.rmtree(aside)


def write_features(path: Path, paths: list[str], cfg: FeatureConfig, *, resample: bool = True,
                   show_progress: bool = True, whole_set: bool = True) -> WavReport:
    """Compute the log-mels of ``paths`` into a new ``.npy`` file ``path``, flushed to the disk.

    Returns what the wav reader fixed (see ``compute_features``, which raises on bad input).
    """
    with NpyRowWriter(path, (len(paths), *feature_shape(cfg))) as out:
        _, report = compute_features(paths, cfg, resample=resample, show_progress=show_progress, out=out,
                                     whole_set=whole_set)
        out.sync()
    return report


def log_fixes(report: WavReport) -> None:
    """One warning per kind of fix the wav reader made, with its count (and the files, for truncated and
    clipped ones)."""
    counts = report.counts()
    for name, count in counts.items():
        if name not in ("truncated", "clipped") and count:
            log.warning("%d wav files were %s", count, name)
    if report.truncated:
        log.warning("%d wav files were truncated (their data ends before the size in their header; the missing "
                    "samples are zeros): %s", report.truncated, _named(report.truncated_files, report.truncated))
    if report.clipped:
        log.warning("%d wav files are clipped (%s), used as they are: %s", report.clipped,
                    "runs of samples at full scale", _named(report.clipped_files, report.clipped))


def _write_cache(tmp: Path, df: pd.DataFrame, cfg: FeatureConfig, key: str,
                 features: Callable[[Path], WavReport], extra: dict | None = None) -> None:
    """Write the features (``features(path)``), the metadata and, last, the manifest (with ``extra``'s keys)
    into ``tmp``."""
    shape = (len(df), *feature_shape(cfg))
    report = features(tmp / FEATURES_FILE)
    _meta_table(df).to_parquet(tmp / META_FILE, index=False)
    with open(tmp / META_FILE, "rb") as fh:
        os.fsync(fh.fileno())
    log_fixes(report)
    manifest = {
        "key": key, "version": CACHE_VERSION, "n_notes": len(df), "shape": list(shape),
        "features": feature_representation(cfg), "fixes": report.counts(),
        "fixed_files": report.files[:100], "truncated_files": report.truncated_files[:100],
        "clipped_files": report.clipped_files[:100], "integrity": _integrity(tmp), **(extra or {}),
    }
    atomic_write_json(tmp / MANIFEST_FILE, manifest)


def _lock(root: Path, key: str, final: Path) -> FileLock:
    """The lock of ``key``, held (nothing held, with a warning, on a file system that has no locks)."""
    lock = FileLock(root / f".{key}.lock")
    # Unlocked, two builds of one key at once waste time but stay correct: each writes a partial folder
    # of its own, renamed into place only once whole.
    acquire_unless_unsupported(lock, unlocked="building without one",
                               on_wait=lambda lk: log.info("waiting for %s: another process (%s) is building it",
                                                           final, lk.holder() or "unknown"))
    return lock


def publish_folder(tmp: Path, final: Path) -> None:
    """Rename a complete build folder into place. Where a process that held no lock (a file system without
    locks) renamed a complete folder of the same key there first, its contents are ours and ``tmp`` is left
    for the caller to remove."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not (final / MANIFEST_FILE).is_file():
            raise


def build_feature_cache(df: pd.DataFrame, cfg: FeatureConfig, *, resample: bool = True,
                        show_progress: bool = True,
                        features: Callable[[Path], WavReport] | None = None, key: str | None = None,
                        manifest_extra: dict | None = None) -> FeatureCache:
    """Return the cache for ``df`` (with its ``split`` column), building it if it is missing or damaged.

    A hit costs one ``stat`` per wav and the checks of ``open_feature_cache``. A build takes the lock
    ``<cache_dir>/.<key>.lock`` (waiting, with a message, while another process builds the same
    cache, and then reading what it built), removes stale partial folders, writes into
    ``<cache_dir>/.<key>.build.<host>.<pid>.<random>`` and renames it to ``<cache_dir>/<key>`` only once
    the features, the metadata and the manifest are all written.

    ``features(path)``, when given, writes ``features.npy`` at ``path`` instead of ``write_features`` and
    returns the ``WavReport`` of its notes (``vaelib.data.shards`` merges shards this way); it is called
    under the lock, only when the cache is built. ``key`` replaces :func:`cache_key` for notes without
    wav files (``vaelib.data.synthetic``: 16 hex digits, a hash of what makes the features), and
    ``manifest_extra`` adds keys to the manifest.

    Raises
    ------
    DataError
        A bad input (see ``compute_features``), or the cache folder cannot be written: a file where a
        folder should be, read-only, or a full disk (before the build when too little space is free);
        the message names the path and what to do. Nothing partial is left.
    """
    if "split" not in df.columns:
        raise DataError("build_feature_cache: the table needs a 'split' column (see load_dataset)")
    root = resolve_path(cfg.cache_dir)
    key = key or cache_key(df, cfg)
    final = root / key
    fill = features or (lambda path: write_features(path, list(df["path"]), cfg, resample=resample,
                                                    show_progress=show_progress))
    seen = None
    if (final / MANIFEST_FILE).is_file():
        try:
            cache = open_feature_cache(final)
            log.info("feature cache hit: %s", final)
            return cache
        except CacheReadError:
            raise  # not damage: the cache is left as it is
        except DataError as exc:
            seen = exc  # damaged, or being replaced by another process: settled under the lock
    try:
        writable_folder(root)
        lock = _lock(root, key, final)
    except OSError as exc:
        error = cache_write_error(exc, root)
        if seen is not None:  # a damaged cache in a folder that cannot be written: say both
            error = DataError(f"feature cache {final} is damaged ({seen}) and cannot be rebuilt: {error}")
        raise error from exc
    try:
        damage = None
        if (final / MANIFEST_FILE).is_file():
            try:
                cache = open_feature_cache(final)
                log.info("feature cache hit: %s (built by another process meanwhile)", final)
                return cache
            except CacheReadError:
                raise
            except DataError as exc:
                damage = exc
        tmp = None
        try:
            for folder in remove_stale_partials(root, held=key):
                log.warning("removed %s, left by a feature cache build that was killed", folder)
            if final.exists():
                if damage is not None:
                    log.warning("feature cache %s is damaged (%s): rebuilding it", final, damage)
                _discard(final, key)  # damaged, or a folder of this key without a manifest: never read
            shape = (len(df), *feature_shape(cfg))
            _check_space(root, int(np.prod(shape, dtype=np.int64)) * 2 + (1 << 20))
            tmp = root / f".{key}.build.{OWNER_TAG}.{secrets.token_hex(4)}"
            tmp.mkdir()
            _write_cache(tmp, df, cfg, key, fill, manifest_extra)
            publish_folder(tmp, final)
        except OSError as exc:
            raise cache_write_error(exc, root) from exc
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        lock.release()
    log.info("feature cache built: %s (%d notes)", final, len(df))
    return open_feature_cache(final)
