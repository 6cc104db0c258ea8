"""The live explorer of a trained run (06_explore): ipywidgets over :mod:`vaelib.analysis.explore`.

``build_explorer(run)`` returns one widget of four tabs; every move of a control calls one function of
``vaelib.analysis.explore`` and shows what it returns, a spectrogram (PNG) and its audio (wav), with a
caption saying what was decoded and how long the update took:

- **Path**: two instruments (each filtered by family) and a pitch for each end; a slider moves along the
  linear or spherical path between the two notes' mu.
- **Axes**: a note, then a slider along a principal axis of mu (PCA over the run's notes) or along one
  latent dimension, in standard deviations of the run's notes along it.
- **Sample**: a draw from the prior N(0, I), or around a note (mu + s * sigma * eps) with a seed.
- **Your sound**: an uploaded or named sound file, encoded, placed on the PCA map of the run's notes and
  reconstructed.

Sliders decode when released (``continuous_update=False``), so a drag costs one update. Audio plays
on each change once a control of its tab has been moved (not when the notebook opens). Without a
frontend (papermill) the widget is built and shown all the same; the report's static figures come from
the figure functions below, which draw what they are given.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Sequence

import ipywidgets as widgets
import numpy as np
from IPython.display import HTML, Audio
from matplotlib.figure import Figure

from vaelib.analysis.explore import (
    DEFAULT_GL_ITERS,
    Decoded,
    ExploreSpace,
    ExploreViews,
    Placed,
    axis_update,
    default_notes,
    find_note,
    path_update,
    place_sound,
    run_space,
    sample_update,
    wav_bytes,
)
from vaelib.analysis.run import TrainedRun
from vaelib.config import FeatureConfig
from vaelib.data.features import normalized_to_db
from vaelib.exceptions import VaelibError
from vaelib.report.plots.common import scatter_map, spectrogram, spectrogram_rows

__all__ = [
    "Explorer",
    "build_explorer",
    "spectrogram_png",
    "SpectrogramCanvas",
    "figure_png",
    "caption_html",
    "map_figure",
    "placed_figure",
    "path_figure",
    "traversal_figure",
    "samples_figure",
    "players",
]

ALL_FAMILIES = "(all families)"
SAME_PITCH = "same as A"
UPLOAD_ACCEPT = ".wav,.wave,.flac,.ogg,.oga,.aif,.aiff,.aifc,.mp3,audio/*"
PNG_DPI = 80


# ----------------------------------------------------------------------------- figures

def figure_png(fig: Figure, *, dpi: int = PNG_DPI) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is not shown)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def spectrogram_png(x: np.ndarray, *, cfg: FeatureConfig, title: str) -> bytes:
    """One normalised log-mel [shape=(1, n_mels, frames)] as a PNG, dB against its reference."""
    return SpectrogramCanvas(cfg).png(x, title=title)


class SpectrogramCanvas:
    """One spectrogram figure drawn once and then only given new data and a new title: a widget redraws
    it at every update, and building the axes, ticks and colour bar again would cost as much as the
    decoder (fixed margins instead of constrained layout, for the same reason)."""

    def __init__(self, cfg: FeatureConfig) -> None:
        self.cfg = cfg
        self.fig = Figure(figsize=(6.0, 2.8))
        self.fig.subplots_adjust(left=0.13, right=0.93, bottom=0.17, top=0.88)
        self.ax = self.fig.subplots()
        self._drawn = False

    def png(self, x: np.ndarray, *, title: str) -> bytes:
        if not self._drawn:
            spectrogram(self.ax, x, cfg=self.cfg, title=title, colorbar=True)
            self._drawn = True
        else:
            self.ax.images[0].set_data(normalized_to_db(np.asarray(x, np.float32).reshape(self.cfg.n_mels,
                                                                                          self.cfg.frames),
                                                        cfg=self.cfg))
            self.ax.set_title(title)
        return figure_png(self.fig)


def map_figure(coords: np.ndarray, families: np.ndarray, *, points: np.ndarray | None = None,
               labels: Sequence[str] = (), explained: Sequence[float] | None = None,
               title: str = "PCA of mu: the run's notes and the sounds placed") -> Figure:
    """The run's notes on the PCA map of mu by family, with placed sounds as labelled black stars.

    Parameters
    ----------
    coords : [shape=(notes, 2)]; families : [shape=(notes,)] the family of each note;
    points : [shape=(sounds, 2)] placed sounds (None: none); labels : one per point;
    explained : variance ratios of the two axes, for the axis labels.
    """
    fig = Figure(figsize=(7.5, 5.5), constrained_layout=True)
    ax = fig.subplots()
    ev = list(explained) if explained is not None else []
    xlabel = "PC1" + (f" ({100 * ev[0]:.0f}% of the variance)" if len(ev) > 0 else "")
    ylabel = "PC2" + (f" ({100 * ev[1]:.0f}%)" if len(ev) > 1 else "")
    scatter_map(ax, coords, np.asarray(families), title=title, xlabel=xlabel, ylabel=ylabel, cbar_label="family",
                size=10)
    if points is not None and len(points):
        points = np.asarray(points)
        ax.scatter(points[:, 0], points[:, 1], marker="*", s=220, color="black", edgecolors="white", linewidths=0.8,
                   zorder=5, label="placed sound")
        for (px, py), label in zip(points, labels):
            ax.annotate(str(label), (px, py), xytext=(6, 6), textcoords="offset points", fontsize="small",
                        zorder=6, bbox={"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.8, "lw": 0})
        ax.legend(fontsize="small", markerscale=1.5, loc="best")
    return fig


def placed_figure(placed: Placed, *, cfg: FeatureConfig) -> Figure:
    """A placed sound's log-mel beside its reconstruction, on one colour scale."""
    return spectrogram_rows([np.stack([placed.x, placed.reconstruction.x])], cfg=cfg, row_titles=[placed.sound.name],
                            col_titles=[["the file (as encoded)", "reconstruction decode(mu)"]],
                            suptitle=f"{placed.sound.name}: its log-mel and its reconstruction", cell=(3.2, 2.2))


