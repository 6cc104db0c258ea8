"""Spectrograms back to sound, an objective check of that path, and the sounds of 05_listening.

Audio comes from ``vaelib.data.features.inverse_log_mel`` (mel inversion, then Griffin-Lim). The
check inverts a log-mel to audio, computes the log-mel of the result again and reports the mean absolute
difference in dB: what the listener hears is only as faithful as this number.

``listen`` inverts a few test notes, their reconstructions and every interpolation path; ``listening_map``
gathers what the listening map page plays: a bounded set of notes (their recordings and reconstructions)
placed on the 2-D maps of mu, with the linear paths, as MP3 data URIs within a page size budget.
``placed_map`` gathers the same for sounds from outside the run (``vaelib encode``): each sound and the
run's note nearest it, placed on maps fitted on the run's notes.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import pandas as pd
import soundfile as sf

from vaelib.analysis.interpolate import PATH_METHODS, PairChoice
from vaelib.config import Config, FeatureConfig
from vaelib.data.features import GRIFFIN_LIM_BATCH, inverse_log_mels, log_mel, normalized_to_db
from vaelib.exceptions import DataError, ParameterError
from vaelib.io import atomic_path

if TYPE_CHECKING:
    from vaelib.analysis.encode import Sound

__all__ = ["invert_to_audio", "roundtrip_mae_db", "invert_and_check", "choose_listening_notes", "write_wav", "Clip",
           "Walk", "Listening", "listen", "listening_metrics", "file_stem", "encode_mp3", "audio_data_uri",
           "audio_data_uris",
           "one_velocity", "choose_map_notes", "within_budget", "timbre_dims", "PLACED_COLUMNS", "PlacedSounds",
           "ListeningMap", "listening_map", "placed_map", "MP3_COMPRESSION", "AUDIO_MIME", "MAP_PAGE_RESERVE_BYTES"]

T = TypeVar("T")


def invert_to_audio(x: np.ndarray, *, cfg: FeatureConfig, n_iter: int, seed: int = 0,
                    mel_inverse: str = "pinv") -> np.ndarray:
    """Audio of normalised log-mels [shape=(notes, 1, n_mels, frames)] by Griffin-Lim
    (``mel_inverse``: see ``vaelib.data.features.inverse_log_mel``).

    Returns
    -------
    [shape=(notes, frames * hop_length)] float32 waveforms at ``cfg.sample_rate``, each peak 0.9.
    """
    if n_iter < 1:
        raise ParameterError(f"n_iter: expected >= 1, got {n_iter}")
    x = np.asarray(x, np.float32)
    if x.ndim != 4:
        raise ParameterError(f"x: expected shape (notes, 1, n_mels, frames), got {x.shape}")
    return inverse_log_mels(x, cfg=cfg, n_iter=n_iter, seed=seed, mel_inverse=mel_inverse)


def roundtrip_mae_db(x: np.ndarray, audio: np.ndarray, *, cfg: FeatureConfig,
                     above_db: float | None = None) -> np.ndarray:
    """Mean absolute difference in dB between the log-mel of inverted audio and the log-mel it came from.

    Parameters
    ----------
    x : [shape=(notes, 1, n_mels, frames)] normalised log-mel the audio was inverted from.
    audio : [shape=(notes, samples)] waveforms inverted from ``x``.
    above_db : average only over the cells where the source is at least this loud (e.g. -40: the
        note itself, not the floor, where Griffin-Lim's phase noise dominates); None: every cell.
        A note with no such cell gets NaN.

    Returns
    -------
    [shape=(notes,)] dB, averaged over the mel bins and frames (both clipped to [-top_db, 0]).

    Notes
    -----
    With ``ref='max'`` a log-mel carries no absolute level: the log-mel of any audible audio peaks at
    0 dB (digital silence stays at -top_db).
    A decoded spectrogram may peak below 0 dB, so it is first re-referenced to its own peak (and
    clipped again), as the features of its audio necessarily are; otherwise the check would count
    that level offset in every bin.
    """
    if len(x) != len(audio):
        raise ParameterError(f"audio: {len(audio)} waveforms for {len(x)} spectrograms")
    out = np.empty(len(x), np.float64)
    for i, (xi, ai) in enumerate(zip(x, audio)):
        source = normalized_to_db(np.asarray(xi, np.float32), cfg=cfg)
        if cfg.ref == "max" and source.max() > -cfg.top_db:  # a silent source stays silent
            source = np.clip(source - source.max(), -cfg.top_db, 0.0)
        err = np.abs(normalized_to_db(log_mel(ai, cfg=cfg), cfg=cfg) - source)
        if above_db is not None:
            err = err[source >= above_db]
        out[i] = np.mean(err) if err.size else np.nan  # no cell that loud (only with ref='fixed')
    return out


def invert_and_check(x: np.ndarray, *, cfg: FeatureConfig, n_iter: int, seed: int = 0, mel_inverse: str = "pinv"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``invert_to_audio`` then ``roundtrip_mae_db``: waveforms [shape=(notes, samples)] and dB per note."""
    audio = invert_to_audio(x, cfg=cfg, n_iter=n_iter, seed=seed, mel_inverse=mel_inverse)
    return audio, roundtrip_mae_db(x, audio, cfg=cfg)


def choose_listening_notes(meta: pd.DataFrame, *, n: int, pitch: int, velocity: int) -> np.ndarray:
    """Row positions of ``n`` notes to listen to: families in turn, in each the note nearest ``pitch``
    and ``velocity`` of the next unused instrument (name order).

    Returns
    -------
    [shape=(min(n, notes),)] int row positions into ``meta``.
    """
    if n < 1:
        raise ParameterError(f"n: expected >= 1, got {n}")
    cost = (meta["pitch"] - pitch).abs() * 1000 + (meta["velocity"] - velocity).abs()
    order = meta.assign(_cost=cost.to_numpy(), _pos=np.arange(len(meta)))
    per_family = {}
    for fam, g in order.sort_values(["instrument_str", "_cost", "_pos"]).groupby("instrument_family_str", sort=True):
        per_family[fam] = list(g.groupby("instrument_str", sort=True)["_pos"].first())
    picked: list[int] = []
    while len(picked) < min(n, len(meta)) and any(per_family.values()):
        for fam in sorted(per_family):
            if per_family[fam] and len(picked) < n:
                picked.append(int(per_family[fam].pop(0)))
    return np.array(picked, dtype=np.int64)


def write_wav(path: str | Path, audio: np.ndarray, *, sample_rate: int) -> Path:
    """Write a mono float waveform as 16-bit PCM wav, atomically."""
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1 or not np.all(np.isfinite(audio)):
        raise ParameterError(f"audio: expected a finite 1-D waveform, got shape {audio.shape}")
    with atomic_path(path, suffix=".wav") as tmp:
        sf.write(tmp, np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return Path(path)


@dataclass
class Clip:
    """One sound of the listening report: its label, waveform and log-mel round-trip error (dB)."""

    label: str
    kind: str  # 'original', 'reconstruction' or 'interpolation'
    audio: np.ndarray  # [shape=(samples,)] float32
    mae_db: float
    wav: Path


@dataclass
class Walk:
    """One decoded path between the two notes of a pair, as sound: each step, and all steps back to back."""

    choice: PairChoice
    method: str  # 'linear' or 'slerp'
    z: np.ndarray  # [shape=(steps, latent_dim)] the path in the latent space
    x: np.ndarray  # [shape=(steps, 1, n_mels, frames)] decoded
    steps: list[Clip]
    sequence: Clip
    label: str  # file-safe: '<instrument_a>_to_<instrument_b>_p<pitch>_<method>'

    @property
    def text(self) -> str:
        """The walk in one line of markdown (names HTML-escaped: they come from metadata)."""
        c = self.choice
        return (f"{html.escape(c.instrument_a)} → {html.escape(c.instrument_b)} ({html.escape(c.pair)}), "
                f"{self.method}, pitch {c.pitch}, velocity {c.velocity}")


@dataclass
class Listening:
    """What 05_listening plays: test notes, their reconstructions and every interpolation, as audio."""

    notes: pd.DataFrame  # the chosen test notes
    names: list[str]  # one file-safe name per note
    originals: np.ndarray  # [shape=(notes, 1, n_mels, frames)]
    reconstructions: np.ndarray
    clips: list[Clip]  # originals and reconstructions in note order, then the steps of every walk
    walks: list[Walk]  # every pair of analysis.interp_pairs that could be formed, by every method
    skipped: list[str]  # a sentence per pair that could not be formed
    mu: np.ndarray  # [shape=(all notes, latent_dim)] posterior means of every note of the run, cache order
    sample_rate: int
    n_iter: int

    def of_kind(self, kind: str) -> list[Clip]:
        return [c for c in self.clips if c.kind == kind]

    def roundtrip_table(self) -> pd.DataFrame:
        """Mean, std and count of the round-trip error per clip kind (dB)."""
        checks = pd.DataFrame({"kind": [c.kind for c in self.clips], "mae_db": [c.mae_db for c in self.clips]})
        return checks.groupby("kind", sort=False)["mae_db"].agg(["mean", "std", "count"])


SEQUENCE_GAP_S = 0.25  # silence between the steps of an interpolation played back to back
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def file_stem(name: str) -> str:
    """``name`` as a file name: metadata may hold '/', markup or spaces, which must not reach a path."""
    return _UNSAFE.sub("_", name).strip("._") or "note"


def listen(run, *, out_dir: Path) -> Listening:
    """Invert the chosen test notes, their reconstructions and every interpolation pair of a run
    (``vaelib.analysis.run.TrainedRun``), linear and spherical, to audio, writing every clip as a wav
    under ``out_dir/audio/``.

    Raises
    ------
    ParameterError
        When no interpolation pair of ``analysis.interp_pairs`` can be formed from the run's notes, or
        a pair names an instrument the run does not hold.
    """
    from vaelib.analysis.interpolate import choose_pairs, interpolate_pairs
    from vaelib.analysis.latent import decode_latents, decoder_pitch, encode_features
    from vaelib.analysis.latent_cache import run_latents

    cfg, cache, model = run.cfg, run.cache, run.model
    a, sr, seed = cfg.analysis, cfg.features.sample_rate, cfg.run.seed
    test_x, test_meta = cache.split("test")
    idx = choose_listening_notes(test_meta, n=a.n_listen, pitch=a.interp_pitch, velocity=a.interp_velocity)
    chosen = test_meta.iloc[idx].reset_index(drop=True)
    originals = test_x[idx].astype(np.float32)
    mu, _ = encode_features(model, originals)
    recons = decode_latents(model, mu, pitch=decoder_pitch(chosen, cfg=cfg))
    names = [f"{r.instrument_str}-p{r.pitch}-v{r.velocity}" for r in chosen.itertuples()]
    audio_dir = Path(out_dir) / "audio"
    clips = []
    for kind, x in (("original", originals), ("reconstruction", recons)):
        audio, mae = invert_and_check(x, cfg=cfg.features, n_iter=a.griffin_lim_iters, seed=seed,
                                      mel_inverse=a.mel_inversion)
        for name, au, m in zip(names, audio, mae):
            clips.append(Clip(name, kind, au, float(m),
                              write_wav(audio_dir / f"{file_stem(name)}_{kind}.wav", au, sample_rate=sr)))
    # originals and reconstructions of one note side by side
    n = len(names)
    clips = [c for pair in zip(clips[:n], clips[n:]) for c in pair]

    mu_all, _ = run_latents(run)
    choices, skipped = choose_pairs(cache.meta, a.interp_pairs, pitch=a.interp_pitch, velocity=a.interp_velocity)
    if not choices:
        raise ParameterError(f"analysis.interp_pairs: no interpolation pair can be formed ({'; '.join(skipped)})")
    _, paths = interpolate_pairs(model, mu_all, choices, cfg=cfg.features, steps=a.interp_steps,
                                 pitch_conditioning=cfg.model.pitch_conditioning)
    walks = [_walk(choice, method, paths[(choice.pair, method)], cfg=cfg, audio_dir=audio_dir)
             for choice in choices for method in PATH_METHODS]
    clips += [c for w in walks for c in w.steps]
    return Listening(notes=chosen, names=names, originals=originals, reconstructions=recons, clips=clips,
                     walks=walks, skipped=skipped, mu=mu_all, sample_rate=sr, n_iter=a.griffin_lim_iters)


def _walk(choice: PairChoice, method: str, path: dict, *, cfg: Config, audio_dir: Path) -> Walk:
    """A decoded path (``interpolate_pairs``' ``{"z", "x"}``) inverted to audio, each step and all back to back."""
    a, sr = cfg.analysis, cfg.features.sample_rate
    audio, mae = invert_and_check(path["x"], cfg=cfg.features, n_iter=a.griffin_lim_iters, seed=cfg.run.seed,
                                  mel_inverse=a.mel_inversion)
    label = file_stem(f"{choice.instrument_a}_to_{choice.instrument_b}_p{choice.pitch}_{method}")
    steps = [Clip(f"step {i} (t = {t:.2f})", "interpolation", au, float(m),
                  write_wav(audio_dir / f"{label}_step{i:02d}.wav", au, sample_rate=sr))
             for i, (t, au, m) in enumerate(zip(np.linspace(0, 1, len(audio)), audio, mae))]
    gap = np.zeros(int(SEQUENCE_GAP_S * sr), np.float32)
    joined = np.concatenate([np.concatenate([au, gap]) for au in audio])
    sequence = Clip(f"{choice.instrument_a} → {choice.instrument_b}, {method}, all steps", "sequence", joined,
                    float(np.mean(mae)), write_wav(audio_dir / f"{label}_sequence.wav", joined, sample_rate=sr))
    return Walk(choice=choice, method=method, z=path["z"], x=path["x"], steps=steps, sequence=sequence, label=label)


# The embedded players' sound is MP3 (MPEG-1/2 Layer III through libsndfile's LAME), variable bit rate at
# this soundfile compression_level (0: best quality, 1: smallest). Ogg Vorbis from libsndfile is not used:
# Chromium refuses about half of its files ("PTS is not defined"), while MP3 plays in every browser. At 0.7
# the log-mel of a decoded note is within a fraction of a dB of the wav's on its loud cells, several times
# below the Griffin-Lim round trip error (docs/explore.md has the measurement).
MP3_COMPRESSION = 0.7
AUDIO_MIME = "audio/mpeg"


def encode_mp3(audio: np.ndarray, *, sample_rate: int) -> bytes:
    """A mono waveform as an MP3 file (variable bit rate, ``MP3_COMPRESSION``); decoded, it has the same length.

    Parameters
    ----------
    audio : [shape=(samples,)] float waveform in [-1, 1] (clipped there).

    Raises
    ------
    ParameterError
        When ``audio`` is not a finite, non-empty 1-D waveform.
    """
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1 or not audio.size or not np.all(np.isfinite(audio)):
        raise ParameterError(f"audio: expected a finite, non-empty 1-D waveform, got shape {audio.shape}")
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, format="MP3", subtype="MPEG_LAYER_III",
             bitrate_mode="VARIABLE", compression_level=MP3_COMPRESSION)
    return buf.getvalue()


def audio_data_uri(audio: np.ndarray, *, sample_rate: int) -> str:
    """``encode_mp3`` as a ``data:audio/mpeg;base64,...`` URI, which an ``<audio>`` element plays as its src."""
    return f"data:{AUDIO_MIME};base64," + base64.b64encode(encode_mp3(audio, sample_rate=sample_rate)).decode("ascii")


def audio_data_uris(audios: Sequence[np.ndarray], *, sample_rate: int) -> list[str]:
    """``audio_data_uri`` of each waveform, in order, encoded on one thread per core.

    libsndfile's LAME encoder runs outside the GIL (soundfile calls it through cffi), so the threads
    encode side by side: about twice as fast as one after another on two cores, the same bytes.
    """
    workers = min(len(audios), os.cpu_count() or 1)
    if workers <= 1:
        return [audio_data_uri(a, sample_rate=sample_rate) for a in audios]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda a: audio_data_uri(a, sample_rate=sample_rate), audios))


