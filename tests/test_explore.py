"""vaelib.analysis.explore: the explorer's updates (paths, axes, samples, a sound file), pure and seeded."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from _fixtures_analysis import TinyVAE, random_spectrograms, synthetic_meta
from conftest import sine

from vaelib.analysis import explore
from vaelib.analysis.interpolate import latent_path
from vaelib.analysis.latent import decode_latents
from vaelib.analysis.listening import roundtrip_mae_db
from vaelib.config import FeatureConfig
from vaelib.data.features import inverse_log_mel, log_mel
from vaelib.exceptions import DataError, ParameterError

CFG = FeatureConfig()
N_ITER = 4  # Griffin-Lim iterations in the tests: the code path, not the sound


@pytest.fixture(scope="module")
def model():
    return TinyVAE(latent_dim=6)


@pytest.fixture(scope="module")
def space(model):
    meta = synthetic_meta()
    return explore.explore_space(model, random_spectrograms(len(meta)), meta, cfg=CFG)


def test_space_holds_every_note_and_orthonormal_principal_axes(space):
    n, d = len(space.meta), space.latent_dim
    assert space.mu.shape == space.logvar.shape == (n, d) and space.coords.shape == (n, 2)
    np.testing.assert_allclose(space.axes @ space.axes.T, np.eye(len(space.axes)), atol=1e-5)
    assert np.all(np.diff(space.explained) <= 1e-7) and 0 < space.explained.sum() <= 1 + 1e-6
    # the map is the first two axes, and to_map places any point on it the same way
    np.testing.assert_allclose(space.to_map(space.mu), space.coords, atol=1e-5)
    # the standard deviation along each axis is that of the notes' coordinates on it
    np.testing.assert_allclose(space.coords.std(axis=0, ddof=1), space.axis_std[:2], rtol=1e-4)


def test_space_refuses_too_few_notes(model):
    meta = synthetic_meta().head(2)
    with pytest.raises(ParameterError, match="at least 3"):
        explore.explore_space(model, random_spectrograms(2), meta, cfg=CFG)
    with pytest.raises(ParameterError, match="rows"):
        explore.explore_space(model, random_spectrograms(5), meta, cfg=CFG)


def test_find_note_takes_the_nearest_pitch_then_the_loudest():
    meta = synthetic_meta()
    i = explore.find_note(meta, instrument="string_acoustic_001", pitch=57)
    row = meta.iloc[i]
    assert (row["instrument_str"], row["pitch"], row["velocity"]) == ("string_acoustic_001", 56, 127)
    quiet = meta.iloc[explore.find_note(meta, instrument="string_acoustic_001", pitch=60, velocity=70)]
    assert (quiet["pitch"], quiet["velocity"]) == (60, 75)
    with pytest.raises(ParameterError, match="no note"):
        explore.find_note(meta, instrument="nope", pitch=60)


def test_default_notes_are_two_families(space):
    a, b = explore.default_notes(space, pitch=60)
    fam = space.meta["instrument_family_str"]
    assert fam.iloc[a] != fam.iloc[b] and space.meta["pitch"].iloc[a] == space.meta["pitch"].iloc[b] == 60
    a2, b2 = explore.default_notes(space, instrument_a="guitar_acoustic_002", instrument_b="guitar_acoustic_001")
    assert space.meta["instrument_str"].iloc[[a2, b2]].tolist() == ["guitar_acoustic_002", "guitar_acoustic_001"]


@pytest.mark.parametrize("method", explore.PATH_METHODS)
def test_path_points_are_the_interpolation_paths(method):
    rng = np.random.default_rng(0)
    z0, z1 = rng.normal(size=6), rng.normal(size=6)
    grid = latent_path(z0, z1, steps=7, method=method)
    points = np.stack([explore.path_point(z0, z1, t, method=method) for t in np.linspace(0, 1, 7)])
    np.testing.assert_allclose(points, grid, atol=1e-6)
    np.testing.assert_array_equal(points[0], z0.astype(np.float32))
    np.testing.assert_array_equal(points[-1], z1.astype(np.float32))


def test_slerp_keeps_the_norm_where_linear_cuts_the_corner():
    z0, z1 = np.array([3.0, 0.0, 0.0]), np.array([0.0, 3.0, 0.0])
    mid_lin = explore.path_point(z0, z1, 0.5, method="linear")
    mid_sph = explore.path_point(z0, z1, 0.5, method="slerp")
    assert np.linalg.norm(mid_lin) == pytest.approx(3 / np.sqrt(2), rel=1e-6)
    assert np.linalg.norm(mid_sph) == pytest.approx(3.0, rel=1e-6)
    # parallel ends: no arc, the spherical path is the straight one
    np.testing.assert_allclose(explore.path_point(z0, 2 * z0, 0.3, method="slerp"),
                               explore.path_point(z0, 2 * z0, 0.3, method="linear"), atol=1e-6)
    with pytest.raises(ParameterError, match="method"):
        explore.path_point(z0, z1, 0.5, method="cubic")
    with pytest.raises(ParameterError, match="t"):
        explore.path_point(z0, z1, 1.5, method="linear")


def test_path_update_ends_decode_the_notes_own_mu(model, space):
    a, b = explore.default_notes(space, pitch=52)
    for t, note in ((0.0, a), (1.0, b)):
        d = explore.path_update(model, space, note_a=a, note_b=b, t=t, method="slerp", n_iter=N_ITER)
        np.testing.assert_array_equal(d.z, space.mu[note])
        np.testing.assert_allclose(d.x, decode_latents(model, space.mu[note][None])[0], atol=1e-6)
    mid = explore.path_update(model, space, note_a=a, note_b=b, t=0.5, method="linear", n_iter=N_ITER)
    assert mid.info["kind"] == "path" and mid.info["t"] == 0.5 and "velocity" in mid.info["note_a"]


def test_decode_point_audio_and_timing(model, space):
    d = explore.decode_point(model, space.mu[0], cfg=CFG, n_iter=N_ITER, seed=3, info={"k": 1})
    assert d.x.shape == (1, CFG.n_mels, CFG.frames) and d.audio.shape == (CFG.frames * CFG.hop_length,)
    assert d.audio.dtype == np.float32 and np.all(np.isfinite(d.audio)) and np.abs(d.audio).max() <= 0.9 + 1e-6
    assert set(d.seconds) == {"decode", "inversion"} and all(v >= 0 for v in d.seconds.values())
    again = explore.decode_point(model, space.mu[0], cfg=CFG, n_iter=N_ITER, seed=3)
    np.testing.assert_array_equal(d.audio, again.audio)  # seeded phase: reproducible
    assert d.info == {"k": 1} and d.sample_rate == CFG.sample_rate
    with pytest.raises(ParameterError, match="z"):
        explore.decode_point(model, space.mu[:2], cfg=CFG)


def test_fast_inversion_is_as_faithful_as_the_nnls_inversion():
    # a harmonic note with a decay: the pseudo-inverse loses nothing against librosa's NNLS that the ear hears
    t = np.arange(64000) / 16000
    audio = sum(0.4 / k * np.sin(2 * np.pi * 220 * k * t) for k in range(1, 8)) * np.exp(-t)
    x = log_mel(audio.astype(np.float32), cfg=CFG)[None]
    fast = explore.fast_inversion(x[0], cfg=CFG, n_iter=16)
    nnls = inverse_log_mel(x[0], cfg=CFG, n_iter=16)
    loud = {k: float(roundtrip_mae_db(x, a[None], cfg=CFG, above_db=-40)[0]) for k, a in (("fast", fast),
                                                                                           ("nnls", nnls))}
    assert loud["fast"] < loud["nnls"] + 1.0 and loud["fast"] < 6.0
    silent = explore.fast_inversion(np.full((1, 80, 128), -1.0, np.float32), cfg=CFG, n_iter=2)
    assert np.all(np.isfinite(silent))
    with pytest.raises(ParameterError, match="n_iter"):
        explore.fast_inversion(x[0], cfg=CFG, n_iter=0)
    with pytest.raises(ParameterError, match="shape"):
        explore.fast_inversion(np.zeros((80, 100), np.float32), cfg=CFG)


def test_wav_bytes_read_back():
    audio = sine(440.0, seconds=0.5) * 0.5
    data, sr = sf.read(io.BytesIO(explore.wav_bytes(audio, sample_rate=16000)), dtype="float32")
    assert sr == 16000 and data.shape == audio.shape and np.abs(data - audio).max() < 1e-3
    with pytest.raises(ParameterError):
        explore.wav_bytes(np.full(10, np.nan, np.float32), sample_rate=16000)


@pytest.mark.parametrize("kind", explore.AXIS_KINDS)
def test_axis_points_move_along_one_axis(space, kind):
    p = explore.axis_point(space, note=3, axis=1, amount=2.0, kind=kind)
    step = p - space.mu[3]
    if kind == "principal":
        np.testing.assert_allclose(step, 2.0 * space.axis_std[1] * space.axes[1], atol=1e-6)
        assert np.linalg.norm(step) == pytest.approx(2.0 * space.axis_std[1], rel=1e-5)
    else:
        assert np.count_nonzero(step) == 1 and step[1] == pytest.approx(2.0 * space.dim_std[1], rel=1e-5)
    np.testing.assert_array_equal(explore.axis_point(space, note=3, axis=1, amount=0.0, kind=kind), space.mu[3])
    with pytest.raises(ParameterError, match="axis"):
        explore.axis_point(space, note=3, axis=99, amount=1.0, kind=kind)


def test_axis_traversal_shapes_and_centre(model, space):
    amounts = (-2.0, 0.0, 2.0)
    x = explore.axis_traversal(model, space, note=5, axes=[0, 1, 2], amounts=amounts)
    assert x.shape == (3, 3, 1, CFG.n_mels, CFG.frames)
    centre = decode_latents(model, space.mu[5][None])[0]
    for row in x:
        np.testing.assert_allclose(row[1], centre, atol=1e-6)  # amount 0 is the note itself
    assert not np.allclose(x[0, 0], x[0, 2])
    d = explore.axis_update(model, space, note=5, axis=0, amount=1.0, kind="dimension", n_iter=N_ITER)
    assert d.info["axis_kind"] == "dimension" and d.audio.ndim == 1
    with pytest.raises(ParameterError, match="kind"):
        explore.axis_point(space, note=5, axis=0, amount=1.0, kind="diagonal")


def test_prior_and_posterior_samples_are_seeded(space):
    a, b = explore.prior_point(6, seed=1), explore.prior_point(6, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, explore.prior_point(6, seed=2)) and a.dtype == np.float32
    mu, logvar = space.mu[0], space.logvar[0]
    np.testing.assert_array_equal(explore.around_point(mu, logvar, scale=0.0, seed=4), mu)
    s1 = explore.around_point(mu, logvar, scale=1.0, seed=4)
    np.testing.assert_array_equal(s1, explore.around_point(mu, logvar, scale=1.0, seed=4))
    s2 = explore.around_point(mu, logvar, scale=2.0, seed=4)
    np.testing.assert_allclose(s2 - mu, 2 * (s1 - mu), rtol=1e-5, atol=1e-6)  # the same eps, scaled
    eps = np.random.default_rng(4).standard_normal(len(mu))
    np.testing.assert_allclose(s1, mu + np.exp(0.5 * logvar) * eps, rtol=1e-5, atol=1e-6)
    with pytest.raises(ParameterError, match="scale"):
        explore.around_point(mu, logvar, scale=-1.0, seed=0)


def test_sample_updates(model, space):
    prior = explore.sample_update(model, space, note=None, seed=7, n_iter=N_ITER)
    np.testing.assert_array_equal(prior.z, explore.prior_point(space.latent_dim, seed=7))
    assert prior.info == {"kind": "prior", "seed": 7}
    around = explore.sample_update(model, space, note=2, scale=0.5, seed=7, n_iter=N_ITER)
    assert around.info["kind"] == "around" and around.info["scale"] == 0.5


def test_a_pitch_conditioned_decoder_needs_a_pitch():
    model = TinyVAE(latent_dim=4, pitch_conditioning=True)
    meta = synthetic_meta()
    space = explore.explore_space(model, random_spectrograms(len(meta)), meta, cfg=CFG, pitch_conditioning=True)
    with pytest.raises(ParameterError, match="pitch"):
        explore.sample_update(model, space, note=None, seed=0, n_iter=N_ITER)
    low = explore.sample_update(model, space, note=None, seed=0, pitch=30, n_iter=N_ITER)
    high = explore.sample_update(model, space, note=None, seed=0, pitch=90, n_iter=N_ITER)
    assert not np.allclose(low.x, high.x)
    # a path takes note A's pitch, a sample around a note that note's
    d = explore.path_update(model, space, note_a=0, note_b=5, t=0.5, method="linear", n_iter=N_ITER)
    assert d.x.shape == (1, 80, 128)


def test_place_sound_from_a_path_and_from_bytes(model, space, tmp_path):
    path = tmp_path / "tone.wav"
    sf.write(path, sine(330.0, sr=22050, seconds=3.0), 22050, subtype="PCM_24")
    placed = explore.place_sound(model, space, str(path), n_iter=N_ITER)
    assert placed.sound.name == "tone.wav" and placed.sound.source_rate == 22050
    assert placed.x.shape == (1, 80, 128) and placed.mu.shape == (space.latent_dim,)
    np.testing.assert_allclose(placed.point, space.to_map(placed.mu)[0], atol=1e-6)
    assert list(placed.nearest.columns) == ["row", "note_str", "distance"] and len(placed.nearest) == 5
    assert placed.nearest["distance"].is_monotonic_increasing
    np.testing.assert_array_equal(placed.reconstruction.z, placed.mu)
    uploaded = explore.place_sound(model, space, path.read_bytes(), name="tone.wav", n_iter=N_ITER)
    np.testing.assert_allclose(uploaded.mu, placed.mu, atol=1e-6)
    (tmp_path / "fake.wav").write_text("not audio")
    with pytest.raises(DataError, match="fake.wav"):
        explore.place_sound(model, space, str(tmp_path / "fake.wav"))


def test_a_note_of_the_run_placed_from_its_wav_lands_on_itself(model, tmp_path):
    # the file path and the cache path give the same features, so the same mu
    meta = synthetic_meta(families=("keyboard", "string"), per_family=2, pitches=(48, 60), velocities=(127,))
    audio = [sine(440.0 * 2 ** ((p - 69) / 12), amp=0.3 + 0.1 * i) for i, p in enumerate(meta["pitch"])]
    feats = np.stack([log_mel(a, cfg=CFG) for a in audio])
    space = explore.explore_space(model, feats, meta, cfg=CFG)
    path = tmp_path / "note.wav"
    sf.write(path, audio[3], 16000, subtype="FLOAT")
    placed = explore.place_sound(model, space, str(path), n_iter=N_ITER)
    assert placed.nearest["distance"].iloc[0] < 1e-5


def test_measure_latency_and_views(model, space, tmp_path):
    m = explore.measure_latency(model, space, repeats=2, n_iter=N_ITER)
    assert m["explore_update_repeats"] == 2 and m["explore_gl_iters"] == N_ITER
    assert m["explore_update_seconds_median"] >= m["explore_decode_seconds_median"] > 0
    path = tmp_path / "tone.wav"
    sf.write(path, sine(220.0), 16000)
    views = explore.explore_views(model, space, note_a=0, note_b=40, sound=path, steps=3, method="slerp",
                                  n_iter=N_ITER, latency_repeats=1)
    assert len(views.path) == 3 and views.traversal.shape[:2] == (4, 5)
    assert views.path_labels()[0] == "slerp path, t = 0.00"
    metrics = explore.explore_metrics(views, space)
    assert all(k.startswith("explore_") for k in metrics)
    assert metrics["explore_sound"]["file"] == "tone.wav" and metrics["explore_path"]["steps"] == 3


def test_the_decode_runs_on_its_own_threads_and_torch_is_restored(space):
    import torch

    seen = []

    class Probe(TinyVAE):
        def decode(self, z, pitch=None):
            seen.append(torch.get_num_threads())
            return super().decode(z, pitch)

    before = torch.get_num_threads()
    probe = Probe(latent_dim=6)
    explore.decode_point(probe, space.mu[0], cfg=CFG, n_iter=1)
    explore.decode_point(probe, space.mu[0], cfg=CFG, n_iter=1, threads=0)
    assert seen == [explore.DECODE_THREADS, before] and torch.get_num_threads() == before
