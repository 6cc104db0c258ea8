"""The project's FM SoundFont: a valid SF2 that tinysoundfont plays, each family's patch as described."""

from __future__ import annotations

import numpy as np
import pytest
import tinysoundfont

import vaelib.data.fm_soundfont as fm
from vaelib.data.render import GM_FAMILY_SOURCE, SAMPLE_RATE, render_note
from vaelib.data.soundfonts import resolve_soundfont
from vaelib.exceptions import DataError

ONE_PER_FAMILY = {}
for _program, (_family, _) in GM_FAMILY_SOURCE.items():
    ONE_PER_FAMILY.setdefault(_family, _program)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    path = tmp_path_factory.mktemp("fm") / fm.FM_SOUNDFONT
    path.write_bytes(fm.fm_soundfont_bytes())
    s = tinysoundfont.Synth(gain=0, samplerate=SAMPLE_RATE)
    return s, s.sfload(str(path))


def _level_db(audio: np.ndarray, t0: float, t1: float) -> float:
    part = audio[int(t0 * SAMPLE_RATE):int(t1 * SAMPLE_RATE)]
    return float(20 * np.log10(np.sqrt(np.mean(part.astype(np.float64) ** 2)) + 1e-12))


def _partial_at(audio: np.ndarray, pitch: int) -> bool:
    """Whether the held part's spectrum has a partial within 1.5% of the pitch's f0, at most 30 dB under its peak."""
    seg = audio[int(0.6 * SAMPLE_RATE):int(0.6 * SAMPLE_RATE) + 16384] * np.hanning(16384)
    spectrum = 20 * np.log10(np.abs(np.fft.rfft(seg)) + 1e-9)
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    near = slice(int(f0 * 0.985 * 16384 / SAMPLE_RATE), int(f0 * 1.015 * 16384 / SAMPLE_RATE) + 2)
    return bool(spectrum[near].max() > spectrum.max() - 30)


def test_the_bank_is_the_same_bytes_every_time_and_has_a_preset_per_program(synth):
    data = fm.fm_soundfont_bytes()
    assert data == fm.fm_soundfont_bytes() and data[:4] == b"RIFF" and data[8:12] == b"sfbk"
    assert int.from_bytes(data[4:8], "little") == len(data) - 8
    s, sfid = synth
    for program, (family, _) in GM_FAMILY_SOURCE.items():
        assert s.sfpreset_name(sfid, 0, program) == f"FM {family} {program}"
    assert s.sfpreset_name(sfid, 0, 127) is None  # not in the family table: no preset


@pytest.mark.parametrize("family", sorted(fm._FAMILY))
def test_every_family_plays_its_pitch_and_holds_or_decays_as_its_patch_says(synth, family):
    s, sfid = synth
    s.program_select(0, sfid, 0, ONE_PER_FAMILY[family])
    patch = fm.fm_patch(ONE_PER_FAMILY[family], family)
    for pitch in (36, 61, 84):  # roots and between them
        audio = render_note(s, 0, pitch, 100)
        assert 0.1 < np.abs(audio).max() < 1.0
        assert _partial_at(audio, pitch), f"{family} at {pitch}: no partial at its f0"
        held, late = _level_db(audio, 0.5, 0.7), _level_db(audio, 2.4, 2.6)
        if patch.sustained:
            assert abs(late - held) < 3.0
        else:
            assert late < held - 8.0
        assert _level_db(audio, 3.8, 4.0) < held - 40  # released


def test_a_sustained_tone_loops_over_whole_periods():
    patch = fm.fm_patch(40, "string")
    pcm, start, end = fm.fm_tone(patch, 60)
    assert patch.sustained and 0 < start < end < len(pcm) - 8
    # what follows the loop's end is what follows its start: the loop joins without a step
    np.testing.assert_allclose(pcm[end:end + 48].astype(int), pcm[start:start + 48].astype(int), atol=2)
    struck, no_start, no_end = fm.fm_tone(fm.fm_patch(0, "keyboard"), 60)
    assert (no_start, no_end) == (0, 0) and len(struck) == int(fm.DECAY_S * fm.SAMPLE_RATE)


def test_its_bare_name_writes_it_once_into_the_project(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "resolve_path", lambda p: tmp_path / p)
    path = resolve_soundfont(fm.FM_SOUNDFONT)
    assert path == tmp_path / fm.FM_FOLDER / fm.FM_SOUNDFONT and path.stat().st_size > 10_000_000
    stamp = path.stat().st_mtime_ns
    assert resolve_soundfont(fm.FM_SOUNDFONT) == path and path.stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == [fm.FM_SOUNDFONT]  # no temp file left
    good = path.read_bytes()
    assert fm.FORMAT.encode() in good[:100]
    # written by another version of the generator (or cut short): written again, not played
    for stale in (good.replace(fm.FORMAT.encode(), b"vaelib FM GM 0", 1), good[:1000]):
        path.write_bytes(stale)
        assert resolve_soundfont(fm.FM_SOUNDFONT) == path and path.read_bytes() == good


def test_a_folder_that_cannot_take_it_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "resolve_path", lambda p: tmp_path / p)
    (tmp_path / "data").mkdir()
    (tmp_path / fm.FM_FOLDER).write_text("a file where the folder would be")
    with pytest.raises(DataError, match=r"soundfonts/vaelib_fm.sf2: could not write the project's FM SoundFont"):
        resolve_soundfont(fm.FM_SOUNDFONT)


def test_a_render_beside_timgm6mb_plays_the_fm_bank_in_tune(tmp_path, monkeypatch):
    import soundfile as sf

    from vaelib.config import RenderConfig
    from vaelib.data.nsynth import read_examples
    from vaelib.data.render import render_dataset

    monkeypatch.setattr(fm, "resolve_path", lambda p: tmp_path / p)
    cfg = RenderConfig(programs=(24, 73), pitch_min=48, pitch_max=72, pitch_step=12, velocities=(100,), workers=1,
                       soundfont=("TimGM6mb.sf2", fm.FM_SOUNDFONT))
    render_dataset(cfg, tmp_path / "ds", show_progress=False)
    df = read_examples(tmp_path / "ds")
    fm_notes = df[df["soundfont"] == fm.FM_SOUNDFONT]
    assert sorted(fm_notes["instrument_str"].unique()) == ["vaelibfm_flute_acoustic_000",
                                                           "vaelibfm_guitar_acoustic_000"]
    assert len(fm_notes) == 2 * 3
    for row in fm_notes.itertuples():
        audio = sf.read(row.path, dtype="float32")[0]
        assert _partial_at(audio, row.pitch), row.note_str
        sampled = sf.read(row.path.replace("vaelibfm_", "timgm6mb_"), dtype="float32")[0]
        assert not np.allclose(audio, sampled, atol=1e-2)
