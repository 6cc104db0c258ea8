"""The listening map: one standalone HTML page of a run's latent space that plays its notes.

Drawn with Bokeh, its library inline, so the page works offline and needs no server or kernel. The
reader picks the map (PCA or UMAP of mu, or of the timbre dimensions) and the colouring (family,
source, pitch, split) with Bokeh ``Select`` widgets, hovers a point for its note and clicks it to hear
the recording and then the reconstruction; a click on a step of an interpolation path plays that
step. A page of sounds from outside the run (``vaelib encode``) adds them as labelled stars: a click
plays the file as it was encoded, then its reconstruction. The widgets' and the clicks' effects are
``CustomJS`` callbacks, the page's only hand-written JavaScript; the sound is in the page as MP3 data
URIs (``vaelib.analysis.listening``).
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaelib.analysis.listening import PLACED_COLUMNS, ListeningMap
from vaelib.exceptions import ParameterError
from vaelib.io import atomic_write_text

__all__ = ["COLOUR_BY", "PLAYER_IDS", "RUN_LINKS", "MapPage", "map_layout", "map_page_html", "write_map_page"]

COLOUR_BY = ("family", "source", "pitch", "split")
# The page's <audio> elements and the line saying what plays: outside Bokeh's shadow DOM, so the
# callbacks (and a test driving a browser) find them by id.
PLAYER_IDS = {"recording": "vaelib-recording", "decoded": "vaelib-decoded", "now": "vaelib-now"}
CONTEXT_COLOUR = "#c8c8c8"
PATH_COLOUR = "#222222"
PLACED_COLOUR = "black"  # the stars of placed sounds, as on vaelib encode's PNG map
# Where 05's page sits: in the run folder, beside the run's index and 05's report.
RUN_LINKS = (("index.html", "The run"), ("05_listening.html", "05_listening"))
PLOT_SIZE = (820, 640)  # px

# Columns of the notes' table shown on hover and read by the click callback, from the metadata's names.
_NOTE_COLUMNS = {"instrument": "instrument_str", "family": "instrument_family_str", "source": "instrument_source_str",
                 "pitch": "pitch", "velocity": "velocity", "split": "split", "note": "note_str"}

_SWAP_MAP = """
const k = cb_obj.value;
for (const s of points) {
  s.data = {...s.data, x: s.data['x_' + k], y: s.data['y_' + k]};
}
lines.data = {...lines.data, xs: lines.data['xs_' + k], ys: lines.data['ys_' + k]};
plot.title.text = labels[k];
xaxis.axis_label = axes[k][0];
yaxis.axis_label = axes[k][1];
"""

_SWAP_COLOUR = """
const c = cb_obj.value;
notes.data = {...notes.data, color: notes.data['c_' + c]};
legend.text = legends[c];
"""

_PLAY_NOTE = """
const i = notes.selected.indices[0];
if (i === undefined) { return; }
const d = notes.data;
const rec = document.getElementById(ids.recording), dec = document.getElementById(ids.decoded);
rec.onended = null;
rec.src = d.original[i];
dec.src = d.reconstruction[i];
document.getElementById(ids.now).textContent =
  `${d.instrument[i]} (${d.family[i]}, ${d.source[i]}), pitch ${d.pitch[i]}, velocity ${d.velocity[i]}, ` +
  `${d.split[i]}: the recording, then the reconstruction`;
rec.onended = () => { dec.play().catch(() => {}); };
rec.play().catch(() => {});
"""

_PLAY_STEP = """
const i = steps.selected.indices[0];
if (i === undefined) { return; }
const d = steps.data;
const rec = document.getElementById(ids.recording), dec = document.getElementById(ids.decoded);
rec.onended = null;
rec.pause();
rec.removeAttribute('src');
dec.src = d.decoded[i];
document.getElementById(ids.now).textContent =
  `${d.instrument_a[i]} → ${d.instrument_b[i]}, pitch ${d.pitch[i]}: step ${d.step[i]} of the linear path ` +
  `(t = ${d.t[i].toFixed(2)}), decoded`;
