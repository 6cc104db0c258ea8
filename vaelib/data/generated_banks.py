"""The SoundFonts the project writes itself, by the bare name a run gives them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vaelib.data import fm_soundfont, subtractive_soundfont

__all__ = ["GeneratedBank", "GENERATED"]


@dataclass(frozen=True)
class GeneratedBank:
    """A generated bank: its generator's ``format`` (recorded in every render of it), where it is written
    (``path``) and the call that writes it when missing or stale (``ensure``)."""

    format: str
    path: Callable[[], Path]
    ensure: Callable[[], Path]


# Looked up at each call, not bound here, so that a test may point a module's functions elsewhere.
GENERATED = {
    fm_soundfont.FM_SOUNDFONT: GeneratedBank(fm_soundfont.FORMAT, lambda: fm_soundfont.fm_soundfont_path(),
                                             lambda: fm_soundfont.ensure_fm_soundfont()),
    subtractive_soundfont.SUB_SOUNDFONT: GeneratedBank(subtractive_soundfont.FORMAT,
                                                       lambda: subtractive_soundfont.sub_soundfont_path(),
                                                       lambda: subtractive_soundfont.ensure_sub_soundfont()),
}
