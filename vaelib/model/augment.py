"""Augmentation of log-mel batches, drawn per note and step: what another microphone, room or tuning would
change in a training note (the recording chain), and, apart, how fast the note decays and darkens after its
peak (the note's envelope), which differ between two instruments of one family as between two banks' renderings
of one program.

It acts on the normalised log-mel of the cache (:func:`vaelib.data.features.log_mel_batch`), on power, the
envelope first, then in the order of a recording chain:

0. **envelope**, from the frame of the note's loudest bin on (``t`` seconds after it): a faster decay,
   ``-d * t`` dB in every band, and a faster darkening, ``-b * t * o`` dB at ``o`` octaves above the lowest
   band, ``d`` and ``b`` uniform from 0; only losses after the peak, so the note keeps its reference, its
   attack, and what the cache clipped stays below the floor;
1. **detune** by ``c`` cents: each band takes the power the note had at ``f / r`` (``r = 2^(c/1200)``),
   interpolated linearly in log-frequency between band centres: the harmonics move, the envelope keeps
   its shape (a pitch error of under a quarter tone keeps the pitch label right);
2. **EQ**: a tilt of ``s`` dB per octave around 1 kHz (a brighter or duller microphone or room), plus one
   bell of ``g`` dB, a Gaussian one octave wide (sd 0.5 octave), centred uniformly in octaves between the
   lowest and the highest band (a resonance);
3. **reverb**, on a share ``p`` of the notes: an exponential tail in every band,
   ``y[t] = x[t] + w * sum_{k>=1} a^(k-1) x[t-k]``, ``a`` the decay of one frame at a reverberation time
   drawn uniformly from 0.2 s to ``rt60`` (60 dB of decay), ``w`` the tail's level one frame after the
   sound, uniform in [-20, -6] dB;
4. **gain** of ``+-gain`` dB (changes only notes cached with ``features.ref='fixed'``).

Then the note is referenced as the cache references it (``ref='max'``: its peak back to 0 dB) and clipped
to [-top_db, 0]. The floor (-top_db) is taken as no power at all, so an EQ never lifts the clipped floor
into a pattern the cache could not hold; a reverb tail fills it, as a room does.

Every setting is drawn per note from uniforms drawn for the whole batch (:meth:`Augmenter.draw`), so the
processes of a data-parallel run, each augmenting its slice, give the notes what one process would. The
envelope's two uniforms are drawn only when it is on, after the recording chain's, so a run without it draws
what it drew before the envelope existed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vaelib.config import Config, FeatureConfig, TrainConfig
from vaelib.data.features import mel_frequencies, normalize_db

__all__ = ["Augmenter", "augment_on", "N_DRAWS", "N_ENVELOPE_DRAWS", "WET_DB", "RT60_MIN_S", "BELL_SD_OCTAVES"]

N_DRAWS = 8  # uniforms per note: detune, tilt, bell gain, bell centre, reverb on, rt60, wet level, gain
N_ENVELOPE_DRAWS = 2  # and, with the envelope on: extra decay, extra darkening
WET_DB = (-20.0, -6.0)
RT60_MIN_S = 0.2
BELL_SD_OCTAVES = 0.5
_TILT_CENTRE_HZ = 1000.0
_FLOOR_POWER = 1e-30  # the cache's floor maps to no power; any EQ of it stays far below -top_db
_SILENT_DB = 10.0 * math.log10(_FLOOR_POWER) + 1e-3


def augment_on(tc: TrainConfig) -> bool:
    """Whether any part of the augmentation is on."""
    return any((tc.augment_detune, tc.augment_tilt, tc.augment_eq, tc.augment_reverb, tc.augment_gain,
                envelope_on(tc)))


def envelope_on(tc: TrainConfig) -> bool:
    """Whether the note-envelope part of the augmentation is on."""
    return bool(tc.augment_decay or tc.augment_darkening)


class Augmenter:
    """The augmentation of one run's training batches (see the module doc).

    Parameters
    ----------
    tc : TrainConfig, its ``augment_*`` fields
    fc : FeatureConfig of the cache (band centres, hop, ``top_db``, ``ref``)
    device : where the batches are
    """

    def __init__(self, tc: TrainConfig, fc: FeatureConfig, device: torch.device | str = "cpu") -> None:
        self.tc, self.fc, self.device = tc, fc, torch.device(device)
        centres = mel_frequencies(fc)
        self._log_f = torch.as_tensor(np.log(centres), dtype=torch.float64, device=self.device)
        octaves = np.log2(centres / _TILT_CENTRE_HZ)
        self._octaves = torch.as_tensor(octaves, dtype=torch.float32, device=self.device)
        self._octave_span = (float(self._octaves[0]), float(self._octaves[-1]))  # where a bell's centre is drawn
        self._octaves_up = self._octaves - self._octaves[0]  # above the lowest band: darkening loses nothing there
        self._frame_s = fc.hop_length / fc.sample_rate
        lag = torch.arange(fc.frames, device=self.device)
        self._frame_index = lag.float()
        self.n_draws = N_DRAWS + (N_ENVELOPE_DRAWS if envelope_on(tc) else 0)
        self._lag = (lag[None, :] - lag[:, None]).float()  # [source frame, frame] -> frames after the sound

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device | str = "cpu") -> Augmenter | None:
        """The run's augmenter, or None when every ``train.augment_*`` is off."""
        return cls(cfg.train, cfg.features, device) if augment_on(cfg.train) else None

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """The uniforms of ``n`` notes, [shape=(n, self.n_draws)] float64 in [0, 1), from ``gen`` (CPU).

        As many per note whatever part of the recording chain is on, so switching one off leaves the others'
        draws; the envelope's come after them, only when it is on."""
        u = torch.rand(n, N_DRAWS, generator=gen, dtype=torch.float64)
        if self.n_draws == N_DRAWS:
            return u
        return torch.cat([u, torch.rand(n, N_ENVELOPE_DRAWS, generator=gen, dtype=torch.float64)], dim=1)

    def __call__(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``x`` augmented with the settings drawn in ``u`` (one row per note), a new tensor.

        Parameters
        ----------
        x : [shape=(batch, 1, n_mels, frames)] normalised log-mel in [-1, 1]
        u : [shape=(batch, self.n_draws)] from :meth:`draw`

        Returns
        -------
        tensor like ``x`` (float32, its memory format)
        """
        tc, fc = self.tc, self.fc
        if u.shape != (x.shape[0], self.n_draws):
            raise ValueError(f"augmentation draws {tuple(u.shape)} do not match a batch of {x.shape[0]} notes")
        u = u.to(device=x.device, dtype=torch.float32)
        signed = 2.0 * u - 1.0
        xf = x.float()
        db = (xf - 1.0) * (fc.top_db / 2.0)
        power = torch.where(xf <= -1.0 + 1e-6, torch.zeros_like(db), torch.pow(10.0, db / 10.0))
        if self.n_draws > N_DRAWS:
            power = self._envelope(power, decay=u[:, N_DRAWS] * tc.augment_decay,
                                   darkening=u[:, N_DRAWS + 1] * tc.augment_darkening)
        if tc.augment_detune:
            power = self._detune(power, signed[:, 0] * tc.augment_detune)
        gain_db = torch.zeros(x.shape[0], 1, fc.n_mels, 1, device=x.device)
        if tc.augment_tilt:
            gain_db = gain_db + (signed[:, 1] * tc.augment_tilt)[:, None, None, None] * self._octaves[:, None]
        if tc.augment_eq:
            lo, hi = self._octave_span
            centre = lo + u[:, 3] * (hi - lo)
            bell = torch.exp(-0.5 * ((self._octaves[None, :] - centre[:, None]) / BELL_SD_OCTAVES) ** 2)
            gain_db = gain_db + ((signed[:, 2] * tc.augment_eq)[:, None] * bell)[:, None, :, None]
        if tc.augment_gain:
            gain_db = gain_db + (signed[:, 7] * tc.augment_gain)[:, None, None, None]
        if tc.augment_tilt or tc.augment_eq or tc.augment_gain:
            power = power * torch.pow(10.0, gain_db / 10.0)
        if tc.augment_reverb:
            power = self._reverb(power, on=u[:, 4] < tc.augment_reverb, u_rt60=u[:, 5], u_wet=u[:, 6])
        out = normalize_db(10.0 * torch.log10(power.clamp_min(_FLOOR_POWER)), cfg=fc, silent_db=_SILENT_DB)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _envelope(self, power: torch.Tensor, *, decay: torch.Tensor, darkening: torch.Tensor) -> torch.Tensor:
        # from the frame of the note's loudest bin: the peak the cache referenced stays where it was, so the
        # note needs no new reference and its floor stays hidden
        peak = power.amax(dim=(1, 2)).argmax(dim=1)
        after_s = (self._frame_index[None, :] - peak[:, None].float()).clamp_min(0.0) * self._frame_s
        rate_db = decay[:, None, None] + darkening[:, None, None] * self._octaves_up[None, :, None]  # dB a second
        loss_db = after_s[:, None, :] * rate_db
        return power * torch.pow(10.0, -loss_db / 10.0)[:, None]

    def _detune(self, power: torch.Tensor, cents: torch.Tensor) -> torch.Tensor:
        log_f = self._log_f
        source = log_f[None, :] - (cents.double() * (math.log(2.0) / 1200.0))[:, None]  # (batch, bands)
        hi = torch.searchsorted(log_f, source.contiguous()).clamp_(1, len(log_f) - 1)
        lo = hi - 1
        frac = ((source - log_f[lo]) / (log_f[hi] - log_f[lo])).clamp_(0.0, 1.0).float()
        frames = power.shape[-1]
        take = lambda idx: power.gather(2, idx[:, None, :, None].expand(-1, 1, -1, frames))
        return take(lo) * (1.0 - frac)[:, None, :, None] + take(hi) * frac[:, None, :, None]

    def _reverb(self, power: torch.Tensor, *, on: torch.Tensor, u_rt60: torch.Tensor,
                u_wet: torch.Tensor) -> torch.Tensor:
        rt60 = RT60_MIN_S + u_rt60 * max(self.tc.augment_rt60 - RT60_MIN_S, 0.0)
        decay_db = 60.0 * self._frame_s / rt60  # dB lost per frame
        wet_db = WET_DB[0] + u_wet * (WET_DB[1] - WET_DB[0])
        lag = self._lag
        # [note, source frame, frame]: 1 on the diagonal, the tail after it, nothing before
        tail_db = wet_db[:, None, None] - decay_db[:, None, None] * (lag - 1.0).clamp_min(0.0)
        kernel = torch.where(lag > 0, torch.pow(10.0, tail_db / 10.0), (lag == 0).float())
        kernel = torch.where(on[:, None, None], kernel, (lag == 0).float().expand_as(kernel))
        b, c, m, t = power.shape
        return torch.bmm(power.reshape(b, c * m, t), kernel).reshape(b, c, m, t)
