"""One frozen, validated configuration for every stage, loaded from a params YAML plus overrides.

Every section is a frozen dataclass whose fields carry their allowed range in ``metadata``;
``load_config`` refuses an unknown key, a wrong type or an out-of-range value before anything runs,
because papermill itself only warns about unknown parameters.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vaelib.exceptions import ConfigError

__all__ = [
    "PROJECT_ROOT",
    "DATA_DIR",
    "REPORTS_DIR",
    "PARAMS_DIR",
    "RunConfig",
    "DataConfig",
    "RenderConfig",
    "TransferSet",
    "FeatureConfig",
    "ModelConfig",
    "TrainConfig",
    "AnalysisConfig",
    "ReportConfig",
    "Config",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "parse_override",
    "section_hash",
    "MEL_SCALES",
    "SPLIT_UNITS",
    "MEL_INVERSES",
    "FEATURE_RUNTIME_ONLY",
    "feature_representation",
    "project_relative",
    "resolve_path",
    "save_config",
    "params_reference",
    "interp_pair_sides",
    "soundfont_list",
    "SOUNDFONT_SUFFIXES",
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = PROJECT_ROOT / "data"
REPORTS_DIR = PROJECT_ROOT / "reports"
PARAMS_DIR = PROJECT_ROOT / "params"

NSYNTH_FAMILIES = (
    "bass", "brass", "flute", "guitar", "keyboard", "mallet",
    "organ", "reed", "string", "synth_lead", "vocal",
)
NSYNTH_SOURCES = ("acoustic", "electronic", "synthetic")
SOUNDFONT_SUFFIXES = (".sf2", ".sf3")


def _f(default: Any, help: str, *, lo: float | None = None, hi: float | None = None,
       choices: tuple | None = None, items: tuple | None = None, whole_string: bool = False) -> Any:
    """A dataclass field with its help text and allowed range (``items`` constrains tuple elements).

    A tuple field given a string reads it as a comma-separated list, unless ``whole_string``: then the
    string is the one item (a path may hold a comma), and '' is the empty tuple."""
    meta = {"help": help, "lo": lo, "hi": hi, "choices": choices, "items": items, "whole_string": whole_string}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    name: str = _f("default", "run name: outputs go to reports/<name>/")
    seed: int = _f(0, "seed for splits, initialisation, batching and UMAP", lo=0)


SPLIT_UNITS = ("instrument", "program")  # what data.split_by holds out of the train split


@dataclass(frozen=True)
class DataConfig:
    root: str = _f("data/gm_default", "NSynth-layout root (relative to the project, or absolute; "
                   "$VARS expanded); holds examples.json + audio/, or nsynth-{train,valid,test}/")
    families: tuple[str, ...] = _f((), "keep only these families (empty: all)", items=NSYNTH_FAMILIES)
    sources: tuple[str, ...] = _f((), "keep only these sources (empty: all)", items=NSYNTH_SOURCES)
    pitch_min: int = _f(21, "lowest MIDI pitch kept; notes below are dropped and counted", lo=0, hi=127)
    pitch_max: int = _f(108, "highest MIDI pitch kept; notes above are dropped and counted", lo=0, hi=127)
    velocities: tuple[int, ...] = _f((), "keep only these velocities (empty: all)", items=(0, 127))
    instruments: tuple[str, ...] = _f((), "keep only these instrument_str (empty: all)")
    valid_fraction: float = _f(0.125, "share of instruments held out for validation "
                               "(only when the root has no NSynth split folders)", lo=0.0, hi=0.5)
    test_fraction: float = _f(0.25, "share of instruments held out for test", lo=0.0, hi=0.5)
    split_by: str = _f("instrument", "what the split holds out (when the root has no NSynth split folders): "
                       "'instrument', or 'program': every instrument of a GM program, from every SoundFont of "
                       "a multi-source render, in one split, so a held-out program is unheard in any bank",
                       choices=SPLIT_UNITS)
    resample: bool = _f(True, "resample wavs of another rate (with a warning) instead of refusing them")
    max_notes: int = _f(0, "keep at most this many notes per split, chosen by seed (0: all)", lo=0)
    test_soundfonts: tuple[str, ...] = _f((), "SoundFont file names (the `soundfont` field of a multi-source render, "
                                          "e.g. FluidR3_GM.sf2) whose notes all go to the test split, never to "
                                          "train or valid; the other notes are split by instrument as usual")


@dataclass(frozen=True)
class RenderConfig:
    enabled: bool = _f(True, "render the embedded GM dataset into data.root when it is missing")
    soundfont: tuple[str, ...] = _f((), "one .sf2/.sf3 or a list of them, rendered into one dataset (empty: "
                                    "TimGM6mb.sf2 shipped with pretty_midi); a bare Debian file name such as "
                                    "FluidR3_GM.sf2 is looked up under /usr/share/sounds (docs/data.md)",
                                    whole_string=True)
    programs: tuple[int, ...] = _f((), "GM programs (0-based) to render (empty: every mapped one)",
                                   items=(0, 127))
    pitch_min: int = _f(24, "lowest MIDI pitch rendered", lo=0, hi=127)
    pitch_max: int = _f(96, "highest MIDI pitch rendered", lo=0, hi=127)
    pitch_step: int = _f(2, "pitch step in semitones", lo=1, hi=24)
    velocities: tuple[int, ...] = _f((25, 75, 127), "MIDI velocities rendered", items=(1, 127))
    silence_db: float = _f(-60.0, "notes whose peak RMS is below this (dBFS) are dropped", lo=-120, hi=0)
    gain_db: float = _f(0.0, "synth gain in dB", lo=-40, hi=20)
    workers: int = _f(2, "worker processes", lo=1, hi=64)


MEL_SCALES = ("slaney", "htk")  # librosa.filters.mel(htk=False | True)
MEL_INVERSES = ("pinv", "nnls")  # how a mel power goes back to linear frequency before Griffin-Lim


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = _f(16000, "Hz; NSynth's rate", lo=8000, hi=48000)
    duration_s: float = _f(4.0, "seconds per note; shorter wavs are padded, longer cut", lo=0.5, hi=10.0)
    n_fft: int = _f(1024, "STFT size: 64 ms at 16 kHz resolves the lowest of 80 mel bands", lo=64, hi=8192)
    hop_length: int = _f(500, "hop in samples: 4 s / 500 = 128 frames, the study's width", lo=16, hi=4096)
    n_mels: int = _f(80, "mel bands", lo=8, hi=256)
    frames: int = _f(128, "frames kept per note (padded with silence or cropped)", lo=8, hi=1024)
    fmin: float = _f(30.0, "Hz; below the lowest fundamental of a 21-108 note (27.5 Hz) is noise", lo=0.0)
    fmax: float = _f(8000.0, "Hz; Nyquist at 16 kHz", lo=100.0)
    mel_scale: str = _f("slaney", "librosa's mel formula: 'slaney' (linear below 1 kHz: 80 bands from 30 Hz are 37 Hz "
                        "apart there) or 'htk' (bands narrow towards 0 Hz: 23-29 Hz apart from 30 to 250 Hz)",
                        choices=MEL_SCALES)
    ref: str = _f("max", "dB reference: 'max' (each note's peak is 0 dB, as the study) or 'fixed'",
                  choices=("max", "fixed"))
    ref_power: float = _f(1.0, "power taken as 0 dB when ref='fixed'", lo=1e-12)
    top_db: float = _f(80.0, "dB range kept below the reference; the study clips to [-80, 0]", lo=10, hi=160)
    batch_size: int = _f(16, "notes per batch of the cache build (the FFT runs note by note inside it); 16-32 "
                         "is the fastest range at n_fft 1024 and 2048, see docs/benchmarks.md", lo=1, hi=4096)
    workers: int = _f(2, "threads, each decoding and transforming whole batches (one per core is fastest, see "
                         "docs/benchmarks.md)", lo=1, hi=64)
    cache_dir: str = _f("data/cache", "feature cache folder")


@dataclass(frozen=True)
class ModelConfig:
    depth: int = _f(3, "stride-2 conv levels in the encoder (and decoder)", lo=3, hi=4)
    # 16-32-64: the middle of the candidates benchmarks/bench_train.py times (figures in docs/benchmarks.md):
    # 8-16-32 trains faster but leaves 8 first-level filters; the study's 32-64-128, which the planned
    # experiments use, trains several times slower.
    channels: tuple[int, ...] = _f((16, 32, 64), "channels per level; its length must equal depth",
                                   items=(1, 1024))
    latent_dim: int = _f(32, "latent dimensions", lo=2, hi=512)
    kernel_size: int = _f(3, "conv kernel size of every level (stride 2)", choices=(3, 4, 5))
    norm: str = _f("batch", "normalisation after each conv", choices=("batch", "group", "none"))
    activation: str = _f("leaky_relu", "activation", choices=("leaky_relu", "relu", "gelu", "silu"))
    logvar_bound: float = _f(8.0, "logvar is squashed smoothly into [-bound, bound]", lo=1.0, hi=30.0)
    pitch_conditioning: bool = _f(False, "give the decoder the note's MIDI pitch (one-hot)")
    pitch_head: bool = _f(False, "a linear pitch classifier on mu, trained with train.pitch_weight (the decoder "
                                 "is not given the pitch)")
    contrast_head: int = _f(0, "width of an MLP projection head that the contrastive term acts through (0: on mu "
                                "itself); as in SimCLR, the head can discard what mu must keep to reconstruct", lo=0)
    pitch_dims: int = _f(0, "trailing latent dimensions the pitch head reads (0: all), so that pitch can be "
                            "kept out of the leading ones", lo=0)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _f(12, "maximum epochs", lo=1, hi=10000)
    batch_size: int = _f(64, "notes per step", lo=1, hi=8192)
    lr: float = _f(1e-3, "Adam learning rate", lo=1e-7, hi=1.0)
    lr_schedule: str = _f("constant", "'constant', or 'cosine': decay from lr to lr * lr_final over train.epochs "
                                      "(Loshchilov & Hutter 2017, without restarts)", choices=("constant", "cosine"))
    lr_final: float = _f(0.01, "last learning rate of the cosine schedule, as a share of lr", lo=0.0, hi=1.0)
    beta: float = _f(1.0, "final KL weight (beta-VAE)", lo=0.0, hi=1000.0)
    warmup_steps: int = _f(1000, "steps of linear beta warm-up from 0", lo=0)
    free_bits: float = _f(0.25, "nats per latent dimension below which KL is not penalised", lo=0.0, hi=10.0)
    patience: int = _f(4, "epochs without a better valid reconstruction before stopping", lo=1)
    contrast: float = _f(0.0, "weight of the instrument-contrastive term on mu (0: a plain beta-VAE)", lo=0.0)
    contrast_temperature: float = _f(0.1, "temperature of the instrument-contrastive term", lo=1e-3, hi=10.0)
    contrast_labels: str = _f("instrument", "classes of the contrastive term: 'instrument' (the family probes stay "
                                            "unsupervised), 'family' (supervised by the probed label), 'program' "
                                            "(the GM program, one class across SoundFonts; renders only) or "
                                            "'program_across' (a note's positives only its program's notes from "
                                            "other SoundFonts; its own SoundFont's neither pulled nor pushed) or "
                                            "'program_family' (the program's notes pulled together, the other "
                                            "programs of its family neither pulled nor pushed)",
                              choices=("instrument", "family", "program", "program_across", "program_family"))
    contrast_dims: int = _f(0, "leading latent dimensions the contrastive term acts on (0: all)", lo=0)
    notes_per_instrument: int = _f(0, "batches built of groups of this many notes of one instrument (0: uniform "
                                   "random batches); gives the contrastive term its positives", lo=0)
    source_align: float = _f(0.0, "weight of a term that makes the SoundFonts of a multi-source train split "
                             "indistinguishable on the contrastive dimensions of mu (the maximum mean discrepancy "
                             "between each SoundFont's notes of a batch and the others'; 0: off)", lo=0.0)
    source_adversary: float = _f(0.0, "weight of a SoundFont classifier on mu trained through a reversed gradient "
                                 "(DANN, Ganin et al. 2016; vaelib/model/adversary.py): the encoder learns to leave "
                                 "the bank of a multi-source train split out of mu (0: off); one process only",
                                 lo=0.0)
    notes_per_class: int = _f(0, "batches built of groups of this many notes of one class of the contrastive term "
                              "(train.contrast_labels; 0: off): with 'program', a group mixes the program's notes "
                              "from every SoundFont, so most notes meet another bank's rendering in their batch",
                              lo=0)
    shuffle_block: int = _f(0, "rows of the feature file kept together in the epoch's order (0: every note drawn "
                            "uniformly); blocks are shuffled, then the rows of train.shuffle_window blocks at a "
                            "time, so streaming reads whole runs of rows (docs/scale.md)", lo=0)
    shuffle_window: int = _f(32, "blocks whose rows are shuffled together when train.shuffle_block > 0: a batch "
                             "draws its notes from this many blocks", lo=1)
    data: str = _f("auto", "where the train features are read from: 'memory' (one tensor on the device), "
                   "'stream' (batches read from the cache's file in a background thread), or 'auto': stream when "
                   "loading the train split would take over half the memory available (docs/scale.md); the "
                   "numbers are the same", choices=("auto", "memory", "stream"))
    prefetch: int = _f(4, "batches the stream reader reads ahead of the step (train.data stream)", lo=1, hi=1024)
    pitch_weight: float = _f(10.0, "weight of the pitch classifier's cross-entropy when model.pitch_head", lo=0.0)
    pitch_order: float = _f(0.0, "weight of the AR-VAE term ordering the last latent dimension by pitch (0: off)",
                            lo=0.0)
    # recording-chain augmentation (vaelib/model/augment.py, docs/method.md): each drawn per note and step
    augment_detune: float = _f(0.0, "largest detune of a training note, in cents (uniform in +-this; 0: off)",
                               lo=0.0, hi=100.0)
    augment_tilt: float = _f(0.0, "largest spectral tilt of a training note around 1 kHz, in dB per octave "
                             "(uniform in +-this; 0: off)", lo=0.0, hi=12.0)
    augment_eq: float = _f(0.0, "largest gain of a one-octave bell at a random centre, in dB (uniform in +-this; "
                           "0: off)", lo=0.0, hi=24.0)
    augment_reverb: float = _f(0.0, "share of training notes given an exponential reverb tail (0: off)",
                               lo=0.0, hi=1.0)
    augment_rt60: float = _f(1.0, "longest reverberation time (s, 60 dB of decay) of the tail, drawn uniformly "
                             "from 0.2 s up to it", lo=0.2, hi=10.0)
    augment_gain: float = _f(0.0, "largest gain of a training note, in dB (uniform in +-this; 0: off); only with "
                             "features.ref 'fixed': under 'max' every note's peak is 0 dB", lo=0.0, hi=40.0)
    # note-envelope augmentation (vaelib/model/augment.py): how a note decays and changes colour after its peak
    augment_decay: float = _f(0.0, "largest extra decay of a training note after its peak (its loudest bin), in dB "
                              "per second (uniform from 0 to this; 0: off)", lo=0.0, hi=120.0)
    augment_darkening: float = _f(0.0, "largest extra darkening of a training note after its peak (its loudest bin), "
                                  "in dB per octave above the lowest band per second (uniform from 0 to this; 0: off)",
                                  lo=0.0, hi=12.0)
    # masking (vaelib/model/masking.py): parts of a note hidden from the encoder, the decoder asked for all of it
    augment_mask_bands: int = _f(0, "widest band of mel bands hidden from the encoder in each training note "
                                 "(uniform from 0 to this, at a uniform position; the reconstruction's target keeps "
                                 "them; 0: off)", lo=0, hi=512)
    augment_mask_frames: int = _f(0, "widest span of frames hidden from the encoder in each training note "
                                  "(uniform from 0 to this, at a uniform position; the reconstruction's target keeps "
                                  "them; 0: off)", lo=0, hi=4096)
    mixstyle: float = _f(0.0, "share of training batches whose notes get, after each of the encoder's first two "
                         "levels, a mix of their own and another note's channel statistics (MixStyle, Zhou et al. "
                         "2021; vaelib/model/mixstyle.py); 0: off; one process only", lo=0.0, hi=1.0)
    mixstyle_alpha: float = _f(0.1, "a note's own share of the mixed statistics is drawn from Beta(alpha, alpha)",
                               lo=0.01, hi=100.0)
    device: str = _f("auto", "auto (cuda, mps, cpu in that order), cuda, mps or cpu",
                     choices=("auto", "cuda", "mps", "cpu"))
    bf16: bool = _f(True, "bf16 autocast where the hardware runs it fast")
    num_threads: int = _f(0, "torch CPU threads (0: all cores)", lo=0, hi=256)
    grad_clip: float = _f(5.0, "gradient norm clip (0: off)", lo=0.0)
    checkpoint_dir: str = _f("data/checkpoints", "checkpoints folder (one subfolder per config hash)")


_TRANSFER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class TransferSet:
    """One evaluation dataset of ``analysis.transfer``: an NSynth-layout folder, or a SoundFont rendered into one."""

    name: str = _f("", "key of its figures in metrics.json (transfer.<name>): letters, digits, '_', '-'")
    root: str = _f("", "NSynth-layout folder read as it is; with a soundfont, the folder it is rendered into "
                   "(empty: data/transfer/<SoundFont>-<settings key>)")
    soundfont: str = _f("", "a .sf2/.sf3 rendered with the run's render.* settings (a path, or a Debian file name)")


@dataclass(frozen=True)
class AnalysisConfig:
    umap: bool = _f(True, "draw the UMAP maps of 04 and of 05's listening map beside PCA (off skips its numba "
                          "compilation, which umap-learn does not cache)")
    umap_neighbors: int = _f(15, "UMAP n_neighbors", lo=2, hi=500)
    umap_min_dist: float = _f(0.1, "UMAP min_dist", lo=0.0, hi=1.0)
    knn_k: int = _f(5, "neighbours of the kNN probes", lo=1, hi=200)
    probe_folds: int = _f(5, "folds of the instrument-grouped cross-validation", lo=2, hi=20)
    interp_pairs: tuple[str, ...] = _f(
        ("keyboard:string", "brass:flute", "guitar:organ", "reed:synth_lead", "mallet:vocal", "bass:brass"),
        "pairs 'a:b' to interpolate between (04 and 05); each side a family (one of its instruments is chosen) "
        "or an instrument_str, e.g. 'keyboard:string_acoustic_012'")
    interp_pitch: int = _f(60, "MIDI pitch of the interpolated notes (nearest available)", lo=0, hi=127)
    interp_velocity: int = _f(127, "velocity of the interpolated notes (nearest available)", lo=0, hi=127)
    interp_steps: int = _f(9, "points on each path, ends included", lo=3, hi=64)
    griffin_lim_iters: int = _f(64, "Griffin-Lim iterations", lo=1, hi=1000)
    n_listen: int = _f(4, "notes rendered back to audio in 05_listening", lo=1, hi=64)
    map_train_notes: int = _f(40, "train notes on 05's listening map beside the test notes: a seeded sample, at the "
                              "velocity nearest analysis.interp_velocity", lo=0)
    map_max_notes: int = _f(240, "most notes with sound on the listening map: every test note at the velocity "
                            "nearest analysis.interp_velocity, sampled (seeded) down to this less the train notes",
                            lo=1)
    map_max_mb: float = _f(15.0, "size budget of the listening map page (MB, 10^6 bytes): the notes past it are left "
                           "out, with a warning (see docs/explore.md)", lo=4.0, hi=1000.0)
    map_griffin_lim_iters: int = _f(32, "Griffin-Lim iterations of the listening map's reconstructions", lo=1, hi=1000)
    mel_inversion: str = _f("pinv", "mel power back to linear frequency before Griffin-Lim in 05 and its map: 'pinv' "
                            "(the filterbank's pseudo-inverse, clipped at 0) or 'nnls' (librosa's solve, several "
                            "times slower for the same error where the note is; docs/explore.md)",
                            choices=MEL_INVERSES)
    transfer: tuple[TransferSet, ...] = _f((), "evaluation datasets of 04's transfer section, each "
                                           "{name, root} (an NSynth-layout folder) or {name, soundfont[, root]} "
                                           "(rendered with the run's render.* settings); empty: none")


@dataclass(frozen=True)
class ReportConfig:
    keep_code: bool = _f(False, "show code cells in the HTML reports")
    notebooks: tuple[str, ...] = _f(
        ("01_preprocess", "02_train", "03_diagnostics", "04_latent_map", "05_listening", "06_explore"),
        "notebooks executed by `vaelib run`, in order")
    retrain: bool = _f(False, "train even when a checkpoint with the same config exists")


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def _check_value(where: str, value: Any, annotation: Any, meta: dict) -> Any:
    """Coerce ``value`` to ``annotation`` (int, float, bool, str, tuple[T, ...]) or raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(annotation)
        if isinstance(value, str):
            if meta.get("whole_string"):
                value = [value.strip()] if value.strip() else []
            else:
                value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, dict) and dataclasses.is_dataclass(inner):
            value = [value]  # one entry written without the list around it
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if dataclasses.is_dataclass(inner):
            return tuple(_build_section(inner, v if isinstance(v, dict) else _not_a_mapping(f"{where}[{i}]", v),
                                        f"{where}[{i}]") for i, v in enumerate(value))
        out = tuple(_check_scalar(f"{where}[{i}]", v, inner) for i, v in enumerate(value))
        items = meta.get("items")
        for i, v in enumerate(out):
            if items is None:
                continue
            if inner is str and v not in items:
                raise ConfigError(f"{where}[{i}]: {v!r} is not one of {list(items)}")
            if inner in (int, float) and not (items[0] <= v <= items[1]):
                raise ConfigError(f"{where}[{i}]: {v!r} is outside [{items[0]}, {items[1]}]")
        return out
    value = _check_scalar(where, value, annotation)
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if lo is not None and value < lo:
        raise ConfigError(f"{where}: {value!r} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{where}: {value!r} is above the maximum {hi}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
    return value


def _not_a_mapping(where: str, value: Any) -> dict:
    raise ConfigError(f"{where}: expected a mapping of keys (e.g. {{name: fluidr3, soundfont: FluidR3_GM.sf2}}), "
                      f"got {value!r}")


def _check_scalar(where: str, value: Any, kind: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str):
            # YAML 1.1 reads 3e-4 (no dot) as a string; a number written so is still a number.
            try:
                number = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        else:
            number = float(value)
        # NaN passes every range check (each comparison is false) and an infinity is no setting either.
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {kind!r}")  # pragma: no cover


def _build_section(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    not_names = [k for k in raw if not isinstance(k, str)]
    if not_names:  # YAML reads `1:`, `null:` or `yes:` as other types than a key name
        raise ConfigError(f"{where or 'top level'}: key(s) {not_names!r} are not names; allowed: {sorted(fields)}")
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where or 'top level'}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build_section(hint, value, f"{where}.{name}" if where else name)
        else:
            key = f"{where}.{name}" if where else name
            kwargs[name] = _check_value(key, value, hint, dict(fields[name].metadata))
    return cls(**kwargs)


def interp_pair_sides(pair: str, *, where: str = "interp_pairs") -> tuple[str, str]:
    """The two sides of an interpolation pair 'a:b', each a family (``NSYNTH_FAMILIES``) or an instrument_str.

    NSynth names instruments '<family>_<source>_<number>', so a side without '_' that is no family is a
    misspelt family; whether an instrument name exists can only be told from the data (``choose_pairs``).
    An instrument whose name holds ':' cannot be named.

    Raises
    ------
    ConfigError
        Not exactly one ':', an empty side, a side that is neither a family nor an instrument name, or
        one instrument named on both sides; the message names ``where`` and the pair.
    """
    sides = pair.split(":")
    if len(sides) != 2 or not all(sides):
        raise ConfigError(f"{where}: {pair!r} is not 'a:b' (each side a family from {list(NSYNTH_FAMILIES)} or "
                          "an instrument_str such as keyboard_acoustic_004)")
    for side in sides:
        if side not in NSYNTH_FAMILIES and "_" not in side:
            close = difflib.get_close_matches(side, NSYNTH_FAMILIES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: {pair!r}: {side!r} is neither a family ({list(NSYNTH_FAMILIES)}) nor an "
                              f"instrument_str ('<family>_<source>_<number>'){hint}")
    if sides[0] == sides[1] and sides[0] not in NSYNTH_FAMILIES:
        raise ConfigError(f"{where}: {pair!r} names one instrument on both sides; a path needs two")
    return sides[0], sides[1]


_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# what reports/ holds beside the runs: the sweeps' comparison, the list of runs, its readme; and a failed
# run's kept copy, reports/<run>.failed/ (compared without case, for file systems that ignore it)
RESERVED_RUN_NAMES = ("experiments", "index.html", "README.md")


def _cross_checks(cfg: Config) -> None:
    if not _RUN_NAME.match(cfg.run.name) or ".." in cfg.run.name:
        raise ConfigError(f"run.name: {cfg.run.name!r} is not a folder name (letters, digits, '.', '_', '-', "
                          "starting with a letter or digit): the run is written to reports/<run.name>/")
    if cfg.run.name.lower() in {n.lower() for n in RESERVED_RUN_NAMES} or cfg.run.name.lower().endswith(".failed"):
        raise ConfigError(f"run.name: {cfg.run.name!r} is taken by reports/ itself ({', '.join(RESERVED_RUN_NAMES)} "
                          "and <run>.failed, a failed run's kept copy): choose another name")
    if cfg.data.pitch_min > cfg.data.pitch_max:
        raise ConfigError(f"data.pitch_min ({cfg.data.pitch_min}) is above data.pitch_max ({cfg.data.pitch_max})")
    if cfg.render.pitch_min > cfg.render.pitch_max:
        raise ConfigError(
            f"render.pitch_min ({cfg.render.pitch_min}) is above render.pitch_max ({cfg.render.pitch_max})")
    if cfg.data.valid_fraction + cfg.data.test_fraction >= 0.9:
        raise ConfigError("data.valid_fraction + data.test_fraction must leave at least 10% of instruments "
                          f"for training, got {cfg.data.valid_fraction} + {cfg.data.test_fraction}")
    if len(cfg.model.channels) != cfg.model.depth:
        raise ConfigError(f"model.channels {list(cfg.model.channels)} must have model.depth={cfg.model.depth} entries")
    if cfg.features.fmax > cfg.features.sample_rate / 2:
        raise ConfigError(f"features.fmax ({cfg.features.fmax}) is above Nyquist ({cfg.features.sample_rate / 2})")
    if cfg.features.fmin >= cfg.features.fmax:
        raise ConfigError(f"features.fmin ({cfg.features.fmin}) must be below features.fmax ({cfg.features.fmax})")
    if cfg.model.pitch_dims > cfg.model.latent_dim:
        raise ConfigError(f"model.pitch_dims ({cfg.model.pitch_dims}) is above model.latent_dim "
                          f"({cfg.model.latent_dim})")
    if cfg.train.contrast_dims > cfg.model.latent_dim:
        raise ConfigError(f"train.contrast_dims ({cfg.train.contrast_dims}) is above model.latent_dim "
                          f"({cfg.model.latent_dim})")
    orders = {key: getattr(cfg.train, key) for key in ("notes_per_instrument", "notes_per_class", "shuffle_block")}
    chosen = [f"train.{key} ({value})" for key, value in orders.items() if value]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} are {len(chosen)} orders of the epoch's notes: keep one, set the "
                          "others to 0")
    for key in ("notes_per_instrument", "notes_per_class"):
        if orders[key] and cfg.train.batch_size % orders[key]:
            raise ConfigError(f"train.batch_size ({cfg.train.batch_size}) must be a multiple of "
                              f"train.{key} ({orders[key]}): batches hold whole groups")
    if cfg.train.notes_per_class and not cfg.train.contrast:
        raise ConfigError(f"train.notes_per_class ({cfg.train.notes_per_class}) groups notes by the classes of the "
                          "contrastive term, which is off (train.contrast 0): set train.contrast > 0, or use "
                          "train.notes_per_instrument")
    if cfg.train.augment_gain and cfg.features.ref == "max":
        raise ConfigError(f"train.augment_gain ({cfg.train.augment_gain}) changes nothing with features.ref 'max', "
                          "which puts every note's peak at 0 dB: set it to 0, or features.ref to 'fixed'")
    for key, size, what in (("augment_mask_bands", cfg.features.n_mels, "features.n_mels"),
                            ("augment_mask_frames", cfg.features.frames, "features.frames")):
        if getattr(cfg.train, key) >= size:
            raise ConfigError(f"train.{key} ({getattr(cfg.train, key)}) would hide the whole note: it must be below "
                              f"{what} ({size})")
    for pair in cfg.analysis.interp_pairs:
        interp_pair_sides(pair, where="analysis.interp_pairs")
    _check_soundfont_params(cfg)
    _check_transfer(cfg.analysis.transfer)


