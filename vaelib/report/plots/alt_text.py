"""Alternative text of a figure, for a reader of the HTML report who cannot see it (a screen reader, an image
that does not load): what the figure's own words say, its title and each panel's title, axes and legend.

Written from the figure, not by hand, so it cannot drift from what is drawn; nbconvert puts it in the
``alt`` attribute of the figure's ``<img>``.
"""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["figure_alt_text", "ALT_TEXT_LIMIT"]

ALT_TEXT_LIMIT = 600  # characters: past a few sentences a screen reader's user skips on anyway


def _panel(ax: Axes) -> str:
    title = " ".join(t for t in (ax.get_title("left"), ax.get_title(), ax.get_title("right")) if t)
    parts = [f"x: {ax.get_xlabel()}"] if ax.get_xlabel() else []
    if ax.get_ylabel():
        parts.append(f"y: {ax.get_ylabel()}")
    legend = ax.get_legend()
    if legend is not None:
        labels = [t.get_text() for t in legend.get_texts() if t.get_text()]
        if labels:
            parts.append("legend: " + ", ".join(labels))
    if not parts:
        return title
    return f"{title} ({'; '.join(parts)})" if title else "; ".join(parts)


def figure_alt_text(fig: Figure, *, limit: int = ALT_TEXT_LIMIT) -> str:
    """One line: the figure's title, then its panels (repeated ones counted once), cut at ``limit``."""
    suptitle = fig.get_suptitle()
    panels: dict[str, int] = {}
    for ax in fig.axes:
        text = _panel(ax) if ax.get_visible() and ax.axison else ""
        if text:
            panels[text] = panels.get(text, 0) + 1
    described = [text if n == 1 else f"{text} (x{n})" for text, n in panels.items()]
    head = suptitle or (described.pop(0) if len(described) == 1 else "Figure")
    alt = head if not described else f"{head}. {len(described)} panel{'s' * (len(described) > 1)}: " \
        + "; ".join(described)
    return alt if len(alt) <= limit else alt[:limit - 1].rstrip() + "…"
