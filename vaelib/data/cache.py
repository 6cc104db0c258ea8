"""On-disk cache of a dataset's log-mel features: one array file plus a metadata table.

The cache folder is named by a hash of the feature parameters and of the input files (name, size,
modification time), so a change of either builds a new cache and a rerun reuses the old one. It is
built in a temporary folder and renamed into place when complete: an interrupted build leaves
nothing that a later run would read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from vaelib.config import FeatureConfig, feature_representation, resolve_path
from vaelib.data.features import LogMelWorkspace, feature_shape, log_mel_batch
from vaelib.data.nsynth import WavReport, read_wav
from vaelib.exceptions import DataError

__all__ = ["FeatureCache", "cache_key", "build_feature_cache", "open_feature_cache", "compute_features",
           "NpyRowWriter"]

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # in the cache key: raised when what a cache holds changes (2: a digitally silent note is -1)
FEATURES_FILE = "features.npy"
META_FILE = "meta.parquet"
MANIFEST_FILE = "manifest.json"


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


def cache_key(df: pd.DataFrame, cfg: FeatureConfig) -> str:
    """Hash of the feature parameters and, per note, its name, split, wav size and mtime."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "features": feature_representation(cfg)}, sort_keys=True).encode())
    for note, split, path in zip(df["note_str"], df["split"], df["path"]):
        try:
            st = os.stat(path)
        except FileNotFoundError as exc:
            raise DataError(f"{path}: wav file not found (note {note})") from exc
        h.update(f"{note}\t{split}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


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
                     show_progress: bool = True,
                     out: np.ndarray | NpyRowWriter | None = None) -> tuple[np.ndarray | NpyRowWriter, WavReport]:
    """Decode wavs and compute their log-mels, one batch per task on ``cfg.workers`` threads.

    Each thread runs a whole batch (decode, STFT, mel, dB, float16 store) in buffers of its own that
    it reuses (``LogMelWorkspace``), with torch limited to one thread: coarse-grained parallelism
    needs no OpenMP barriers, which stall badly when the cores are shared. libsndfile, the FFT,
    numpy and torch release the GIL. At most ``2 * workers`` batches are in flight, so memory stays
    bounded on a dataset of any size.

    Returns
    -------
    features : [shape=(len(paths), 1, n_mels, frames)] float16 (``out`` if given: an array or a
        ``NpyRowWriter``)
    report : counts of resampled, downmixed, padded and cut files
    """
    n_samples = int(round(cfg.duration_s * cfg.sample_rate))
    if out is None:
        out = np.empty((len(paths), *feature_shape(cfg)), dtype=np.float16)
    report = WavReport()
    bs = cfg.batch_size

    local = threading.local()

    def work(start: int) -> tuple[int, list[WavReport]]:
        if not hasattr(local, "ws"):
            local.ws = LogMelWorkspace(bs, n_samples, cfg)
        batch = paths[start:start + bs]
        audio = local.ws.audio(len(batch))
        rows = audio.numpy()
        reports = [read_wav(p, sample_rate=cfg.sample_rate, n_samples=n_samples, resample=resample, out=row)[1]
                   for p, row in zip(batch, rows)]
        with torch.no_grad():
            x = log_mel_batch(audio, cfg=cfg, workspace=local.ws)
        out[start:start + len(batch)] = x.half().numpy()
        return len(batch), reports

    starts = iter(range(0, len(paths), bs))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=cfg.workers) as pool, \
                tqdm(total=len(paths), desc="log-mel", unit="note", disable=not show_progress) as bar:
            pending = deque(pool.submit(work, s) for s in itertools.islice(starts, 2 * cfg.workers))
            try:
                while pending:
                    n, reports = pending.popleft().result()
                    for r in reports:
                        report.add(r)
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
    return out, report


def open_feature_cache(path: str | Path) -> FeatureCache:
    """Open a complete cache folder (one whose manifest was written)."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise DataError(f"{path}: not a complete feature cache (no {MANIFEST_FILE})")
    manifest = json.loads(manifest_path.read_text())
    features = np.load(path / FEATURES_FILE, mmap_mode="r")
    meta = pd.read_parquet(path / META_FILE)
    if len(meta) != features.shape[0]:
        raise DataError(f"{path}: {len(meta)} metadata rows for {features.shape[0]} feature rows")
    return FeatureCache(path=path, features=features, meta=meta, manifest=manifest)


def build_feature_cache(df: pd.DataFrame, cfg: FeatureConfig, *, resample: bool = True,
                        show_progress: bool = True) -> FeatureCache:
    """Return the cache for ``df`` (with its ``split`` column), building it if it is missing.

    A hit costs one ``stat`` per wav. A build writes into ``<cache_dir>/.<key>.*`` and renames it to
    ``<cache_dir>/<key>`` only once the features, the metadata and the manifest are all written.
    """
    if "split" not in df.columns:
        raise DataError("build_feature_cache: the table needs a 'split' column (see load_dataset)")
    root = resolve_path(cfg.cache_dir)
    key = cache_key(df, cfg)
    final = root / key
    if (final / MANIFEST_FILE).is_file():
        log.info("feature cache hit: %s", final)
        return open_feature_cache(final)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        shape = (len(df), *feature_shape(cfg))
        with NpyRowWriter(tmp / FEATURES_FILE, shape) as out:
            _, report = compute_features(list(df["path"]), cfg, resample=resample, show_progress=show_progress,
                                         out=out)
            out.sync()
        meta = df.drop(columns=["path"]).reset_index(drop=True)
        meta.to_parquet(tmp / META_FILE, index=False)
        for name, count in dataclasses.asdict(report).items():
            if name != "files" and count:
                log.warning("%d wav files were %s", count, name)
        manifest = {
            "key": key, "version": CACHE_VERSION, "n_notes": len(df), "shape": list(shape),
            "features": feature_representation(cfg), "fixes": {k: v for k, v in dataclasses.asdict(report).items()
                                                    if k != "files"},
            "fixed_files": report.files[:100],
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        if final.exists() and not (final / MANIFEST_FILE).is_file():
            shutil.rmtree(final)  # a folder of this key without a manifest is never read: replace it
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same cache first; its copy is as good as ours.
            if not (final / MANIFEST_FILE).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("feature cache built: %s (%d notes)", final, len(df))
    return open_feature_cache(final)
