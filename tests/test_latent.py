"""vaelib.analysis.latent: encoding, decoding, the embedding table, embed (function and CLI), 2-D projections."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _fixtures_analysis import TinyVAE, random_spectrograms, synthetic_meta, trained_smoke

from vaelib.analysis.latent import (
    decode_latents,
    embedding_table,
    encode_features,
    latent_matrix,
    project_pca,
    project_umap,
    reconstruct,
)
from vaelib.exceptions import ParameterError


def test_encode_shapes_and_batch_independence():
    model = TinyVAE(latent_dim=4)
    x = random_spectrograms(10)
    mu, logvar = encode_features(model, x, batch_size=3)
    mu_all, logvar_all = encode_features(model, x, batch_size=64)
    assert mu.shape == logvar.shape == (10, 4) and mu.dtype == np.float32
    np.testing.assert_allclose(mu, mu_all, atol=1e-6)
    np.testing.assert_allclose(logvar, logvar_all, atol=1e-6)


def test_decode_and_reconstruct_shapes():
    model = TinyVAE(latent_dim=4)
    x_hat = decode_latents(model, np.zeros((3, 4), np.float32))
    assert x_hat.shape == (3, 1, 80, 128) and np.all(np.abs(x_hat) <= 1)
    rec, mu, _ = reconstruct(model, random_spectrograms(5))
    assert rec.shape == (5, 1, 80, 128) and mu.shape == (5, 4)


def test_decode_passes_pitch_to_a_conditioned_decoder():
    model = TinyVAE(latent_dim=4, pitch_conditioning=True)
    z = np.zeros((2, 4), np.float32)
    low, high = decode_latents(model, z, pitch=np.array([30, 90]))
    assert not np.allclose(low, high)
    with pytest.raises(ParameterError, match="pitch"):
        decode_latents(model, z, pitch=np.array([30]))


def test_bad_inputs_are_refused():
    model = TinyVAE()
    with pytest.raises(ParameterError, match="features"):
        encode_features(model, np.zeros((2, 80, 128), np.float32))
    with pytest.raises(ParameterError, match="z"):
        decode_latents(model, np.zeros(4, np.float32))


def test_embedding_table_round_trip():
    meta = synthetic_meta().head(6)
    mu = np.arange(6 * 3, dtype=np.float32).reshape(6, 3)
    table = embedding_table(meta, mu, -mu)
    assert list(table.columns[:3]) == ["note_str", "pitch", "velocity"]
    np.testing.assert_array_equal(latent_matrix(table), mu)
    np.testing.assert_array_equal(latent_matrix(table, prefix="logvar"), -mu)
    with pytest.raises(ParameterError):
        embedding_table(meta, mu[:5], mu[:5])


def test_pca_projection_shapes_and_transform():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(40, 6)).astype(np.float32)
    fit_mask = np.arange(40) < 30
    proj = project_pca(mu, fit_mask=fit_mask)
    assert proj.coords.shape == (40, 2) and np.all(np.isfinite(proj.coords))
    assert proj.transform(mu[:3]).shape == (3, 2)
    np.testing.assert_allclose(proj.transform(mu[:3]), proj.coords[:3], atol=1e-5)
    assert 0 < proj.explained[1] <= proj.explained[0] < 1


def test_embed_on_a_tiny_checkpoint(smoke_dataset, tmp_path_factory, capsys):
    pytest.importorskip("vaelib.model.train")
    from vaelib.analysis.latent import embed
    from vaelib.cli import main

    run = trained_smoke(smoke_dataset, tmp_path_factory.getbasetemp() / "analysis")
    out = tmp_path_factory.mktemp("embed") / "emb.parquet"
    table = embed(run["checkpoint"], smoke_dataset, cfg=run["cfg"], out=out, show_progress=False)
    d = run["cfg"].model.latent_dim
    assert len(table) == len(run["cache"].meta)
    assert latent_matrix(table).shape == (len(table), d)
    assert np.all(np.isfinite(latent_matrix(table)))
    assert set(table["split"]) == {"train", "valid", "test"}
    pd.testing.assert_frame_equal(pd.read_parquet(out), table)

    out_cli = out.with_name("cli.parquet")
    args = ["embed", "--params", str(run["params"]), "--out", str(out_cli), "--quiet"]
    for o in run["overrides"]:
        args += ["--set", o]
    assert main(args) == 0
    np.testing.assert_allclose(latent_matrix(pd.read_parquet(out_cli)), latent_matrix(table), atol=1e-5)

    # an --out that would replace the checkpoint or a file of the dataset is refused before any work
    checkpoint, examples = Path(run["checkpoint"]), smoke_dataset / "examples.json"
    kept = {p: p.read_bytes() for p in (checkpoint, examples)}
    for extra, says in ((["--checkpoint", str(checkpoint), "--out", str(checkpoint)], "is the --checkpoint file"),
                        (["--data", str(smoke_dataset), "--out", str(examples)], "is a file of the --data folder")):
        assert main([*args[:args.index("--out")], *args[args.index("--out") + 2:], *extra]) == 2
        assert says in capsys.readouterr().err
    assert all(p.read_bytes() == b for p, b in kept.items())
    # nor the checkpoint found for the params; a table written into the data folder before may be written again
    found = args[:args.index("--out")] + args[args.index("--out") + 2:]
    assert main([*found, "--out", str(checkpoint)]) == 2
    assert "is the checkpoint file" in capsys.readouterr().err and checkpoint.read_bytes() == kept[checkpoint]
    data = tmp_path_factory.mktemp("data") / "ds"
    shutil.copytree(smoke_dataset, data)
    for _ in range(2):
        assert main([*found, "--data", str(data), "--out", str(data / "emb.parquet")]) == 0


def test_maps_of_mu_leaves_umap_out_when_asked():
    import dataclasses

    from vaelib.analysis.latent import maps_of_mu
    from vaelib.config import AnalysisConfig

    mu = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    is_train = np.arange(40) < 30
    maps = maps_of_mu(mu, is_train=is_train, cfg=dataclasses.replace(AnalysisConfig(), umap=False), seed=0)
    assert list(maps) == ["PCA"] and maps["PCA"].coords.shape == (40, 2)


def test_transform_each_matches_one_transform_per_set():
    from vaelib.analysis.latent import project_pca

    rng = np.random.default_rng(1)
    proj = project_pca(rng.standard_normal((30, 5)).astype(np.float32))
    sets = [rng.standard_normal((n, 5)).astype(np.float32) for n in (3, 1, 4)]
    for got, points in zip(proj.transform_each(sets), sets, strict=True):
        np.testing.assert_allclose(got, proj.transform(points), rtol=1e-5, atol=1e-6)
    assert proj.transform_each([]) == []


def test_umap_kernels_are_cached_on_disk_and_the_map_is_reproducible():
    from pathlib import Path

    import umap.layouts

    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    a = project_umap(x, n_neighbors=5, min_dist=0.1, seed=0)
    b = project_umap(x, n_neighbors=5, min_dist=0.1, seed=0)
    np.testing.assert_array_equal(a.coords, b.coords)
    np.testing.assert_array_equal(a.transform(x[:3]), b.transform(x[:3]))
    # the layout epoch kernel ran above; umap-learn leaves it uncached, here it is in numba's on-disk
    # index for the next process to load instead of compiling
    epoch = umap.layouts._nb_optimize_layout_euclidean_single_epoch
    assert epoch.stats.cache_hits or epoch.stats.cache_misses
    assert Path(epoch._cache._cache_file._index_path).is_file()



def _points(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(60, 6)).astype(np.float32)


def _no_fit(monkeypatch):
    import umap

    def no_fit(*args, **kwargs):
        raise AssertionError("the stored map was fitted again")

    monkeypatch.setattr(umap.UMAP, "fit_transform", no_fit)


def test_a_stored_umap_map_is_read_back_not_fitted_again(tmp_path, monkeypatch):
    x = _points(4)
    fitted = project_umap(x, n_neighbors=5, min_dist=0.1, seed=0, store=tmp_path)
    (path,) = tmp_path.glob("umap-*.pkl")
    assert path.stat().st_mode & 0o777 == 0o600
    _no_fit(monkeypatch)
    for same in (x, x.astype(np.float64), np.asfortranarray(x)):  # the same points in another layout
        read = project_umap(same, n_neighbors=5, min_dist=0.1, seed=0, store=tmp_path)
        np.testing.assert_array_equal(read.coords, fitted.coords)
        np.testing.assert_array_equal(read.transform(x[:3] + 0.01), fitted.transform(x[:3] + 0.01))
    # other points, or any other setting, are another map: fitted (here: refused by the patch)
    for points, neighbors, min_dist, seed in ((_points(5), 5, 0.1, 0), (x, 6, 0.1, 0), (x, 5, 0.2, 0),
                                              (x, 5, 0.1, 1)):
        with pytest.raises(AssertionError, match="fitted again"):
            project_umap(points, n_neighbors=neighbors, min_dist=min_dist, seed=seed, store=tmp_path)


def test_the_key_follows_the_libraries_that_shape_the_fit(monkeypatch):
    import numba

    from vaelib.analysis.map_store import umap_key

    x = _points(4)
    before = umap_key(x, 5, 0.1, 0)
    assert umap_key(x.astype(np.float64), 5, 0.1, 0) == before
    monkeypatch.setattr(numba, "__version__", "0.0.0")
    assert umap_key(x, 5, 0.1, 0) != before
    monkeypatch.undo()
    import vaelib.analysis.map_store as ms

    monkeypatch.setattr(ms, "numeric_machine", lambda: ("x86_64", ("AVX", "AVX2"), ()))  # another CPU
    assert umap_key(x, 5, 0.1, 0) != before


def test_an_unreadable_stored_map_is_fitted_again_and_replaced(tmp_path):
    x = _points(7)
    first = project_umap(x, n_neighbors=5, min_dist=0.1, seed=0, store=tmp_path)
    (path,) = tmp_path.glob("umap-*.pkl")
    good = path.read_bytes()
    path.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match=r"umap-.*\.pkl: stored UMAP map unreadable.*fitting it again"):
        again = project_umap(x, n_neighbors=5, min_dist=0.1, seed=0, store=tmp_path)
    np.testing.assert_array_equal(again.coords, first.coords)
    assert path.read_bytes() == good  # the refit replaced the broken file


def test_a_map_others_may_write_is_not_unpickled(tmp_path, monkeypatch):
    import pickle

    x = _points(9)
    project_umap(x, n_neighbors=5, min_dist=0.1, seed=0, store=tmp_path)
    (path,) = tmp_path.glob("umap-*.pkl")
    path.chmod(0o666)
    monkeypatch.setattr(pickle, "load", lambda f: pytest.fail("a group-writable pickle was loaded"))
    with pytest.warns(UserWarning, match="not read .*writable by nobody else"):
        proj = project_umap(x, n_neighbors=5, min_dist=0.1, seed=0, store=tmp_path)
    assert proj.coords.shape == (60, 2) and path.stat().st_mode & 0o777 == 0o600  # replaced by this user's


def test_a_file_holding_another_fit_is_not_used(tmp_path):
    a, b = _points(10), _points(11)
    project_umap(a, n_neighbors=5, min_dist=0.1, seed=0, store=tmp_path)
    (path_a,) = tmp_path.glob("umap-*.pkl")
    data = path_a.read_bytes()
    fresh_b = project_umap(b, n_neighbors=5, min_dist=0.1, seed=0)
    assert list(tmp_path.glob("umap-*.pkl")) == [path_a]  # no store given: nothing written
    project_umap(b, n_neighbors=5, min_dist=0.1, seed=0, store=tmp_path)
    (path_b,) = [p for p in tmp_path.glob("umap-*.pkl") if p != path_a]
    path_b.write_bytes(data)  # b's file now holds a's fit
    path_b.chmod(0o600)
    with pytest.warns(UserWarning, match="holds another fit"):
        read_b = project_umap(b, n_neighbors=5, min_dist=0.1, seed=0, store=tmp_path)
    np.testing.assert_array_equal(read_b.coords, fresh_b.coords)


def test_a_store_that_cannot_take_the_map_still_maps(tmp_path, monkeypatch, caplog):
    import logging

    from vaelib.analysis import map_store

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.INFO, logger="vaelib.analysis.map_store"):
        proj = project_umap(_points(8), n_neighbors=5, min_dist=0.1, seed=0, store=blocker / "maps")
    assert proj.coords.shape == (60, 2) and "UMAP map not stored" in caplog.text

    def unpicklable(*args, **kwargs):
        raise TypeError("cannot pickle this reducer")

    monkeypatch.setattr(map_store, "_dumps", unpicklable)
    with pytest.warns(UserWarning, match="could not be pickled .*cannot pickle this reducer"):
        proj = project_umap(_points(8), n_neighbors=5, min_dist=0.1, seed=0, store=tmp_path / "maps")
    assert proj.coords.shape == (60, 2) and not list((tmp_path / "maps").glob("*"))


def _trained_run(smoke_dataset, tmp_path_factory, folder: str = "latents"):
    from vaelib.analysis.run import TrainedRun
    from vaelib.model.checkpoint import load_model

    run = trained_smoke(smoke_dataset, tmp_path_factory.getbasetemp() / "analysis")
    model, ckpt = load_model(run["checkpoint"], cfg=run["cfg"])
    return TrainedRun(cfg=run["cfg"], run_dir=tmp_path_factory.mktemp(folder), cache=run["cache"],
                      checkpoint=run["checkpoint"], model=model, ckpt=ckpt)


def test_a_runs_latents_are_encoded_once_and_read_back_equal(smoke_dataset, tmp_path_factory, monkeypatch):
    import dataclasses
    import shutil

    from vaelib.analysis import latent
    from vaelib.analysis.latent_cache import latents_path, run_latents

    run = _trained_run(smoke_dataset, tmp_path_factory)
    path = latents_path(run)
    path.unlink(missing_ok=True)
    expected = encode_features(run.model, run.cache.features)
    mu, logvar = run_latents(run)
    assert path.is_file()
    np.testing.assert_array_equal(mu, expected[0])
    np.testing.assert_array_equal(logvar, expected[1])

    monkeypatch.setattr(latent, "encode_features", lambda *a, **k: pytest.fail("encoded again"))
    again = run_latents(run)
    np.testing.assert_array_equal(again[0], mu)
    np.testing.assert_array_equal(again[1], logvar)

    # another checkpoint file (the same model saved again, one byte more) is another set of latents
    other = tmp_path_factory.mktemp("other_ckpt") / "best.pt"
    shutil.copy(run.checkpoint, other)
    with open(other, "ab") as f:
        f.write(b"\0")
    assert latents_path(dataclasses.replace(run, checkpoint=other)) != path


def test_unreadable_or_unwritable_latents_are_encoded_again(smoke_dataset, tmp_path_factory, caplog):
    import dataclasses
    import logging

    from vaelib.analysis.latent_cache import latents_path, run_latents

    run = _trained_run(smoke_dataset, tmp_path_factory, "latents_bad")
    expected = encode_features(run.model, run.cache.features)[0]
    path = latents_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an npz")
    with caplog.at_level(logging.INFO, logger="vaelib.analysis.latent_cache"):
        mu, _ = run_latents(run)
    np.testing.assert_array_equal(mu, expected)
    assert f"{path}: unreadable" in caplog.text
    with np.load(path) as z:  # replaced by a good file
        np.testing.assert_array_equal(z["mu"], expected)

    blocker = tmp_path_factory.mktemp("latents_blocked") / "file"
    blocker.write_text("not a folder")
    blocked = dataclasses.replace(run, cfg=dataclasses.replace(
        run.cfg, features=dataclasses.replace(run.cfg.features, cache_dir=str(blocker / "cache"))))
    with caplog.at_level(logging.INFO, logger="vaelib.analysis.latent_cache"):
        mu, _ = run_latents(blocked)
    np.testing.assert_array_equal(mu, expected)
    assert "latents not stored" in caplog.text
