"""Streaming the train split from the cache's file: every note once an epoch, a reproducible order, a
bounded read-ahead, the numbers of the memory path, named errors for bad files, and the auto choice."""

from __future__ import annotations

import logging
import shutil
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch
from _training import interrupt_at

import vaelib.model.stream as vstream
import vaelib.model.train as vtrain
from vaelib.config import PROJECT_ROOT, load_config
from vaelib.data.cache import FEATURES_FILE, FeatureCache
from vaelib.data.synthetic import build_synthetic_cache
from vaelib.exceptions import ConfigError, DataError, TrainingError
from vaelib.model.checkpoint import checkpoint_dir
from vaelib.model.stream import StreamRows, batch_positions, block_order, choose_data
from vaelib.model.train import HISTORY_COLUMNS, train

SMOKE = PROJECT_ROOT / "params" / "smoke.yaml"
# 90 train notes of 16 x 16 in batches of 16: 6 steps an epoch (the last of 10 notes); fp32 for exact numbers.
TINY = ["features.n_mels=16", "features.frames=16", "model.channels=[4,8,8]", "model.latent_dim=4",
        "train.epochs=2", "train.batch_size=16", "train.num_threads=1", "train.patience=10", "train.bf16=false",
        "train.warmup_steps=4"]
COUNTS = (90, 12, 6)


def _cfg(root, ckpt: str, *extra: str):
    return load_config(SMOKE, [f"features.cache_dir={root / 'cache'}", f"train.checkpoint_dir={root / ckpt}",
                               *TINY, *extra])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("stream")


@pytest.fixture(scope="module")
def cache(root) -> FeatureCache:
    return build_synthetic_cache(_cfg(root, "ckpt").features, COUNTS, per_instrument=20, show_progress=False)


def _reader(cache: FeatureCache, path=None, **kw) -> StreamRows:
    rows = np.flatnonzero(cache.meta["split"].to_numpy() == "train")
    return StreamRows(path or cache.path / FEATURES_FILE, rows, row_shape=(1, 16, 16), device=torch.device("cpu"),
                      prefetch=kw.pop("prefetch", 2), names=cache.meta["note_str"].to_numpy()[rows], **kw)


def _epoch(reader: StreamRows, order: torch.Tensor, batch_size: int, part=None) -> list[torch.Tensor]:
    n_batches = -(-len(order) // batch_size)
    with reader.epoch(order, batch_size=batch_size, first=0, n_batches=n_batches, part=part) as batches:
        return [batches.get(b) for b in range(n_batches)]


def _history(res) -> np.ndarray:
    return res.history[[c for c in HISTORY_COLUMNS if c != "seconds"]].to_numpy(float)


# --- order ------------------------------------------------------------------------------------------------

def test_block_order_keeps_whole_blocks_in_each_window_and_is_reproducible():
    n, block, window = 103, 8, 3  # 13 blocks, the last of 7 rows
    order = block_order(n, block=block, window=window, gen=torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(n))
    again = block_order(n, block=block, window=window, gen=torch.Generator().manual_seed(0))
    assert torch.equal(order, again)
    assert not torch.equal(order, block_order(n, block=block, window=window, gen=torch.Generator().manual_seed(1)))
    # each window's rows come next, all of them: the first `window` blocks met from its start are its blocks
    sizes = {b: min(block, n - b * block) for b in range(13)}
    start, windows = 0, 0
    while start < n:
        chosen: list[int] = []
        for b in (order[start:] // block).tolist():
            if b not in chosen:
                chosen.append(b)
            if len(chosen) == window:
                break
        size = sum(sizes[b] for b in chosen)
        assert sorted(order[start:start + size].tolist()) == sorted(
            r for b in chosen for r in range(b * block, b * block + sizes[b]))
        start, windows = start + size, windows + 1
    assert windows == 5  # ceil(13 / 3)
    assert order[:24].tolist() != sorted(order[:24].tolist())  # rows shuffled within the window


def test_every_train_note_is_read_once_an_epoch_in_the_order_asked(cache):
    feats = np.asarray(cache.features)
    train_rows = np.flatnonzero(cache.meta["split"].to_numpy() == "train")
    for kw, order in (({}, torch.randperm(90, generator=torch.Generator().manual_seed(3))),
                      ({"block": 8, "keep_blocks": 6},
                       block_order(90, block=8, window=3, gen=torch.Generator().manual_seed(3)))):
        got = torch.cat(_epoch(_reader(cache, **kw), order, 16))
        assert got.shape == (90, 1, 16, 16) and got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), feats[train_rows[order.numpy()]].astype(np.float32))


