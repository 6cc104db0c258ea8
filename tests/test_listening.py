"""vaelib.analysis.listening: Griffin-Lim inversion, the log-mel round trip check, wav and MP3 writing, note choice,
the listening map's notes, budget and sounds."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from _fixtures_analysis import synthetic_meta

from vaelib.analysis.listening import (
    Listening,
    audio_data_uri,
    audio_data_uris,
    choose_listening_notes,
    choose_map_notes,
    encode_mp3,
    invert_and_check,
    invert_to_audio,
    listen,
    listening_map,
    listening_metrics,
    one_velocity,
    roundtrip_mae_db,
    timbre_dims,
    within_budget,
    write_wav,
)
from vaelib.config import PROJECT_ROOT, FeatureConfig, load_config
from vaelib.data.features import log_mel, normalized_to_db
from vaelib.exceptions import ParameterError

CFG = FeatureConfig()


def harmonic_note(f0: float = 220.0) -> np.ndarray:
    t = np.arange(64000) / 16000
    env = np.exp(-t)
    return (0.3 * env * sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))).astype(np.float32)


def test_griffin_lim_output_length_and_finiteness():
    x = log_mel(harmonic_note(), cfg=CFG)[None]
    audio = invert_to_audio(x, cfg=CFG, n_iter=4)
    assert audio.shape == (1, CFG.frames * CFG.hop_length)
    assert audio.dtype == np.float32 and np.all(np.isfinite(audio))
    assert np.abs(audio).max() == pytest.approx(0.9, rel=1e-5)
    np.testing.assert_array_equal(audio, invert_to_audio(x, cfg=CFG, n_iter=4))  # seeded
    with pytest.raises(ParameterError):
        invert_to_audio(x, cfg=CFG, n_iter=0)


def test_round_trip_error_is_small_for_own_audio_and_large_for_other_audio():
    x = np.stack([log_mel(harmonic_note(220.0), cfg=CFG), log_mel(harmonic_note(1760.0), cfg=CFG)])
    audio, mae = invert_and_check(x, cfg=CFG, n_iter=16)
    assert mae.shape == (2,) and np.all(mae < 16.0), mae
    swapped = roundtrip_mae_db(x, audio[::-1], cfg=CFG)
    assert np.all(swapped > mae + 5.0), (mae, swapped)
    loud = roundtrip_mae_db(x, audio, cfg=CFG, above_db=-40.0)  # the note itself, without the -80 dB floor
    assert np.all(loud < mae) and np.all(loud < 8.0), (loud, mae)


@pytest.mark.parametrize("f0", [110.0, 440.0, 1760.0])
def test_pseudo_inverse_is_as_faithful_as_nnls_where_the_note_is(f0):
    x = log_mel(harmonic_note(f0), cfg=CFG)[None]
    loud = {}
    for method in ("pinv", "nnls"):
        audio = invert_to_audio(x, cfg=CFG, n_iter=16, mel_inverse=method)
        assert audio.shape == (1, CFG.frames * CFG.hop_length) and np.all(np.isfinite(audio))
        loud[method] = float(roundtrip_mae_db(x, audio, cfg=CFG, above_db=-40.0)[0])
    assert loud["pinv"] < 8.0 and loud["pinv"] < loud["nnls"] + 1.0, loud
    with pytest.raises(ParameterError, match="mel_inverse"):
        invert_to_audio(x, cfg=CFG, n_iter=4, mel_inverse="svd")


def test_round_trip_ignores_the_level_of_the_source_under_ref_max():
    x = np.maximum(log_mel(harmonic_note(), cfg=CFG)[None], -0.5)  # floor at -40 dB, so nothing clips below
    quieter = x - 0.25  # 10 dB lower everywhere: the same sound under ref='max'
    audio = invert_to_audio(x, cfg=CFG, n_iter=8)
    np.testing.assert_allclose(roundtrip_mae_db(quieter, audio, cfg=CFG), roundtrip_mae_db(x, audio, cfg=CFG),
                               atol=1e-4)


def test_write_wav(tmp_path):
    audio = 0.5 * np.sin(np.linspace(0, 100, 16000)).astype(np.float32)
    path = write_wav(tmp_path / "a" / "note.wav", audio, sample_rate=16000)
    back, sr = sf.read(path, dtype="float32")
    assert sr == 16000 and len(back) == 16000
    np.testing.assert_allclose(back, audio, atol=1e-4)
    with pytest.raises(ParameterError):
        write_wav(tmp_path / "bad.wav", np.array([np.nan]), sample_rate=16000)


def test_listening_notes_cycle_through_families():
    meta = synthetic_meta()
    idx = choose_listening_notes(meta, n=6, pitch=58, velocity=127)
    picked = meta.iloc[idx]
    assert len(idx) == 6 and picked["instrument_str"].is_unique
    assert set(picked["instrument_family_str"].iloc[:4]) == {"keyboard", "string", "brass", "guitar"}
    assert set(picked["pitch"]) == {56} and set(picked["velocity"]) == {127}


def test_round_trip_of_silence_is_silence():
    silent = -np.ones((1, 1, CFG.n_mels, CFG.frames), np.float32)
    audio = np.zeros((1, CFG.frames * CFG.hop_length), np.float32)
    np.testing.assert_array_equal(roundtrip_mae_db(silent, audio, cfg=CFG), [0.0])
    assert np.isnan(roundtrip_mae_db(silent, audio, cfg=CFG, above_db=-40.0)[0])  # no loud cell to average


def test_mp3_round_trip_keeps_rate_length_and_spectrum():
    audio = harmonic_note(330.0)
    data = encode_mp3(audio, sample_rate=16000)
    assert len(data) < len(audio) * 2 / 8  # compressed far below 16-bit PCM
    assert data == encode_mp3(audio, sample_rate=16000)  # deterministic
    back, sr = sf.read(io.BytesIO(data), dtype="float32")
    assert sf.info(io.BytesIO(data)).format == "MP3" and sr == 16000 and back.shape == audio.shape
    source = normalized_to_db(log_mel(audio, cfg=CFG), cfg=CFG)
    loud = source >= -40.0  # the note, not the floor
    assert np.abs(normalized_to_db(log_mel(back, cfg=CFG), cfg=CFG) - source)[loud].mean() < 1.0  # dB
    uri = audio_data_uri(audio, sample_rate=16000)
    assert uri.startswith("data:audio/mpeg;base64,") and base64.b64decode(uri.split(",", 1)[1]) == data
    for bad in (np.zeros((2, 10), np.float32), np.array([np.nan], np.float32), np.zeros(0, np.float32)):
        with pytest.raises(ParameterError, match="audio"):
            encode_mp3(bad, sample_rate=16000)


def test_mp3_uris_of_many_clips_are_each_clips_own_in_order():
    clips = [harmonic_note(f) for f in (220.0, 330.0, 440.0, 550.0, 660.0)]
    uris = audio_data_uris(clips, sample_rate=16000)
    assert uris == [audio_data_uri(c, sample_rate=16000) for c in clips]  # threads change neither bytes nor order
    assert len(set(uris)) == len(clips)
    assert audio_data_uris([], sample_rate=16000) == []
    assert audio_data_uris(clips[:1], sample_rate=16000) == uris[:1]
    with pytest.raises(ParameterError, match="audio"):  # a bad clip among good ones is still refused
        audio_data_uris([clips[0], np.array([np.nan], np.float32)], sample_rate=16000)


def test_one_velocity_takes_the_nearest_velocity_of_each_instrument_and_pitch():
    meta = pd.DataFrame({"instrument_str": ["a", "a", "a", "b", "b", "b"], "pitch": [60, 60, 62, 60, 60, 60],
                         "velocity": [75, 127, 25, 25, 50, 100]})
    mask = one_velocity(meta, velocity=127)
    assert mask.tolist() == [False, True, True, False, False, True]
    # a tie (75 and 25 are both 25 from 50) takes the lower velocity
    tie = pd.DataFrame({"instrument_str": ["a", "a"], "pitch": [60, 60], "velocity": [75, 25]})
    assert one_velocity(tie, velocity=50).tolist() == [False, True]


def test_map_notes_are_every_test_note_at_one_velocity_then_a_train_sample():
    meta = synthetic_meta()  # 4 families x 3 instruments (the first of each in test) x 4 pitches x 2 velocities
    pos, available = choose_map_notes(meta, velocity=127, train_notes=5, max_notes=100, seed=0)
    picked = meta.iloc[pos]
    assert available == 16 and len(pos) == 21 and len(set(pos)) == 21
    assert (picked["split"].iloc[:16] == "test").all() and (picked["split"].iloc[16:] == "train").all()
    assert set(picked["velocity"]) == {127}
    np.testing.assert_array_equal(pos, choose_map_notes(meta, velocity=127, train_notes=5, max_notes=100, seed=0)[0])
    assert not np.array_equal(pos, choose_map_notes(meta, velocity=127, train_notes=5, max_notes=100, seed=1)[0])
    # bounded: the train sample first, the test notes sampled down to what is left
    pos, available = choose_map_notes(meta, velocity=127, train_notes=5, max_notes=12, seed=0)
    assert available == 16 and len(pos) == 12 and (meta.iloc[pos]["split"] == "test").sum() == 7
    pos, _ = choose_map_notes(meta, velocity=127, train_notes=50, max_notes=12, seed=0)
    assert len(pos) == 12 and (meta.iloc[pos]["split"] == "train").all()
    assert len(choose_map_notes(meta, velocity=75, train_notes=0, max_notes=100, seed=0)[0]) == 16
    with pytest.raises(ParameterError):
        choose_map_notes(meta, velocity=127, train_notes=0, max_notes=0, seed=0)


def test_within_budget_stops_at_the_first_item_that_does_not_fit_without_computing_the_rest():
    made = []

    def items():
        for n in (3, 4, 5, 1, 1):
            made.append(n)
            yield n

    kept, cut = within_budget(items(), size=lambda n: n, budget=10)
    assert kept == [3, 4] and cut and made == [3, 4, 5]  # 5 was made (its size is known only then), 1 never
    assert within_budget(iter([3, 4]), size=lambda n: n, budget=7) == ([3, 4], False)
    assert within_budget(iter([3]), size=lambda n: n, budget=-1) == ([], True)


@pytest.mark.parametrize(("overrides", "expected"), [
    ([], None),
    (["train.contrast=1.0", "train.contrast_dims=16"], 16),
    (["train.contrast=0.0", "train.contrast_dims=16"], None),  # no contrastive term: nothing shapes those dims
    (["model.pitch_head=true", "model.pitch_dims=12"], 20),
    (["model.pitch_head=true", "model.pitch_dims=0"], None),  # the head reads every dimension
    (["train.contrast=1.0", "train.contrast_dims=1"], None),  # one dimension: no 2-D map
])
def test_timbre_dims(overrides, expected):
    assert timbre_dims(load_config(None, overrides)) == expected
    assert timbre_dims(load_config(PROJECT_ROOT / "params" / "default.yaml")) == 16


def _map_run(make_split, tmp_path, *overrides: str):
    """A run of 24 sine notes (two families of three instruments, one of each in test) with the tiny stand-in VAE."""
    from types import SimpleNamespace

    from _fixtures_analysis import TinyVAE
    from conftest import entry

    from vaelib.data.prepare import prepare_features

    entries = {f"{inst}-{p:03d}-{v:03d}": entry(f"{inst}-{p:03d}-{v:03d}")
               for fam in ("keyboard", "string") for inst in (f"{fam}_acoustic_{i:03d}" for i in range(3))
               for p in (60, 64) for v in (75, 127)}
    root = make_split(entries, name="ds")
    cfg = load_config(None, [f"data.root={root}", f"features.cache_dir={tmp_path / 'cache'}",
                             "data.test_fraction=0.3", "data.valid_fraction=0.0", "analysis.umap=false",
                             "analysis.interp_pairs=[keyboard:string]", "analysis.interp_steps=3",
                             "analysis.griffin_lim_iters=2", "analysis.map_griffin_lim_iters=2", "analysis.n_listen=1",
                             *overrides])
    cache = prepare_features(cfg, show_progress=False)
    return SimpleNamespace(cfg=cfg, cache=cache, model=TinyVAE(latent_dim=4), run_dir=tmp_path)


def test_listening_map_of_a_tiny_run(make_split, tmp_path):
    run = _map_run(make_split, tmp_path, "analysis.map_train_notes=1")
    listening = listen(run, out_dir=tmp_path / "out")
    assert {(w.choice.pair, w.method) for w in listening.walks} == {("keyboard:string", "linear"),
                                                                   ("keyboard:string", "slerp")}
    assert listening.mu.shape == (24, 4)
    lmap = listening_map(run, listening)
    test_at_127 = int(((run.cache.meta["split"] == "test") & (run.cache.meta["velocity"] == 127)).sum())
    assert lmap.test_available == test_at_127 == 4 and lmap.left_out == 0
    assert (lmap.notes["split"] == "test").sum() == test_at_127 and (lmap.notes["split"] == "train").sum() == 1
    assert set(lmap.labels) == {"pca"} and lmap.timbre_dims is None  # analysis.umap=false, no timbre dims
    assert lmap.coords["pca"].shape == (len(lmap.notes), 2) and lmap.context["pca"].shape == (24, 2)
    assert len(lmap.paths) == 3 and lmap.path_coords["pca"].shape == (3, 2)  # the linear walk only
    # the ends of the path sit on the notes of the pair
    choice = listening.walks[0].choice
    np.testing.assert_allclose(lmap.path_coords["pca"][[0, -1]], lmap.context["pca"][[choice.index_a, choice.index_b]],
                               atol=1e-4)
    for col in ("original", "reconstruction"):
        assert lmap.notes[col].str.startswith("data:audio/mpeg;base64,").all()
    # the recording is the note's own wav (a sine at the note's pitch), not an inversion
    first = lmap.notes.iloc[0]
    rec, sr = sf.read(io.BytesIO(base64.b64decode(first["original"].split(",", 1)[1])), dtype="float32")
    spectrum = np.abs(np.fft.rfft(rec[:16000]))
    f0 = 440.0 * 2 ** ((first["pitch"] - 69) / 12)
    assert abs(np.argmax(spectrum) * sr / 16000 - f0) < 3.0
    assert lmap.seconds_per_note > 0 and lmap.audio_bytes > 0
    metrics = listening_metrics(listening, out_dir=tmp_path / "out", cfg=run.cfg.features, lmap=lmap)
    assert metrics["map_notes"] == {"test": test_at_127, "train": 1} and metrics["map_left_out"] == 0
    assert len(metrics["listen_interpolations"]) == 2 and metrics["listen_skipped"] == []
    assert all((tmp_path / "out" / w).is_file() for w in metrics["wav_files"])


def test_listening_map_keeps_within_its_budget(make_split, tmp_path, monkeypatch):
    import vaelib.analysis.listening as listening_module
    from vaelib.analysis.latent import encode_features

    run = _map_run(make_split, tmp_path, "analysis.map_train_notes=1", "analysis.map_max_mb=4")
    # no walks: the budget is about the notes (the paths' sound is counted first, and is tested above)
    mu, _ = encode_features(run.model, run.cache.features)
    listening = Listening(notes=pd.DataFrame(), names=[], originals=np.zeros(0), reconstructions=np.zeros(0),
                          clips=[], walks=[], skipped=[], mu=mu, sample_rate=16000, n_iter=2)
    full = listening_map(run, listening)
    assert full.left_out == 0 and len(full.notes) == 5 and full.paths.empty
    note_bytes = (full.notes["original"].str.len() + full.notes["reconstruction"].str.len()).to_numpy()
    # leave room for the first two notes only
    monkeypatch.setattr(listening_module, "MAP_PAGE_RESERVE_BYTES", full.budget_bytes - int(note_bytes[:2].sum()) - 1)
    with pytest.warns(UserWarning, match="3 of 5 notes left out to keep the page within analysis.map_max_mb = 4 MB"):
        cut = listening_map(run, listening)
    assert cut.left_out == 3 and cut.notes["note_str"].tolist() == full.notes["note_str"].iloc[:2].tolist()
    assert cut.audio_bytes == note_bytes[:2].sum()
    assert "left out 3 more" in cut.text