def soundfont_list(spec: str | tuple[str, ...] | list[str]) -> list[str]:
    """``render.soundfont`` as a list: one path given as a string (the form of earlier params) is a list of one."""
    if isinstance(spec, str):
        return [spec] if spec.strip() else []
    return [s for s in spec if s.strip()]


def _check_soundfont_params(cfg: Config) -> None:
    fonts = soundfont_list(cfg.render.soundfont)
    for i, font in enumerate(fonts):
        if Path(font).suffix.lower() not in SOUNDFONT_SUFFIXES:
            raise ConfigError(f"render.soundfont[{i}]: {font!r} is not a .sf2 or .sf3 file")
    names = [Path(f).name for f in fonts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"render.soundfont: {twice} named twice; every source needs its own file name (the "
                          "`soundfont` field and data.test_soundfonts tell sources apart by it)")
    for i, name in enumerate(cfg.data.test_soundfonts):
        if "/" in name or Path(name).suffix.lower() not in SOUNDFONT_SUFFIXES:
            raise ConfigError(f"data.test_soundfonts[{i}]: {name!r} is not a SoundFont file name (e.g. "
                              "FluidR3_GM.sf2, without its folder)")
    if cfg.data.test_soundfonts and cfg.render.enabled and fonts:
        unknown = [n for n in cfg.data.test_soundfonts if n not in names]
        if unknown:
            raise ConfigError(f"data.test_soundfonts: {unknown} not among the sources of render.soundfont {names}")
        if len(set(cfg.data.test_soundfonts)) == len(names):
            raise ConfigError(f"data.test_soundfonts: {list(cfg.data.test_soundfonts)} holds out every source of "
                              "render.soundfont, leaving nothing to train on")