def path_figure(path: Sequence[Decoded], *, cfg: FeatureConfig) -> Figure:
    """The decoded steps of one path as a strip, position t above each."""
    info = path[0].info
    return spectrogram_rows([np.stack([d.x for d in path])], cfg=cfg, row_titles=[info.get("method", "")],
                            col_titles=[[f"t = {d.info.get('t', 0):.2f}" for d in path]],
                            suptitle=f"{info.get('note_a', '')}  ->  {info.get('note_b', '')}")


def traversal_figure(x: np.ndarray, *, axis_labels: Sequence[str], amounts: Sequence[float], cfg: FeatureConfig,
                     note: str) -> Figure:
    """Decoded spectrograms along several axes around a note: one row per axis, one column per amount.

    x : [shape=(axes, amounts, 1, n_mels, frames)] (``vaelib.analysis.explore.axis_traversal``).
    """
    cols = [f"{a:+.1f} sd" for a in amounts]
    return spectrogram_rows(list(x), cfg=cfg, row_titles=list(axis_labels), col_titles=[cols] * len(x),
                            suptitle=f"Around {note}: along each axis, in standard deviations of the run's notes")


def samples_figure(views: ExploreViews, *, cfg: FeatureConfig) -> Figure:
    """The report's two samples side by side: from the prior, and around note A."""
    return spectrogram_rows([np.stack([views.prior.x, views.around.x])], cfg=cfg, row_titles=["sample"],
                            col_titles=[["prior N(0, I)", "mu + sigma * eps around note A"]],
                            suptitle=f"Samples (seed {views.prior.info.get('seed', 0)})", cell=(3.2, 2.2))


def players(decoded: Sequence[Decoded], *, labels: Sequence[str]) -> HTML:
    """A table of embedded audio players (the HTML report plays on its own), one per update."""
    rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{Audio(d.audio, rate=d.sample_rate)._repr_html_()}</td></tr>"
                   for d, label in zip(decoded, labels))
    return HTML("<table><tr><th>sound</th><th>listen</th></tr>" + rows + "</table>")


