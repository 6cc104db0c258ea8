"""The `vaelib` command line: render and preprocess subcommands, config validated before anything runs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from vaelib.cli import main
from vaelib.config import PROJECT_ROOT
from vaelib.data.nsynth import read_examples

SMOKE = str(PROJECT_ROOT / "params" / "smoke.yaml")


def test_render_subcommand(tmp_path, capsys):
    out = tmp_path / "ds"
    rc = main(["render", "--params", SMOKE, "--out", str(out), "--quiet",
               "--set", "render.programs=[73, 19]", "--set", "render.velocities=[100]"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["notes"] == 2 * 7 and printed["instruments"] == 2 and printed["dropped_silent"] == 0
    df = read_examples(out)
    assert set(df["instrument_str"]) == {"flute_acoustic_000", "organ_acoustic_000"}
    assert len(list((out / "audio").glob("*.wav"))) == 14


def test_render_refuses_existing_folder(tmp_path, capsys):
    (tmp_path / "ds").mkdir()
    rc = main(["render", "--params", SMOKE, "--out", str(tmp_path / "ds"), "--quiet"])
    assert rc == 2
    assert "already exists" in capsys.readouterr().err


def test_bad_config_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "ds"
    rc = main(["render", "--params", SMOKE, "--out", str(out), "--quiet", "--set", "render.pitch_stepp=3"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "vaelib render: error:" in err and "pitch_stepp" in err
    assert not out.exists()
    rc = main(["preprocess", "--params", SMOKE, "--quiet", "--set", "features.n_mels=2"])
    assert rc == 2 and "features.n_mels" in capsys.readouterr().err


def test_preprocess_subcommand(smoke_dataset, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    args = ["preprocess", "--params", SMOKE, "--quiet", "--set", f"data.root={smoke_dataset}",
            "--set", f"features.cache_dir={cache_dir}"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["shape"] == [168, 1, 80, 128]
    assert sum(printed["notes"].values()) == 168 and set(printed["notes"]) == {"train", "valid", "test"}
    assert printed["cache"].startswith(str(cache_dir))
    feats = np.load(f"{printed['cache']}/features.npy", mmap_mode="r")
    assert feats.shape == (168, 1, 80, 128)
    assert main(args) == 0  # the rerun reuses it
    assert json.loads(capsys.readouterr().out)["cache"] == printed["cache"]


def test_preprocess_renders_missing_dataset(tmp_path, capsys):
    root, cache_dir = tmp_path / "gm", tmp_path / "cache"
    rc = main(["preprocess", "--params", SMOKE, "--quiet",
               "--set", f"data.root={root}", "--set", f"features.cache_dir={cache_dir}",
               "--set", "render.programs=[0, 24, 40]", "--set", "render.velocities=[127]"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert (root / "examples.json").is_file() and len(read_examples(root)) == 21
    assert printed["shape"] == [21, 1, 80, 128]


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "vaelib", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "render" in proc.stdout and "preprocess" in proc.stdout


def test_check_of_a_missing_reports_folder_is_an_error(tmp_path, capsys):
    assert main(["check", "--root", str(tmp_path / "no_such_reports")]) == 2
    assert "no_such_reports: no reports folder" in capsys.readouterr().err