def one_velocity(meta: pd.DataFrame, *, velocity: int) -> np.ndarray:
    """Of each instrument's notes at one pitch, the one whose velocity is nearest ``velocity`` (the lower on a tie).

    Returns
    -------
    [shape=(notes,)] bool mask over the rows of ``meta``.
    """
    if meta.empty:
        return np.zeros(0, bool)
    order = meta.assign(_dist=(meta["velocity"] - velocity).abs().to_numpy(), _pos=np.arange(len(meta)))
    order = order.sort_values(["instrument_str", "pitch", "_dist", "velocity", "_pos"])
    first = order.drop_duplicates(["instrument_str", "pitch"])["_pos"].to_numpy()
    mask = np.zeros(len(meta), bool)
    mask[first] = True
    return mask


def choose_map_notes(meta: pd.DataFrame, *, velocity: int, train_notes: int, max_notes: int,
                     seed: int) -> tuple[np.ndarray, int]:
    """The notes of the listening map: every test note at one velocity (``one_velocity``), then a seeded
    sample of ``train_notes`` train notes at that velocity.

    At most ``max_notes`` in all: the train sample takes its share first (at most ``max_notes``), and the
    test notes are sampled (seeded) down to what is left. Both parts come in a seeded random order, so
    a page size budget that keeps only the leading notes (``within_budget``) keeps a spread of them.

    Parameters
    ----------
    meta : one row per note with ``split``, ``instrument_str``, ``pitch``, ``velocity``.

    Returns
    -------
    positions : [shape=(chosen,)] int row positions into ``meta``: the test notes, then the train notes.
    available : how many test notes there are at that velocity (all of them are chosen when
        ``available + train sample <= max_notes``).
    """
    if train_notes < 0 or max_notes < 1:
        raise ParameterError(f"train_notes, max_notes: expected >= 0 and >= 1, got {train_notes} and {max_notes}")
    rng = np.random.default_rng(seed)
    at_velocity = one_velocity(meta, velocity=velocity)
    split = meta["split"].to_numpy()
    test = np.flatnonzero(at_velocity & (split == "test"))
    train = np.flatnonzero(at_velocity & (split == "train"))
    train = rng.permutation(train)[:min(train_notes, max_notes)]
    test_chosen = rng.permutation(test)[:max_notes - len(train)]
    return np.concatenate([test_chosen, train]).astype(np.int64), len(test)


