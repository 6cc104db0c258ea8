"""Audio descriptors over the timbre space: what each note measures, where it lies on the maps of mu,
what the decoder makes of a grid over the PCA plane, and how well mu predicts it against PCA.

After Esling, Chemla-Romeu-Santos and Bitton (2018), "Generative timbre spaces: regularizing
variational auto-encoders with perceptual metrics", which maps audio descriptors over the latent
plane and decodes a grid of it to see how they vary. Every descriptor is computed from the
normalised log-mel the model reads, through its mel power (``librosa.db_to_power`` of the dB), so the
notes' cached features and the decoder's output are measured alike and no audio is read.

- Spectral: centroid, bandwidth, flatness and 85% roll-off of the note's long-term mel power spectrum
  (band power summed over frames). They are taken over the mel bands, so every band counts once and
  the low frequencies, where the bands are dense, weigh more than on a linear STFT axis: the values
  read lower than an STFT's, and are meant for comparing notes, not for quoting in absolute terms.
- Temporal, from the frame energy (the mel power summed over bands, frame ``i`` at ``i * hop / sr`` s,
  the centre of a centred STFT's window): the attack time, from the onset (the first frame within
  ``onset_db`` of the loudest: 10% of its amplitude) to the peak (the first frame within ``peak_db``:
  90% of its amplitude, so that a sustain creeping up by a fraction of a dB for seconds does not move
  the peak to its end), and the temporal centroid, the energy-weighted mean time.

With ``features.ref = 'max'`` each note's peak is 0 dB, so no descriptor depends on the level the note
was played at.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import librosa
import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vaelib.analysis.interpolate import band_bandwidth, band_centroid
from vaelib.analysis.latent import Projection, decode_latents
from vaelib.analysis.latent_map import LatentSpace
from vaelib.analysis.run import TrainedRun
from vaelib.config import FeatureConfig
from vaelib.data.features import mel_frequencies, normalized_to_db
from vaelib.exceptions import ParameterError

__all__ = [
    "DESCRIPTORS",
    "UNITS",
    "LABELS",
    "GRID_SIZE",
    "ONSET_DB",
    "PEAK_DB",
    "ROLL_PERCENT",
    "RIDGE_ALPHAS",
    "COLOUR_QUANTILES",
    "descriptor_label",
    "mel_power",
    "frame_energy",
    "spectral_flatness",
    "spectral_rolloff",
    "attack_time",
    "temporal_centroid",
    "note_descriptors",
    "pca_inverse",
    "plane_grid",
    "DescriptorGrid",
    "decode_grid",
    "descriptor_r2",
    "DescriptorStudy",
    "describe_run",
]

DESCRIPTORS = ("centroid", "bandwidth", "flatness", "rolloff", "attack", "temporal_centroid")
UNITS = {"centroid": "Hz", "bandwidth": "Hz", "flatness": "", "rolloff": "Hz", "attack": "s",
         "temporal_centroid": "s"}  # '' is unitless
LABELS = {"centroid": "spectral centroid", "bandwidth": "spectral bandwidth", "flatness": "spectral flatness",
          "rolloff": "spectral roll-off (85%)", "attack": "attack time", "temporal_centroid": "temporal centroid"}
GRID_SIZE = 15  # points per axis of the decoded grid over the PCA plane (15 x 15 = 225 decodes)
ONSET_DB = 20.0  # the onset is the first frame within this many dB of the loudest (10% of its amplitude)
PEAK_DB = float(-20.0 * np.log10(0.9))  # 0.92 dB: the peak is the first frame at 90% of the loudest's amplitude
ROLL_PERCENT = 0.85  # share of the power below the roll-off frequency
RIDGE_ALPHAS = tuple(np.logspace(-3, 4, 15))  # RidgeCV's candidates, on standardised features
COLOUR_QUANTILES = (0.02, 0.98)  # the notes' range the descriptor maps are coloured over
CHUNK = 512  # notes per block of note_descriptors: 512 x 80 x 128 float32 is 21 MB


def descriptor_label(name: str) -> str:
    """'spectral centroid (Hz)': a descriptor's label with its unit, for axes and colour bars."""
    if name not in LABELS:
        raise ParameterError(f"descriptor: expected one of {DESCRIPTORS}, got {name!r}")
    return LABELS[name] + (f" ({UNITS[name]})" if UNITS[name] else "")


