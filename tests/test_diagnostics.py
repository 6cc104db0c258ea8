"""vaelib.analysis.diagnostics on synthetic latents and spectrograms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _fixtures_analysis import random_spectrograms

from vaelib.analysis.diagnostics import (
    active_units,
    collapse_verdict,
    distance_within_across,
    mse_by_group,
    pca_recon_mse,
    recon_mse,
)
from vaelib.analysis.targets import check_target
from vaelib.exceptions import ParameterError


@pytest.fixture
def loss():
    return pytest.importorskip("vaelib.model.loss")


def test_active_units_counts_varying_dimensions():
    rng = np.random.default_rng(0)
    mu = np.concatenate([rng.normal(size=(200, 3)), 0.01 * rng.normal(size=(200, 2))], axis=1)
    with pytest.warns(UserWarning, match="2 of 5 latent dimensions are inactive"):
        assert active_units(mu) == 3


def test_latent_stats_and_collapse_verdicts(loss):
    from vaelib.analysis.diagnostics import kl_matrix, latent_stats

    rng = np.random.default_rng(0)
    mu = rng.normal(size=(100, 4)).astype(np.float32)
    logvar = np.full_like(mu, -2.0)
    stats = latent_stats(mu, logvar)
    assert list(stats.index) == [0, 1, 2, 3] and stats["active"].all()
    # KL of N(mu, e^-2) against N(0, 1): 0.5 (mu^2 + e^-2 - 1 + 2)
    np.testing.assert_allclose(kl_matrix(mu, logvar), 0.5 * (mu ** 2 + np.exp(-2.0) + 1.0), rtol=1e-5)
    assert collapse_verdict(stats)["verdict"] == "none"

    collapsed = latent_stats(np.zeros_like(mu), np.zeros_like(mu))
    v = collapse_verdict(collapsed)
    assert v["verdict"] == "full" and v["collapsed"] and v["active_units"] == 0

    mu_partial = mu.copy()
    mu_partial[:, 1:] = 0.0
    v = collapse_verdict(latent_stats(mu_partial, logvar))
    assert v["verdict"] == "partial" and v["inactive_dims"] == [1, 2, 3]


def test_distance_within_across_separates_clusters():
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 20)
    centres = {"a": 0.0, "b": 10.0, "c": 20.0}
    mu = np.array([[centres[k], 0.0] for k in labels]) + 0.1 * rng.normal(size=(60, 2))
    within, across = distance_within_across(mu, labels, rng=np.random.default_rng(0))
    assert len(within) + len(across) == 60 * 59 // 2
    assert len(within) == 3 * 20 * 19 // 2
    assert within.max() < across.min()
    within_s, across_s = distance_within_across(mu, labels, max_notes=30, rng=np.random.default_rng(0))
    assert len(within_s) + len(across_s) == 30 * 29 // 2


def test_recon_mse_and_pca_baseline():
    x = random_spectrograms(12, seed=1).astype(np.float32)
    assert np.all(recon_mse(x, x) == 0)
    np.testing.assert_allclose(recon_mse(x, x + 0.5), 0.25, rtol=1e-6)
    with pytest.raises(ParameterError):
        recon_mse(x, x[:3])
    # The test notes lie in the span of the train notes: PCA of full rank reconstructs them.
    train = x[:10]
    test = (0.5 * train[:1] + 0.5 * train[1:2]).astype(np.float32)
    mse, x_hat = pca_recon_mse(train, test, n_components=10)
    assert x_hat.shape == test.shape and mse[0] < 1e-8
    mse_small, _ = pca_recon_mse(train, x[10:], n_components=2)
    assert mse_small.shape == (2,) and np.all(mse_small > 0)
    with pytest.raises(ParameterError, match="n_components"):
        pca_recon_mse(train, test, n_components=11)


def test_mse_by_group_and_targets():
    table = mse_by_group({"vae": np.array([1.0, 3.0, 5.0]), "pca": np.array([2.0, 2.0, 2.0])},
                         np.array(["x", "x", "y"]))
    pd.testing.assert_series_equal(table["vae"], pd.Series([2.0, 5.0], index=pd.Index(["x", "y"], name="group"),
                                                           name="vae"))
    assert list(table["n_notes"]) == [2, 1]
    assert check_target(0.9, 0.85, op=">=", text="t")["pass"]
    assert not check_target(3.0, 2.5, op="<=", text="t")["pass"]
    assert not check_target(None, 2.5, op="<=", text="t")["pass"]
    assert check_target(float("nan"), 2.5, op="<=", text="t")["value"] is None
    with pytest.raises(ParameterError):
        check_target(1.0, 1.0, op="==", text="t")