def within_budget(items: Iterable[T], *, size: Callable[[T], int], budget: int) -> tuple[list[T], bool]:
    """The leading items whose sizes add up to at most ``budget``.

    ``items`` is consumed lazily and stops at the first item that does not fit: items past the budget
    are never computed (a generator doing the work per item pays for at most one item it does not keep).

    Returns
    -------
    kept : the leading items that fit.
    cut : whether an item did not fit (``items`` may hold more).
    """
    kept, used = [], 0
    for item in items:
        n = size(item)
        if used + n > budget:
            return kept, True
        kept.append(item)
        used += n
    return kept, False


def timbre_dims(cfg: Config) -> int | None:
    """How many leading latent dimensions the model reserves for timbre, or None when it reserves none.

    ``train.contrast_dims`` when the contrastive term is on (it acts on those leading dimensions); else,
    with a trained pitch head reading the trailing ``model.pitch_dims``, the dimensions before them.
    None as well when that leaves fewer than two dimensions (no 2-D map) or all of them.
    """
    m, tr = cfg.model, cfg.train
    dims = None
    if tr.contrast > 0 and tr.contrast_dims > 0:
        dims = tr.contrast_dims
    elif m.pitch_head and tr.pitch_weight > 0 and m.pitch_dims > 0:
        dims = m.latent_dim - m.pitch_dims
    return dims if dims is not None and 2 <= dims < m.latent_dim else None


