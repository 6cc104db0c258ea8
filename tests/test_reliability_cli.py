"""Faults a hostile but fair user provokes through the `vaelib` command line, and what each must give:
a clear error naming the key, file or path and what was expected, exit status 2 and nothing written
half, or a logged repair; never a traceback for a problem of the input or the environment.

Covered: non-finite params; `vaelib train` over a finished run (kept; --retrain replaces it only once
finished, so an interrupted retrain leaves it, and one stopped in its last epoch replaces it); an
unfinished run without --resume; two processes training one run; an unreadable last.pt; `vaelib embed
--checkpoint` of another model; output paths that cannot be written (a file where a folder is needed,
a read-only folder; the feature cache folder before a render); the help texts.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
from _training import interrupt_at

from vaelib.cli import main
from vaelib.config import PROJECT_ROOT, load_config
from vaelib.data.prepare import prepare_features
from vaelib.model.checkpoint import checkpoint_dir, find_checkpoint, load_checkpoint

SMOKE = str(PROJECT_ROOT / "params" / "smoke.yaml")
VAELIB = str(Path(sys.executable).with_name("vaelib"))
# 56 train notes in batches of 16: 4 steps an epoch; 2 epochs
TINY = ("train.epochs=2", "train.batch_size=16", "train.patience=10", "train.warmup_steps=6", "train.num_threads=1")


@pytest.fixture(scope="module")
def work(tmp_path_factory, smoke_dataset) -> dict:
    """A folder with the smoke dataset's feature cache built once for every test of the module."""
    root = tmp_path_factory.mktemp("reliability")
    sets = [f"data.root={smoke_dataset}", f"features.cache_dir={root / 'cache'}"]
    prepare_features(load_config(SMOKE, sets), show_progress=False)
    return {"root": root, "sets": sets}


def _sets(work: dict, ckpt: str, *extra: str) -> list[str]:
    return [*work["sets"], f"train.checkpoint_dir={work['root'] / ckpt}", *TINY, *extra]


def _argv(command: str, sets: list[str], *flags: str) -> list[str]:
    return [command, "--params", SMOKE, "--quiet", *flags, *sum((["--set", s] for s in sets), [])]


def _run_files(sets: list[str]) -> tuple[object, object, Path]:
    cfg = load_config(SMOKE, sets)
    cache = prepare_features(cfg, show_progress=False)
    return cfg, cache, checkpoint_dir(cfg, cache.manifest["key"])


def _history(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "history.csv").drop(columns=["seconds"])


def _clean_error(err: str, command: str) -> None:
    assert f"vaelib {command}: error:" in err and "Traceback" not in err, err


# ----------------------------------------------------------------------------- params

@pytest.mark.parametrize(("override", "key"), [("train.lr=.nan", "train.lr"), ("train.beta=.nan", "train.beta"),
                                               ("train.grad_clip=.inf", "train.grad_clip"),
                                               ("features.fmin=-.inf", "features.fmin")])
def test_non_finite_params_are_refused_naming_the_key(override, key, capsys):
    assert main(["params", "--params", SMOKE, "--set", override]) == 2
    err = capsys.readouterr().err
    _clean_error(err, "params")
    assert f"{key}: expected a finite number" in err
    assert "train.lr" not in err or key == "train.lr"  # beta=NaN is not a learning-rate problem
    assert main(["train", "--params", SMOKE, "--quiet", "--set", override]) == 2
    assert f"{key}: expected a finite number" in capsys.readouterr().err


# ----------------------------------------------------------------------------- existing runs

