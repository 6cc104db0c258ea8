"""03_diagnostics, 04_latent_map and 05_listening as executed by papermill in the session's smoke run."""

from __future__ import annotations

import json

import pytest

from vaelib.analysis.probes import PROBE_KEYS
from vaelib.config import PROJECT_ROOT

pytestmark = pytest.mark.slow
NOTEBOOKS = PROJECT_ROOT / "notebooks"


@pytest.fixture(scope="module")
def run(smoke_run):
    from vaelib.data.prepare import prepare_features

    return {**smoke_run, "cache": prepare_features(smoke_run["cfg"], show_progress=False)}


@pytest.fixture(scope="module")
def execute(smoke_run):
    """The notebooks were executed by the session's smoke run; this hands back its folder."""

    def go(name: str):
        assert (smoke_run["run_dir"] / f"{name}.ipynb").is_file(), name
        return smoke_run["run_dir"]

    return go


def test_03_diagnostics(execute, run):
    out = execute("03_diagnostics")
    m = json.loads((out / "diagnostics.json").read_text())
    d = run["cfg"].model.latent_dim
    assert m["latent_dim"] == d and 0 <= m["active_units"] <= d
    assert 0 < m["test_recon_mse"] < 1 and 0 < m["pca_test_recon_mse"] < 1
    assert set(m["test_recon_mse_by_family"]) == set(run["cache"].split("test")[1]["instrument_family_str"])
    assert m["collapse"]["verdict"] in ("none", "partial", "full")
    assert {"active_units_fraction", "no_collapse", "test_recon_mse_vs_pca"} <= set(m["targets"])
    assert all(isinstance(t["pass"], bool) for t in m["targets"].values())


def _strict_json(text: str):
    """json.loads that refuses NaN and Infinity, which Python writes but JSON readers reject."""
    def refuse(name):
        raise ValueError(f"{name} in JSON")
    return json.loads(text, parse_constant=refuse)


