"""02_train runs top to bottom through papermill on the smoke set and writes train_metrics.json."""

from __future__ import annotations

import json

import papermill as pm
import pytest

from vaelib.config import PROJECT_ROOT

NOTEBOOK = PROJECT_ROOT / "notebooks" / "02_train.ipynb"
SMOKE = PROJECT_ROOT / "params" / "smoke.yaml"


@pytest.mark.slow
def test_02_train_notebook_on_smoke_set(tmp_path, smoke_dataset):
    out_dir = tmp_path / "report"
    overrides = [f"data.root={smoke_dataset}", f"features.cache_dir={tmp_path / 'cache'}",
                 f"train.checkpoint_dir={tmp_path / 'ckpt'}", "train.num_threads=2"]
    params = {"params_file": str(SMOKE), "overrides": overrides, "out_dir": str(out_dir), "retrain": False}
    pm.execute_notebook(str(NOTEBOOK), str(tmp_path / "02_train.out.ipynb"), parameters=params,
                        kernel_name="python3", cwd=str(NOTEBOOK.parent), progress_bar=False)
    metrics = json.loads((out_dir / "train_metrics.json").read_text())
    for key in ("latent_dim", "epoch_seconds_median", "epochs_run", "best_epoch", "best_valid_recon",
                "final_train_recon", "params_count", "device", "dtype", "checkpoint"):
        assert key in metrics, key
    assert metrics["latent_dim"] == 8 and metrics["epochs_run"] == 2 and metrics["trained_now"]
    assert metrics["best_valid_recon"] > 0 and metrics["params_count"] > 0
    for png in ("train_curves.png", "train_latent_stats.png", "train_reconstructions.png"):
        assert (out_dir / png).stat().st_size > 0
    # a second run reuses the checkpoint instead of training again
    pm.execute_notebook(str(NOTEBOOK), str(tmp_path / "02_train.again.ipynb"), parameters=params,
                        kernel_name="python3", cwd=str(NOTEBOOK.parent), progress_bar=False)
    again = json.loads((out_dir / "train_metrics.json").read_text())
    assert not again["trained_now"] and again["checkpoint"] == metrics["checkpoint"]
