"""ConvVAE: exact shapes for every depth / latent size / kernel, output range, bounds, errors."""

from __future__ import annotations

import pytest
import torch

from vaelib.config import ModelConfig
from vaelib.exceptions import ParameterError
from vaelib.model.vae import ConvVAE, VAEOutput, conv_sizes


def _cfg(**kw) -> ModelConfig:
    depth = kw.pop("depth", 3)
    return ModelConfig(depth=depth, channels=kw.pop("channels", (4, 8, 8, 8)[:depth]), **kw)


@pytest.mark.parametrize("depth", [3, 4])
@pytest.mark.parametrize("latent_dim", [32, 64])
@pytest.mark.parametrize("kernel_size", [3, 4, 5])
def test_shapes_every_depth_and_latent(depth, latent_dim, kernel_size):
    torch.manual_seed(0)
    model = ConvVAE(_cfg(depth=depth, latent_dim=latent_dim, kernel_size=kernel_size)).eval()
    x = torch.rand(3, 1, 80, 128) * 2 - 1
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, latent_dim)
    out = model(x)
    assert isinstance(out, VAEOutput)
    assert out.x_hat.shape == x.shape
    assert out.z.shape == (3, latent_dim)
    assert model.decode(out.z).shape == (3, 1, 80, 128)
    assert out.x_hat.abs().max() <= 1.0
    assert torch.isfinite(out.x_hat).all()


def test_default_config_shape_and_odd_sizes():
    model = ConvVAE(ModelConfig()).eval()
    assert model(torch.zeros(2, 1, 80, 128)).x_hat.shape == (2, 1, 80, 128)
    # sizes that halve to odd numbers still come back exactly
    small = ConvVAE(_cfg(depth=4), n_mels=37, frames=50).eval()
    assert small(torch.zeros(2, 1, 37, 50)).x_hat.shape == (2, 1, 37, 50)
    assert conv_sizes(80, 4) == [80, 40, 20, 10, 5]


def test_logvar_is_bounded():
    model = ConvVAE(_cfg(logvar_bound=8.0)).eval()
    with torch.no_grad():
        model.to_logvar.bias.fill_(1e4)
        _, logvar = model.encode(torch.rand(2, 1, 80, 128))
        assert logvar.max() <= 8.0
        model.to_logvar.bias.fill_(-1e4)
        _, logvar = model.encode(torch.rand(2, 1, 80, 128))
        assert logvar.min() >= -8.0
        z = model.reparameterize(torch.zeros(2, 4), torch.full((2, 4), 8.0))
    assert torch.isfinite(z).all()


def test_reparameterize_uses_the_generator():
    mu, logvar = torch.zeros(4, 6), torch.zeros(4, 6)
    a = ConvVAE.reparameterize(mu, logvar, torch.Generator().manual_seed(1))
    b = ConvVAE.reparameterize(mu, logvar, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, ConvVAE.reparameterize(mu, logvar, torch.Generator().manual_seed(2)))


def test_pitch_conditioning():
    model = ConvVAE(_cfg(pitch_conditioning=True, latent_dim=8)).eval()
    z = torch.zeros(2, 8)
    with pytest.raises(ParameterError, match="pitch"):
        model.decode(z)
    low = model.decode(z, torch.tensor([30, 30]))
    high = model.decode(z, torch.tensor([90, 90]))
    assert low.shape == (2, 1, 80, 128)
    assert not torch.allclose(low, high)
    # an unconditioned model ignores pitch
    plain = ConvVAE(_cfg(latent_dim=8)).eval()
    assert torch.equal(plain.decode(z, torch.tensor([30, 90])), plain.decode(z))


@pytest.mark.parametrize(("pitch_dims", "reads"), [(0, 8), (3, 3)])
def test_pitch_head_reads_only_its_trailing_dims(pitch_dims, reads):
    model = ConvVAE(_cfg(pitch_head=True, pitch_dims=pitch_dims, latent_dim=8))
    mu = torch.randn(4, 8, requires_grad=True)
    logits = model.pitch_scores(mu)
    assert logits.shape == (4, 128) and model.pitch_logits.in_features == reads
    logits.sum().backward()
    touched = mu.grad.abs().sum(dim=0) > 0
    assert touched.tolist() == [False] * (8 - reads) + [True] * reads
    with pytest.raises(ParameterError, match="no pitch head"):
        ConvVAE(_cfg(latent_dim=8)).pitch_scores(mu)


@pytest.mark.parametrize("head", [0, 16])
def test_contrast_features_read_only_the_leading_dims(head):
    model = ConvVAE(_cfg(contrast_head=head, latent_dim=8))
    mu = torch.randn(4, 8, requires_grad=True)
    feats = model.contrast_features(mu, 3)
    assert feats.shape == (4, head or 3)
    feats.sum().backward()
    assert (mu.grad.abs().sum(dim=0) > 0).tolist() == [True] * 3 + [False] * 5
    assert model.contrast_features(mu).shape == (4, head or 8)


def test_bad_inputs():
    with pytest.raises(ParameterError, match="channels"):
        ConvVAE(ModelConfig(depth=4, channels=(8, 16, 32)))
    model = ConvVAE(_cfg())
    with pytest.raises(ParameterError, match="expected shape"):
        model.encode(torch.zeros(2, 80, 128))
    with pytest.raises(ParameterError, match="too small"):
        ConvVAE(_cfg(depth=4), n_mels=8, frames=128)
