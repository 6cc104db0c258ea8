"""vaelib: a convolutional beta-VAE timbre space of NSynth-format notes."""

__version__ = "0.1.0"
