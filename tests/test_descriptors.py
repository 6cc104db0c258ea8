"""vaelib.analysis.descriptors: descriptors of synthetic log-mels with known answers, the ridge table, the
decoded grid over the PCA plane, the run-level study; and vaelib.report.plots.descriptors' figures."""

from __future__ import annotations

import json
from types import SimpleNamespace

import matplotlib
import numpy as np
import pandas as pd
import pytest
from _fixtures_analysis import FRAMES, N_MELS, TinyVAE, random_spectrograms, synthetic_meta

from vaelib.analysis.descriptors import (
    DESCRIPTORS,
    UNITS,
    attack_time,
    decode_grid,
    describe_run,
    descriptor_label,
    descriptor_r2,
    frame_energy,
    note_descriptors,
    pca_inverse,
    plane_grid,
    spectral_flatness,
    spectral_rolloff,
    temporal_centroid,
)
from vaelib.analysis.interpolate import mel_centroid
from vaelib.analysis.latent import Projection, embedding_table, encode_features, project_pca
from vaelib.analysis.latent_map import LatentSpace
from vaelib.config import Config, FeatureConfig
from vaelib.data.features import mel_frequencies
from vaelib.exceptions import ParameterError

matplotlib.use("Agg")

CFG = FeatureConfig()
FRAME_S = CFG.hop_length / CFG.sample_rate  # 31.25 ms


def silence(n: int = 1) -> np.ndarray:
    """[shape=(n, 1, n_mels, frames)] at the floor (-top_db dB) everywhere."""
    return np.full((n, 1, N_MELS, FRAMES), -1.0, np.float32)


def with_envelope(db: np.ndarray) -> np.ndarray:
    """One note whose every band follows the envelope ``db`` [shape=(frames,)] (dB re. the peak)."""
    x = silence()
    x[0, 0] = 1.0 + np.asarray(db, np.float32)[None, :] / (CFG.top_db / 2)
    return x


@pytest.mark.parametrize("band", [3, 40, 77])
def test_one_lit_band_puts_centroid_and_rolloff_at_its_frequency(band):
    x = silence()
    x[0, 0, band] = 1.0
    freq = mel_frequencies(CFG)[band]
    d = note_descriptors(x, cfg=CFG)
    assert d.loc[0, "centroid"] == pytest.approx(freq, rel=1e-3)
    assert d.loc[0, "rolloff"] == pytest.approx(freq)
    assert d.loc[0, "bandwidth"] < 0.01 * freq + 5
    assert d.loc[0, "flatness"] < 1e-3  # one band of 80: as tonal as a log-mel gets


def test_two_equal_bands_put_the_bandwidth_at_half_their_distance_and_the_rolloff_at_the_upper():
    x = silence()
    x[0, 0, [20, 60]] = 1.0
    freqs = mel_frequencies(CFG)
    d = note_descriptors(x, cfg=CFG)
    assert d.loc[0, "bandwidth"] == pytest.approx((freqs[60] - freqs[20]) / 2, rel=1e-3)
    assert d.loc[0, "centroid"] == pytest.approx((freqs[60] + freqs[20]) / 2, rel=1e-3)
    assert spectral_rolloff(x, cfg=CFG)[0] == pytest.approx(freqs[60])
    assert spectral_rolloff(x, cfg=CFG, roll_percent=0.4)[0] == pytest.approx(freqs[20])


def test_a_flat_spectrum_has_flatness_one_and_a_sparse_one_much_less():
    flat = np.zeros((1, 1, N_MELS, FRAMES), np.float32)  # -40 dB in every band and frame
    assert spectral_flatness(flat, cfg=CFG)[0] == pytest.approx(1.0, abs=1e-6)
    sparse = silence()
    sparse[0, 0, ::8] = 1.0
    assert spectral_flatness(sparse, cfg=CFG)[0] < 0.2


@pytest.mark.parametrize("k", [0, 1, 5, 40])
def test_attack_time_is_the_peak_frame_times_the_hop(k):
    # from -10 dB at frame 0 (within ONSET_DB of the peak: the onset) up to -2 dB at frame k - 1 (not
    # within PEAK_DB), 0 dB at frame k, then a decay
    frames = np.arange(FRAMES)
    db = -60.0 * (frames - k) / FRAMES
    db[:k] = np.linspace(-10.0, -2.0, k)
    db[k] = 0.0
    x = with_envelope(db)
    assert attack_time(x, cfg=CFG)[0] == pytest.approx(k * FRAME_S)
    assert note_descriptors(x, cfg=CFG).loc[0, "attack"] == pytest.approx(k * FRAME_S)