dec.play().catch(() => {});
"""

_PLAY_PLACED = """
const i = placed.selected.indices[0];
if (i === undefined) { return; }
const d = placed.data;
const rec = document.getElementById(ids.recording), dec = document.getElementById(ids.decoded);
const now = document.getElementById(ids.now);
rec.onended = null;
const about = `${d.file[i]} (${d.source_rate[i]} Hz, ${d.source_channels[i]} channel(s), ` +
  `${d.source_seconds[i].toFixed(2)} s; nearest run note ${d.nearest[i]})`;
if (!d.original[i]) {
  for (const a of [rec, dec]) { a.pause(); a.removeAttribute('src'); }
  now.textContent = `${about}: no sound in this page (its size budget was reached)`;
  return;
}
rec.src = d.original[i];
dec.src = d.reconstruction[i];
now.textContent = `${about}: the file as encoded, then its reconstruction`;
rec.onended = () => { dec.play().catch(() => {}); };
rec.play().catch(() => {});
"""

_TEMPLATE = """
{% block postamble %}
<style>
  body { font-family: system-ui, sans-serif; color: #222; margin: 1em 2em; height: auto; }
  header p { max-width: 60em; }
  .players { display: flex; gap: 2em; align-items: center; margin: 0.5em 0 1em; flex-wrap: wrap; }
  .players label { display: flex; gap: 0.5em; align-items: center; }
  #vaelib-now { font-weight: 600; min-height: 1.4em; }
</style>
{% endblock %}
{% block contents %}
<header>
  <h1>{{ heading | e }}</h1>
  <p>{{ summary | e }}</p>
  <p>{% for line in guide %}{{ line | e }} {% endfor %}
  {%- for href, text in links %}{% if not loop.first %} · {% endif %}<a href="{{ href | e }}">{{ text | e }}</a>
  {%- endfor %}</p>
</header>
<div class="players">
  <label>recording <audio id="{{ ids.recording }}" controls></audio></label>
  <label>decoded <audio id="{{ ids.decoded }}" controls></audio></label>
</div>
<p id="{{ ids.now }}"></p>
{{ super() }}
{% endblock %}
"""


@dataclass
class MapPage:
    """A written listening map page."""

    path: Path
    bytes: int
    budget_bytes: int

    @property
    def text(self) -> str:
        """A markdown link to the page with its size."""
        return (f"[The listening map]({self.path.name}) ({self.bytes / 1e6:.1f} MB, budget "
                f"{self.budget_bytes / 1e6:.0f} MB): open it beside this report.")


def _categorical(values: np.ndarray, *, also: np.ndarray | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """A colour per value (Category10, or Category20 past 10 classes) and the legend's (name, colour) rows,
    over the classes of ``values`` and of ``also`` (points coloured alike elsewhere on the plot)."""
    from bokeh.palettes import Category10, Category20

    names = sorted({str(v) for v in values} | ({str(v) for v in also} if also is not None else set()))
    n = max(3, len(names))
    palette = Category10[n] if n <= 10 else Category20[20] * (n // 20 + 1)
    colour = {name: palette[i] for i, name in enumerate(names)}
    return [colour[str(v)] for v in values], list(colour.items())


def _pitch_colours(pitch: np.ndarray) -> tuple[list[str], str]:
    from bokeh.palettes import Viridis256

    lo, hi = (int(pitch.min()), int(pitch.max())) if len(pitch) else (0, 1)
    scaled = np.zeros(len(pitch), int) if hi == lo else np.round((pitch - lo) / (hi - lo) * 255).astype(int)
    gradient = ", ".join(Viridis256[i] for i in range(0, 256, 32))
    legend = (f"<b>pitch</b><div style='width:160px;height:14px;background:linear-gradient(to right, {gradient})'>"
              f"</div><div style='display:flex;justify-content:space-between;width:160px'><span>{lo}</span>"
              f"<span>{hi}</span></div>")
    return [Viridis256[i] for i in scaled], legend


def _legend_rows(rows: list[tuple[str, str]]) -> str:
    return "".join(f"<div><span style='display:inline-block;width:12px;height:12px;background:{c};"
                   f"margin-right:6px'></span>{html.escape(name)}</div>" for name, c in rows)


def _legend_html(title: str, rows: list[tuple[str, str]]) -> str:
    return f"<b>{html.escape(title)}</b>{_legend_rows(rows)}"


def _colours(lmap: ListeningMap) -> tuple[dict[str, list[str]], dict[str, str], list[tuple[str, str]]]:
    """Per colouring, a colour per note with sound and the legend (HTML, names escaped); and the family
    (name, colour) rows, which colour the context when ``lmap.context_family`` is given."""
    colours, legends, family_rows = {}, {}, []
    for by in COLOUR_BY:
        values = lmap.notes[_NOTE_COLUMNS[by]].to_numpy()
        if by == "pitch":
            colours[by], legends[by] = _pitch_colours(values.astype(float))
        else:
            colours[by], rows = _categorical(values, also=lmap.context_family if by == "family" else None)
            legends[by] = _legend_html(by, rows)
            family_rows = rows if by == "family" else family_rows
    for by in COLOUR_BY:
        if lmap.context_family is not None:
            legends[by] += ("<hr><b>small points</b>: every note of the run, "
                            + ("coloured alike" if by == "family" else "by family" + _legend_rows(family_rows)))
        if lmap.placed is not None:
            legends[by] += (f"<hr><span style='color:{PLACED_COLOUR}'>&#9733;</span> your sounds "
                            "(click one to hear it)")
    return colours, legends, family_rows


def _guide(lmap: ListeningMap) -> list[str]:
    """The page's sentences on what is drawn and what a click does (plain text)."""
    lines = ["Hover a point for its note; click it to hear its recording, then its reconstruction (decode(mu), "
             "inverted by Griffin-Lim)."]
    if len(lmap.paths):
        lines.append("Lines are linear interpolation paths between two instruments, their steps diamonds shaded "
                     "from white (the first note) to black (the second); click a step to hear it.")
    if lmap.placed is not None:
        lines.append("Stars are your sounds, labelled by file name: hover one for its file and the run's note "
                     "nearest it in mu, click it to hear the file as it was encoded (its channels averaged, "
                     "resampled, padded or cut to the note length), then its reconstruction.")
    if lmap.context_family is not None:
        lines.append("The small points are every note of the run, coloured by family, without sound.")
    lines.append("Choose the map and the colouring above the plot.")
    return lines


def _sources(lmap: ListeningMap, first: str, colours: dict[str, list[str]],
             family_rows: list[tuple[str, str]]) -> dict:
    """The ColumnDataSources: notes with sound, every note (context), path steps, path lines, and the
    placed sounds when ``lmap`` has them."""
    from bokeh.models import ColumnDataSource

    keys = list(lmap.labels)
    notes = {name: lmap.notes[col].to_numpy() for name, col in _NOTE_COLUMNS.items() if col in lmap.notes.columns}
    notes.update(original=lmap.notes["original"].tolist(), reconstruction=lmap.notes["reconstruction"].tolist())
    notes.update({f"c_{by}": c for by, c in colours.items()})
    notes["color"] = colours[COLOUR_BY[0]]
    context, steps, placed = {}, {}, {}
    layers = [(notes, lmap.coords), (context, lmap.context), (steps, lmap.path_coords)]
    if lmap.placed is not None:
        table = lmap.placed.table
        placed = {col: table[col].tolist() for col in (*PLACED_COLUMNS, "original", "reconstruction")}
        layers.append((placed, lmap.placed.coords))
    if lmap.context_family is not None:
        # a byte per note, the family's index into the legend's colours: far smaller than a colour string
        code = {name: i for i, (name, _) in enumerate(family_rows)}
        context["family"] = np.array([code[str(f)] for f in lmap.context_family], np.uint8)
    for data, coords in layers:
        for k in keys:
            xy = np.asarray(coords[k], np.float32)  # float32 halves the page's coordinate tables
            data[f"x_{k}"], data[f"y_{k}"] = xy[:, 0], xy[:, 1]
        data["x"], data["y"] = data[f"x_{first}"], data[f"y_{first}"]
    paths = lmap.paths
    step_columns = ("pair", "instrument_a", "instrument_b", "pitch", "step", "t", "decoded")
    steps.update({col: (paths[col].tolist() if len(paths) else []) for col in step_columns})
    path_ids = paths["path"].to_numpy() if len(paths) else np.zeros(0, int)
    ids = np.unique(path_ids)
    # a step's shade says where it is on its path: white at the first note, black at the second
    shade = np.round(255 * (1.0 - np.asarray(steps["t"], float))).astype(int)
    steps["color"] = [f"#{v:02x}{v:02x}{v:02x}" for v in shade]
    lines: dict = {"pair": [steps["pair"][np.flatnonzero(path_ids == i)[0]] for i in ids]}
    for k in keys:
        lines[f"xs_{k}"] = [lmap.path_coords[k][path_ids == i, 0] for i in ids]
        lines[f"ys_{k}"] = [lmap.path_coords[k][path_ids == i, 1] for i in ids]
    lines["xs"], lines["ys"] = lines[f"xs_{first}"], lines[f"ys_{first}"]
    sources = [("notes", notes), ("context", context), ("steps", steps), ("lines", lines)]
    if lmap.placed is not None:
        sources.append(("placed", placed))
    return {name: ColumnDataSource(data, name=name) for name, data in sources}


def map_layout(lmap: ListeningMap):
    """The page's Bokeh layout: the two selects, the plot with its tooltips and taps, the legend.

    Raises
    ------
    ParameterError
        When ``lmap`` has no map.
    """
    from bokeh.layouts import column, row
    from bokeh.models import CustomJS, Div, HoverTool, LabelSet, Select, TapTool
    from bokeh.plotting import figure
    from bokeh.transform import linear_cmap

    if not lmap.labels:
        raise ParameterError("lmap: no map to draw (labels is empty)")
    if lmap.context_family is not None and len(lmap.context_family) != len(next(iter(lmap.context.values()))):
        raise ParameterError(f"lmap.context_family: {len(lmap.context_family)} families for "
                             f"{len(next(iter(lmap.context.values())))} notes of the context")
    first = next(iter(lmap.labels))
    colours, legends, family_rows = _colours(lmap)
    src = _sources(lmap, first, colours, family_rows)
    plot = figure(width=PLOT_SIZE[0], height=PLOT_SIZE[1], title=lmap.labels[first],
                  tools="pan,wheel_zoom,box_zoom,reset,save", active_scroll="wheel_zoom",
                  x_axis_label=lmap.axes[first][0], y_axis_label=lmap.axes[first][1], name="map_plot")
    if lmap.context_family is None:
        plot.scatter("x", "y", source=src["context"], size=3, color=CONTEXT_COLOUR, alpha=0.5)
    else:
        # index i of family_rows lands on its colour: the mapper's bins are [i - 0.5, i + 0.5)
        palette = [c for _, c in family_rows]
        plot.scatter("x", "y", source=src["context"], size=4, line_color=None, alpha=0.45,
                     fill_color=linear_cmap("family", palette, -0.5, len(palette) - 0.5), name="context_renderer")
    plot.multi_line("xs", "ys", source=src["lines"], line_color=PATH_COLOUR, line_width=1.5, alpha=0.7)
    note_r = plot.scatter("x", "y", source=src["notes"], size=8, fill_color="color", line_color="#333333",
                          line_width=0.5, alpha=0.9, name="notes_renderer")
    step_r = plot.scatter("x", "y", source=src["steps"], size=10, marker="diamond", fill_color="color",
                          line_color="black", name="steps_renderer")
    plot.add_tools(HoverTool(renderers=[note_r], tooltips=[
        ("instrument", "@instrument"), ("family", "@family"), ("source", "@source"), ("pitch", "@pitch"),
        ("velocity", "@velocity"), ("split", "@split")]))
    plot.add_tools(HoverTool(renderers=[step_r], tooltips=[
        ("path", "@instrument_a → @instrument_b"), ("pitch", "@pitch"), ("step", "@step"), ("t", "@t{0.00}")]))
    tapped = [note_r, step_r]
    if lmap.placed is not None:
        # the other stars stay visible while one is selected (Bokeh fades what is not selected to 0.1)
        placed_r = plot.scatter("x", "y", source=src["placed"], size=20, marker="star", fill_color=PLACED_COLOUR,
                                line_color="white", line_width=1, nonselection_alpha=0.5, name="placed_renderer")
        # LabelSet draws on the canvas: a file name is text there, whatever it holds
        plot.add_layout(LabelSet(x="x", y="y", text="file", source=src["placed"], x_offset=9, y_offset=6,
                                 text_font_size="10pt", text_color=PLACED_COLOUR, name="placed_labels"))
        plot.add_tools(HoverTool(renderers=[placed_r], tooltips=[
            ("file", "@file"), ("source", "@source_rate Hz, @source_channels channel(s), @source_seconds{0.00} s"),
            ("nearest run note", "@nearest"), ("distance in mu", "@distance{0.000}")]))
        tapped.append(placed_r)
    plot.add_tools(TapTool(renderers=tapped))

    legend = Div(text=legends[COLOUR_BY[0]], width=180, name="legend")
    map_select = Select(title="map", value=first, options=list(lmap.labels.items()), name="map")
    colour_select = Select(title="colour by", value=COLOUR_BY[0], options=list(COLOUR_BY), name="colour")
    map_select.js_on_change("value", CustomJS(
        args=dict(points=[src[k] for k in ("notes", "context", "steps", "placed") if k in src], lines=src["lines"],
                  plot=plot,
                  xaxis=plot.xaxis[0], yaxis=plot.yaxis[0], labels=lmap.labels,
                  axes={k: list(v) for k, v in lmap.axes.items()}), code=_SWAP_MAP))
    colour_select.js_on_change("value", CustomJS(args=dict(notes=src["notes"], legend=legend, legends=legends),
                                                 code=_SWAP_COLOUR))
    src["notes"].selected.js_on_change("indices", CustomJS(args=dict(notes=src["notes"], ids=PLAYER_IDS),
                                                           code=_PLAY_NOTE))
    src["steps"].selected.js_on_change("indices", CustomJS(args=dict(steps=src["steps"], ids=PLAYER_IDS),
                                                           code=_PLAY_STEP))
    if "placed" in src:
        src["placed"].selected.js_on_change("indices", CustomJS(args=dict(placed=src["placed"], ids=PLAYER_IDS),
                                                                code=_PLAY_PLACED))
    return column(row(map_select, colour_select), row(plot, legend))


def map_page_html(lmap: ListeningMap, *, title: str,
                  links: Sequence[tuple[str, str]] = RUN_LINKS) -> str:
    """The listening map as one standalone HTML document (Bokeh's library inline).

    ``links`` are the (href, text) pairs under the heading: 05's page links the run's pages beside it;
    a page written elsewhere (``vaelib encode``) has none to link.
    """
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    page = file_html(map_layout(lmap), INLINE, title=title, template=_TEMPLATE,
                     template_variables={"heading": title, "summary": lmap.text, "ids": PLAYER_IDS,
                                         "guide": _guide(lmap), "links": list(links)})
    # Bokeh's inline library holds '</body>' in a JavaScript string; written '<\/body>' there (the same
    # string), the page's own closing tag is its only one, where a tool adding to the page (vaelib check's
    # probe) looks for it.
    head, tail = page.rsplit("</body>", 1)
    return head.replace("</body>", "<\\/body>") + "</body>" + tail


def write_map_page(lmap: ListeningMap, path: str | Path, *, title: str,
                   links: Sequence[tuple[str, str]] = RUN_LINKS) -> MapPage:
    """Write ``map_page_html`` atomically to ``path``; warn when the page is over ``lmap.budget_bytes``."""
    path = Path(path)
    atomic_write_text(path, map_page_html(lmap, title=title, links=links))
    size = path.stat().st_size
    if size > lmap.budget_bytes:
        warnings.warn(f"{path.name}: {size / 1e6:.1f} MB, over its budget of {lmap.budget_bytes / 1e6:.1f} MB "
                      "(analysis.map_max_mb): the page beside its sound is larger than the reserve it is given",
                      stacklevel=2)
    return MapPage(path=path, bytes=size, budget_bytes=lmap.budget_bytes)
