"""The convolutional beta-VAE of the study: stride-2 conv encoder, Gaussian latent, mirrored decoder.

Layout (depth 3, channels c1-c2-c3, input 80 x 128)::

    x (B, 1, 80, 128)
      -> [Conv2d k s2 -> norm -> act] x depth        (B, c3, 10, 16)
      -> flatten -> Linear -> mu, Linear -> logvar   (B, D) each
    z = mu + exp(logvar / 2) * eps                   (B, D)
      -> Linear -> reshape                           (B, c3, 10, 16)
      -> [ConvTranspose2d k s2 -> norm -> act] x (depth - 1) -> ConvTranspose2d k s2 -> tanh
    x_hat (B, 1, 80, 128) in [-1, 1]

Sizes that are not a power of two (80 mel bands) are handled exactly: each encoder level maps
``n -> ceil(n / 2)`` and the decoder level that mirrors it gets the ``output_padding`` (0 or 1)
that brings it back to ``n``, so every depth returns the input's shape with no crop or pad.

The KL term is computed in :mod:`vaelib.model.loss`, not here: the model returns what the loss needs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vaelib.config import ModelConfig
from vaelib.exceptions import ParameterError
from vaelib.model.mixstyle import LEVELS as MIXSTYLE_LEVELS
from vaelib.model.mixstyle import StyleMix, mix_style

__all__ = ["ConvVAE", "VAEOutput", "conv_sizes", "count_parameters", "N_PITCHES"]

N_PITCHES = 128  # MIDI pitches 0..127, one-hot when the decoder is pitch-conditioned
LEAKY_SLOPE = 0.2  # DCGAN's slope; keeps a gradient through negative pre-activations
_LEVEL_LAYERS = 3  # conv, norm, activation: the modules of one encoder level


class VAEOutput(NamedTuple):
    """What :meth:`ConvVAE.forward` returns.

    x_hat : [shape=(batch, 1, n_mels, frames)] reconstruction in [-1, 1]
    mu, logvar : [shape=(batch, latent_dim)] parameters of q(z|x); logvar bounded to [-b, b]
    z : [shape=(batch, latent_dim)] one reparameterized sample
    """

    x_hat: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor


def conv_sizes(n: int, depth: int, *, kernel_size: int = 3) -> list[int]:
    """Spatial size after each stride-2 level, input included (depth + 1 entries).

    Padding is ``(k - 1) // 2``, so odd kernels give ``ceil(n / 2)`` and k=4 gives ``floor(n / 2)``.
    """
    pad = (kernel_size - 1) // 2
    sizes = [n]
    for _ in range(depth):
        sizes.append((sizes[-1] + 2 * pad - kernel_size) // 2 + 1)
    return sizes


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # 8 groups when the channels allow it, else one group per channel pair or fewer.
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


def _act(kind: str) -> nn.Module:
    return {
        "leaky_relu": lambda: nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        "relu": lambda: nn.ReLU(inplace=True),
        "gelu": nn.GELU,
        "silu": lambda: nn.SiLU(inplace=True),
    }[kind]()


class ConvVAE(nn.Module):
    """Convolutional VAE over normalised log-mel spectrograms.

    Parameters
    ----------
    cfg : ModelConfig
        ``depth`` stride-2 levels with ``channels[i]`` channels each, ``kernel_size``, ``norm``,
        ``activation``, ``latent_dim``, ``logvar_bound``, ``pitch_conditioning``, ``contrast_head``,
        ``pitch_head`` and ``pitch_dims``.
    n_mels, frames : int
        Input height and width; any sizes of at least ``2 ** depth`` work.

    Raises
    ------
    ParameterError
        When ``channels`` does not have ``depth`` entries or the input is too small for the depth.
    """

    def __init__(self, cfg: ModelConfig, *, n_mels: int = 80, frames: int = 128) -> None:
        super().__init__()
        if len(cfg.channels) != cfg.depth:
            raise ParameterError(f"model.channels {list(cfg.channels)} must have depth={cfg.depth} entries")
        if min(n_mels, frames) < 2 ** cfg.depth:
            raise ParameterError(f"input {n_mels}x{frames} is too small for depth {cfg.depth}")
        self.cfg = cfg
        self.n_mels, self.frames = n_mels, frames
        k = cfg.kernel_size
        pad = (k - 1) // 2  # see conv_sizes
        self.h_sizes = conv_sizes(n_mels, cfg.depth, kernel_size=k)
        self.w_sizes = conv_sizes(frames, cfg.depth, kernel_size=k)

        layers: list[nn.Module] = []
        c_in = 1
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, k, stride=2, padding=pad, bias=cfg.norm == "none"),
                       _norm(cfg.norm, c), _act(cfg.activation)]
            c_in = c
        self.encoder = nn.Sequential(*layers)
        assert len(self.encoder) == _LEVEL_LAYERS * cfg.depth  # where encode mixes the statistics (MixStyle)
        self.flat_shape = (cfg.channels[-1], self.h_sizes[-1], self.w_sizes[-1])
        flat = cfg.channels[-1] * self.h_sizes[-1] * self.w_sizes[-1]
        self.to_mu = nn.Linear(flat, cfg.latent_dim)
        self.to_logvar = nn.Linear(flat, cfg.latent_dim)

        z_in = cfg.latent_dim + (N_PITCHES if cfg.pitch_conditioning else 0)
        self.from_z = nn.Linear(z_in, flat)
        dec: list[nn.Module] = []
        rev = list(reversed(cfg.channels)) + [1]
        for i in range(cfg.depth):
            level = cfg.depth - i  # decoder level i undoes encoder level `level`
            out_pad = (self._out_pad(self.h_sizes[level], self.h_sizes[level - 1], k, pad),
                       self._out_pad(self.w_sizes[level], self.w_sizes[level - 1], k, pad))
            last = i == cfg.depth - 1
            dec.append(nn.ConvTranspose2d(rev[i], rev[i + 1], k, stride=2, padding=pad, output_padding=out_pad,
                                          bias=last or cfg.norm == "none"))
            if not last:
                dec += [_norm(cfg.norm, rev[i + 1]), _act(cfg.activation)]
        self.decoder = nn.Sequential(*dec)
        # Luo et al. (ISMIR 2019) supervise pitch on the latent of a timbre/pitch VAE; a linear head keeps
        # what it rewards (pitch linearly readable from mu) the same as what the probes measure.
        # Chen et al. 2020 (SimCLR): a contrastive loss taken through a small MLP leaves the layer before
        # it more informative; here that layer is mu, which the decoder also needs.
        self.contrast_proj = (nn.Sequential(nn.Linear(cfg.latent_dim, cfg.contrast_head), nn.ReLU(),
                                            nn.Linear(cfg.contrast_head, cfg.contrast_head))
                              if cfg.contrast_head else None)
        self.pitch_dims = cfg.pitch_dims or cfg.latent_dim
        self.pitch_logits = nn.Linear(self.pitch_dims, N_PITCHES) if cfg.pitch_head else None

    @staticmethod
    def _out_pad(n_in: int, n_out: int, k: int, pad: int) -> int:
        """ConvTranspose2d output_padding that maps ``n_in`` back to ``n_out`` (must be 0 or 1)."""
        op = n_out - ((n_in - 1) * 2 - 2 * pad + k)
        assert op in (0, 1), f"kernel {k} cannot mirror {n_out} -> {n_in} (output_padding {op})"
        return op

    def contrast_features(self, mu: torch.Tensor, dims: int = 0) -> torch.Tensor:
        """What the contrastive term compares: the leading ``dims`` of mu (0: all), through the projection
        head when the model has one (the other dimensions enter it as zeros)."""
        lead = mu[:, :dims] if dims else mu
        if self.contrast_proj is None:
            return lead
        return self.contrast_proj(nn.functional.pad(lead, (0, mu.shape[1] - lead.shape[1])))

    def pitch_scores(self, mu: torch.Tensor) -> torch.Tensor:
        """Logits over the 128 MIDI pitches from the trailing ``pitch_dims`` dimensions of mu."""
        if self.pitch_logits is None:
            raise ParameterError("pitch_scores: the model has no pitch head (model.pitch_head=false)")
        return self.pitch_logits(mu[:, -self.pitch_dims:])

    def encode(self, x: torch.Tensor, mix: StyleMix | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) parameters.

        Parameters
        ----------
        x : [shape=(batch, 1, n_mels, frames)] normalised log-mel in [-1, 1]
        mix : the channel statistics of the first levels mixed between the notes (training only,
            :mod:`vaelib.model.mixstyle`); None: not

        Returns
        -------
        mu, logvar : [shape=(batch, latent_dim)]; logvar = b * tanh(raw / b), b = ``logvar_bound``.
        """
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, self.n_mels, self.frames):
            raise ParameterError(f"x: expected shape (batch, 1, {self.n_mels}, {self.frames}), got {tuple(x.shape)}")
        if mix is not None and not self.training:
            raise ParameterError("encode: mix is for training only (the model is in eval mode, where a note is "
                                 "encoded as it is)")
        if mix is None:
            h = self.encoder(x)
        else:  # the first levels one by one, each followed by the mixing, then the others
            h = x
            for level in range(MIXSTYLE_LEVELS):
                h = mix_style(self.encoder[_LEVEL_LAYERS * level:_LEVEL_LAYERS * (level + 1)](h), mix)
            h = self.encoder[_LEVEL_LAYERS * MIXSTYLE_LEVELS:](h)
        h = h.flatten(1)  # (B, c_last * h_last * w_last)
        mu = self.to_mu(h)
        # A smooth bound: with a summed reconstruction and beta ~ 0 early in warm-up, nothing holds an
        # unbounded logvar back, and exp(logvar / 2) can overflow to inf / NaN.
        b = self.cfg.logvar_bound
        logvar = b * torch.tanh(self.to_logvar(h) / b)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None, *,
                       noise_rows: tuple[int, int] | None = None) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I) drawn from ``generator`` (Kingma & Welling 2014, eq. 10).

        ``noise_rows`` = (start, total): these notes are rows ``start:start + len(mu)`` of a batch of
        ``total`` notes; eps is drawn for the whole batch and those rows are used, so that a process
        holding a slice of a batch gives its notes the noise one process holding all of it would.
        """
        if noise_rows is None:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        else:
            start, total = noise_rows
            if not 0 <= start <= start + mu.shape[0] <= total:
                raise ParameterError(f"noise_rows {noise_rows}: rows {start}:{start + mu.shape[0]} are not in a "
                                     f"batch of {total}")
            eps = torch.randn((total, *mu.shape[1:]), generator=generator, device=mu.device,
                              dtype=mu.dtype)[start:start + mu.shape[0]]
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor, pitch: torch.Tensor | None = None) -> torch.Tensor:
        """p(x|z) mean.

        Parameters
        ----------
        z : [shape=(batch, latent_dim)]
        pitch : [shape=(batch,)] long MIDI pitch; required iff ``cfg.pitch_conditioning``, else ignored.

        Returns
        -------
        x_hat : [shape=(batch, 1, n_mels, frames)] in [-1, 1] (tanh)
        """
        if self.cfg.pitch_conditioning:
            if pitch is None:
                raise ParameterError("decode: pitch is required when model.pitch_conditioning is true")
            onehot = F.one_hot(pitch.long().clamp(0, N_PITCHES - 1), N_PITCHES).to(z.dtype)
            z = torch.cat([z, onehot], dim=1)  # (B, D + 128)
        h = self.from_z(z).view(-1, *self.flat_shape)  # (B, c_last, h_last, w_last)
        if h.device.type == "cpu":
            h = h.contiguous(memory_format=torch.channels_last)  # oneDNN's fast layout
        return torch.tanh(self.decoder(h))

    def forward(self, x: torch.Tensor, pitch: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None, noise_rows: tuple[int, int] | None = None,
                mix: StyleMix | None = None) -> VAEOutput:
        """Encode, sample one z, decode. ``generator`` seeds the reparameterization noise; ``noise_rows``:
        see :meth:`reparameterize`; ``mix``: see :meth:`encode`."""
        mu, logvar = self.encode(x, mix)
        z = self.reparameterize(mu, logvar, generator, noise_rows=noise_rows)
        return VAEOutput(self.decode(z, pitch), mu, logvar, z)