def test_attack_starts_at_the_onset_not_at_the_first_frame():
    # silence (the floor) for 10 frames, then a jump to -5 dB, a ramp to -2 dB and the peak at frame 30
    db = np.full(FRAMES, -CFG.top_db)
    db[10:30] = np.linspace(-5.0, -2.0, 20)
    db[30] = 0.0
    db[31:] = -30.0
    assert attack_time(with_envelope(db), cfg=CFG)[0] == pytest.approx(20 * FRAME_S)
    # a 4 dB onset threshold moves the onset up to the first frame within it (frame 17, at -3.89 dB)
    assert attack_time(with_envelope(db), cfg=CFG, onset_db=4.0)[0] == pytest.approx(13 * FRAME_S)


def test_a_sustain_creeping_up_does_not_move_the_peak_to_its_end():
    # a 5-frame attack to -0.8 dB, then a sustain rising by 0.8 dB over 120 frames (a swelling brass note)
    db = np.full(FRAMES, -60.0)
    db[:5] = np.linspace(-18.0, -3.0, 5)  # the onset at frame 0
    db[5:125] = np.linspace(-0.8, 0.0, 120)
    assert attack_time(with_envelope(db), cfg=CFG)[0] == pytest.approx(5 * FRAME_S)
    # at the loudest frame itself (peak_db=0) the attack would run to the sustain's end
    assert attack_time(with_envelope(db), cfg=CFG, peak_db=0.0)[0] == pytest.approx(124 * FRAME_S)


def test_temporal_centroid_of_a_symmetric_envelope_is_its_middle():
    frames = np.arange(FRAMES)
    middle = (FRAMES - 1) / 2
    db = -40.0 * np.abs(frames - middle) / middle  # a tent, symmetric about frame 63.5
    assert temporal_centroid(with_envelope(db), cfg=CFG)[0] == pytest.approx(middle * FRAME_S, rel=1e-6)
    early = np.where(frames < 20, 0.0, -60.0)
    assert temporal_centroid(with_envelope(early), cfg=CFG)[0] == pytest.approx(9.5 * FRAME_S, rel=1e-3)


def test_frame_energy_sums_the_band_powers():
    x = with_envelope(np.linspace(0.0, -40.0, FRAMES))
    energy = frame_energy(x, cfg=CFG)
    assert energy.shape == (1, FRAMES)
    np.testing.assert_allclose(energy[0, [0, -1]], [N_MELS * 1.0, N_MELS * 1e-4], rtol=1e-3)


def test_note_descriptors_match_the_single_functions_and_do_not_depend_on_the_block_size():
    x = random_spectrograms(37, seed=3)  # float16, as the cache
    d = note_descriptors(x, cfg=CFG, chunk=8)
    assert list(d.columns) == list(DESCRIPTORS) and len(d) == 37 and np.isfinite(d.to_numpy()).all()
    pd.testing.assert_frame_equal(d, note_descriptors(x, cfg=CFG, chunk=512))
    np.testing.assert_allclose(d["centroid"], mel_centroid(x, cfg=CFG), rtol=1e-6)
    np.testing.assert_allclose(d["flatness"], spectral_flatness(x, cfg=CFG), rtol=1e-6)
    np.testing.assert_allclose(d["temporal_centroid"], temporal_centroid(x[:, 0], cfg=CFG), rtol=1e-6)
    assert set(UNITS) == set(DESCRIPTORS)
    assert descriptor_label("centroid") == "spectral centroid (Hz)" and descriptor_label("flatness") == \
        "spectral flatness"


def test_bad_inputs_are_refused():
    with pytest.raises(ParameterError, match=r"x: expected shape .*got \(2, 80, 64\)"):
        note_descriptors(np.zeros((2, 80, 64), np.float32), cfg=CFG)
    with pytest.raises(ParameterError, match="notes >= 1"):
        note_descriptors(silence(0), cfg=CFG)
    with pytest.raises(ParameterError, match="roll_percent"):
        spectral_rolloff(silence(), cfg=CFG, roll_percent=1.0)
    with pytest.raises(ParameterError, match="onset_db, peak_db"):
        attack_time(silence(), cfg=CFG, onset_db=0.0)
    with pytest.raises(ParameterError, match="got 10.0 and 12.0"):
        note_descriptors(silence(), cfg=CFG, onset_db=10.0, peak_db=12.0)
    with pytest.raises(ParameterError, match="chunk"):
        note_descriptors(silence(), cfg=CFG, chunk=0)
    with pytest.raises(ParameterError, match="descriptor"):
        descriptor_label("loudness")
    with pytest.raises(ParameterError, match="size"):
        plane_grid(np.random.default_rng(0).normal(size=(10, 2)), size=1)
    with pytest.raises(ParameterError, match="no extent"):
        plane_grid(np.ones((10, 2)))


