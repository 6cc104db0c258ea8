"""The sweep's comparison page from experiments' metrics.json (the e2e sweep runs only 02_train, so the
page's trade-off figure, which needs 03's and 04's figures, is checked here on written metrics)."""

from __future__ import annotations

import json

import pytest

from vaelib.exceptions import ConfigError
from vaelib.report import sweep


def _write(root, name, metrics):
    (root / name).mkdir(parents=True)
    (root / name / "metrics.json").write_text(json.dumps(metrics))


def _spy(monkeypatch, name):
    calls, real = [], getattr(sweep, name)

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(sweep, name, spy)
    return calls


def test_index_draws_each_figure_from_the_runs_that_have_its_figures(tmp_path, monkeypatch):
    full = {"latent_dim": 32, "active_units": 30, "test_recon_mse": 0.018, "pca_test_recon_mse": 0.019,
            "probes": {"mu": {"family_logreg": 0.45}, "pca": {"family_logreg": 0.34}}}
    _write(tmp_path, "a_full", full)
    _write(tmp_path, "b_trained_only", {"latent_dim": 8, "active_units": 5})
    _write(tmp_path, "c_full", {**full, "latent_dim": 64, "active_units": 64, "test_recon_mse": 0.014,
                                "probes": {"mu": {"family_logreg": 0.42}, "pca": {"family_logreg": 0.38}}})
    _write(tmp_path, ".c_full.staging-1-x", full)  # a run in progress is not an experiment
    trade, active = _spy(monkeypatch, "tradeoff_figure"), _spy(monkeypatch, "active_units_figure")
    out = sweep.write_sweep_index(tmp_path)
    # the PCA point is the first usable run's (every experiment has its own PCA of its dimension)
    assert trade == [(["a_full", "c_full"], [0.018, 0.014], [0.45, 0.42], 0.019, 0.34)]
    assert active == [(["a_full", "b_trained_only", "c_full"], [30, 5, 64], [32, 8, 64])]
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 2
    assert all(f"{n}/metrics.json" in page for n in ("a_full", "b_trained_only", "c_full"))
    assert ".c_full.staging" not in page


def test_index_without_comparable_runs_has_no_figures(tmp_path):
    _write(tmp_path, "only", {"n_notes": {"train": 3}})
    page = sweep.write_sweep_index(tmp_path).read_text()
    assert "data:image/png" not in page and "only/metrics.json" in page


def test_sweep_refuses_clashing_run_names_before_running(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(sweep, "run_pipeline", lambda *a, **k: ran.append(a))
    for name in ("x", "y"):
        (tmp_path / f"{name}.yaml").write_text("run:\n  name: same\n")
    with pytest.raises(ConfigError, match=r"y\.yaml: run\.name 'same' is also the name of .*x\.yaml"):
        sweep.run_sweep([tmp_path / "x.yaml", tmp_path / "y.yaml"], reports_root=tmp_path / "reports")
    assert ran == []
    with pytest.raises(ConfigError, match="no params files"):
        sweep.run_sweep([], reports_root=tmp_path / "reports")
