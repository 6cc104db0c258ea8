"""02_train as executed by papermill in the session's smoke run: train_metrics.json and its figures."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_02_train_notebook_on_smoke_set(smoke_run):
    out_dir = smoke_run["run_dir"]
    metrics = json.loads((out_dir / "train_metrics.json").read_text())
    for key in ("latent_dim", "epoch_seconds_median", "epochs_run", "best_epoch", "best_valid_recon",
                "final_train_recon", "params_count", "device", "dtype", "checkpoint"):
        assert key in metrics, key
    assert metrics["latent_dim"] == 8 and metrics["epochs_run"] == 2 and metrics["trained_now"]
    assert metrics["contrast"] == metrics["pitch_head_weight"] == metrics["pitch_order"] == 0.0  # a plain VAE
    assert metrics["best_valid_recon"] > 0 and metrics["params_count"] > 0
    assert metrics["checkpoint"].startswith(str(smoke_run["tmp"] / "ckpt"))
    for png in ("train_curves.png", "train_latent_stats.png", "train_reconstructions.png"):
        assert (out_dir / png).stat().st_size > 0
