"""vaelib.analysis.interpolate: paths, pair choice (families or instruments, and the syntax of a pair), continuity
measures, decoded walks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _fixtures_analysis import TinyVAE, random_spectrograms, synthetic_meta

from vaelib.analysis.interpolate import (
    choose_pairs,
    interpolate_pairs,
    latent_path,
    mel_bandwidth,
    mel_centroid,
    monotonicity,
    step_ratio,
    summarize_paths,
)
from vaelib.analysis.latent import decode_latents, encode_features
from vaelib.config import FeatureConfig, interp_pair_sides, load_config
from vaelib.exceptions import ConfigError, ParameterError

CFG = FeatureConfig()


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_paths_start_and_end_at_the_endpoints(method):
    rng = np.random.default_rng(0)
    z0, z1 = rng.normal(size=8), rng.normal(size=8)
    path = latent_path(z0, z1, steps=7, method=method)
    assert path.shape == (7, 8)
    np.testing.assert_array_equal(path[0], z0.astype(np.float32))
    np.testing.assert_array_equal(path[-1], z1.astype(np.float32))


def test_slerp_keeps_the_norm_of_equal_norm_ends_and_lerp_is_straight():
    z0, z1 = np.array([3.0, 0.0]), np.array([0.0, 3.0])
    np.testing.assert_allclose(np.linalg.norm(latent_path(z0, z1, steps=9, method="slerp"), axis=1), 3.0, rtol=1e-6)
    lin = latent_path(z0, z1, steps=3, method="linear")
    np.testing.assert_allclose(lin[1], [1.5, 1.5])
    with pytest.raises(ParameterError, match="method"):
        latent_path(z0, z1, steps=3, method="cubic")


def test_choose_pairs_picks_distinct_instruments_at_a_shared_note():
    meta = synthetic_meta()
    # brass_acoustic_000 (test) lacks pitch 60: the exact pitch of a train instrument wins over the split.
    meta = meta[~((meta["instrument_str"] == "brass_acoustic_000") & (meta["pitch"] == 60))].reset_index(drop=True)
    choices, skipped = choose_pairs(meta, ["keyboard:string", "brass:guitar", "flute:organ"], pitch=60, velocity=127)
    assert len(choices) == 2 and len(skipped) == 1 and "flute:organ" in skipped[0]
    kb, br = choices
    assert (kb.instrument_a, kb.instrument_b) == ("keyboard_acoustic_000", "string_acoustic_000")  # test split first
    assert (kb.pitch, kb.velocity) == (60, 127)
    assert (br.instrument_a, br.instrument_b, br.pitch) == ("brass_acoustic_001", "guitar_acoustic_000", 60)
    for c in choices:
        a, b = meta.iloc[c.index_a], meta.iloc[c.index_b]
        assert a["instrument_str"] == c.instrument_a and b["instrument_str"] == c.instrument_b
        assert a["pitch"] == b["pitch"] == c.pitch and a["velocity"] == b["velocity"] == c.velocity
    same, _ = choose_pairs(meta, ["keyboard:keyboard"], pitch=60, velocity=127)
    assert same[0].instrument_a != same[0].instrument_b


def test_pairs_name_families_or_instruments():
    meta = synthetic_meta()
    choices, skipped = choose_pairs(meta, ["keyboard_acoustic_001:string", "brass:guitar_acoustic_002",
                                           "keyboard_acoustic_002:string_acoustic_001"], pitch=60, velocity=127)
    assert skipped == [] and [c.pair for c in choices] == ["keyboard_acoustic_001:string", "brass:guitar_acoustic_002",
                                                           "keyboard_acoustic_002:string_acoustic_001"]
    named, family_b, both = choices
    assert (named.instrument_a, named.instrument_b) == ("keyboard_acoustic_001", "string_acoustic_000")  # test first
    assert (named.family_a, named.family_b) == ("keyboard", "string")
    assert (family_b.instrument_a, family_b.instrument_b, family_b.family_b) == (
        "brass_acoustic_000", "guitar_acoustic_002", "guitar")
    assert (both.instrument_a, both.instrument_b, both.pitch, both.velocity) == (
        "keyboard_acoustic_002", "string_acoustic_001", 60, 127)
    # a family may be paired with one of its own instruments: the other side is another instrument
    own, _ = choose_pairs(meta, ["keyboard_acoustic_000:keyboard"], pitch=60, velocity=127)
    assert own[0].instrument_b == "keyboard_acoustic_001"


def test_pairs_naming_what_the_notes_lack():
    meta = synthetic_meta()
    with pytest.raises(ParameterError, match=r"no instrument 'keyboard_acoustic_009'.*'keyboard_acoustic_00"):
        choose_pairs(meta, ["keyboard_acoustic_009:string"], pitch=60, velocity=127)
    with pytest.raises(ParameterError, match="is not 'a:b'"):
        choose_pairs(meta, ["keyboard-string"], pitch=60, velocity=127)
    _, skipped = choose_pairs(meta, ["flute:string"], pitch=60, velocity=127)
    assert skipped == ["flute:string: no instrument of family 'flute' in the notes"]


@pytest.mark.parametrize(("pair", "message"), [
    ("keyboard-string", "is not 'a:b'"),
    ("keyboard:string:brass", "is not 'a:b'"),
    (":string", "is not 'a:b'"),
    ("keybaord:string", "'keybaord' is neither a family .* nor an instrument_str .*did you mean 'keyboard'"),
    ("keyboard_acoustic_004:keyboard_acoustic_004", "names one instrument on both sides"),
])
def test_pair_syntax_is_checked_with_the_params(pair, message):
    with pytest.raises(ConfigError, match=rf"analysis.interp_pairs: {pair!r}: {message}|analysis.interp_pairs: "
                                          rf"{pair!r} {message}"):
        load_config(None, [f"analysis.interp_pairs=[{pair!r}]"])


@pytest.mark.parametrize("pair", ["keyboard:string", "synth_lead:keyboard_acoustic_004", "string_acoustic_012:brass",
                                  "keyboard:keyboard", "keyboard_acoustic_004:string_acoustic_012"])
def test_pair_syntax_accepts_families_and_instruments(pair):
    assert load_config(None, [f"analysis.interp_pairs=[{pair!r}]"]).analysis.interp_pairs == (pair,)
    assert interp_pair_sides(pair) == tuple(pair.split(":"))


def test_step_ratio_and_monotonicity():
    even = np.linspace(0, 1, 9)[:, None] * np.ones((9, 10))
    assert step_ratio(even) == pytest.approx(1.0)
    jump = even.copy()
    jump[5:] += 3.0
    assert step_ratio(jump) > 4
    assert np.isnan(step_ratio(np.zeros((4, 3))))
    assert monotonicity(np.array([1.0, 2.0, 3.0, 5.0])) == pytest.approx(1.0)
    assert monotonicity(np.array([5.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert np.isnan(monotonicity(np.ones(4)))


def test_centroid_and_bandwidth_follow_the_spectrum():
    low, high = np.full((2, 1, 80, 128), -1.0, np.float32)
    low[0, 10], high[0, 60] = 1.0, 1.0
    c = mel_centroid(np.stack([low, high]), cfg=CFG)
    assert c[0] < c[1] and 0 < c[0] and c[1] < CFG.fmax
    wide = np.full((1, 80, 128), -1.0, np.float32)
    wide[0, 10], wide[0, 60] = 1.0, 1.0
    bw = mel_bandwidth(np.stack([low, wide]), cfg=CFG)
    assert bw[0] < 0.01 * bw[1]


def test_decoded_paths_start_and_end_at_the_decoded_endpoints():
    model = TinyVAE(latent_dim=4)
    meta = synthetic_meta()
    mu, _ = encode_features(model, random_spectrograms(len(meta)))
    choices, _ = choose_pairs(meta, ["keyboard:string", "brass:guitar"], pitch=60, velocity=127)
    rows, paths = interpolate_pairs(model, mu, choices, cfg=CFG, steps=5, pitch_conditioning=False)
    assert len(rows) == 4 and set(rows["method"]) == {"linear", "slerp"}
    for c in choices:
        ends = decode_latents(model, mu[[c.index_a, c.index_b]])
        for method in ("linear", "slerp"):
            x = paths[(c.pair, method)]["x"]
            assert x.shape == (5, 1, 80, 128)
            np.testing.assert_allclose(x[0], ends[0], atol=1e-6)
            np.testing.assert_allclose(x[-1], ends[1], atol=1e-6)
    summary = summarize_paths(rows)
    assert summary["interp_n_paths"] == 4 and summary["interp_step_ratio_median"] >= 1.0
    assert set(summary["interp_by_method"]) == {"linear", "slerp"}


def test_summary_counts_only_pairs_with_distinct_centroids():
    rows = pd.DataFrame({"method": ["linear"] * 3, "step_ratio": [1.0, 2.0, 3.0],
                         "centroid_spearman": [-1.0, 0.5, 0.9], "bandwidth_spearman": [1.0, 1.0, 1.0],
                         "centroid_rel_diff": [0.5, 0.1, 0.3]})
    s = summarize_paths(rows)
    assert s["interp_step_ratio_median"] == 2.0
    assert s["interp_n_centroid_eligible"] == 2 and s["interp_centroid_spearman_median"] == pytest.approx(0.95)
