"""The SoundFont adversary: a reversed gradient into mu, and its term in the training objective."""

from __future__ import annotations

import pytest
import torch

from vaelib.config import ModelConfig, TrainConfig
from vaelib.exceptions import ParameterError
from vaelib.model.adversary import SourceAdversary, reverse_gradient
from vaelib.model.loss import training_objective
from vaelib.model.vae import ConvVAE


def test_the_gradient_is_reversed_and_nothing_else():
    x = torch.randn(5, 3, requires_grad=True)
    y = reverse_gradient(x)
    torch.testing.assert_close(y, x)
    (y * torch.arange(3.0)).sum().backward()
    torch.testing.assert_close(x.grad, -torch.arange(3.0).expand(5, 3))


def test_one_step_teaches_the_classifier_and_pushes_mu_the_other_way():
    torch.manual_seed(0)
    adv = SourceAdversary(4, 2)
    shift = torch.tensor([2.0, 0.0, 0.0, 0.0])  # two banks told apart by the first dimension
    mu = torch.cat([torch.randn(32, 4) + shift, torch.randn(32, 4) - shift]).requires_grad_(True)
    banks = torch.cat([torch.zeros(32), torch.ones(32)]).long()
    loss = torch.nn.functional.cross_entropy(adv(mu), banks)
    loss.backward()
    # mu's gradient is minus the one that would lower the classifier's loss
    plain = torch.autograd.grad(torch.nn.functional.cross_entropy(adv.net(mu), banks), mu)[0]
    torch.testing.assert_close(mu.grad, -plain)
    # the classifier's own gradient is not reversed: a step along it lowers its loss
    with torch.no_grad():
        for p in adv.parameters():
            p -= 0.5 * p.grad
        assert torch.nn.functional.cross_entropy(adv(mu), banks) < loss
    # and a step of mu along its gradient's descent raises it: the banks drawn together
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(adv(mu), banks)
        assert torch.nn.functional.cross_entropy(adv(mu - 0.5 * mu.grad * 64), banks) > before


def test_the_objective_needs_the_banks_and_the_classifier():
    torch.manual_seed(0)
    model = ConvVAE(ModelConfig(channels=(4, 8, 8), depth=3, latent_dim=6), n_mels=16, frames=16)
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    out, pitch, classes = model(x), torch.full((8,), 60), torch.arange(8) // 2
    cfg = TrainConfig(source_adversary=3.0)
    with pytest.raises(ParameterError, match=r"train.source_adversary=3.0 is on but got no SoundFont per note"):
        training_objective(x, out, model, pitch=pitch, classes=classes, beta=0.5, cfg=cfg,
                           adversary=SourceAdversary(6, 2))
    with pytest.raises(ParameterError, match=r"adversary: train.source_adversary=3.0 is on but got no SoundFont "
                                             r"classifier"):
        training_objective(x, out, model, pitch=pitch, classes=torch.stack([classes, classes % 2], dim=1),
                           beta=0.5, cfg=cfg)
