"""vaelib.data.nsynth: the real NSynth schema, filters, splits and wav decoding."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import struct
import warnings

import numpy as np
import pytest
import soundfile as sf
from conftest import entry, sine

from vaelib.config import NSYNTH_FAMILIES, DataConfig
from vaelib.data import nsynth as dataset_mod
from vaelib.data.nsynth import (
    INT_FIELDS,
    SCHEMA_FIELDS,
    filter_examples,
    load_dataset,
    read_examples,
    read_wav,
    split_by_instrument,
)
from vaelib.exceptions import DataError, ParameterError

VALID_JSON = "valid-acoustic-subset.examples.json"
TEST_JSON = "test-acoustic-subset.examples.json"


@pytest.fixture
def real_valid(fixtures_dir, tmp_path):
    """The real NSynth-valid subset as a split folder, with wavs written for three of its keys."""
    folder = tmp_path / "nsynth-valid"
    (folder / "audio").mkdir(parents=True)
    shutil.copy(fixtures_dir / VALID_JSON, folder / "examples.json")
    for key, pitch in [("keyboard_acoustic_004-060-025", 60), ("brass_acoustic_016-062-127", 62),
                       ("flute_acoustic_002-075-127", 75)]:
        sf.write(folder / "audio" / f"{key}.wav", sine(440 * 2 ** ((pitch - 69) / 12)), 16000, subtype="PCM_16")
    return folder


def test_read_real_schema_ints_typed_as_ints(real_valid):
    raw = json.loads((real_valid / "examples.json").read_text())
    assert isinstance(raw["keyboard_acoustic_004-060-025"]["pitch"], float)  # the quirk under test
    df = read_examples(real_valid)
    assert len(df) == len(raw) == 5124
    assert list(df.columns) == list(SCHEMA_FIELDS) + ["path"]
    for f in INT_FIELDS:
        assert df[f].dtype == np.int64, f
    assert df["note_str"].is_monotonic_increasing and df["note_str"].is_unique
    row = df.set_index("note_str").loc["keyboard_acoustic_004-060-025"]
    assert (row["pitch"], row["velocity"], row["sample_rate"], row["instrument_family"]) == (60, 25, 16000, 4)
    assert row["instrument"] == 327 and row["note"] == 278915
    assert row["qualities"] == [0, 1, 0, 0, 0, 0, 0, 0, 1, 0] and row["qualities_str"] == ["dark", "reverb"]
    assert all(isinstance(q, int) for q in row["qualities"])
    assert row["path"] == str(real_valid / "audio" / "keyboard_acoustic_004-060-025.wav")
    assert (df["qualities_str"].map(len) == 0).sum() == 1061  # empty lists kept, not refused
    assert df["instrument_str"].nunique() == 26
    assert set(df["instrument_family_str"]) == {"brass", "flute", "guitar", "keyboard", "mallet", "reed",
                                                "string", "vocal"}
    assert (df["instrument_family_str"] == df["instrument_family"].map(lambda i: NSYNTH_FAMILIES[i])).all()


def test_read_real_test_subset(fixtures_dir, tmp_path):
    (tmp_path / "t").mkdir()
    shutil.copy(fixtures_dir / TEST_JSON, tmp_path / "t" / "examples.json")
    df = read_examples(tmp_path / "t")
    assert len(df) == 1689 and df["instrument_str"].nunique() == 26
    assert df["pitch"].dtype == np.int64


def test_pitch_range_drops_are_counted_and_logged(real_valid, caplog):
    df = read_examples(real_valid)
    with caplog.at_level(logging.WARNING, logger="vaelib.data.nsynth"):
        kept, dropped = filter_examples(df)
    assert dropped == {"pitch_range": 22}
    assert len(kept) == 5124 - 22 and kept["pitch"].between(21, 108).all()
    assert df["pitch"].max() == 120
    assert any("pitch_range dropped 22" in r.getMessage() and "21-108" in r.getMessage() for r in caplog.records)


def test_filters_each_count(real_valid):
    df = read_examples(real_valid)
    kept, dropped = filter_examples(df, families=("brass", "flute"), pitch_min=0, pitch_max=127)
    assert set(kept["instrument_family_str"]) == {"brass", "flute"}
    assert len(kept) == 886 + 155 and dropped == {"pitch_range": 0, "families": 5124 - 886 - 155}
    kept, _ = filter_examples(df, velocities=(25, 127))
    assert set(kept["velocity"]) == {25, 127}
    kept, dropped = filter_examples(df, instruments=("keyboard_acoustic_004",), pitch_min=60, pitch_max=72)
    assert set(kept["instrument_str"]) == {"keyboard_acoustic_004"} and kept["pitch"].between(60, 72).all()
    assert dropped["pitch_range"] + dropped["instruments"] == 5124 - len(kept)
    kept, dropped = filter_examples(df, sources=("electronic",))
    assert kept.empty and dropped["sources"] == 5124 - 22


def test_instrument_disjoint_split_from_seed(real_valid):
    cfg = DataConfig(root=str(real_valid), valid_fraction=0.125, test_fraction=0.25)
    df = load_dataset(cfg, seed=0)
    assert set(df["split"]) == {"train", "valid", "test"}
    assert len(df) == 5124 - 22
    per_inst = df.groupby("instrument_str")["split"].nunique()
    assert (per_inst == 1).all(), "an instrument appears in two splits"
    fam_train = set(df.loc[df["split"] == "train", "instrument_family_str"])
    assert fam_train == set(df["instrument_family_str"]), "a family is missing from train"
    again = load_dataset(cfg, seed=0)
    assert again["split"].tolist() == df["split"].tolist()
    other = load_dataset(cfg, seed=1)
    assign = lambda d: d.groupby("instrument_str")["split"].first().to_dict()  # noqa: E731
    assert assign(other) != assign(df)


def test_split_keeps_every_family_in_train_with_tiny_families():
    import pandas as pd

    rows = [{"instrument_str": f"{fam}_acoustic_{i:03d}", "instrument_family_str": fam}
            for fam, n in [("vocal", 1), ("flute", 2), ("brass", 3), ("string", 10)] for i in range(n)]
    df = pd.DataFrame(rows)
    for seed in range(20):
        split = split_by_instrument(df, seed=seed, valid_fraction=0.3, test_fraction=0.4)
        train_fams = set(df.loc[split == "train", "instrument_family_str"])
        assert train_fams == {"vocal", "flute", "brass", "string"}
    assert (split == "test").sum() == 4 + 1  # round(10*0.4) + round(3*0.4)


def test_nsynth_own_split_folders(fixtures_dir, tmp_path, make_split):
    root = tmp_path / "root"
    for split, src in [("valid", VALID_JSON), ("test", TEST_JSON)]:
        (root / f"nsynth-{split}").mkdir(parents=True)
        shutil.copy(fixtures_dir / src, root / f"nsynth-{split}" / "examples.json")
    train = make_split({k: entry(k) for k in ["string_acoustic_000-060-075", "string_acoustic_000-062-075"]},
                       name="root/nsynth-train", wav=False)
    assert train == root / "nsynth-train"
    df = load_dataset(DataConfig(root=str(root)), seed=0)
    counts = df["split"].value_counts().to_dict()
    # 22 valid and 6 test entries lie outside the default 21-108 pitch range
    assert counts == {"valid": 5124 - 22, "test": 1689 - 6, "train": 2}
    assert (df.loc[df["split"] == "test", "path"].str.contains("/nsynth-test/audio/")).all()
    sub = load_dataset(DataConfig(root=str(root), max_notes=100), seed=3)
    assert sub["split"].value_counts().to_dict() == {"valid": 100, "test": 100, "train": 2}
    assert sub.equals(load_dataset(DataConfig(root=str(root), max_notes=100), seed=3))


def _sources_split(make_split, *, name: str = "sources"):
    """Three SoundFonts x 3 families x 3 instruments x 2 pitches, named and recorded as a vaelib render does."""
    entries = {}
    for font, prefix in [("A.sf2", "a"), ("B.sf2", "b"), ("C.sf2", "c")]:
        for prog, fam in [(0, "keyboard"), (40, "string"), (56, "brass")]:
            for i in range(3):
                for pitch in (60, 64):
                    plain = f"{fam}_acoustic_{i:03d}-{pitch:03d}-100"
                    key = f"{prefix}_{plain}"
                    entries[key] = entry(plain, note_str=key, instrument_str=key.rsplit("-", 2)[0], soundfont=font,
                                         program=prog + i)
    return make_split(entries, name=name, wav=False)


def test_test_soundfonts_hold_out_exactly_their_notes(make_split):
    root = _sources_split(make_split)
    base = DataConfig(root=str(root), valid_fraction=0.2, test_fraction=0.34)
    df = load_dataset(dataclasses.replace(base, test_soundfonts=("C.sf2",)), seed=0)
    assert list(df.columns[-4:]) == ["soundfont", "program", "path", "split"]
    held = df["soundfont"] == "C.sf2"
    assert (df.loc[held, "split"] == "test").all() and held.sum() == 18
    # the other sources are split by instrument among themselves, as without a held-out SoundFont
    rest = df[~held]
    assert set(rest["split"]) == {"train", "valid", "test"}
    assert (rest.groupby("instrument_str")["split"].nunique() == 1).all()
    assert (rest.groupby("instrument_family_str")["split"].apply(lambda s: (s == "test").sum()) == 2 * 2).all()
    # two held out: only the third trains
    two = load_dataset(dataclasses.replace(base, test_soundfonts=("B.sf2", "C.sf2"), test_fraction=0.0), seed=0)
    assert set(two.loc[two["split"] != "test", "soundfont"]) == {"A.sf2"}
    assert set(two.loc[two["soundfont"] != "A.sf2", "split"]) == {"test"}
    # without it nothing changes: the columns are read, the split is by instrument over every source
    plain = load_dataset(base, seed=0)
    assert set(plain.loc[plain["soundfont"] == "C.sf2", "split"]) == {"train", "valid", "test"}


def test_split_by_program_holds_a_program_out_of_every_soundfont(make_split):
    root = _sources_split(make_split)
    base = DataConfig(root=str(root), valid_fraction=0.2, test_fraction=0.34, split_by="program")
    df = load_dataset(base, seed=0)
    # each program is one split in all three banks; every family keeps one in train, one in valid, one in test
    assert (df.groupby("program")["split"].nunique() == 1).all()
    assert df.groupby("program")["soundfont"].nunique().eq(3).all()
    per_family = df.drop_duplicates("program").groupby("instrument_family_str")["split"].apply(sorted)
    assert per_family.tolist() == [["test", "train", "valid"]] * 3
    # a held-out SoundFont still takes all its notes to test; the rest is split by program
    held = load_dataset(dataclasses.replace(base, test_soundfonts=("C.sf2",)), seed=0)
    rest = held[held["soundfont"] != "C.sf2"]
    assert (rest.groupby("program")["split"].nunique() == 1).all() and set(rest["split"]) == {"train", "valid", "test"}
    assert (held.loc[held["soundfont"] == "C.sf2", "split"] == "test").all()
    # NSynth's own metadata records no program: refused with what to set instead
    with pytest.raises(ParameterError, match="data.split_by 'program'"):
        split_by_instrument(df.drop(columns="program"), seed=0, valid_fraction=0.2, test_fraction=0.34,
                            by="program")


def test_test_soundfonts_must_name_a_source(make_split, tmp_path, fixtures_dir):
    root = _sources_split(make_split)
    with pytest.raises(ParameterError, match=r"data.test_soundfonts: \['D.sf2'\] is not a source of .*"
                                             r"\(its sources: \['A.sf2', 'B.sf2', 'C.sf2'\]\)"):
        load_dataset(DataConfig(root=str(root), test_soundfonts=("D.sf2",)))
    with pytest.raises(ParameterError, match="every note of .* comes from them"):
        load_dataset(DataConfig(root=str(root), test_soundfonts=("A.sf2", "B.sf2", "C.sf2")))
    # a dataset that records no source (NSynth's own) cannot hold one out
    real = tmp_path / "real"
    real.mkdir()
    shutil.copy(fixtures_dir / VALID_JSON, real / "examples.json")
    with pytest.raises(ParameterError, match="records no `soundfont` per note"):
        load_dataset(DataConfig(root=str(real), test_soundfonts=("A.sf2",)))
    assert "soundfont" not in load_dataset(DataConfig(root=str(real))).columns  # NSynth's columns only


def test_a_held_out_soundfont_needs_instruments_of_its_own(make_split):
    entries = {k: entry(k, soundfont=font, program=0) for k, font in
               [("keyboard_acoustic_000-060-100", "A.sf2"), ("keyboard_acoustic_000-064-100", "B.sf2"),
                ("keyboard_acoustic_001-060-100", "A.sf2")]}
    root = make_split(entries, wav=False)
    with pytest.raises(DataError, match=r"instrument\(s\) \['keyboard_acoustic_000'\] have notes from a held-out"):
        load_dataset(DataConfig(root=str(root), test_soundfonts=("B.sf2",)))


def test_source_fields_are_checked(make_split):
    bad = make_split({"keyboard_acoustic_000-060-100": entry("keyboard_acoustic_000-060-100", program=200)},
                     wav=False)
    with pytest.raises(DataError, match=r"field 'program': 200 is not a GM program"):
        read_examples(bad)


def test_max_notes_per_split(real_valid):
    df = load_dataset(DataConfig(root=str(real_valid), max_notes=50), seed=0)
    assert df["split"].value_counts().to_dict() == {"train": 50, "valid": 50, "test": 50}


def test_read_wav_of_real_keys(real_valid):
    df = read_examples(real_valid).set_index("note_str")
    audio, report = read_wav(df.loc["flute_acoustic_002-075-127", "path"])
    assert audio.shape == (64000,) and audio.dtype == np.float32
    assert 0.45 < np.abs(audio).max() <= 0.5 + 1e-3
    assert report.files == [] and report.padded == report.cut == report.resampled == report.downmixed == 0
    # the sine's frequency survives decoding: FFT peak at 622.3 Hz (MIDI 75)
    spec = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spec) * 16000 / len(audio) - 622.25) < 1.0


def test_read_wav_fixes_are_counted(tmp_path):
    short = tmp_path / "short.wav"
    sf.write(short, sine(440, seconds=3.0), 16000, subtype="PCM_16")
    audio, report = read_wav(short)
    assert audio.shape == (64000,) and report.padded == 1 and report.files == [str(short)]
    assert np.all(audio[48000:] == 0) and np.abs(audio[:48000]).max() > 0.4
    long = tmp_path / "long.wav"
    sf.write(long, sine(440, seconds=5.0), 16000, subtype="PCM_16")
    audio, report = read_wav(long)
    assert audio.shape == (64000,) and report.cut == 1 and report.padded == 0


@pytest.mark.parametrize(("subtype", "channels", "fmt"), [("PCM_16", 1, "WAV"), ("PCM_16", 2, "WAV"),
                                                          ("FLOAT", 1, "WAV"), ("PCM_24", 1, "WAV"),
                                                          ("PCM_16", 1, "W64")])
def test_read_wav_matches_libsndfile(tmp_path, subtype, channels, fmt):
    # the int16 path and the float path give libsndfile's own float numbers
    x = np.random.default_rng(1).uniform(-1, 1, (64000, channels)).astype(np.float32)
    path = tmp_path / "x.wav"
    sf.write(path, x, 16000, subtype=subtype, format=fmt)
    ref = sf.read(path, dtype="float32", always_2d=True)[0].mean(axis=1)
    if channels > 1:
        with pytest.warns(UserWarning, match="downmixed"):
            audio, _ = read_wav(path)
    else:
        audio, _ = read_wav(path)
    np.testing.assert_array_equal(audio, ref.astype(np.float32))


@pytest.mark.parametrize(("subtype", "channels", "seconds", "rate"), [
    ("PCM_16", 1, 3.0, 16000), ("PCM_16", 1, 5.0, 16000), ("PCM_16", 2, 4.0, 16000), ("FLOAT", 1, 3.0, 16000),
    ("PCM_16", 1, 3.0, 22050)])
def test_read_wav_into_a_row_of_a_batch(tmp_path, subtype, channels, seconds, rate):
    # decoding into a dirty row gives what a fresh decode gives: the tail past a short file is zeroed
    x = np.random.default_rng(2).uniform(-1, 1, (int(rate * seconds), channels)).astype(np.float32)
    path = tmp_path / "x.wav"
    sf.write(path, x, rate, subtype=subtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stereo file warns; checked elsewhere
        fresh, report = read_wav(path)
        rows = np.full((3, 64000), 7.0, np.float32)
        got, report_out = read_wav(path, out=rows[1])
    assert np.shares_memory(got, rows) and report_out == report
    np.testing.assert_array_equal(rows[1], fresh)
    assert np.all(rows[[0, 2]] == 7.0), "neighbouring rows were written"
    with pytest.raises(ParameterError, match=r"out: expected shape \(64000,\)"):
        read_wav(path, out=rows[:, :100])


def _riff(*chunks: tuple[bytes, bytes]) -> bytes:
    body = b"".join(cid + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2) for cid, data in chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


def _fmt(tag=1, channels=1, rate=16000, bits=16, extra=b"") -> tuple[bytes, bytes]:
    align = channels * bits // 8
    return b"fmt ", struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits) + extra


@pytest.mark.parametrize(("n", "fmt_extra"), [(64000, b""), (48000, b""), (80000, b""), (64000, b"\0\0")])
def test_canonical_wav_read_without_libsndfile_equals_libsndfile(tmp_path, monkeypatch, n, fmt_extra):
    # NSynth's format is parsed directly (chunks before and after the data, an odd-length chunk's pad
    # byte skipped, an 18-byte fmt with cbSize); the numbers are libsndfile's, bit for bit, and so is
    # the pad/cut count.
    pcm = np.random.default_rng(3).integers(-32768, 32768, n).astype("<i2")
    path = tmp_path / "x.wav"
    path.write_bytes(_riff((b"LIST", b"odd"), _fmt(extra=fmt_extra), (b"fact", b"\1\0\0\0"),
                           (b"data", pcm.tobytes()), (b"LIST", b"INFOtail")))
    ref = sf.read(path, dtype="float32")[0]
    calls = []
    monkeypatch.setattr(dataset_mod.sf, "SoundFile", lambda *a, **k: calls.append(a) or pytest.fail("libsndfile"))
    out = np.full(64000, 7.0, np.float32)
    audio, report = read_wav(path, out=out)
    assert calls == [] and audio is out
    m = min(n, 64000)
    np.testing.assert_array_equal(audio[:m], ref[:m])
    assert np.all(audio[m:] == 0.0)
    assert (report.padded, report.cut) == (int(n < 64000), int(n > 64000))
    assert report.files == ([] if n == 64000 else [str(path)])


@pytest.mark.parametrize("case", ["stereo", "rate", "float", "extensible", "truncated", "no_fmt", "rifx",
                                  "two_data", "garbage_chunk", "never_closed", "long"])
def test_other_wavs_go_to_libsndfile(tmp_path, case):
    # anything but plainly complete 16-bit mono PCM at the asked rate is left to libsndfile, which
    # reads it (or refuses it, or repairs it) as before: the direct parser never guesses
    pcm = np.arange(-2000, 2000, dtype="<i2")
    chunks = {"stereo": [_fmt(channels=2), (b"data", pcm.tobytes())],
              "rate": [_fmt(rate=22050), (b"data", pcm.tobytes())],
              "float": [_fmt(tag=3, bits=32), (b"data", (pcm / 32768.0).astype("<f4").tobytes())],
              "no_fmt": [(b"data", pcm.tobytes()), _fmt()],
              "two_data": [_fmt(), (b"data", pcm.tobytes()), (b"data", pcm.tobytes())],
              "garbage_chunk": [(b"\0\0\0\0", b""), _fmt(), (b"data", pcm.tobytes())]}.get(case)
    path = tmp_path / "x.wav"
    if case == "never_closed":
        # a writer killed before close() leaves RIFF size 8 and data size 0 with the samples after them:
        # libsndfile takes the rest of the file as the data, and so must we (not silence)
        path.write_bytes(_riff(_fmt(), (b"data", b""))[:4] + struct.pack("<I", 8)
                         + _riff(_fmt(), (b"data", b""))[8:] + pcm.tobytes())
        audio, report = read_wav(path)
        assert dataset_mod._read_canonical_wav(path, 16000, np.zeros(64000, np.float32)) is None
        np.testing.assert_array_equal(audio[:4000], pcm / np.float32(32768.0))
        assert report.padded == 1
        return
    if case == "long":  # 10 s: well past what the direct reader reads; libsndfile reads 4 s of it
        sf.write(path, np.tile(pcm, 40) / 32768.0, 16000, subtype="PCM_16")
        assert dataset_mod._read_canonical_wav(path, 16000, np.zeros(64000, np.float32)) is None
        audio, report = read_wav(path)
        np.testing.assert_array_equal(audio, np.tile(pcm, 16) / np.float32(32768.0))
        assert report.cut == 1
        return
    if case == "extensible":
        sf.write(path, pcm / 32768.0, 16000, subtype="PCM_16", format="WAVEX")
    elif case == "truncated":
        path.write_bytes(_riff(_fmt(), (b"data", pcm.tobytes()))[:-1000])
    elif case == "rifx":
        path.write_bytes(b"RIFX" + _riff(_fmt(), (b"data", pcm.tobytes()))[4:])
    else:
        path.write_bytes(_riff(*chunks))
    assert dataset_mod._read_canonical_wav(path, 16000, np.zeros(64000, np.float32)) is None
    if case in ("no_fmt", "rifx", "two_data", "garbage_chunk"):  # libsndfile's verdict, with the file's name
        with pytest.raises(DataError, match=rf"{path.name}: unreadable wav"):
            read_wav(path)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stereo, the other rate and the truncated file warn; checked elsewhere
        audio, report = read_wav(path)
    # a file cut short is counted apart from a complete short one
    assert (report.padded, report.truncated) == ((0, 1) if case == "truncated" else (1, 0))
    if case in ("extensible", "truncated"):  # libsndfile reads what the file holds
        n = 4000 if case == "extensible" else 3500
        np.testing.assert_array_equal(audio[:n], pcm[:n] / np.float32(32768.0))


def test_read_wav_truncated_pcm16(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, sine(440.0), 16000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:60000])  # header claims 128,000 data bytes
    with pytest.warns(UserWarning, match=r"cut\.wav: truncated"):
        audio, report = read_wav(path)  # libsndfile reads what is there; the rest is zeros, counted as truncated
    assert audio.shape == (64000,) and (report.truncated, report.padded) == (1, 0)
    assert report.truncated_files == report.files == [str(path)]
    assert np.all(audio[29978:] == 0.0) and np.abs(audio[:29978]).max() > 0.4


@pytest.mark.parametrize(("run", "subtype", "channels", "clipped"), [
    (3, "PCM_16", 1, True), (2, "PCM_16", 1, False), (3, "FLOAT", 1, True), (3, "PCM_16", 2, True),
    (0, "FLOAT", 1, True)])
def test_read_wav_counts_clipping(tmp_path, run, subtype, channels, clipped):
    # CLIP_RUN consecutive samples at full scale (either sign, one channel enough) mark a file clipped;
    # fewer are a peak. Float samples beyond full scale (run 0: a stretch at 1.5) are clipped too.
    x = sine(440.0, amp=0.5)
    if run:
        x[1000:1000 + run] = 1.0
        x[5000:5000 + run - 1] = -1.0
    else:
        x[2000:2100] = 1.5
    data = np.stack([x, sine(440.0, amp=0.5)], axis=1) if channels == 2 else x
    path = tmp_path / "x.wav"
    sf.write(path, data, 16000, subtype=subtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stereo file warns; checked elsewhere
        audio, report = read_wav(path)
    assert report.clipped == int(clipped) and report.clipped_files == ([str(path)] if clipped else [])
    assert report.files == ([str(path)] if channels == 2 else [])  # downmixed; clipping is counted, not fixed
    if subtype == "PCM_16" and channels == 1:
        assert dataset_mod._read_canonical_wav(path, 16000, np.zeros(64000, np.float32)).clipped == int(clipped)


def test_read_wav_refuses_non_finite_samples(tmp_path):
    x = sine(440.0)
    x[[10, 20, 30]] = [np.nan, np.inf, -np.inf]
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(dataset_mod.NonFiniteAudioError, match=r"nan\.wav: 3 of 64000 samples are NaN or infinite"):
        read_wav(path)
    assert issubclass(dataset_mod.NonFiniteAudioError, DataError)


def test_read_wav_missing_or_unreadable_named(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.wav: wav file not found"):
        read_wav(tmp_path / "nothere.wav")
    with pytest.raises(DataError, match=r"sub: not a regular file \(a folder, a device or a pipe\)"):
        (tmp_path / "sub").mkdir()
        read_wav(tmp_path / "sub")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a wav at all")
    with pytest.raises(DataError, match=r"junk\.wav: unreadable wav"):
        read_wav(junk)


def test_split_by_at_instrument_keeps_the_run_folders_of_before_it_existed():
    from vaelib.config import PROJECT_ROOT, load_config
    from vaelib.model.checkpoint import checkpoint_dir

    # the folder names these params had (with this cache key) before data.split_by was added (wide.yaml
    # is the default's config of then)
    for params, name in [("wide.yaml", "f70f059bc09e"), ("plain.yaml", "364313432d6b")]:
        cfg = load_config(PROJECT_ROOT / "params" / params)
        assert checkpoint_dir(cfg, "0123456789abcdef").name == name
        by_program = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, split_by="program"))
        assert checkpoint_dir(by_program, "0123456789abcdef").name != name