# What the listening map page holds beside its sound, kept out of the audio budget: the Bokeh library
# inline, the page's own HTML and the tables of points (coordinates and labels of every note of the run).
MAP_PAGE_RESERVE_BYTES = 3_000_000
MAP_CHUNK = 32  # notes decoded per batch while the map's sounds are made


PLACED_COLUMNS = ("file", "source_rate", "source_channels", "source_seconds", "nearest", "distance")


@dataclass
class PlacedSounds:
    """Sounds from outside the run on the listening map (``placed_map``): drawn as stars that play the file.

    ``table`` has one row per sound: ``PLACED_COLUMNS`` (``nearest`` is the note_str of the run's note
    nearest it in mu, ``distance`` the Euclidean distance in mu), then ``original`` (the file as encoded)
    and ``reconstruction`` data URIs, both '' for a sound the page size budget left without sound.
    """

    table: pd.DataFrame
    coords: dict[str, np.ndarray]  # map key -> [shape=(sounds, 2)], placed by each map's fitted transform


@dataclass
class ListeningMap:
    """What the listening map page shows and plays (``vaelib.report.listening_map`` draws it).

    Map keys are 'pca' and 'umap' (mu), and 'timbre_pca' and 'timbre_umap' (mu[:, :timbre_dims]) when
    the model reserves timbre dimensions; ``labels`` names each for the reader.

    05's page (``listening_map``) has no ``placed`` layer and grey context; a page of sounds from outside
    the run (``placed_map``) has both, its notes with sound being the run's notes nearest those sounds.
    """

    notes: pd.DataFrame  # one row per note with sound: metadata, 'original' and 'reconstruction' data URIs
    coords: dict[str, np.ndarray]  # map key -> [shape=(notes, 2)] the notes with sound
    context: dict[str, np.ndarray]  # map key -> [shape=(all notes, 2)] every note of the run (drawn without sound)
    labels: dict[str, str]  # map key -> what the map shows, with axis names
    axes: dict[str, tuple[str, str]]  # map key -> x and y axis titles
    paths: pd.DataFrame  # one row per step of each linear path: pair fields, step, t, 'decoded' data URI
    path_coords: dict[str, np.ndarray]  # map key -> [shape=(steps of all paths, 2)]
    velocity: int  # the velocity asked for (each note is the nearest one of its instrument and pitch); 0 if placed
    test_available: int  # test notes at that velocity; 0 on a page of placed sounds
    left_out: int  # chosen notes (placed sounds, on a page of them) the page size budget left without sound
    audio_bytes: int  # the data URIs' length in all
    budget_bytes: int  # analysis.map_max_mb
    seconds_per_note: float  # Griffin-Lim of one reconstruction (decode, read and encode not included)
    n_iter: int
    timbre_dims: int | None
    placed: PlacedSounds | None = None  # sounds from outside the run, drawn as stars
    stored_maps: tuple[str, ...] = ()  # map keys whose UMAP fit was read from the map store (04's), not refitted
    context_family: np.ndarray | None = None  # [shape=(all notes,)] colours the context by family; None: grey

    @property
    def text(self) -> str:
        """What the page holds, in two sentences of markdown."""
        if self.placed is not None:
            return self._placed_text()
        n_test = int((self.notes["split"] == "test").sum())
        n_train = int((self.notes["split"] == "train").sum())
        cut = (f" The page size budget ({self.budget_bytes / 1e6:.0f} MB) left out {self.left_out} more."
               if self.left_out else "")
        return (f"{len(self.notes)} notes with sound: {n_test} of the {self.test_available} test notes at the "
                f"velocity nearest {self.velocity}, and {n_train} train notes (a seeded sample); every other "
                f"note of the run in grey, without sound.{cut} Reconstructions inverted by Griffin-Lim with "
                f"{self.n_iter} iterations ({self.seconds_per_note:.2f} s a note).")

    def _placed_text(self) -> str:
        table = self.placed.table
        heard = int((table["original"] != "").sum())
        cut = (f" The page size budget ({self.budget_bytes / 1e6:.0f} MB) left {self.left_out} of them without "
               "sound." if self.left_out else "")
        context = "coloured by family" if self.context_family is not None else "in grey"
        return (f"{len(table)} sound(s) placed (stars, labelled by file name), {heard} with sound: the file as "
                f"encoded, then its reconstruction; the {len(self.notes)} note(s) of the run nearest them in mu "
                f"play theirs. Every note of the run ({len(next(iter(self.context.values())))}) is a small "
                f"point, {context}; the maps are fitted on the run's notes and the sounds placed by the fitted "
                f"transforms.{cut} Reconstructions inverted by Griffin-Lim with {self.n_iter} iterations "
                f"({self.seconds_per_note:.2f} s each).")