def test_each_process_reads_its_part_of_every_batch(cache):
    order = torch.randperm(90, generator=torch.Generator().manual_seed(5))
    whole = _epoch(_reader(cache), order, 16)
    for rank in (0, 1):
        def part(n, rank=rank):
            return n * rank // 2, n * (rank + 1) // 2
        mine = _epoch(_reader(cache, block=8, keep_blocks=4), order, 16, part=part)
        for b, (w, m) in enumerate(zip(whole, mine)):
            start, stop = part(len(batch_positions(order, b, batch_size=16)))
            assert torch.equal(m, w[start:stop])


def test_read_ahead_is_bounded_by_prefetch(cache, monkeypatch):
    reads = []
    real = StreamRows._batch

    def counted(self, fd, positions, kept):
        reads.append(len(positions))
        return real(self, fd, positions, kept)

    monkeypatch.setattr(StreamRows, "_batch", counted)
    reader = _reader(cache, prefetch=2)
    order = torch.arange(90)
    with reader.epoch(order, batch_size=4, first=0, n_batches=23) as batches:
        batches.get(0)
        deadline = time.monotonic() + 10
        while len(reads) < 4 and time.monotonic() < deadline:  # 1 taken + 2 queued + 1 waiting to be queued
            time.sleep(0.01)
        time.sleep(0.2)  # time to read further, which it must not
        assert len(reads) == 4
    assert not [t for t in threading.enumerate() if t.name.startswith("vaelib-stream")]


def test_the_reader_thread_ends_on_an_exception_or_an_interrupt(cache):
    reader = _reader(cache, prefetch=1)
    for exc in (KeyboardInterrupt, ValueError):
        with pytest.raises(exc):
            with reader.epoch(torch.arange(90), batch_size=4, first=0, n_batches=23) as batches:
                batches.get(0)
                raise exc
        assert not [t for t in threading.enumerate() if t.name.startswith("vaelib-stream")]


# --- the numbers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", [[], ["train.shuffle_block=8", "train.shuffle_window=3"]], ids=["uniform", "blocks"])
def test_memory_and_stream_give_the_same_loss_curve(root, cache, order):
    mem = train(_cfg(root, f"mem{len(order)}", "train.data=memory", *order), cache, show_progress=False)
    st = train(_cfg(root, f"st{len(order)}", "train.data=stream", *order), cache, show_progress=False)
    np.testing.assert_array_equal(_history(st), _history(mem))  # the same rows in the same order: the same numbers
    assert mem.history["train_recon"].iloc[-1] < mem.history["train_recon"].iloc[0]


def test_a_streamed_run_resumed_mid_epoch_matches_an_uninterrupted_one(root, cache, monkeypatch):
    ref = train(_cfg(root, "st_ref", "train.data=stream"), cache, show_progress=False)
    cfg = _cfg(root, "st_resume", "train.data=stream")
    interrupt_at(monkeypatch, 8)  # in epoch 2, batch 3
    with pytest.raises(KeyboardInterrupt):
        train(cfg, cache, show_progress=False)
    monkeypatch.undo()
    res = train(cfg, cache, resume=True, show_progress=False)
    np.testing.assert_array_equal(_history(res), _history(ref))


def test_data_and_prefetch_leave_the_run_folder_as_it_was_and_the_block_order_does_not(root):
    base = checkpoint_dir(_cfg(root, "ckpt"), "0123456789abcdef")
    assert checkpoint_dir(_cfg(root, "ckpt", "train.data=stream", "train.prefetch=9"), "0123456789abcdef") == base
    assert checkpoint_dir(_cfg(root, "ckpt", "train.shuffle_window=5"), "0123456789abcdef") == base  # block order off
    assert checkpoint_dir(_cfg(root, "ckpt", "train.shuffle_block=8"), "0123456789abcdef") != base
    with pytest.raises(ConfigError, match="train.notes_per_instrument .* train.shuffle_block"):
        _cfg(root, "ckpt", "train.shuffle_block=8", "train.notes_per_instrument=4")


# --- bad files --------------------------------------------------------------------------------------------

