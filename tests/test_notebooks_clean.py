"""Committed notebooks hold no outputs or execution counts (nbstripout) and start with a `parameters` cell."""

from __future__ import annotations

import json
import subprocess
import sys

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


@pytest.mark.parametrize("name", committed_notebooks())
def test_notebook_is_in_the_form_the_git_filter_gives(name):
    """`make venv` installs nbstripout as git's clean filter: a committed notebook in another form (cell ids
    not renumbered, say) reads as modified in every fresh clone, and each run then records a dirty commit."""
    text = (PROJECT_ROOT / name).read_text()
    out = subprocess.run([sys.executable, "-m", "nbstripout", "-t"], input=text, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out == text, f"{name} differs from nbstripout's output: run .venv/bin/nbstripout {name}"


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


def logic_in_notebook(nb: dict) -> list[str]:
    """Statements that belong in vaelib, not a notebook: def, class, lambda, loops (comprehensions too),
    branches (conditional expressions too) and asserts (a check with its threshold); and a
    parameters cell that holds anything but literal assignments (papermill does not recompute derived values)."""
    import ast

    found = []
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for i, cell in enumerate(code):
        tree = ast.parse("".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"])
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.For,
                                 ast.While, ast.If, ast.IfExp, ast.ListComp, ast.SetComp, ast.DictComp,
                                 ast.GeneratorExp, ast.Assert)):
                found.append(f"code cell {i}: {type(node).__name__} at line {node.lineno}")
        if i == 0:
            for node in tree.body:
                value = getattr(node, "value", None)
                try:
                    ast.literal_eval(value)
                except (ValueError, TypeError, SyntaxError):
                    found.append(f"parameters cell: line {node.lineno} is not a literal assignment")
    return found


@pytest.mark.parametrize("name", committed_notebooks())
def test_notebook_orchestrates_only(name):
    found = logic_in_notebook(json.loads((PROJECT_ROOT / name).read_text()))
    assert not found, f"{name}: {'; '.join(found)}: move it into vaelib"


def test_logic_checker_catches_def_loops_and_derived_parameters():
    nb = {"cells": [{"cell_type": "code", "source": "a: int = 1\nb = a + 1", "metadata": {}},
                    {"cell_type": "code", "source": "def f():\n    pass\nfor i in range(3):\n    f()", "metadata": {}},
                    {"cell_type": "code", "source": "x = [f(r) for r in y if r > 0.85]\nz = 'a' if x else 'b'",
                     "metadata": {}}]}
    assert logic_in_notebook(nb) == ["parameters cell: line 2 is not a literal assignment",
                                     "code cell 1: FunctionDef at line 1", "code cell 1: For at line 3",
                                     "code cell 2: ListComp at line 1", "code cell 2: IfExp at line 2"]


@pytest.mark.parametrize("name", committed_notebooks())
def test_papermill_reads_every_parameter(name):
    """papermill parses `name: type = default  # help` lines; one it cannot parse is injected without its help,
    with a warning at every run (a quote in the comment is enough)."""
    import nbformat
    from papermill.translators import PythonTranslator

    cell = nbformat.read(PROJECT_ROOT / name, as_version=4).cells[1]
    assert "parameters" in cell.metadata.get("tags", [])
    lines = [line for line in cell.source.splitlines() if line.strip()]
    parsed = PythonTranslator.inspect(cell)
    assert [p.name for p in parsed] == [line.split(":")[0].strip() for line in lines]
    assert all(p.help for p in parsed), f"{name}: a parameter without help"