def caption_html(decoded: Decoded, *, title: str) -> str:
    """What an update decoded and how long it took, as escaped HTML."""
    s = decoded.seconds
    timing = (f"decode {1000 * s['decode']:.0f} ms + Griffin-Lim {1000 * s['inversion']:.0f} ms"
              if s else "")
    return f"<b>{html.escape(title)}</b><br><small>{html.escape(timing)}</small>"


def _error_html(exc: Exception) -> str:
    return f"<span style='color:#b0201a'><b>{html.escape(type(exc).__name__)}</b>: {html.escape(str(exc))}</span>"


# ----------------------------------------------------------------------------- widgets

class _View:
    """What a tab shows: a spectrogram, its audio and a caption."""

    def __init__(self, cfg: FeatureConfig) -> None:
        self.cfg = cfg
        self.canvas = SpectrogramCanvas(cfg)
        self.image = widgets.Image(format="png", layout=widgets.Layout(width="560px"))
        # Autoplay is switched on at the first move of one of the tab's controls, so that opening the
        # notebook does not play every tab at once.
        self.audio = widgets.Audio(format="wav", autoplay=False, loop=False, controls=True)
        self.caption = widgets.HTML()

    def show(self, decoded: Decoded, *, title: str, caption: str) -> None:
        """Draw ``decoded`` (``title`` short, over the figure; ``caption`` the full text above it)."""
        self.image.value = self.canvas.png(decoded.x, title=title)
        self.audio.value = wav_bytes(decoded.audio, sample_rate=decoded.sample_rate)
        self.caption.value = caption_html(decoded, title=caption)

    def error(self, exc: Exception) -> None:
        self.caption.value = _error_html(exc)

    def box(self) -> widgets.VBox:
        return widgets.VBox([self.caption, self.image, self.audio])


def _guarded(update: Callable[[], None], view: _View, *, user: bool) -> None:
    """Run an update; a refused input (``VaelibError``) is shown in the caption instead of lost in the log."""
    if user:
        view.audio.autoplay = True
    try:
        update()
    except VaelibError as exc:
        view.error(exc)


class _NoteChooser:
    """A family filter, an instrument and a pitch: picks one note of the run (the instrument's nearest pitch)."""

    def __init__(self, space: ExploreSpace, *, label: str, instrument: str, pitch: int,
                 pitch_options: Sequence | None = None) -> None:
        self.space = space
        families = sorted(space.meta["instrument_family_str"].unique().tolist())
        self.family = widgets.Dropdown(options=[ALL_FAMILIES, *families], value=ALL_FAMILIES,
                                       description=f"{label} family")
        self.instrument = widgets.Dropdown(options=space.instruments(), value=instrument,
                                           description=f"{label} instrument", layout=widgets.Layout(width="420px"),
                                           style={"description_width": "initial"})
        self.pitch = widgets.Dropdown(options=list(pitch_options) if pitch_options is not None else space.pitches(),
                                      value=pitch, description=f"{label} pitch")
        self.family.observe(self._filter, names="value")

    def _filter(self, change: dict) -> None:
        meta = self.space.meta
        rows = meta if change["new"] == ALL_FAMILIES else meta[meta["instrument_family_str"] == change["new"]]
        options = sorted(rows["instrument_str"].unique().tolist())
        keep = self.instrument.value if self.instrument.value in options else options[0]
        self.instrument.options = options
        self.instrument.value = keep

    def note(self, pitch: int | None = None) -> int:
        return find_note(self.space.meta, instrument=self.instrument.value,
                         pitch=self.pitch.value if pitch is None else pitch)

    def controls(self) -> list[widgets.Widget]:
        return [self.family, self.instrument, self.pitch]

    def on_change(self, callback: Callable[[dict], None]) -> None:
        self.instrument.observe(callback, names="value")
        self.pitch.observe(callback, names="value")


def _decoder_pitch_widget(space: ExploreSpace, pitch: int) -> widgets.Dropdown | None:
    """A pitch chooser for the decoder, only when it is pitch-conditioned."""
    if not space.pitch_conditioning:
        return None
    return widgets.Dropdown(options=list(range(128)), value=int(pitch), description="decoder pitch",
                            style={"description_width": "initial"})