def _descriptor_data(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    values = pd.DataFrame({"centroid": rng.uniform(200, 4000, n), "attack": rng.exponential(0.1, n)})
    informative = np.column_stack([values["centroid"] / 1000 + rng.normal(0, 0.01, n),
                                   np.log(values["attack"] + 1e-3), rng.normal(size=(n, 6))])
    noise = rng.normal(size=(n, 8))
    fit = np.arange(n) < n * 3 // 4
    return values, {"carries": informative, "lacks": noise}, fit


def test_r2_is_near_one_for_features_that_carry_the_descriptor_and_near_zero_for_noise():
    values, features, fit = _descriptor_data()
    r2 = descriptor_r2(features, values, fit_mask=fit, eval_mask=~fit)
    assert list(r2.index) == ["centroid", "attack"] and list(r2.columns) == ["carries", "lacks"]
    assert r2.loc["centroid", "carries"] > 0.99
    assert r2.loc["attack", "carries"] > 0.5  # log(attack) is linear in no feature, but monotonic in one
    assert (r2["lacks"].abs() < 0.1).all()
    np.testing.assert_array_equal(r2, descriptor_r2(features, values, fit_mask=fit, eval_mask=~fit))


def test_r2_refuses_bad_masks_and_features():
    values, features, fit = _descriptor_data(n=20)
    with pytest.raises(ParameterError, match="fit_mask"):
        descriptor_r2(features, values, fit_mask=fit[:-1], eval_mask=~fit)
    with pytest.raises(ParameterError, match=">= 2 rows"):
        descriptor_r2(features, values, fit_mask=fit, eval_mask=np.eye(1, 20, 0, dtype=bool)[0])
    with pytest.raises(ParameterError, match="features\\['bad'\\]"):
        descriptor_r2({"bad": np.zeros((19, 3))}, values, fit_mask=fit, eval_mask=~fit)
    with pytest.raises(ParameterError, match="non-finite"):
        descriptor_r2(features, values.assign(attack=np.nan), fit_mask=fit, eval_mask=~fit)


def test_plane_grid_spans_the_points_row_major():
    coords = np.array([[-2.0, 1.0], [4.0, 3.0], [0.0, 2.0]])
    a1, a2, points = plane_grid(coords, size=4)
    np.testing.assert_allclose(a1, [-2, 0, 2, 4])
    np.testing.assert_allclose(a2, [1, 5 / 3, 7 / 3, 3])
    assert points.shape == (16, 2)
    np.testing.assert_allclose(points[1], [a1[1], a2[0]])  # along the first axis within a row
    np.testing.assert_allclose(points[4], [a1[0], a2[1]])


def _tiny_space(n_notes: int = 48, latent_dim: int = 4, seed: int = 0):
    model = TinyVAE(latent_dim=latent_dim, seed=seed)
    x = random_spectrograms(n_notes, seed=seed)
    mu, logvar = encode_features(model, x)
    meta = synthetic_meta().head(n_notes)
    split = meta["split"].to_numpy()
    space = LatentSpace(table=embedding_table(meta, mu, logvar), mu=mu, split=split,
                        projections={"PCA": project_pca(mu, fit_mask=split == "train")})
    return model, x, meta, space


def test_pca_inverse_goes_back_onto_the_plane_and_refuses_a_map_without_one():
    _, _, _, space = _tiny_space()
    proj = space.projections["PCA"]
    points = np.array([[0.0, 0.0], [1.5, -0.5], [-3.0, 2.0]])
    z = pca_inverse(proj)(points)
    assert z.shape == (3, space.mu.shape[1]) and z.dtype == np.float32
    np.testing.assert_allclose(proj.transform(z), points, atol=1e-5)
    umap_like = Projection("umap", proj.coords, lambda z: z[:, :2])
    with pytest.raises(ParameterError, match="'umap' map has no linear inverse"):
        pca_inverse(umap_like)


def test_decode_grid_on_a_tiny_model():
    model, _, _, space = _tiny_space()
    proj = space.projections["PCA"]
    grid = decode_grid(model, proj, cfg=CFG, size=5)
    assert grid.size == 5 and grid.z.shape == (25, space.mu.shape[1]) and grid.pitch is None
    assert set(grid.values) == set(DESCRIPTORS)
    assert all(v.shape == (5, 5) and np.isfinite(v).all() for v in grid.values.values())
    lo, hi = proj.coords.min(axis=0), proj.coords.max(axis=0)
    np.testing.assert_allclose(proj.transform(grid.z)[[0, -1]], [lo, hi], atol=1e-4)  # corners of the extent
    left, right, bottom, top = grid.extent
    assert left < lo[0] < hi[0] < right and bottom < lo[1] < hi[1] < top
    # TinyVAE's output is constant over time: no attack, the centroid in the middle, both flat over the grid
    np.testing.assert_array_equal(grid.values["attack"], 0.0)
    np.testing.assert_allclose(grid.values["temporal_centroid"], (FRAMES - 1) / 2 * FRAME_S, rtol=1e-5)
    m = grid.metrics
    assert m["size"] == 5 and m["descriptors"]["attack"]["spearman_pc1"] is None
    assert -1 <= m["descriptors"]["centroid"]["spearman_pc1"] <= 1
    # decoded spectrograms differ across the grid, so the spectral descriptors do too
    assert np.ptp(grid.values["centroid"]) > 0
    # a pitch-conditioned decoder gets the pitch at every point
    cond = TinyVAE(latent_dim=space.mu.shape[1], pitch_conditioning=True)
    low, high = (decode_grid(cond, proj, cfg=CFG, size=3, pitch=p) for p in (30, 90))
    assert low.pitch == 30 and not np.allclose(low.values["centroid"], high.values["centroid"])


def _fake_run(model, x, meta):
    """What describe_run reads of a TrainedRun: cfg, cache (features, meta) and model."""
    return SimpleNamespace(cfg=Config(), cache=SimpleNamespace(features=x, meta=meta), model=model)


def test_describe_run_and_its_metrics_are_strict_json():
    model, x, meta, space = _tiny_space()
    rng = np.random.default_rng(0)
    features = {"mu": space.mu, "pca": rng.normal(size=(len(meta), 4))}
    study = describe_run(space, features, _fake_run(model, x, meta), grid_size=4)
    assert len(study.values) == len(meta) and list(study.r2.columns) == ["mu", "pca"]
    m = study.metrics
    assert set(m) == {"r2", "units", "grid"} and set(m["r2"]) == set(DESCRIPTORS) == set(m["units"])
    assert all(set(v) == {"mu", "pca"} and all(r <= 1 for r in v.values()) for v in m["r2"].values())
    assert m["grid"]["size"] == 4

    def refuse(name):
        raise ValueError(name)
    assert json.loads(json.dumps(m), parse_constant=refuse) == m
    assert study.r2_table.index[0] == "spectral centroid (Hz)"
    limits = study.colour_limits()
    assert set(limits) == set(DESCRIPTORS)
    assert all(study.values[k].min() <= lo <= hi <= study.values[k].max() for k, (lo, hi) in limits.items())
    assert study.colour_limits(quantiles=(0.0, 1.0))["centroid"] == (study.values["centroid"].min(),
                                                                      study.values["centroid"].max())
    with pytest.raises(ParameterError, match="quantiles"):
        study.colour_limits(quantiles=(0.5, 0.5))
    assert list(study.summary.columns) == ["5%", "50%", "95%", "mean"]


def test_describe_run_refuses_notes_out_of_order_and_a_space_without_pca():
    model, x, meta, space = _tiny_space()
    features = {"mu": space.mu}
    with pytest.raises(ParameterError, match="not the run cache's"):
        describe_run(space, features, _fake_run(model, x, meta.iloc[::-1].reset_index(drop=True)))
    space.projections = {}
    with pytest.raises(ParameterError, match="map_latent_space"):
        describe_run(space, features, _fake_run(model, x, meta))


def test_figures_draw_a_panel_per_descriptor_with_unit_colour_bars():
    import matplotlib.pyplot as plt

    from vaelib.report.plots import descriptors as plots

    model, x, meta, space = _tiny_space()
    space.projections["UMAP"] = Projection("umap", space.projections["PCA"].coords[:, ::-1], lambda z: z)
    study = describe_run(space, {"mu": space.mu}, _fake_run(model, x, meta), grid_size=4)
    fig = plots.descriptor_maps_figure(space, study)
    labels = {ax.get_ylabel() for ax in fig.axes}
    assert {descriptor_label(d) for d in DESCRIPTORS} <= labels  # every colour bar names its unit
    assert len([ax for ax in fig.axes if ax.get_title()]) == 2 * len(DESCRIPTORS)
    fig = plots.descriptor_grid_figure(study, points=space.projections["PCA"].coords)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == len(DESCRIPTORS)
    assert tuple(images[0].images[0].get_extent()) == pytest.approx(study.grid.extent)
    fig = plots.descriptor_r2_figure(study)
    assert len(fig.axes[0].patches) == len(DESCRIPTORS)
    plt.close("all")
