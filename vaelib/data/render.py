"""Render the embedded default dataset: General MIDI programs played note by note into NSynth layout.

Each GM program of a SoundFont is one instrument; its family and source follow the table in
``docs/data.md``. Every note is 4 s at 16 kHz: the key held for 3 s, then released. Several
SoundFonts (``render.soundfont`` as a list) render into one dataset: each program of each source is an
instrument, named with its source's prefix (``vaelib.data.soundfonts.source_prefix``), and every note
records its ``soundfont`` (file name) and GM ``program``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from vaelib.config import NSYNTH_FAMILIES, NSYNTH_SOURCES, RenderConfig, section_hash
from vaelib.data.generated_banks import GENERATED
from vaelib.data.nsynth import QUALITIES
from vaelib.data.soundfonts import (
    default_soundfont,
    present_soundfonts,
    resolve_soundfonts,
    soundfont_digest,
    source_names,
    source_prefix,
)
from vaelib.exceptions import DataError, ParameterError
from vaelib.io import atomic_write_json

__all__ = ["GM_FAMILY_SOURCE", "RENDER_SUMMARY", "default_soundfont", "render_note", "render_dataset", "note_qualities",
           "render_programs", "render_settings", "settings_key", "instrument_programs", "rendered_summary",
           "rendered_sources", "check_rendered"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
HOLD_S = 3.0
NOTE_S = 4.0
MAX_PEAK = 0.99  # full scale of 16-bit PCM, with a little headroom


def _table() -> dict[int, tuple[str, str]]:
    a, e, s = "acoustic", "electronic", "synthetic"
    rows = {
        "bass": [(32, a)] + [(p, e) for p in range(33, 38)] + [(38, s), (39, s)],
        "brass": [(p, a) for p in range(56, 62)] + [(62, s), (63, s)],
        "flute": [(p, a) for p in range(72, 80)],
        "guitar": [(24, a), (25, a)] + [(p, e) for p in range(26, 32)] + [(105, a), (106, a), (107, a)],
        "keyboard": [(0, a), (1, a), (2, e), (3, a), (4, e), (5, e), (6, a), (7, e)],
        "mallet": [(p, a) for p in range(8, 16)] + [(108, a)],
        "organ": [(16, e), (17, e), (18, e), (19, a), (20, a), (21, a), (23, a)],
        "reed": [(p, a) for p in range(64, 72)] + [(22, a), (109, a), (111, a)],
        "string": [(p, a) for p in range(40, 47)] + [(48, a), (49, a), (50, s), (51, s), (110, a)],
        "synth_lead": [(p, s) for p in range(80, 91)] + [(92, s)],
        "vocal": [(52, a), (53, a), (54, s), (91, s)],
    }
    return {prog: (fam, src) for fam, progs in rows.items() for prog, src in progs}


GM_FAMILY_SOURCE: dict[int, tuple[str, str]] = dict(sorted(_table().items()))
RENDER_SUMMARY = "render_summary.json"  # written beside examples.json by every render


def _instrument_names(programs: list[int]) -> dict[int, str]:
    """``<family>_<source>_<index:03d>``, indices counted per family and source in program order."""
    counters: dict[tuple[str, str], int] = {}
    names = {}
    for prog in sorted(programs):
        fam, src = GM_FAMILY_SOURCE[prog]
        idx = counters.get((fam, src), 0)
        counters[(fam, src)] = idx + 1
        names[prog] = f"{fam}_{src}_{idx:03d}"
    return names


def render_programs(cfg: RenderConfig) -> list[int]:
    """The GM programs ``cfg`` renders, sorted (``render.programs``, or every mapped one when empty).

    Raises
    ------
    ParameterError
        A program is not in ``GM_FAMILY_SOURCE``.
    """
    programs = sorted(set(cfg.programs)) if cfg.programs else list(GM_FAMILY_SOURCE)
    unknown = [p for p in programs if p not in GM_FAMILY_SOURCE]
    if unknown:
        raise ParameterError(f"render.programs {unknown}: not in the GM -> NSynth family table "
                             f"(allowed: {sorted(GM_FAMILY_SOURCE)})")
    return programs


def _source_prefixes(fonts: list[str]) -> list[str | None]:
    """The instrument-name prefix of every source file name: None for a render of one source, whose names
    stay NSynth's ``<family>_<source>_<index>``.

    Raises
    ------
    ParameterError
        Two file names give one prefix.
    """
    if len(fonts) == 1:
        return [None]
    prefixes = [source_prefix(f) for f in fonts]
    twice = sorted({p for p in prefixes if prefixes.count(p) > 1})
    if twice:
        clash = [f for f, p in zip(fonts, prefixes) if p in twice]
        raise ParameterError(f"render.soundfont {clash}: these file names give one instrument prefix {twice}; "
                             "rename one of the files")
    return list(prefixes)


def _prefixed(prefix: str | None, name: str) -> str:
    return f"{prefix}_{name}" if prefix else name


def instrument_programs(cfg: RenderConfig) -> dict[str, int]:
    """``instrument_str`` -> GM program of every instrument ``cfg`` renders (no file is read).

    A dataset rendered before notes recorded their ``program`` is named by the same rule, so this
    recovers its programs from the render settings it was made with.
    """
    programs = render_programs(cfg)
    base = _instrument_names(programs)
    fonts = source_names(cfg.soundfont)
    return {_prefixed(prefix, base[prog]): prog for prefix in _source_prefixes(fonts) for prog in programs}


def render_settings(cfg: RenderConfig) -> dict:
    """What a render's notes depend on: the sources' file names, programs, pitches, velocities, levels,
    and (``generated``) the format of each SoundFont the project writes itself (``vaelib_fm.sf2``,
    ``vaelib_sub.sf2``), whose file name stays when its generator changes. Not ``enabled`` or ``workers``,
    which change whether and how fast a render runs, not what it makes."""
    names = source_names(cfg.soundfont)
    settings = {
        "soundfonts": names, "programs": render_programs(cfg),
        "pitches": list(range(cfg.pitch_min, cfg.pitch_max + 1, cfg.pitch_step)),
        "velocities": sorted(cfg.velocities), "silence_db": cfg.silence_db, "gain_db": cfg.gain_db,
    }
    generated = {name: GENERATED[name].format for name in names if name in GENERATED}
    if generated:  # only then: the keys of every other render stay as they were
        settings["generated"] = generated
    return settings


def settings_key(cfg: RenderConfig) -> str:
    """A short hash of :func:`render_settings`, naming a folder rendered with them."""
    return section_hash(extra=render_settings(cfg), length=10)


def render_note(synth, channel: int, pitch: int, velocity: int, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Play one note on a loaded ``tinysoundfont.Synth``: held 3 s, released, 4 s in all.

    Returns
    -------
    [shape=(4 * sample_rate,)] float32 mono (the stereo mix averaged).
    """
    hold = int(HOLD_S * sample_rate)
    total = int(NOTE_S * sample_rate)
    synth.noteon(channel, pitch, velocity)
    held = np.frombuffer(synth.generate(hold), dtype=np.float32)
    synth.noteoff(channel, pitch)
    tail = np.frombuffer(synth.generate(total - hold), dtype=np.float32)
    # Silence every voice so the next note starts from the same state, whatever came before.
    synth.sounds_off()
    synth.generate(sample_rate // 10)
    stereo = np.concatenate([held, tail]).reshape(-1, 2)
    # (left + right) / 2 in float32: stereo.mean(axis=1)'s values (but the sign of a zero), which it reduced
    # pair by pair at 25x the time, a third of the render; the int16 wavs are the same bytes
    return (stereo[:, 0] + stereo[:, 1]) * np.float32(0.5)


def _frame_rms_db(audio: np.ndarray, frame: int = 400) -> np.ndarray:
    n = len(audio) // frame
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-10))


