"""The ``vaelib`` command line: one entry point, one subcommand per stage.

- ``main``: the parser, the data subcommands (``render``, ``preprocess``, ``params``) and error handling.
- ``train``: ``vaelib train``.
- ``analysis``: ``vaelib embed`` and ``vaelib encode``.
- ``report``: ``vaelib run``, ``vaelib sweep``, ``vaelib check``.
- ``jit_cache``: ``python -m vaelib.cli.jit_cache``: numba's caches filled once at install.
"""

from vaelib.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