def _at_peak(audio: np.ndarray) -> np.ndarray:
    """``audio`` scaled to the inverted clips' peak level (0.9): a log-mel with ref='max' carries no level."""
    peak = float(np.abs(audio).max())
    return audio * (0.9 / peak) if peak > 0 else audio


def _recording(path: str, cfg: Config) -> np.ndarray:
    """The note's own wav at the feature rate and duration, at the reconstruction's peak level (0.9)."""
    from vaelib.data.nsynth import read_wav

    f = cfg.features
    audio, _ = read_wav(path, sample_rate=f.sample_rate, n_samples=f.frames * f.hop_length,
                        resample=cfg.data.resample)
    return _at_peak(audio)


def _wav_paths(cfg: Config, meta: pd.DataFrame) -> np.ndarray:
    """The wav of every row of ``meta`` (the cache keeps no path: the dataset listing, matched by note_str)."""
    from vaelib.data.nsynth import load_dataset

    listing = load_dataset(cfg.data, seed=cfg.run.seed).drop_duplicates("note_str").set_index("note_str")
    paths = listing["path"].reindex(meta["note_str"])
    if paths.isna().any():
        missing = meta["note_str"][paths.isna().to_numpy()].head(3).tolist()
        raise DataError(f"{cfg.data.root}: {int(paths.isna().sum())} notes of the feature cache are no longer "
                        f"in the dataset (e.g. {missing}); rebuild the run (01_preprocess)")
    return paths.to_numpy()


def _griffin_lim_uris(x: np.ndarray, cfg: Config, timing: list[float]) -> list[str]:
    """Decoded log-mels [shape=(notes, 1, n_mels, frames)] as MP3 data URIs; each note's share of the
    Griffin-Lim seconds goes to ``timing``."""
    t0 = time.perf_counter()
    audio = invert_to_audio(x, cfg=cfg.features, n_iter=cfg.analysis.map_griffin_lim_iters, seed=cfg.run.seed,
                            mel_inverse=cfg.analysis.mel_inversion)
    timing.extend([(time.perf_counter() - t0) / len(x)] * len(x))
    return audio_data_uris(audio, sample_rate=cfg.features.sample_rate)


def _griffin_lim_uri(x: np.ndarray, cfg: Config, timing: list[float]) -> str:
    """One decoded log-mel [shape=(1, n_mels, frames)] as an MP3 data URI (see ``_griffin_lim_uris``)."""
    return _griffin_lim_uris(x[None], cfg, timing)[0]


