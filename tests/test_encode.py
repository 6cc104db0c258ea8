"""vaelib.analysis.encode and `vaelib encode`: sound files of any format, rate and channel count brought to a
run's features, encoded and placed on its map; the listening map of those sounds (vaelib.analysis.listening.
placed_map and the page the command writes); the files it refuses, and the outputs it never writes half."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from _fixtures_analysis import TinyVAE, trained_smoke

from vaelib.analysis import encode, latent, listening
from vaelib.analysis.latent import Projection, encode_features, latent_matrix, project_pca
from vaelib.cli import main
from vaelib.config import FeatureConfig
from vaelib.data.features import log_mel
from vaelib.exceptions import DataError, ParameterError

CFG = FeatureConfig()  # 16 kHz, 4 s, n_fft 1024, ref 'max'
N = int(CFG.sample_rate * CFG.duration_s)
HOSTILE_FILE = "<img src=x onerror=alert(1)>$ my note.wav"  # a file name is its owner's own text


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


def test_samples_so_loud_that_their_power_overflows_are_named(tmp_path):
    sf.write(tmp_path / "huge.wav", note() * 1e30, 16000, subtype="FLOAT")  # finite, so read_sound keeps it
    sf.write(tmp_path / "fine.wav", note(), 16000, subtype="FLOAT")
    sounds = encode.read_sounds([tmp_path / "fine.wav", tmp_path / "huge.wav"], cfg=CFG)
    with pytest.raises(DataError, match=r"1 of 2 files give non-finite log-mel values.*huge\.wav \(peak [\d.]+e\+29\)"):
        encode.encode_sounds(TinyVAE(latent_dim=4), sounds, cfg=CFG)


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


# --- the listening map of placed sounds, with a tiny trained run -----------------------------------------

@pytest.fixture(scope="module")
def trained(smoke_dataset, tmp_path_factory):
    return trained_smoke(smoke_dataset, tmp_path_factory.mktemp("encode_run"))


@pytest.fixture
def inversions(monkeypatch) -> list[int]:
    """Griffin-Lim replaced by a decaying tone of the same length (1.2 s a note on 2 cores is the real cost,
    which the browser test of the page pays); the list counts the spectrograms inverted."""
    calls: list[int] = []

    def fast(x, *, cfg, n_iter, seed=0, mel_inverse="pinv"):
        calls.append(len(x))
        return np.stack([note(330.0, sr=cfg.sample_rate, seconds=cfg.frames * cfg.hop_length / cfg.sample_rate)
                         for _ in x])

    monkeypatch.setattr(listening, "invert_to_audio", fast)
    return calls


def _mp3(uri: str) -> tuple[np.ndarray, int]:
    assert uri.startswith("data:audio/mpeg;base64,")
    return sf.read(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), dtype="float32")


def _placed_setup(trained, smoke_dataset, tmp_path):
    from vaelib.model.checkpoint import load_model

    model, _ = load_model(trained["checkpoint"])
    run_mu, _ = encode_features(model, trained["cache"].features)
    own = sorted((smoke_dataset / "audio").glob("*.wav"))[:2]  # notes of the run itself
    sf.write(tmp_path / HOSTILE_FILE, np.stack([note(sr=44100), note(sr=44100)], axis=1), 44100)
    sounds = encode.read_sounds([*own, tmp_path / HOSTILE_FILE], cfg=trained["cfg"].features)
    _, mu, _ = encode.encode_sounds(model, sounds, cfg=trained["cfg"].features)
    return model, run_mu, own, sounds, mu


def test_placed_map_fits_the_maps_on_the_run_and_places_the_sounds_by_them(trained, smoke_dataset, tmp_path,
                                                                           monkeypatch, inversions):
    model, run_mu, own, sounds, mu = _placed_setup(trained, smoke_dataset, tmp_path)
    cfg, meta = trained["cfg"], trained["cache"].meta
    # timbre dimensions (the leading 4, as contrast_dims gives them) and a UMAP stand-in with a transform of its
    # own: what is checked is that every map is fitted on the run's notes and the sounds placed by its transform
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, contrast=0.1, contrast_dims=4),
                              analysis=dataclasses.replace(cfg.analysis, umap=True))
    monkeypatch.setattr(latent, "project_umap", lambda x, **_: Projection("umap", 2 * x[:, [1, 0]],
                                                                          lambda z: 2 * z[:, [1, 0]]))
    lmap = listening.placed_map(sounds, mu, model=model, cfg=cfg, meta=meta, run_mu=run_mu)
    assert list(lmap.labels) == ["pca", "umap", "timbre_pca", "timbre_umap"] and lmap.timbre_dims == 4
    projection, points = encode.place_on_map(run_mu, mu, seed=cfg.run.seed)  # the PNG's map and points
    np.testing.assert_allclose(lmap.context["pca"], projection.coords, atol=1e-4)
    np.testing.assert_allclose(lmap.placed.coords["pca"], points, atol=1e-4)
    timbre = project_pca(run_mu[:, :4], seed=cfg.run.seed)
    np.testing.assert_allclose(lmap.placed.coords["timbre_pca"], timbre.transform(mu[:, :4]), atol=1e-4)
    np.testing.assert_allclose(lmap.placed.coords["umap"], 2 * mu[:, [1, 0]], atol=1e-5)
    np.testing.assert_allclose(lmap.placed.coords["timbre_umap"], 2 * mu[:, [1, 0]], atol=1e-5)
    np.testing.assert_allclose(lmap.context["timbre_umap"], 2 * run_mu[:, [1, 0]], atol=1e-5)
    assert lmap.context_family.tolist() == meta["instrument_family_str"].tolist()

    table = lmap.placed.table
    rows, distances = encode.nearest_notes(run_mu, mu)
    assert table["nearest"].tolist() == meta["note_str"].to_numpy()[rows[:, 0]].tolist()
    assert table["nearest"].tolist()[:2] == [p.stem for p in own] and np.all(table["distance"][:2] < 1e-2)
    np.testing.assert_allclose(table["distance"], distances[:, 0], rtol=1e-5)
    assert table.loc[2, ["file", "source_rate", "source_channels"]].tolist() == [HOSTILE_FILE, 44100, 2]
    # each nearest note has sound once, at its place on every map
    unique = list(dict.fromkeys(rows[:, 0].tolist()))
    assert lmap.notes["note_str"].tolist() == meta["note_str"].to_numpy()[unique].tolist()
    np.testing.assert_allclose(lmap.coords["pca"], projection.coords[unique], atol=1e-4)
    assert inversions == [1] * (len(sounds) + len(unique)) and lmap.left_out == 0  # at most two a sound
    # what plays for a sound is its audio as encoded (16 kHz, 4 s), at the peak of every inverted clip
    audio, rate = _mp3(table["original"][2])
    assert rate == CFG.sample_rate and abs(len(audio) - N) < 2000
    assert np.abs(audio).max() == pytest.approx(0.9, abs=0.05)
    reference = log_mel(sounds[2].audio, cfg=CFG)
    assert np.abs(log_mel(audio[:N], cfg=CFG) - reference)[:, :, :120].mean() < 0.05
    assert all(u.startswith("data:audio/mpeg") for u in [*table["reconstruction"], *lmap.notes["original"]])
    assert "3 sound(s) placed" in lmap.text and "3 with sound" in lmap.text


def test_placed_map_past_its_budget_leaves_sounds_without_sound(trained, smoke_dataset, tmp_path, monkeypatch,
                                                                inversions):
    model, run_mu, _, sounds, mu = _placed_setup(trained, smoke_dataset, tmp_path)
    cfg, meta = dataclasses.replace(trained["cfg"], analysis=dataclasses.replace(trained["cfg"].analysis,
                                                                                 umap=False)), trained["cache"].meta
    full = listening.placed_map(sounds, mu, model=model, cfg=cfg, meta=meta, run_mu=run_mu)
    first = full.placed.table.loc[0]
    first_bytes = len(first["original"]) + len(first["reconstruction"]) + int(
        full.notes.loc[0, ["original", "reconstruction"]].str.len().sum())
    # the budget less the reserve holds the first sound and its note exactly
    monkeypatch.setattr(listening, "MAP_PAGE_RESERVE_BYTES", int(cfg.analysis.map_max_mb * 1e6) - first_bytes)
    with pytest.warns(UserWarning, match="2 of 3 sounds left without sound"):
        cut = listening.placed_map(sounds, mu, model=model, cfg=cfg, meta=meta, run_mu=run_mu)
    table = cut.placed.table
    assert cut.left_out == 2 and table["original"].tolist()[1:] == table["reconstruction"].tolist()[1:] == ["", ""]
    assert table["original"][0] == first["original"] and len(cut.notes) == 1 and cut.audio_bytes == first_bytes
    assert len(table) == 3 and cut.placed.coords["pca"].shape == (3, 2)  # every sound is still drawn
    assert "left 2 of them without sound" in cut.text
    with pytest.raises(ParameterError, match="mu: expected shape"):
        listening.placed_map(sounds, mu[:2], model=model, cfg=cfg, meta=meta, run_mu=run_mu)
    with pytest.raises(ParameterError, match="meta: 3 rows"):
        listening.placed_map(sounds, mu, model=model, cfg=cfg, meta=meta.iloc[:3], run_mu=run_mu)


# --- the command line ---------------------------------------------------------------------------------------


def _bokeh_source(page: str, name: str) -> dict:
    """The columns of the page's ColumnDataSource ``name``, read from the Bokeh document in the page."""
    found = re.search(r'<script type="application/json" id="[^"]+">(.*?)</script>', page, re.S)
    assert found, "no Bokeh document in the page"

    def walk(o):
        if isinstance(o, dict):
            if o.get("name") == "ColumnDataSource" and o.get("attributes", {}).get("name") == name:
                yield o
            for v in o.values():
                yield from walk(v)
        elif isinstance(o, list):
            for v in o:
                yield from walk(v)

    source = next(walk(json.loads(html.unescape(found.group(1)))))
    return dict(source["attributes"]["data"]["entries"])


