"""The live explorer's computations: each move of a widget is one call here, arrays and config in, a
decoded spectrogram with its audio and what it is out.

An *update* is one latent vector decoded and its spectrogram turned into audio. It must answer within
a second on a small CPU, so the mel power is mapped back to a linear spectrogram by the pseudo-inverse
of the mel filterbank (clipped at 0) instead of librosa's NNLS solve, which costs several times the rest
of the update for the same round-trip error, then ``n_iter`` Griffin-Lim iterations
(``DEFAULT_GL_ITERS``; measured in ``benchmarks/bench_explore.py``, figures in docs/explore.md).

What can be explored (the four panels of ``vaelib.report.explorer``):

- a path between the posterior means of two notes, linear or spherical, at any position;
- the principal axes of mu over the run's notes, and single latent dimensions, around a note;
- samples from the prior N(0, I), or around a note: ``mu + s * sigma * eps``;
- a sound file of one's own: encoded, placed on the map, reconstructed.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from vaelib.analysis.encode import Sound, encode_sounds, nearest_notes, read_sound
from vaelib.analysis.interpolate import PATH_METHODS
from vaelib.analysis.latent import decode_latents, encode_features
from vaelib.config import Config, FeatureConfig
from vaelib.data.features import inverse_log_mel
from vaelib.exceptions import ParameterError

__all__ = [
    "DEFAULT_GL_ITERS",
    "DECODE_THREADS",
    "AXIS_KINDS",
    "PATH_METHODS",
    "Decoded",
    "ExploreSpace",
    "Placed",
    "explore_space",
    "run_space",
    "fast_inversion",
    "find_note",
    "note_label",
    "path_point",
    "decode_point",
    "path_update",
    "decode_path",
    "axis_point",
    "axis_update",
    "axis_traversal",
    "prior_point",
    "around_point",
    "sample_update",
    "place_sound",
    "measure_latency",
    "wav_bytes",
    "note_wav",
    "default_notes",
    "sound_for_report",
    "ExploreViews",
    "explore_views",
    "explore_metrics",
]

# Griffin-Lim iterations of one explorer update: the most that keep an update of the default model well
# under a second on a 2-core CPU; more cost time and change the round trip little (docs/explore.md).
DEFAULT_GL_ITERS = 32
# torch CPU threads of an update's decode: one latent vector is too little work to share, and threads that
# share it wait on each other when the cores are busy (docs/explore.md has the measurement)
DECODE_THREADS = 1
AXIS_KINDS = ("principal", "dimension")  # along a principal axis of mu, or along one latent dimension


@dataclass(frozen=True)
class Decoded:
    """One update: a latent vector, its decoded spectrogram and the audio of that spectrogram.

    z : [shape=(latent_dim,)]; x : [shape=(1, n_mels, frames)] normalised log-mel;
    audio : [shape=(frames * hop_length,)] float32 at ``sample_rate``, peak 0.9;
    info : what was decoded (kind, notes, position, ...), for the widget's caption and the report;
    seconds : ``decode`` and ``inversion`` (Griffin-Lim) wall times of this update.
    """

    z: np.ndarray
    x: np.ndarray
    audio: np.ndarray
    sample_rate: int
    info: dict
    seconds: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ExploreSpace:
    """What the explorer works on: the run's notes, their posterior, and the principal axes of mu.

    meta : one row per note, positions 0..notes-1 (the feature cache's order);
    mu, logvar : [shape=(notes, latent_dim)];
    axes : [shape=(k, latent_dim)] unit principal directions of mu over the notes, by variance;
    axis_std : [shape=(k,)] standard deviation of mu along each; explained : [shape=(k,)] variance ratios;
    mu_mean : [shape=(latent_dim,)]; coords : [shape=(notes, 2)] the notes on the first two axes (the map);
    dim_std : [shape=(latent_dim,)] standard deviation of each latent dimension of mu over the notes;
    features : the run's FeatureConfig; pitch_conditioning : whether the decoder is given the pitch.
    """

    meta: pd.DataFrame
    mu: np.ndarray
    logvar: np.ndarray
    axes: np.ndarray
    axis_std: np.ndarray
    explained: np.ndarray
    mu_mean: np.ndarray
    coords: np.ndarray
    dim_std: np.ndarray
    features: FeatureConfig
    pitch_conditioning: bool

    @property
    def latent_dim(self) -> int:
        return int(self.mu.shape[1])

    def instruments(self) -> list[str]:
        """Every instrument of the run, in name order."""
        return sorted(self.meta["instrument_str"].unique().tolist())

    def pitches(self, instrument: str | None = None) -> list[int]:
        """The pitches of one instrument's notes (all notes' when None), ascending."""
        rows = self.meta if instrument is None else self.meta[self.meta["instrument_str"] == instrument]
        return sorted(int(p) for p in rows["pitch"].unique())

    def to_map(self, z: np.ndarray) -> np.ndarray:
        """Map coordinates of latent vectors [shape=(n, latent_dim)] -> [shape=(n, 2)]."""
        z = np.atleast_2d(np.asarray(z, np.float64))
        return ((z - self.mu_mean) @ self.axes[:2].T).astype(np.float32)


@dataclass(frozen=True)
class Placed:
    """A sound of one's own on the run's map: its features, posterior, map point and reconstruction.

    x : [shape=(1, n_mels, frames)] its log-mel; mu, logvar : [shape=(latent_dim,)];
    point : [shape=(2,)] on the map of ``ExploreSpace.coords``;
    nearest : the run's notes nearest in mu (row positions, note names, Euclidean distances);
    reconstruction : decode(mu) with its audio.
    """

    sound: Sound
    x: np.ndarray
    mu: np.ndarray
    logvar: np.ndarray
    point: np.ndarray
    nearest: pd.DataFrame
    reconstruction: Decoded


def explore_space(model: torch.nn.Module, features: np.ndarray, meta: pd.DataFrame, *, cfg: FeatureConfig,
                  pitch_conditioning: bool = False, device: str = "cpu") -> ExploreSpace:
    """Encode every note of a run and find the principal axes of mu.

    Parameters
    ----------
    features : [shape=(notes, 1, n_mels, frames)] the run's cached features; meta : their rows, same order.
    cfg : the run's features (for the audio and the figures).
    pitch_conditioning : the decoder is given the MIDI pitch (``model.pitch_conditioning``).

    Raises
    ------
    ParameterError
        When there are fewer than 3 notes, or ``meta`` and ``features`` differ in length.
    """
    if len(meta) != len(features):
        raise ParameterError(f"meta: {len(meta)} rows for {len(features)} notes")
    if len(meta) < 3:
        raise ParameterError(f"features: at least 3 notes are needed for the principal axes, got {len(meta)}")
    mu, logvar = encode_features(model, features, device=device)
    mean = mu.mean(axis=0).astype(np.float64)
    # SVD of the centred notes: rows of vt are the principal directions, by decreasing variance
    _, s, vt = np.linalg.svd(mu.astype(np.float64) - mean, full_matrices=False)
    variance = s ** 2 / (len(mu) - 1)
    k = int(min(len(mu) - 1, mu.shape[1]))
    vt = _oriented(vt[:k])
    total = float(variance.sum()) or 1.0
    coords = ((mu - mean) @ vt[:2].T).astype(np.float32)
    return ExploreSpace(meta=meta.reset_index(drop=True), mu=mu, logvar=logvar, axes=vt.astype(np.float32),
                        axis_std=np.sqrt(variance[:k]).astype(np.float32),
                        explained=(variance[:k] / total).astype(np.float32), mu_mean=mean.astype(np.float32),
                        coords=coords, dim_std=mu.std(axis=0, ddof=1).astype(np.float32), features=cfg,
                        pitch_conditioning=pitch_conditioning)


def run_space(run) -> ExploreSpace:
    """:func:`explore_space` of a ``vaelib.analysis.run.TrainedRun``: every note of its feature cache."""
    return explore_space(run.model, run.cache.features, run.cache.meta, cfg=run.cfg.features,
                         pitch_conditioning=run.cfg.model.pitch_conditioning)


def _oriented(vt: np.ndarray) -> np.ndarray:
    """Principal directions with a fixed sign (largest component positive), so a rerun draws the same map."""
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
    return vt * np.where(signs == 0, 1.0, signs)[:, None]


def fast_inversion(x: np.ndarray, *, cfg: FeatureConfig, n_iter: int = DEFAULT_GL_ITERS, seed: int = 0) -> np.ndarray:
    """Audio of one normalised log-mel, fast enough for an interactive update.

    dB -> power mel -> linear power by the filterbank's pseudo-inverse, clipped at 0 (as faithful as
    librosa's NNLS solve where the note is, at a fraction of its cost: docs/explore.md) -> magnitude
    -> ``n_iter`` iterations of fast Griffin-Lim (Perraudin et al. 2013, librosa's momentum 0.99).

    Parameters
    ----------
    x : [shape=(1, n_mels, frames) or (n_mels, frames)] normalised log-mel in [-1, 1].
    n_iter : Griffin-Lim iterations, >= 1 (``DEFAULT_GL_ITERS``: the explorer's tuned count).
    seed : seeds the random initial phase, so an update is reproducible.

    Returns
    -------
    [shape=(frames * hop_length,)] float32 at ``cfg.sample_rate``, peak-normalised to 0.9 (silence stays 0).
    """
    if n_iter < 1:
        raise ParameterError(f"n_iter: expected >= 1, got {n_iter}")
    return inverse_log_mel(x, cfg=cfg, n_iter=n_iter, seed=seed, mel_inverse="pinv")


def wav_bytes(audio: np.ndarray, *, sample_rate: int) -> bytes:
    """A mono waveform as the bytes of a 16-bit PCM wav file (for an audio widget or a download)."""
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1 or not np.all(np.isfinite(audio)):
        raise ParameterError(f"audio: expected a finite 1-D waveform, got shape {audio.shape}")
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


# ----------------------------------------------------------------------------- notes

def find_note(meta: pd.DataFrame, *, instrument: str, pitch: int, velocity: int | None = None) -> int:
    """Row position of ``instrument``'s note nearest ``pitch`` (then nearest ``velocity``, loudest when None;
    the first row on a tie).

    Raises
    ------
    ParameterError
        When the instrument has no note.
    """
    rows = np.flatnonzero(meta["instrument_str"].to_numpy() == instrument)
    if rows.size == 0:
        raise ParameterError(f"instrument: {instrument!r} has no note in this run")
    pitches = meta["pitch"].to_numpy()[rows].astype(int)
    velocities = meta["velocity"].to_numpy()[rows].astype(int)
    v_cost = -velocities if velocity is None else np.abs(velocities - velocity)
    order = np.lexsort((rows, v_cost, np.abs(pitches - int(pitch))))  # last key first
    return int(rows[order[0]])


def default_notes(space: ExploreSpace, *, instrument_a: str = "", instrument_b: str = "",
                  pitch: int = 60) -> tuple[int, int]:
    """The two notes a path starts between: each instrument's note nearest ``pitch`` (loudest velocity).

    instrument_a '' : the first instrument by name; instrument_b '' : the first (by name) of another family
    than A's, or the next instrument when the run has one family.

    Returns
    -------
    Row positions of ``space.meta`` (A, B).
    """
    meta = space.meta
    names = space.instruments()
    a = instrument_a or names[0]
    note_a = find_note(meta, instrument=a, pitch=pitch)
    b = instrument_b
    if not b:
        family = meta["instrument_family_str"].iloc[note_a]
        others = sorted(meta.loc[meta["instrument_family_str"] != family, "instrument_str"].unique().tolist())
        b = others[0] if others else next((n for n in names if n != a), a)
    return note_a, find_note(meta, instrument=b, pitch=pitch)


def note_label(meta: pd.DataFrame, index: int) -> str:
    """``instrument, pitch P, velocity V`` of row ``index``, for captions."""
    row = meta.iloc[index]
    return f"{row['instrument_str']}, pitch {int(row['pitch'])}, velocity {int(row['velocity'])}"


# ----------------------------------------------------------------------------- paths

def path_point(z0: np.ndarray, z1: np.ndarray, t: float, *, method: str) -> np.ndarray:
    """The point at position ``t`` in [0, 1] of the linear or spherical path from ``z0`` to ``z1``.

    The same paths as :func:`vaelib.analysis.interpolate.latent_path` (spherical: White 2016, eq. 1, with
    the linear path for near-parallel ends), at any position; ``t`` = 0 and 1 give the ends exactly.

    Returns
    -------
    [shape=(latent_dim,)] float32.
    """
    z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    if z0.shape != z1.shape or z0.ndim != 1:
        raise ParameterError(f"z0, z1: expected two vectors of one length, got {z0.shape} and {z1.shape}")
    if not 0.0 <= t <= 1.0:
        raise ParameterError(f"t: expected a position in [0, 1], got {t}")
    if method not in PATH_METHODS:
        raise ParameterError(f"method: expected one of {PATH_METHODS}, got {method!r}")
    if t == 0.0:
        return z0.astype(np.float32)
    if t == 1.0:
        return z1.astype(np.float32)
    n0, n1 = np.linalg.norm(z0), np.linalg.norm(z1)
    if method == "slerp" and n0 > 0 and n1 > 0:
        omega = np.arccos(np.clip(np.dot(z0 / n0, z1 / n1), -1.0, 1.0))
        if np.sin(omega) >= 1e-6:
            return ((np.sin((1.0 - t) * omega) * z0 + np.sin(t * omega) * z1) / np.sin(omega)).astype(np.float32)
    return ((1.0 - t) * z0 + t * z1).astype(np.float32)


@contextlib.contextmanager
def _torch_threads(n: int):
    """torch's CPU threads set to ``n`` for the block (0: left as they are), then restored."""
    old = torch.get_num_threads()
    if n and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def decode_point(model: torch.nn.Module, z: np.ndarray, *, cfg: FeatureConfig, pitch: int | None = None,
                 n_iter: int = DEFAULT_GL_ITERS, seed: int = 0, info: dict | None = None, device: str = "cpu",
                 threads: int = DECODE_THREADS) -> Decoded:
    """One update: decode ``z`` [shape=(latent_dim,)] and turn the spectrogram into audio (:func:`fast_inversion`).

    Parameters
    ----------
    pitch : MIDI pitch given to a pitch-conditioned decoder (None for an unconditioned one).
    info : carried into ``Decoded.info``.
    threads : torch CPU threads of the decode (``DECODE_THREADS``; 0 keeps torch's setting), restored after.
    """
    z = np.asarray(z, np.float32)
    if z.ndim != 1:
        raise ParameterError(f"z: expected one latent vector of shape (latent_dim,), got {z.shape}")
    t0 = time.perf_counter()
    with _torch_threads(threads):
        x = decode_latents(model, z[None], pitch=None if pitch is None else np.array([pitch]), device=device)[0]
    t1 = time.perf_counter()
    audio = fast_inversion(x, cfg=cfg, n_iter=n_iter, seed=seed)
    t2 = time.perf_counter()
    return Decoded(z=z, x=x, audio=audio, sample_rate=cfg.sample_rate, info=dict(info or {}),
                   seconds={"decode": t1 - t0, "inversion": t2 - t1})


def _decoder_pitch(space: ExploreSpace, pitch: int | None) -> int | None:
    if not space.pitch_conditioning:
        return None
    if pitch is None:
        raise ParameterError("pitch: the decoder is pitch-conditioned, a MIDI pitch is needed")
    return int(pitch)


def path_update(model: torch.nn.Module, space: ExploreSpace, *, note_a: int, note_b: int, t: float,
                method: str, pitch: int | None = None, n_iter: int = DEFAULT_GL_ITERS, seed: int = 0) -> Decoded:
    """The point at ``t`` of the path between the posterior means of notes ``note_a`` and ``note_b``
    (row positions of ``space.meta``), decoded with its audio.

    pitch : for a pitch-conditioned decoder (default: note A's pitch).
    """
    z = path_point(space.mu[note_a], space.mu[note_b], t, method=method)
    if pitch is None and space.pitch_conditioning:
        pitch = int(space.meta["pitch"].iloc[note_a])
    info = {"kind": "path", "method": method, "t": float(t), "note_a": note_label(space.meta, note_a),
            "note_b": note_label(space.meta, note_b)}
    return decode_point(model, z, cfg=space.features, pitch=_decoder_pitch(space, pitch), n_iter=n_iter, seed=seed,
                        info=info)


def decode_path(model: torch.nn.Module, space: ExploreSpace, *, note_a: int, note_b: int, steps: int,
                method: str, pitch: int | None = None, n_iter: int = DEFAULT_GL_ITERS,
                seed: int = 0) -> list[Decoded]:
    """``steps`` evenly spaced updates along a path, ends included (the report's static path)."""
    if steps < 2:
        raise ParameterError(f"steps: expected >= 2, got {steps}")
    return [path_update(model, space, note_a=note_a, note_b=note_b, t=float(t), method=method, pitch=pitch,
                        n_iter=n_iter, seed=seed) for t in np.linspace(0.0, 1.0, steps)]


# ----------------------------------------------------------------------------- axes

def axis_point(space: ExploreSpace, *, note: int, axis: int, amount: float, kind: str) -> np.ndarray:
    """A note's mu moved along one axis by ``amount`` standard deviations of the run's notes along it.

    Parameters
    ----------
    kind : 'principal' (axis k of the PCA of mu; ``space.axis_std[k]`` per unit) or 'dimension'
        (latent dimension k; ``space.dim_std[k]`` per unit).

    Returns
    -------
    [shape=(latent_dim,)] float32.
    """
    if kind == "principal":
        if not 0 <= axis < len(space.axes):
            raise ParameterError(f"axis: principal axes 0..{len(space.axes) - 1}, got {axis}")
        step = space.axes[axis] * space.axis_std[axis]
    elif kind == "dimension":
        if not 0 <= axis < space.latent_dim:
            raise ParameterError(f"axis: latent dimensions 0..{space.latent_dim - 1}, got {axis}")
        step = np.zeros(space.latent_dim, np.float32)
        step[axis] = space.dim_std[axis]
    else:
        raise ParameterError(f"kind: expected one of {AXIS_KINDS}, got {kind!r}")
    return (space.mu[note] + float(amount) * step).astype(np.float32)


def axis_update(model: torch.nn.Module, space: ExploreSpace, *, note: int, axis: int, amount: float, kind: str,
                n_iter: int = DEFAULT_GL_ITERS, seed: int = 0) -> Decoded:
    """:func:`axis_point` decoded with its audio (a pitch-conditioned decoder gets the note's pitch)."""
    z = axis_point(space, note=note, axis=axis, amount=amount, kind=kind)
    info = {"kind": "axis", "axis_kind": kind, "axis": int(axis), "amount": float(amount),
            "note": note_label(space.meta, note)}
    pitch = int(space.meta["pitch"].iloc[note])
    return decode_point(model, z, cfg=space.features, pitch=_decoder_pitch(space, pitch), n_iter=n_iter, seed=seed,
                        info=info)


def axis_traversal(model: torch.nn.Module, space: ExploreSpace, *, note: int, axes: list[int] | tuple[int, ...],
                   amounts: list[float] | tuple[float, ...] | np.ndarray, kind: str = "principal") -> np.ndarray:
    """Decoded spectrograms along several axes around one note (no audio: the report's figure).

    Returns
    -------
    [shape=(len(axes), len(amounts), 1, n_mels, frames)] normalised log-mel.
    """
    z = np.stack([axis_point(space, note=note, axis=a, amount=float(s), kind=kind) for a in axes for s in amounts])
    pitch = None
    if space.pitch_conditioning:
        pitch = np.full(len(z), int(space.meta["pitch"].iloc[note]), np.int64)
    x = decode_latents(model, z, pitch=pitch)
    return x.reshape(len(axes), len(amounts), *x.shape[1:])


# ----------------------------------------------------------------------------- samples

def prior_point(latent_dim: int, *, seed: int) -> np.ndarray:
    """A draw from the prior N(0, I), [shape=(latent_dim,)] float32, from ``np.random.default_rng(seed)``."""
    if latent_dim < 1:
        raise ParameterError(f"latent_dim: expected >= 1, got {latent_dim}")
    return np.random.default_rng(seed).standard_normal(latent_dim).astype(np.float32)


def around_point(mu: np.ndarray, logvar: np.ndarray, *, scale: float, seed: int) -> np.ndarray:
    """A draw around a note: ``mu + scale * sigma * eps``, eps ~ N(0, I) from ``np.random.default_rng(seed)``.

    ``scale`` 1 samples the note's posterior q(z|x), 0 gives mu itself.
    """
    mu, logvar = np.asarray(mu, np.float32), np.asarray(logvar, np.float32)
    if mu.shape != logvar.shape or mu.ndim != 1:
        raise ParameterError(f"mu, logvar: expected two vectors of one length, got {mu.shape} and {logvar.shape}")
    if scale < 0:
        raise ParameterError(f"scale: expected >= 0, got {scale}")
    eps = np.random.default_rng(seed).standard_normal(mu.shape[0]).astype(np.float32)
    return (mu + float(scale) * np.exp(0.5 * logvar) * eps).astype(np.float32)


def sample_update(model: torch.nn.Module, space: ExploreSpace, *, note: int | None, scale: float = 1.0,
                  seed: int = 0, pitch: int | None = None, n_iter: int = DEFAULT_GL_ITERS) -> Decoded:
    """A prior sample (``note`` None) or a sample around note ``note``, decoded with its audio.

    pitch : for a pitch-conditioned decoder (default: the note's pitch; required for a prior sample).
    """
    if note is None:
        z = prior_point(space.latent_dim, seed=seed)
        info = {"kind": "prior", "seed": int(seed)}
    else:
        z = around_point(space.mu[note], space.logvar[note], scale=scale, seed=seed)
        info = {"kind": "around", "seed": int(seed), "scale": float(scale), "note": note_label(space.meta, note)}
        if pitch is None and space.pitch_conditioning:
            pitch = int(space.meta["pitch"].iloc[note])
    return decode_point(model, z, cfg=space.features, pitch=_decoder_pitch(space, pitch), n_iter=n_iter, seed=seed,
                        info=info)


# ----------------------------------------------------------------------------- a sound of one's own

def place_sound(model: torch.nn.Module, space: ExploreSpace, source: str | bytes, *, name: str | None = None,
                pitch: int | None = None, n_nearest: int = 5, n_iter: int = DEFAULT_GL_ITERS,
                seed: int = 0) -> Placed:
    """Encode a sound file (a path, or the bytes of an upload), place it on the map, reconstruct it.

    The file is brought to the run's features by :func:`vaelib.analysis.encode.read_sound`.

    Parameters
    ----------
    pitch : for a pitch-conditioned decoder, the sound's MIDI pitch (a file carries none).
    n_nearest : how many of the run's notes nearest in mu to list.

    Raises
    ------
    DataError
        When the file cannot be placed (unreadable, silent, shorter than one STFT frame), naming it.
    """
    sound = read_sound(source, cfg=space.features, name=name)
    x, mu, logvar = encode_sounds(model, [sound], cfg=space.features)
    rows, distances = nearest_notes(space.mu, mu, k=min(n_nearest, len(space.mu)))
    nearest = pd.DataFrame({"row": rows[0], "note_str": space.meta["note_str"].to_numpy()[rows[0]],
                            "distance": distances[0]})
    reconstruction = decode_point(model, mu[0], cfg=space.features, pitch=_decoder_pitch(space, pitch),
                                  n_iter=n_iter, seed=seed, info={"kind": "sound", "file": sound.name})
    return Placed(sound=sound, x=x[0], mu=mu[0], logvar=logvar[0], point=space.to_map(mu[0])[0], nearest=nearest,
                  reconstruction=reconstruction)


# ----------------------------------------------------------------------------- latency

def measure_latency(model: torch.nn.Module, space: ExploreSpace, *, repeats: int = 5,
                    n_iter: int = DEFAULT_GL_ITERS, seed: int = 0) -> dict:
    """Wall times of ``repeats`` path updates (each at a new position), after one warm-up update.

    Returns
    -------
    ``explore_update_seconds_median``, ``explore_update_seconds_max``, ``explore_decode_seconds_median``,
    ``explore_inversion_seconds_median``, ``explore_gl_iters``, ``explore_update_repeats``.
    """
    if repeats < 1:
        raise ParameterError(f"repeats: expected >= 1, got {repeats}")
    a, b = 0, len(space.meta) - 1
    path_update(model, space, note_a=a, note_b=b, t=0.5, method="slerp", n_iter=n_iter, seed=seed)  # warm-up
    times = [path_update(model, space, note_a=a, note_b=b, t=float(t), method="slerp", n_iter=n_iter,
                         seed=seed).seconds for t in np.linspace(0.1, 0.9, repeats)]
    decode = np.array([s["decode"] for s in times])
    inversion = np.array([s["inversion"] for s in times])
    total = decode + inversion
    return {"explore_update_seconds_median": float(np.median(total)), "explore_update_seconds_max": float(total.max()),
            "explore_decode_seconds_median": float(np.median(decode)),
            "explore_inversion_seconds_median": float(np.median(inversion)),
            "explore_gl_iters": int(n_iter), "explore_update_repeats": int(repeats)}


# ----------------------------------------------------------------------------- 06's report

def note_wav(cfg: Config, note_str: str) -> Path:
    """The wav file of one of the run's notes (its dataset, ``cfg.data.root``).

    Raises
    ------
    ParameterError
        When the run's dataset has no such note.
    """
    from vaelib.data.nsynth import load_dataset

    df = load_dataset(cfg.data, seed=cfg.run.seed)
    rows = df.loc[df["note_str"] == note_str, "path"]
    if rows.empty:
        raise ParameterError(f"note_str: {note_str!r} is not a note of {cfg.data.root}")
    return Path(rows.iloc[0])


def sound_for_report(cfg: Config, space: ExploreSpace, *, note: int, sound_file: str = "") -> Path:
    """The sound file 06's report places on the map: ``sound_file``, or the wav of row ``note`` when ''."""
    if sound_file:
        return Path(sound_file)
    return note_wav(cfg, str(space.meta["note_str"].iloc[note]))


@dataclass(frozen=True)
class ExploreViews:
    """One state of every panel, for the report that papermill writes (the widgets need a frontend).

    path : the updates at ``steps`` positions of the path between notes ``note_a`` and ``note_b``;
    prior, around : a prior sample and a sample around note A (s = 1);
    traversal : [shape=(axes, amounts, 1, n_mels, frames)] around note A along the first principal axes,
    with ``traversal_labels`` and ``amounts``; placed : the sound file placed on the map;
    latency : :func:`measure_latency`.
    """

    note_a: int
    note_b: int
    path: list[Decoded]
    prior: Decoded
    around: Decoded
    traversal: np.ndarray
    traversal_labels: list[str]
    amounts: np.ndarray
    placed: Placed
    latency: dict

    def path_labels(self) -> list[str]:
        return [f"{d.info['method']} path, t = {d.info['t']:.2f}" for d in self.path]


TRAVERSAL_AMOUNTS = (-2.0, -1.0, 0.0, 1.0, 2.0)  # standard deviations of the run's notes along each axis
TRAVERSAL_AXES = 4  # principal axes in the report's figure


def explore_views(model: torch.nn.Module, space: ExploreSpace, *, note_a: int, note_b: int, sound: str | Path,
                  steps: int, method: str, n_iter: int = DEFAULT_GL_ITERS, seed: int = 0,
                  latency_repeats: int = 5) -> ExploreViews:
    """Every panel's view once: a decoded path, two samples, the axis traversal, a placed sound, the latency.

    Parameters
    ----------
    note_a, note_b : row positions of ``space.meta``; sound : a sound file to place on the map.
    steps : positions on the path, ends included.
    """
    path = decode_path(model, space, note_a=note_a, note_b=note_b, steps=steps, method=method, n_iter=n_iter,
                       seed=seed)
    prior = sample_update(model, space, note=None, seed=seed, n_iter=n_iter,
                          pitch=int(space.meta["pitch"].iloc[note_a]))
    around = sample_update(model, space, note=note_a, scale=1.0, seed=seed, n_iter=n_iter)
    axes = list(range(min(TRAVERSAL_AXES, len(space.axes))))
    amounts = np.array(TRAVERSAL_AMOUNTS)
    traversal = axis_traversal(model, space, note=note_a, axes=axes, amounts=amounts, kind="principal")
    labels = [f"PC{k + 1} ({100 * space.explained[k]:.0f}%)" for k in axes]
    placed = place_sound(model, space, str(sound), pitch=int(space.meta["pitch"].iloc[note_a]), n_iter=n_iter,
                         seed=seed)
    latency = measure_latency(model, space, repeats=latency_repeats, n_iter=n_iter, seed=seed)
    return ExploreViews(note_a=note_a, note_b=note_b, path=path, prior=prior, around=around, traversal=traversal,
                        traversal_labels=labels, amounts=amounts, placed=placed, latency=latency)


def explore_metrics(views: ExploreViews, space: ExploreSpace) -> dict:
    """What 06_explore writes to ``explore.json``: the latency of an update (decode and Griffin-Lim apart),
    the machine it was measured on, and what the report's views show. Every key starts with ``explore_``,
    since a run's metrics.json merges every notebook's keys."""
    from vaelib.model.device import machine_info

    machine = machine_info()
    nearest = views.placed.nearest
    return {
        **views.latency,
        "explore_cpu": machine["cpu"], "explore_cpu_count": machine["cpu_count"],
        "explore_torch_threads": machine["torch_threads"],
        "explore_path": {"note_a": note_label(space.meta, views.note_a), "note_b": note_label(space.meta, views.note_b),
                         "method": views.path[0].info["method"], "steps": len(views.path)},
        "explore_principal_explained": [float(v) for v in space.explained[:len(views.traversal_labels)]],
        "explore_sound": {"file": views.placed.sound.name, "point": [float(v) for v in views.placed.point],
                          "nearest_note": str(nearest["note_str"].iloc[0]),
                          "nearest_distance": float(nearest["distance"].iloc[0])},
        "explore_n_notes": int(len(space.meta)),
    }
