"""vaelib.analysis.transfer: a run's probes and reconstruction scored on another dataset: all notes, unseen programs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from _fixtures_analysis import TinyVAE, random_spectrograms, synthetic_meta

from vaelib.analysis.latent import encode_features
from vaelib.analysis.latent_map import LatentSpace
from vaelib.analysis.probes import PROBE_KEYS, accuracy, grouped_predictions
from vaelib.analysis.run import TrainedRun
from vaelib.analysis.transfer import (
    TABLE_PROBES,
    WITHIN_ROW,
    NoteScores,
    evaluate_transfer,
    fit_reference,
    score_transfer_set,
    train_programs,
    transfer_dataset,
    transfer_targets,
    unseen_programs,
    within_set_family,
)
from vaelib.config import PROJECT_ROOT, load_config
from vaelib.data.prepare import prepare_features
from vaelib.data.soundfonts import default_soundfont
from vaelib.exceptions import DataError

SMOKE = PROJECT_ROOT / "params" / "smoke.yaml"
# three instruments in each of three families: one of each is held out as test, so its program is unseen
PROGRAMS = [0, 1, 3, 24, 25, 105, 40, 41, 42]


def _check_scores(block: dict, *, notes: int) -> None:
    assert block["notes"] == notes and block["instruments"] >= 1
    for features in ("mu", "pca"):
        assert set(block["probes"][features]) == set(PROBE_KEYS)
        assert all(0.0 <= v <= 1.0 for v in block["probes"][features].values())
    assert all(np.isfinite(v) and v > 0 for v in block["recon_mse"].values())
    assert block["family_logreg_margin_vs_pca"] == pytest.approx(
        block["probes"]["mu"]["family_logreg"] - block["probes"]["pca"]["family_logreg"])


def test_scores_of_a_set_and_its_unseen_programs():
    meta = synthetic_meta()  # 4 families x 3 instruments x 4 pitches x 2 velocities; instrument 0 of each in test
    meta["program"] = [10 * i + int(s[-3:]) for i, s in zip(pd.factorize(meta["instrument_family_str"])[0],
                                                            meta["instrument_str"])]
    x = random_spectrograms(len(meta), seed=1)
    model = TinyVAE(latent_dim=4)
    train = (meta["split"] == "train").to_numpy()
    mu, _ = encode_features(model, x[train])
    reference = fit_reference(x[train], meta[train], mu, n_components=4, knn_k=3, seed=0)
    programs = set(meta.loc[train, "program"])
    result = score_transfer_set(model, reference, x, meta, programs=programs)
    _check_scores(result["all"], notes=len(meta))
    unseen = result["unseen_programs"]
    expected = sorted(set(meta["program"]) - programs)
    assert unseen["programs"] == expected == [0, 10, 20, 30]  # the test instrument of each family
    _check_scores(unseen, notes=int((~train).sum()))
    # PCA projects onto the train notes' subspace around their mean: never worse than that mean as a constant
    flat = x.astype(np.float32).reshape(len(x), -1)
    constant = float(((flat - flat[train].mean(axis=0)) ** 2).mean())
    assert result["all"]["recon_mse"]["pca"] < constant
    # a set whose programs were all trained on has no unseen subset, and says why
    seen = score_transfer_set(model, reference, x[train], meta[train], programs=programs)
    assert seen["unseen_programs"] is None and "every program" in seen["unseen_programs_note"]
    assert seen["all"]["probes"]["mu"]["family_knn"] >= 0.5  # the probes' own train notes, neighbours of themselves


def test_unseen_programs_needs_program_fields():
    meta = pd.DataFrame({"program": [0, 1, 2]})
    mask, _ = unseen_programs(meta, {1})
    assert mask.tolist() == [True, False, True]
    assert unseen_programs(meta, None)[0] is None
    mask, why = unseen_programs(meta.drop(columns="program"), {1})
    assert mask is None and "no GM program" in why
    assert unseen_programs(pd.DataFrame({"program": [0, -1]}), {0})[0] is None  # a note without one


def test_within_set_family_fits_on_the_sets_own_programs():
    # 3 families x 4 programs x 30 notes: mu carries the family, the PCA coefficients only noise
    rng = np.random.default_rng(5)
    program = np.repeat(np.arange(12), 30)
    family = np.array(["brass", "organ", "reed"])[program % 3]
    meta = pd.DataFrame({"program": program, "instrument_family_str": family})
    onehot = (family[:, None] == np.unique(family)).astype(np.float32)
    scores = NoteScores(meta=meta, mu=onehot + 0.2 * rng.normal(size=(360, 3)), pca=rng.normal(size=(360, 3)),
                        mse_model=np.zeros(360), mse_pca=np.zeros(360))
    unseen = program >= 9
    out = within_set_family(scores, unseen, n_folds=4, seed=0)
    assert out["groups"] == "program" and out["folds"] == 4 and out["note"] == ""
    assert out["all"]["mu"] > 0.95 and out["all"]["pca"] < 0.5, out
    assert out["unseen_programs"]["mu"] > 0.95 and out["unseen_programs"]["pca"] < 0.6, out
    # the subset's figure is the same out-of-fold predictions scored on its notes only
    pred = grouped_predictions("logreg", scores.pca, family, groups=program, n_folds=4)
    assert out["unseen_programs"]["pca"] == accuracy(family[unseen], pred[unseen]) != accuracy(family, pred)
    assert within_set_family(scores, None, n_folds=4)["unseen_programs"] is None
    few = within_set_family(scores, unseen, n_folds=13)
    assert few["all"] is None and "12 GM programs and 3 families: 13 program folds need" in few["note"]
    alone = within_set_family(NoteScores(**{**scores.__dict__, "meta": meta.assign(instrument_family_str="reed")}),
                              unseen, n_folds=4)
    assert alone["all"] is None and "12 GM programs and 1 family: " in alone["note"]
    blind = within_set_family(NoteScores(**{**scores.__dict__, "meta": meta.assign(program=-1)}), unseen, n_folds=4)
    assert blind["all"] is None and "no GM program" in blind["note"]


def test_transfer_targets_are_the_runs_own_on_unseen_programs():
    def unseen(margin, model, pca, pitch1):
        return {"family_logreg_margin_vs_pca": margin, "recon_mse": {"model": model, "pca": pca},
                "probes": {"mu": {"pitch1_logreg": pitch1}}}

    met = transfer_targets(unseen(0.12, 0.018, 0.020, 0.86))
    assert list(met) == ["family_logreg_margin_vs_pca", "recon_mse_vs_pca", "pitch1_logreg"]
    assert all(t["pass"] for t in met.values())
    assert met["family_logreg_margin_vs_pca"]["threshold"] == 0.10 and met["pitch1_logreg"]["threshold"] == 0.85
    assert met["recon_mse_vs_pca"]["threshold"] == 0.020  # PCA's on the same notes
    missed = transfer_targets(unseen(0.099, 0.021, 0.020, 0.849))
    assert not any(t["pass"] for t in missed.values())
    assert list(transfer_targets(unseen(0.2, 0.01, 0.02, 0.1), pitch_conditioning=True)) == [
        "family_logreg_margin_vs_pca", "recon_mse_vs_pca"]  # a decoder given the pitch: no pitch target
    assert transfer_targets(None) is None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 9-instrument render of the bundled SoundFont, TinyVAE as its model, and a transfer set rendered from
    the same SoundFont under another file name: the tiny stand-in of a run of params/transfer.yaml."""
    work = tmp_path_factory.mktemp("transfer")
    other = work / "Other_GM.sf2"
    shutil.copy(default_soundfont(), other)
    overrides = [f"data.root={work / 'ds'}", f"features.cache_dir={work / 'cache'}",
                 f"render.programs={PROGRAMS}", "render.pitch_min=60", "render.pitch_max=64", "render.pitch_step=4",
                 "render.velocities=[100]", "render.workers=1", "data.valid_fraction=0.0",
                 "data.test_fraction=0.34", "model.latent_dim=4", "analysis.knn_k=2",
                 f"analysis.transfer=[{{name: other, soundfont: {other}, root: {work / 'other'}}}]"]
    cfg = load_config(SMOKE, overrides)
    cache = prepare_features(cfg, show_progress=False)
    model = TinyVAE(latent_dim=4)
    run = TrainedRun(cfg=cfg, run_dir=work, cache=cache, checkpoint=work / "none.pt", model=model, ckpt={})
    mu, _ = encode_features(model, cache.features)
    space = LatentSpace(table=cache.meta, mu=mu, split=cache.meta["split"].to_numpy(), projections={})
    return {"run": run, "space": space, "work": work, "other": other, "overrides": overrides}


