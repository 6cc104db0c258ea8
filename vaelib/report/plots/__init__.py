"""Figures of the notebooks and report pages. Every function draws what it is given and computes no statistic.

- ``common``: histograms, bars per dimension, grouped bars, spectrogram grids, latent maps and paths;
  re-exported here, so ``from vaelib.report import plots`` gives them.
- ``alt_text``: a figure's alternative text for the HTML reports, from its titles, axis labels and legends.
- ``dataset``: 01_preprocess: dataset counts, pitch and velocity histograms, one spectrogram per family.
- ``training``: 02_train: loss curves and latent statistics per epoch.
- ``diagnostics``: 03_diagnostics: posterior per dimension, KL, active units, distances, reconstruction vs PCA.
- ``latent_map``: 04_latent_map: maps of mu, the pitch probe's breakdown, interpolation strips and paths.
- ``descriptors``: 04_latent_map: maps of mu by descriptor, the decoded PCA grid's heatmaps, R^2 bars.
- ``listening``: 05_listening: the spectrograms behind the audio, the round-trip error, embedded players.
- ``sweep``: the experiment comparison page: the reconstruction-structure trade-off, active units.
"""

from vaelib.report.plots.common import *  # noqa: F403
from vaelib.report.plots.common import __all__  # noqa: F401
