"""Figures and players of 05_listening, from a ``vaelib.analysis.listening.Listening``."""

from __future__ import annotations

import html

import matplotlib.pyplot as plt
from IPython.display import HTML, Audio
from matplotlib.figure import Figure

from vaelib.analysis.listening import Clip, Listening
from vaelib.config import FeatureConfig
from vaelib.report.plots.common import grouped_bars, spectrogram_rows

__all__ = ["listening_spectrograms_figure", "roundtrip_figure", "players"]


def listening_spectrograms_figure(listening: Listening, *, cfg: FeatureConfig) -> Figure:
    """The spectrograms behind the audio: originals above, reconstructions below."""
    return spectrogram_rows([listening.originals, listening.reconstructions], cfg=cfg,
                            row_titles=["original", "reconstruction"], col_titles=[listening.names, listening.names],
                            suptitle="test notes inverted to audio")


def roundtrip_figure(listening: Listening) -> Figure:
    """Mean log-mel round-trip error of the inverted audio per clip kind."""
    fig, ax = plt.subplots(figsize=(7, 3.5), constrained_layout=True)
    label = f"Griffin-Lim, {listening.n_iter} iterations"
    table = listening.roundtrip_table()[["mean"]].rename(columns={"mean": label})
    grouped_bars(ax, table, title="log-mel round trip error of the inverted audio", ylabel="mean |Δ| (dB)",
                 xlabel="clip kind")
    return fig


def players(clips: list[Clip], *, sample_rate: int) -> HTML:
    """A table of audio players (embedded, so the HTML report plays on its own): label, kind, round-trip dB."""
    rows = "".join(
        f"<tr><td>{html.escape(c.label)}</td><td>{html.escape(c.kind)}</td><td>{c.mae_db:.1f} dB</td>"
        f"<td>{Audio(c.audio, rate=sample_rate)._repr_html_()}</td></tr>" for c in clips)
    return HTML("<table><tr><th>sound</th><th>kind</th><th>round trip</th><th>listen</th></tr>" + rows + "</table>")
