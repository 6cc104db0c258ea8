"""01_preprocess: its statistics (vaelib.data.summary) and a papermill run on the smoke params."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest

from vaelib.config import PROJECT_ROOT
from vaelib.data.cache import FeatureCache
from vaelib.data.summary import count_table, dataset_summary, example_per_family, feature_stats
from vaelib.exceptions import DataError

matplotlib.use("Agg")
NOTEBOOK = PROJECT_ROOT / "notebooks" / "01_preprocess.ipynb"


def _meta() -> pd.DataFrame:
    rows = []
    for split, insts in {"train": ["brass_acoustic_000", "vocal_synthetic_000"], "valid": ["brass_acoustic_001"],
                         "test": ["string_acoustic_000"]}.items():
        for inst in insts:
            fam, src, _ = inst.rsplit("_", 2)
            for pitch in (58, 60, 61):
                for vel in (25, 127):
                    rows.append({"split": split, "instrument_str": inst, "instrument_family_str": fam,
                                 "instrument_source_str": src, "pitch": pitch, "velocity": vel,
                                 "note_str": f"{inst}-{pitch:03d}-{vel:03d}"})
    return pd.DataFrame(rows)


def test_dataset_summary_counts():
    meta = _meta()
    s = dataset_summary(meta)
    assert s["n_notes"] == {"train": 12, "valid": 6, "test": 6} and s["n_notes_total"] == 24
    assert list(s["n_notes"]) == ["train", "valid", "test"]
    assert s["n_instruments"] == {"train": 2, "valid": 1, "test": 1}
    assert s["notes_per_family"] == {"brass": 12, "string": 6, "vocal": 6}
    assert s["notes_per_source"] == {"acoustic": 18, "synthetic": 6}
    assert s["notes_per_family_split"]["valid"] == {"brass": 6, "string": 0, "vocal": 0}
    assert s["pitch_range"] == [58, 61] and s["velocities"] == {25: 12, 127: 12}
    assert s["instruments_shared_between_splits"] == 0
    shared = pd.concat([meta, meta.iloc[:1].assign(split="test")], ignore_index=True)
    assert dataset_summary(shared)["instruments_shared_between_splits"] == 1
    table = count_table(meta, "instrument_family_str")
    assert list(table.index) == ["brass", "string", "vocal"] and list(table.columns) == ["train", "valid", "test"]


def test_example_per_family_picks_nearest_loudest():
    meta = _meta()
    ex = example_per_family(meta, pitch=60)
    assert list(ex["instrument_family_str"]) == ["brass", "string", "vocal"]
    assert (ex["pitch"] == 60).all() and (ex["velocity"] == 127).all()
    assert ex.iloc[0]["instrument_str"] == "brass_acoustic_000"
    assert list(example_per_family(meta, pitch=70)["pitch"]) == [61, 61, 61]


def test_feature_stats_per_split_exact():
    meta = _meta()
    rng = np.random.default_rng(0)
    feats = rng.uniform(-1, 1, (len(meta), 1, 4, 5)).astype(np.float16)
    feats[0, 0, 0, :3] = -1.0
    cache = FeatureCache(path=PROJECT_ROOT, features=feats, meta=meta, manifest={})
    stats = feature_stats(cache, chunk=5)  # chunks that cut across splits
    assert list(stats.index) == ["train", "valid", "test", "all"]
    x = feats.astype(np.float64)
    for split in ("train", "valid", "test"):
        sel = x[(meta["split"] == split).to_numpy()]
        row = stats.loc[split]
        assert row["n_notes"] == len(sel)
        assert row["min"] == sel.min() and row["max"] == sel.max()
        assert np.isclose(row["mean"], sel.mean()) and np.isclose(row["std"], sel.std())
    assert np.isclose(stats.loc["all", "std"], x.std()) and stats.loc["all", "n_notes"] == 24
    assert np.isclose(stats.loc["all", "frac_at_floor"], np.mean(x <= -1.0))


@pytest.mark.slow
def test_notebook_01_on_smoke_params(smoke_run):
    out_dir, cache_dir = smoke_run["run_dir"], smoke_run["tmp"] / "cache"
    stats = json.loads((out_dir / "preprocess_stats.json").read_text())
    # params/smoke.yaml: 12 programs x 7 pitches x 2 velocities, split 4/4/4 instruments (one per family)
    assert stats["n_notes"] == {"train": 56, "valid": 56, "test": 56}
    assert stats["n_instruments"] == {"train": 4, "valid": 4, "test": 4}
    assert stats["notes_per_family"] == {"brass": 42, "guitar": 42, "keyboard": 42, "string": 42}
    assert sum(stats["notes_per_source"].values()) == 168
    assert stats["instruments_shared_between_splits"] == 0
    assert set(stats["families_per_split"]["train"]) == {"brass", "guitar", "keyboard", "string"}
    for split in ("train", "valid", "test", "all"):
        fs = stats["feature_stats"][split]
        assert fs["min"] == -1.0 and fs["max"] == 1.0 and -1.0 < fs["mean"] < 0.0 and 0.2 < fs["std"] < 1.0
    assert stats["feature_shape"] == [1, 80, 128]
    assert stats["cache"]["path"] == str(cache_dir / stats["cache"]["key"])
    assert (cache_dir / stats["cache"]["key"] / "features.npy").is_file()
    assert stats["render"]["notes"] == 168 and stats["render"]["instruments"] == 12
    for png in ("01_counts.png", "01_pitch_velocity.png", "01_family_spectrograms.png"):
        assert (out_dir / png).stat().st_size > 10_000, png


def test_feature_stats_carry_a_nan_to_its_split_and_refuse_other_dtypes():
    meta = _meta()
    feats = np.zeros((len(meta), 1, 4, 5), np.float16)
    first_test = int(np.flatnonzero((meta["split"] == "test").to_numpy())[0])
    feats[first_test, 0, 1, 1] = np.nan
    stats = feature_stats(FeatureCache(path=PROJECT_ROOT, features=feats, meta=meta, manifest={}))
    assert np.isnan(stats.loc["test", "mean"]) and np.isnan(stats.loc["test", "min"])
    assert np.isnan(stats.loc["all", "max"])
    assert stats.loc["train", "mean"] == 0.0 and stats.loc["train", "std"] == 0.0
    with pytest.raises(DataError, match="features of dtype float32, expected float16"):
        feature_stats(FeatureCache(path=PROJECT_ROOT, features=feats.astype(np.float32), meta=meta, manifest={}))
