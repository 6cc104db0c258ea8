"""The browser check of report pages: it must catch what a reader would see broken."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nbformat
import pytest

from vaelib.report.browser_check import check_reports, find_chromium

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not installed (apt-get install -y chromium); browser check skipped")


def _png() -> str:
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _site(root, *, broken: bool) -> None:
    (root / "run").mkdir(parents=True)
    good = f"<img alt='ok' src='data:image/png;base64,{_png()}'>"
    bad = "<img alt='bad' src='data:image/png;base64,iVBORw0KGgoAAAA='><a href='missing.html'>x</a>" if broken else ""
    (root / "index.html").write_text(f"<html><body><a href='run/index.html'>run</a>{good}</body></html>")
    (root / "run" / "index.html").write_text(f"<html><body><a href='../index.html'>up</a>{good}{bad}</body></html>")


def test_links_and_notebook_errors_without_browser(tmp_path):
    _site(tmp_path, broken=True)
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1/0")
    cell.outputs = [nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero",
                                           traceback=[])]
    nb.cells = [cell]
    nbformat.write(nb, tmp_path / "run" / "03_x.ipynb")
    (tmp_path / "run" / "03_x.html").write_text("<html><body>report</body></html>")
    problems, _ = check_reports(tmp_path, use_browser=False)
    assert any("missing.html" in p for p in problems)
    assert any("03_x.html" in p and "ZeroDivisionError" in p for p in problems)
    assert len(problems) == 2


@needs_chromium
def test_browser_finds_undecodable_image(tmp_path):
    _site(tmp_path, broken=True)
    problems, seen = check_reports(tmp_path)
    assert seen["run/index.html"]["images"] == 2
    assert any("image not displayed" in p and "run/index.html" in p for p in problems)


@needs_chromium
def test_browser_passes_good_pages(tmp_path):
    _site(tmp_path, broken=False)
    problems, seen = check_reports(tmp_path)
    assert problems == []
    assert seen["index.html"]["images"] == 1


def test_browser_that_cannot_start_is_one_problem_per_page(tmp_path):
    _site(tmp_path, broken=False)
    problems, _ = check_reports(tmp_path, chromium=str(tmp_path / "no-such-chromium"))
    assert len(problems) == 2 and all("could not start" in p for p in problems)
