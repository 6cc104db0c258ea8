"""A figure's alternative text says what its own words say, and an image output keeps it in the HTML report."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nbformat
from _html import images

from vaelib.report.browser_check import NO_ALT_PLACEHOLDER, page_problems
from vaelib.report.html import notebook_to_html
from vaelib.report.plots.alt_text import figure_alt_text


def test_title_panels_labels_and_legends_in_order_repeats_counted():
    fig, axes = plt.subplots(2, 2)
    fig.suptitle("one note per family")
    for ax in axes.flat[:3]:
        ax.set_title("log-mel")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("mel band")
    axes[1, 1].plot([0, 1], label="mu")
    axes[1, 1].plot([1, 0], label="PCA")
    axes[1, 1].legend()
    axes[1, 1].set_title("probe accuracy")
    assert figure_alt_text(fig) == ("one note per family. 2 panels: log-mel (x: time (s); y: mel band) (x3); "
                                    "probe accuracy (legend: mu, PCA)")
    plt.close(fig)


def test_a_lone_panel_is_the_head_and_hidden_axes_say_nothing():
    fig, (ax, off) = plt.subplots(1, 2)
    ax.set_title("KL per dimension")
    ax.set_ylabel("KL (nats)")
    off.set_title("not drawn")
    off.set_axis_off()
    assert figure_alt_text(fig) == "KL per dimension (y: KL (nats))"
    plt.close(fig)
    fig = plt.figure()
    assert figure_alt_text(fig) == "Figure"
    plt.close(fig)


def test_long_text_is_cut_with_an_ellipsis():
    fig, ax = plt.subplots()
    ax.set_title("t" * 1000)
    alt = figure_alt_text(fig, limit=50)
    assert len(alt) == 50 and alt.endswith("…")
    plt.close(fig)


def _png() -> str:
    fig, ax = plt.subplots(figsize=(1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def test_the_report_page_keeps_the_alt_text_escaped_and_the_check_counts_images_without(tmp_path):
    nb = nbformat.v4.new_notebook()
    with_alt = nbformat.v4.new_code_cell("show(fig)")
    with_alt.outputs = [nbformat.v4.new_output("display_data", data={"image/png": _png(), "text/plain": "<Figure>"},
                                               metadata={"image/png": {"alt": "pitch <b>by</b> \"octave\"",
                                                                       "width": 300}})]
    without = nbformat.v4.new_code_cell("plt.show()")
    without.outputs = [nbformat.v4.new_output("display_data", data={"image/png": _png(), "text/plain": "<Figure>"})]
    nb.cells = [with_alt]
    nbformat.write(nb, tmp_path / "a.ipynb")
    notebook_to_html(tmp_path / "a.ipynb", tmp_path / "a.html")
    found = images((tmp_path / "a.html").read_text())
    assert found == [{"src": found[0]["src"], "alt": 'pitch <b>by</b> "octave"', "width": "300"}]
    assert found[0]["src"].startswith("data:image/png;base64,iVBOR")
    assert page_problems(tmp_path / "a.html", chromium=None)[0] == []
    nb.cells = [with_alt, without]
    nbformat.write(nb, tmp_path / "b.ipynb")
    notebook_to_html(tmp_path / "b.ipynb", tmp_path / "b.html")
    assert [i["alt"] for i in images((tmp_path / "b.html").read_text())] == ['pitch <b>by</b> "octave"',
                                                                            NO_ALT_PLACEHOLDER]
    assert page_problems(tmp_path / "b.html", chromium=None)[0] == [
        f"{tmp_path / 'b.html'}: 1 image(s) without alternative text (a screen reader says nothing of them)"]
