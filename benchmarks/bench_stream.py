"""Training from a feature cache in memory against streaming it from its file, side by side, and the stream
reader's own throughput.

* **train**: :func:`vaelib.model.train.train` on a synthetic cache (:mod:`vaelib.data.synthetic`, the
  format of a real one) of ``--notes`` train notes (``--nsynth``: NSynth's 289,205 / 12,678 / 4,096,
  5.9 GB of train rows), the ``--params`` model (default ``params/plain.yaml``: the fastest step, so the
  one where the data path shows most), 2 epochs a path, the
  second timed (the history's ``seconds``: the training loop, valid evaluation excluded), for
  ``train.data`` memory, stream, and stream with the block order (``train.shuffle_block``). The paths
  take turns, the order reversed every repeat, so that a change of load hits them alike; the median
  of ``--repeats`` is reported, and the process CPU seconds of each call (every thread, the reader's
  included), which other processes on shared cores change far less than the wall time. The memory
  path is skipped where ``train.data=auto`` would stream. Timed at each ``--threads`` (default 1, which
  leaves a core to the reader, and 0, every core to the step's OpenMP threads).
* **reader**: :class:`vaelib.model.stream.StreamRows` alone, batches of ``train.batch_size`` in the
  uniform and the block order, from the page cache (the file read once before) and with the file's
  pages dropped (``posix_fadvise(DONTNEED)``, or ``/proc/sys/vm/drop_caches`` where that is not
  available; the share still resident, from ``mincore``, is recorded); also without its
  ``POSIX_FADV_WILLNEED`` hints for the next batch, and a memory map's gather of the same batches
  (numpy fancy indexing of ``np.load(mmap_mode='r')``), for comparison.

Writes ``benchmarks/results/stream.json`` (``--out``) with the machine as ``bench_train.py`` records it.
A benchmark, not a test: timings depend on the load (recorded before and after).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import mmap
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from bench_train import _load, wait_for_quiet

from vaelib.config import PROJECT_ROOT, load_config, project_relative
from vaelib.data.cache import FEATURES_FILE, FeatureCache, open_feature_cache
from vaelib.data.synthetic import NSYNTH_SPLITS, build_synthetic_cache
from vaelib.io import atomic_write_json
from vaelib.model.device import cpu_flags, machine_info, set_threads
from vaelib.model.stream import HOST_BYTES_PER_VALUE, StreamRows, available_memory, block_order, choose_data
from vaelib.model.train import train

OUT = PROJECT_ROOT / "benchmarks" / "results" / "stream.json"
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
PATHS = {"memory": ["train.data=memory"], "stream": ["train.data=stream"],
         "stream_blocks": ["train.data=stream", "train.shuffle_block=64", "train.shuffle_window=32"]}


def resident_fraction(path: Path) -> float:
    """Share of ``path``'s pages in the page cache (``mincore``); NaN where it cannot be asked."""
    size = path.stat().st_size
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # a private (copy-on-write) map, so that ctypes may take its address; untouched, it maps the page cache
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY) as mm:
            page = mmap.PAGESIZE
            pages = (size + page - 1) // page
            vec = (ctypes.c_ubyte * pages)()
            first = ctypes.c_char.from_buffer(mm)  # the map's first byte, whose address mincore takes
            try:
                libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
                if libc.mincore(ctypes.addressof(first), size, vec) != 0:
                    return float("nan")
            finally:
                del first
            return float((np.frombuffer(vec, dtype=np.uint8) & 1).mean())
    except (OSError, AttributeError, TypeError, ValueError):
        return float("nan")


def drop_pages(path: Path) -> str:
    """Drop ``path``'s clean pages from the page cache; return how."""
    with open(path, "rb") as fh:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            return "posix_fadvise(DONTNEED)"
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return "/proc/sys/vm/drop_caches"
    except OSError:
        return "none (pages not dropped)"


def _orders(n: int, seed: int) -> dict[str, torch.Tensor]:
    return {"uniform": torch.randperm(n, generator=torch.Generator().manual_seed(seed)),
            "blocks": block_order(n, block=64, window=32, gen=torch.Generator().manual_seed(seed))}


