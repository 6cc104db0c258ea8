"""The whole pipeline on the smoke params (the session's ``smoke_run``): metrics and indexes, reuse on rerun,
the browser check of every page, and a sweep of two tiny experiments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vaelib.report.browser_check import check_reports, find_chromium
from vaelib.report.pipeline import run_pipeline
from vaelib.report.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"
REQUIRED = ("n_notes", "n_instruments", "latent_dim", "active_units", "test_recon_mse", "pca_test_recon_mse",
            "probes", "interp_step_ratio_median", "interp_centroid_spearman_median", "gl_logmel_mae_db",
            "epoch_seconds_median")
PROBE_KEYS = ("family_logreg", "family_knn", "source_logreg", "source_knn", "pitch_logreg", "pitch_knn",
              "pitch1_logreg", "pitch1_knn")

pytestmark = pytest.mark.slow
# 03's KL figure as a screen reader hears it: the panels' titles, axis labels and legends (the smoke run's 56
# test notes and free bits of 0.25 nats)
ALT_KL = ("Figure. 2 panels: total raw KL per note (x: KL (nats); y: notes; legend: test notes (n=56)); "
          "mean raw KL per dimension (x: latent dimension; y: KL (nats); legend: free bits (0.25 nats), per dimension)")


def test_smoke_run_writes_every_report_and_metric(smoke_run):
    run_dir = smoke_run["run_dir"]
    for name in ("01_preprocess", "02_train", "03_diagnostics", "04_latent_map", "05_listening"):
        assert (run_dir / f"{name}.ipynb").is_file(), name
        assert (run_dir / f"{name}.html").stat().st_size > 10_000, name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    missing = [k for k in REQUIRED if k not in metrics]
    assert not missing, missing
    assert set(metrics["n_notes"]) == {"train", "valid", "test"} and sum(metrics["n_notes"].values()) > 100
    assert metrics["latent_dim"] == 8 and 0 <= metrics["active_units"] <= 8
    for kind in ("mu", "pca"):
        for key in PROBE_KEYS:
            assert 0.0 <= metrics["probes"][kind][key] <= 1.0, (kind, key)
    assert 0 < metrics["test_recon_mse"] < 1 and 0 < metrics["pca_test_recon_mse"] < 1
    assert metrics["interp_step_ratio_median"] >= 1.0
    assert 0 < metrics["gl_logmel_mae_db_loud"] < metrics["gl_logmel_mae_db"]  # the floor is the worse part
    assert metrics["targets"], "every run states its targets"
    index = (run_dir / "index.html").read_text()
    assert all(f"{n}.html" in index for n in ("01_preprocess", "05_listening"))
    assert metrics["run_info"]["commit"] in index
    assert "smoke/index.html" in (smoke_run["tmp"] / "reports" / "index.html").read_text()
    assert metrics["n_notes"] == {"train": 56, "valid": 56, "test": 56}
    assert (run_dir / "params.yaml").is_file()


def test_05_maps_the_points_of_04_with_the_umap_fit_of_04(smoke_run):
    """04 stores its UMAP of mu in features.cache_dir/maps; 05 maps the same mu and reads that fit: the
    store holds one map, named by the digest of 04's mu and written before 05 started, and 05 says it
    read it (a 05 that encoded other bits would have added another map)."""
    import datetime

    import pandas as pd

    from vaelib.analysis.latent import latent_matrix
    from vaelib.analysis.map_store import map_store, umap_key

    cfg, run_dir = smoke_run["cfg"], smoke_run["run_dir"]
    assert cfg.analysis.umap
    mu = latent_matrix(pd.read_parquet(run_dir / "embeddings.parquet"))
    key = umap_key(mu, min(cfg.analysis.umap_neighbors, len(mu) - 1), cfg.analysis.umap_min_dist, cfg.run.seed)
    stored = sorted(map_store(cfg).glob("umap-*.pkl"))
    assert [p.name for p in stored] == [f"umap-{key[:20]}.pkl"]
    nb05 = json.loads((run_dir / "05_listening.ipynb").read_text())
    started = datetime.datetime.fromisoformat(nb05["metadata"]["papermill"]["start_time"]).timestamp()
    assert stored[0].stat().st_mtime < started
    assert json.loads((run_dir / "listening.json").read_text())["map_umap_read_from_store"] == ["umap"]


def test_progress_bars_reach_the_notebook_but_not_the_report(smoke_run):
    nb = json.loads((smoke_run["run_dir"] / "02_train.ipynb").read_text())
    stderr = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                     for o in c.get("outputs", []) if o.get("name") == "stderr")
    assert "epoch" in stderr and "\r" in stderr
    assert "batch/s]" in stderr and "batch/s]" not in (smoke_run["run_dir"] / "02_train.html").read_text()


def test_rerun_reuses_dataset_cache_and_checkpoint(smoke_run):
    tmp = smoke_run["tmp"]
    caches = sorted(p.name for p in (tmp / "cache").iterdir())
    ds = smoke_run["dataset"]
    ckpts = {p: p.stat().st_mtime_ns for p in (tmp / "ckpt").glob("*/best.pt")}
    wav = next((ds / "audio").iterdir())
    wav_mtime = wav.stat().st_mtime_ns
    # Only analysis parameters change: nothing upstream is rebuilt (UMAP off keeps this rerun short).
    # A second run name, so the session's smoke run stays as the notebook tests read it; 02 is the
    # notebook that would re-render, rebuild the cache or retrain, so it is the one rerun here.
    rerun = run_pipeline(SMOKE, [*smoke_run["overrides"], "analysis.interp_steps=4", "analysis.umap=false",
                                 "run.name=smoke_rerun", "report.notebooks=[02_train]"],
                         reports_root=tmp / "reports")
    assert sorted(p.name for p in (tmp / "cache").iterdir()) == caches
    assert {p: p.stat().st_mtime_ns for p in (tmp / "ckpt").glob("*/best.pt")} == ckpts
    assert wav.stat().st_mtime_ns == wav_mtime
    metrics = json.loads((rerun / "metrics.json").read_text())
    assert "analysis.interp_steps=4" in metrics["run_info"]["overrides"]
    assert metrics["trained_now"] is False
    first = json.loads((smoke_run["run_dir"] / "train_metrics.json").read_text())
    assert metrics["checkpoint"] == first["checkpoint"] and metrics["best_valid_recon"] == first["best_valid_recon"]


@pytest.mark.skipif(find_chromium() is None,
                    reason="Chromium not installed (apt-get install -y chromium): browser check of reports skipped")
def test_reports_render_in_chromium(smoke_run):
    problems, seen = check_reports(smoke_run["tmp"] / "reports")
    assert problems == []
    assert seen["smoke/02_train.html"]["images"] >= 2
    assert seen["smoke/05_listening.html"]["audio"] >= 2


def test_sweep_of_two_tiny_experiments(smoke_run, tmp_path):
    files = []
    # 02_train only, one epoch each: the sweep's own work is running several params files on one dataset and
    # cache and comparing them; 03/04 run in the smoke run, and the page's figures from their metrics are
    # tested in test_sweep.py. (Each notebook costs ~15 s on a 2-core CPU, ~6 s of it importing torch,
    # scikit-learn and matplotlib; 03 and 04 at another latent size are not rerun here.)
    common = {"base": str(SMOKE), "report": {"notebooks": ["02_train"]}}
    for name, extra in (("tiny_a", {"train": {"free_bits": 0.5, "epochs": 1}}),
                        ("tiny_b", {"model": {"latent_dim": 4}, "train": {"epochs": 1}})):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**common, "run": {"name": name}, **extra}))
        files.append(path)
    reports = smoke_run["tmp"] / "reports"
    caches = set((smoke_run["tmp"] / "cache").iterdir())  # the smoke run's, and its transfer set's (04)
    out = run_sweep(files, smoke_run["overrides"], reports_root=reports)
    assert out == reports / "experiments" / "index.html"
    page = out.read_text()
    assert "tiny_a/index.html" in page and "tiny_b/index.html" in page
    assert page.count("data:image/png;base64,") == 1  # active units; the trade-off needs 03 and 04
    a = json.loads((reports / "experiments" / "tiny_a" / "metrics.json").read_text())
    b = json.loads((reports / "experiments" / "tiny_b" / "metrics.json").read_text())
    assert a["latent_dim"] == 8 and b["latent_dim"] == 4
    assert a["trained_now"] and b["trained_now"] and a["free_bits"] == 0.5 and a["epochs_run"] == 1
    assert 0 <= b["active_units"] <= 4
    # Both experiments share the smoke run's dataset and feature cache.
    assert set((smoke_run["tmp"] / "cache").iterdir()) == caches
    listing = (reports / "index.html").read_text()
    assert "experiments/tiny_a/index.html" in listing and "smoke/index.html" in listing


def test_metadata_markup_is_escaped_on_every_page(smoke_run):
    """Every instrument of the smoke run is named with markup (conftest.HOSTILE_PREFIX): each page shows the
    name as text, and none holds it as an element."""
    from html.parser import HTMLParser

    class Elements(HTMLParser):
        def __init__(self):
            super().__init__()
            self.hostile = 0

        def handle_starttag(self, tag, attrs):
            self.hostile += tag == "img" and ("onerror", "alert(1)") in attrs

    pages = sorted(smoke_run["run_dir"].glob("*.html"))
    shown = 0
    for page in pages:
        text = page.read_text()
        parser = Elements()
        parser.feed(text)
        assert parser.hostile == 0, f"{page.name}: metadata markup became an element"
        shown += "&lt;img src=x onerror=alert(1)&gt;" in text
        # no nbconvert MathJax: it would be fetched from the network, and typeset what lies between two names' '$'
        assert "<!-- Load mathjax -->" not in text and "libs/mathjax" not in text, f"{page.name} loads MathJax"
    assert shown >= 3, f"the escaped instrument names appear on only {shown} of {len(pages)} pages"


def test_every_figure_has_alternative_text_from_its_own_words(smoke_run):
    from _html import images

    problems, _ = check_reports(smoke_run["run_dir"], use_browser=False)
    assert problems == [], problems  # an image without alternative text is a problem of the check
    alts = [i.get("alt") for i in images((smoke_run["run_dir"] / "03_diagnostics.html").read_text())]
    kl = [a for a in alts if a and a.startswith("Figure. 2 panels: total raw KL per note")]
    assert kl == [ALT_KL], alts
