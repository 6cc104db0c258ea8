"""Spectrograms back to sound, and an objective check of that path.

Audio comes from ``vaelib.data.features.inverse_log_mel`` (NNLS mel inversion, then Griffin-Lim). The
check inverts a log-mel to audio, computes the log-mel of the result again and reports the mean absolute
difference in dB: what the listener hears is only as faithful as this number.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from vaelib.config import FeatureConfig
from vaelib.data.features import inverse_log_mel, log_mel, normalized_to_db
from vaelib.exceptions import ParameterError
from vaelib.io import atomic_path

__all__ = ["invert_to_audio", "roundtrip_mae_db", "invert_and_check", "choose_listening_notes", "write_wav", "Clip",
           "Listening", "listen", "listening_metrics", "file_stem"]


def invert_to_audio(x: np.ndarray, *, cfg: FeatureConfig, n_iter: int, seed: int = 0) -> np.ndarray:
    """Audio of normalised log-mels [shape=(notes, 1, n_mels, frames)] by Griffin-Lim.

    Returns
    -------
    [shape=(notes, frames * hop_length)] float32 waveforms at ``cfg.sample_rate``, each peak 0.9.
    """
    if n_iter < 1:
        raise ParameterError(f"n_iter: expected >= 1, got {n_iter}")
    x = np.asarray(x, np.float32)
    if x.ndim != 4:
        raise ParameterError(f"x: expected shape (notes, 1, n_mels, frames), got {x.shape}")
    return np.stack([inverse_log_mel(xi, cfg=cfg, n_iter=n_iter, seed=seed) for xi in x])


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


def invert_and_check(x: np.ndarray, *, cfg: FeatureConfig, n_iter: int, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``invert_to_audio`` then ``roundtrip_mae_db``: waveforms [shape=(notes, samples)] and dB per note."""
    audio = invert_to_audio(x, cfg=cfg, n_iter=n_iter, seed=seed)
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
class Listening:
    """What 05_listening plays: test notes, their reconstructions and one interpolation, as audio."""

    notes: pd.DataFrame  # the chosen test notes
    names: list[str]  # one file-safe name per note
    originals: np.ndarray  # [shape=(notes, 1, n_mels, frames)]
    reconstructions: np.ndarray
    clips: list[Clip]  # originals and reconstructions in note order, then the interpolation steps
    sequence: Clip  # the interpolation's steps back to back
    pair_label: str
    pair_text: str  # markdown, names HTML-escaped (they come from metadata)
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
    """Invert the chosen test notes, their reconstructions and the first interpolation pair of a run
    (``vaelib.analysis.run.TrainedRun``) to audio, writing every clip as a wav under ``out_dir/audio/``.

    Raises
    ------
    ParameterError
        When no interpolation pair of ``analysis.interp_pairs`` can be formed from the run's notes.
    """
    from vaelib.analysis.interpolate import choose_pairs, latent_path
    from vaelib.analysis.latent import decode_latents, decoder_pitch, encode_features

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
        audio, mae = invert_and_check(x, cfg=cfg.features, n_iter=a.griffin_lim_iters, seed=seed)
        for name, au, m in zip(names, audio, mae):
            clips.append(Clip(name, kind, au, float(m),
                              write_wav(audio_dir / f"{file_stem(name)}_{kind}.wav", au, sample_rate=sr)))
    # originals and reconstructions of one note side by side
    n = len(names)
    clips = [c for pair in zip(clips[:n], clips[n:]) for c in pair]

    mu_all, _ = encode_features(model, cache.features)
    choices, skipped = choose_pairs(cache.meta, a.interp_pairs[:1], pitch=a.interp_pitch, velocity=a.interp_velocity)
    if not choices:
        raise ParameterError(f"analysis.interp_pairs: no interpolation pair can be formed ({'; '.join(skipped)})")
    pair = choices[0]
    z = latent_path(mu_all[pair.index_a], mu_all[pair.index_b], steps=a.interp_steps, method="linear")
    walk = decode_latents(model, z, pitch=np.full(a.interp_steps, pair.pitch) if cfg.model.pitch_conditioning
                          else None)
    audio_walk, mae_walk = invert_and_check(walk, cfg=cfg.features, n_iter=a.griffin_lim_iters, seed=seed)
    label = file_stem(f"{pair.instrument_a}_to_{pair.instrument_b}_p{pair.pitch}")
    gap = np.zeros(int(SEQUENCE_GAP_S * sr), np.float32)
    joined = np.concatenate([np.concatenate([au, gap]) for au in audio_walk])
    sequence = Clip(f"{pair.instrument_a} → {pair.instrument_b}, all steps", "sequence", joined,
                    float(np.mean(mae_walk)),
                    write_wav(audio_dir / f"{label}_sequence.wav", joined, sample_rate=sr))
    for i, (t, au, m) in enumerate(zip(np.linspace(0, 1, a.interp_steps), audio_walk, mae_walk)):
        clips.append(Clip(f"step {i} (t = {t:.2f})", "interpolation", au, float(m),
                          write_wav(audio_dir / f"{label}_step{i:02d}.wav", au, sample_rate=sr)))
    return Listening(notes=chosen, names=names, originals=originals, reconstructions=recons, clips=clips,
                     sequence=sequence, pair_label=label,
                     pair_text=(f"{html.escape(pair.instrument_a)} → {html.escape(pair.instrument_b)}, "
                                f"pitch {pair.pitch}, velocity {pair.velocity}"),
                     sample_rate=sr, n_iter=a.griffin_lim_iters)


def listening_metrics(listening: Listening, *, out_dir: Path, cfg: FeatureConfig) -> dict:
    """What 05_listening writes to ``listening.json``. ``gl_logmel_mae_db_loud`` averages only the cells
    within 40 dB of each note's peak: the quiet floor, where Griffin-Lim's phase errors leave noise
    20-40 dB above a -80 dB source, dominates the all-cells figure."""
    orig, rec = listening.of_kind("original"), listening.of_kind("reconstruction")
    loud = np.concatenate([
        roundtrip_mae_db(listening.originals, np.stack([c.audio for c in orig]), cfg=cfg, above_db=-40.0),
        roundtrip_mae_db(listening.reconstructions, np.stack([c.audio for c in rec]), cfg=cfg, above_db=-40.0)])
    wavs = [c.wav for c in listening.clips if c.kind != "interpolation"] + [listening.sequence.wav] \
        + [c.wav for c in listening.of_kind("interpolation")]
    return {
        "gl_logmel_mae_db": float(np.mean([c.mae_db for c in orig + rec])),
        "gl_logmel_mae_db_by_kind": listening.roundtrip_table()["mean"].round(3).to_dict(),
        "gl_logmel_mae_db_loud": float(loud.mean()),
        "gl_logmel_mae_db_per_note": {f"{c.label}_{c.kind}": round(c.mae_db, 3) for c in orig + rec},
        "griffin_lim_iters": listening.n_iter,
        "listen_notes": listening.names,
        "listen_interpolation": listening.pair_label,
        "wav_files": [str(Path(w).relative_to(out_dir)) for w in wavs],
        "targets": {},
    }
