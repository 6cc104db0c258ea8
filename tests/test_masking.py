"""vaelib/model/masking.py: the band and the span of frames hidden from the encoder."""

from __future__ import annotations

import pytest
import torch

from vaelib.config import ConfigError, TrainConfig, load_config
from vaelib.model.checkpoint import checkpoint_dir
from vaelib.model.masking import FLOOR, N_MASK_DRAWS, draw_masks, mask_notes, masking_on


def _x(n: int = 3, mels: int = 16, frames: int = 20) -> torch.Tensor:
    return torch.linspace(-0.5, 0.9, n * mels * frames).reshape(n, 1, mels, frames)


def test_the_band_and_the_span_drawn_are_at_the_floor_and_nothing_else_changes():
    x = _x()
    # note 0: widest band (8 of 0..8) from the lowest band; note 1: no band, a span of 5 (0..9 -> floor(0.55*10))
    # at the end; note 2: nothing hidden
    u = torch.tensor([[0.999, 0.0, 0.0, 0.5], [0.0, 0.3, 0.55, 0.999], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    out = mask_notes(x, u, bands=8, frames=9)
    expected = x.clone()
    expected[0, :, 0:8, :] = FLOOR
    expected[1, :, :, 15:20] = FLOOR
    assert torch.equal(out, expected)
    assert not torch.equal(out, x) and torch.equal(x, _x())  # a new tensor; the target is left as it was


def test_widths_are_uniform_and_every_position_is_reached():
    gen = torch.Generator().manual_seed(0)
    u = draw_masks(4000, gen)
    assert u.shape == (4000, N_MASK_DRAWS) and u.dtype == torch.float64
    x = torch.zeros(4000, 1, 16, 20)
    hidden = mask_notes(x, u, bands=6, frames=0) == FLOOR
    width = hidden[:, 0, :, 0].sum(dim=1)
    assert set(width.tolist()) == set(range(7))  # 0..6 bands
    counts = torch.bincount(width, minlength=7).float() / 4000
    assert torch.allclose(counts, torch.full((7,), 1 / 7), atol=0.03)
    assert hidden[:, 0, :, 0].any(dim=0).all()  # the lowest and the highest band too
    assert not (hidden != hidden[:, :, :, :1]).any()  # a band is hidden in every frame
    spans = (mask_notes(x, u, bands=0, frames=19) == FLOOR)[:, 0, 0, :]
    assert spans.sum(dim=1).max() == 19 and spans.any(dim=0).all()


def test_draws_of_another_batch_size_are_refused():
    with pytest.raises(ValueError, match="do not match a batch of 3"):
        mask_notes(_x(), torch.zeros(2, N_MASK_DRAWS), bands=2, frames=2)


def test_masks_that_would_hide_the_note_are_refused_and_off_leaves_the_checkpoint_key():
    assert not masking_on(TrainConfig()) and masking_on(TrainConfig(augment_mask_frames=4))
    with pytest.raises(ConfigError, match=r"train.augment_mask_bands \(80\).*features.n_mels \(80\)"):
        load_config(None, ["train.augment_mask_bands=80"])
    with pytest.raises(ConfigError, match=r"train.augment_mask_frames \(128\).*features.frames \(128\)"):
        load_config(None, ["train.augment_mask_frames=128"])
    base = checkpoint_dir(load_config(None, []), "k")
    assert checkpoint_dir(load_config(None, ["train.augment_mask_bands=0"]), "k") == base
    assert len({base, *(checkpoint_dir(load_config(None, [s]), "k")
                        for s in ("train.augment_mask_bands=8", "train.augment_mask_frames=8"))}) == 3
