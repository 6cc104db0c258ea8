"""vaelib: a convolutional beta-VAE timbre space of NSynth-format notes.

Subpackages by stage; each imports only from those above it in this list and from the shared modules
(the contract ``make test`` checks with import-linter, ``[tool.importlinter]`` in pyproject.toml):

- ``data``: NSynth reading, GM rendering of the embedded dataset, log-mel features, the feature cache.
- ``model``: the VAE, its objective, training, checkpoints, devices.
- ``analysis``: latent statistics, probes, maps, interpolations, audio inversion.
- ``report``: notebooks executed into HTML reports, sweeps, browser checks, figures.
- ``cli``: the ``vaelib`` command.

Shared by all: ``config`` (the validated params), ``exceptions``, ``io`` (atomic writes, file locks,
output folder checks).
"""

__version__ = "0.1.0"
