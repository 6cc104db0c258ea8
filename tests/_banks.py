"""Helpers shared by the tests of the SoundFonts the project generates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tinysoundfont

from vaelib.data.render import GM_FAMILY_SOURCE, SAMPLE_RATE, render_note
from vaelib.data.soundfonts import resolve_soundfont

ONE_PER_FAMILY: dict[str, int] = {}  # family -> its first GM program
for _program, (_family, _) in GM_FAMILY_SOURCE.items():
    ONE_PER_FAMILY.setdefault(_family, _program)


def load_synth(path: Path, data: bytes) -> tuple[tinysoundfont.Synth, int]:
    """A synth at the render's rate with the bank ``data`` (written to ``path``) loaded, and its id."""
    path.write_bytes(data)
    s = tinysoundfont.Synth(gain=0, samplerate=SAMPLE_RATE)
    return s, s.sfload(str(path))


def level_db(audio: np.ndarray, t0: float, t1: float) -> float:
    part = audio[int(t0 * SAMPLE_RATE):int(t1 * SAMPLE_RATE)]
    return float(20 * np.log10(np.sqrt(np.mean(part.astype(np.float64) ** 2)) + 1e-12))


def partial_at(audio: np.ndarray, pitch: int) -> bool:
    """Whether the held part's spectrum has a partial within 1.5% of the pitch's f0, at most 30 dB under its peak."""
    seg = audio[int(0.6 * SAMPLE_RATE):int(0.6 * SAMPLE_RATE) + 16384] * np.hanning(16384)
    spectrum = 20 * np.log10(np.abs(np.fft.rfft(seg)) + 1e-9)
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    near = slice(int(f0 * 0.985 * 16384 / SAMPLE_RATE), int(f0 * 1.015 * 16384 / SAMPLE_RATE) + 2)
    return bool(spectrum[near].max() > spectrum.max() - 30)


def check_family_notes(synth: tuple[tinysoundfont.Synth, int], program: int, sustained: bool) -> None:
    """A program's notes at three pitches: in tune, loud enough, held or decaying as its patch says, released."""
    s, sfid = synth
    s.program_select(0, sfid, 0, program)
    for pitch in (36, 61, 84):  # roots and between them
        audio = render_note(s, 0, pitch, 100)
        assert 0.1 < np.abs(audio).max() < 1.0
        assert partial_at(audio, pitch), f"program {program} at {pitch}: no partial at its f0"
        held, late = level_db(audio, 0.5, 0.7), level_db(audio, 2.4, 2.6)
        if sustained:
            assert abs(late - held) < 3.0
        else:
            assert late < held - 8.0
        assert level_db(audio, 3.8, 4.0) < held - 40  # released


def check_written_once(name: str, path: Path, bank: bytes, fmt: str) -> None:
    """The bare ``name`` writes ``bank`` at ``path`` once and leaves no temp file; a file written by another
    version of the generator (format ``fmt`` with another number), or cut short, is written again."""
    assert resolve_soundfont(name) == path and path.read_bytes() == bank
    stamp = path.stat().st_mtime_ns
    assert resolve_soundfont(name) == path and path.stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temp file left
    older = fmt.rsplit(" ", 1)[0] + " 0"
    for stale in (bank.replace(fmt.encode(), older.encode(), 1), bank[:1000]):
        path.write_bytes(stale)
        assert resolve_soundfont(name) == path and path.read_bytes() == bank
