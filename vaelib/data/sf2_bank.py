"""The SoundFont 2 file of a GM bank the project generates: one preset per GM program, one sample per root.

The project's own banks (``vaelib.data.fm_soundfont``, ``vaelib.data.subtractive_soundfont``) differ in how
a program's tone is made; the file around the tones is the same: one preset (bank 0, its GM program) and
one instrument per program of the GM -> NSynth family table, one sample per root of ``ROOTS`` played
``ZONE_UP`` semitones above its root and ``11 - ZONE_UP`` below, a sustained tone looped (with the synth's
vibrato where its patch asks for it), a struck one played out. The INFO chunk names the generator's
format and seed, so a file written by another version of a generator is told from this one's by its
first bytes and written again (:func:`ensure_bank`): a change here that changes the bytes of a bank asks
for a new ``FORMAT`` in each generator.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import numpy as np

from vaelib.exceptions import DataError
from vaelib.io import atomic_path

__all__ = ["FOLDER", "SAMPLE_RATE", "ROOTS", "ZONE_UP", "DECAY_S", "RENDER_BAND_HZ", "ATTACK_REGION_S", "LOOP_S",
           "Patch", "loop_periods", "bank_bytes", "bank_header", "written_by", "ensure_bank"]

FOLDER = "data/soundfonts"  # where the project writes its banks, in the project
SAMPLE_RATE = 22_050
ROOTS = tuple(range(24, 97, 12))  # C1 .. C7, one sample each
ZONE_UP = 5  # semitones a sample is played above its root (the zone of root - 6 .. root + 5)
# a struck or plucked tone's sample: a rendered note's 3 s held and 0.3 s of release, played ZONE_UP
# semitones fast, so that no note runs out of sample before it is released
DECAY_S = 4.5
RENDER_BAND_HZ = 7_000.0  # partials kept below this: the project renders at 16 kHz, and the synth does not filter
ATTACK_REGION_S = 0.5  # a sustained tone's attack, before its loop
LOOP_S = 0.25


class Patch(Protocol):
    """What the file needs of a program's patch beyond its tones."""

    @property
    def sustained(self) -> bool: ...

    @property
    def vibrato(self) -> int: ...  # cents, the synth's vibrato on a sustained tone's loop; 0 for none


def loop_periods(f0: float, ratio: float) -> int:
    """Whole periods of ``f0`` in about ``LOOP_S``, a multiple of ``ratio``'s denominator (a modulator at half
    the carrier's frequency repeats every two carrier periods), so that a loop joins every wave of the tone."""
    step = Fraction(ratio).limit_denominator(8).denominator
    return max(step, round(LOOP_S * f0 / step) * step)


def _chunk(tag: bytes, data: bytes) -> bytes:
    if len(data) % 2:
        data += b"\0"
    return tag + struct.pack("<I", len(data)) + data


def _list(tag: bytes, *chunks: bytes) -> bytes:
    return _chunk(b"LIST", tag + b"".join(chunks))


def _name(text: str) -> bytes:
    return text.encode("ascii")[:19].ljust(20, b"\0")


def _timecents(seconds: float) -> int:
    return int(round(1200 * np.log2(max(seconds, 0.001))))


def _info(fmt: str, seed: int) -> bytes:
    return _list(b"INFO", _chunk(b"ifil", struct.pack("<HH", 2, 1)), _chunk(b"isng", b"EMU8000\0"),
                 _chunk(b"INAM", f"{fmt} seed {seed}".encode("ascii") + b"\0"))


def bank_header(fmt: str, seed: int) -> bytes:
    """The first bytes of a bank's file: the RIFF header (its size left 0) and the INFO chunk naming the
    generator's format ``fmt`` and ``seed``."""
    return b"RIFF" + b"\0" * 4 + b"sfbk" + _info(fmt, seed)


