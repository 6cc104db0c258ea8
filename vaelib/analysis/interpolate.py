"""Walks between two instruments in the latent space, and how continuous they sound on paper.

A pair 'a:b' whose sides are families ('keyboard:string') or instrument names
('keyboard_acoustic_004:string') becomes a pair of notes of two distinct instruments at the same pitch
and velocity; their mu vectors are joined by a linear or a spherical path, every point is decoded,
and the decoded path is measured: the largest step against the mean step, and how monotonically the
spectral centroid and bandwidth move from one end to the other.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import librosa
import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from vaelib.analysis.latent import decode_latents
from vaelib.config import NSYNTH_FAMILIES, FeatureConfig, interp_pair_sides
from vaelib.data.features import mel_frequencies, normalized_to_db
from vaelib.exceptions import ConfigError, ParameterError

__all__ = [
    "PATH_METHODS",
    "PairChoice",
    "lerp",
    "slerp",
    "latent_path",
    "choose_pairs",
    "step_ratio",
    "mel_centroid",
    "mel_bandwidth",
    "band_centroid",
    "band_bandwidth",
    "monotonicity",
    "path_measures",
    "summarize_paths",
    "interpolate_pairs",
]

PATH_METHODS = ("linear", "slerp")
# Only pairs whose end centroids differ by more than this (relative) have a direction to follow.
CENTROID_MIN_REL_DIFF = 0.2


@dataclass(frozen=True)
class PairChoice:
    """Two notes of distinct instruments at the same pitch and velocity, one per side of ``pair``.

    ``family_a`` and ``family_b`` are the instruments' families (a side may name the instrument itself);
    ``index_a`` and ``index_b`` are row positions in the metadata table given to ``choose_pairs``.
    """

    pair: str
    family_a: str
    family_b: str
    instrument_a: str
    instrument_b: str
    pitch: int
    velocity: int
    index_a: int
    index_b: int


def _positions(steps: int) -> np.ndarray:
    if steps < 2:
        raise ParameterError(f"steps: expected >= 2, got {steps}")
    return np.linspace(0.0, 1.0, steps)


def lerp(z0: np.ndarray, z1: np.ndarray, *, steps: int) -> np.ndarray:
    """Straight line from ``z0`` to ``z1`` [shape=(latent_dim,)], ends included: [shape=(steps, latent_dim)]."""
    t = _positions(steps)[:, None]
    path = (1.0 - t) * z0[None] + t * z1[None]
    path[0], path[-1] = z0, z1  # exact ends whatever the rounding
    return path.astype(np.float32)


def slerp(z0: np.ndarray, z1: np.ndarray, *, steps: int) -> np.ndarray:
    """Spherical path (White 2016, "Sampling Generative Networks", eq. 1): the great-circle arc between
    the directions, with the norm blended the same way; falls back to ``lerp`` for near-parallel ends.

    Returns
    -------
    [shape=(steps, latent_dim)], ``path[0] == z0`` and ``path[-1] == z1`` exactly.
    """
    n0, n1 = np.linalg.norm(z0), np.linalg.norm(z1)
    if n0 == 0 or n1 == 0:
        return lerp(z0, z1, steps=steps)
    omega = np.arccos(np.clip(np.dot(z0 / n0, z1 / n1), -1.0, 1.0))
    if np.sin(omega) < 1e-6:
        return lerp(z0, z1, steps=steps)
    t = _positions(steps)[:, None]
    path = (np.sin((1.0 - t) * omega) * z0[None] + np.sin(t * omega) * z1[None]) / np.sin(omega)
    path[0], path[-1] = z0, z1
    return path.astype(np.float32)


def latent_path(z0: np.ndarray, z1: np.ndarray, *, steps: int, method: str) -> np.ndarray:
    """``lerp`` or ``slerp`` by name (``PATH_METHODS``)."""
    z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    if z0.shape != z1.shape or z0.ndim != 1:
        raise ParameterError(f"z0, z1: expected two vectors of one length, got {z0.shape} and {z1.shape}")
    if method == "linear":
        return lerp(z0, z1, steps=steps)
    if method == "slerp":
        return slerp(z0, z1, steps=steps)
    raise ParameterError(f"method: expected one of {PATH_METHODS}, got {method!r}")


def choose_pairs(meta: pd.DataFrame, pairs: tuple[str, ...] | list[str], *, pitch: int, velocity: int,
                 prefer_split: str = "test") -> tuple[list[PairChoice], list[str]]:
    """For each pair 'a:b', two instruments sharing a note nearest ``pitch`` and ``velocity``.

    Each side is a family, whose instruments are all candidates, or an instrument_str, the only
    candidate (``vaelib.config.interp_pair_sides`` defines the syntax). Candidates are tried in name
    order, those of ``prefer_split`` first; among all pairs of distinct candidates the shared
    (pitch, velocity) closest to the target wins (pitch distance first), the first pair in that order
    on a tie.

    Returns
    -------
    choices : one ``PairChoice`` per pair that could be formed.
    skipped : a sentence for every pair that could not (a family absent from ``meta``, no shared note).

    Raises
    ------
    ParameterError
        A pair that is not 'a:b', or a side naming an instrument that ``meta`` does not hold (the
        message names it, with the closest names of ``meta``).
    """
    choices, skipped = [], []
    for pair in pairs:
        try:
            side_a, side_b = interp_pair_sides(pair, where="pairs")
        except ConfigError as exc:
            raise ParameterError(str(exc)) from None
        cands_a, cands_b = (_candidates(meta, side, pair, prefer_split) for side in (side_a, side_b))
        best = None
        for inst_a in cands_a:
            notes_a = _notes(meta, inst_a)
            for inst_b in cands_b:
                if inst_b == inst_a:
                    continue
                shared = notes_a.keys() & _notes(meta, inst_b).keys()
                for pv in shared:
                    cost = (abs(pv[0] - pitch), abs(pv[1] - velocity))
                    if best is None or cost < best[0]:
                        best = (cost, inst_a, inst_b, pv)
        if best is None:
            absent = [s for s, c in ((side_a, cands_a), (side_b, cands_b)) if not c]
            why = (f"no instrument of family {' or '.join(map(repr, absent))} in the notes" if absent
                   else "no two distinct instruments of its sides share a pitch and velocity")
            skipped.append(f"{pair}: {why}")
            continue
        _, inst_a, inst_b, (p, v) = best
        index_a, index_b = _notes(meta, inst_a)[(p, v)], _notes(meta, inst_b)[(p, v)]
        family = meta["instrument_family_str"].to_numpy()
        choices.append(PairChoice(pair, str(family[index_a]), str(family[index_b]), inst_a, inst_b, int(p), int(v),
                                  index_a, index_b))
    return choices, skipped


def _candidates(meta: pd.DataFrame, side: str, pair: str, prefer_split: str) -> list[str]:
    """The instruments a side of ``pair`` stands for: a family's, in ``_instruments`` order, or the one named."""
    if side in NSYNTH_FAMILIES:
        return _instruments(meta, side, prefer_split)
    names = meta["instrument_str"].unique()
    if side in set(names):
        return [side]
    close = difflib.get_close_matches(side, [str(n) for n in names], n=3)
    hint = f"; the closest: {', '.join(map(repr, close))}" if close else ""
    raise ParameterError(f"pairs: {pair!r}: no instrument {side!r} among the {len(names)} instruments of the "
                         f"notes{hint}")


