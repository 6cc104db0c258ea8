"""The synthetic feature cache: the on-disk format of a real one, reused by key, and the commands that
write it (`vaelib preprocess --synthetic`) and train on it (`vaelib train --cache`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vaelib.cli import main
from vaelib.config import PROJECT_ROOT, load_config
from vaelib.data.cache import FEATURES_FILE, MANIFEST_FILE, META_FILE, open_feature_cache
from vaelib.data.synthetic import NSYNTH_SPLITS, build_synthetic_cache, parse_synthetic_spec, synthetic_table
from vaelib.exceptions import ParameterError

SMOKE = PROJECT_ROOT / "params" / "smoke.yaml"
TINY = ["features.n_mels=16", "features.frames=16", "model.channels=[4,8,8]", "model.latent_dim=4",
        "train.epochs=1", "train.batch_size=16", "train.num_threads=1", "train.bf16=false"]


def test_the_synthetic_cache_is_a_feature_cache_found_again_by_its_key(tmp_path):
    cfg = load_config(SMOKE, [f"features.cache_dir={tmp_path}", *TINY])
    cache = build_synthetic_cache(cfg.features, (50, 8, 4), per_instrument=12, show_progress=False)
    assert {p.name for p in cache.path.iterdir()} == {FEATURES_FILE, META_FILE, MANIFEST_FILE}
    again = open_feature_cache(cache.path)  # the checks of a real cache: sizes, sha256 of the table and sampled rows
    assert again.features.dtype == np.float16 and again.features.shape == (62, 1, 16, 16)
    x = np.asarray(again.features)
    assert np.isfinite(x).all() and x.min() >= -1 and x.max() <= 1 and x.std() > 0.05
    meta = again.meta
    assert meta["split"].value_counts().to_dict() == {"train": 50, "valid": 8, "test": 4}
    assert {"note_str", "instrument", "instrument_family", "pitch", "velocity", "qualities"} <= set(meta.columns)
    assert meta["note_str"].is_unique
    # instrument-disjoint splits, rows grouped by instrument and sorted by note_str within each split
    by_split = meta.groupby("split")["instrument"].apply(set)
    assert not (by_split["train"] & by_split["valid"]) and not (by_split["train"] & by_split["test"])
    train = meta[meta["split"] == "train"]
    assert train["note_str"].tolist() == sorted(train["note_str"]) and train["instrument"].nunique() == 5
    assert json.loads((cache.path / MANIFEST_FILE).read_text())["synthetic"]["counts"] == [50, 8, 4]
    mtime = (cache.path / FEATURES_FILE).stat().st_mtime_ns
    same = build_synthetic_cache(cfg.features, (50, 8, 4), per_instrument=12, show_progress=False)
    assert same.path == cache.path and (cache.path / FEATURES_FILE).stat().st_mtime_ns == mtime  # reused
    np.testing.assert_array_equal(np.asarray(same.features), x)
    other = build_synthetic_cache(cfg.features, (50, 8, 4), per_instrument=12, seed=1, show_progress=False)
    assert other.path != cache.path


def test_the_spec_names_the_option_when_it_is_wrong():
    assert parse_synthetic_spec("nsynth") == NSYNTH_SPLITS == (289_205, 12_678, 4_096)
    assert parse_synthetic_spec("2300") == (2300, 100, 0)
    assert parse_synthetic_spec("100:10:5") == (100, 10, 5)
    for bad in ("", "abc", "1", "100:1", "1:2:3:4", "-5"):
        with pytest.raises(ParameterError, match="--synthetic"):
            parse_synthetic_spec(bad)
    for huge in ("9" * 20, "9000000:1000001"):  # refused before a table of that many notes is built
        with pytest.raises(ParameterError, match=r"--synthetic .* notes; at most 10,000,000 in all"):
            parse_synthetic_spec(huge)
    # NSynth-train's 289,205 notes of 953 instruments: 304 notes an instrument make 952
    table = synthetic_table((289_205, 2, 0))
    assert table.loc[table["split"] == "train", "instrument"].nunique() == 952


def test_preprocess_writes_it_and_train_trains_on_it(tmp_path, capsys):
    over = [a for kv in [f"features.cache_dir={tmp_path / 'cache'}", f"train.checkpoint_dir={tmp_path / 'ckpt'}",
                         *TINY] for a in ("--set", kv)]
    assert main(["preprocess", "--params", str(SMOKE), *over, "--synthetic", "40:6", "--quiet"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["notes"] == {"train": 40, "valid": 6} and written["shape"] == [46, 1, 16, 16]
    assert main(["train", "--params", str(SMOKE), *over, "--cache", written["cache"], "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs_run"] == 1 and summary["best_valid_recon"] > 0
    # a cache of another note shape is refused, naming both
    assert main(["train", "--params", str(SMOKE), *over, "--set", "features.n_mels=32", "--set",
                 "model.channels=[4,8,8]", "--cache", written["cache"], "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "notes of shape [1, 16, 16], the params' model reads [1, 32, 16]" in err
