"""Atomic file writes: a temp file in the target's folder, fsynced, then renamed over the target.

A reader therefore sees either the old file or the complete new one, never a partial write.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

UMASK = os.umask(0)
os.umask(UMASK)

__all__ = ["UMASK", "atomic_path", "atomic_write_text", "atomic_write_json"]


@contextmanager
def atomic_path(target: str | os.PathLike, *, suffix: str = ""):
    """Yield a temporary path beside ``target``; on a clean exit it replaces ``target``.

    On an exception (or KeyboardInterrupt) the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates 0600; a report or cache file should read like any file the user writes.
        os.chmod(tmp_path, 0o666 & ~UMASK)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _write_with(target: str | os.PathLike, writer: Callable[[Path], Any], *, suffix: str = "") -> None:
    with atomic_path(target, suffix=suffix) as tmp:
        writer(tmp)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    _write_with(target, lambda p: p.write_text(text))


def atomic_write_json(target: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")
