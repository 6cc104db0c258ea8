"""The README states the two commands and carries the params reference as the code defines it."""

from __future__ import annotations

from vaelib.config import PROJECT_ROOT, params_reference

README = (PROJECT_ROOT / "README.md").read_text()


def test_readme_gives_both_commands():
    assert "make reports" in README and "make test" in README


def test_params_reference_is_current():
    # Regenerate with `vaelib params --reference` when a parameter changes.
    assert params_reference() in README


def test_ci_runs_the_readme_test_command():
    assert "make test" in (PROJECT_ROOT / ".ci" / "run").read_text()