def note_qualities(audio: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> list[int]:
    """Heuristic NSynth quality flags from the envelope (only the envelope ones are measured).

    fast_decay: the level has fallen 30 dB below its peak before the release (3 s);
    long_release: the last 0.25 s is within 50 dB of the peak; percussive: the peak comes in the
    first 100 ms and 1 s later the level is 20 dB down. The spectral flags stay 0.
    """
    frame = sample_rate // 40  # 25 ms
    db = _frame_rms_db(audio, frame)
    peak_i = int(np.argmax(db))
    peak = db[peak_i]
    per_s = sample_rate // frame
    flags = dict.fromkeys(QUALITIES, 0)
    flags["fast_decay"] = int(db[int(HOLD_S * per_s) - 1] < peak - 30)
    flags["long_release"] = int(db[-per_s // 4:].max() > peak - 50)
    one_s_later = min(len(db) - 1, peak_i + per_s)
    flags["percussive"] = int(peak_i < per_s // 10 + 1 and db[one_s_later] < peak - 20)
    return [flags[q] for q in QUALITIES]


def _render_program(args: tuple) -> list[dict]:
    """Worker: render every note of one program into ``audio_dir``; returns the kept entries."""
    sf_path, prog, name, pitches, velocities, silence_db, gain_db, audio_dir = args
    import tinysoundfont

    synth = tinysoundfont.Synth(gain=gain_db, samplerate=SAMPLE_RATE)
    try:
        sfid = synth.sfload(str(sf_path))
    except RuntimeError as exc:  # tinysoundfont's only word on a file it cannot parse
        raise DataError(f"{sf_path}: tinysoundfont could not read this SoundFont ({exc}): the file went away "
                        "since its header was checked, or its contents are damaged or in a form it does not "
                        "know") from exc
    if synth.sfpreset_name(sfid, 0, prog) is None:
        return [{"missing_program": prog, "soundfont": Path(sf_path).name}]
    synth.program_select(0, sfid, 0, prog)
    fam, src = GM_FAMILY_SOURCE[prog]
    entries = []
    for pitch in pitches:
        for vel in velocities:
            audio = render_note(synth, 0, pitch, vel)
            level = _frame_rms_db(audio).max()
            note_str = f"{name}-{pitch:03d}-{vel:03d}"
            if level < silence_db:
                entries.append({"note_str": note_str, "dropped": True, "level_db": float(level)})
                continue
            peak = float(np.abs(audio).max())
            limited = peak > MAX_PEAK
            if limited:
                # A few GM presets are far louder than the rest: scale those notes down rather than
                # clip them (the log-mel reference is each note's own peak, so the features agree).
                audio = audio * (MAX_PEAK / peak)
            pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
            wav = Path(audio_dir) / f"{note_str}.wav"
            try:
                sf.write(wav, pcm, SAMPLE_RATE, subtype="PCM_16")
            except (sf.LibsndfileError, OSError) as exc:  # the render's temp folder is removed by the caller
                raise DataError(f"{wav}: could not write the rendered note ({exc}; is the disk full?)") from exc
            quals = note_qualities(audio)
            entries.append({
                "note_str": note_str, "dropped": False, "instrument_str": name, "program": prog,
                "soundfont": Path(sf_path).name,
                "instrument_family_str": fam, "instrument_source_str": src,
                "pitch": pitch, "velocity": vel, "qualities": quals, "limited_peak": peak if limited else None,
            })
    return entries


def render_dataset(cfg: RenderConfig, out_dir: str | Path, *, show_progress: bool = True) -> dict:
    """Render the GM programs of every SoundFont of ``cfg`` into one NSynth split folder ``out_dir``.

    The dataset is built in a temporary sibling folder and renamed into place when complete, so an
    interrupted render never leaves a half dataset at ``out_dir``. Same inputs give byte-identical
    files: each program renders in a fresh synth, and ``examples.json`` is written with sorted keys.
    A program a SoundFont has no preset for is left out, with a warning, and listed in the summary.

    Returns
    -------
    Summary: notes written, notes dropped as near-silent, instruments, SoundFont path(s) and their SHA-256
    digests, settings.

    Raises
    ------
    ParameterError
        ``out_dir`` exists, a program is not in the GM mapping, a SoundFont is not .sf2/.sf3 or is
        missing (naming the Debian package of a known one), two sources share a file name or prefix.
    DataError
        A SoundFont's bytes changed while the notes were rendered (its digest is taken before and after).
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ParameterError(f"{out_dir}: already exists; remove it to render again")
    sf_paths = resolve_soundfonts(cfg.soundfont)
    digests = {p.name: soundfont_digest(p) for p in sf_paths}
    names_twice = sorted({p.name for p in sf_paths if [q.name for q in sf_paths].count(p.name) > 1})
    if names_twice:
        raise ParameterError(f"render.soundfont: {names_twice} given twice; every source needs its own file name")
    programs = render_programs(cfg)
    prefixes = _source_prefixes([p.name for p in sf_paths])
    pitches = list(range(cfg.pitch_min, cfg.pitch_max + 1, cfg.pitch_step))
    velocities = sorted(cfg.velocities)
    base = _instrument_names(programs)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "audio").mkdir()
        jobs = [(sf_path, p, _prefixed(prefix, base[p]), pitches, velocities, cfg.silence_db, cfg.gain_db,
                 tmp / "audio") for sf_path, prefix in zip(sf_paths, prefixes) for p in programs]
        results: list[list[dict]] = []
        bar = tqdm(total=len(jobs) * len(pitches) * len(velocities), desc="render", unit="note",
                   disable=not show_progress)
        if cfg.workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=min(cfg.workers, os.cpu_count() or 1)) as pool:
                for res in pool.map(_render_program, jobs):
                    results.append(res)
                    bar.update(len(pitches) * len(velocities))
        else:
            for job in jobs:
                results.append(_render_program(job))
                bar.update(len(pitches) * len(velocities))
        bar.close()
        missing: dict[str, list[int]] = {}
        for res in results:
            for e in res:
                if "missing_program" in e:
                    missing.setdefault(e["soundfont"], []).append(e["missing_program"])
        for font, progs in missing.items():
            log.warning("%s has no preset for GM program(s) %s (bank 0): left out", font, progs)
        changed = [p.name for p in sf_paths if soundfont_digest(p) != digests[p.name]]
        if changed:
            raise DataError(f"render.soundfont: {changed} changed while the notes were rendered from them; nothing "
                            f"was written to {out_dir}: render again once the files are final")
        examples, dropped = _examples_json(results)
        heard = {e.get("soundfont") for e in examples.values()}
        for font in (p for p in sf_paths if p.name not in heard):
            if len(missing.get(font.name, [])) == len(programs):
                why = f"it has a preset for none of the GM programs asked ({sorted(programs)}, bank 0)"
            else:  # e.g. presets whose samples are all zeros behind an intact header
                why = (f"every note rendered from it is near-silent (below render.silence_db {cfg.silence_db:g} "
                       "dBFS): its sample data is empty or damaged, or its presets do not sound at render.pitch_min"
                       f"..pitch_max ({cfg.pitch_min}-{cfg.pitch_max})")
            raise DataError(f"{font}: no note of it was kept: {why}; nothing was written to {out_dir}")
        limited = {e["note_str"]: round(e["limited_peak"], 3) for r in results for e in r
                   if not e.get("dropped", True) and e["limited_peak"] is not None}
        if limited:
            log.warning("%d notes would have clipped (peaks up to %.2f) and were scaled to a peak of %.2f",
                        len(limited), max(limited.values()), MAX_PEAK)
        atomic_write_json(tmp / "examples.json", examples)
        summary = {
            **({"soundfont": str(sf_paths[0])} if len(sf_paths) == 1 else {}),  # the key of one-source summaries
            "soundfonts": [str(p) for p in sf_paths],
            "soundfont_digests": digests,
            "notes": len(examples), "dropped_silent": len(dropped),
            "instruments": len(jobs) - sum(len(v) for v in missing.values()), "pitches": pitches,
            "velocities": velocities, "scaled_to_avoid_clipping": len(limited),
            "missing_programs": missing, "settings": render_settings(cfg),
        }
        atomic_write_json(tmp / RENDER_SUMMARY,
                          {**summary, "dropped_notes": dropped, "scaled_notes_peaks": limited})
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("rendered %d notes of %d instruments from %d SoundFont(s) into %s; %d near-silent notes dropped",
             summary["notes"], summary["instruments"], len(sf_paths), out_dir, summary["dropped_silent"])
    return summary


def rendered_summary(root: str | Path) -> dict | None:
    """The render summary of a dataset folder, or None when vaelib did not render it (or it is unreadable)."""
    path = Path(root) / RENDER_SUMMARY
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return raw if isinstance(raw, dict) else None


def rendered_sources(summary: dict) -> list[str]:
    """The SoundFont file names a render summary records (one ``soundfont`` path in earlier summaries)."""
    fonts = summary.get("soundfonts") or summary.get("soundfont") or []
    return [Path(f).name for f in ([fonts] if isinstance(fonts, str) else fonts)]


def check_rendered(root: str | Path, cfg: RenderConfig, *, asked_by: str, folder_key: str, hint: str = "",
                   strict: bool = False) -> None:
    """Refuse a dataset vaelib rendered from other SoundFonts than ``cfg`` names, or from files of those
    names whose bytes have changed since (when its summary records their digests), or, with ``strict``,
    with other settings, when its summary records them. A folder without a render summary passes.

    Parameters
    ----------
    asked_by, folder_key : the parameters that name the sources and the folder, for the message.
    hint : a last clause of the message (another way out).

    Raises
    ------
    DataError
        Naming the folder, what it was rendered from and what the params ask for.
    A SoundFont that is not on this machine is compared by its name only (with a warning), so a rendered
    folder stays readable where the file is not installed.
    """
    summary = rendered_summary(root)
    if summary is None:
        return
    have, want = rendered_sources(summary), source_names(cfg.soundfont)
    tail = f"; {hint}" if hint else ""
    if have and have != want:
        raise DataError(f"{root}: rendered from {have}, but {asked_by} names {want}: set {folder_key} to another "
                        f"folder (a render is keyed by its sources), or remove this one to render it again{tail}")
    recorded, settings = summary.get("settings"), render_settings(cfg)
    made = recorded.get("generated") if isinstance(recorded, dict) else None
    for name, fmt in settings.get("generated", {}).items():
        found = made.get(name) if isinstance(made, dict) else None
        if found != fmt:
            raise DataError(f"{root}: rendered from another version of the project's own {name} "
                            f"({found or 'its format not recorded'}; this code writes {fmt!r}): set {folder_key} "
                            f"to another folder, or remove this one to render it again{tail}")
    digests = summary.get("soundfont_digests")
    if isinstance(digests, dict):  # summaries written before renders recorded them: the names only
        for name, path in zip(want, present_soundfonts(cfg.soundfont)):
            if name not in digests:
                continue
            if path is None:  # the notes are here: a machine without the file can still read them
                log.warning("%s: %s not found, so its bytes cannot be compared with those %s was rendered from; "
                            "read by its name", asked_by, name, root)
            elif soundfont_digest(path) != digests[name]:
                raise DataError(f"{root}: rendered from another {name} than {path} is now (its bytes differ: "
                                f"the file was edited or replaced since): set {folder_key} to another folder, or "
                                f"remove this one to render it again{tail}")
    if strict and isinstance(recorded, dict) and recorded != settings:
        differ = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
        raise DataError(f"{root}: rendered with other render settings than the run's (they differ in {differ}): "
                        f"set {folder_key} to another folder, or remove this one to render it again{tail}")


def _examples_json(results: list[list[dict]]) -> tuple[dict, list[str]]:
    """Every kept note as an NSynth entry (plus ``soundfont`` and ``program``); the dropped notes' names.
    ``results`` holds one list per (source, program) job in source then program order: the instrument id
    counts those jobs, so one source's ids are those a render of it alone gives."""
    examples: dict[str, dict] = {}
    dropped: list[str] = []
    note_id = 0
    instrument = -1
    for entries in results:
        if entries and "missing_program" in entries[0]:
            continue
        instrument += 1
        for e in entries:
            if e["dropped"]:
                dropped.append(e["note_str"])
                continue
            examples[e["note_str"]] = {
                "note": note_id,
                "note_str": e["note_str"],
                "instrument": instrument,
                "instrument_str": e["instrument_str"],
                "instrument_family": NSYNTH_FAMILIES.index(e["instrument_family_str"]),
                "instrument_family_str": e["instrument_family_str"],
                "instrument_source": NSYNTH_SOURCES.index(e["instrument_source_str"]),
                "instrument_source_str": e["instrument_source_str"],
                "pitch": e["pitch"],
                "velocity": e["velocity"],
                "sample_rate": SAMPLE_RATE,
                "qualities": e["qualities"],
                "qualities_str": [q for q, f in zip(QUALITIES, e["qualities"]) if f],
                "soundfont": e["soundfont"],
                "program": e["program"],
            }
            note_id += 1
    return examples, dropped
