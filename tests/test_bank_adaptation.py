"""scripts/bank_adaptation.py: test-time adaptation of the encoder's BatchNorm and of the features' scale."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from vaelib.config import PROJECT_ROOT, ModelConfig
from vaelib.model.vae import ConvVAE

_spec = importlib.util.spec_from_file_location("bank_adaptation", PROJECT_ROOT / "scripts" / "bank_adaptation.py")
bank_adaptation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bank_adaptation)


def _model(norm: str = "batch") -> ConvVAE:
    torch.manual_seed(0)
    model = ConvVAE(ModelConfig(channels=(4, 8, 8), depth=3, latent_dim=6, norm=norm), n_mels=16, frames=16)
    return model.eval()


def _notes(n: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.3, size=(n, 1, 16, 16)).astype(np.float32)


def test_restandardise_gives_each_column_the_reference_mean_and_spread():
    rng = np.random.default_rng(1)
    reference = rng.normal([0.0, 5.0, -2.0], [1.0, 0.5, 3.0], size=(500, 3))
    shifted = rng.normal([4.0, -1.0, 0.0], [2.0, 7.0, 0.1], size=(80, 3))
    out = bank_adaptation.restandardise(shifted, reference)
    np.testing.assert_allclose(out.mean(axis=0), reference.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(out.std(axis=0), reference.std(axis=0), rtol=1e-9)
    # the order of the notes within each column is kept
    assert (np.argsort(out[:, 1]) == np.argsort(shifted[:, 1])).all()
    # a constant column lands on the reference mean instead of dividing by zero
    flat = bank_adaptation.restandardise(np.ones((10, 3)), reference)
    assert np.isfinite(flat).all()
    np.testing.assert_allclose(flat, np.broadcast_to(reference.mean(axis=0), (10, 3)))


def test_batchnorm_adapted_to_a_bank_undoes_its_gain_and_leaves_the_model_alone():
    model, x = _model(), _notes()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mu = bank_adaptation.encode_mu(model, x)
    # the same notes 4 times louder in normalised units: the trained statistics misread them...
    mu_loud = bank_adaptation.encode_mu(model, 4.0 * x)
    misread = np.abs(mu_loud - mu).max()
    # ...and the statistics of the loud notes themselves read them as the statistics of the quiet ones do theirs
    quiet = bank_adaptation.encode_mu(bank_adaptation.adapt_batchnorm(model, x, batch=16), x)
    loud = bank_adaptation.encode_mu(bank_adaptation.adapt_batchnorm(model, 4.0 * x, batch=16), 4.0 * x)
    assert np.abs(loud - quiet).max() < misread / 100
    # the first BatchNorm holds the mean of the first conv's output over the notes (equal batches)
    adapted = bank_adaptation.adapt_batchnorm(model, x, batch=16)
    first = next(m for m in adapted.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        conv = adapted.encoder[0](torch.from_numpy(x))
    np.testing.assert_allclose(first.running_mean.numpy(), conv.mean(dim=(0, 2, 3)).numpy(), atol=1e-5)
    assert not any(m.training for m in adapted.modules())
    for k, v in model.state_dict().items():  # the run's model keeps its own statistics
        assert torch.equal(v, before[k]), k


def test_a_model_without_batchnorm_is_refused():
    with pytest.raises(ValueError, match="no BatchNorm"):
        bank_adaptation.adapt_batchnorm(_model("group"), _notes(8))


def test_per_note_mse_follows_the_blocks():
    x = _notes(5)
    # a reconstruction that is the note less its index: the MSE of note i is i squared
    err = bank_adaptation.per_note_mse(x, lambda part, start: part - np.arange(start, start + len(part))[:, None,
                                                                                                      None, None])
    np.testing.assert_allclose(err, np.arange(5.0) ** 2, rtol=1e-6)
    chunked = bank_adaptation.CHUNK
    starts = []
    try:
        bank_adaptation.CHUNK = 2
        err2 = bank_adaptation.per_note_mse(x, lambda part, start: starts.append(start) or part - np.arange(
            start, start + len(part))[:, None, None, None])
    finally:
        bank_adaptation.CHUNK = chunked
    assert starts == [0, 2, 4]  # three blocks, each told where it starts
    np.testing.assert_allclose(err2, err)