def _check_transfer(sets: tuple[TransferSet, ...]) -> None:
    seen: dict[str, int] = {}
    for i, t in enumerate(sets):
        where = f"analysis.transfer[{i}]"
        if not t.name:
            raise ConfigError(f"{where}: 'name' is missing (the key of its figures, transfer.<name>)")
        if not _TRANSFER_NAME.match(t.name):
            raise ConfigError(f"{where}.name: {t.name!r} is not a plain name (letters, digits, '_', '-', starting "
                              "with a letter or digit)")
        if t.name in seen:
            raise ConfigError(f"{where}.name: {t.name!r} is also the name of analysis.transfer[{seen[t.name]}]")
        seen[t.name] = i
        if not t.root and not t.soundfont:
            raise ConfigError(f"{where} ({t.name}): give 'root' (an NSynth-layout folder) or 'soundfont' (a .sf2/.sf3 "
                              "to render), or both")
        if t.soundfont and Path(t.soundfont).suffix.lower() not in SOUNDFONT_SUFFIXES:
            raise ConfigError(f"{where}.soundfont: {t.soundfont!r} is not a .sf2 or .sf3 file")


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if value is None and isinstance(out.get(key), dict):
            continue  # an empty section ('train:' with nothing under it) changes nothing of its base
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """Turn ``section.key=value`` (value parsed as YAML) into a nested dict."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {text!r}: the key must be section.key, e.g. train.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({' '.join(str(exc).split())})") from exc
    return {parts[0]: {parts[1]: value}}


def config_from_dict(raw: dict, *, where: str = "params") -> Config:
    """Validate a nested mapping into a Config."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type(raw).__name__}")
    raw = {k: v for k, v in raw.items() if k != "base"}
    try:
        cfg = _build_section(Config, raw, "")
        _cross_checks(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: safe_load keeps the
    last silently, so an edit lower in a file would undo one above it unseen."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged by the base class, not a key
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool, type(None))):
                continue  # an unhashable key: construct_mapping refuses it itself
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice in one mapping",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        # one line: PyYAML's context lines would follow the error in a terminal
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = raw.get("base")
    if base is not None:
        # An experiment file names the params it extends, relative to itself.
        base_path = (path.parent / str(base)).resolve()
        chain = (*_chain, path.resolve())
        if base_path == path.resolve():
            raise ConfigError(f"{path}: 'base' points at the file itself")
        if base_path in chain:
            raise ConfigError(f"{path}: 'base' chain goes round in a circle: "
                              + " -> ".join(str(p) for p in (*chain, base_path)))
        raw = _merge(_read_yaml(base_path, chain), {k: v for k, v in raw.items() if k != "base"})
    return raw


