"""vaelib.analysis.targets: one table of targets, evaluated on metrics, shown on the run's index page."""

from __future__ import annotations

import pytest

from vaelib.analysis.targets import TARGETS, evaluate_targets, metric_value, targets_reference, targets_verdict
from vaelib.config import load_config
from vaelib.exceptions import ParameterError
from vaelib.report.html import run_index_html

DIAG = {"active_units_fraction": 0.95, "collapse": {"verdict": "none"}, "test_recon_mse": 0.019,
        "pca_test_recon_mse": 0.020}
MAP = {"family_logreg_margin_vs_pca": 0.13, "interp_step_ratio_median": 1.2, "interp_centroid_spearman_median": 1.0,
       "probes": {"mu": {"pitch1_logreg": 0.84}}}


def test_every_target_is_evaluated_from_the_table():
    cfg = load_config(None)
    diag = evaluate_targets(DIAG, notebook="03_diagnostics", cfg=cfg)
    assert list(diag) == ["active_units_fraction", "no_collapse", "test_recon_mse_vs_pca"]
    assert all(t["pass"] for t in diag.values())
    # the PCA baseline is read from the same metrics
    assert diag["test_recon_mse_vs_pca"]["threshold"] == 0.020
    worse = evaluate_targets({**DIAG, "test_recon_mse": 0.0201}, notebook="03_diagnostics", cfg=cfg)
    assert not worse["test_recon_mse_vs_pca"]["pass"]
    collapsed = evaluate_targets({**DIAG, "collapse": {"verdict": "partial"}}, notebook="03_diagnostics", cfg=cfg)
    assert collapsed["no_collapse"] == {"value": "partial", "threshold": "none", "op": "==", "pass": False,
                                        "target": "no posterior collapse"}
    latent = evaluate_targets(MAP, notebook="04_latent_map", cfg=cfg)
    assert [k for k, t in latent.items() if not t["pass"]] == ["pitch1_logreg"]  # 0.84 < 0.85
    assert latent["pitch1_logreg"]["value"] == 0.84 and latent["pitch1_logreg"]["threshold"] == 0.85
    assert "pitch1_logreg (0.84 vs 0.85)" in targets_verdict(latent)
    every = {t.key for t in TARGETS}
    assert set(diag) | set(latent) == every


def test_a_missing_or_nan_metric_fails_and_a_missing_baseline_is_an_error():
    cfg = load_config(None)
    out = evaluate_targets({**MAP, "interp_step_ratio_median": None, "interp_centroid_spearman_median": float("nan")},
                           notebook="04_latent_map", cfg=cfg)
    assert out["interp_step_ratio_median"]["pass"] is False and out["interp_step_ratio_median"]["value"] is None
    assert out["interp_centroid_spearman_median"]["pass"] is False
    with pytest.raises(ParameterError, match="pca_test_recon_mse"):
        evaluate_targets({k: v for k, v in DIAG.items() if k != "pca_test_recon_mse"}, notebook="03_diagnostics",
                         cfg=cfg)


def test_the_pitch_target_does_not_apply_to_a_pitch_conditioned_decoder():
    cfg = load_config(None, ["model.pitch_conditioning=true"])
    assert "pitch1_logreg" not in evaluate_targets(MAP, notebook="04_latent_map", cfg=cfg)


def test_metric_value_follows_dotted_paths():
    assert metric_value(MAP, "probes.mu.pitch1_logreg") == 0.84
    assert metric_value(MAP, "probes.pca.pitch1_logreg") is None and metric_value(MAP, "nope") is None


def test_reference_lists_every_target_and_the_index_shows_what_was_not_run():
    ref = targets_reference()
    assert all(f"`{t.key}`" in ref for t in TARGETS) and "`0.85`" in ref
    cfg = load_config(None)
    targets = evaluate_targets(DIAG, notebook="03_diagnostics", cfg=cfg)
    page = run_index_html({"targets": targets}, {}, ["01_preprocess", "03_diagnostics"], {"run": "r"})
    assert "no posterior collapse" in page and page.count(">met<") == 3
    assert page.count("not run (04_latent_map)") == sum(t.notebook == "04_latent_map" for t in TARGETS)
