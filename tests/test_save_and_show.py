"""save_and_show: a notebook figure drawn once, written atomically, shown at the inline width."""

from __future__ import annotations

import struct

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
from IPython.core.display import Image

import vaelib.report.plots.common as common


def _shown(monkeypatch) -> list:
    shown: list = []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))
    return shown


def test_the_png_is_written_shown_at_the_inline_width_and_the_figure_closed(tmp_path, monkeypatch):
    shown = _shown(monkeypatch)
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.plot([0, 1])
    draws = []
    fig.canvas.mpl_connect("draw_event", lambda event: draws.append(1))
    common.save_and_show(fig, tmp_path / "f.png", dpi=50)
    data = (tmp_path / "f.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (200, 100)  # 4 x 2 inches at 50 dpi
    assert len(shown) == 1 and isinstance(shown[0], Image)
    assert shown[0].data == data and shown[0].width == 4 * plt.rcParams["figure.dpi"]
    assert len(draws) == 1 and not plt.fignum_exists(fig.number)
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]


def test_a_failed_draw_leaves_the_earlier_png(tmp_path, monkeypatch):
    shown = _shown(monkeypatch)
    (tmp_path / "f.png").write_bytes(b"earlier")
    fig, _ = plt.subplots()
    monkeypatch.setattr(fig, "savefig", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError, match="No space left"):
        common.save_and_show(fig, tmp_path / "f.png", dpi=50)
    assert (tmp_path / "f.png").read_bytes() == b"earlier" and not shown
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]
    plt.close(fig)