def test_evaluate_transfer_on_a_rendered_soundfont(tiny_run):
    run, work = tiny_run["run"], tiny_run["work"]
    meta = run.cache.meta
    trained = set(meta.loc[meta["split"] == "train", "program"])
    assert train_programs(run) == trained and len(trained) == 6  # two of each family's three in train
    transfer = evaluate_transfer(tiny_run["space"], run, show_progress=False)
    assert list(transfer.metrics) == ["other"]
    m = transfer.metrics["other"]
    assert m["dataset"]["soundfont"] == "Other_GM.sf2" and (work / "other" / "examples.json").is_file()
    _check_scores(m["all"], notes=9 * 2)
    assert m["unseen_programs"]["programs"] == sorted(set(PROGRAMS) - trained)
    _check_scores(m["unseen_programs"], notes=3 * 2)
    _check_scores(transfer.in_domain, notes=int((meta["split"] == "test").sum()))
    # the same SoundFont under another name renders the run's own notes: its notes of unseen programs are the
    # run's test instruments, and score as they do
    assert m["unseen_programs"]["probes"] == transfer.in_domain["probes"]
    assert m["unseen_programs"]["recon_mse"] == pytest.approx(transfer.in_domain["recon_mse"])
    u = m["unseen_programs"]
    assert m["targets"]["family_logreg_margin_vs_pca"]["pass"] == (u["family_logreg_margin_vs_pca"] >= 0.10)
    assert m["targets"]["recon_mse_vs_pca"]["pass"] == (u["recon_mse"]["model"] <= u["recon_mse"]["pca"])
    assert "the run's targets on them: **" in transfer.text
    within = m["within_set"]  # 9 programs in smoke.yaml's 3 folds, each note predicted without its program
    assert within["folds"] == run.cfg.analysis.probe_folds == 3 and within["note"] == ""
    assert all(0.0 <= v <= 1.0 for part in ("all", "unseen_programs") for v in within[part].values())
    json.dumps(transfer.metrics)  # JSON-ready
    table = transfer.table
    assert list(table.columns) == ["own test split", "other: all notes", "other: unseen programs"]
    assert table.loc["notes"].tolist() == [transfer.in_domain["notes"], 18, 6]
    assert all(f"{k} (mu)" in table.index and f"{k} (PCA)" in table.index for k in TABLE_PROBES)
    assert transfer.shown.loc["notes", "other: all notes"] == "18"
    assert table.loc[f"{WITHIN_ROW} (mu)", "other: unseen programs"] == within["unseen_programs"]["mu"]
    assert transfer.shown.loc[f"{WITHIN_ROW} (PCA)", "own test split"] == ""  # not measured on the own split
    assert "other" in transfer.text and "unseen in training" in transfer.text
    assert "| measure | own test split | other: all notes | other: unseen programs |" in transfer.text


