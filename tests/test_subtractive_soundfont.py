"""The project's subtractive SoundFont: a valid SF2 that tinysoundfont plays, each family's patch as described."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from _banks import ONE_PER_FAMILY, check_family_notes, check_written_once, load_synth

import vaelib.data.subtractive_soundfont as sub
from vaelib.data import fm_soundfont as fm
from vaelib.data.render import GM_FAMILY_SOURCE, SAMPLE_RATE
from vaelib.data.sf2_bank import ROOTS, ZONE_UP
from vaelib.data.soundfonts import resolve_soundfont
from vaelib.exceptions import DataError


@pytest.fixture(scope="module")
def bank() -> bytes:
    """The bank with one program of each family (the whole one takes 20 s to write; each program is made alone)."""
    return sub.sub_soundfont_bytes(programs=ONE_PER_FAMILY.values())


@pytest.fixture(scope="module")
def synth(tmp_path_factory, bank):
    return load_synth(tmp_path_factory.mktemp("sub") / sub.SUB_SOUNDFONT, bank)


def _centroid_hz(audio: np.ndarray, t0: float, *, n: int, rate: int) -> float:
    seg = audio[int(t0 * rate):int(t0 * rate) + n].astype(np.float64) * np.hanning(n)
    power = np.abs(np.fft.rfft(seg)) ** 2
    return float((np.fft.rfftfreq(n, 1 / rate) * power).sum() / power.sum())


def test_oscillators_have_the_harmonics_of_their_wave():
    k = range(1, 9)
    assert [sub.harmonic_amplitude("saw", i) for i in k] == pytest.approx([1 / i for i in k])
    assert [sub.harmonic_amplitude("square", i) for i in k] == pytest.approx([1, 0, 1 / 3, 0, 1 / 5, 0, 1 / 7, 0],
                                                                             abs=1e-12)
    assert [sub.harmonic_amplitude("triangle", i) for i in k] == pytest.approx([1, 0, 1 / 9, 0, 1 / 25, 0, 1 / 49, 0])
    # a narrow pulse keeps its even harmonics, a quarter pulse loses every fourth
    assert sub.harmonic_amplitude("pulse12", 2) > 0.3
    assert sub.harmonic_amplitude("pulse25", 4) == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="wave: expected one of"):
        sub.harmonic_amplitude("sine", 1)


def test_the_bank_is_the_same_every_time_and_has_a_preset_per_program(synth, bank):
    assert bank[:4] == b"RIFF" and bank[8:12] == b"sfbk" and bank.startswith(sub.sub_header()[8:], 8)
    assert int.from_bytes(bank[4:8], "little") == len(bank) - 8
    for family, program in ONE_PER_FAMILY.items():  # what the bytes are made of, drawn again
        patch = sub.sub_patch(program, family)
        assert patch == sub.sub_patch(program, family)
        for once, again in zip(sub.sub_tone(patch, 48), sub.sub_tone(patch, 48)):
            assert np.array_equal(once, again)
    assert sub.sub_patch(0, "keyboard", seed=1) != sub.sub_patch(0, "keyboard")
    s, sfid = synth
    for program, (family, _) in GM_FAMILY_SOURCE.items():
        kept = ONE_PER_FAMILY[family] == program
        assert s.sfpreset_name(sfid, 0, program) == (f"SUB {family} {program}" if kept else None)


@pytest.mark.parametrize("family", sorted(sub._FAMILY))
def test_every_family_plays_its_pitch_holds_or_decays_and_its_filter_moves_as_its_patch_says(synth, family):
    patch = sub.sub_patch(ONE_PER_FAMILY[family], family)
    check_family_notes(synth, ONE_PER_FAMILY[family], patch.sustained)
    # the cutoff's path shows in the brightness of a low note: a struck note darkens, a brass note opens
    if patch.cutoff_start > 1.5 * patch.cutoff_steady or patch.cutoff_steady > 1.5 * patch.cutoff_start:
        pcm, start, _ = sub.sub_tone(patch, 36)
        late = start / sub.SAMPLE_RATE if patch.sustained else 3 * patch.cutoff_tau  # settled, or nearly
        early, settled = (_centroid_hz(pcm, t, n=1024, rate=sub.SAMPLE_RATE) for t in (0.01, late))
        assert (early > settled) == (patch.cutoff_start > patch.cutoff_steady), (early, settled)


def test_every_sample_loops_without_a_step_lasts_past_key_up_and_stays_in_the_render_band():
    held_and_released = (3.0 + 0.3) * 2 ** (ZONE_UP / 12)
    for family, program in ONE_PER_FAMILY.items():
        patch = sub.sub_patch(program, family)
        for root in ROOTS:
            pcm, start, end = sub.sub_tone(patch, root)
            if patch.sustained:
                assert 0 < start < end < len(pcm) - 8
                step = np.abs(pcm[end:end + 48].astype(int) - pcm[start:start + 48].astype(int)).max()
                assert step <= 2, (program, root, step)
            else:
                assert (start, end) == (0, 0) and len(pcm) >= held_and_released * SAMPLE_RATE
            # no harmonic above the render band at the top of the root's zone, where it is played fastest (the
            # breath of flutes and voices, white noise in the attack, is left out: the loop or the held tone)
            top = fm.RENDER_BAND_HZ * 2 ** (-ZONE_UP / 12)
            tail = pcm[start or 1000:][:8192].astype(np.float64)  # the loop, or the struck tone while loud
            power = np.abs(np.fft.rfft(tail * np.hanning(len(tail)))) ** 2
            above = np.fft.rfftfreq(len(tail), 1 / SAMPLE_RATE) > top * 1.02
            assert 10 * np.log10(power[above].sum() / power.sum() + 1e-30) < -40, (program, root)


def test_its_bare_name_writes_it_once_and_a_stale_one_again(tmp_path, monkeypatch, bank):
    monkeypatch.setattr(sub, "resolve_path", lambda p: tmp_path / p)
    monkeypatch.setattr(sub, "sub_soundfont_bytes", lambda: bank)
    path = resolve_soundfont(sub.SUB_SOUNDFONT)
    assert path == tmp_path / fm.FM_FOLDER / sub.SUB_SOUNDFONT and path.read_bytes() == bank
    check_written_once(sub.SUB_SOUNDFONT, path, bank, sub.FORMAT)
    path.unlink()
    (tmp_path / fm.FM_FOLDER).rmdir()
    (tmp_path / fm.FM_FOLDER).write_text("a file where the folder would be")
    with pytest.raises(DataError, match=r"vaelib_sub.sf2: could not write the project's subtractive SoundFont"):
        resolve_soundfont(sub.SUB_SOUNDFONT)


def test_a_render_records_the_bank_format_and_refuses_another_version(tmp_path, monkeypatch, bank):
    import vaelib.data.render as render
    from vaelib.config import RenderConfig
    from vaelib.data.nsynth import read_examples
    from vaelib.data.render import check_rendered, render_dataset, render_settings

    monkeypatch.setattr(sub, "resolve_path", lambda p: tmp_path / p)
    monkeypatch.setattr(sub, "sub_soundfont_bytes", lambda: bank)
    cfg = RenderConfig(programs=(24, 56), pitch_min=48, pitch_max=60, pitch_step=12, velocities=(100,), workers=1,
                       soundfont=("TimGM6mb.sf2", sub.SUB_SOUNDFONT))
    assert render_settings(cfg)["generated"] == {sub.SUB_SOUNDFONT: sub.FORMAT}
    both = dataclasses.replace(cfg, soundfont=(fm.FM_SOUNDFONT, sub.SUB_SOUNDFONT))
    assert render_settings(both)["generated"] == {fm.FM_SOUNDFONT: fm.FORMAT, sub.SUB_SOUNDFONT: sub.FORMAT}
    assert "generated" not in render_settings(dataclasses.replace(cfg, soundfont=("TimGM6mb.sf2",)))
    render_dataset(cfg, tmp_path / "ds", show_progress=False)
    df = read_examples(tmp_path / "ds")
    assert sorted(df.loc[df["soundfont"] == sub.SUB_SOUNDFONT, "instrument_str"].unique()) == [
        "vaelibsub_brass_acoustic_000", "vaelibsub_guitar_acoustic_000"]
    check_rendered(tmp_path / "ds", cfg, asked_by="render.soundfont", folder_key="data.root")
    monkeypatch.setitem(render.GENERATED, sub.SUB_SOUNDFONT,
                        dataclasses.replace(render.GENERATED[sub.SUB_SOUNDFONT], format="vaelib subtractive GM 0"))
    with pytest.raises(DataError, match=r"another version of the project's own vaelib_sub.sf2 \("
                                        + re.escape(sub.FORMAT) + r"; this code writes 'vaelib subtractive GM 0'\)"):
        check_rendered(tmp_path / "ds", cfg, asked_by="render.soundfont", folder_key="data.root")
