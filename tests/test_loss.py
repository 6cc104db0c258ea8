"""Loss: KL against numerical integration, free bits per dimension, beta schedule, scales."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vaelib.config import TrainConfig
from vaelib.exceptions import ParameterError
from vaelib.loss import active_units, beta_at, free_bits_kl, kl_per_dim, recon_loss, vae_loss
from vaelib.model import VAEOutput


def _numerical_kl(mu: float, logvar: float) -> float:
    """KL(N(mu, s^2) || N(0, 1)) by trapezoidal integration of q log(q / p) on a fine grid."""
    s = math.exp(0.5 * logvar)
    z = np.linspace(mu - 12 * s, mu + 12 * s, 200_001)
    log_q = -0.5 * ((z - mu) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
    log_p = -0.5 * z ** 2 - 0.5 * np.log(2 * np.pi)
    return float(np.trapezoid(np.exp(log_q) * (log_q - log_p), z))


@pytest.mark.parametrize("mu,logvar", [(0.0, 0.0), (1.5, -1.0), (-0.7, 0.8), (3.0, -4.0)])
def test_kl_matches_numerical_integration(mu, logvar):
    kl = kl_per_dim(torch.tensor([[mu]]), torch.tensor([[logvar]]))
    assert kl.shape == (1, 1)
    assert float(kl) == pytest.approx(_numerical_kl(mu, logvar), abs=1e-5)


def test_kl_is_per_sample_and_dimension_and_float32():
    mu = torch.randn(5, 7, dtype=torch.bfloat16)
    kl = kl_per_dim(mu, torch.zeros(5, 7, dtype=torch.bfloat16))
    assert kl.shape == (5, 7) and kl.dtype == torch.float32
    assert (kl >= 0).all()
    with pytest.raises(ParameterError):
        kl_per_dim(torch.zeros(5, 7), torch.zeros(5, 6))


def test_free_bits_clamps_each_dimension():
    # batch-mean KL per dimension: 0.1, 0.3, 1.0
    kl = torch.tensor([[0.0, 0.2, 1.5], [0.2, 0.4, 0.5]], requires_grad=True)
    fb = free_bits_kl(kl, free_bits=0.25)
    assert float(fb.detach()) == pytest.approx(0.25 + 0.3 + 1.0)
    fb.backward()
    # the dimension under the threshold gets no gradient; the others get d(mean)/d(kl) = 1/2
    assert torch.allclose(kl.grad, torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.5, 0.5]]))
    assert float(free_bits_kl(kl.detach(), free_bits=0.5)) == pytest.approx(0.5 + 0.5 + 1.0)
    assert float(free_bits_kl(kl.detach(), free_bits=0.0)) == pytest.approx(1.4)
    with pytest.raises(ParameterError):
        free_bits_kl(kl, free_bits=-1.0)


def test_beta_schedule_is_linear_then_flat():
    cfg = TrainConfig(beta=2.0, warmup_steps=100)
    assert beta_at(0, cfg=cfg) == 0.0
    assert beta_at(50, cfg=cfg) == pytest.approx(1.0)
    assert beta_at(100, cfg=cfg) == 2.0
    assert beta_at(10_000, cfg=cfg) == 2.0
    assert beta_at(37, cfg=cfg) == beta_at(37, cfg=cfg)  # pure: same step, same value
    assert beta_at(0, cfg=TrainConfig(beta=0.5, warmup_steps=0)) == 0.5
    with pytest.raises(ParameterError):
        beta_at(-1, cfg=cfg)


def test_vae_loss_parts_and_scale():
    x = torch.zeros(4, 1, 80, 128)
    x_hat = torch.full_like(x, 0.5)
    mu, logvar = torch.zeros(4, 3), torch.zeros(4, 3)
    out = VAEOutput(x_hat, mu, logvar, mu)
    parts = vae_loss(x, out, beta=0.5, free_bits=0.25)
    # recon: summed over 80 x 128 pixels, averaged over the batch
    assert float(parts.recon) == pytest.approx(0.25 * 80 * 128)
    assert float(parts.kl_raw) == 0.0
    assert float(parts.kl_fb) == pytest.approx(0.75)
    assert float(parts.total) == pytest.approx(float(parts.recon) + 0.5 * 0.75)
    assert parts.beta == 0.5
    assert float(recon_loss(x, x)) == 0.0
    with pytest.raises(ParameterError):
        vae_loss(x, out, beta=-1.0, free_bits=0.25)


def test_active_units():
    mu = torch.zeros(100, 4)
    mu[:, 0] = torch.linspace(-1, 1, 100)
    mu[:, 1] = torch.linspace(-0.01, 0.01, 100)
    assert active_units(mu) == 1
