"""The run machinery on stand-in notebooks: staging, failure path, metrics merge, index pages."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nbformat
import pytest

from vaelib.exceptions import ConfigError
from vaelib.report import pipeline
from vaelib.report.browser_check import check_reports
from vaelib.report.html import notebook_to_html
from vaelib.report.pipeline import PipelineError, collect_metrics, run_pipeline

SMOKE = Path(__file__).resolve().parents[1] / "params" / "smoke.yaml"


def _notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('params_file = ""\noverrides = []\nrun_dir = "."')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# stand-in"), params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


WRITES_STATS = """import json, pathlib
pathlib.Path(run_dir, 'preprocess_stats.json').write_text(json.dumps(
    {'n_notes': {'train': 10}, 'targets': {'a': {'value': 1, 'threshold': 0, 'pass': True}}}))
print('ok')"""
WRITES_TRAIN = """import json, pathlib
pathlib.Path(run_dir, 'train_metrics.json').write_text(json.dumps(
    {'latent_dim': 8, 'n_notes': {'train': 99}, 'targets': {'b': {'value': 2, 'threshold': 3, 'pass': False}}}))"""


@pytest.fixture()
def standins(tmp_path, monkeypatch):
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    _notebook(nb_dir / "01_preprocess.ipynb", WRITES_STATS)
    _notebook(nb_dir / "02_train.ipynb", WRITES_TRAIN)
    monkeypatch.setattr(pipeline, "NOTEBOOKS_DIR", nb_dir)
    return nb_dir


OVR = ["report.notebooks=[01_preprocess, 02_train]", "run.name=standin"]


def test_run_writes_reports_metrics_and_indexes(standins, tmp_path):
    run_dir = run_pipeline(SMOKE, OVR, reports_root=tmp_path / "reports")
    assert run_dir == tmp_path / "reports" / "standin"
    for name in ("01_preprocess", "02_train"):
        assert (run_dir / f"{name}.ipynb").is_file() and (run_dir / f"{name}.html").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # The first notebook that writes a key wins; targets of every notebook are merged.
    assert metrics["n_notes"] == {"train": 10} and metrics["latent_dim"] == 8
    assert set(metrics["targets"]) == {"a", "b"}
    assert metrics["run_info"]["overrides"] == OVR and len(metrics["run_info"]["commit"]) >= 7
    index = (run_dir / "index.html").read_text()
    assert "01_preprocess.html" in index and "missed" in index and "met" in index
    assert "standin/index.html" in (tmp_path / "reports" / "index.html").read_text()
    # The HTML hides code by default and keeps it on request.
    assert 'class="highlight' not in (run_dir / "01_preprocess.html").read_text()
    notebook_to_html(run_dir / "01_preprocess.ipynb", tmp_path / "with_code.html", keep_code=True)
    assert 'class="highlight' in (tmp_path / "with_code.html").read_text()
    problems, _ = check_reports(tmp_path / "reports", use_browser=False)
    assert problems == []


def test_failing_notebook_keeps_earlier_reports(standins, tmp_path):
    reports = tmp_path / "reports"
    run_dir = run_pipeline(SMOKE, OVR, reports_root=reports)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    _notebook(standins / "02_train.ipynb", "x = 1\nraise ValueError('made to fail')")
    with pytest.raises(PipelineError) as info:
        run_pipeline(SMOKE, OVR, reports_root=reports)
    message = str(info.value)
    assert "02_train" in message and "cell 2" in message and "made to fail" in message
    after = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert after == before
    failed = reports / "standin.failed"
    assert (failed / "01_preprocess.html").is_file() and (failed / "02_train.ipynb").is_file()
    assert not [p for p in reports.iterdir() if p.name.startswith(".")]
    problems, _ = check_reports(reports, use_browser=False)
    assert problems == []  # the failed run is not a report page


def test_cli_run_failure_exit_code(standins, tmp_path, monkeypatch, capsys):
    from vaelib import cli, config

    monkeypatch.setattr(config, "REPORTS_DIR", tmp_path / "reports")
    monkeypatch.setattr(pipeline, "REPORTS_DIR", tmp_path / "reports")
    _notebook(standins / "02_train.ipynb", "raise KeyError('nope')")
    code = cli.main(["run", "--params", str(SMOKE), *sum((["--set", o] for o in OVR), [])])
    assert code == 2
    err = capsys.readouterr().err
    assert "02_train" in err and "KeyError" in err


def test_invalid_params_refused_before_anything_runs(standins, tmp_path):
    with pytest.raises(ConfigError, match="train.epochs"):
        run_pipeline(SMOKE, [*OVR, "train.epochs=-1"], reports_root=tmp_path / "reports")
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())


def test_collect_metrics_skips_missing_files(tmp_path):
    (tmp_path / "train_metrics.json").write_text(json.dumps({"latent_dim": 4}))
    assert collect_metrics(tmp_path, ("01_preprocess", "02_train")) == {"latent_dim": 4}


def test_folders_of_a_killed_run_are_removed_by_the_next(standins, tmp_path):
    import subprocess
    import sys

    root = tmp_path / "reports"
    root.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)  # a pid whose process has exited
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a run still going
    try:
        # this process's own pid is a leftover too: the run has not made its folders yet (pids are reused)
        from vaelib.io import HOST

        left = [root / f".standin.staging.{HOST}.{dead}.abc", root / f".standin.old.{HOST}.{dead}.",
                root / f".standin.old.{HOST}.{os.getpid()}."]
        left = [p.with_name(p.name.rstrip(".")) for p in left]
        alive = root / f".standin.staging.{HOST}.{live.pid}.xyz"
        # another host's folder is judged by age only: a fresh one stays, one idle for over a day goes
        remote = root / f".standin.staging.otherhost.{dead}.abc"
        remote_old = root / f".standin.staging.otherhost.{dead}.old"
        others = [root / f".otherrun.staging.{HOST}.{dead}.abc", root / f".standin2.staging.{HOST}.{dead}.abc", remote]
        for folder in (*left, alive, *others, remote_old):
            folder.mkdir()
            (folder / "01_preprocess.ipynb").write_text("{}")
        day_ago = time.time() - pipeline.OTHER_HOST_IDLE_S - 60
        for path in (remote_old / "01_preprocess.ipynb", remote_old):
            os.utime(path, (day_ago, day_ago))
        run_dir = run_pipeline(SMOKE, OVR, reports_root=root)
        assert run_dir.is_dir() and not any(f.exists() for f in left) and not remote_old.exists()
        assert alive.is_dir() and all(f.is_dir() for f in others)
        assert sorted(p.name for p in root.glob(".standin.*")) == sorted([alive.name, remote.name])
        run_pipeline(SMOKE, OVR, reports_root=root)  # the swap of a second run leaves no .old folder
        assert sorted(p.name for p in root.glob(".standin.*")) == sorted([alive.name, remote.name])
    finally:
        live.kill()
        live.wait()
