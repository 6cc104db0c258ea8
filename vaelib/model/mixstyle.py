"""MixStyle (Zhou et al., ICLR 2021): the encoder's early feature statistics mixed between the notes of a batch.

A convolutional network's first levels carry, in the mean and standard deviation of each channel over the
whole map, much of what a recording chain or a bank's sampling and mixing changes (level, spectral slope,
how much the partials stand out of the floor) and little of which instrument plays. During training, with
probability ``p`` a batch has, after each of the encoder's first :data:`LEVELS` levels, every note's
channel statistics replaced by a mix of its own and those of another note of the batch::

    h' = (h - m) / s * (lam * s + (1 - lam) * s[perm]) + lam * m + (1 - lam) * m[perm]

``m``, ``s`` the per-note, per-channel mean and standard deviation (n - 1, plus 1e-6 under the root) over
frequency and time, taken out of the gradient as in the paper; ``lam ~ Beta(alpha, alpha)`` per note;
``perm`` a random permutation of the batch. One partner and one share per note serve both levels (the
paper draws them at each). The reconstruction is still asked of the note itself, so the encoder learns to
give a note one mu whatever statistics its first levels see. :meth:`ConvVAE.encode` refuses a mix in
eval mode: evaluation and encoding never mix.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from vaelib.config import TrainConfig
from vaelib.exceptions import ParameterError

__all__ = ["StyleMix", "draw_style_mix", "mix_style", "LEVELS"]

# The paper mixes after the first two of a ResNet's four stages in its re-identification setting (its
# classification settings after three): the early levels, where the statistics hold the style.
LEVELS = 2
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
    """``h`` [shape=(batch, channels, height, width)] with its channel statistics mixed (see the module doc).

    Computed in float32 and returned in ``h``'s dtype: under bf16 autocast a share near 1 would round to
    1 and the statistics lose most of their digits.
    """
    n = h.shape[0] if h.ndim == 4 else None
    if n is None or mix.perm.shape != (n,) or mix.lam.shape != (n,):
        raise ParameterError(f"mix: perm and lam must have one entry per note of h [shape=(batch, channels, "
                             f"height, width)]; got h {tuple(h.shape)}, perm {tuple(mix.perm.shape)}, "
                             f"lam {tuple(mix.lam.shape)}")
    hf = h.float()
    mean = hf.mean(dim=(2, 3), keepdim=True).detach()
    sd = (hf.var(dim=(2, 3), keepdim=True) + _EPS).sqrt().detach()
    lam = mix.lam.float().view(-1, 1, 1, 1)
    mixed_mean = lam * mean + (1 - lam) * mean[mix.perm]
    mixed_sd = lam * sd + (1 - lam) * sd[mix.perm]
    return ((hf - mean) / sd * mixed_sd + mixed_mean).to(h.dtype)
