"""vaelib.analysis.encode and `vaelib encode`: sound files of any format, rate and channel count brought to a
run's features, encoded and placed on its map; the files it refuses, and the outputs it never writes half."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from _fixtures_analysis import TinyVAE, trained_smoke

from vaelib.analysis import encode
from vaelib.analysis.latent import latent_matrix
from vaelib.cli import main
from vaelib.config import FeatureConfig
from vaelib.data.features import log_mel
from vaelib.exceptions import DataError, ParameterError

CFG = FeatureConfig()  # 16 kHz, 4 s, n_fft 1024, ref 'max'
N = int(CFG.sample_rate * CFG.duration_s)


def note(freq: float = 262.0, *, sr: int = 16000, seconds: float = 4.0, amp: float = 0.5) -> np.ndarray:
    """A decaying harmonic note."""
    t = np.arange(int(round(sr * seconds))) / sr
    y = sum(amp / k * np.sin(2 * np.pi * freq * k * t) for k in (1, 2, 3)) * np.exp(-1.5 * t)
    return (y / 2).astype(np.float32)


def can_write(fmt: str, subtype: str | None = None) -> bool:
    return fmt in sf.available_formats() and (subtype is None or subtype in sf.available_subtypes(fmt))


@pytest.fixture
def folder(tmp_path) -> Path:
    """Sound files as people have them: rates, channels, bit depths and formats, a subfolder, a hidden file."""
    root = tmp_path / "sounds"
    (root / "more").mkdir(parents=True)
    y44 = note(sr=44100)
    sf.write(root / "stereo_44k.wav", np.stack([y44, 0.5 * y44], axis=1), 44100, subtype="PCM_16")
    sf.write(root / "mono_8k.wav", note(sr=8000, seconds=3.0), 8000, subtype="PCM_16")
    sf.write(root / "deep_24bit.wav", note(sr=48000), 48000, subtype="PCM_24")
    sf.write(root / "more" / "lossless.flac", note(sr=22050, seconds=5.0), 22050, format="FLAC")
    sf.write(root / "more" / "SHOUT.WAV", note(), 16000, subtype="FLOAT")
    sf.write(root / "short.wav", note(seconds=0.3), 16000)  # shorter than a note, longer than a frame: padded
    sf.write(root / "mono_16k.aiff", note(), 16000, format="AIFF", subtype="PCM_16")
    if can_write("OGG", "VORBIS"):
        sf.write(root / "lossy.ogg", note(sr=32000), 32000, format="OGG", subtype="VORBIS")
    if can_write("MP3", "MPEG_LAYER_III"):
        sf.write(root / "lossy.mp3", note(sr=44100), 44100, format="MP3", subtype="MPEG_LAYER_III")
    (root / ".hidden.wav").write_text("ignored")
    (root / "readme.txt").write_text("not looked at: no audio suffix")
    return root


def test_find_sounds_searches_folders_recursively(folder, tmp_path):
    found = encode.find_sounds([folder])
    names = {p.name for p in found}
    assert {"stereo_44k.wav", "mono_8k.wav", "deep_24bit.wav", "lossless.flac", "SHOUT.WAV", "short.wav",
            "mono_16k.aiff"} <= names
    assert ".hidden.wav" not in names and "readme.txt" not in names
    # a file named explicitly is taken whatever its suffix; a repeat is kept once
    assert encode.find_sounds([folder / "readme.txt", folder / "readme.txt"]) == [folder / "readme.txt"]
    with pytest.raises(ParameterError, match="no such file"):
        encode.find_sounds([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ParameterError, match="no audio file"):
        encode.find_sounds([tmp_path / "empty"])


def test_every_format_rate_and_channel_count_reaches_the_features(folder):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sounds = encode.read_sounds([folder], cfg=CFG)
    by_name = {s.name: s for s in sounds}
    assert all(s.audio.shape == (N,) and s.audio.dtype == np.float32 for s in sounds)
    assert by_name["stereo_44k.wav"].source_rate == 44100 and by_name["stereo_44k.wav"].source_channels == 2
    assert by_name["mono_8k.wav"].source_rate == 8000 and by_name["mono_8k.wav"].source_seconds == pytest.approx(3.0)
    assert by_name["deep_24bit.wav"].source_rate == 48000
    assert by_name["lossless.flac"].cut and not by_name["mono_8k.wav"].cut
    assert np.all(by_name["short.wav"].audio[int(0.31 * 16000):] == 0)  # padded with silence
    assert any("longer than features.duration_s" in str(w.message) and "lossless.flac" in str(w.message)
               for w in caught)
    # resampled and downmixed, a file reads as the same note written at the features' rate
    reference = log_mel(note(), cfg=CFG)
    for name in ("stereo_44k.wav", "deep_24bit.wav", "mono_16k.aiff", "SHOUT.WAV"):
        x = log_mel(by_name[name].audio, cfg=CFG)
        assert np.abs(x - reference)[:, :, :120].mean() < 0.02, name  # in [-1, 1]: 0.02 is 0.8 dB


def test_downmix_is_the_mean_of_the_channels(tmp_path):
    left, right = note(), note(440.0)
    sf.write(tmp_path / "lr.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    s = encode.read_sound(tmp_path / "lr.wav", cfg=CFG)
    np.testing.assert_allclose(s.audio, (left + right) / 2, atol=1e-6)


def test_gain_changes_nothing_with_ref_max(tmp_path):
    model = TinyVAE(latent_dim=4)
    sf.write(tmp_path / "loud.wav", note(amp=0.9), 16000, subtype="FLOAT")
    sf.write(tmp_path / "quiet.wav", note(amp=0.009), 16000, subtype="FLOAT")
    sounds = encode.read_sounds([tmp_path / "loud.wav", tmp_path / "quiet.wav"], cfg=CFG)
    _, mu, _ = encode.encode_sounds(model, sounds, cfg=CFG)
    np.testing.assert_allclose(mu[0], mu[1], atol=1e-4)


def test_ref_fixed_says_that_the_level_counts(tmp_path):
    sf.write(tmp_path / "a.wav", note(), 16000)
    with pytest.warns(UserWarning, match="ref is 'fixed'"):
        encode.read_sounds([tmp_path / "a.wav"], cfg=FeatureConfig(ref="fixed"))


@pytest.mark.parametrize("case", ["text", "empty", "silent", "too_short", "silent_start", "nan"])
def test_files_that_cannot_be_placed_are_refused_naming_them(tmp_path, case):
    path = tmp_path / f"{case}.wav"
    if case == "text":
        path.write_text("RIFF? no, a text file named .wav")
        match = "not a readable audio file"
    elif case == "empty":
        path.write_bytes(b"")
        match = "not a readable audio file"
    elif case == "silent":
        sf.write(path, np.zeros(16000, np.float32), 16000)
        match = "digital silence"
    elif case == "too_short":
        sf.write(path, note(seconds=0.05, sr=8000), 8000)  # 400 samples at 8 kHz: 800 at 16 kHz < n_fft 1024
        match = "shorter than one STFT frame"
    elif case == "silent_start":
        audio = np.zeros(6 * 16000, np.float32)
        audio[5 * 16000:] = 0.5  # sound only after the 4 s that are encoded
        sf.write(path, audio, 16000)
        match = "first 4 s"
    else:
        audio = note()
        audio[100] = np.nan
        sf.write(path, audio, 16000, subtype="FLOAT")
        match = "NaN or infinite"
    with pytest.raises(DataError, match=match) as info:
        encode.read_sound(path, cfg=CFG)
    assert str(path) in str(info.value)


def test_read_sounds_names_every_bad_file_at_once(folder):
    (folder / "silent.wav").write_bytes(b"")
    sf.write(folder / "zeros.flac", np.zeros(8000, np.float32), 16000, format="FLAC")
    with pytest.raises(DataError, match=r"2 of \d+ files cannot be placed") as info:
        encode.read_sounds([folder], cfg=CFG)
    assert "silent.wav" in str(info.value) and "zeros.flac" in str(info.value)


def test_bytes_as_uploaded(tmp_path):
    sf.write(tmp_path / "a.flac", note(sr=44100), 44100, format="FLAC")
    from_bytes = encode.read_sound((tmp_path / "a.flac").read_bytes(), cfg=CFG, name="up.flac")
    from_path = encode.read_sound(tmp_path / "a.flac", cfg=CFG)
    assert from_bytes.name == "up.flac" and from_bytes.path == ""
    np.testing.assert_array_equal(from_bytes.audio, from_path.audio)
    with pytest.raises(DataError, match="upload"):
        encode.read_sound(b"junk", cfg=CFG)


def test_table_map_and_nearest_notes(tmp_path):
    model = TinyVAE(latent_dim=4)
    for i, f in enumerate((200.0, 400.0, 800.0)):
        sf.write(tmp_path / f"n{i}.wav", note(f), 16000)
    sounds = encode.read_sounds([tmp_path], cfg=CFG)
    feats, mu, logvar = encode.encode_sounds(model, sounds, cfg=CFG)
    assert feats.shape == (3, 1, 80, 128) and mu.shape == logvar.shape == (3, 4)
    table = encode.sounds_table(sounds, mu, logvar)
    assert list(table.columns[:5]) == ["file", "path", "source_rate", "source_channels", "source_seconds"]
    np.testing.assert_array_equal(latent_matrix(table), mu)
    out = encode.write_sounds_table(table, tmp_path / "out" / "t.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(out), table)
    run_mu = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    projection, points = encode.place_on_map(run_mu, mu)
    assert projection.coords.shape == (20, 2) and points.shape == (3, 2)
    rows, dist = encode.nearest_notes(run_mu, run_mu[[4, 7]], k=2)
    assert rows[:, 0].tolist() == [4, 7] and np.allclose(dist[:, 0], 0) and np.all(dist[:, 1] > 0)
    with pytest.raises(ParameterError):
        encode.place_on_map(run_mu, mu[:, :3])


# --- the command line, with a tiny trained run ----------------------------------------------------------

@pytest.fixture(scope="module")
def trained(smoke_dataset, tmp_path_factory):
    return trained_smoke(smoke_dataset, tmp_path_factory.mktemp("encode_run"))


def _args(trained, *rest: str) -> list[str]:
    sets = [x for o in trained["overrides"] for x in ("--set", o)]
    return ["encode", "--params", str(trained["params"]), *sets, "--quiet", *rest]


@pytest.mark.slow
def test_cli_encodes_a_folder_and_places_it(trained, folder, smoke_dataset, tmp_path, capsys):
    own = next((smoke_dataset / "audio").glob("*.wav"))  # a note of the run itself
    out = tmp_path / "res" / "sounds.parquet"
    rc = main(_args(trained, str(folder), str(own), "--out", str(out)))
    assert rc == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    table = pd.read_parquet(out)
    assert len(table) == printed["sounds"] == len(encode.find_sounds([folder])) + 1
    assert latent_matrix(table).shape == (len(table), trained["cfg"].model.latent_dim)
    assert Path(printed["map_png"]) == out.with_suffix(".map.png") and out.with_suffix(".map.png").stat().st_size > 5000
    assert printed["checkpoint"] == str(trained["checkpoint"]) and printed["run_notes"] == len(trained["cache"].meta)
    placed = {p["file"]: p for p in printed["placed"]}
    assert placed[own.name]["nearest_note"] == own.stem and placed[own.name]["distance"] < 1e-2
    assert printed["map_html"] is None and "listening_map" in printed["map_html_note"]


@pytest.mark.slow
def test_cli_refuses_bad_files_and_writes_nothing(trained, folder, tmp_path, capsys):
    (folder / "fake.wav").write_text("I am text")
    sf.write(folder / "silence.wav", np.zeros(32000, np.float32), 16000)
    out = tmp_path / "res" / "sounds.parquet"
    rc = main(_args(trained, str(folder), "--out", str(out)))
    err = capsys.readouterr().err
    assert rc == 2 and "fake.wav" in err and "silence.wav" in err and "vaelib encode: error" in err
    assert not out.exists() and not out.with_suffix(".map.png").exists()
    assert list(out.parent.iterdir()) == []  # no temporary file left either


@pytest.mark.slow
def test_cli_checks_the_output_before_any_work(trained, tmp_path, capsys, monkeypatch):
    import vaelib.analysis.encode as venc

    monkeypatch.setattr(venc, "read_sounds", lambda *a, **k: pytest.fail("read before the output was checked"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    sf.write(tmp_path / "a.wav", note(), 16000)
    assert main(_args(trained, str(tmp_path / "a.wav"), "--out", str(blocker / "sounds.parquet"))) == 2
    assert "--out" in capsys.readouterr().err
    (tmp_path / "dir.parquet").mkdir()
    assert main(_args(trained, str(tmp_path / "a.wav"), "--out", str(tmp_path / "dir.parquet"))) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(_args(trained, str(tmp_path / "nothing_here"), "--out", str(tmp_path / "o.parquet"))) == 2
    assert "nothing_here" in capsys.readouterr().err


def test_cli_without_a_finished_training_says_so(smoke_dataset, tmp_path, capsys):
    from vaelib.config import PROJECT_ROOT

    sf.write(tmp_path / "a.wav", note(), 16000)
    sets = ["--set", f"data.root={smoke_dataset}", "--set", f"features.cache_dir={tmp_path / 'cache'}",
            "--set", f"train.checkpoint_dir={tmp_path / 'none'}"]
    rc = main(["encode", "--params", str(PROJECT_ROOT / "params" / "smoke.yaml"), *sets, "--quiet",
               str(tmp_path / "a.wav"), "--out", str(tmp_path / "o.parquet")])
    assert rc == 2 and "no finished training" in capsys.readouterr().err
