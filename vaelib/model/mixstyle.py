"""MixStyle (Zhou et al., ICLR 2021): the encoder's early feature statistics mixed between the notes of a batch.

A convolutional network's first levels carry, in the mean and standard deviation of each channel over the
whole map, much of what a recording chain or a bank's sampling and mixing changes (level, spectral slope,
how much the partials stand out of the floor) and little of which instrument plays. During training, with
probability ``p`` a batch has, after each of the encoder's first :data:`LEVELS` levels, every note's
channel statistics replaced by a mix of its own and those of another note of the batch::

    h' = (h - m) / s * (lam * s + (1 - lam) * s[perm]) + lam * m + (1 - lam) * m[perm]

``m``, ``s`` the per-note, per-channel mean and standard deviation over frequency and time (taken out of the
gradient, as in the paper), ``lam ~ Beta(alpha, alpha)`` per note, ``perm`` a random permutation of the
batch. The reconstruction is still asked of the note itself, so the encoder learns to give one mu to a note
whatever the statistics its first levels see. Evaluation and encoding never mix.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from vaelib.config import TrainConfig

__all__ = ["StyleMix", "draw_style_mix", "mix_style", "LEVELS"]

LEVELS = 2  # the paper's best placement: after the first two of a ResNet's four stages, where style lives
_EPS = 1e-6


class StyleMix(NamedTuple):
    """One batch's mixing: ``perm`` [shape=(batch,)] the partner of each note, ``lam`` [shape=(batch,)] its
    own share."""

    perm: torch.Tensor
    lam: torch.Tensor


def draw_style_mix(n: int, tc: TrainConfig, gen: torch.Generator, device: torch.device) -> StyleMix | None:
    """The mixing of a batch of ``n`` notes from ``gen`` (CPU), or None when the batch is left as it is.

    The same three draws are taken from ``gen`` for every batch (whether it is mixed or not), so the
    stream stays in step however the coin falls.
    """
    coin = torch.rand(1, generator=gen).item()
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    perm = torch.randperm(n, generator=gen)
    if coin >= tc.mixstyle:
        return None
    from scipy.special import betaincinv  # only where a batch mixes: the model module stays quick to import

    lam = torch.from_numpy(betaincinv(tc.mixstyle_alpha, tc.mixstyle_alpha, u.numpy())).float()
    return StyleMix(perm.to(device), lam.to(device))


def mix_style(h: torch.Tensor, mix: StyleMix) -> torch.Tensor:
    """``h`` [shape=(batch, channels, height, width)] with its channel statistics mixed (see the module doc)."""
    if mix.perm.shape != h.shape[:1] or mix.lam.shape != h.shape[:1]:
        raise ValueError(f"mix of {tuple(mix.perm.shape)} notes for a batch of {h.shape[0]}")
    mean = h.mean(dim=(2, 3), keepdim=True).detach()
    sd = (h.var(dim=(2, 3), keepdim=True) + _EPS).sqrt().detach()
    lam = mix.lam.to(h.dtype).view(-1, 1, 1, 1)
    mixed_mean = lam * mean + (1 - lam) * mean[mix.perm]
    mixed_sd = lam * sd + (1 - lam) * sd[mix.perm]
    return (h - mean) / sd * mixed_sd + mixed_mean