def bank_bytes(patch: Callable[[int, str], Patch], tone: Callable[[Patch, int], tuple[np.ndarray, int, int]], *,
               fmt: str, seed: int, instrument: str, preset: str, programs: Iterable[int] | None = None) -> bytes:
    """The SoundFont 2 file of one bank.

    Parameters
    ----------
    patch : ``(program, family) -> patch``, for every program of the family table.
    tone : ``(patch, root) -> (int16 samples, loop start, loop end)`` (0, 0: no loop), at ``SAMPLE_RATE``.
    fmt, seed : the generator's format and seed, named in the INFO chunk (:func:`bank_header`).
    instrument, preset : the prefix of each instrument's name and of each preset's.
    programs : only these programs of the table (a smaller file for tests); None: every one.
    """
    from vaelib.data.render import GM_FAMILY_SOURCE

    kept = set(GM_FAMILY_SOURCE if programs is None else programs)
    table = {program: entry for program, entry in GM_FAMILY_SOURCE.items() if program in kept}

    samples, shdr, inst, ibag, igen, phdr, pbag, pgen = [], b"", b"", b"", b"", b"", b"", b""
    offset, n_ibag, n_igen = 0, 0, 0  # one instrument zone per sample: a zone's index is its sample's
    for i, (program, (family, _)) in enumerate(table.items()):
        p = patch(program, family)
        inst += _name(f"{instrument}{program:03d}_{family}") + struct.pack("<H", n_ibag)
        for j, root in enumerate(ROOTS):
            pcm, loop_start, loop_end = tone(p, root)
            samples.append(pcm.tobytes() + b"\0" * 92)  # 46 zero points after every sample
            shdr += _name(f"p{program:03d}r{root:03d}") + struct.pack(
                "<IIIIIBbHH", offset, offset + len(pcm), offset + loop_start, offset + loop_end, SAMPLE_RATE, root, 0,
                0, 1)
            offset += len(pcm) + 46
            # every key has a zone; keys past C7 + ZONE_UP play the top sample faster than it was made for
            lo = 0 if j == 0 else root - (11 - ZONE_UP)
            hi = 127 if j == len(ROOTS) - 1 else root + ZONE_UP
            gens = [(43, struct.pack("<BB", lo, hi))]
            if p.sustained:
                gens += [(54, struct.pack("<h", 1)), (38, struct.pack("<h", _timecents(0.25)))]
                if p.vibrato:
                    gens += [(6, struct.pack("<h", p.vibrato)), (24, struct.pack("<h", -686)),  # 5.5 Hz
                             (23, struct.pack("<h", _timecents(0.3)))]
            else:
                gens += [(38, struct.pack("<h", _timecents(0.3)))]
            gens += [(53, struct.pack("<H", n_ibag))]
            ibag += struct.pack("<HH", n_igen, 0)
            igen += b"".join(struct.pack("<H", op) + amount for op, amount in gens)
            n_igen += len(gens)
            n_ibag += 1
        phdr += _name(f"{preset} {family} {program}") + struct.pack("<HHHIII", program, 0, i, 0, 0, 0)
        pbag += struct.pack("<HH", i, 0)
        pgen += struct.pack("<Hh", 41, i)
    n_presets = len(table)
    phdr += _name("EOP") + struct.pack("<HHHIII", 0, 0, n_presets, 0, 0, 0)
    pbag += struct.pack("<HH", n_presets, 0)
    inst += _name("EOI") + struct.pack("<H", n_ibag)
    ibag += struct.pack("<HH", n_igen, 0)
    shdr += _name("EOS") + struct.pack("<IIIIIBbHH", 0, 0, 0, 0, 0, 0, 0, 0, 0)
    sdta = _list(b"sdta", _chunk(b"smpl", b"".join(samples)))
    pdta = _list(b"pdta", _chunk(b"phdr", phdr), _chunk(b"pbag", pbag), _chunk(b"pmod", b"\0" * 10),
                 _chunk(b"pgen", pgen + b"\0" * 4), _chunk(b"inst", inst), _chunk(b"ibag", ibag),
                 _chunk(b"imod", b"\0" * 10), _chunk(b"igen", igen + b"\0" * 4), _chunk(b"shdr", shdr))
    body = b"sfbk" + _info(fmt, seed) + sdta + pdta
    return b"RIFF" + struct.pack("<I", len(body)) + body


def written_by(path: Path, header: bytes) -> bool:
    """Whether ``path`` starts with ``header`` (a bank's, :func:`bank_header`; its size field aside) and is
    as long as its RIFF header says (not cut short)."""
    try:
        with path.open("rb") as f:
            found = f.read(len(header))
        size = path.stat().st_size
    except OSError:
        return False
    return (len(found) == len(header) and found[:4] == header[:4] and found[8:] == header[8:]
            and struct.unpack("<I", found[4:8])[0] == size - 8)


def ensure_bank(path: Path, header: bytes, make: Callable[[], bytes], *, what: str) -> Path:
    """``path``, written (atomically) by ``make`` when it is not there or does not start with ``header``.

    Raises
    ------
    DataError
        The folder cannot take the file (read-only, a file in its way, the disk full), naming ``what``.
    """
    if not (path.is_file() and written_by(path, header)):
        data = make()
        try:
            with atomic_path(path, suffix=".sf2") as tmp:
                tmp.write_bytes(data)
        except OSError as exc:
            raise DataError(f"{path}: could not write {what} ({exc.strerror or exc}); "
                            f"{path.parent} must be a writable folder, or name another SoundFont") from exc
    return path
