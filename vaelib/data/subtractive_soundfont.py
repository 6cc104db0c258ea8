"""A General MIDI SoundFont of subtractive-synthesis patches, written by the project: a third kind of source.

Every program of the GM -> NSynth family table is one preset whose samples are an analogue synth's voice:
a band-limited oscillator (saw, square, narrow pulse or triangle, summed from its harmonics below
``RENDER_BAND_HZ``) through a resonant two-pole low-pass whose cutoff moves from a peak to a steady value
(a plucked note darkens as it decays, a brass note opens as it swells), under an amplitude envelope, with
the synth's vibrato on strings, brass, reeds, flutes and voices and a little breath in the attack of
flutes and voices. The family sets the
patch (``_FAMILY``); each program draws its own variation from a seeded generator, as in the FM bank
(``vaelib.data.fm_soundfont``), whose file layout, roots and loops it shares (``vaelib.data.sf2_bank``).

Where the FM bank's timbre comes from sidebands, this one's comes from a filtered harmonic series: a
training set holding both, beside sampled banks, asks the model for what a family sounds like whatever
made the sound. Written into ``data/soundfonts/`` when a run names :data:`SUB_SOUNDFONT`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaelib.config import resolve_path
from vaelib.data.fm_soundfont import SEED
from vaelib.data.sf2_bank import (
    ATTACK_REGION_S,
    DECAY_S,
    FOLDER,
    RENDER_BAND_HZ,
    SAMPLE_RATE,
    ZONE_UP,
    bank_bytes,
    bank_header,
    ensure_bank,
    loop_periods,
)

__all__ = ["SUB_SOUNDFONT", "FORMAT", "SubPatch", "sub_patch", "sub_tone", "harmonic_amplitude",
           "sub_header", "sub_soundfont_bytes", "sub_soundfont_path", "ensure_sub_soundfont"]

SUB_SOUNDFONT = "vaelib_sub.sf2"  # the bare name a run gives; written on first use into FOLDER
# In the file's INFO chunk and in every render of it: bump with any change to what the generator writes.
FORMAT = "vaelib subtractive GM 1"
DUTY = {"square": 0.5, "pulse25": 0.25, "pulse12": 0.12}  # a pulse's share of the period up
WAVES = ("saw", *DUTY, "triangle")
# The FM bank draws a program's patch from the stream [seed, program]; this one from [seed, program, STREAM],
# so that with one seed the two banks' programs do not share their draws.
STREAM = 7

# family -> (oscillators to choose from, cutoff at the onset and steady (harmonics of f0), its time constant (s),
# resonance Q, amplitude attack (s), amplitude decay time constant (s) or None when sustained, vibrato (cents))
_FAMILY = {
    "keyboard": (("saw", "pulse25"), 14.0, 3.0, 0.5, 0.8, 0.003, 1.2, 0),
    "mallet": (("triangle", "square"), 10.0, 1.2, 0.08, 0.9, 0.002, 0.5, 0),
    "guitar": (("saw", "pulse25"), 18.0, 2.0, 0.2, 1.0, 0.002, 0.9, 0),
    "bass": (("saw", "square"), 8.0, 2.0, 0.15, 1.5, 0.004, 1.0, 0),
    "organ": (("square", "pulse25"), 9.0, 9.0, 1.0, 0.7, 0.01, None, 0),
    "string": (("saw",), 4.0, 7.0, 0.3, 0.7, 0.15, None, 15),
    "brass": (("saw",), 2.0, 9.0, 0.08, 1.2, 0.06, None, 8),
    "reed": (("square", "pulse12"), 6.0, 6.0, 0.05, 1.5, 0.03, None, 5),
    "flute": (("triangle",), 3.0, 2.5, 0.08, 0.7, 0.06, None, 12),
    "synth_lead": (("saw", "square", "pulse12"), 30.0, 20.0, 0.1, 3.0, 0.005, None, 0),
    "vocal": (("triangle", "saw"), 3.0, 3.5, 0.1, 2.5, 0.1, None, 20),
}


@dataclass(frozen=True)
class SubPatch:
    """One program's patch: the oscillator ``wave``, the cutoff from ``cutoff_start`` to ``cutoff_steady``
    (multiples of the note's frequency) with time constant ``cutoff_tau`` (s), the filter's resonance ``q``,
    amplitude ``attack`` (s) and ``decay`` (s, None: sustained), the synth's ``vibrato`` (cents) and a little
    breath ``noise``."""

    family: str
    wave: str
    cutoff_start: float
    cutoff_steady: float
    cutoff_tau: float
    q: float
    attack: float
    decay: float | None
    vibrato: int
    noise: float

    @property
    def sustained(self) -> bool:
        return self.decay is None


def sub_patch(program: int, family: str, *, seed: int = SEED) -> SubPatch:
    """The patch of one GM program: its family's, varied by a generator seeded with the program."""
    waves, start, steady, tau, q, attack, decay, vibrato = _FAMILY[family]
    rng = np.random.default_rng([seed, program, STREAM])
    vary = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731 - one draw, in a fixed order
    wave = waves[int(rng.integers(len(waves)))]
    return SubPatch(family=family, wave=wave, cutoff_start=start * vary(0.7, 1.3),
                    cutoff_steady=steady * vary(0.7, 1.3), cutoff_tau=tau * vary(0.7, 1.4), q=q * vary(0.8, 1.25),
                    attack=attack * vary(0.8, 1.5),
                    decay=None if decay is None else decay * vary(0.7, 1.4), vibrato=vibrato,
                    noise=0.03 * vary(0.5, 1.5) if family in ("flute", "vocal") else 0.0)


def harmonic_amplitude(wave: str, k: int) -> float:
    """Amplitude of harmonic ``k`` (1, 2, ...) of an oscillator: a saw's 1/k, a pulse of duty d's
    |sin(pi k d)| / k (a square's odd harmonics), a triangle's odd harmonics at 1/k^2."""
    if wave == "saw":
        return 1.0 / k
    if wave in DUTY:
        return float(np.abs(np.sin(np.pi * k * DUTY[wave])) / k)
    if wave == "triangle":
        return 1.0 / k ** 2 if k % 2 == 1 else 0.0
    raise ValueError(f"wave: expected one of {WAVES}, got {wave!r}")


def _lowpass_gain(ratio: np.ndarray, q: float) -> np.ndarray:
    """|H| of a two-pole low-pass at ``ratio`` = frequency / cutoff, resonance ``q``."""
    return 1.0 / np.sqrt((1.0 - ratio ** 2) ** 2 + (ratio / q) ** 2)


def sub_tone(patch: SubPatch, root: int, *, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, int, int]:
    """One sample of a patch at MIDI note ``root``: int16 samples, and the loop's start and end (0, 0: none).
    Only harmonics below ``RENDER_BAND_HZ`` at the top of the root's zone are summed, so the harmonic series
    does not alias in a 16 kHz render; the breath of flutes and voices is white noise in the attack only, as
    in the FM bank. A sustained tone's cutoff has settled at its loop's start, and the loop is a whole
    number of periods (the frequency nudged by under a cent), so it joins without a click."""
    f0 = 440.0 * 2.0 ** ((root - 69) / 12)
    rng = np.random.default_rng([SEED, root, int(patch.cutoff_start * 1000)])  # the breath noise's, as the FM bank's
    if patch.sustained:
        start = int(ATTACK_REGION_S * sample_rate)
        periods = loop_periods(f0, 1.0)
        loop = round(periods * sample_rate / f0)
        f0 = periods * sample_rate / loop
        n = start + loop + 64  # the synth reads past the loop end: the tone goes on
    else:
        start = loop = 0
        n = int(DECAY_S * sample_rate)
    t = np.arange(n) / sample_rate
    settle = np.exp(-t / patch.cutoff_tau)
    if patch.sustained:  # settled exactly at the loop's start, without a step
        at_loop = np.exp(-start / sample_rate / patch.cutoff_tau)
        settle = np.clip((settle - at_loop) / (1.0 - at_loop), 0.0, None)
    cutoff = f0 * (patch.cutoff_steady + (patch.cutoff_start - patch.cutoff_steady) * settle)
    top = 440.0 * 2.0 ** ((root + ZONE_UP - 69) / 12)
    harmonics = range(1, max(1, int(RENDER_BAND_HZ / top)) + 1)
    tone = np.zeros(n)
    for k in harmonics:
        a = harmonic_amplitude(patch.wave, k)
        if a > 0:
            tone += a * _lowpass_gain(k * f0 / cutoff, patch.q) * np.sin(2 * np.pi * k * f0 * t)
    tone /= max(float(np.abs(tone).max()), 1e-9)
    amp = np.minimum(t / patch.attack, 1.0)
    if not patch.sustained:
        amp *= np.exp(-t / patch.decay)
    tone *= amp
    if patch.noise:
        tone[:start or n] += patch.noise * amp[:start or n] * rng.standard_normal(start or n)
    pcm = np.round(np.clip(tone * 0.8, -1, 1) * 32767).astype(np.int16)
    return pcm, start, start + loop


def sub_soundfont_bytes(*, seed: int = SEED, programs: Iterable[int] | None = None) -> bytes:
    """The SoundFont 2 file: one preset and one instrument per program of the family table (of ``programs``
    of it: a smaller file, for tests; the bank a run names has every one)."""
    return bank_bytes(lambda program, family: sub_patch(program, family, seed=seed), sub_tone, fmt=FORMAT, seed=seed,
                      instrument="sub", preset="SUB", programs=programs)


def sub_header(*, seed: int = SEED) -> bytes:
    """The first bytes of the file, which name the generator's format and seed."""
    return bank_header(FORMAT, seed)


def sub_soundfont_path() -> Path:
    """``data/soundfonts/vaelib_sub.sf2`` in the project."""
    return resolve_path(FOLDER) / SUB_SOUNDFONT


def ensure_sub_soundfont() -> Path:
    """``data/soundfonts/vaelib_sub.sf2``, written (atomically) when it is not there or was written by another
    version of the generator.

    Raises
    ------
    DataError
        The folder cannot take the file.
    """
    return ensure_bank(sub_soundfont_path(), sub_header(), lambda: sub_soundfont_bytes(),
                       what="the project's subtractive SoundFont")
