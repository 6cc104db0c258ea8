"""A General MIDI SoundFont of FM synthesis patches, written by the project: a source unlike sampled banks.

Every program of the GM -> NSynth family table (``vaelib.data.render.GM_FAMILY_SOURCE``) is one preset
whose samples are two-operator FM tones (a sine carrier phase-modulated by a sine), one per octave from
C1 to C7, each played over the six semitones either side of its root. The family sets the patch: the
modulator's ratio to the carrier, the modulation index and how it moves (a piano's brightness decays, a
brass note brightens as it swells), the amplitude envelope and, for sustained families, a loop over
whole periods of the steady tone with the synth's vibrato. Each program draws its own variation of its
family's patch from a seeded generator, so two programs of a family differ as GM presets do.

The file is written once into ``data/soundfonts/`` when a run names :data:`FM_SOUNDFONT` (``render.soundfont``
or ``analysis.transfer[].soundfont``) and read like any SoundFont after that. It is meant for training
and testing a timbre space on FM timbres other than those of the one FM GM bank Debian ships (the OPL3
bank), not as a musical instrument.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaelib.config import resolve_path
from vaelib.data.sf2_bank import (
    ATTACK_REGION_S,
    DECAY_S,
    FOLDER,
    RENDER_BAND_HZ,
    ROOTS,
    SAMPLE_RATE,
    ZONE_UP,
    bank_bytes,
    bank_header,
    ensure_bank,
    loop_periods,
)

__all__ = ["FM_SOUNDFONT", "FM_FOLDER", "FORMAT", "SAMPLE_RATE", "ROOTS", "ZONE_UP", "FmPatch", "fm_patch", "fm_tone",
           "fm_header", "fm_soundfont_bytes", "fm_soundfont_path", "ensure_fm_soundfont"]

FM_SOUNDFONT = "vaelib_fm.sf2"  # the bare name a run gives; written on first use into FM_FOLDER
FM_FOLDER = FOLDER
SEED = 20_240_601
# Written into the file's INFO chunk and checked on every use: a file written by another version of this
# generator (or edited) is written again, so one commit renders one bank on every machine. Bump it with
# any change to what the generator writes.
FORMAT = "vaelib FM GM 2"

# NSynth family -> (modulator ratios to choose from, peak index, steady index, index time constant (s),
# amplitude attack (s), amplitude decay time constant (s) or None when sustained, vibrato depth (cents))
_FAMILY = {
    "keyboard": ((1.0, 2.0), 3.5, 0.8, 0.6, 0.003, 1.2, 0),
    "mallet": ((3.5, 4.0, 2.76), 4.0, 0.0, 0.15, 0.002, 0.6, 0),
    "guitar": ((1.0, 3.0), 5.0, 0.5, 0.3, 0.002, 0.9, 0),
    "bass": ((1.0, 0.5), 2.5, 0.6, 0.4, 0.004, 1.0, 0),
    "organ": ((1.0, 2.0, 3.0), 2.0, 2.0, 1.0, 0.01, None, 0),
    "string": ((1.0,), 0.5, 2.5, 0.25, 0.15, None, 15),
    "brass": ((1.0,), 0.5, 3.5, 0.06, 0.06, None, 8),
    "reed": ((2.0, 3.0), 1.0, 2.5, 0.05, 0.03, None, 5),
    "flute": ((1.0,), 0.3, 0.8, 0.08, 0.06, None, 12),
    "synth_lead": ((1.0, 0.5, 2.0), 7.0, 6.0, 0.1, 0.005, None, 0),
    "vocal": ((1.0,), 0.3, 1.0, 0.1, 0.1, None, 20),
}


@dataclass(frozen=True)
class FmPatch:
    """One program's patch: ``ratio`` (modulator / carrier frequency), the index from ``index_peak`` to
    ``index_steady`` with time constant ``index_tau`` (s), amplitude ``attack`` (s) and ``decay`` (s, None:
    sustained), the synth's ``vibrato`` (cents) and a little breath ``noise`` (flutes)."""

    family: str
    ratio: float
    index_peak: float
    index_steady: float
    index_tau: float
    attack: float
    decay: float | None
    vibrato: int
    noise: float

    @property
    def sustained(self) -> bool:
        return self.decay is None