def load_config(path: str | os.PathLike | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """Load a params YAML (``base:`` chains allowed), apply ``section.key=value`` overrides, validate.

    Raises
    ------
    ConfigError
        On a missing file, bad YAML, an unknown key, a wrong type or an out-of-range value; the
        message names the file and the key.
    """
    raw: dict = {}
    where = "defaults"
    if path is not None:
        path = Path(path)
        raw = _read_yaml(path)
        where = str(path)
    for text in overrides:
        raw = _merge(raw, parse_override(text))
    return config_from_dict(raw, where=where)


def config_to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists) of a Config or one of its sections, for YAML/JSON."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def section_hash(*sections: Any, extra: Any = None, length: int = 12) -> str:
    """Stable short hash of config sections (dataclasses, or the plain dicts of them) and any JSON-able
    extra, for cache and checkpoint keys."""
    payload = json.dumps([config_to_dict(s) if dataclasses.is_dataclass(s) else s for s in sections] + [extra],
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


# FeatureConfig fields that change where or how fast features are built, not what a log-mel holds.
FEATURE_RUNTIME_ONLY = ("batch_size", "workers", "cache_dir")


def feature_representation(cfg: FeatureConfig) -> dict:
    """The feature parameters that define the log-mel (every field but ``FEATURE_RUNTIME_ONLY``): what
    a feature cache is keyed by and what a checkpoint's input must match."""
    return {k: v for k, v in config_to_dict(cfg).items() if k not in FEATURE_RUNTIME_ONLY}


def project_relative(path: str | os.PathLike) -> str:
    """A path as written in committed files and reports: relative to the project root when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def resolve_path(path: str) -> Path:
    """A params path: $VARS and ~ expanded, relative paths taken from the project root."""
    expanded = os.path.expanduser(os.path.expandvars(path))
    if "$" in expanded:
        raise ConfigError(f"path {path!r}: environment variable not set ({expanded!r})")
    p = Path(expanded)
    return p if p.is_absolute() else PROJECT_ROOT / p


def cli_path(path: str) -> Path:
    """A path given on the command line: $VARS and ~ expanded, relative paths taken from the current folder, as
    the shell and ``--params`` take them (a params file's own paths are taken from the project root)."""
    expanded = os.path.expanduser(os.path.expandvars(path))
    if "$" in expanded:
        raise ConfigError(f"path {path!r}: environment variable not set ({expanded!r})")
    return Path(expanded).absolute()


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from vaelib.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))