def _map_sounds(run, mu: np.ndarray, meta: pd.DataFrame, positions: np.ndarray, wavs: np.ndarray,
                timing: list[float]) -> Iterator[tuple[int, str, str]]:
    """(row, recording URI, reconstruction URI) of each note, made lazily (Griffin-Lim ``GRIFFIN_LIM_BATCH``
    notes at a time); Griffin-Lim seconds go to ``timing``."""
    from vaelib.analysis.latent import decode_latents, decoder_pitch

    cfg = run.cfg
    sr = cfg.features.sample_rate
    for start in range(0, len(positions), MAP_CHUNK):
        chunk = positions[start:start + MAP_CHUNK]
        decoded = decode_latents(run.model, mu[chunk], pitch=decoder_pitch(meta.iloc[chunk], cfg=cfg))
        for g in range(0, len(chunk), GRIFFIN_LIM_BATCH):
            batch = chunk[g:g + GRIFFIN_LIM_BATCH]
            reconstructions = _griffin_lim_uris(decoded[g:g + GRIFFIN_LIM_BATCH], cfg, timing)
            recordings = audio_data_uris([_recording(wavs[pos], cfg) for pos in batch], sample_rate=sr)
            for pos, recording, reconstruction in zip(batch, recordings, reconstructions):
                yield int(pos), recording, reconstruction


def _projections(mu: np.ndarray, is_train: np.ndarray, cfg: Config) -> tuple[dict, dict, dict, int | None]:
    """The maps of mu (as 04 draws them) and of its timbre dimensions: projections, labels, axis titles."""
    from vaelib.analysis.latent import maps_of_mu
    from vaelib.analysis.map_store import map_store

    seed, k, store = cfg.run.seed, timbre_dims(cfg), map_store(cfg)
    sets = {"": (mu, "mu")}
    if k is not None:
        sets["timbre_"] = (mu[:, :k], f"mu[:, :{k}], the timbre dimensions")
    projections, labels, axes = {}, {}, {}
    for prefix, (x, what) in sets.items():
        for name, proj in maps_of_mu(x, is_train=is_train, cfg=cfg.analysis, seed=seed, store=store).items():
            key = prefix + name.lower()
            projections[key] = proj
            labels[key] = f"{name} of {what}"
            if proj.explained is not None:
                axes[key] = (f"PC 1 ({proj.explained[0]:.0%})", f"PC 2 ({proj.explained[1]:.0%})")
            else:
                axes[key] = (f"{name} 1", f"{name} 2")
    return projections, labels, axes, k


def listening_map(run, listening: Listening) -> ListeningMap:
    """The sounds and coordinates of the listening map of a run (``vaelib.analysis.run.TrainedRun``).

    The maps are 04's (``maps_of_mu``: PCA fitted on the train notes, UMAP unless ``analysis.umap`` is
    false) of every note's mu, and the same of the timbre dimensions when the model has them
    (``timbre_dims``). The notes with sound are ``choose_map_notes``'; each plays its own wav (at the
    feature duration, peak 0.9) and ``decode(mu)`` inverted by Griffin-Lim with
    ``analysis.map_griffin_lim_iters`` iterations, both as MP3. The linear walks of ``listening``
    are placed on every map, their steps' audio reused. Sound is added path steps first, then the notes
    in order, until ``analysis.map_max_mb`` less ``MAP_PAGE_RESERVE_BYTES`` is reached; the notes past it
    are left out with a warning.

    Raises
    ------
    DataError
        When a note's wav is no longer in the dataset.
    """
    cfg, meta = run.cfg, run.cache.meta
    a, sr = cfg.analysis, cfg.features.sample_rate
    mu = listening.mu
    projections, labels, axes, k = _projections(mu, meta["split"].to_numpy() == "train", cfg)

    walks = [w for w in listening.walks if w.method == "linear"]
    steps = [(i, w, s, t, clip) for i, w in enumerate(walks)
             for s, (t, clip) in enumerate(zip(np.linspace(0, 1, len(w.steps)), w.steps))]
    step_uris = audio_data_uris([clip.audio for *_, clip in steps], sample_rate=sr)
    paths = pd.DataFrame([{"pair": w.choice.pair, "instrument_a": w.choice.instrument_a,
                           "instrument_b": w.choice.instrument_b, "pitch": w.choice.pitch,
                           "velocity": w.choice.velocity, "path": i, "step": s, "t": t, "decoded": uri}
                          for (i, w, s, t, _), uri in zip(steps, step_uris)])
    path_coords = {}
    for key, proj in projections.items():
        zs = [w.z[:, :k] if key.startswith("timbre_") else w.z for w in walks]
        path_coords[key] = np.concatenate(proj.transform_each(zs)) if zs else np.zeros((0, 2))

    positions, available = choose_map_notes(meta, velocity=a.interp_velocity, train_notes=a.map_train_notes,
                                            max_notes=a.map_max_notes, seed=cfg.run.seed)
    budget = int(a.map_max_mb * 1e6)
    path_bytes = int(paths["decoded"].str.len().sum()) if len(paths) else 0
    timing: list[float] = []
    sounds = _map_sounds(run, mu, meta, positions, _wav_paths(cfg, meta), timing)
    kept, _ = within_budget(sounds, size=lambda s: len(s[1]) + len(s[2]),
                            budget=budget - MAP_PAGE_RESERVE_BYTES - path_bytes)
    left_out = len(positions) - len(kept)
    if left_out:
        warnings.warn(f"listening map: {left_out} of {len(positions)} notes left out to keep the page within "
                      f"analysis.map_max_mb = {a.map_max_mb:g} MB", stacklevel=2)
    rows = np.array([pos for pos, _, _ in kept], dtype=np.int64)
    notes = meta.iloc[rows][_note_columns(meta)].reset_index(drop=True).assign(
        original=[o for _, o, _ in kept], reconstruction=[r for _, _, r in kept])
    return ListeningMap(
        notes=notes, coords={key: p.coords[rows] for key, p in projections.items()},
        context={key: np.asarray(p.coords, np.float32) for key, p in projections.items()},
        labels=labels, axes=axes, paths=paths, path_coords=path_coords, velocity=a.interp_velocity,
        test_available=available, left_out=left_out,
        audio_bytes=path_bytes + int(notes["original"].str.len().sum() + notes["reconstruction"].str.len().sum()),
        budget_bytes=budget, seconds_per_note=float(np.mean(timing)) if timing else 0.0,
        n_iter=a.map_griffin_lim_iters, timbre_dims=k,
        stored_maps=tuple(key for key, p in projections.items() if p.stored))


