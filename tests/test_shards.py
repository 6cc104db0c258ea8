"""vaelib.data.shards: the feature cache built in shards by several processes, merged into the very bytes
of a single build."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SMOKE_PARAMS, entry, sine

import vaelib.data.cache as cache_mod
from vaelib.cli.main import main
from vaelib.config import PROJECT_ROOT, load_config
from vaelib.data.cache import FEATURES_FILE, MANIFEST_FILE, META_FILE, build_feature_cache, cache_key
from vaelib.data.nsynth import load_dataset
from vaelib.data.prepare import merge_features, prepare_features, prepare_shard
from vaelib.data.shards import (
    SHARDS_DIR,
    build_shard,
    merge_shards,
    parse_shard,
    parse_shard_count,
    shard_folder,
    shard_rows,
)
from vaelib.exceptions import DataError, ParameterError
from vaelib.io import HOST

# Five instruments of two families, four pitches each: 20 notes, 5 batches of 4 (the last one whole).
NOTES = [f"{inst}-0{p}-075" for inst in ("brass_acoustic_000", "brass_acoustic_001", "brass_acoustic_002",
                                          "string_acoustic_000", "string_acoustic_001") for p in (48, 55, 60, 67)]
BATCH = 4
CACHE_FILES = (FEATURES_FILE, META_FILE, MANIFEST_FILE)


@pytest.fixture
def dataset(make_split, tmp_path):
    """A 20-note dataset and its params (smoke's splits, batches of 4), with a cache folder of its own;
    ``overrides`` are the same as ``--set`` arguments. Two wavs need a fix (one of 2 s, padded, at row 1
    of the cache; one of 6 s, cut, at row 17), so that the manifest's fixes come from two shards."""
    folder = make_split({k: entry(k) for k in NOTES}, name="ds")
    sf.write(folder / "audio" / f"{NOTES[9]}.wav", sine(330.0, seconds=2.0), 16000, subtype="PCM_16")
    sf.write(folder / "audio" / f"{NOTES[1]}.wav", sine(330.0, seconds=6.0), 16000, subtype="PCM_16")
    overrides = [f"data.root={folder}", f"features.cache_dir={tmp_path / 'cache'}",
                 f"features.batch_size={BATCH}"]
    return load_config(SMOKE_PARAMS, overrides), overrides


def single_build(cfg, tmp_path: Path) -> Path:
    """The cache a single process builds, in a cache folder of its own."""
    features = dataclasses.replace(cfg.features, cache_dir=str(tmp_path / "single"))
    df = load_dataset(cfg.data, seed=cfg.run.seed)
    return build_feature_cache(df, features, show_progress=False).path


def same_bytes(a: Path, b: Path) -> None:
    assert a.name == b.name, "the merged cache must have the single build's key"
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir()) == sorted(CACHE_FILES)
    for name in CACHE_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs from the single build's"


def shards_of_key(cfg) -> str:
    """The key of the cache the params define (its shards' folder)."""
    return cache_key(load_dataset(cfg.data, seed=cfg.run.seed), cfg.features)


def shards_of(cfg) -> list[str]:
    """What the shards folder of the params' cache holds."""
    folder = Path(cfg.features.cache_dir) / SHARDS_DIR / shards_of_key(cfg)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def must_not_compute(*args, **kwargs):
    raise AssertionError("features were computed again")


# --- which rows a shard holds ----------------------------------------------------------------------------

