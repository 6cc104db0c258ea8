"""The spectrogram PCA store: one fit per notes and settings, read back to the bit, bad files refitted."""

from __future__ import annotations

import numpy as np
import pytest

import vaelib.analysis.pca_store as ps
from vaelib.analysis.diagnostics import fit_spectrogram_pca, pca_recon_mse


def _train(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(40, 1, 8, 16)).astype(np.float16)


def _no_fit(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("fitted although the store holds the fit")

    monkeypatch.setattr(ps, "fit_spectrogram_pca", fail)


def test_a_stored_fit_is_read_back_and_gives_the_fitted_numbers_to_the_bit(tmp_path, monkeypatch):
    train, test = _train(), _train(1)
    fitted = ps.spectrogram_pca(train, n_components=5, seed=3, store=tmp_path)
    assert len(list(tmp_path.glob("pca-*.npz"))) == 1
    _no_fit(monkeypatch)
    read = ps.spectrogram_pca(train, n_components=5, seed=3, store=tmp_path)
    flat = np.asarray(test, np.float32).reshape(len(test), -1)
    np.testing.assert_array_equal(read.transform(flat), fitted.transform(flat))
    refit = fit_spectrogram_pca(train, n_components=5, seed=3)
    np.testing.assert_array_equal(read.transform(flat), refit.transform(flat))
    mse_read, hat_read = pca_recon_mse(train, test, n_components=5, seed=3, pca=read)
    mse_fit, hat_fit = pca_recon_mse(train, test, n_components=5, seed=3)
    np.testing.assert_array_equal(hat_read, hat_fit)
    np.testing.assert_array_equal(mse_read, mse_fit)


def test_other_notes_or_settings_are_other_fits(tmp_path):
    train = _train()
    ps.spectrogram_pca(train, n_components=5, seed=3, store=tmp_path)
    changed = train.copy()
    changed[7, 0, 2, 3] += np.float16(0.5)
    keys = {ps.pca_key(t, n_components=n, seed=s)
            for t, n, s in ((train, 5, 3), (changed, 5, 3), (train, 4, 3), (train, 5, 4), (train[:39], 5, 3))}
    assert len(keys) == 5
    ps.spectrogram_pca(changed, n_components=5, seed=3, store=tmp_path)
    ps.spectrogram_pca(train, n_components=4, seed=3, store=tmp_path)
    assert len(list(tmp_path.glob("pca-*.npz"))) == 3


def test_a_machine_of_other_simd_or_blas_kernels_keys_its_own_fit(monkeypatch):
    import threadpoolctl
    from numpy._core import _multiarray_umath

    from vaelib.analysis.machine_kind import numeric_machine

    train = _train()
    here = ps.pca_key(train, n_components=5, seed=3)
    assert numeric_machine() == numeric_machine() and ps.pca_key(train, n_components=5, seed=3) == here
    assert numeric_machine()[2], "no BLAS found: SciPy's is always loaded"
    # the same notes on a CPU without one of this one's extensions (a cache folder shared with another machine)
    on = next(name for name, present in _multiarray_umath.__cpu_features__.items() if present)
    features = {**_multiarray_umath.__cpu_features__, on: False}
    monkeypatch.setattr(_multiarray_umath, "__cpu_features__", features)
    assert ps.pca_key(train, n_components=5, seed=3) != here
    monkeypatch.undo()
    # OpenBLAS picking other kernels
    info = threadpoolctl.threadpool_info()
    monkeypatch.setattr(threadpoolctl, "threadpool_info",
                        lambda: [{**p, "architecture": "Zen"} if p.get("user_api") == "blas" else p for p in info])
    assert ps.pca_key(train, n_components=5, seed=3) != here


def test_a_truncated_or_foreign_file_is_fitted_again_and_replaced(tmp_path, monkeypatch):
    train = _train()
    ps.spectrogram_pca(train, n_components=5, seed=3, store=tmp_path)
    (path,) = tmp_path.glob("pca-*.npz")
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.warns(UserWarning, match="stored PCA unreadable"):
        ps.spectrogram_pca(train, n_components=5, seed=3, store=tmp_path)
    assert path.read_bytes() == good
    other = fit_spectrogram_pca(_train(2), n_components=5, seed=3)
    np.savez(path, key=np.array("another key"), **{n: getattr(other, n) for n in (*ps._ARRAYS, *ps._NUMBERS)})
    with pytest.warns(UserWarning, match="holds another fit"):
        ps.spectrogram_pca(train, n_components=5, seed=3, store=tmp_path)
    path.write_bytes(b"")  # a file left empty
    with pytest.warns(UserWarning, match="stored PCA unreadable"):
        ps.spectrogram_pca(train, n_components=5, seed=3, store=tmp_path)
    _no_fit(monkeypatch)
    ps.spectrogram_pca(train, n_components=5, seed=3, store=tmp_path)  # replaced by the good fit again


def test_no_store_or_a_store_that_cannot_be_written_only_costs_the_fit(tmp_path, monkeypatch):
    train = _train()
    ps.spectrogram_pca(train, n_components=5, seed=3, store=None)
    assert not list(tmp_path.iterdir())
    blocker = tmp_path / "pca"
    blocker.write_text("a file where the store's folder would be")
    pca = ps.spectrogram_pca(train, n_components=5, seed=3, store=blocker)
    assert pca.components_.shape == (5, 128) and blocker.read_text().startswith("a file")