def params_reference() -> str:
    """A markdown table of every parameter: key, type, default, allowed values, help (for the README)."""
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    hints_cfg = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        cls = hints_cfg[section.name]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meta = f.metadata
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kind = getattr(hints[f.name], "__name__", str(hints[f.name]).replace("typing.", ""))
            if meta.get("choices"):
                allowed = ", ".join(map(str, meta["choices"]))
            elif meta.get("lo") is not None or meta.get("hi") is not None:
                lo, hi = ("" if meta.get(b) is None else meta[b] for b in ("lo", "hi"))
                allowed = f"{lo}..{hi}"
            elif meta.get("items"):
                allowed = "items: " + ", ".join(map(str, meta["items"]))
            else:
                allowed = ""
            default_text = json.dumps(list(default) if isinstance(default, tuple) else default)
            lines.append(f"| `{section.name}.{f.name}` | {kind} | `{default_text}` | {allowed} | "
                         f"{meta.get('help', '').replace('|', '/')} |")
            args = typing.get_args(hints[f.name])
            if args and dataclasses.is_dataclass(args[0]):
                # a list of mappings: one row per key of an entry
                entry_hints = typing.get_type_hints(args[0])
                for g in dataclasses.fields(args[0]):
                    kind = getattr(entry_hints[g.name], "__name__", str(entry_hints[g.name]))
                    lines.append(f"| `{section.name}.{f.name}[].{g.name}` | {kind} | `{json.dumps(g.default)}` |  | "
                                 f"{g.metadata.get('help', '').replace('|', '/')} |")
    return "\n".join(lines)