def test_a_truncated_features_file_is_named(cache, tmp_path):
    short = tmp_path / "features.npy"
    shutil.copy(cache.path / FEATURES_FILE, short)
    size = short.stat().st_size
    with open(short, "r+b") as fh:
        fh.truncate(size - 1000)
    with pytest.raises(DataError, match=rf"{short}: {size - 1000} bytes, .* truncated"):
        _reader(cache, path=short)
    # cut while training: the read that meets the end says so
    shutil.copy(cache.path / FEATURES_FILE, short)
    reader = _reader(cache, path=short)
    with open(short, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(DataError, match=rf"{short}: the file ended at byte \d+ while reading rows"):
        _epoch(reader, torch.arange(90), 16)


def test_a_foreign_features_file_is_named(cache, tmp_path):
    text = tmp_path / "notes.npy"
    text.write_text("not an array")
    with pytest.raises(DataError, match=rf"{text}: not a .npy features file"):
        _reader(cache, path=text)
    wide = tmp_path / "float32.npy"
    np.save(wide, np.zeros((108, 1, 16, 16), dtype=np.float32))
    with pytest.raises(DataError, match=rf"{wide}: float32 features, the feature cache holds float16"):
        _reader(cache, path=wide)
    other = tmp_path / "other.npy"
    np.save(other, np.zeros((108, 1, 20, 16), dtype=np.float16))
    with pytest.raises(DataError, match=r"rows of shape \[1, 20, 16\], the model reads \[1, 16, 16\]"):
        _reader(cache, path=other)
    few = tmp_path / "few.npy"
    np.save(few, np.zeros((10, 1, 16, 16), dtype=np.float16))
    with pytest.raises(DataError, match=r"row \d+ asked of a file of 10 rows"):
        _reader(cache, path=few)


def test_non_finite_features_are_refused_as_their_batch_is_read(cache, tmp_path):
    bad = tmp_path / "features.npy"
    shutil.copy(cache.path / FEATURES_FILE, bad)
    arr = np.load(bad, mmap_mode="r+")
    arr[3, 0, 2, 2] = np.nan
    arr.flush()
    del arr
    name = cache.meta["note_str"].iloc[3]
    with pytest.raises(TrainingError, match=rf"non-finite values .* in 1 notes of a batch \({name}\).*no step"):
        _epoch(_reader(cache, path=bad), torch.arange(90), 16)


# --- memory or stream -------------------------------------------------------------------------------------

def test_auto_streams_when_the_split_would_take_over_half_the_memory():
    gb = 10 ** 9
    # NSynth-train at 80 x 128: 2.96e9 values, 17.8 GB while loading
    values = 289_205 * 80 * 128
    assert choose_data("auto", values=values, host_available=64 * gb) == "memory"
    assert choose_data("auto", values=values, host_available=32 * gb) == "stream"
    assert choose_data("auto", values=values, host_available=64 * gb, processes=2) == "stream"  # each gets half
    assert choose_data("auto", values=values, host_available=512 * gb, device_available=16 * gb) == "stream"
    assert choose_data("memory", values=values, host_available=1) == "memory"
    assert choose_data("stream", values=10, host_available=512 * gb) == "stream"


def test_train_streams_on_auto_when_memory_is_short_and_never_from_an_array(root, cache, monkeypatch, caplog):
    monkeypatch.setattr(vtrain, "available_memory", lambda: 1000)
    seen = []
    real = vtrain._load_data

    def load(*args, **kw):
        data = real(*args, **kw)
        seen.append(type(data.x).__name__)
        return data

    monkeypatch.setattr(vtrain, "_load_data", load)
    with caplog.at_level(logging.INFO, logger="vaelib.model.train"):
        train(_cfg(root, "auto", "train.epochs=1"), cache, show_progress=False)
    assert seen == ["StreamRows"] and "train.data auto: stream" in caplog.text
    # a cache held as an array has no file to stream from
    feats, meta = np.asarray(cache.features), cache.meta
    in_memory = FeatureCache(path=cache.path, features=feats, meta=meta, manifest=cache.manifest)
    train(_cfg(root, "auto_array", "train.epochs=1"), in_memory, show_progress=False)
    assert seen[-1] == "MemoryRows"
    with pytest.raises(TrainingError, match="train.data is 'stream' but this cache's features are an array"):
        train(_cfg(root, "stream_array", "train.epochs=1", "train.data=stream"), in_memory, show_progress=False)


def test_available_memory_is_a_positive_number_of_bytes():
    assert vstream.available_memory() > 0
    assert isinstance(pd.Series([vstream.available_memory()]).iloc[0], (int, np.integer))