def _check_shape(shape: tuple[int, ...], cfg: FeatureConfig) -> None:
    notes = shape[2:] if len(shape) == 4 and shape[1] == 1 else shape[1:]
    if len(shape) not in (3, 4) or tuple(notes) != (cfg.n_mels, cfg.frames) or shape[0] == 0:
        raise ParameterError(f"x: expected shape (notes >= 1, 1, {cfg.n_mels}, {cfg.frames}) or (notes, "
                             f"{cfg.n_mels}, {cfg.frames}), got {tuple(shape)}")


def _as_notes(x: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """``x`` as float32 [shape=(notes, n_mels, frames)], or a ParameterError naming its shape."""
    x = np.asarray(x)
    _check_shape(x.shape, cfg)
    return x.reshape(len(x), cfg.n_mels, cfg.frames).astype(np.float32, copy=False)


def mel_power(x: np.ndarray, *, cfg: FeatureConfig) -> np.ndarray:
    """Mel power relative to the note's reference, from a normalised log-mel.

    Parameters
    ----------
    x : [shape=(notes, 1, n_mels, frames)] or [shape=(notes, n_mels, frames)] normalised log-mel in [-1, 1].

    Returns
    -------
    [shape=(notes, n_mels, frames)] float32 power, 1 at the reference (0 dB), ``10 ** (-top_db / 10)`` at
    the floor.
    """
    return librosa.db_to_power(normalized_to_db(_as_notes(x, cfg), cfg=cfg)).astype(np.float32, copy=False)


def frame_energy(x: np.ndarray, *, cfg: FeatureConfig) -> np.ndarray:
    """Energy of every frame: the mel power summed over bands, [shape=(notes, frames)], relative to the reference."""
    return mel_power(x, cfg=cfg).sum(axis=1)


def _flatness(band_power: np.ndarray) -> np.ndarray:
    return librosa.feature.spectral_flatness(S=band_power[:, :, None], power=1.0)[:, 0, 0]


def _rolloff(band_power: np.ndarray, cfg: FeatureConfig, roll_percent: float) -> np.ndarray:
    return librosa.feature.spectral_rolloff(S=band_power[:, :, None], sr=cfg.sample_rate, freq=mel_frequencies(cfg),
                                            roll_percent=roll_percent)[:, 0, 0]


def _check_thresholds(onset_db: float, peak_db: float) -> None:
    if not 0 <= peak_db < onset_db:
        raise ParameterError(f"onset_db, peak_db: expected 0 <= peak_db < onset_db (dB below the loudest frame), "
                             f"got {onset_db} and {peak_db}")


def _first_within(energy: np.ndarray, db: float) -> np.ndarray:
    """Index of the first frame whose energy is within ``db`` dB of the loudest frame's, [shape=(notes,)]."""
    return (energy >= energy.max(axis=1, keepdims=True) * 10.0 ** (-db / 10.0)).argmax(axis=1)


def _attack(energy: np.ndarray, cfg: FeatureConfig, onset_db: float, peak_db: float) -> np.ndarray:
    # peak_db < onset_db, so the peak frame is within onset_db too and the onset comes no later
    return (_first_within(energy, peak_db) - _first_within(energy, onset_db)) * (cfg.hop_length / cfg.sample_rate)


def _temporal_centroid(energy: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    times = np.arange(energy.shape[1]) * (cfg.hop_length / cfg.sample_rate)
    return energy @ times / energy.sum(axis=1)


def spectral_flatness(x: np.ndarray, *, cfg: FeatureConfig) -> np.ndarray:
    """Flatness of the note's long-term mel power spectrum: geometric over arithmetic mean of the band
    powers summed over frames (``librosa.feature.spectral_flatness``).

    Parameters
    ----------
    x : [shape=(notes, 1, n_mels, frames)] or [shape=(notes, n_mels, frames)] normalised log-mel.

    Returns
    -------
    [shape=(notes,)] unitless in (0, 1]: 1 for equal power in every band (noise-like), near 0 for a few
    lit bands (tonal).
    """
    return _flatness(mel_power(x, cfg=cfg).sum(axis=2))


def spectral_rolloff(x: np.ndarray, *, cfg: FeatureConfig, roll_percent: float = ROLL_PERCENT) -> np.ndarray:
    """Roll-off of the note's long-term mel power spectrum: the centre of the first mel band at which the
    cumulative band power reaches ``roll_percent`` of the total (``librosa.feature.spectral_rolloff``).

    Parameters
    ----------
    x : [shape=(notes, 1, n_mels, frames)] or [shape=(notes, n_mels, frames)] normalised log-mel.
    roll_percent : in (0, 1).

    Returns
    -------
    [shape=(notes,)] Hz, one of the mel band centres.
    """
    if not 0.0 < roll_percent < 1.0:
        raise ParameterError(f"roll_percent: expected in (0, 1), got {roll_percent}")
    return _rolloff(mel_power(x, cfg=cfg).sum(axis=2), cfg, roll_percent)


def attack_time(x: np.ndarray, *, cfg: FeatureConfig, onset_db: float = ONSET_DB,
                peak_db: float = PEAK_DB) -> np.ndarray:
    """Time from the onset to the peak of the frame energy.

    Parameters
    ----------
    x : [shape=(notes, 1, n_mels, frames)] or [shape=(notes, n_mels, frames)] normalised log-mel.
    onset_db : the onset is the first frame whose energy is within this many dB of the loudest frame's.
    peak_db : the peak is the first frame within this many dB of the loudest (0: the loudest itself);
        0 <= peak_db < onset_db.

    Returns
    -------
    [shape=(notes,)] s, a multiple of ``hop_length / sample_rate``: (peak frame - onset frame) x hop / sr.
    """
    _check_thresholds(onset_db, peak_db)
    return _attack(frame_energy(x, cfg=cfg), cfg, onset_db, peak_db)


def temporal_centroid(x: np.ndarray, *, cfg: FeatureConfig) -> np.ndarray:
    """Energy-weighted mean time of the frames, frame ``i`` at ``i * hop_length / sample_rate``.

    Parameters
    ----------
    x : [shape=(notes, 1, n_mels, frames)] or [shape=(notes, n_mels, frames)] normalised log-mel.

    Returns
    -------
    [shape=(notes,)] s, from 0 to ``(frames - 1) * hop / sr``.
    """
    return _temporal_centroid(frame_energy(x, cfg=cfg), cfg)


def note_descriptors(x: np.ndarray, *, cfg: FeatureConfig, onset_db: float = ONSET_DB, peak_db: float = PEAK_DB,
                     roll_percent: float = ROLL_PERCENT, chunk: int = CHUNK) -> pd.DataFrame:
    """Every descriptor of every note, in blocks of ``chunk`` notes (a float16 memmap is read block by block).

    Centroid and bandwidth are those of ``vaelib.analysis.interpolate.mel_centroid`` and ``mel_bandwidth``; the
    others are the functions of this module.

    Parameters
    ----------
    x : [shape=(notes, 1, n_mels, frames)] or [shape=(notes, n_mels, frames)] normalised log-mel.

    Returns
    -------
    One row per note, one float64 column per name of ``DESCRIPTORS`` (units in ``UNITS``).
    """
    _check_thresholds(onset_db, peak_db)
    if not 0.0 < roll_percent < 1.0:
        raise ParameterError(f"roll_percent: expected in (0, 1), got {roll_percent}")
    if chunk < 1:
        raise ParameterError(f"chunk: expected >= 1, got {chunk}")
    _check_shape(tuple(np.shape(x)), cfg)  # before any block is read
    blocks = []
    for start in range(0, len(x), chunk):
        xb = _as_notes(x[start:start + chunk], cfg)
        power = mel_power(xb, cfg=cfg)  # (B, n_mels, frames)
        bands, energy = power.sum(axis=2), power.sum(axis=1)  # (B, n_mels), (B, frames)
        blocks.append(pd.DataFrame({
            "centroid": band_centroid(bands, cfg=cfg), "bandwidth": band_bandwidth(bands, cfg=cfg),
            "flatness": _flatness(bands), "rolloff": _rolloff(bands, cfg, roll_percent),
            "attack": _attack(energy, cfg, onset_db, peak_db), "temporal_centroid": _temporal_centroid(energy, cfg),
        }, dtype=np.float64))
    return pd.concat(blocks, ignore_index=True)[list(DESCRIPTORS)]


def pca_inverse(projection: Projection):
    """The map from the PCA plane back to the space it was fitted in (``PCA.inverse_transform``).

    ``vaelib.analysis.latent.project_pca`` keeps the fitted PCA as the owner of its ``transform``; a point
    (pc1, pc2) goes back to ``mean + pc1 * axis1 + pc2 * axis2``, the other directions at the fit's mean.

    Parameters
    ----------
    projection : a Projection made by ``project_pca``.

    Returns
    -------
    A function [shape=(n, 2)] -> [shape=(n, dims)].

    Raises
    ------
    ParameterError
        For a projection without a linear inverse (UMAP).
    """
    pca = getattr(projection.transform, "__self__", None)
    if not isinstance(pca, PCA):
        raise ParameterError(f"projection: a {projection.method!r} map has no linear inverse; expected one made "
                             "by project_pca")
    return lambda coords: pca.inverse_transform(np.asarray(coords, np.float64)).astype(np.float32)


def plane_grid(coords: np.ndarray, *, size: int = GRID_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A regular ``size`` x ``size`` grid over the extent (min to max on each axis) of points on a 2-D map.

    Parameters
    ----------
    coords : [shape=(notes, 2)] map coordinates (e.g. PC units).

    Returns
    -------
    axis1 : [shape=(size,)] grid positions along the first axis.
    axis2 : [shape=(size,)] grid positions along the second axis.
    points : [shape=(size * size, 2)], row-major with the second axis as rows: ``points[i * size + j]``
        is ``(axis1[j], axis2[i])``, so values of the points reshape to an image [shape=(size, size)]
        for ``imshow(origin='lower')``.
    """
    coords = np.asarray(coords, np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) < 2:
        raise ParameterError(f"coords: expected shape (notes >= 2, 2), got {coords.shape}")
    if size < 2:
        raise ParameterError(f"size: expected >= 2, got {size}")
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    if np.any(hi <= lo):
        raise ParameterError(f"coords: no extent on the map (from {lo.tolist()} to {hi.tolist()})")
    axis1, axis2 = np.linspace(lo[0], hi[0], size), np.linspace(lo[1], hi[1], size)
    a1, a2 = np.meshgrid(axis1, axis2)  # (size, size) each, rows along axis2
    return axis1, axis2, np.stack([a1.ravel(), a2.ravel()], axis=1)


@dataclass
class DescriptorGrid:
    """The descriptors of spectrograms decoded from a regular grid over the PCA plane of mu."""

    axis1: np.ndarray  # [shape=(size,)] PC1 positions
    axis2: np.ndarray  # [shape=(size,)] PC2 positions
    z: np.ndarray  # [shape=(size * size, latent_dim)] the grid mapped back to the latent space
    values: dict[str, np.ndarray]  # descriptor -> [shape=(size, size)], rows along PC2, columns along PC1
    pitch: int | None  # the pitch a conditioned decoder was given, None otherwise

    @property
    def size(self) -> int:
        return len(self.axis1)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) edges of the grid's cells in PC units, for ``imshow(extent=...)``: the
        outermost points are cell centres, half a step inside."""
        h1, h2 = (self.axis1[1] - self.axis1[0]) / 2, (self.axis2[1] - self.axis2[0]) / 2
        return (float(self.axis1[0] - h1), float(self.axis1[-1] + h1), float(self.axis2[0] - h2),
                float(self.axis2[-1] + h2))

    def spearman(self, name: str, axis: int) -> float | None:
        """Spearman correlation of a descriptor with PC1 (axis 0) or PC2 (axis 1) over the grid's points;
        None (not NaN, which is not JSON) when the descriptor is constant over the grid."""
        values = self.values[name].ravel()
        position = np.meshgrid(self.axis1, self.axis2)[axis].ravel()
        if np.ptp(values) == 0:
            return None
        return float(spearmanr(position, values).statistic)

    @property
    def metrics(self) -> dict:
        """The grid's size, its span in PC units (first and last centre per axis), the decoder's pitch, and
        per descriptor its range over the grid and its Spearman correlation with PC1 and with PC2."""
        return {"size": self.size, "pc1": [float(self.axis1[0]), float(self.axis1[-1])],
                "pc2": [float(self.axis2[0]), float(self.axis2[-1])], "pitch": self.pitch,
                "descriptors": {name: {"min": float(v.min()), "max": float(v.max()),
                                       "spearman_pc1": self.spearman(name, 0), "spearman_pc2": self.spearman(name, 1)}
                                for name, v in self.values.items()}}


def decode_grid(model: torch.nn.Module, projection: Projection, *, cfg: FeatureConfig, size: int = GRID_SIZE,
                pitch: int | None = None, device: str = "cpu") -> DescriptorGrid:
    """Decode a regular grid over a PCA map of mu and measure every descriptor of what comes out.

    Parameters
    ----------
    model : the VAE, in eval mode.
    projection : the PCA map of mu (``project_pca``); the grid spans its ``coords``.
    size : points per axis.
    pitch : MIDI pitch for a pitch-conditioned decoder (every grid point gets it); None for an
        unconditioned one.

    Returns
    -------
    The grid, its latent vectors and the descriptors of the decoded log-mels.
    """
    axis1, axis2, points = plane_grid(projection.coords, size=size)
    z = pca_inverse(projection)(points)  # (size * size, latent_dim)
    pitches = None if pitch is None else np.full(len(z), pitch, np.int64)
    decoded = decode_latents(model, z, pitch=pitches, device=device)  # (size * size, 1, n_mels, frames)
    table = note_descriptors(decoded, cfg=cfg)
    return DescriptorGrid(axis1=axis1, axis2=axis2, z=z, pitch=pitch,
                          values={name: table[name].to_numpy().reshape(size, size) for name in DESCRIPTORS})


def descriptor_r2(features: Mapping[str, np.ndarray], values: pd.DataFrame, *, fit_mask: np.ndarray,
                  eval_mask: np.ndarray, alphas: tuple[float, ...] = RIDGE_ALPHAS) -> pd.DataFrame:
    """How well each feature set predicts each descriptor: a ridge regression on standardised features
    (``RidgeCV``, its penalty chosen per descriptor by leave-one-out on the fitting rows) fitted on
    ``fit_mask`` and scored by R^2 on ``eval_mask``.

    Parameters
    ----------
    features : name -> [shape=(notes, dims)] (e.g. 'mu' and 'pca').
    values : one row per note, one column per descriptor (``note_descriptors``).
    fit_mask, eval_mask : [shape=(notes,)] bool, e.g. the train and the test split.

    Returns
    -------
    One row per descriptor, one column per feature set: R^2 on the evaluated rows (1 = exact, 0 = no
    better than their mean, negative = worse).
    """
    fit_mask, eval_mask = np.asarray(fit_mask, bool), np.asarray(eval_mask, bool)
    n = len(values)
    if fit_mask.shape != (n,) or eval_mask.shape != (n,):
        raise ParameterError(f"fit_mask, eval_mask: expected shape ({n},), got {fit_mask.shape} and {eval_mask.shape}")
    if fit_mask.sum() < 2 or eval_mask.sum() < 2:
        raise ParameterError(f"fit_mask, eval_mask: need >= 2 rows each, got {fit_mask.sum()} and {eval_mask.sum()}")
    if not features:
        raise ParameterError("features: no feature set given")
    y = values.to_numpy(np.float64)
    if not np.isfinite(y).all():
        raise ParameterError(f"values: {int((~np.isfinite(y)).sum())} non-finite descriptor values")
    out = {}
    for name, x in features.items():
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or len(x) != n:
            raise ParameterError(f"features[{name!r}]: expected shape ({n}, dims), got {x.shape}")
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=alphas, alpha_per_target=True))
        pred = model.fit(x[fit_mask], y[fit_mask]).predict(x[eval_mask]).reshape(-1, y.shape[1])
        out[name] = r2_score(y[eval_mask], pred, multioutput="raw_values")
    return pd.DataFrame(out, index=pd.Index(values.columns, name="descriptor"))


@dataclass
class DescriptorStudy:
    """The descriptors of every note of a run, of a decoded grid over its PCA plane, and their ridge R^2."""

    values: pd.DataFrame  # one row per note of the embedding table, one column per descriptor
    grid: DescriptorGrid
    r2: pd.DataFrame  # descriptor x feature set ('mu', 'pca'), R^2 on the test instruments

    def colour_limits(self, *, quantiles: tuple[float, float] = COLOUR_QUANTILES) -> dict[str, tuple[float, float]]:
        """Per descriptor, the range its maps are coloured over: the given quantiles of the notes' values,
        so that a few outlying notes (a noisy preset's flatness, a swelling pad's attack) do not squeeze
        every other note into one colour."""
        lo, hi = quantiles
        if not 0.0 <= lo < hi <= 1.0:
            raise ParameterError(f"quantiles: expected 0 <= low < high <= 1, got {quantiles}")
        q = self.values.quantile([lo, hi])
        return {name: (float(q[name].iloc[0]), float(q[name].iloc[1])) for name in self.values.columns}

    @property
    def summary(self) -> pd.DataFrame:
        """Per descriptor (labelled with its unit): its 5%, 50% and 95% quantiles and its mean over the notes."""
        quantiles = self.values.quantile([0.05, 0.5, 0.95]).T.rename(columns=lambda q: f"{q:.0%}")
        return quantiles.assign(mean=self.values.mean()).rename(index=descriptor_label).rename_axis("descriptor")

    @property
    def r2_table(self) -> pd.DataFrame:
        """``r2`` with each descriptor labelled with its unit, for display."""
        return self.r2.rename(index=descriptor_label).rename_axis("descriptor (R^2 on the test instruments)")

    @property
    def metrics(self) -> dict:
        """What ``latent_map.json`` holds under ``descriptors``."""
        return {"r2": {name: {feats: float(v) for feats, v in row.items()} for name, row in self.r2.iterrows()},
                "units": {name: UNITS[name] for name in self.r2.index},
                "grid": self.grid.metrics}


def describe_run(space: LatentSpace, features: Mapping[str, np.ndarray], run: TrainedRun, *,
                 grid_size: int = GRID_SIZE) -> DescriptorStudy:
    """The descriptors section of 04_latent_map in one call.

    Parameters
    ----------
    space : the run's embedding, with its PCA map (``map_latent_space`` first).
    features : the probes' feature sets (``probe_latent_space``): 'mu' and 'pca', one row per note.
    run : the trained run; its cache's notes are the embedding's, in the same order.

    Returns
    -------
    Descriptors of every note (from the cached log-mels), of the decoded grid over the PCA plane (a
    pitch-conditioned decoder gets ``analysis.interp_pitch``), and the R^2 of a ridge regression fitted on
    the train split and scored on the test split.
    """
    if "PCA" not in space.projections:
        raise ParameterError("space: no PCA map; call map_latent_space first")
    meta = run.cache.meta
    if len(meta) != len(space.table) or not np.array_equal(meta["note_str"].to_numpy(),
                                                           space.table["note_str"].to_numpy()):
        raise ParameterError(f"space: its {len(space.table)} notes are not the run cache's {len(meta)}, in order")
    cfg = run.cfg
    values = note_descriptors(run.cache.features, cfg=cfg.features)
    pitch = cfg.analysis.interp_pitch if cfg.model.pitch_conditioning else None
    grid = decode_grid(run.model, space.projections["PCA"], cfg=cfg.features, size=grid_size, pitch=pitch)
    r2 = descriptor_r2(features, values, fit_mask=space.is_train, eval_mask=space.is_test)
    return DescriptorStudy(values=values, grid=grid, r2=r2)
