"""The README states the two commands, CI runs the one it gives for the tests, and it leads into docs/.

The params reference lives in docs/params.md and is checked by tests/test_docs.py, with the README's
and the docs' links, anchors and images.
"""

from __future__ import annotations

from vaelib.config import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()


def test_readme_gives_both_commands():
    assert "make reports" in README and "make test" in README


def test_ci_runs_the_readme_test_command():
    assert "make test" in (PROJECT_ROOT / ".ci" / "run").read_text()


def test_readme_leads_to_every_docs_page():
    for page in ("docs/method.md", "docs/results.md", "docs/benchmarks.md", "docs/data.md", "docs/params.md",
                 "CHANGELOG.md"):
        assert f"]({page}" in README, f"README.md does not link {page}"