class PathTab:
    """Two notes and a slider along the linear or spherical path between their mu."""

    def __init__(self, model, space: ExploreSpace, *, instrument_a: str, instrument_b: str, pitch: int,
                 method: str, n_iter: int, seed: int) -> None:
        self.model, self.space, self.n_iter, self.seed = model, space, n_iter, seed
        self.a = _NoteChooser(space, label="A", instrument=instrument_a, pitch=pitch)
        self.b = _NoteChooser(space, label="B", instrument=instrument_b, pitch=SAME_PITCH,
                              pitch_options=[SAME_PITCH, *space.pitches()])
        self.method = widgets.ToggleButtons(options=[("linear", "linear"), ("spherical", "slerp")], value=method,
                                            description="path")
        self.slider = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="A -> B",
                                          continuous_update=False, readout_format=".2f")
        self.view = _View(space.features)
        for chooser in (self.a, self.b):
            chooser.on_change(lambda _change: self.refresh(user=True))
        self.method.observe(lambda _change: self.refresh(user=True), names="value")
        self.slider.observe(lambda _change: self.refresh(user=True), names="value")
        self.widget = widgets.VBox([widgets.HBox(self.a.controls()), widgets.HBox(self.b.controls()),
                                    widgets.HBox([self.method, self.slider]), self.view.box()])
        self.last: Decoded | None = None

    def refresh(self, *, user: bool = False) -> None:
        def update() -> None:
            note_a = self.a.note()
            pitch_b = self.a.pitch.value if self.b.pitch.value == SAME_PITCH else self.b.pitch.value
            note_b = self.b.note(pitch=pitch_b)
            self.last = path_update(self.model, self.space, note_a=note_a, note_b=note_b, t=self.slider.value,
                                    method=self.method.value, n_iter=self.n_iter, seed=self.seed)
            info = self.last.info
            where = f"{info['method']} path, t = {info['t']:.2f}"
            self.view.show(self.last, title=where, caption=f"{where}: {info['note_a']} -> {info['note_b']}")

        _guarded(update, self.view, user=user)


class AxesTab:
    """A note, and a slider along a principal axis of mu or along one latent dimension."""

    def __init__(self, model, space: ExploreSpace, *, instrument: str, pitch: int, n_iter: int, seed: int) -> None:
        self.model, self.space, self.n_iter, self.seed = model, space, n_iter, seed
        self.note = _NoteChooser(space, label="", instrument=instrument, pitch=pitch)
        self.kind = widgets.ToggleButtons(options=[("principal axis", "principal"), ("latent dimension", "dimension")],
                                          value="principal", description="along")
        self.axis = widgets.Dropdown(options=self._axis_options("principal"), value=0, description="axis")
        self.slider = widgets.FloatSlider(value=0.0, min=-3.0, max=3.0, step=0.25, description="amount (sd)",
                                          continuous_update=False, style={"description_width": "initial"})
        self.view = _View(space.features)
        self.kind.observe(self._kind_changed, names="value")
        self.note.on_change(lambda _change: self.refresh(user=True))
        self.axis.observe(lambda _change: self.refresh(user=True), names="value")
        self.slider.observe(lambda _change: self.refresh(user=True), names="value")
        self.widget = widgets.VBox([widgets.HBox(self.note.controls()), widgets.HBox([self.kind, self.axis]),
                                    self.slider, self.view.box()])
        self.last: Decoded | None = None

    def _axis_options(self, kind: str) -> list[tuple[str, int]]:
        s = self.space
        if kind == "principal":
            return [(f"PC{k + 1} ({100 * s.explained[k]:.1f}%)", k) for k in range(len(s.axes))]
        return [(f"dim {k} (sd {s.dim_std[k]:.2f})", k) for k in range(s.latent_dim)]

    def _kind_changed(self, change: dict) -> None:
        with self.axis.hold_trait_notifications():
            self.axis.options = self._axis_options(change["new"])
            self.axis.value = 0
        self.refresh(user=True)

    def refresh(self, *, user: bool = False) -> None:
        def update() -> None:
            kind = self.kind.value
            self.last = axis_update(self.model, self.space, note=self.note.note(), axis=self.axis.value,
                                    amount=self.slider.value, kind=kind, n_iter=self.n_iter, seed=self.seed)
            name = f"PC{self.axis.value + 1}" if kind == "principal" else f"dimension {self.axis.value}"
            self.view.show(self.last, title=f"{name} {self.slider.value:+.2f} sd",
                           caption=f"{self.last.info['note']}: {name} {self.slider.value:+.2f} sd")

        _guarded(update, self.view, user=user)