def test_transfer_folder_is_reused_only_for_its_own_render(tiny_run):
    run, work = tiny_run["run"], tiny_run["work"]
    entry = run.cfg.analysis.transfer[0]
    first = transfer_dataset(entry, run.cfg, show_progress=False)
    assert first["root"] == work / "other" and not first["rendered"]  # rendered by the evaluation above
    # other pitches asked of the same folder: refused, not read as if it held them
    cfg = load_config(SMOKE, [*tiny_run["overrides"], "render.pitch_max=68"])
    with pytest.raises(DataError, match=r"other render settings .*pitches.*analysis.transfer\[0\].root"):
        transfer_dataset(cfg.analysis.transfer[0], cfg, show_progress=False)
    # and another SoundFont into it
    cfg = load_config(SMOKE, [*tiny_run["overrides"][:-1],
                              f"analysis.transfer=[{{name: other, soundfont: {default_soundfont()}, "
                              f"root: {work / 'other'}}}]"])
    with pytest.raises(DataError, match=r"rendered from \['Other_GM.sf2'\].*names \['TimGM6mb.sf2'\]"):
        transfer_dataset(cfg.analysis.transfer[0], cfg, show_progress=False)


def test_empty_transfer_computes_nothing(tiny_run):
    cfg = load_config(SMOKE, tiny_run["overrides"][:-1])
    run = TrainedRun(**{**tiny_run["run"].__dict__, "cfg": cfg})
    transfer = evaluate_transfer(tiny_run["space"], run, show_progress=False)
    assert transfer.metrics == {} and transfer.table.empty and "analysis.transfer" in transfer.text