def _note_columns(meta: pd.DataFrame) -> list[str]:
    """The metadata a note of the map shows, those of ``meta``."""
    return [c for c in ("note_str", "instrument_str", "instrument_family_str", "instrument_source_str", "pitch",
                        "velocity", "split") if c in meta.columns]


def _placed_sounds(model, cfg: Config, sounds: Sequence[Sound], mu: np.ndarray, nearest: np.ndarray,
                   run_mu: np.ndarray, meta: pd.DataFrame, wavs: dict[int, str], timing: list[float]
                   ) -> Iterator[tuple[int, str, str, tuple[int, str, str] | None]]:
    """Per sound, lazily: (index, file URI, reconstruction URI, and (row, recording URI, reconstruction URI)
    of its nearest run note the first time that note comes up, else None)."""
    from vaelib.analysis.latent import decode_latents, decoder_pitch

    sr, seen = cfg.features.sample_rate, set()
    # a file carries no pitch: a pitch-conditioned decoder is given its nearest note's
    pitch = meta["pitch"].to_numpy(np.int64)[nearest] if cfg.model.pitch_conditioning else None
    for start in range(0, len(sounds), MAP_CHUNK):
        chunk = np.arange(start, min(start + MAP_CHUNK, len(sounds)))
        decoded = decode_latents(model, mu[chunk], pitch=None if pitch is None else pitch[chunk])
        fresh = [r for r in dict.fromkeys(nearest[chunk].tolist()) if r not in seen]
        notes_x = dict(zip(fresh, decode_latents(model, run_mu[fresh], pitch=decoder_pitch(meta.iloc[fresh], cfg=cfg))
                           if fresh else []))
        for i, x in zip(chunk, decoded):
            own = audio_data_uri(_at_peak(sounds[i].audio), sample_rate=sr), _griffin_lim_uri(x, cfg, timing)
            row, note = int(nearest[i]), None
            if row not in seen:
                seen.add(row)
                note = (row, audio_data_uri(_recording(wavs[row], cfg), sample_rate=sr),
                        _griffin_lim_uri(notes_x[row], cfg, timing))
            yield int(i), *own, note


def _uri_bytes(item: tuple[int, str, str, tuple[int, str, str] | None]) -> int:
    _, own, rec, note = item
    return len(own) + len(rec) + (len(note[1]) + len(note[2]) if note else 0)


