"""Parts of a training note hidden from the encoder (SpecAugment's masks, Park et al. 2019), the decoder still
asked for the whole note: a denoising objective, so that mu is read from every part of a note and not from one
cue (one band's colour, the first frames' attack) that another source may not share.

Per note and step, afresh: one band of ``w_b`` mel bands, ``w_b`` uniform in ``0..augment_mask_bands``, at a
uniform position, and one span of ``w_t`` frames, ``w_t`` uniform in ``0..augment_mask_frames``, are set to the
cache's floor (-1: no power) in the encoder's input. The target of the reconstruction, and every other term,
keep the note as it was (after the recording-chain augmentation, when that is on).

The four uniforms of a note (band width, band start, span width, span start) are drawn for the whole batch from
the augmentation's stream after the recording chain's, only when masking is on, so a run without it draws what
it drew before masking existed, and the processes of a data-parallel run mask their notes as one process would.
"""

from __future__ import annotations

import torch

from vaelib.config import TrainConfig

__all__ = ["masking_on", "draw_masks", "mask_notes", "N_MASK_DRAWS"]

N_MASK_DRAWS = 4  # band width, band start, span width, span start
FLOOR = -1.0  # the cache's floor: no power


def masking_on(tc: TrainConfig) -> bool:
    """Whether part of each training note is hidden from the encoder."""
    return bool(tc.augment_mask_bands or tc.augment_mask_frames)


def draw_masks(n: int, gen: torch.Generator) -> torch.Tensor:
    """The uniforms of ``n`` notes' masks, [shape=(n, N_MASK_DRAWS)] float64 in [0, 1), from ``gen`` (CPU)."""
    return torch.rand(n, N_MASK_DRAWS, generator=gen, dtype=torch.float64)


def _spans(u_width: torch.Tensor, u_start: torch.Tensor, widest: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and stop (exclusive) of one span per note: width uniform in 0..widest, start uniform where it fits."""
    width = torch.floor(u_width * (widest + 1)).long().clamp_(0, min(widest, size))
    start = torch.floor(u_start * (size - width + 1)).long().clamp_(min=0)
    start = torch.minimum(start, size - width)
    return start, start + width


def mask_notes(x: torch.Tensor, u: torch.Tensor, *, bands: int, frames: int) -> torch.Tensor:
    """``x`` with each note's band and span (drawn in ``u``, one row per note) at the floor, a new tensor.

    Parameters
    ----------
    x : [shape=(batch, 1, n_mels, n_frames)] normalised log-mel in [-1, 1]
    u : [shape=(batch, N_MASK_DRAWS)] from :func:`draw_masks`
    bands, frames : the widest band (mel bands) and span (frames); 0 hides none
    """
    if u.shape != (x.shape[0], N_MASK_DRAWS):
        raise ValueError(f"mask draws {tuple(u.shape)} do not match a batch of {x.shape[0]} notes")
    u = u.to(x.device)
    n_mels, n_frames = x.shape[-2], x.shape[-1]
    hidden = torch.zeros(x.shape[0], 1, n_mels, n_frames, dtype=torch.bool, device=x.device)
    if bands:
        lo, hi = _spans(u[:, 0], u[:, 1], bands, n_mels)
        band = torch.arange(n_mels, device=x.device)
        hidden |= ((band[None, :] >= lo[:, None]) & (band[None, :] < hi[:, None]))[:, None, :, None]
    if frames:
        lo, hi = _spans(u[:, 2], u[:, 3], frames, n_frames)
        frame = torch.arange(n_frames, device=x.device)
        hidden |= ((frame[None, :] >= lo[:, None]) & (frame[None, :] < hi[:, None]))[:, None, None, :]
    return x.masked_fill(hidden, FLOOR)
