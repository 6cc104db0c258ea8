"""Helpers of the analysis tests: a tiny stand-in VAE, synthetic metadata, the trained smoke run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

N_MELS, FRAMES = 80, 128

_TRAINED: dict = {}


class TinyVAE(nn.Module):
    """The encode/decode API of ``vaelib.model.vae.ConvVAE`` in a few linear maps over the mel profile."""

    def __init__(self, latent_dim: int = 4, *, pitch_conditioning: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.pitch_conditioning = pitch_conditioning
        self.to_mu = nn.Linear(N_MELS, latent_dim)
        self.to_logvar = nn.Linear(N_MELS, latent_dim)
        self.from_z = nn.Linear(latent_dim + (1 if pitch_conditioning else 0), N_MELS)
        self.eval()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        profile = x.mean(dim=3)[:, 0]  # (B, n_mels)
        return self.to_mu(profile), torch.tanh(self.to_logvar(profile))

    def decode(self, z: torch.Tensor, pitch: torch.Tensor | None = None) -> torch.Tensor:
        if self.pitch_conditioning:
            if pitch is None:
                raise ValueError("pitch required")
            z = torch.cat([z, pitch.float()[:, None] / 127.0], dim=1)
        profile = torch.tanh(self.from_z(z))  # (B, n_mels)
        return profile[:, None, :, None].expand(-1, 1, N_MELS, FRAMES).contiguous()


def synthetic_meta(*, families=("keyboard", "string", "brass", "guitar"), per_family: int = 3,
                   pitches=(48, 52, 56, 60), velocities=(75, 127)) -> pd.DataFrame:
    """Every instrument plays every pitch and velocity; the first instrument of a family is in test."""
    rows = []
    for fam in families:
        for i in range(per_family):
            inst = f"{fam}_acoustic_{i:03d}"
            split = "test" if i == 0 else "train"
            for p in pitches:
                for v in velocities:
                    rows.append({"note_str": f"{inst}-{p:03d}-{v:03d}", "pitch": p, "velocity": v,
                                 "instrument_str": inst, "instrument_family_str": fam,
                                 "instrument_source_str": "acoustic" if i % 2 == 0 else "electronic",
                                 "split": split})
    return pd.DataFrame(rows)


def smoke_overrides(dataset: Path, work: Path) -> list[str]:
    return [f"data.root={dataset}", f"features.cache_dir={work / 'cache'}",
            f"train.checkpoint_dir={work / 'ckpt'}"]


def trained_smoke(dataset: Path, work: Path) -> dict:
    """params/smoke.yaml trained once per session (the real model and trainer): cfg, cache, checkpoint."""
    if "run" not in _TRAINED:
        from vaelib.config import PROJECT_ROOT, load_config
        from vaelib.data.prepare import prepare_features
        from vaelib.model.checkpoint import find_checkpoint
        from vaelib.model.train import train

        params = PROJECT_ROOT / "params" / "smoke.yaml"
        overrides = smoke_overrides(dataset, work)
        cfg = load_config(params, overrides)
        cache = prepare_features(cfg, show_progress=False)
        train(cfg, cache, show_progress=False)
        ckpt = find_checkpoint(cfg, cache)
        assert ckpt is not None, "training finished but find_checkpoint found nothing"
        _TRAINED["run"] = {"params": params, "overrides": overrides, "cfg": cfg, "cache": cache,
                           "checkpoint": Path(ckpt)}
    return _TRAINED["run"]


def random_spectrograms(n: int, *, seed: int = 0) -> np.ndarray:
    """[shape=(n, 1, 80, 128)] float16 in [-1, 1] with a few harmonics, like the feature cache."""
    rng = np.random.default_rng(seed)
    x = np.full((n, 1, N_MELS, FRAMES), -1.0, np.float32)
    for i in range(n):
        for band in rng.choice(N_MELS, size=6, replace=False):
            x[i, 0, band, :] = rng.uniform(-0.2, 1.0)
    return x.astype(np.float16)