def test_04_latent_map(execute, run):
    out = execute("04_latent_map")
    m = _strict_json((out / "latent_map.json").read_text())
    n = len(run["cache"].meta)
    assert m["projection_shapes"] == {"PCA": [n, 2], "UMAP": [n, 2]}
    assert (out / "embeddings.parquet").is_file()
    for feats in ("mu", "pca"):
        assert set(m["probes"][feats]) == set(PROBE_KEYS)
        assert all(0 <= v <= 1 for v in m["probes"][feats].values())
        assert all(0 <= v["mean"] <= 1 for v in m["probes_cv"][feats].values())
    # the pitch probe's breakdown: by octave for both feature sets, by test instrument, and whose
    # accuracies weighted by their notes give back the probe's own overall figure
    test_meta = run["cache"].split("test")[1]
    by_inst = m["pitch1_logreg_by_instrument"]
    assert set(by_inst) == set(test_meta["instrument_str"])
    counts = test_meta["instrument_str"].value_counts()
    overall = sum(by_inst[k] * counts[k] for k in by_inst) / counts.sum()
    assert overall == pytest.approx(m["probes"]["mu"]["pitch1_logreg"])
    octave_counts = (test_meta["pitch"] // 12 - 1).value_counts()
    for feats in ("mu", "pca"):
        by_octave = m["pitch1_logreg_by_octave"][feats]
        assert {k.split(" ")[0] for k in by_octave} == {f"C{o}-B{o}" for o in octave_counts.index}
        # weighted by each octave's notes, the octaves give back the probe's overall figure
        weighted = sum(v * octave_counts[int(k.split("-")[0][1:])] for k, v in by_octave.items())
        assert weighted / octave_counts.sum() == pytest.approx(m["probes"][feats]["pitch1_logreg"])
    # the smoke set's pitches (48-72) all have resolved harmonics: the other group is empty (None, not NaN)
    assert m["pitch_unresolved_share"] == 0.0 and m["pitch1_logreg_unresolved_harmonics"] == {"mu": None, "pca": None}
    assert m["pitch1_logreg_resolved_harmonics"]["mu"] == pytest.approx(m["probes"]["mu"]["pitch1_logreg"])
    assert 0 <= m["pitch_octave_error_share"] <= 1
    assert m["interp_n_paths"] == 2 * len(run["cfg"].analysis.interp_pairs)
    assert m["interp_step_ratio_median"] >= 1.0
    assert {"family_logreg_margin_vs_pca", "interp_step_ratio_median",
            "interp_centroid_spearman_median"} <= set(m["targets"])
    _check_descriptors(m["descriptors"], run["cfg"])
    _check_transfer(m["transfer"], run)


def _check_transfer(t: dict, run) -> None:
    # one set: the smoke programs rendered again from a copy of the SoundFont the run was trained on
    assert list(t) == ["copy"]
    copy = t["copy"]
    assert copy["dataset"]["soundfont"] == "Copy_GM.sf2"
    meta = run["cache"].meta
    assert copy["all"]["notes"] == len(meta) and copy["all"]["instruments"] == meta["instrument_str"].nunique()
    unseen = copy["unseen_programs"]
    trained = set(run["cfg"].render.programs) - set(unseen["programs"])
    assert len(trained) == meta.loc[meta["split"] == "train", "instrument_str"].nunique()
    assert unseen["notes"] == int((meta["split"] != "train").sum())  # valid and test instruments' programs
    for block in (copy["all"], unseen):
        for feats in ("mu", "pca"):
            assert set(block["probes"][feats]) == set(PROBE_KEYS)
            assert all(0 <= v <= 1 for v in block["probes"][feats].values())
        assert all(0 < v < 4 for v in block["recon_mse"].values())  # log-mel in [-1, 1]: squared errors below 4
    within = copy["within_set"]  # the copy's own family probe, folds grouped by program
    assert within["folds"] == run["cfg"].analysis.probe_folds <= len(run["cfg"].render.programs)
    assert within["note"] == "" and all(0 <= v <= 1 for part in ("all", "unseen_programs")
                                        for v in within[part].values())
    metrics = json.loads((run["run_dir"] / "metrics.json").read_text())
    assert metrics["transfer"] == t  # merged into the run's metrics.json as transfer.<name>


def _check_descriptors(d: dict, cfg) -> None:
    """04's descriptor section: R^2 from mu and PCA per descriptor, units, the decoded grid's ranges."""
    from vaelib.analysis.descriptors import DESCRIPTORS, GRID_SIZE, UNITS

    assert set(d) == {"r2", "units", "grid"} and d["units"] == UNITS
    assert set(d["r2"]) == set(DESCRIPTORS)
    assert all(set(v) == {"mu", "pca"} and all(r <= 1.0 for r in v.values()) for v in d["r2"].values())
    g = d["grid"]
    assert g["size"] == GRID_SIZE and g["pitch"] is None  # the smoke model is not pitch-conditioned
    assert g["pc1"][0] < g["pc1"][1] and g["pc2"][0] < g["pc2"][1]
    assert set(g["descriptors"]) == set(DESCRIPTORS)
    f = cfg.features
    longest = (f.frames - 1) * f.hop_length / f.sample_rate  # s, the last frame's time
    bounds = {"centroid": (f.fmin, f.fmax), "bandwidth": (0.0, f.fmax - f.fmin), "flatness": (0.0, 1.0),
              "rolloff": (f.fmin, f.fmax), "attack": (0.0, longest), "temporal_centroid": (0.0, longest)}
    for name, v in g["descriptors"].items():
        lo, hi = bounds[name]
        assert lo <= v["min"] <= v["max"] <= hi, (name, v)
        assert all(s is None or -1.0 <= s <= 1.0 for s in (v["spearman_pc1"], v["spearman_pc2"])), (name, v)


def test_05_listening(execute, run):
    from vaelib.analysis.listening import one_velocity

    out = execute("05_listening")
    m = json.loads((out / "listening.json").read_text())
    a = run["cfg"].analysis
    assert 0 < m["gl_logmel_mae_db"] < 80
    assert set(m["gl_logmel_mae_db_by_kind"]) == {"original", "reconstruction", "interpolation"}
    assert len(m["listen_notes"]) == a.n_listen
    # every pair of the params, linear and spherical, each step and all steps back to back
    walks = 2 * len(a.interp_pairs)
    assert len(m["listen_interpolations"]) == walks and m["listen_skipped"] == []
    assert len(m["wav_files"]) == 2 * a.n_listen + walks * (a.interp_steps + 1)
    assert all((out / w).is_file() for w in m["wav_files"])
    assert (out / "05_listening.ipynb").read_text().count("data:audio/mpeg;base64") >= len(m["wav_files"])
    # the listening map: every test note at one velocity and the train notes there (the smoke set has fewer
    # than analysis.map_train_notes), the linear paths, PCA and UMAP of mu (the smoke model reserves no timbre
    # dimensions); a page of its own, within its budget, linked from 05's report and from the run's index
    meta = run["cache"].meta
    at_velocity = one_velocity(meta, velocity=a.interp_velocity)
    n_test, n_train = (int((at_velocity & (meta["split"] == s).to_numpy()).sum()) for s in ("test", "train"))
    assert n_test + min(n_train, a.map_train_notes) <= a.map_max_notes
    assert m["map_notes"] == {"test": n_test, "train": min(n_train, a.map_train_notes)} and m["map_left_out"] == 0
    assert m["map_test_available"] == n_test and m["map_path_steps"] == len(a.interp_pairs) * a.interp_steps
    assert m["map_maps"] == ["pca", "umap"] and m["map_timbre_dims"] is None
    assert m["map_griffin_lim_iters"] == a.map_griffin_lim_iters and m["map_griffin_lim_seconds_per_note"] > 0
    page = out / "05_map.html"
    assert m["map_page"] == page.name and m["map_page_bytes"] == page.stat().st_size <= m["map_budget_bytes"]
    assert page.read_text().count("data:audio/mpeg;base64") == 2 * sum(m["map_notes"].values()) + m["map_path_steps"]
    assert "05_map.html" in (out / "05_listening.html").read_text()
    assert "href='05_map.html'" in (out / "index.html").read_text()