def _instruments(meta: pd.DataFrame, family: str, prefer_split: str) -> list[str]:
    rows = meta.loc[meta["instrument_family_str"] == family, ["instrument_str", "split"]].drop_duplicates()
    rows = rows.assign(rank=(rows["split"] != prefer_split).astype(int)).sort_values(["rank", "instrument_str"])
    return list(dict.fromkeys(rows["instrument_str"]))


def _notes(meta: pd.DataFrame, instrument: str) -> dict[tuple[int, int], int]:
    """(pitch, velocity) -> row position of the instrument's first such note."""
    positions = np.flatnonzero(meta["instrument_str"].to_numpy() == instrument)
    out: dict[tuple[int, int], int] = {}
    for pos, p, v in zip(positions, meta["pitch"].to_numpy()[positions], meta["velocity"].to_numpy()[positions]):
        out.setdefault((int(p), int(v)), int(pos))
    return out


def step_ratio(x_path: np.ndarray) -> float:
    """Largest over mean Euclidean step between consecutive decoded spectrograms (1 = even steps).

    Parameters
    ----------
    x_path : [shape=(steps, ...)] decoded spectrograms along a path, steps >= 2.

    Returns
    -------
    max_i ||x_{i+1} - x_i|| / mean_i ||x_{i+1} - x_i||; NaN when the path does not move.
    """
    x = np.asarray(x_path, np.float64).reshape(len(x_path), -1)
    if len(x) < 2:
        raise ParameterError(f"x_path: expected >= 2 steps, got {len(x)}")
    steps = np.linalg.norm(np.diff(x, axis=0), axis=1)
    mean = steps.mean()
    return float(steps.max() / mean) if mean > 0 else float("nan")


