"""Committed notebooks hold no outputs or execution counts (nbstripout) and start with a `parameters` cell."""

from __future__ import annotations

import json
import subprocess

import pytest

from vaelib.config import PROJECT_ROOT

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"


def committed_notebooks() -> list[str]:
    """Notebooks under notebooks/ that git tracks (all .ipynb there when git is not available)."""
    try:
        out = subprocess.run(["git", "ls-files", "--", "notebooks/*.ipynb"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, check=True, timeout=30).stdout
        tracked = [line for line in out.splitlines() if line]
    except (OSError, subprocess.SubprocessError):
        tracked = []
    if not tracked:
        tracked = [str(p.relative_to(PROJECT_ROOT)) for p in sorted(NOTEBOOK_DIR.glob("*.ipynb"))]
    return sorted(tracked)


def problems(nb: dict) -> list[str]:
    found = []
    if nb.get("metadata", {}).get("widgets"):
        found.append("notebook metadata holds widget state")
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        if cell.get("outputs"):
            found.append(f"cell {i} has {len(cell['outputs'])} output(s)")
        if cell.get("execution_count") is not None:
            found.append(f"cell {i} has execution_count {cell['execution_count']}")
    if not code:
        found.append("no code cell")
    elif "parameters" not in code[0].get("metadata", {}).get("tags", []):
        found.append("the first code cell is not tagged 'parameters'")
    return found


def test_notebooks_exist():
    assert "notebooks/01_preprocess.ipynb" in committed_notebooks()


@pytest.mark.parametrize("name", committed_notebooks())
def test_notebook_is_clean(name):
    nb = json.loads((PROJECT_ROOT / name).read_text())
    found = problems(nb)
    assert not found, f"{name}: {'; '.join(found)} (run .venv/bin/nbstripout {name})"


def test_checker_catches_outputs_and_missing_tag():
    clean = {"metadata": {}, "cells": [
        {"cell_type": "markdown", "source": "# t", "metadata": {}},
        {"cell_type": "code", "source": "x = 1", "metadata": {"tags": ["parameters"]}, "outputs": [],
         "execution_count": None}]}
    assert problems(clean) == []
    dirty = json.loads(json.dumps(clean))
    dirty["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "1"}]
    dirty["cells"][1]["execution_count"] = 3
    assert problems(dirty) == ["cell 1 has 1 output(s)", "cell 1 has execution_count 3"]
    untagged = json.loads(json.dumps(clean))
    untagged["cells"][1]["metadata"] = {}
    assert problems(untagged) == ["the first code cell is not tagged 'parameters'"]
