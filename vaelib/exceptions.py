"""Error types raised by vaelib; every message names the file, key or parameter at fault."""

__all__ = ["VaelibError", "ConfigError", "DataError", "ParameterError", "CheckpointError", "TrainingError"]


class VaelibError(Exception):
    """Root of every error vaelib raises on purpose."""


class ConfigError(VaelibError):
    """A params file or override is invalid: unknown key, wrong type, out-of-range value."""


class DataError(VaelibError):
    """An NSynth-layout dataset on disk is missing, malformed or unreadable."""


class ParameterError(VaelibError):
    """A function argument is outside what the function accepts."""


class CheckpointError(VaelibError):
    """A checkpoint is missing, corrupt, or does not match the configuration asked for."""


class TrainingError(VaelibError):
    """Training cannot continue (for example a non-finite loss)."""