def placed_map(sounds: Sequence[Sound], mu: np.ndarray, *, model, cfg: Config, meta: pd.DataFrame,
               run_mu: np.ndarray, show_progress: bool = False) -> ListeningMap:
    """The listening map of sounds from outside a run (``vaelib encode``) among the run's notes.

    The maps are ``listening_map``'s (PCA, UMAP unless ``analysis.umap`` is false, and the same of the
    timbre dimensions when the model has them), fitted on every note of the run, as
    ``vaelib.analysis.encode.place_on_map`` fits its PCA; the sounds are placed by each map's fitted
    transform. Every note of the run is drawn, coloured by family, without sound. Sound comes, sound by
    sound in order, for the sound (its audio as encoded, peak 0.9, then ``decode(mu)`` inverted by
    Griffin-Lim with ``analysis.map_griffin_lim_iters`` iterations) and for the run's note nearest it in
    mu (its own wav, then its reconstruction), each note once: at most two inversions a sound. It stops
    at ``analysis.map_max_mb`` less ``MAP_PAGE_RESERVE_BYTES``; the sounds past it are drawn without
    sound, with a warning. A pitch-conditioned decoder decodes a sound at its nearest note's pitch.

    Parameters
    ----------
    sounds : the sounds (``vaelib.analysis.encode.Sound``), their ``audio`` at the features' rate.
    mu : [shape=(sounds, latent_dim)] their posterior means.
    model : the run's VAE, in eval mode; ``cfg`` its config (model, train and features the checkpoint's).
    meta : one row per note of the run (``note_str``, ``instrument_family_str``, ``pitch``, ...).
    run_mu : [shape=(notes, latent_dim)] mu of those notes.

    Raises
    ------
    ParameterError
        When the shapes of ``mu``, ``run_mu`` and ``meta`` disagree, or no sound is given.
    DataError
        When the wav of a nearest note is no longer in the dataset.
    """
    from tqdm import tqdm

    from vaelib.analysis.encode import nearest_notes

    mu, run_mu = np.asarray(mu, np.float32), np.asarray(run_mu, np.float32)
    if not len(sounds) or mu.shape != (len(sounds), run_mu.shape[1]):
        raise ParameterError(f"mu: expected shape ({len(sounds)} sounds >= 1, {run_mu.shape[1]}), got {mu.shape}")
    if len(meta) != len(run_mu):
        raise ParameterError(f"meta: {len(meta)} rows for {len(run_mu)} notes of run_mu")
    a = cfg.analysis
    projections, labels, axes, k = _projections(run_mu, np.ones(len(run_mu), bool), cfg)
    placed_coords = {key: np.asarray(p.transform(mu[:, :k] if key.startswith("timbre_") else mu), np.float32)
                     for key, p in projections.items()}
    rows, distances = nearest_notes(run_mu, mu, k=1)
    nearest = rows[:, 0]
    unique = np.unique(nearest)
    wavs = dict(zip(unique.tolist(), _wav_paths(cfg, meta.iloc[unique])))

    budget = int(a.map_max_mb * 1e6)
    timing: list[float] = []
    made = tqdm(_placed_sounds(model, cfg, sounds, mu, nearest, run_mu, meta, wavs, timing), total=len(sounds),
                desc="map sounds", unit="sound", disable=not show_progress)
    kept, _ = within_budget(made, size=_uri_bytes, budget=budget - MAP_PAGE_RESERVE_BYTES)
    made.close()
    left_out = len(sounds) - len(kept)
    if left_out:
        warnings.warn(f"encode map: {left_out} of {len(sounds)} sounds left without sound to keep the page within "
                      f"analysis.map_max_mb = {a.map_max_mb:g} MB", stacklevel=2)
    original, reconstruction = [""] * len(sounds), [""] * len(sounds)
    for i, own, rec, _ in kept:
        original[i], reconstruction[i] = own, rec
    table = pd.DataFrame({"file": [s.name for s in sounds], "source_rate": [s.source_rate for s in sounds],
                          "source_channels": [s.source_channels for s in sounds],
                          "source_seconds": [s.source_seconds for s in sounds],
                          "nearest": meta["note_str"].to_numpy()[nearest].astype(str),
                          "distance": distances[:, 0], "original": original, "reconstruction": reconstruction})
    notes_made = [note for *_, note in kept if note is not None]
    note_rows = np.array([row for row, _, _ in notes_made], dtype=np.int64)
    notes = meta.iloc[note_rows][_note_columns(meta)].reset_index(drop=True).assign(
        original=[o for _, o, _ in notes_made], reconstruction=[r for _, _, r in notes_made])
    paths = pd.DataFrame(columns=["pair", "instrument_a", "instrument_b", "pitch", "velocity", "path", "step", "t",
                                  "decoded"])
    family = meta["instrument_family_str"].astype(str).to_numpy() if "instrument_family_str" in meta else None
    return ListeningMap(
        notes=notes, coords={key: np.asarray(p.coords, np.float32)[note_rows] for key, p in projections.items()},
        context={key: np.asarray(p.coords, np.float32) for key, p in projections.items()},
        labels=labels, axes=axes, paths=paths, path_coords={key: np.zeros((0, 2), np.float32) for key in projections},
        velocity=0, test_available=0, left_out=left_out, audio_bytes=sum(_uri_bytes(item) for item in kept),
        budget_bytes=budget, seconds_per_note=float(np.mean(timing)) if timing else 0.0,
        n_iter=a.map_griffin_lim_iters, timbre_dims=k, placed=PlacedSounds(table=table, coords=placed_coords),
        context_family=family)


def listening_metrics(listening: Listening, *, out_dir: Path, cfg: FeatureConfig,
                      lmap: ListeningMap | None = None, map_page: Path | None = None) -> dict:
    """What 05_listening writes to ``listening.json``. ``gl_logmel_mae_db_loud`` averages only the cells
    within 40 dB of each note's peak: the quiet floor, where Griffin-Lim's phase errors leave noise
    20-40 dB above a -80 dB source, dominates the all-cells figure. With the listening map ``lmap`` (and
    the page written from it, ``map_page``), the ``map_*`` figures: what the page holds and its size."""
    orig, rec = listening.of_kind("original"), listening.of_kind("reconstruction")
    loud = np.concatenate([
        roundtrip_mae_db(listening.originals, np.stack([c.audio for c in orig]), cfg=cfg, above_db=-40.0),
        roundtrip_mae_db(listening.reconstructions, np.stack([c.audio for c in rec]), cfg=cfg, above_db=-40.0)])
    wavs = [c.wav for c in orig + rec] + [c.wav for w in listening.walks for c in (w.sequence, *w.steps)]
    metrics = {
        "gl_logmel_mae_db": float(np.mean([c.mae_db for c in orig + rec])),
        "gl_logmel_mae_db_by_kind": listening.roundtrip_table()["mean"].round(3).to_dict(),
        "gl_logmel_mae_db_loud": float(loud.mean()),
        "gl_logmel_mae_db_per_note": {f"{c.label}_{c.kind}": round(c.mae_db, 3) for c in orig + rec},
        "griffin_lim_iters": listening.n_iter,
        "listen_notes": listening.names,
        "listen_interpolations": [w.label for w in listening.walks],
        "listen_skipped": listening.skipped,
        "wav_files": [str(Path(w).relative_to(out_dir)) for w in wavs],
        "targets": {},
    }
    if lmap is not None:
        m = lmap
        metrics.update({
            "map_notes": {s: int((m.notes["split"] == s).sum()) for s in ("test", "train")},
            "map_test_available": m.test_available,
            "map_left_out": m.left_out,
            "map_path_steps": int(len(m.paths)),
            "map_maps": list(m.labels),
            "map_umap_read_from_store": list(m.stored_maps),
            "map_timbre_dims": m.timbre_dims,
            "map_audio_bytes": m.audio_bytes,
            "map_budget_bytes": m.budget_bytes,
            "map_griffin_lim_iters": m.n_iter,
            "map_griffin_lim_seconds_per_note": round(m.seconds_per_note, 4),
        })
    if map_page is not None:
        metrics.update({"map_page": Path(map_page).name, "map_page_bytes": Path(map_page).stat().st_size})
    return metrics
