"""Figures and players of 05_listening, from a ``vaelib.analysis.listening.Listening``.

Players carry their sound as MP3 data URIs, so the HTML report plays on its own and stays small.
"""

from __future__ import annotations

import html

import matplotlib.pyplot as plt
from IPython.display import HTML
from matplotlib.figure import Figure

from vaelib.analysis.listening import Clip, Listening, audio_data_uris
from vaelib.config import FeatureConfig
from vaelib.report.plots.common import grouped_bars, spectrogram_rows

__all__ = ["listening_spectrograms_figure", "roundtrip_figure", "players", "walk_players"]


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


def _player(uri: str, *, width: str = "300px") -> str:
    return f"<audio controls preload='none' style='width:{width}' src='{uri}'></audio>"


def players(clips: list[Clip], *, sample_rate: int) -> HTML:
    """A table of audio players (embedded, so the HTML report plays on its own): label, kind, round-trip dB."""
    uris = audio_data_uris([c.audio for c in clips], sample_rate=sample_rate)
    rows = "".join(
        f"<tr><td>{html.escape(c.label)}</td><td>{html.escape(c.kind)}</td><td>{c.mae_db:.1f} dB</td>"
        f"<td>{_player(uri)}</td></tr>" for c, uri in zip(clips, uris))
    return HTML("<table><tr><th>sound</th><th>kind</th><th>round trip</th><th>listen</th></tr>" + rows + "</table>")


def walk_players(listening: Listening) -> HTML:
    """Every walk of ``listening``: its pair and method, all its steps back to back, then each step alone;
    then the pairs that could not be formed. Names are HTML-escaped (they come from metadata)."""
    clips = [c for w in listening.walks for c in (w.sequence, *w.steps)]
    uris = iter(audio_data_uris([c.audio for c in clips], sample_rate=listening.sample_rate))
    rows = "".join(
        f"<tr><td>{w.text}</td><td>{_player(next(uris), width='240px')}</td><td>"
        + "".join(f"<div style='display:inline-block;margin:2px'><small>{html.escape(c.label)}</small><br>"
                  f"{_player(next(uris), width='150px')}</div>" for c in w.steps)
        + "</td></tr>" for w in listening.walks)
    skipped = "".join(f"<li>{html.escape(s)}</li>" for s in listening.skipped)
    return HTML("<table><tr><th>path</th><th>all steps</th><th>each step</th></tr>" + rows + "</table>"
                + (f"<p>Pairs not formed:</p><ul>{skipped}</ul>" if skipped else ""))
