"""vaelib.data.cache: one array + metadata table, keyed by feature params and input files, built atomically."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import entry, sine

import vaelib.data.cache as cache_mod
from vaelib.config import DataConfig, FeatureConfig
from vaelib.data.cache import (
    FEATURES_FILE,
    MANIFEST_FILE,
    NpyRowWriter,
    build_feature_cache,
    cache_key,
    compute_features,
    open_feature_cache,
)
from vaelib.data.features import log_mel
from vaelib.data.nsynth import load_dataset, read_examples, read_wav

KEYS = [f"{fam}_acoustic_000-0{p}-075" for fam in ("brass", "string") for p in (48, 55, 60, 67, 72)]


@pytest.fixture
def small(make_split, tmp_path):
    """Ten sine notes in one split folder, a table with splits, and a feature config with its own cache_dir."""
    folder = make_split({k: entry(k) for k in KEYS})
    df = read_examples(folder)
    df = df.assign(split=np.where(df["pitch"] < 60, "train", "valid"))
    return folder, df, FeatureConfig(cache_dir=str(tmp_path / "cache"), batch_size=4)


def complete_caches(cfg: FeatureConfig) -> list[str]:
    return sorted(p.name for p in os.scandir(cfg.cache_dir))


def test_cache_of_the_smoke_dataset(smoke_dataset, tmp_path):
    df = load_dataset(DataConfig(root=str(smoke_dataset), valid_fraction=0.2, test_fraction=0.3), seed=0)
    cfg = FeatureConfig(cache_dir=str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    cache = build_feature_cache(df, cfg, show_progress=False)
    assert torch.get_num_threads() == threads, "the build must restore torch's thread count"
    assert cache.path.parent == tmp_path / "cache" and cache.path.name == cache_key(df, cfg)
    assert sorted(p.name for p in cache.path.iterdir()) == [FEATURES_FILE, MANIFEST_FILE, "meta.parquet"]
    assert cache.features.shape == (168, 1, 80, 128) and cache.features.dtype == np.float16
    assert cache.manifest["n_notes"] == 168 and cache.manifest["fixes"] == dict.fromkeys(
        ("resampled", "downmixed", "padded", "truncated", "cut", "clipped"), 0)
    assert cache.manifest["integrity"][FEATURES_FILE]["bytes"] == (cache.path / FEATURES_FILE).stat().st_size
    assert cache.meta["note_str"].tolist() == df["note_str"].tolist()
    assert cache.meta["split"].tolist() == df["split"].tolist() and "path" not in cache.meta
    assert cache.meta["pitch"].dtype == np.int64
    feats = np.asarray(cache.features, dtype=np.float32)
    assert np.isfinite(feats).all() and feats.min() == -1.0 and feats.max() == 1.0
    # a row is the log-mel of its own wav (float16 storage: ~1e-3)
    i = 37
    audio, _ = read_wav(df["path"][i])
    np.testing.assert_allclose(feats[i], log_mel(audio, cfg=cfg), atol=2e-3)
    # every row in its place: the file equals the features computed in memory (168 = 21 batches of 8)
    in_memory, _ = compute_features(list(df["path"]), cfg, show_progress=False)
    np.testing.assert_array_equal(cache.features, in_memory)
    x_valid, m_valid = cache.split("valid")
    assert x_valid.shape == (int((df["split"] == "valid").sum()), 1, 80, 128)
    assert set(m_valid["split"]) == {"valid"} and set(m_valid["instrument_str"]).isdisjoint(
        cache.split("train")[1]["instrument_str"])


def test_second_call_is_a_hit(small, monkeypatch):
    _, df, cfg = small
    first = build_feature_cache(df, cfg, show_progress=False)
    mtime = (first.path / FEATURES_FILE).stat().st_mtime_ns

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cache hit must not recompute features")

    monkeypatch.setattr(cache_mod, "compute_features", must_not_run)
    t0 = time.perf_counter()
    second = build_feature_cache(df, dataclasses.replace(cfg, batch_size=64, workers=1), show_progress=False)
    assert time.perf_counter() - t0 < 0.5
    assert second.path == first.path
    assert (second.path / FEATURES_FILE).stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(np.asarray(second.features), np.asarray(first.features))
    assert complete_caches(cfg) == [first.path.name]


def test_rebuilt_on_a_feature_param_change(small):
    _, df, cfg = small
    a = build_feature_cache(df, cfg, show_progress=False)
    b = build_feature_cache(df, dataclasses.replace(cfg, n_mels=64), show_progress=False)
    c = build_feature_cache(df, dataclasses.replace(cfg, top_db=60.0), show_progress=False)
    d = build_feature_cache(df, dataclasses.replace(cfg, mel_scale="htk"), show_progress=False)
    assert len({a.path, b.path, c.path, d.path}) == 4
    assert b.features.shape == (10, 1, 64, 128) and b.manifest["features"]["n_mels"] == 64
    assert d.manifest["features"]["mel_scale"] == "htk"
    for other in (c, d):
        assert not np.array_equal(np.asarray(a.features), np.asarray(other.features))
    assert complete_caches(cfg) == sorted([a.path.name, b.path.name, c.path.name, d.path.name])


def test_rebuilt_on_a_changed_input_file(small):
    folder, df, cfg = small
    a = build_feature_cache(df, cfg, show_progress=False)
    wav = folder / "audio" / f"{KEYS[0]}.wav"
    sf.write(wav, sine(1000.0), 16000, subtype="PCM_16")
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later mtime even on a coarse clock
    b = build_feature_cache(df, cfg, show_progress=False)
    assert b.path != a.path
    row = df.index[df["note_str"] == KEYS[0]][0]
    assert not np.array_equal(np.asarray(a.features[row]), np.asarray(b.features[row]))
    others = [i for i in range(len(df)) if i != row]
    np.testing.assert_array_equal(np.asarray(a.features[others]), np.asarray(b.features[others]))
    # a different split assignment of the same files is another cache too
    c = build_feature_cache(df.assign(split="train"), cfg, show_progress=False)
    assert c.path not in (a.path, b.path)


def test_interrupted_build_leaves_no_partial_cache(small, monkeypatch):
    _, df, cfg = small
    earlier = build_feature_cache(df, cfg, show_progress=False)
    real = cache_mod.log_mel_batch
    calls = []

    def interrupt_midway(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "log_mel_batch", interrupt_midway)
    changed = dataclasses.replace(cfg, n_mels=40, batch_size=1)  # ten batches, the third one interrupted
    with pytest.raises(KeyboardInterrupt):
        build_feature_cache(df, changed, show_progress=False)
    assert 3 <= len(calls) < 10, "the build should have stopped midway, its queued batches cancelled"
    assert complete_caches(cfg) == [earlier.path.name], "a partial cache folder was left behind"
    monkeypatch.setattr(cache_mod, "log_mel_batch", real)
    done = build_feature_cache(df, changed, show_progress=False)
    assert done.features.shape == (10, 1, 40, 128)
    assert complete_caches(cfg) == sorted([earlier.path.name, done.path.name])
    assert open_feature_cache(done.path).manifest["key"] == done.path.name


def test_row_writer_makes_the_npy_that_numpy_reads(tmp_path):
    # blocks written out of order, as worker threads finish them, land in their rows; rows never
    # written read as zeros; a block that does not fit its rows is refused, not written short
    shape = (10, 1, 3, 4)
    rows = np.random.default_rng(0).standard_normal(shape).astype(np.float16)
    with NpyRowWriter(tmp_path / "f.npy", shape) as w:
        for start in (6, 0, 3):
            w[start:start + 3] = rows[start:start + 3]
        w[9:10] = rows[9:10].astype(np.float32)  # converted to the file's dtype
        with pytest.raises(ValueError, match="do not match"):
            w[0:2] = rows[:3]
        with pytest.raises(ValueError, match="do not match"):  # as many bytes, another layout
            w[0:2] = rows[:2].reshape(2, 1, 4, 3)
        w.sync()
    with pytest.raises(ValueError, match="closed"):
        w[0:1] = rows[:1]
    got = np.load(tmp_path / "f.npy")
    assert got.dtype == np.float16 and got.shape == shape
    np.testing.assert_array_equal(got, rows)
    with NpyRowWriter(tmp_path / "g.npy", shape) as w:
        w[2:4] = rows[2:4]
    got = np.load(tmp_path / "g.npy")
    np.testing.assert_array_equal(got[2:4], rows[2:4])
    assert not got[:2].any() and not got[4:].any()