def _args(trained, *rest: str) -> list[str]:
    sets = [x for o in trained["overrides"] for x in ("--set", o)]
    return ["encode", "--params", str(trained["params"]), *sets, "--quiet", *rest]


@pytest.mark.slow
def test_cli_encodes_a_folder_and_places_it(trained, folder, smoke_dataset, tmp_path, capsys, inversions):
    own = next((smoke_dataset / "audio").glob("*.wav"))  # a note of the run itself
    y44 = note(sr=44100)
    sf.write(folder / HOSTILE_FILE, np.stack([y44, 0.5 * y44], axis=1), 44100, subtype="PCM_16")
    out = tmp_path / "res" / "sounds.parquet"
    rc = main(_args(trained, str(folder), str(own), "--out", str(out), "--set", "analysis.umap=false"))
    assert rc == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    table = pd.read_parquet(out)
    assert len(table) == printed["sounds"] == len(encode.find_sounds([folder])) + 1
    assert latent_matrix(table).shape == (len(table), trained["cfg"].model.latent_dim)
    assert Path(printed["map_png"]) == out.with_suffix(".map.png") and out.with_suffix(".map.png").stat().st_size > 5000
    assert printed["checkpoint"] == str(trained["checkpoint"]) and printed["run_notes"] == len(trained["cache"].meta)
    placed = {p["file"]: p for p in printed["placed"]}
    assert placed[own.name]["nearest_note"] == own.stem and placed[own.name]["distance"] < 1e-2

    # the listening map: standalone, every sound on it with its own sound, names as text
    page_path = out.with_suffix(".map.html")
    assert printed["map_html"] == str(page_path) and "map_html_note" not in printed
    page = page_path.read_text()
    assert printed["map_html_bytes"] == len(page.encode()) and printed["map_maps"] == ["pca"]
    assert not re.search(r"<script[^>]*\bsrc=", page) and "<link" not in page
    assert "<img src=x" not in page and html.escape(HOSTILE_FILE, quote=False) in page
    source = _bokeh_source(page, "placed")
    assert source["file"] == table["file"].tolist() and HOSTILE_FILE in source["file"]
    assert source["nearest"] == [p["nearest_note"] for p in printed["placed"]]
    stereo = source["file"].index("stereo_44k.wav")
    assert (source["source_rate"][stereo], source["source_channels"][stereo]) == (44100, 2)
    assert all(uri.startswith("data:audio/mpeg;base64,") and uri in page for uri in source["original"])
    assert printed["map_sounds_with_audio"] == len(table)
    notes = _bokeh_source(page, "notes")
    assert set(notes["note"]["array"] if isinstance(notes["note"], dict) else notes["note"]) == set(source["nearest"])
    assert sum(inversions) == len(table) + len(set(source["nearest"]))  # a sound's and its nearest note's, once