def _band_power(x: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Power per mel band summed over frames, [shape=(notes, n_mels)]."""
    x = np.asarray(x, np.float32).reshape(-1, cfg.n_mels, cfg.frames)
    return librosa.db_to_power(normalized_to_db(x, cfg=cfg)).sum(axis=2)


def mel_centroid(x: np.ndarray, *, cfg: FeatureConfig) -> np.ndarray:
    """Spectral centroid from a normalised log-mel: the power-weighted mean of the mel band centres.

    Parameters
    ----------
    x : [shape=(notes, 1, n_mels, frames)] or [shape=(notes, n_mels, frames)]

    Returns
    -------
    [shape=(notes,)] Hz
    """
    return band_centroid(_band_power(x, cfg), cfg=cfg)


def mel_bandwidth(x: np.ndarray, *, cfg: FeatureConfig) -> np.ndarray:
    """Spectral bandwidth from a normalised log-mel: the power-weighted std of the band centres, [shape=(notes,)] Hz."""
    return band_bandwidth(_band_power(x, cfg), cfg=cfg)


def band_centroid(power: np.ndarray, *, cfg: FeatureConfig) -> np.ndarray:
    """:func:`mel_centroid` from the power per mel band summed over frames, [shape=(notes, n_mels)]."""
    return power @ mel_frequencies(cfg) / power.sum(axis=1)


def band_bandwidth(power: np.ndarray, *, cfg: FeatureConfig) -> np.ndarray:
    """:func:`mel_bandwidth` from the power per mel band summed over frames, [shape=(notes, n_mels)]."""
    freqs = mel_frequencies(cfg)
    weights = power / power.sum(axis=1, keepdims=True)
    centroid = weights @ freqs
    return np.sqrt(np.sum(weights * (freqs[None] - centroid[:, None]) ** 2, axis=1))


def monotonicity(values: np.ndarray) -> float:
    """Spearman correlation of a descriptor with the position along the path (+-1: monotonic; NaN: constant)."""
    values = np.asarray(values, np.float64)
    if len(values) < 3:
        raise ParameterError(f"values: expected >= 3 points, got {len(values)}")
    if np.ptp(values) == 0:
        return float("nan")
    return float(spearmanr(np.arange(len(values)), values).statistic)


def path_measures(x_path: np.ndarray, *, cfg: FeatureConfig) -> dict:
    """Continuity measures of one decoded path [shape=(steps, 1, n_mels, frames)].

    Returns
    -------
    ``step_ratio``, ``centroid_spearman``, ``bandwidth_spearman``, ``centroid_start_hz``,
    ``centroid_end_hz``, ``centroid_rel_diff`` (|end - start| / min(start, end)), ``centroids_hz``
    and ``bandwidths_hz`` (per step).
    """
    centroids = mel_centroid(x_path, cfg=cfg)
    bandwidths = mel_bandwidth(x_path, cfg=cfg)
    c0, c1 = float(centroids[0]), float(centroids[-1])
    return {
        "step_ratio": step_ratio(x_path),
        "centroid_spearman": monotonicity(centroids),
        "bandwidth_spearman": monotonicity(bandwidths),
        "centroid_start_hz": c0, "centroid_end_hz": c1,
        "centroid_rel_diff": abs(c1 - c0) / min(c0, c1),
        "centroids_hz": [float(c) for c in centroids],
        "bandwidths_hz": [float(b) for b in bandwidths],
    }


def summarize_paths(rows: pd.DataFrame, *, min_rel_diff: float = CENTROID_MIN_REL_DIFF) -> dict:
    """Medians over paths (rows of ``path_measures`` plus ``method``).

    The step ratio is taken over every path; the |Spearman| of the centroid (and bandwidth) only
    over paths whose end centroids differ by more than ``min_rel_diff``, since between two notes
    of one brightness there is no direction to follow.

    Returns
    -------
    ``interp_step_ratio_median``, ``interp_centroid_spearman_median``,
    ``interp_bandwidth_spearman_median``, ``interp_n_paths``, ``interp_n_centroid_eligible``,
    and the same medians per method under ``interp_by_method``.
    """
    def medians(df: pd.DataFrame) -> dict:
        eligible = df[df["centroid_rel_diff"] > min_rel_diff]
        return {
            "interp_step_ratio_median": _median(df["step_ratio"]),
            "interp_centroid_spearman_median": _median(eligible["centroid_spearman"].abs()),
            "interp_bandwidth_spearman_median": _median(eligible["bandwidth_spearman"].abs()),
            "interp_n_paths": int(len(df)),
            "interp_n_centroid_eligible": int(len(eligible)),
        }

    out = medians(rows)
    out["interp_centroid_min_rel_diff"] = min_rel_diff
    out["interp_by_method"] = {m: medians(g) for m, g in rows.groupby("method", sort=True)}
    return out


def _median(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(values.median()) if len(values) else None


def interpolate_pairs(model: torch.nn.Module, mu: np.ndarray, choices: list[PairChoice], *, cfg: FeatureConfig,
                      steps: int, pitch_conditioning: bool, methods: tuple[str, ...] = PATH_METHODS,
                      device: str = "cpu") -> tuple[pd.DataFrame, dict[tuple[str, str], dict]]:
    """Walk, decode and measure every chosen pair by every method.

    Parameters
    ----------
    mu : [shape=(notes, latent_dim)] posterior means of the notes ``choices`` index into.
    pitch_conditioning : give the decoder the pair's shared pitch at every step.

    Returns
    -------
    rows : one row per (pair, method): the ``PairChoice`` fields, ``method`` and ``path_measures``.
    paths : (pair, method) -> ``{"z": [shape=(steps, latent_dim)], "x": [shape=(steps, 1, n_mels, frames)]}``.
    """
    rows, paths = [], {}
    for choice in choices:
        pitch = np.full(steps, choice.pitch, np.int64) if pitch_conditioning else None
        for method in methods:
            z = latent_path(mu[choice.index_a], mu[choice.index_b], steps=steps, method=method)
            x = decode_latents(model, z, pitch=pitch, device=device)
            paths[(choice.pair, method)] = {"z": z, "x": x}
            rows.append({**choice.__dict__, "method": method, **path_measures(x, cfg=cfg)})
    return pd.DataFrame(rows), paths