def fm_patch(program: int, family: str, *, seed: int = SEED) -> FmPatch:
    """The patch of one GM program: its family's, varied by a generator seeded with the program."""
    ratios, peak, steady, tau, attack, decay, vibrato = _FAMILY[family]
    rng = np.random.default_rng([seed, program])
    vary = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731 - one draw, in a fixed order
    ratio = float(ratios[int(rng.integers(len(ratios)))])
    return FmPatch(family=family, ratio=ratio, index_peak=peak * vary(0.7, 1.3), index_steady=steady * vary(0.7, 1.3),
                   index_tau=tau * vary(0.7, 1.4), attack=attack * vary(0.8, 1.5),
                   decay=None if decay is None else decay * vary(0.7, 1.4), vibrato=vibrato,
                   noise=0.03 * vary(0.5, 1.5) if family == "flute" else 0.0)


def _band_limit(patch: FmPatch, root: int) -> float:
    """The index at which the tone's significant sidebands (about index + 1 of them, Carson's rule) reach
    ``RENDER_BAND_HZ`` at the top of the root's zone: higher notes get less modulation, as key scaling does."""
    top = 440.0 * 2.0 ** ((root + ZONE_UP - 69) / 12)
    return max(0.0, (RENDER_BAND_HZ / top - 1.0) / patch.ratio - 1.0)


def fm_tone(patch: FmPatch, root: int, *, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, int, int]:
    """One sample of a patch at MIDI note ``root``: int16 samples, and the loop's start and end (0, 0:
    none). A sustained tone's loop is a whole number of periods of its steady state, which the tone
    reaches at the loop's start: the frequency is nudged (by under a cent) so that the periods fit samples.
    The index is scaled down where its sidebands would pass ``RENDER_BAND_HZ`` (see ``_band_limit``)."""
    f0 = 440.0 * 2.0 ** ((root - 69) / 12)
    rng = np.random.default_rng([SEED, root, int(patch.ratio * 100), int(patch.index_peak * 1000)])
    if patch.sustained:
        start = int(ATTACK_REGION_S * sample_rate)
        periods = loop_periods(f0, patch.ratio)
        loop = round(periods * sample_rate / f0)
        f0 = periods * sample_rate / loop
        n = start + loop + 64  # the synth reads past the loop end: the tone goes on
    else:
        start = loop = 0
        n = int(DECAY_S * sample_rate)
    t = np.arange(n) / sample_rate
    settle = np.exp(-t / patch.index_tau)
    if patch.sustained:  # settled exactly at the loop's start, without a step: periodic from there on
        at_loop = np.exp(-start / sample_rate / patch.index_tau)
        settle = np.clip((settle - at_loop) / (1.0 - at_loop), 0.0, None)
    index = patch.index_steady + (patch.index_peak - patch.index_steady) * settle
    index *= min(1.0, _band_limit(patch, root) / max(patch.index_peak, patch.index_steady, 1e-9))
    amp = np.minimum(t / patch.attack, 1.0)
    if not patch.sustained:
        amp *= np.exp(-t / patch.decay)
    # integer ratios keep the tone harmonic; the mallets' inharmonic ones are only ever played unlooped
    tone = np.sin(2 * np.pi * f0 * t + index * np.sin(2 * np.pi * patch.ratio * f0 * t)) * amp
    if patch.noise:
        tone[:start or n] += patch.noise * amp[:start or n] * rng.standard_normal(start or n)
    pcm = np.round(np.clip(tone * 0.8, -1, 1) * 32767).astype(np.int16)
    return pcm, start, start + loop


def fm_soundfont_bytes(*, seed: int = SEED) -> bytes:
    """The SoundFont 2 file: one preset (bank 0, its GM program) and one instrument per program of the
    family table, one sample per root of ``ROOTS`` (``vaelib.data.sf2_bank``)."""
    return bank_bytes(lambda program, family: fm_patch(program, family, seed=seed), fm_tone, fmt=FORMAT, seed=seed,
                      instrument="fm", preset="FM")


def fm_header(*, seed: int = SEED) -> bytes:
    """The first bytes of the file: the RIFF header (its size left 0) and the INFO chunk, which names the
    generator's format and seed."""
    return bank_header(FORMAT, seed)


def fm_soundfont_path() -> Path:
    """Where the project's FM bank is written and looked for: ``data/soundfonts/vaelib_fm.sf2`` in the project."""
    return resolve_path(FM_FOLDER) / FM_SOUNDFONT


def ensure_fm_soundfont() -> Path:
    """``data/soundfonts/vaelib_fm.sf2``, written (atomically) when it is not there or was written by another
    version of the generator.

    Raises
    ------
    DataError
        The folder cannot take the file (read-only, a file in its way, the disk full).
    """
    return ensure_bank(fm_soundfont_path(), fm_header(), lambda: fm_soundfont_bytes(),
                       what="the project's FM SoundFont")