@pytest.mark.slow
def test_cli_refuses_bad_files_and_writes_nothing(trained, folder, tmp_path, capsys):
    (folder / "fake.wav").write_text("I am text")
    sf.write(folder / "silence.wav", np.zeros(32000, np.float32), 16000)
    out = tmp_path / "res" / "sounds.parquet"
    rc = main(_args(trained, str(folder), "--out", str(out)))
    err = capsys.readouterr().err
    assert rc == 2 and "fake.wav" in err and "silence.wav" in err and "vaelib encode: error" in err
    assert not out.exists() and not out.with_suffix(".map.png").exists() and not out.with_suffix(".map.html").exists()
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
    (tmp_path / "page.html").mkdir()
    assert main(_args(trained, str(tmp_path / "a.wav"), "--out", str(tmp_path / "o.parquet"),
                      "--map-html", str(tmp_path / "page.html"))) == 2
    assert "--map-html" in capsys.readouterr().err and not (tmp_path / "o.parquet").exists()
    assert main(_args(trained, str(tmp_path / "nothing_here"), "--out", str(tmp_path / "o.parquet"))) == 2
    assert "nothing_here" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_refuses_outputs_that_would_replace_an_input_or_one_another(trained, tmp_path, capsys, monkeypatch):
    wav = tmp_path / "a.wav"
    sf.write(wav, note(), 16000)
    checkpoint = Path(trained["checkpoint"])
    kept = {p: p.read_bytes() for p in (wav, checkpoint)}
    o = str(tmp_path / "o.parquet")
    for rest, says in ((["--out", str(wav)], "--out .*a.wav is the sound file"),
                       (["--out", o, "--map-html", str(wav)], "--map-html .*a.wav is the sound file"),
                       (["--out", o, "--map", o], "--out and --map both name"),
                       (["--out", o, "--checkpoint", str(checkpoint), "--map", str(checkpoint)],
                        "--map .* is the --checkpoint file")):
        assert main(_args(trained, str(wav), *rest)) == 2
        assert re.search(says, capsys.readouterr().err)
    # relative paths are the current folder's, for the options as for the files
    monkeypatch.chdir(tmp_path)
    assert main(_args(trained, "a.wav", "--out", "a.wav")) == 2
    assert "is the sound file" in capsys.readouterr().err
    assert all(p.read_bytes() == b for p, b in kept.items()) and not (tmp_path / "o.parquet").exists()


def test_cli_without_a_finished_training_says_so(smoke_dataset, tmp_path, capsys):
    from vaelib.config import PROJECT_ROOT

    sf.write(tmp_path / "a.wav", note(), 16000)
    sets = ["--set", f"data.root={smoke_dataset}", "--set", f"features.cache_dir={tmp_path / 'cache'}",
            "--set", f"train.checkpoint_dir={tmp_path / 'none'}"]
    rc = main(["encode", "--params", str(PROJECT_ROOT / "params" / "smoke.yaml"), *sets, "--quiet",
               str(tmp_path / "a.wav"), "--out", str(tmp_path / "o.parquet")])
    assert rc == 2 and "no finished training" in capsys.readouterr().err
