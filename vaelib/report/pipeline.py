"""Headless runs: the numbered notebooks executed by papermill into ``reports/<run>/``, HTML, metrics.

A run executes into a staging folder and replaces ``reports/<run>/`` only once every notebook has
succeeded, so a failed run leaves the earlier reports of that name untouched; what it completed is
kept in ``reports/<run>.failed/`` for inspection.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from vaelib.analysis.run import RUN_PARAMS, TRAIN_RECORD
from vaelib.config import PROJECT_ROOT, REPORTS_DIR, Config, config_to_dict, load_config, project_relative, save_config
from vaelib.data.prepare import check_train_sources
from vaelib.data.soundfonts import check_soundfonts
from vaelib.exceptions import VaelibError
from vaelib.io import HOST, OWNER_TAG, UMASK, atomic_write_json, atomic_write_text, owner_gone
from vaelib.report.html import notebook_to_html, run_index_html, runs_index_html

__all__ = ["PipelineError", "NOTEBOOKS_DIR", "START_NOTEBOOK", "METRIC_FILES", "run_pipeline", "collect_metrics",
           "notebook_parameters", "notebook_warnings", "refresh_reports_index", "git_commit"]

log = logging.getLogger(__name__)

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
# The JSON each notebook writes into its run folder; metrics.json merges them in this order.
START_NOTEBOOK = "01_preprocess"  # resolves the params of a run; every other notebook reads them
METRIC_FILES = {
    "01_preprocess": "preprocess_stats.json",
    "02_train": TRAIN_RECORD,
    "03_diagnostics": "diagnostics.json",
    "04_latent_map": "latent_map.json",
    "05_listening": "listening.json",
    "06_explore": "explore.json",
}


class PipelineError(VaelibError):
    """A notebook of a run failed; the message names the notebook and the cell."""


def git_commit() -> str:
    """HEAD's commit, with ``-dirty`` when tracked files have uncommitted changes; ``unknown`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def notebook_parameters(name: str, run_dir: Path, params_file: Path, overrides: list[str]) -> dict:
    """What papermill injects: the run folder for every notebook, and the params for the one that starts
    the run (``START_NOTEBOOK``); the others read the params it resolved (``params.yaml``)."""
    parameters: dict = {"run_dir": str(run_dir)}
    if name == START_NOTEBOOK:
        parameters.update(params_file=str(params_file), overrides=list(overrides))
    return parameters


def _execute(name: str, out_dir: Path, parameters: dict, *, kernel: str) -> None:
    import papermill as pm

    source = NOTEBOOKS_DIR / f"{name}.ipynb"
    target = out_dir / f"{name}.ipynb"
    try:
        # log_output=False: papermill would log every stderr write (each tick of a progress bar) as a
        # warning; the warnings that matter are read back from the executed notebook instead.
        pm.execute_notebook(str(source), str(target), parameters=parameters, kernel_name=kernel,
                            cwd=str(NOTEBOOKS_DIR), log_output=False, progress_bar=False)
    except pm.PapermillExecutionError as exc:
        for line in notebook_warnings(target):  # what the notebook said before it failed explains the failure
            log.warning("%s: %s", name, line)
        # Papermill inserts its injected-parameters cell; count cells as in the source notebook.
        injected = _injected_cell_index(target)
        cell = exc.cell_index - 1 if injected is not None and exc.cell_index > injected else exc.cell_index
        first_line = (exc.source or "").strip().splitlines()[:1]
        raise PipelineError(
            f"notebook {name} failed in cell {cell} ({first_line[0] if first_line else 'empty'!r}): "
            f"{exc.ename}: {exc.evalue}") from exc
    for line in notebook_warnings(target):
        log.warning("%s: %s", name, line)


# A progress bar's frame: "desc:  42%|####      | 5/12 [00:01<00:02, 3.1batch/s]", or its bare counter form.
_PROGRESS = re.compile(r"\d+%\||\|\s*\d+/\d+\s*\[|\d+(\.\d+)?\s*[a-zA-Z]+/s\]|^\s*$")


