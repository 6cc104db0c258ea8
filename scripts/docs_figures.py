"""Copy the figures the docs show from a finished run, and record which run they came from.

The docs (README.md, docs/method.md, docs/results.md) show five figures of the default run. They are
not drawn by hand: this script copies them from ``<run>/`` (``make reports`` writes
``reports/default/``) into ``docs/figures/`` under the names the docs use, each written to a temporary
file and renamed into place, and writes ``docs/figures/SOURCE.json`` with the run's name, its commit and
date (``run_info`` of ``<run>/metrics.json``) and the files copied.

Usage: ``.venv/bin/python scripts/docs_figures.py [--run reports/default] [--out docs/figures]`` (``make docs-figures``)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from vaelib.config import PROJECT_ROOT, project_relative
from vaelib.io import atomic_path, atomic_write_json

# run file -> docs figure, in the order the docs introduce them
FIGURES: dict[str, str] = {
    "01_family_spectrograms.png": "representation.png",
    "04_latent_maps.png": "latent_map.png",
    "train_curves.png": "train_curves.png",
    "04_interpolations.png": "interpolations.png",
    "03_recon_vs_pca.png": "recon_vs_pca.png",
}
SOURCE_FILE = "SOURCE.json"
METRICS_FILE = "metrics.json"


class MissingRunFile(Exception):
    """A file the docs need is not in the run folder."""


def _run_info(run: Path) -> dict:
    path = run / METRICS_FILE
    where = project_relative(path)
    if not path.is_file():
        raise MissingRunFile(f"{where}: not found; run `make reports` first (a finished run writes it)")
    try:
        info = json.loads(path.read_text()).get("run_info", {})
    except json.JSONDecodeError as exc:
        raise MissingRunFile(f"{where}: not valid JSON ({exc}); run `make reports` again") from exc
    missing = [k for k in ("commit", "date") if k not in info]
    if missing:
        raise MissingRunFile(f"{where}: run_info has no {', '.join(missing)}; run `make reports` again")
    return info


def copy_figures(run: str | Path, out: str | Path) -> dict:
    """Copy :data:`FIGURES` from ``run`` into ``out`` and write ``out/SOURCE.json``; return its content.

    Every source file is checked before anything is written, so a run that lacks one leaves ``out``
    as it was.

    Raises
    ------
    MissingRunFile
        ``run`` has no ``metrics.json`` (with ``run_info``) or lacks one of the figures; the message
        names the file and says to run ``make reports`` first.
    """
    run, out = Path(run), Path(out)
    info = _run_info(run)
    missing = [name for name in FIGURES if not (run / name).is_file()]
    if missing:
        raise MissingRunFile(f"{project_relative(run)}: missing {', '.join(missing)}; run `make reports` first "
                             "(the docs figures are copied from a finished run)")
    out.mkdir(parents=True, exist_ok=True)
    for src, dst in FIGURES.items():
        with atomic_path(out / dst, suffix=".png") as tmp:
            shutil.copyfile(run / src, tmp)
    source = {
        "run": info.get("run", run.name),
        # the params and commit regenerate the run; a folder outside the project would mean nothing to a reader
        "params_file": info.get("params_file"),
        "commit": info["commit"],
        "date": info["date"],
        "files": [{"file": dst, "from": src} for src, dst in FIGURES.items()],
    }
    atomic_write_json(out / SOURCE_FILE, source)
    return source


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=PROJECT_ROOT / "reports" / "default",
                    help="finished run folder (default: reports/default)")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "figures",
                    help="where the docs figures go (default: docs/figures)")
    args = ap.parse_args(argv)
    try:
        source = copy_figures(args.run, args.out)
    except MissingRunFile as exc:
        print(f"docs_figures: {exc}", file=sys.stderr)
        return 1
    print(f"docs_figures: {len(source['files'])} figures of run {source['run']} "
          f"(commit {source['commit']}, {source['date']}) written to {project_relative(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
