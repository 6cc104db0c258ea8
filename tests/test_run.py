"""A run is named once: 01 resolves the params into the run folder, 02-05 read them and refuse another model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from vaelib.analysis.run import RUN_PARAMS, load_trained_run, read_run_config, run_folder, start_run
from vaelib.config import REPORTS_DIR, config_to_dict, load_config
from vaelib.exceptions import CheckpointError, ConfigError
from vaelib.report.pipeline import START_NOTEBOOK, notebook_parameters, notebook_warnings


def test_start_run_writes_the_resolved_params_that_later_notebooks_read(tmp_path, smoke_config):
    from vaelib.config import PROJECT_ROOT

    cfg, folder = start_run(PROJECT_ROOT / "params" / "smoke.yaml", ["train.epochs=2"], run_dir=tmp_path / "r")
    assert folder == tmp_path / "r" and (folder / RUN_PARAMS).is_file()
    assert cfg.train.epochs == 2
    assert config_to_dict(read_run_config(folder)) == config_to_dict(cfg)
    assert run_folder("default") == REPORTS_DIR / "default" and run_folder("x", tmp_path) == tmp_path


def test_missing_params_and_bad_run_names_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"params\.yaml.*01_preprocess"):
        read_run_config(tmp_path)
    with pytest.raises(ConfigError, match="run name"):
        run_folder("../elsewhere")
    with pytest.raises(ConfigError, match="unknown key"):
        start_run(_bad_params(tmp_path), run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # invalid params write nothing


def _bad_params(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  epochz: 3\n")
    return p


def test_pipeline_hands_params_only_to_the_notebook_that_starts_the_run(tmp_path):
    first = notebook_parameters(START_NOTEBOOK, tmp_path, tmp_path / "p.yaml", ["a.b=1"])
    assert first == {"run_dir": str(tmp_path), "params_file": str(tmp_path / "p.yaml"), "overrides": ["a.b=1"]}
    assert notebook_parameters("03_diagnostics", tmp_path, tmp_path / "p.yaml", ["a.b=1"]) == {"run_dir": str(tmp_path)}


def test_only_stderr_lines_that_are_not_progress_bars_are_reported(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="epoch 1/3:  42%|####      | 5/12 [00:01<00:02, "
                               "3.1batch/s]\repoch 1/3: 100%|##########| 12/12 [00:02<00:00, 5.0batch/s]\n"),
        nbformat.v4.new_output("stream", name="stderr", text="/x/y.py:3: UserWarning: empty mel band\n"
                               "  warnings.warn(\n/x/y.py:3: UserWarning: empty mel band\n"),
        nbformat.v4.new_output("stream", name="stdout", text="plain output\n"),
    ]
    nb.cells = [cell]
    path = tmp_path / "executed.ipynb"
    nbformat.write(nb, path)
    assert notebook_warnings(path) == ["/x/y.py:3: UserWarning: empty mel band", "warnings.warn("]


@pytest.mark.slow
def test_analysis_refuses_a_run_whose_params_changed_after_training(smoke_run, tmp_path):
    run = load_trained_run(run_dir=smoke_run["run_dir"])
    assert run.checkpoint.name == "best.pt" and run.cfg.model.latent_dim == 8
    recorded = json.loads((smoke_run["run_dir"] / "train_metrics.json").read_text())["checkpoint"]
    assert str(run.checkpoint) == recorded
    # every later notebook read the params 01 resolved, and was handed nothing else
    for name in ("02_train", "03_diagnostics", "05_listening"):
        nb = nbformat.read(smoke_run["run_dir"] / f"{name}.ipynb", as_version=4)
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and "params_file" not in injected[0].source and "run_dir" in injected[0].source
    copy = tmp_path / "copy"
    shutil.copytree(smoke_run["run_dir"], copy)
    # the run's record names another checkpoint: the analysis says so instead of using this one
    record = json.loads((copy / "train_metrics.json").read_text())
    (copy / "train_metrics.json").write_text(json.dumps({**record, "checkpoint": str(tmp_path / "other" / "best.pt")}))
    with pytest.raises(CheckpointError, match=r"train_metrics\.json was written for checkpoint .*other.*02_train"):
        load_trained_run(run_dir=copy)
    # the same run folder, but another training of it (a retrain that ended at another epoch)
    (copy / "train_metrics.json").write_text(json.dumps({**record, "best_epoch": record["best_epoch"] + 1}))
    with pytest.raises(CheckpointError, match="best epoch"):
        load_trained_run(run_dir=copy)
    # the checkout moved: the recorded path differs but names the same run folder and training
    moved = str(tmp_path / "elsewhere" / "ckpt" / Path(record["checkpoint"]).parent.name / "best.pt")
    (copy / "train_metrics.json").write_text(json.dumps({**record, "checkpoint": moved}))
    assert load_trained_run(run_dir=copy).checkpoint == run.checkpoint
    # the params changed after training (as when 01 is rerun with new overrides): no finished training matches
    cfg = load_config(copy / RUN_PARAMS, ["train.epochs=3"])
    start_run(copy / RUN_PARAMS, ["train.epochs=3"], run_dir=copy)
    assert read_run_config(copy).train.epochs == cfg.train.epochs == 3
    with pytest.raises(CheckpointError, match="execute 02_train"):
        load_trained_run(run_dir=copy)