class SampleTab:
    """A draw from the prior, or around a note, with its scale and seed."""

    def __init__(self, model, space: ExploreSpace, *, instrument: str, pitch: int, n_iter: int, seed: int) -> None:
        self.model, self.space, self.n_iter = model, space, n_iter
        self.source = widgets.ToggleButtons(options=[("prior N(0, I)", "prior"), ("around a note", "around")],
                                            value="prior", description="sample")
        self.note = _NoteChooser(space, label="", instrument=instrument, pitch=pitch)
        self.scale = widgets.FloatSlider(value=1.0, min=0.0, max=3.0, step=0.1, description="s (x sigma)",
                                         continuous_update=False, style={"description_width": "initial"})
        self.seed = widgets.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="seed")
        self.draw = widgets.Button(description="new draw", tooltip="next seed")
        self.pitch = _decoder_pitch_widget(space, pitch)
        self.view = _View(space.features)
        self.source.observe(lambda _change: self.refresh(user=True), names="value")
        self.note.on_change(lambda _change: self.refresh(user=True))
        self.scale.observe(lambda _change: self.refresh(user=True), names="value")
        self.seed.observe(lambda _change: self.refresh(user=True), names="value")
        self.draw.on_click(lambda _button: setattr(self.seed, "value", self.seed.value + 1))
        extra = [self.pitch] if self.pitch is not None else []
        self.widget = widgets.VBox([widgets.HBox([self.source, *extra]), widgets.HBox(self.note.controls()),
                                    widgets.HBox([self.scale, self.seed, self.draw]), self.view.box()])
        self.last: Decoded | None = None

    def refresh(self, *, user: bool = False) -> None:
        def update() -> None:
            around = self.source.value == "around"
            pitch = self.pitch.value if self.pitch is not None else None
            self.last = sample_update(self.model, self.space, note=self.note.note() if around else None,
                                      scale=self.scale.value, seed=self.seed.value, pitch=pitch, n_iter=self.n_iter)
            info = self.last.info
            short = (f"mu + {info['scale']:.1f} sigma eps, seed {info['seed']}" if around
                     else f"prior N(0, I), seed {info['seed']}")
            self.view.show(self.last, title=short, caption=f"around {info['note']}: {short}" if around else short)

        _guarded(update, self.view, user=user)