def time_reader(path: Path, rows: np.ndarray, row_shape: tuple[int, ...], *, batch_size: int, max_batches: int,
                seed: int) -> list[dict]:
    """Notes/s and MB/s of the stream reader and of a memory map's gather, warm and with pages dropped.

    No memory map of ``path`` may be open in this process: the kernel drops no page a process maps.
    """
    row_bytes = int(np.prod(row_shape)) * 2
    out = []
    for order_name, order in _orders(len(rows), seed).items():
        n_batches = min(-(-len(order) // batch_size), max_batches)
        notes = min(len(order), n_batches * batch_size)
        for cache_state in ("page cache", "dropped"):
            for reader in ("stream", "stream_no_advise", "memmap"):
                if cache_state == "page cache":
                    with open(path, "rb") as fh:  # read it all once
                        while fh.read(1 << 24):
                            pass
                    how = "read once before"
                else:
                    how = drop_pages(path)
                resident = resident_fraction(path)
                t0 = time.perf_counter()
                if reader.startswith("stream"):
                    stream = StreamRows(path, rows, row_shape=row_shape, device=torch.device("cpu"), prefetch=4,
                                        block=64 if order_name == "blocks" else 0, keep_blocks=64,
                                        advise=reader == "stream")
                    with stream.epoch(order, batch_size=batch_size, first=0, n_batches=n_batches) as batches:
                        for b in range(n_batches):
                            batches.get(b)
                else:
                    mm = np.load(path, mmap_mode="r")
                    on = order.numpy()
                    for b in range(n_batches):
                        idx = rows[on[b * batch_size:(b + 1) * batch_size]]
                        torch.from_numpy(np.asarray(mm[idx])).float()
                    del mm  # unmapped, so that the next pass can drop its pages
                sec = time.perf_counter() - t0
                out.append({"reader": reader, "order": order_name, "pages": cache_state, "pages_how": how,
                            "resident_before": resident, "notes": notes, "seconds": sec,
                            "notes_per_s": notes / sec, "mb_per_s": notes * row_bytes / sec / 1e6})
                print(f"reader {reader:16s} {order_name:7s} {cache_state:10s}: {notes / sec:9.0f} notes/s "
                      f"{notes * row_bytes / sec / 1e6:7.0f} MB/s (resident before {resident:.2f})", flush=True)
    return out


def time_training(params: str, overrides: list[str], cache: FeatureCache, paths: list[str], *, repeats: int) -> dict:
    """Per path, the second epoch's seconds of each repeat (paths in turn, the order reversed every repeat)."""
    n_train = int((cache.meta["split"] == "train").sum())
    seconds: dict[str, list[float]] = {p: [] for p in paths}
    cpu: dict[str, list[float]] = {p: [] for p in paths}
    recon: dict[str, list[float]] = {p: [] for p in paths}
    for r in range(repeats):
        for name in (paths if r % 2 == 0 else paths[::-1]):
            with tempfile.TemporaryDirectory() as tmp:
                run = load_config(params, [*overrides, "train.epochs=2", f"train.checkpoint_dir={tmp}", *PATHS[name]])
                c0 = time.process_time()
                res = train(run, cache, show_progress=False)
                cpu[name].append(time.process_time() - c0)
            seconds[name].append(float(res.history["seconds"].iloc[-1]))
            recon[name].append(float(res.history["train_recon"].iloc[-1]))
            print(f"train {name:13s} repeat {r}: {n_train / seconds[name][-1]:7.0f} notes/s, "
                  f"{cpu[name][-1]:.1f} CPU s the call", flush=True)
    return {name: {"notes_per_s": n_train / statistics.median(s), "epoch_seconds": statistics.median(s),
                   "epoch_seconds_all": s, "call_cpu_seconds": statistics.median(cpu[name]),
                   "call_cpu_seconds_all": cpu[name], "train_recon_epoch_2": recon[name]}
            for name, s in seconds.items()}


def _ratios(training: dict) -> dict:
    """Each path against the memory path, by thread count: the medians' ratio, the ratio within each repeat
    (the paths ran one after the other, so the load changed least between them) and the ratio of process CPU
    seconds of the calls (2 epochs, their evaluations and the setup; every thread, the reader's included)."""
    out: dict = {"stream_over_memory": {}, "stream_over_memory_per_repeat": {}, "cpu_over_memory": {}}
    for threads, paths in training.items():
        if "memory" not in paths:
            continue
        mem = paths["memory"]
        out["stream_over_memory"][threads] = {k: v["notes_per_s"] / mem["notes_per_s"] for k, v in paths.items()}
        out["stream_over_memory_per_repeat"][threads] = {
            k: [m / s for s, m in zip(v["epoch_seconds_all"], mem["epoch_seconds_all"])] for k, v in paths.items()}
        out["cpu_over_memory"][threads] = {k: v["call_cpu_seconds"] / mem["call_cpu_seconds"]
                                           for k, v in paths.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(PROJECT_ROOT / "params" / "plain.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--notes", type=int, default=2048, help="train notes of the synthetic cache")
    ap.add_argument("--nsynth", action="store_true", help="NSynth's shape: 289,205 / 12,678 / 4,096 notes (6.3 GB)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1,0", help="train.num_threads values to time, comma-separated (0: every "
                                                    "core; 1 leaves the other cores to the reader)")
    ap.add_argument("--reader-batches", type=int, default=400, help="most batches the reader is timed on")
    ap.add_argument("--skip-train", action="store_true", help="time the reader only")
    ap.add_argument("--cache-dir", default=None, help="where the synthetic cache goes (default: a temporary folder, "
                                                     "removed at the end)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    counts = NSYNTH_SPLITS if args.nsynth else (args.notes, max(256, args.notes // 16), 0)
    tmp = tempfile.TemporaryDirectory(dir=args.cache_dir) if args.cache_dir is None else None
    cache_dir = tmp.name if tmp is not None else args.cache_dir
    overrides = [*args.overrides, f"features.cache_dir={cache_dir}"]
    cfg = load_config(args.params, overrides)
    set_threads(cfg.train.num_threads)
    load_before = _load()
    t0 = time.perf_counter()
    cache = build_synthetic_cache(cfg.features, counts, seed=cfg.run.seed, show_progress=False)
    build_seconds = time.perf_counter() - t0
    size = (cache.path / FEATURES_FILE).stat().st_size
    print(f"synthetic cache: {counts} notes, {size / 1e9:.2f} GB in {build_seconds:.0f} s", flush=True)
    row_shape = tuple(cache.features.shape[1:])
    values = counts[0] * int(np.prod(row_shape))
    path, rows = cache.path / FEATURES_FILE, np.flatnonzero(cache.meta["split"].to_numpy() == "train")
    del cache  # its memory map would keep the file's pages in memory (see time_reader)
    quiet = {"reader": wait_for_quiet()}
    reader = time_reader(path, rows, row_shape, batch_size=cfg.train.batch_size, max_batches=args.reader_batches,
                         seed=cfg.run.seed)
    cache = open_feature_cache(path.parent)
    training, skipped = {}, None
    if not args.skip_train:
        paths = list(PATHS)
        if choose_data("auto", values=values, host_available=available_memory()) == "stream":
            paths.remove("memory")
            skipped = (f"memory path skipped: loading the train split takes {values * HOST_BYTES_PER_VALUE / 1e9:.1f} "
                       f"GB, {available_memory() / 1e9:.1f} GB available")
            print(skipped, flush=True)
        for threads in args.threads.split(","):
            quiet[f"train, num_threads {threads}"] = wait_for_quiet()
            training[threads] = time_training(args.params, [*overrides, f"train.num_threads={threads}"], cache,
                                              paths, repeats=args.repeats)
    machine = machine_info()
    result = {
        "counts": {"train": counts[0], "valid": counts[1], "test": counts[2]},
        "note_shape": list(row_shape),
        "features_bytes": size,
        "synthetic_build_seconds": build_seconds,
        "batch_size": cfg.train.batch_size,
        "model": {"channels": list(cfg.model.channels), "latent_dim": cfg.model.latent_dim, "norm": cfg.model.norm},
        "train": training,  # by train.num_threads (0: every core)
        **_ratios(training),
        "train_skipped": skipped,
        "train_method": "vaelib.model.train.train, 2 epochs a path, the second's seconds (training loop only); "
                        "paths in turn, order reversed each repeat; median over repeats; call_cpu_seconds: process "
                        "CPU time of the whole call (every thread)",
        "reader": reader,
        "reader_method": "StreamRows.epoch batches (os.preadv of row runs, float16 -> float32 channels-last, "
                         "prefetch 4; stream_no_advise: without the WILLNEED hints of the next batch) against "
                         "np.load(mmap_mode='r')[rows] of the same batches; 'dropped': the file's pages dropped "
                         "before the pass, resident_before from mincore",
        "command": " ".join(["benchmarks/bench_stream.py", *sys.argv[1:]]),
        "params": project_relative(args.params),
        "machine": {**machine, "cpu_flags": sorted(cpu_flags() & set(FLAGS))},
        "load_average_before": load_before,
        "load_1min_at_start_of_each_part": quiet,
        "load_average_after": _load(),
        "date": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
    }
    atomic_write_json(Path(args.out), result)
    if tmp is not None:
        tmp.cleanup()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