def test_shard_rows_tile_the_notes_on_batch_edges():
    for n_notes, batch_size, count in [(20, 4, 2), (20, 4, 3), (21, 4, 3), (168, 16, 8), (20, 4, 7), (20, 4, 25),
                                       (5, 16, 3), (1, 1, 1)]:
        rows = [shard_rows(n_notes, index=i, count=count, batch_size=batch_size) for i in range(count)]
        edges = [a for a, _ in rows] + [rows[-1][1]]
        assert edges[0] == 0 and edges[-1] == n_notes and edges == sorted(edges), (n_notes, batch_size, count)
        assert all(b == rows[i + 1][0] for i, (_, b) in enumerate(rows[:-1])), "contiguous"
        assert all(a % batch_size == 0 or a == n_notes for a in edges), "every edge on a batch boundary"
        sizes = [-(-(b - a) // batch_size) for a, b in rows]  # batches per shard
        assert max(sizes) - min(sizes) <= 1, (rows, "batches are dealt out evenly")
    assert [shard_rows(20, index=i, count=3, batch_size=4) for i in range(3)] == [(0, 8), (8, 16), (16, 20)]
    assert [shard_rows(21, index=i, count=2, batch_size=4) for i in range(2)] == [(0, 12), (12, 21)]
    # more shards than batches: one batch each, and the shards past the last batch are empty
    assert [shard_rows(20, index=i, count=7, batch_size=4) for i in range(7)] == [
        (0, 4), (4, 8), (8, 12), (12, 16), (16, 20), (20, 20), (20, 20)]


def test_shard_option_is_validated_naming_it():
    assert parse_shard("0/1") == (0, 1) and parse_shard("7/8") == (7, 8) and parse_shard(" 3/8 ") == (3, 8)
    for text, expected in [("8/8", "from 0 to 7"), ("3", "INDEX/COUNT"), ("-1/8", "INDEX/COUNT"),
                           ("a/b", "INDEX/COUNT"), ("1/2/3", "INDEX/COUNT"), ("0/0", "from 1 to 100,000"),
                           ("0/" + "9" * 23, "from 1 to 100,000"), ("", "INDEX")]:
        with pytest.raises(ParameterError, match=f"--shard '{text}'.*{expected}"):
            parse_shard(text)
    assert parse_shard_count("8") == 8
    for text in ("0", "-2", "x", "2/2", "9" * 20):
        with pytest.raises(ParameterError, match="--merge .*number of shards"):
            parse_shard_count(text)


def test_cli_refuses_a_bad_shard_before_reading_anything(tmp_path, capsys):
    rc = main(["preprocess", "--params", str(SMOKE_PARAMS), "--quiet", "--shard", "2/2",
               "--set", f"data.root={tmp_path / 'absent'}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "vaelib preprocess: error: --shard '2/2': expected an index from 0 to 1" in err


# --- the merge equals a single build --------------------------------------------------------------------

@pytest.mark.parametrize("count", [2, 3, 7, 25], ids=["2", "3", "7-more-than-batches", "25-more-than-notes"])
def test_merged_shards_equal_a_single_build_bit_for_bit(dataset, tmp_path, count, caplog):
    cfg, _ = dataset
    single = single_build(cfg, tmp_path)
    for i in reversed(range(count)):  # in any order
        res = prepare_shard(cfg, index=i, count=count, show_progress=False)
        assert res.status == "built" and (res.path / MANIFEST_FILE).is_file()
    fixed_in = [i for i in range(count)
                if sum(json.loads((shard_folder(cfg.features, shards_of_key(cfg), i, count) / MANIFEST_FILE)
                                  .read_text())["fixes"].values())]
    assert len(fixed_in) == 2, "the two fixed wavs are in two shards"
    empty = max(0, count - 5)  # 20 notes are 5 batches of 4
    assert sum("holds no notes" in r.message for r in caplog.records) == empty
    merged = merge_features(cfg, count=count, show_progress=False)
    assert merged.path.parent == Path(cfg.features.cache_dir)
    same_bytes(merged.path, single)
    fixes = merged.manifest["fixes"]
    assert (fixes["padded"], fixes["cut"]) == (1, 1) and sum(fixes.values()) == 2
    assert [Path(p).stem for p in merged.manifest["fixed_files"]] == [NOTES[9], NOTES[1]], "in the cache's order"
    assert sorted(os.listdir(cfg.features.cache_dir)) == [merged.path.name], "shards, locks, partials all gone"


def test_a_shard_of_nothing_but_silence_is_built_as_the_single_build_keeps_it(dataset, tmp_path):
    cfg, _ = dataset
    order = list(load_dataset(cfg.data, seed=cfg.run.seed)["note_str"])
    for note in order[:BATCH]:  # the first batch: the whole of shard 0 of 5
        sf.write(Path(cfg.data.root) / "audio" / f"{note}.wav", np.zeros(64000, np.float32), 16000)
    single = single_build(cfg, tmp_path)  # silent notes in a set that is not: kept, with a warning
    for i in range(5):
        assert prepare_shard(cfg, index=i, count=5, show_progress=False).status == "built"
    same_bytes(merge_features(cfg, count=5, show_progress=False).path, single)


def test_merged_cache_is_used_by_prepare_features_without_computing(dataset, tmp_path, monkeypatch):
    cfg, _ = dataset
    for i in range(2):
        prepare_shard(cfg, index=i, count=2, show_progress=False)
    merged = merge_features(cfg, count=2, show_progress=False)
    monkeypatch.setattr(cache_mod, "compute_features", must_not_compute)
    cache = prepare_features(cfg, show_progress=False)  # what `vaelib train` and `vaelib embed` call
    assert cache.path == merged.path and cache.features.shape == (20, 1, 80, 128)
    assert cache.meta["note_str"].tolist() == load_dataset(cfg.data, seed=cfg.run.seed)["note_str"].tolist()
    # once the cache is built, neither a shard nor a merge reads or computes anything
    res = prepare_shard(cfg, index=1, count=2, show_progress=False)
    assert res.status == "cache built" and res.path == merged.path and shards_of(cfg) == []
    assert merge_features(cfg, count=5, show_progress=False).path == merged.path


def test_a_finished_shard_is_not_recomputed(dataset, monkeypatch):
    cfg, _ = dataset
    first = prepare_shard(cfg, index=0, count=3, show_progress=False)
    stamp = (first.path / FEATURES_FILE).stat().st_mtime_ns
    monkeypatch.setattr(cache_mod, "compute_features", must_not_compute)
    again = prepare_shard(cfg, index=0, count=3, show_progress=False)
    assert again.status == "present" and again.path == first.path and (again.start, again.stop) == (0, 8)
    assert (again.path / FEATURES_FILE).stat().st_mtime_ns == stamp
    assert shards_of(cfg) == ["shard-0-of-3"], "the lock file is removed on release"


# --- what the merge refuses --------------------------------------------------------------------------------

def test_merge_names_the_missing_shards_and_writes_nothing(dataset):
    cfg, _ = dataset
    for i in (0, 2):
        prepare_shard(cfg, index=i, count=4, show_progress=False)
    with pytest.raises(DataError, match=r"2 of 4 shards missing: 1, 3.*--shard INDEX/4"):
        merge_features(cfg, count=4, show_progress=False)
    assert sorted(os.listdir(cfg.features.cache_dir)) == [SHARDS_DIR], "no cache, no partial cache"
    # the shards of another count are not taken for these, and the message says they are there
    with pytest.raises(DataError, match=r"3 of 3 shards missing: 0, 1, 2.*other counts are there \(4\)"):
        merge_features(cfg, count=3, show_progress=False)


def test_merge_refuses_damaged_shards_naming_each(dataset):
    cfg, _ = dataset
    shards = [prepare_shard(cfg, index=i, count=3, show_progress=False).path for i in range(3)]
    with open(shards[1] / FEATURES_FILE, "r+b") as fh:  # one row changed, the size kept
        fh.seek(-10, os.SEEK_END)
        fh.write(b"\x00" * 10)
    (shards[2] / MANIFEST_FILE).unlink()
    with pytest.raises(DataError) as err:
        merge_features(cfg, count=3, show_progress=False)
    msg = str(err.value)
    assert "1 of 3 shards missing" not in msg and "2 damaged" in msg
    assert f"1 ({shards[1] / FEATURES_FILE}: its sha256 differs" in msg
    assert f"2 ({shards[2]}: not a complete shard" in msg
    # rebuilding the damaged shards makes the merge whole again
    for i in (1, 2):
        assert prepare_shard(cfg, index=i, count=3, show_progress=False).status == "built"
    merge_features(cfg, count=3, show_progress=False)


def test_shards_of_other_params_are_refused(dataset, tmp_path):
    cfg, overrides = dataset
    other = load_config(SMOKE_PARAMS, [*overrides, "features.top_db=60"])
    for i in range(2):
        prepare_shard(other, index=i, count=2, show_progress=False)
    other_key = shards_of_key(other)
    with pytest.raises(DataError, match=rf"2 of 2 shards missing: 0, 1; shards of other caches are there "
                                        rf"\({other_key}\): built from other params"):
        merge_features(cfg, count=2, show_progress=False)
    # a shard of the other key moved into this key's folder is refused for its key
    key = shards_of_key(cfg)
    prepare_shard(cfg, index=0, count=2, show_progress=False)
    os.replace(shard_folder(other.features, other_key, 1, 2), shard_folder(cfg.features, key, 1, 2))
    with pytest.raises(DataError, match=rf"1 damaged: 1 \(.*a shard of cache {other_key}, not of {key}"):
        merge_features(cfg, count=2, show_progress=False)


def test_shards_of_another_batch_size_do_not_fit(dataset):
    cfg, overrides = dataset
    prepare_shard(cfg, index=0, count=2, show_progress=False)  # rows 0:12 of batches of 4
    eight = load_config(SMOKE_PARAMS, [*overrides, "features.batch_size=8"])  # the same key
    assert prepare_shard(eight, index=1, count=2, show_progress=False).start == 16
    with pytest.raises(DataError, match=r"different features.batch_size.*4: shards 0; 8: shards 1"):
        merge_features(cfg, count=2, show_progress=False)


# --- interrupted shards --------------------------------------------------------------------------------------

def test_a_shard_that_fails_midway_leaves_nothing_and_is_rebuilt(dataset, tmp_path, monkeypatch):
    cfg, _ = dataset
    single = single_build(cfg, tmp_path)
    prepare_shard(cfg, index=0, count=2, show_progress=False)
    read_wav, calls = cache_mod.read_wav, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("the machine went away")
        return read_wav(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "read_wav", failing)
    with pytest.raises(RuntimeError, match="went away"):
        prepare_shard(cfg, index=1, count=2, show_progress=False)
    assert shards_of(cfg) == ["shard-0-of-2"], "neither a shard nor a partial one is left"
    with pytest.raises(DataError, match=r"1 of 2 shards missing: 1;"):
        merge_features(cfg, count=2, show_progress=False)
    monkeypatch.setattr(cache_mod, "read_wav", read_wav)
    prepare_shard(cfg, index=1, count=2, show_progress=False)
    same_bytes(merge_features(cfg, count=2, show_progress=False).path, single)


# One other process runs the command line twice: `vaelib preprocess --shard 0/2`, to the end, then
# `--shard 1/2`, whose wav reader stops for good after its first batch (it touches argv[1] first): the
# test kills the process there, mid-way through shard 1. One process start for both (imports take seconds).
OTHER_PROCESS = """
import pathlib, sys, time
import vaelib.data.cache as cache_mod
from vaelib.cli.main import main
assert main(sys.argv[2:] + ["--shard", "0/2"]) == 0
sys.stdout.flush()
read_wav, calls = cache_mod.read_wav, []
def stalled(*args, **kwargs):
    calls.append(1)
    if len(calls) > 4:
        pathlib.Path(sys.argv[1]).touch()
        time.sleep(600)
    return read_wav(*args, **kwargs)
cache_mod.read_wav = stalled
main(sys.argv[2:] + ["--shard", "1/2"])
"""


def cli_args(overrides: list[str], *extra: str) -> list[str]:
    args = ["preprocess", "--params", str(SMOKE_PARAMS), "--quiet", *extra]
    for o in overrides:
        args += ["--set", o]
    return args


def test_shards_built_by_other_processes_merge_and_a_killed_one_is_rebuilt(dataset, tmp_path, capsys):
    cfg, overrides = dataset
    single = single_build(cfg, tmp_path)
    flag = tmp_path / "stalled"
    other = subprocess.Popen([sys.executable, "-c", OTHER_PROCESS, str(flag), *cli_args(overrides)],
                             cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not flag.exists():
            assert other.poll() is None, other.communicate()
            assert time.monotonic() < deadline, "the build of shard 1 never reached its second batch"
            time.sleep(0.05)
        os.kill(other.pid, signal.SIGKILL)
        other.wait(timeout=30)
    finally:
        if other.poll() is None:
            other.kill()
        stdout, stderr = other.communicate()
    # shard 0: built by the command line in the other process
    out = json.loads(stdout)
    assert out["shard"] == "0/2" and out["status"] == "built" and out["rows"] == [0, 12], stderr
    assert Path(out["path"]) == shard_folder(cfg.features, shards_of_key(cfg), 0, 2)
    # shard 1: killed mid-way, only its partial folder is left
    left = shards_of(cfg)
    partial = [n for n in left if n.startswith(f".shard-1-of-2.build.{HOST}.{other.pid}.")]
    assert len(partial) == 1 and "shard-1-of-2" not in left, left
    # the merge (through the command line) refuses, naming the shard and the partial build left
    assert main(cli_args(overrides, "--merge", "2")) == 2
    err = capsys.readouterr().err
    assert "1 of 2 shards missing: 1 (a partial build is there: killed, or still running)" in err
    assert not (Path(cfg.features.cache_dir) / single.name).exists()
    # rebuilt here: the killed build's partial folder is removed, and the merge gives the single build's bytes
    assert prepare_shard(cfg, index=1, count=2, show_progress=False).status == "built"
    assert not any(n.startswith(".shard-1-of-2.build.") for n in shards_of(cfg))
    assert main(cli_args(overrides, "--merge", "2")) == 0
    assert json.loads(capsys.readouterr().out)["cache"] == str(Path(cfg.features.cache_dir) / single.name)
    same_bytes(Path(cfg.features.cache_dir) / single.name, single)


def test_a_shard_does_not_render_a_missing_dataset(dataset, tmp_path):
    _, overrides = dataset
    cfg = load_config(SMOKE_PARAMS, [*overrides, f"data.root={tmp_path / 'not_rendered_yet'}"])
    for call in (lambda: prepare_shard(cfg, index=0, count=2), lambda: merge_features(cfg, count=2)):
        with pytest.raises(DataError, match=r"dataset folder not found.*render it first with `vaelib render"):
            call()
    assert not (tmp_path / "gm").exists()


def test_build_shard_checks_its_arguments(dataset):
    cfg, _ = dataset
    df = load_dataset(cfg.data, seed=cfg.run.seed)
    with pytest.raises(ParameterError, match="index=2: expected a shard index from 0 to 1"):
        build_shard(df, cfg.features, index=2, count=2)
    with pytest.raises(ParameterError, match="count=0"):
        merge_shards(df, cfg.features, count=0)
    with pytest.raises(DataError, match="'split' column"):
        build_shard(df.drop(columns=["split"]), cfg.features, index=0, count=1)
