"""vaelib.data.render: GM programs rendered note by note into NSynth layout, pitched, non-silent, deterministic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vaelib.config import NSYNTH_FAMILIES, RenderConfig
from vaelib.data.nsynth import SCHEMA_FIELDS, SOURCE_FIELDS, read_examples
from vaelib.data.render import (
    GM_FAMILY_SOURCE,
    default_soundfont,
    instrument_programs,
    note_qualities,
    render_dataset,
)
from vaelib.exceptions import ParameterError

SR = 16000
PITCHED = RenderConfig(programs=(0, 73), pitch_min=48, pitch_max=84, pitch_step=12, velocities=(100,), workers=2)


def hps_f0(audio: np.ndarray, *, sr: int = SR) -> float:
    """f0 in Hz by the harmonic product spectrum (3 harmonics) of the held part (0.25-2.75 s)."""
    seg = audio[sr // 4: int(2.75 * sr)] * np.hanning(int(2.5 * sr))
    n = 4 * len(seg)
    spec = np.abs(np.fft.rfft(seg, n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    hps = spec.copy()
    for k in (2, 3):
        down = spec[::k]
        hps[: len(down)] *= down
        hps[len(down):] = 0
    band = (freqs > 25) & (freqs < 2500)
    return float(freqs[band][np.argmax(hps[band])])


@pytest.fixture(scope="module")
def pitched(tmp_path_factory):
    out = tmp_path_factory.mktemp("render") / "pitched"
    summary = render_dataset(PITCHED, out, show_progress=False)
    return out, summary


def test_family_table_covers_every_family():
    assert len(GM_FAMILY_SOURCE) == 98
    assert {f for f, _ in GM_FAMILY_SOURCE.values()} == set(NSYNTH_FAMILIES)
    assert GM_FAMILY_SOURCE[73] == ("flute", "acoustic") and GM_FAMILY_SOURCE[0] == ("keyboard", "acoustic")
    assert GM_FAMILY_SOURCE[81] == ("synth_lead", "synthetic") and GM_FAMILY_SOURCE[33] == ("bass", "electronic")
    assert default_soundfont().name == "TimGM6mb.sf2"


def test_layout_and_schema(pitched):
    out, summary = pitched
    assert summary["notes"] == 8 and summary["dropped_silent"] == 0 and summary["instruments"] == 2
    raw = json.loads((out / "examples.json").read_text())
    assert sorted(raw) == sorted(p.stem for p in (out / "audio").glob("*.wav"))
    for key, e in raw.items():
        assert set(e) == set(SCHEMA_FIELDS) | set(SOURCE_FIELDS)  # NSynth's fields, plus the source's
        assert e["soundfont"] == "TimGM6mb.sf2" and e["program"] in (0, 73)
        assert e["note_str"] == key == f"{e['instrument_str']}-{e['pitch']:03d}-{e['velocity']:03d}"
        assert isinstance(e["pitch"], int) and e["sample_rate"] == SR
        assert len(e["qualities"]) == 10
    df = read_examples(out)
    assert set(df["instrument_str"]) == {"keyboard_acoustic_000", "flute_acoustic_000"}
    assert df.loc[df["instrument_str"] == "flute_acoustic_000", "instrument_family"].eq(2).all()
    assert df["instrument"].nunique() == 2 and df["note"].is_unique
    info = sf.info(out / "audio" / "flute_acoustic_000-060-100.wav")
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (SR, 1, 64000, "PCM_16")


@pytest.mark.parametrize("instrument", ["flute_acoustic_000", "keyboard_acoustic_000"])
@pytest.mark.parametrize("pitch", [48, 60, 72, 84])
def test_notes_are_pitched(pitched, instrument, pitch):
    out, _ = pitched
    audio, sr = sf.read(out / "audio" / f"{instrument}-{pitch:03d}-100.wav", dtype="float32")
    est = 69 + 12 * np.log2(hps_f0(audio, sr=sr) / 440.0)
    assert abs(est - pitch) < 1.0, f"{instrument} at MIDI {pitch} sounds at {est:.2f}"


def test_notes_are_held_then_released_and_not_silent(pitched):
    out, _ = pitched
    audio, _ = sf.read(out / "audio" / "flute_acoustic_000-060-100.wav", dtype="float32")
    rms = lambda a: float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))  # noqa: E731
    held, late_hold, tail = rms(audio[SR // 2: SR]), rms(audio[int(2.5 * SR): int(2.95 * SR)]), rms(audio[-SR // 2:])
    assert 20 * np.log10(held) > -40, "note is near-silent"
    assert late_hold > 0.5 * held, "the flute should sustain while the key is held (3 s)"
    assert tail < 0.01 * held, "the note should have died away after the release"


def test_render_is_byte_identical(pitched, tmp_path):
    out, _ = pitched
    again = tmp_path / "again"
    render_dataset(RenderConfig(**{**PITCHED.__dict__, "workers": 1}), again, show_progress=False)
    for name in ("examples.json", "render_summary.json"):
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    wavs = sorted(p.name for p in (out / "audio").iterdir())
    assert wavs == sorted(p.name for p in (again / "audio").iterdir())
    for name in wavs:
        assert (out / "audio" / name).read_bytes() == (again / "audio" / name).read_bytes(), name


def test_near_silent_notes_dropped_and_counted(tmp_path):
    # flute 73 at velocity 25 peaks near -28 dBFS, at velocity 127 near -14 dBFS
    cfg = RenderConfig(programs=(73,), pitch_min=60, pitch_max=64, pitch_step=4, velocities=(25, 127),
                       silence_db=-20.0, workers=1)
    summary = render_dataset(cfg, tmp_path / "ds", show_progress=False)
    assert summary["notes"] == 2 and summary["dropped_silent"] == 2
    kept = json.loads((tmp_path / "ds" / "examples.json").read_text())
    assert sorted(kept) == ["flute_acoustic_000-060-127", "flute_acoustic_000-064-127"]
    recorded = json.loads((tmp_path / "ds" / "render_summary.json").read_text())
    assert sorted(recorded["dropped_notes"]) == ["flute_acoustic_000-060-025", "flute_acoustic_000-064-025"]
    assert not (tmp_path / "ds" / "audio" / "flute_acoustic_000-060-025.wav").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary render folder left behind"


def test_instrument_names_count_per_family_and_source(tmp_path):
    cfg = RenderConfig(programs=(26, 24, 25), pitch_min=60, pitch_max=60, velocities=(100,), workers=1)
    render_dataset(cfg, tmp_path / "g", show_progress=False)
    df = read_examples(tmp_path / "g")
    assert sorted(df["instrument_str"]) == ["guitar_acoustic_000", "guitar_acoustic_001", "guitar_electronic_000"]
    assert df.set_index("instrument_str").loc["guitar_electronic_000", "instrument_source"] == 1


def test_note_qualities_envelope_flags():
    t = np.arange(4 * SR) / SR
    tone = np.sin(2 * np.pi * 440 * t)
    plucked = (tone * np.exp(-t * 8)).astype(np.float32)
    sustained = (tone * (t < 3.0) * 0.5).astype(np.float32)
    q_pluck, q_sus = note_qualities(plucked), note_qualities(sustained)
    idx = {"fast_decay": 3, "long_release": 4, "percussive": 7}
    assert q_pluck[idx["fast_decay"]] == 1 and q_pluck[idx["percussive"]] == 1
    assert q_sus[idx["fast_decay"]] == 0 and q_sus[idx["percussive"]] == 0 and q_sus[idx["long_release"]] == 0


def test_smoke_dataset(smoke_dataset):
    summary = json.loads((smoke_dataset / "render_summary.json").read_text())
    assert summary["notes"] == 12 * 7 * 2 and summary["instruments"] == 12
    df = read_examples(smoke_dataset)
    assert set(df["instrument_family_str"]) == {"keyboard", "guitar", "string", "brass"}


def test_any_soundfont_path(pitched, tmp_path):
    # a .sf2 given by path renders like the default one (here: the same file under another name)
    font = tmp_path / "My Font.SF2"
    shutil.copy(default_soundfont(), font)
    cfg = RenderConfig(**{**PITCHED.__dict__, "soundfont": str(font), "programs": (73,)})
    summary = render_dataset(cfg, tmp_path / "ds", show_progress=False)
    assert summary["soundfont"] == str(font) and summary["notes"] == 4
    out, _ = pitched
    for wav in sorted((tmp_path / "ds" / "audio").iterdir()):
        assert wav.read_bytes() == (out / "audio" / wav.name).read_bytes(), wav.name


FLUID = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
TWO = RenderConfig(programs=(0, 24, 73), pitch_min=60, pitch_max=64, pitch_step=4, velocities=(100,), workers=2)


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory, pitched):
    """The bundled SoundFont and a copy of it under another file name, rendered into one dataset."""
    work = tmp_path_factory.mktemp("sources")
    other = work / "Other-GM 2.sf2"
    shutil.copy(default_soundfont(), other)
    cfg = RenderConfig(**{**TWO.__dict__, "soundfont": ("TimGM6mb.sf2", str(other))})
    summary = render_dataset(cfg, work / "ds", show_progress=False)
    return work / "ds", summary, cfg


def test_two_sources_in_one_dataset(two_sources):
    out, summary, cfg = two_sources
    assert summary["notes"] == 2 * 3 * 2 and summary["instruments"] == 6
    assert [Path(p).name for p in summary["soundfonts"]] == ["TimGM6mb.sf2", "Other-GM 2.sf2"]
    assert summary["settings"]["soundfonts"] == ["TimGM6mb.sf2", "Other-GM 2.sf2"]
    raw = json.loads((out / "examples.json").read_text())
    df = read_examples(out)
    assert list(df.columns[-3:]) == ["soundfont", "program", "path"]
    # ids and names unique across the sources; each name carries its source's prefix
    assert df["note"].is_unique and len(raw) == len(df)
    per_instrument = df.groupby("instrument_str")[["instrument", "soundfont", "program"]].nunique()
    assert (per_instrument == 1).all().all() and df["instrument"].nunique() == df["instrument_str"].nunique() == 6
    assert sorted(df.loc[df["soundfont"] == "Other-GM 2.sf2", "instrument_str"].unique()) == [
        "othergm2_flute_acoustic_000", "othergm2_guitar_acoustic_000", "othergm2_keyboard_acoustic_000"]
    names = {(s, p): n for s, p, n in zip(df["soundfont"], df["program"], df["instrument_str"])}
    assert names[("TimGM6mb.sf2", 73)] == "timgm6mb_flute_acoustic_000"
    assert names[("Other-GM 2.sf2", 24)] == "othergm2_guitar_acoustic_000"
    assert set(df["program"]) == {0, 24, 73}
    # every field NSynth has, as NSynth has it; the family and source follow the program in both sources
    assert all(set(e) == set(SCHEMA_FIELDS) | set(SOURCE_FIELDS) for e in raw.values())
    assert all(GM_FAMILY_SOURCE[p] == (f, s) for p, f, s in
               zip(df["program"], df["instrument_family_str"], df["instrument_source_str"]))
    # the names follow from the settings alone
    assert instrument_programs(cfg) == dict(zip(df["instrument_str"], df["program"]))
    # a copy of the same file plays the same notes: the sources differ by name only
    a = sf.read(out / "audio" / "timgm6mb_flute_acoustic_000-060-100.wav")[0]
    b = sf.read(out / "audio" / "othergm2_flute_acoustic_000-060-100.wav")[0]
    assert np.array_equal(a, b)


def test_one_source_keeps_nsynth_names_and_ids(pitched):
    out, summary = pitched
    df = read_examples(out)
    assert set(df["soundfont"]) == {"TimGM6mb.sf2"} and summary["soundfont"].endswith("TimGM6mb.sf2")
    assert dict(zip(df["instrument_str"], df["instrument"])) == {"keyboard_acoustic_000": 0, "flute_acoustic_000": 1}
    assert instrument_programs(PITCHED) == {"keyboard_acoustic_000": 0, "flute_acoustic_000": 73}


def test_sources_that_cannot_be_told_apart_are_refused(tmp_path):
    font = tmp_path / "a" / "GM.sf2"
    font.parent.mkdir()
    shutil.copy(default_soundfont(), font)
    (tmp_path / "b").mkdir()
    shutil.copy(default_soundfont(), tmp_path / "b" / "G-M.sf2")
    cfg = RenderConfig(**{**TWO.__dict__, "soundfont": (str(font), str(tmp_path / "b" / "G-M.sf2"))})
    with pytest.raises(ParameterError, match=r"one instrument prefix \['gm'\]"):
        render_dataset(cfg, tmp_path / "ds", show_progress=False)
    cfg = RenderConfig(**{**TWO.__dict__, "soundfont": (str(font), str(font))})
    with pytest.raises(ParameterError, match=r"\['GM.sf2'\] given twice"):
        render_dataset(cfg, tmp_path / "ds", show_progress=False)
    assert not (tmp_path / "ds").exists()


def test_fluidr3_and_timgm6mb_render_different_notes(tmp_path):
    if not FLUID.is_file():
        pytest.skip(f"{FLUID} is not installed (apt-get install fluid-soundfont-gm)")
    cfg = RenderConfig(programs=(73,), pitch_min=60, pitch_max=60, velocities=(100,), workers=1,
                       soundfont=("TimGM6mb.sf2", "FluidR3_GM.sf2"))
    render_dataset(cfg, tmp_path / "ds", show_progress=False)
    df = read_examples(tmp_path / "ds")
    assert dict(zip(df["instrument_str"], df["soundfont"])) == {
        "timgm6mb_flute_acoustic_000": "TimGM6mb.sf2", "fluidr3gm_flute_acoustic_000": "FluidR3_GM.sf2"}
    a = sf.read(tmp_path / "ds" / "audio" / "timgm6mb_flute_acoustic_000-060-100.wav")[0]
    b = sf.read(tmp_path / "ds" / "audio" / "fluidr3gm_flute_acoustic_000-060-100.wav")[0]
    assert not np.allclose(a, b, atol=1e-3)
    assert abs(69 + 12 * np.log2(hps_f0(b.astype(np.float32)) / 440.0) - 60) < 1.0  # FluidR3's flute, in tune


def test_a_render_is_keyed_by_its_sources(two_sources, tmp_path):
    # data.root rendered from two SoundFonts is not read as the render of another list of them
    from vaelib.config import load_config
    from vaelib.data.prepare import ensure_dataset
    from vaelib.exceptions import DataError

    out, _, cfg = two_sources
    fonts = "[" + ", ".join(repr(f) for f in cfg.soundfont) + "]"
    ensure_dataset(load_config(None, [f"data.root={out}", f"render.soundfont={fonts}"]))  # its own: fine
    with pytest.raises(DataError, match=r"rendered from \['TimGM6mb.sf2', 'Other-GM 2.sf2'\], but render.soundfont "
                                        r"names \['TimGM6mb.sf2'\]: set data.root to another folder"):
        ensure_dataset(load_config(None, [f"data.root={out}"]))
    ensure_dataset(load_config(None, [f"data.root={out}", "render.enabled=false"]))  # read as it is, on purpose


def test_a_render_knows_its_soundfonts_by_their_bytes(tmp_path, caplog):
    # a SoundFont edited in place keeps its name: the folder rendered from it is refused, not read as its render
    import hashlib
    import logging

    from vaelib.config import load_config
    from vaelib.data.prepare import ensure_dataset
    from vaelib.data.render import check_rendered
    from vaelib.exceptions import DataError

    font = tmp_path / "Mine.sf2"
    shutil.copy(default_soundfont(), font)
    cfg = RenderConfig(**{**PITCHED.__dict__, "soundfont": str(font), "programs": (73,), "pitch_step": 36})
    summary = render_dataset(cfg, tmp_path / "ds", show_progress=False)
    assert summary["soundfont_digests"] == {"Mine.sf2": hashlib.sha256(font.read_bytes()).hexdigest()}
    args = {"asked_by": "render.soundfont", "folder_key": "data.root"}
    check_rendered(tmp_path / "ds", cfg, **args)  # the same bytes: its own render
    moved = tmp_path / "elsewhere" / "Mine.sf2"
    moved.parent.mkdir()
    shutil.copy(font, moved)
    check_rendered(tmp_path / "ds", RenderConfig(**{**cfg.__dict__, "soundfont": str(moved)}), **args)  # a copy
    data = bytearray(font.read_bytes())
    data[-100] ^= 0xFF  # one byte of the last sample data changed: still a whole SoundFont, of the same size
    font.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"rendered from another Mine.sf2 than {font} is now \(its bytes differ"
                                        r".*set data.root to another folder"):
        check_rendered(tmp_path / "ds", cfg, **args)
    root = f"data.root={tmp_path / 'ds'}"
    with pytest.raises(DataError, match="its bytes differ.*or set render.enabled: false"):
        ensure_dataset(load_config(None, [root, f"render.soundfont={font}"]))
    ensure_dataset(load_config(None, [root, f"render.soundfont={font}", "render.enabled=false"]))  # on purpose
    # the file gone (data copied to a machine without it): the notes stay readable, by the name, with a warning
    font.unlink()
    with caplog.at_level(logging.WARNING, logger="vaelib.data.render"):
        check_rendered(tmp_path / "ds", cfg, **args)
    assert "Mine.sf2 not found, so its bytes cannot be compared" in caplog.text
    # a summary written before renders recorded digests is judged by the names, as it was
    shutil.copy(moved, font)
    font.write_bytes(bytes(data))
    path = tmp_path / "ds" / "render_summary.json"
    old = json.loads(path.read_text())
    del old["soundfont_digests"]
    path.write_text(json.dumps(old))
    check_rendered(tmp_path / "ds", cfg, **args)


def test_a_soundfont_changed_during_its_render_leaves_no_dataset(tmp_path, monkeypatch):
    import vaelib.data.render as render
    from vaelib.exceptions import DataError

    seen = iter(["before", "after"])
    monkeypatch.setattr(render, "soundfont_digest", lambda path: next(seen))
    cfg = RenderConfig(**{**PITCHED.__dict__, "programs": (73,), "pitch_step": 36, "workers": 1})
    with pytest.raises(DataError, match=r"\['TimGM6mb.sf2'\] changed while the notes were rendered"):
        render_dataset(cfg, tmp_path / "ds", show_progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary sibling


def test_a_soundfont_whose_samples_are_zeros_is_named_and_leaves_no_dataset(tmp_path):
    from vaelib.data.soundfonts import default_soundfont
    from vaelib.exceptions import DataError

    data = bytearray(default_soundfont().read_bytes())
    at = data.index(b"smpl")  # the sample data chunk: its header intact, its samples silenced
    size = int.from_bytes(data[at + 4:at + 8], "little")
    data[at + 8:at + 8 + size] = bytes(size)
    font = tmp_path / "Zeroed.sf2"
    font.write_bytes(bytes(data))
    cfg = RenderConfig(**{**PITCHED.__dict__, "soundfont": (str(font),), "programs": (0, 73), "pitch_step": 36,
                          "workers": 1})
    with pytest.raises(DataError, match=r"Zeroed\.sf2: no note of it was kept: every note rendered from it is "
                                        r"near-silent.*empty or damaged.*; nothing was written to .*ds"):
        render_dataset(cfg, tmp_path / "ds", show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Zeroed.sf2"]  # no folder, no temporary sibling