def notebook_warnings(executed: Path) -> list[str]:
    """The stderr lines of an executed notebook that are not progress-bar frames, each once, in order:
    Python warnings, library log lines, anything a notebook reports on stderr."""
    import nbformat

    try:
        nb = nbformat.read(executed, as_version=4)
    except (OSError, ValueError):
        return []
    seen: dict[str, None] = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") != "stream" or output.get("name") != "stderr":
                continue
            for line in re.split(r"[\r\n]+", output.get("text", "")):
                if not _PROGRESS.search(line):
                    seen.setdefault(line.strip(), None)
    return list(seen)


def _injected_cell_index(executed: Path) -> int | None:
    import nbformat

    try:
        nb = nbformat.read(executed, as_version=4)
    except (OSError, ValueError):
        return None
    # Papermill also puts error-marker cells into the saved notebook; they were not executed.
    cells = [c for c in nb.cells if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
    for i, cell in enumerate(cells):
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            return i
    return None


def collect_metrics(run_dir: Path, notebooks: tuple[str, ...]) -> dict:
    """Merge the JSON every notebook wrote into one mapping (first writer of a key wins;
    ``targets`` are merged across notebooks)."""
    metrics: dict = {}
    targets: dict = {}
    for name in notebooks:
        fname = METRIC_FILES.get(name)
        path = run_dir / fname if fname else None
        if path is None or not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise PipelineError(f"{path}: the JSON notebook {name} wrote is malformed ({exc})") from exc
        targets.update(data.pop("targets", {}) or {})
        for key, value in data.items():
            metrics.setdefault(key, value)
    if targets:
        metrics["targets"] = targets
    return metrics


# A staging or swap folder of another host's run can only be judged by age: a reports folder on a shared disk.
OTHER_HOST_IDLE_S = 24 * 3600


def _work_folder(final: Path, kind: str) -> str:
    """Name prefix of a run's ``kind`` ('staging' or 'old') folder: hidden, with the owner's host and pid."""
    return f".{final.name}.{kind}.{OWNER_TAG}."


def _idle_seconds(folder: Path) -> float:
    newest = max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)
    return time.time() - newest


