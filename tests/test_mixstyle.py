"""MixStyle: the mixing of the encoder's channel statistics, its draws, and its place in the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from vaelib.config import ModelConfig, TrainConfig
from vaelib.exceptions import ParameterError
from vaelib.model.mixstyle import LEVELS, StyleMix, draw_style_mix, mix_style
from vaelib.model.vae import ConvVAE

CPU = torch.device("cpu")


def _maps(n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(n, 4, 1, 1, generator=g) * 3 + 0.5
    shift = torch.randn(n, 4, 1, 1, generator=g) * 2
    return torch.randn(n, 4, 10, 16, generator=g) * scale + shift


def _stats(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return h.mean(dim=(2, 3)), h.std(dim=(2, 3), unbiased=False)


def test_own_share_one_leaves_the_maps_and_share_zero_takes_the_partners_statistics():
    h = _maps()
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    same = mix_style(h, StyleMix(perm, torch.ones(6)))
    torch.testing.assert_close(same, h, atol=1e-4, rtol=1e-4)
    swapped = mix_style(h, StyleMix(perm, torch.zeros(6)))
    mean, sd = _stats(swapped)
    torch.testing.assert_close(mean, _stats(h)[0][perm], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sd, _stats(h)[1][perm], atol=1e-3, rtol=1e-3)
    # the pattern within a map is the note's own: normalised, it is unchanged
    norm = lambda t: (t - t.mean(dim=(2, 3), keepdim=True)) / t.std(dim=(2, 3), keepdim=True)  # noqa: E731
    torch.testing.assert_close(norm(swapped), norm(h), atol=1e-3, rtol=1e-3)
    half = mix_style(h, StyleMix(perm, torch.full((6,), 0.5)))
    torch.testing.assert_close(_stats(half)[0], (_stats(h)[0] + _stats(h)[0][perm]) / 2, atol=1e-4, rtol=1e-4)


def test_the_statistics_are_taken_out_of_the_gradient():
    h = _maps().requires_grad_(True)
    out = mix_style(h, StyleMix(torch.arange(6).flip(0), torch.zeros(6)))
    out.sum().backward()
    # through the normalisation alone: d/dh sum((h - m) / s * s') = s' / s per element, the same over a map
    g = h.grad
    sd = h.detach().var(dim=(2, 3), keepdim=True).add(1e-6).sqrt()
    expected = (sd[torch.arange(6).flip(0)] / sd).expand_as(g)
    torch.testing.assert_close(g, expected, atol=1e-4, rtol=1e-4)


def test_a_mix_for_another_batch_size_is_refused():
    with pytest.raises(ParameterError, match=r"mix: .* one entry per note .*got h \(6, 4, 10, 16\), perm \(3,\)"):
        mix_style(_maps(), StyleMix(torch.arange(3), torch.ones(3)))
    with pytest.raises(ParameterError, match=r"got h \(6, 160\)"):
        mix_style(_maps().flatten(1)[:, :160], StyleMix(torch.arange(6), torch.ones(6)))


def test_under_bf16_the_statistics_are_mixed_in_float32():
    h = _maps(n=64, seed=3)
    lam = torch.linspace(0.0, 0.9999, 64)  # shares near 1 that bf16 would round to 1
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    reference = mix_style(h, StyleMix(perm, lam))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = mix_style(h.bfloat16(), StyleMix(perm, lam))
    assert low.dtype == torch.bfloat16
    # what bf16 storage of the input and the output costs, and no more (statistics and shares in bf16: ~0.07)
    err = (low.float() - reference).abs() / reference.std()
    assert err.max() < 0.03 and err.mean() < 0.003


def test_draws_follow_the_seed_keep_the_stream_in_step_and_follow_beta():
    on, rare = TrainConfig(mixstyle=1.0, mixstyle_alpha=0.1), TrainConfig(mixstyle=1e-9, mixstyle_alpha=0.1)
    a = draw_style_mix(64, on, torch.Generator().manual_seed(5), CPU)
    b = draw_style_mix(64, on, torch.Generator().manual_seed(5), CPU)
    torch.testing.assert_close(a.lam, b.lam)
    torch.testing.assert_close(a.perm, b.perm)
    assert sorted(a.perm.tolist()) == list(range(64))
    # mixed or not, a batch takes the same draws from the stream
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert draw_style_mix(64, on, g1, CPU) is not None and draw_style_mix(64, rare, g2, CPU) is None
    assert torch.rand(1, generator=g1).item() == torch.rand(1, generator=g2).item()
    # the own share is Beta(alpha, alpha): with 0.1 mostly near 0 or 1
    lam = draw_style_mix(20_000, on, torch.Generator().manual_seed(1), CPU).lam.numpy()
    at = np.array([1e-4, 0.01, 0.1, 0.5, 0.9, 0.99])  # (a KS test would count float32's ties at 1.0 as a jump)
    np.testing.assert_allclose([(lam <= x).mean() for x in at], stats.beta(0.1, 0.1).cdf(at), atol=0.015)
    assert 0.1 < np.mean((lam > 0.1) & (lam < 0.9)) < 0.35
    # and the share of batches mixed is train.mixstyle
    g = torch.Generator().manual_seed(2)
    mixed = [draw_style_mix(4, TrainConfig(mixstyle=0.3), g, CPU) is not None for _ in range(2000)]
    assert 0.27 < np.mean(mixed) < 0.33


def test_the_model_mixes_only_its_first_levels_and_only_when_asked():
    torch.manual_seed(0)
    model = ConvVAE(ModelConfig(depth=4, channels=(8, 16, 32, 32), latent_dim=8), n_mels=32, frames=32).train()
    x = torch.rand(6, 1, 32, 32) * 2 - 1
    perm = torch.arange(6).roll(1)
    mu, logvar = model.encode(x)
    torch.testing.assert_close(model.encode(x, StyleMix(perm, torch.ones(6)))[0], mu, atol=1e-4, rtol=1e-4)
    mixed = model.encode(x, StyleMix(perm, torch.zeros(6)))[0]
    assert (mixed - mu).abs().max() > 1e-3
    # the same mixing by hand after the first LEVELS levels, and none after the others
    h = x
    for level in range(4):
        h = model.encoder[3 * level:3 * level + 3](h)
        if level < LEVELS:
            h = mix_style(h, StyleMix(perm, torch.zeros(6)))
    torch.testing.assert_close(model.to_mu(h.flatten(1)), mixed, atol=1e-4, rtol=1e-4)
    assert model(x, mix=StyleMix(perm, torch.zeros(6))).x_hat.shape == x.shape
    # in eval mode a note is encoded as it is
    with pytest.raises(ParameterError, match="encode: mix is for training only"):
        model.eval().encode(x, StyleMix(perm, torch.zeros(6)))
