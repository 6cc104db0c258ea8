"""Bad inputs: each is refused (or fixed with a warning) with a message naming the file or key at fault."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import entry, sine

from vaelib.config import DataConfig, FeatureConfig, RenderConfig
from vaelib.data.cache import build_feature_cache, compute_features, open_feature_cache
from vaelib.data.features import inverse_log_mel, log_mel_batch
from vaelib.data.nsynth import filter_examples, load_dataset, read_examples, read_wav
from vaelib.data.render import render_dataset
from vaelib.exceptions import DataError, ParameterError, VaelibError

KEY = "brass_acoustic_000-060-075"


def test_errors_share_a_root():
    assert issubclass(DataError, VaelibError) and issubclass(ParameterError, VaelibError)


def test_missing_examples_json(tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "examples.json")) + ".*not found"):
        read_examples(tmp_path)


@pytest.mark.parametrize("text", ['{"a": 1', "not json at all", '{"x": }'])
def test_malformed_json(tmp_path, text):
    (tmp_path / "examples.json").write_text(text)
    with pytest.raises(DataError, match="examples.json: malformed JSON"):
        read_examples(tmp_path)


def test_json_not_an_object(tmp_path):
    (tmp_path / "examples.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="expected a JSON object"):
        read_examples(tmp_path)


@pytest.mark.parametrize("missing", ["pitch", "qualities_str", "instrument_family", "note_str"])
def test_entry_missing_a_field(make_split, missing):
    e = entry(KEY)
    del e[missing]
    folder = make_split({KEY: e}, wav=False)
    with pytest.raises(DataError, match=rf"{KEY}.*missing field\(s\) \['{missing}'\]"):
        read_examples(folder)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("pitch", 60.5, "expected an integer"),
        ("pitch", "60", "expected an integer"),
        ("velocity", True, "expected an integer"),
        ("instrument_str", 7, "expected a string"),
        ("qualities", [0, 1], "expected a list of 10"),
        ("qualities_str", "bright", "expected a list of strings"),
        ("instrument_family", 11, "not in 0-10"),
        ("instrument_source", 3, "not in 0-2"),
        ("note_str", "other-060-075", "differs from its key"),
    ],
)
def test_entry_with_wrong_value(make_split, field, value, expected):
    folder = make_split({KEY: entry(KEY, **{field: value})}, wav=False)
    with pytest.raises(DataError, match=rf"{KEY}.*{field}.*{re.escape(expected)}|{KEY}.*{re.escape(expected)}"):
        read_examples(folder)


@pytest.mark.parametrize("bad", ["../evil-060-075", "sub/dir-060-075", "a\\b-060-075", "..", "x..y", ""])
def test_note_str_not_a_plain_file_name(make_split, bad):
    folder = make_split({bad: entry(KEY, note_str=bad)}, wav=False)
    with pytest.raises(DataError, match="not a plain file name"):
        read_examples(folder)


def test_empty_examples(make_split):
    with pytest.raises(DataError, match="holds no notes"):
        read_examples(make_split({}, wav=False))


def test_missing_wav_named(make_split):
    folder = make_split({KEY: entry(KEY)}, wav=False)
    path = read_examples(folder)["path"][0]
    with pytest.raises(DataError, match=re.escape(path) + ": wav file not found"):
        read_wav(path)


def test_missing_wav_named_by_cache(make_split, tmp_path):
    folder = make_split({KEY: entry(KEY)}, wav=False)
    df = read_examples(folder).assign(split="train")
    with pytest.raises(DataError, match=f"{KEY}.wav: wav file not found"):
        build_feature_cache(df, FeatureConfig(cache_dir=str(tmp_path / "cache")), show_progress=False)


def test_unreadable_wav_named(tmp_path):
    bad = tmp_path / "garbage.wav"
    bad.write_bytes(b"RIFF\x00\x00not really a wav" * 10)
    with pytest.raises(DataError, match=re.escape(str(bad)) + ": unreadable wav"):
        read_wav(bad)


def test_other_sample_rate_resampled_with_warning(tmp_path):
    path = tmp_path / "22k.wav"
    sf.write(path, sine(1000.0, sr=22050), 22050, subtype="PCM_16")
    with pytest.warns(UserWarning, match="22050 Hz resampled to 16000 Hz"):
        audio, report = read_wav(path)
    assert audio.shape == (64000,) and report.resampled == 1 and report.padded + report.cut <= 1
    peak_hz = np.argmax(np.abs(np.fft.rfft(audio))) * 16000 / len(audio)
    assert abs(peak_hz - 1000.0) < 2.0  # resampled, not merely relabelled


def test_other_sample_rate_refused_when_resampling_off(tmp_path):
    path = tmp_path / "44k.wav"
    sf.write(path, sine(440.0, sr=44100, seconds=0.5), 44100, subtype="PCM_16")
    with pytest.raises(DataError, match=re.escape(str(path)) + r".*44100 Hz, expected 16000 Hz"):
        read_wav(path, resample=False)


def test_stereo_downmixed_with_warning(tmp_path):
    path = tmp_path / "stereo.wav"
    left = sine(440.0, amp=0.4)
    sf.write(path, np.stack([left, np.zeros_like(left)], axis=1), 16000, subtype="PCM_16")
    with pytest.warns(UserWarning, match="2 channels, downmixed to mono"):
        audio, report = read_wav(path)
    assert audio.shape == (64000,) and report.downmixed == 1
    assert abs(np.abs(audio).max() - 0.2) < 2e-3  # the mean of the channels


def test_fixes_counted_in_cache_manifest(make_split, tmp_path):
    keys = [f"string_acoustic_000-0{p}-075" for p in (60, 62, 64)]
    folder = make_split({k: entry(k) for k in keys}, wav=True)
    sf.write(folder / "audio" / f"{keys[0]}.wav", sine(261.6, seconds=2.5), 16000, subtype="PCM_16")
    sf.write(folder / "audio" / f"{keys[1]}.wav", sine(293.7, seconds=4.5), 16000, subtype="PCM_16")
    st = sine(329.6)
    sf.write(folder / "audio" / f"{keys[2]}.wav", np.stack([st, st], 1), 16000, subtype="PCM_16")
    df = read_examples(folder).assign(split="train")
    with pytest.warns(UserWarning, match="downmixed"):
        cache = build_feature_cache(df, FeatureConfig(cache_dir=str(tmp_path / "cache")), show_progress=False)
    assert cache.manifest["fixes"] == {"resampled": 0, "downmixed": 1, "padded": 1, "cut": 1, "truncated": 0,
                                       "clipped": 0}
    assert len(cache.manifest["fixed_files"]) == 3


def test_filter_and_load_refusals(tmp_path, make_split):
    df = read_examples(make_split({KEY: entry(KEY)}, wav=False))
    with pytest.raises(ParameterError, match=r"pitch_min \(70\) is above pitch_max \(60\)"):
        filter_examples(df, pitch_min=70, pitch_max=60)
    with pytest.raises(DataError, match="dataset folder not found"):
        load_dataset(DataConfig(root=str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match="no notes left after the filters"):
        load_dataset(DataConfig(root=str(tmp_path / "split"), families=("vocal",)))


def test_feature_refusals():
    cfg = FeatureConfig()
    with pytest.raises(ParameterError, match=r"expected shape \(batch, samples\), got \(64000,\)"):
        log_mel_batch(torch.zeros(64000), cfg=cfg)
    with pytest.raises(ParameterError, match=r"expected shape \(1, 80, 128\), got \(80, 64\)"):
        inverse_log_mel(np.zeros((80, 64)), cfg=cfg)


def test_cache_refusals(tmp_path):
    df = pd.DataFrame({"note_str": ["a"], "path": ["a.wav"]})
    with pytest.raises(DataError, match="needs a 'split' column"):
        build_feature_cache(df, FeatureConfig(cache_dir=str(tmp_path)))
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match="not a complete feature cache"):
        open_feature_cache(tmp_path / "half")
    with pytest.raises(DataError, match="nope.wav: wav file not found"):
        compute_features([str(tmp_path / "nope.wav")], FeatureConfig(), show_progress=False)


def test_render_refusals(tmp_path):
    (tmp_path / "exists").mkdir()
    with pytest.raises(ParameterError, match="already exists"):
        render_dataset(RenderConfig(programs=(0,)), tmp_path / "exists", show_progress=False)
    with pytest.raises(ParameterError, match=r"render.programs \[47\]"):  # timpani: not in the family table
        render_dataset(RenderConfig(programs=(0, 47)), tmp_path / "a", show_progress=False)
    (tmp_path / "font.txt").write_text("x")
    with pytest.raises(ParameterError, match="expected a .sf2 or .sf3"):
        render_dataset(RenderConfig(soundfont=str(tmp_path / "font.txt")), tmp_path / "b", show_progress=False)
    with pytest.raises(ParameterError, match="missing.sf2: file not found"):
        render_dataset(RenderConfig(soundfont=str(tmp_path / "missing.sf2")), tmp_path / "c", show_progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_examples_json_written_by_render_is_reread(tmp_path):
    # a dataset whose examples.json refers to a wav that was deleted afterwards fails by name
    render_dataset(RenderConfig(programs=(19,), pitch_min=60, pitch_max=60, velocities=(100,), workers=1),
                   tmp_path / "ds", show_progress=False)
    (key,) = json.loads((tmp_path / "ds" / "examples.json").read_text())
    (tmp_path / "ds" / "audio" / f"{key}.wav").unlink()
    df = load_dataset(DataConfig(root=str(tmp_path / "ds"), valid_fraction=0.0, test_fraction=0.0))
    with pytest.raises(DataError, match=f"{key}.wav: wav file not found"):
        build_feature_cache(df, FeatureConfig(cache_dir=str(tmp_path / "cache")), show_progress=False)


def test_output_folder_that_cannot_be_created_names_the_file_in_the_way(tmp_path):
    from vaelib.io import writable_folder

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for target in (blocker, blocker / "sub" / "deeper"):
        with pytest.raises(NotADirectoryError, match="a file stands where a folder is needed") as err:
            writable_folder(target)
        assert err.value.filename == str(blocker)
    assert writable_folder(tmp_path / "new" / "folder").is_dir()
    assert list((tmp_path / "new" / "folder").iterdir()) == []  # the write check leaves nothing


def test_embed_checks_its_output_before_any_work(tmp_path):
    from vaelib.analysis.latent import embed
    from vaelib.config import Config

    # the checkpoint does not exist: a refusal of ``out`` shows that ``out`` was checked first
    with pytest.raises(ParameterError, match=re.escape(f"out: {tmp_path} is a folder")):
        embed(tmp_path / "missing.pt", None, cfg=Config(), out=tmp_path)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError):
        embed(tmp_path / "missing.pt", None, cfg=Config(), out=tmp_path / "a_file" / "emb.parquet")
