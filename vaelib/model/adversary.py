"""A SoundFont adversary on mu through a reversed gradient (DANN: Ganin et al., JMLR 2016).

A small classifier learns to tell from mu which SoundFont of a multi-source train split a note was
rendered from; between it and mu the gradient is reversed, so the same step that teaches the classifier
teaches the encoder to leave less of the bank in mu. ``train.source_align`` asks the same of the
contrastive dimensions with a kernel discrepancy and no classifier; the adversary reads all of mu, the
dimensions every probe reads, through a hidden layer, so it finds differences between the banks that a
few Gaussian kernels around the batch's median distance may miss.

The weight is constant from the first step (DANN ramps it up from 0; here the beta warm-up already keeps
the first steps gentle), and the classifier's gradient is not clipped with the model's (``train.grad_clip``
bounds the model's step): Adam scales the classifier's own steps whatever the weight.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SourceAdversary", "reverse_gradient", "HIDDEN"]

HIDDEN = 64  # the width of the contrastive projection head: a classifier of the same reach


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return -grad


def reverse_gradient(x: torch.Tensor) -> torch.Tensor:
    """``x`` forward; minus the gradient backward."""
    return _Reverse.apply(x)


class SourceAdversary(nn.Module):
    """Logits over ``n_sources`` SoundFonts from mu [shape=(batch, latent_dim)], the gradient into mu reversed."""

    def __init__(self, latent_dim: int, n_sources: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, n_sources))

    def forward(self, mu: torch.Tensor) -> torch.Tensor:
        return self.net(reverse_gradient(mu))