def test_train_programs_of_a_render_made_before_notes_recorded_them(tiny_run, tmp_path):
    # a dataset as renders wrote it before: no soundfont or program per note, and the names the render gives
    run = tiny_run["run"]
    old = tmp_path / "old"
    shutil.copytree(run.cfg.data.root, old)
    raw = json.loads((old / "examples.json").read_text())
    for e in raw.values():
        del e["soundfont"], e["program"]
    (old / "examples.json").write_text(json.dumps(raw))
    overrides = [o for o in tiny_run["overrides"] if not o.startswith("data.root=")]
    cfg = load_config(SMOKE, [*overrides, f"data.root={old}", f"features.cache_dir={tmp_path / 'cache'}"])
    cache = prepare_features(cfg, show_progress=False)
    assert "program" not in cache.meta.columns
    legacy = TrainedRun(**{**run.__dict__, "cfg": cfg, "cache": cache})
    assert train_programs(legacy) == train_programs(run)
    # other render settings name the instruments otherwise: the programs are not guessed
    other = TrainedRun(**{**legacy.__dict__, "cfg": load_config(SMOKE, [*overrides, f"data.root={old}",
                                                                         "render.programs=[0, 24, 40]"])})
    assert train_programs(other) is None
    # nor for a dataset vaelib did not render
    (old / "render_summary.json").unlink()
    assert train_programs(legacy) is None


def test_a_folder_without_a_render_summary_is_read_as_it_is(tiny_run, tmp_path):
    run = tiny_run["run"]
    mine = tmp_path / "mine"
    shutil.copytree(run.cfg.data.root, mine)
    (mine / "render_summary.json").unlink()
    cfg = load_config(SMOKE, [*tiny_run["overrides"][:-1],
                              f"analysis.transfer=[{{name: mine, soundfont: {tiny_run['other']}, root: {mine}}}]"])
    with pytest.warns(UserWarning, match="holds no render summary"):
        found = transfer_dataset(cfg.analysis.transfer[0], cfg, show_progress=False)
    assert found == {"root": mine, "soundfont": None, "rendered": False}


def test_a_run_without_test_notes_is_still_scored(tiny_run):
    cfg = load_config(SMOKE, [*tiny_run["overrides"], "data.test_fraction=0.0"])
    cache = prepare_features(cfg, show_progress=False)
    run = TrainedRun(**{**tiny_run["run"].__dict__, "cfg": cfg, "cache": cache})
    mu, _ = encode_features(run.model, cache.features)
    space = LatentSpace(table=cache.meta, mu=mu, split=cache.meta["split"].to_numpy(), projections={})
    transfer = evaluate_transfer(space, run, show_progress=False)
    assert transfer.in_domain == {} and list(transfer.table.columns) == ["other: all notes"]
    assert transfer.metrics["other"]["unseen_programs"] is None  # every program was trained on