class SoundTab:
    """A sound file of one's own: uploaded or named, encoded, placed on the map and reconstructed."""

    def __init__(self, model, space: ExploreSpace, *, pitch: int, n_iter: int, seed: int) -> None:
        self.model, self.space, self.n_iter, self.seed = model, space, n_iter, seed
        self.upload = widgets.FileUpload(accept=UPLOAD_ACCEPT, multiple=False, description="upload")
        self.path = widgets.Text(placeholder="or the path of a sound file", layout=widgets.Layout(width="420px"))
        self.place = widgets.Button(description="place", tooltip="encode the named file")
        self.pitch = _decoder_pitch_widget(space, pitch)
        self.view = _View(space.features)
        self.map = widgets.Image(format="png", layout=widgets.Layout(width="560px"))
        self.original = widgets.Audio(format="wav", autoplay=False, controls=True)
        self.nearest = widgets.HTML()
        self.upload.observe(self._uploaded, names="value")
        self.place.on_click(lambda _button: self.show_file(self.path.value, user=True))
        extra = [self.pitch] if self.pitch is not None else []
        self.widget = widgets.VBox([widgets.HBox([self.upload, self.path, self.place, *extra]), self.map,
                                    self.view.box(), widgets.HTML("<small>the file as encoded (resampled, "
                                                                  "downmixed, padded or cut):</small>"),
                                    self.original, self.nearest])
        self.last: Placed | None = None
        self.show_map()

    def show_map(self, placed: Placed | None = None) -> None:
        s = self.space
        points = None if placed is None else placed.point[None]
        labels = [] if placed is None else [placed.sound.name]
        self.map.value = figure_png(map_figure(s.coords, s.meta["instrument_family_str"].to_numpy(), points=points,
                                               labels=labels, explained=s.explained[:2]))

    def _uploaded(self, change: dict) -> None:
        files = change["new"]
        if files:
            upload = files[0]
            self.show_source(bytes(upload["content"]), name=upload["name"], user=True)

    def show_file(self, path: str, *, user: bool = False) -> None:
        self.show_source(path.strip(), name=None, user=user)

    def show_source(self, source: str | bytes, *, name: str | None, user: bool = False) -> None:
        def update() -> None:
            pitch = self.pitch.value if self.pitch is not None else None
            placed = place_sound(self.model, self.space, source, name=name, pitch=pitch, n_iter=self.n_iter,
                                 seed=self.seed)
            self.last = placed
            self.show_map(placed)
            self.view.show(placed.reconstruction, title="reconstruction",
                           caption=f"reconstruction of {placed.sound.name}")
            self.original.value = wav_bytes(placed.sound.audio, sample_rate=self.space.features.sample_rate)
            rows = "".join(f"<tr><td>{html.escape(str(n))}</td><td>{d:.3f}</td></tr>"
                           for n, d in zip(placed.nearest["note_str"], placed.nearest["distance"]))
            self.nearest.value = ("<b>nearest notes of the run in mu</b><table><tr><th>note</th><th>distance</th>"
                                  f"</tr>{rows}</table>")

        if isinstance(source, str) and not source:
            return
        _guarded(update, self.view, user=user)


class Explorer(widgets.Tab):
    """The four tabs (``path``, ``axes``, ``sample``, ``sound``: the tab objects, their widgets as attributes)."""

    def __repr__(self) -> str:  # the text a frontend-less display (papermill, the HTML report) shows
        return "vaelib explorer: interactive in JupyterLab (open 06_explore there and run it)"


def build_explorer(run: TrainedRun, *, space: ExploreSpace | None = None, instrument_a: str = "",
                   instrument_b: str = "", pitch: int = 60, method: str = "slerp", n_iter: int = DEFAULT_GL_ITERS,
                   seed: int = 0) -> Explorer:
    """The explorer widget of a trained run, every tab showing its first update.

    Parameters
    ----------
    run : from ``vaelib.analysis.run.load_trained_run``.
    space : the run's :class:`ExploreSpace` when already computed (else encoded here from the run's cache).
    instrument_a, instrument_b : the path's ends ('' : the first instrument by name, and the first of
        another family); pitch : the starting pitch (the nearest the run has).
    method : 'linear' or 'slerp', the path's starting kind.
    n_iter : Griffin-Lim iterations of every update (``DEFAULT_GL_ITERS``).
    seed : of Griffin-Lim's initial phase and of the first sample.

    Raises
    ------
    ParameterError
        When an instrument is not in the run.
    """
    space = space if space is not None else run_space(run)
    note_a, note_b = default_notes(space, instrument_a=instrument_a, instrument_b=instrument_b, pitch=pitch)
    a, b = (str(space.meta["instrument_str"].iloc[n]) for n in (note_a, note_b))
    pitch = int(space.meta["pitch"].iloc[note_a])
    model = run.model
    tabs = {"path": PathTab(model, space, instrument_a=a, instrument_b=b, pitch=pitch, method=method, n_iter=n_iter,
                            seed=seed),
            "axes": AxesTab(model, space, instrument=a, pitch=pitch, n_iter=n_iter, seed=seed),
            "sample": SampleTab(model, space, instrument=a, pitch=pitch, n_iter=n_iter, seed=seed),
            "sound": SoundTab(model, space, pitch=pitch, n_iter=n_iter, seed=seed)}
    for name in ("path", "axes", "sample"):
        tabs[name].refresh()
    explorer = Explorer(children=[t.widget for t in tabs.values()],
                        titles=["Path", "Axes", "Sample", "Your sound"])
    for name, tab in tabs.items():
        setattr(explorer, name, tab)
    explorer.space = space
    return explorer