def remove_abandoned(final: Path) -> list[Path]:
    """Remove the staging and swap folders of ``final`` left by runs whose process is gone (killed, or the
    machine lost): their names carry the host and pid of the run that made them. A folder of this host whose
    process has ended goes, and one with this process's pid too (this run has not made its own yet, and pids
    are reused); one of another host only after ``OTHER_HOST_IDLE_S`` without a write. Returns what was
    removed."""
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(staging|old)\.([A-Za-z0-9-]+)\.(\d+)\.")
    removed = []
    for folder in final.parent.glob(f".{glob.escape(final.name)}.*"):
        match = pattern.match(folder.name + ".")
        if not match or not folder.is_dir():
            continue
        host, pid = match.group(2), int(match.group(3))
        if host == HOST:
            abandoned = pid == os.getpid() or owner_gone(host, pid)
        else:
            abandoned = _idle_seconds(folder) > OTHER_HOST_IDLE_S
        if abandoned:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _swap_into_place(staging: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.with_name(_work_folder(final, "old").rstrip("."))
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_pipeline(params_file: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (), *,
                 reports_root: Path | None = None, keep_code: bool | None = None,
                 kernel: str = "python3") -> Path:
    """Execute the run's notebooks into ``<reports_root>/<run.name>/`` with HTML and metrics.

    Returns
    -------
    The run folder.

    Raises
    ------
    ConfigError
        Before anything runs, when the params are invalid.
    ParameterError, DataError
        Before anything runs, when a SoundFont or transfer folder the params name is missing (the
        message names the Debian package of a known SoundFont), a setting that needs several SoundFonts
        in the train split would have one, or a missing ``data.root`` reads as a typo of a dataset folder.
    PipelineError
        When a notebook fails: names the notebook and the cell; earlier reports stay as they were.
    """
    params_file = Path(params_file).resolve()
    overrides = list(overrides)
    cfg: Config = load_config(params_file, overrides)
    check_soundfonts(cfg)
    check_train_sources(cfg)
    keep_code = cfg.report.keep_code if keep_code is None else keep_code
    missing = [n for n in cfg.report.notebooks if not (NOTEBOOKS_DIR / f"{n}.ipynb").is_file()]
    if missing:
        raise PipelineError(f"report.notebooks: no notebook {missing} in {NOTEBOOKS_DIR}")
    reports_root = Path(reports_root or REPORTS_DIR)
    reports_root.mkdir(parents=True, exist_ok=True)
    final = reports_root / cfg.run.name
    final.parent.mkdir(parents=True, exist_ok=True)
    for folder in remove_abandoned(final):
        log.warning("removed %s, left by a run that was killed", folder)
    staging = Path(tempfile.mkdtemp(prefix=_work_folder(final, "staging"), dir=final.parent))
    staging.chmod(0o777 & ~UMASK)  # mkdtemp makes it private; the run folder it becomes should not be
    started = time.time()
    save_config(cfg, staging / RUN_PARAMS)
    timings: dict[str, float] = {}
    try:
        for i, name in enumerate(cfg.report.notebooks, 1):
            log.info("[%d/%d] %s: executing", i, len(cfg.report.notebooks), name)
            t0 = time.time()
            _execute(name, staging, notebook_parameters(name, staging, params_file, overrides), kernel=kernel)
            notebook_to_html(staging / f"{name}.ipynb", staging / f"{name}.html", keep_code=keep_code)
            timings[name] = round(time.time() - t0, 1)
            log.info("[%d/%d] %s: done in %.1f s", i, len(cfg.report.notebooks), name, timings[name])
    except BaseException as exc:
        failed = final.with_name(f"{final.name}.failed")
        shutil.rmtree(failed, ignore_errors=True)
        os.replace(staging, failed)
        log.error("run %s failed; completed outputs kept in %s; %s untouched", cfg.run.name, failed, final)
        if isinstance(exc, PipelineError):
            raise PipelineError(f"{exc}; executed notebooks kept in {failed}; {final} left as it was") from exc
        raise
    metrics = collect_metrics(staging, cfg.report.notebooks)
    info = {
        "run": cfg.run.name, "params_file": project_relative(params_file), "overrides": overrides,
        "commit": git_commit(), "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "notebook_seconds": timings, "total_seconds": round(time.time() - started, 1),
    }
    metrics = {**metrics, "run_info": info}
    atomic_write_json(staging / "metrics.json", metrics)
    atomic_write_text(staging / "index.html",
                      run_index_html(metrics, config_to_dict(cfg), list(cfg.report.notebooks), info))
    _swap_into_place(staging, final)
    shutil.rmtree(final.with_name(f"{final.name}.failed"), ignore_errors=True)
    refresh_reports_index(REPORTS_DIR if reports_root.is_relative_to(REPORTS_DIR) else reports_root)
    log.info("run %s written to %s in %.0f s", cfg.run.name, final, time.time() - started)
    return final


def refresh_reports_index(reports_root: Path) -> Path:
    """Rewrite ``<reports_root>/index.html`` listing every run folder that holds a metrics.json."""
    runs = []
    for metrics_path in sorted(reports_root.glob("**/metrics.json")):
        run_dir = metrics_path.parent
        if any(part.startswith(".") or part.endswith(".failed") for part in run_dir.relative_to(reports_root).parts):
            continue
        try:
            metrics = json.loads(metrics_path.read_text())
        except json.JSONDecodeError:
            log.warning("%s: unreadable metrics, left out of the index", metrics_path)
            continue
        runs.append((run_dir.relative_to(reports_root).as_posix(), metrics))
    out = reports_root / "index.html"
    atomic_write_text(out, runs_index_html(runs))
    return out

