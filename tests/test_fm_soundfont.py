"""The project's FM SoundFont: a valid SF2 that tinysoundfont plays, each family's patch as described."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from _banks import ONE_PER_FAMILY, check_family_notes, check_written_once, load_synth, partial_at

import vaelib.data.fm_soundfont as fm
from vaelib.data.render import GM_FAMILY_SOURCE
from vaelib.data.soundfonts import resolve_soundfont
from vaelib.exceptions import DataError


@pytest.fixture(scope="module")
def bank() -> bytes:
    return fm.fm_soundfont_bytes()


@pytest.fixture(scope="module")
def synth(tmp_path_factory, bank):
    return load_synth(tmp_path_factory.mktemp("fm") / fm.FM_SOUNDFONT, bank)


# The digest of FORMAT "vaelib FM GM 2": renders of it record the bytes, so a change of them (a change of the
# writer, vaelib/data/sf2_bank.py, included) fails here until FORMAT is bumped and this digest with it.
FM_DIGEST = "b6032afe3831fa2fb38fec275491de5e0dc17afd9cff5bf35bfb0a53a472393d"


def test_the_bank_is_the_same_bytes_every_time_and_has_a_preset_per_program(synth, bank):
    import hashlib

    assert fm.FORMAT == "vaelib FM GM 2" and hashlib.sha256(bank).hexdigest() == FM_DIGEST
    data = fm.fm_soundfont_bytes()
    assert data == bank and data[:4] == b"RIFF" and data[8:12] == b"sfbk"
    assert int.from_bytes(data[4:8], "little") == len(data) - 8
    s, sfid = synth
    for program, (family, _) in GM_FAMILY_SOURCE.items():
        assert s.sfpreset_name(sfid, 0, program) == f"FM {family} {program}"
    assert s.sfpreset_name(sfid, 0, 127) is None  # not in the family table: no preset


@pytest.mark.parametrize("family", sorted(fm._FAMILY))
def test_every_family_plays_its_pitch_and_holds_or_decays_as_its_patch_says(synth, family):
    check_family_notes(synth, ONE_PER_FAMILY[family], fm.fm_patch(ONE_PER_FAMILY[family], family).sustained)


def test_every_sample_loops_without_a_step_lasts_past_key_up_and_stays_in_the_render_band():
    held_and_released = (3.0 + 0.3) * 2 ** (fm.ZONE_UP / 12)  # s of sample a note at the top of a zone reads
    for program, (family, _) in GM_FAMILY_SOURCE.items():
        patch = fm.fm_patch(program, family)
        for root in fm.ROOTS:
            pcm, start, end = fm.fm_tone(patch, root)
            if patch.sustained:
                assert 0 < start < end < len(pcm) - 8
                # what follows the loop's end is what follows its start (the modulator's phase included)
                step = np.abs(pcm[end:end + 48].astype(int) - pcm[start:start + 48].astype(int)).max()
                assert step <= 2, (program, root, step)
            else:
                assert (start, end) == (0, 0) and len(pcm) >= held_and_released * fm.SAMPLE_RATE
            if family in ("mallet", "flute"):  # inharmonic by design; breath noise
                continue
            # the energy off the harmonics of f0 (of f0 / 2 for a modulator at half the carrier): no aliasing
            seg = pcm[1000:1000 + 8192].astype(np.float64) * np.hanning(8192)
            power = np.abs(np.fft.rfft(seg)) ** 2
            f0 = 440.0 * 2 ** ((root - 69) / 12) / (2 if patch.ratio < 1 else 1)
            harmonic = np.abs(np.fft.rfftfreq(8192, 1 / fm.SAMPLE_RATE) / f0 % 1 - 0.5) > 0.5 - 25 / f0
            assert 10 * np.log10(power[~harmonic].sum() / power.sum() + 1e-30) < -30, (program, root)


def test_its_bare_name_writes_it_once_into_the_project(tmp_path, monkeypatch, bank):
    monkeypatch.setattr(fm, "resolve_path", lambda p: tmp_path / p)
    monkeypatch.setattr(fm, "fm_soundfont_bytes", lambda: bank)
    path = resolve_soundfont(fm.FM_SOUNDFONT)
    assert path == tmp_path / fm.FM_FOLDER / fm.FM_SOUNDFONT and path.stat().st_size > 10_000_000
    assert fm.FORMAT.encode() in path.read_bytes()[:100]
    # written by another version of the generator (or cut short): written again, not played
    check_written_once(fm.FM_SOUNDFONT, path, bank, fm.FORMAT)


def test_a_folder_that_cannot_take_it_is_a_clear_error(tmp_path, monkeypatch, bank):
    monkeypatch.setattr(fm, "resolve_path", lambda p: tmp_path / p)
    monkeypatch.setattr(fm, "fm_soundfont_bytes", lambda: bank)
    (tmp_path / "data").mkdir()
    (tmp_path / fm.FM_FOLDER).write_text("a file where the folder would be")
    with pytest.raises(DataError, match=r"soundfonts/vaelib_fm.sf2: could not write the project's FM SoundFont"):
        resolve_soundfont(fm.FM_SOUNDFONT)


def test_a_render_beside_timgm6mb_plays_the_fm_bank_in_tune(tmp_path, monkeypatch, bank):
    import soundfile as sf

    import vaelib.data.render as render
    from vaelib.config import RenderConfig
    from vaelib.data.nsynth import read_examples
    from vaelib.data.render import check_rendered, render_dataset

    monkeypatch.setattr(fm, "resolve_path", lambda p: tmp_path / p)
    monkeypatch.setattr(fm, "fm_soundfont_bytes", lambda: bank)
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
        assert partial_at(audio, row.pitch), row.note_str
        sampled = sf.read(row.path.replace("vaelibfm_", "timgm6mb_"), dtype="float32")[0]
        assert not np.allclose(audio, sampled, atol=1e-2)
    # the render records the bank's format: one rendered by another version of the generator is refused
    check_rendered(tmp_path / "ds", cfg, asked_by="render.soundfont", folder_key="data.root")
    monkeypatch.setitem(render.GENERATED, fm.FM_SOUNDFONT,
                        dataclasses.replace(render.GENERATED[fm.FM_SOUNDFONT], format="vaelib FM GM 0"))
    with pytest.raises(DataError, match=r"rendered from another version of the project's own vaelib_fm.sf2 "
                                        r"\(vaelib FM GM \d+; this code writes 'vaelib FM GM 0'\)"):
        check_rendered(tmp_path / "ds", cfg, asked_by="render.soundfont", folder_key="data.root")