def test_finished_run_is_kept_and_an_interrupted_retrain_leaves_it(work, capsys, caplog, monkeypatch):
    sets = _sets(work, "ckpt_retrain")
    argv = _argv("train", sets)
    assert main(argv) == 0
    cfg, cache, run_dir = _run_files(sets)
    finished = {name: (run_dir / name).read_bytes() for name in ("best.pt", "last.pt", "history.csv")}
    first = _history(run_dir)
    capsys.readouterr()

    # a plain `vaelib train` over the finished run returns it as it is
    caplog.set_level(logging.INFO, logger="vaelib")
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["epochs_run"] == 2
    assert "finished run: returned as it is" in caplog.text
    assert {name: (run_dir / name).read_bytes() for name in finished} == finished

    # a retrain interrupted in its second epoch leaves the finished run whole
    interrupt_at(monkeypatch, 5)
    assert main([*argv, "--retrain"]) == 130
    monkeypatch.undo()
    assert {name: (run_dir / name).read_bytes() for name in finished} == finished
    assert find_checkpoint(cfg, cache) == run_dir / "best.pt"
    staging = run_dir.with_name(run_dir.name + ".retrain")
    assert load_checkpoint(staging / "last.pt")["step"] == 6 and not load_checkpoint(staging / "last.pt")["finished"]
    out = work["root"] / "emb.parquet"
    assert main(_argv("embed", sets, "--out", str(out))) == 0  # embed still finds the finished training
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(run_dir / "best.pt")

    # --retrain --resume continues the retrain, which replaces the run once finished, with the same numbers
    assert main([*argv, "--retrain", "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint_dir"] == str(run_dir)
    assert not staging.exists() and not run_dir.with_name(run_dir.name + ".replaced").exists()
    assert load_checkpoint(run_dir / "last.pt")["finished"] and find_checkpoint(cfg, cache) == run_dir / "best.pt"
    pd.testing.assert_frame_equal(_history(run_dir), first)


def test_a_retrain_stopped_in_its_last_epoch_replaces_the_run(work, capsys, caplog, monkeypatch):
    sets = _sets(work, "ckpt_retrain_last")
    argv = _argv("train", sets)
    assert main(argv) == 0
    _, _, run_dir = _run_files(sets)
    first = _history(run_dir)
    (run_dir / "old-run").touch()
    interrupt_at(monkeypatch, 7)  # the last batch of the last epoch
    assert main([*argv, "--retrain"]) == 130  # the stop is honoured, once the retrain has replaced the run
    monkeypatch.undo()
    staging = run_dir.with_name(run_dir.name + ".retrain")
    assert not staging.exists() and not (run_dir / "old-run").exists()
    assert load_checkpoint(run_dir / "last.pt")["finished"]
    pd.testing.assert_frame_equal(_history(run_dir), first)
    capsys.readouterr()
    caplog.set_level(logging.INFO, logger="vaelib")
    assert main(argv) == 0  # and a plain `vaelib train` keeps it
    assert json.loads(capsys.readouterr().out)["epochs_run"] == 2 and "finished run: returned as it is" in caplog.text


def test_unfinished_run_needs_resume_and_an_unreadable_last_pt_says_how_to_go_on(work, capsys, monkeypatch):
    sets = _sets(work, "ckpt_truncated")
    argv = _argv("train", sets)
    interrupt_at(monkeypatch, 5)
    assert main(argv) == 130
    monkeypatch.undo()
    cfg, cache, run_dir = _run_files(sets)
    last = run_dir / "last.pt"
    saved = last.read_bytes()
    capsys.readouterr()

    # without --resume an unfinished run is neither continued nor started over
    assert main(argv) == 2
    err = capsys.readouterr().err
    _clean_error(err, "train")
    assert f"{run_dir} holds an unfinished training (1 of 2 epochs" in err and "--resume" in err and "--retrain" in err
    assert last.read_bytes() == saved

    # a truncated last.pt: a clear error naming it, with the way forward
    last.write_bytes(saved[: len(saved) // 2])
    for flags in (["--resume"], []):
        assert main([*argv, *flags]) == 2
        err = capsys.readouterr().err
        _clean_error(err, "train")
        assert f"{last}: cannot read checkpoint" in err and "vaelib train --retrain" in err
    assert main([*argv, "--retrain"]) == 0  # which works
    assert find_checkpoint(cfg, cache) == run_dir / "best.pt" and load_checkpoint(last)["finished"]


def _lock_holder(lock: Path) -> str:
    try:
        return lock.read_text().strip()
    except OSError:
        return ""


def test_a_second_process_training_the_same_run_is_refused(work, tmp_path):
    sets = _sets(work, "ckpt_two", "train.epochs=500", "train.patience=500")
    cfg, cache, run_dir = _run_files(sets)
    lock = run_dir.with_name(run_dir.name + ".lock")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log_file:
        first = subprocess.Popen([VAELIB, *_argv("train", sets)], stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180
        # it holds the lock and has finished an epoch (so it is inside the loop, where Ctrl-C saves)
        while not (_lock_holder(lock).endswith(f".{first.pid}") and (run_dir / "last.pt").is_file()):
            assert first.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the first trainer never took the lock"
            time.sleep(0.2)
        second = subprocess.run([VAELIB, *_argv("train", sets)], capture_output=True, text=True, env=env,
                                timeout=300)
        assert second.returncode == 2, second.stderr
        _clean_error(second.stderr, "train")
        assert f"run {run_dir.name} is being trained by process {first.pid}" in second.stderr
        assert first.poll() is None  # the first one went on
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGINT)
        first.wait(timeout=300)
    first_err = log_path.read_text()
    assert first.returncode == 130, first_err
    assert "Traceback" not in first_err
    saved = load_checkpoint(run_dir / "last.pt")  # whole, and the first trainer's
    assert not saved["finished"] and saved["step"] >= 1
    assert not lock.exists()  # released when the first one ended


# ----------------------------------------------------------------------------- embed

def test_embed_with_a_checkpoint_of_another_model_warns_naming_the_keys(work, capsys):
    sets = _sets(work, "ckpt_embed")
    assert main(_argv("train", sets)) == 0
    _, _, run_dir = _run_files(sets)
    best = run_dir / "best.pt"
    out = work["root"] / "other.parquet"
    other = [*sets, "model.latent_dim=4", "features.mel_scale=htk"]
    with pytest.warns(UserWarning, match="differ from the params'") as caught:
        assert main(_argv("embed", other, "--checkpoint", str(best), "--out", str(out))) == 0
    text = " ".join(str(w.message) for w in caught)
    assert "model.latent_dim (checkpoint 8, asked 4)" in text
    assert "features.mel_scale (checkpoint 'slaney', asked 'htk')" in text
    table = pd.read_parquet(out)
    assert [c for c in table.columns if c.startswith("mu_")] == [f"mu_{i}" for i in range(8)]  # the checkpoint's model
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as same:  # the checkpoint of the params themselves: no warning
        warnings.simplefilter("always")
        assert main(_argv("embed", sets, "--checkpoint", str(best), "--out", str(out))) == 0
    assert not [w for w in same if "differ from the params" in str(w.message)]


# ----------------------------------------------------------------------------- filesystem faults

def _file(tmp_path: Path) -> Path:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    return blocker


def test_checkpoint_dir_under_a_file_is_refused_before_any_work(work, tmp_path, capsys):
    blocker = _file(tmp_path)
    cache_dir = tmp_path / "fresh_cache"
    sets = [*work["sets"][:1], f"features.cache_dir={cache_dir}", f"train.checkpoint_dir={blocker}/ckpt", *TINY]
    assert main(_argv("train", sets)) == 2
    err = capsys.readouterr().err
    _clean_error(err, "train")
    assert f"train.checkpoint_dir: {blocker}: a file stands where a folder is needed" in err
    assert not cache_dir.exists()  # no feature cache built for nothing
    assert blocker.read_text() == "not a folder"


def test_a_cache_dir_under_a_file_is_refused_before_a_render(tmp_path, capsys, monkeypatch):
    import vaelib.data.prepare as prepare

    monkeypatch.setattr(prepare, "render_dataset", lambda *a, **k: pytest.fail("rendered before the cache check"))
    blocker = _file(tmp_path)
    sets = [f"data.root={tmp_path / 'new_ds'}", f"features.cache_dir={blocker}/cache"]
    for command in ("preprocess", "train"):
        assert main(_argv(command, [*sets, f"train.checkpoint_dir={tmp_path / 'ckpt'}"])) == 2
        err = capsys.readouterr().err
        _clean_error(err, command)
        assert f"cannot write the feature cache in {blocker / 'cache'}: {blocker}: a file stands where a folder " \
               "is needed" in err, err
    assert not (tmp_path / "new_ds").exists()


def test_embed_out_is_checked_before_the_work(work, tmp_path, capsys, monkeypatch):
    import vaelib.analysis.latent as latent
    import vaelib.data.prepare as prepare

    def never(*args, **kwargs):
        raise AssertionError("the work ran before --out was checked")

    monkeypatch.setattr(prepare, "prepare_features", never)
    monkeypatch.setattr(latent, "embed", never)
    blocker = _file(tmp_path)
    sets = _sets(work, "ckpt_unused")
    for out, expected in ((blocker / "emb.parquet", f"{blocker}: a file stands where a folder is needed"),
                          (tmp_path, "is a folder; expected the path of a Parquet file")):
        assert main(_argv("embed", sets, "--out", str(out))) == 2
        err = capsys.readouterr().err
        _clean_error(err, "embed")
        assert f"--out {out}" in err and expected in err


def test_render_out_under_a_file_is_refused(tmp_path, capsys):
    blocker = _file(tmp_path)
    assert main(["render", "--params", SMOKE, "--quiet", "--out", str(blocker / "ds")]) == 2
    err = capsys.readouterr().err
    _clean_error(err, "render")
    assert f"{blocker}: a file stands where a folder is needed" in err


def test_read_only_output_folders_are_refused(work, read_only_dir, capsys):
    ro = read_only_dir
    cases = [("train", _argv("train", [*work["sets"], f"train.checkpoint_dir={ro}", *TINY])),
             ("embed", _argv("embed", _sets(work, "ckpt_unused"), "--out", str(ro / "emb.parquet"))),
             ("render", ["render", "--params", SMOKE, "--quiet", "--out", str(ro / "ds")])]
    for command, argv in cases:
        assert main(argv) == 2, command
        err = capsys.readouterr().err
        _clean_error(err, command)
        assert f"{ro}: Permission denied" in err, err
    assert list(ro.iterdir()) == []


def test_an_os_error_reaching_main_is_one_line_with_its_path(work, tmp_path, capsys, monkeypatch):
    import vaelib.data.prepare as prepare

    def full_disk(cfg, *, show_progress):
        raise OSError(28, "No space left on device", str(tmp_path / "cache" / "features.npy"))

    monkeypatch.setattr(prepare, "prepare_features", full_disk)
    assert main(["preprocess", "--params", SMOKE, "--quiet"]) == 2
    err = capsys.readouterr().err
    _clean_error(err, "preprocess")
    assert f"{tmp_path / 'cache' / 'features.npy'}: No space left on device" in err
    # and a real one from below the CLI: a cache folder under a file (however vaelib.data words it)
    monkeypatch.undo()
    blocker = _file(tmp_path)
    assert main(_argv("preprocess", [*work["sets"][:1], f"features.cache_dir={blocker}/cache"])) == 2
    err = capsys.readouterr().err
    _clean_error(err, "preprocess")
    assert str(blocker) in err


# ----------------------------------------------------------------------------- help

def test_help_states_the_policies(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("a finished run it is kept", "--retrain trains it again", "replaces the run only once",
                   "--resume continues it", "it is refused (exit 2)", "One process trains a run at a time",
                   "unreadable last.pt (truncated, damaged) it cannot be resumed"):
        assert phrase in text, phrase
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "with a warning naming every differing key" in text and "checked before any work" in text


# --- checkpoint files a hostile user hands over, and a full disk while saving one ----------------------

def test_a_checkpoint_without_its_config_is_refused_at_load(tmp_path):
    import torch

    from vaelib.exceptions import CheckpointError
    torch.save({"format": 1, "model": {}}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"c\.pt: .*missing 'config'"):
        load_checkpoint(tmp_path / "c.pt")


class _Code:
    def __reduce__(self):
        return (os.getcwd, ())


def test_a_checkpoint_holding_code_is_one_line_without_torchs_advice(tmp_path):
    import torch

    from vaelib.exceptions import CheckpointError
    torch.save({"x": _Code()}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "c.pt")
    msg = str(info.value)
    assert "\n" not in msg and "weights_only=False" not in msg and "never run" in msg and "UnpicklingError" in msg


def test_a_full_disk_while_saving_a_checkpoint_is_a_checkpoint_error(tmp_path, monkeypatch):
    import torch

    import vaelib.model.checkpoint as ckpt_mod
    from vaelib.exceptions import CheckpointError

    def full(obj, f):
        Path(f).write_bytes(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match=r"last\.pt: could not write the checkpoint .*is the disk full\?"):
        ckpt_mod.save_checkpoint({"format": 1}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []
