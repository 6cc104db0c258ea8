"""`vaelib embed`: mu and logvar of every note of an NSynth-layout folder, from a checkpoint; `vaelib encode`:
mu and logvar of sound files of one's own, placed on the map of a run's notes (a PNG, and a listening map page
that plays them)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from pathlib import Path

from vaelib.config import DATA_DIR, cli_path, load_config, resolve_path
from vaelib.exceptions import CheckpointError, ParameterError
from vaelib.io import os_error_text, writable_folder

__all__ = ["register", "cmd_embed", "cmd_encode"]


def cmd_embed(args: argparse.Namespace) -> int:
    from vaelib.analysis.latent import embed

    cfg = load_config(args.params, args.overrides)
    out = cli_path(args.out) if args.out else DATA_DIR / "embeddings" / f"{cfg.run.name}.parquet"
    # where the table goes is checked before the features and the encoding, not after them
    _output(out, "--out", "Parquet")
    data = cli_path(args.data) if args.data else None
    _outputs_apart([("--out", out)], [], [("--data" if data else "data.root", data or resolve_path(cfg.data.root))])
    checkpoint = _checkpoint(args, cfg)
    _outputs_apart([("--out", out)], [_checkpoint_input(args, checkpoint)])
    table = embed(Path(checkpoint), data, cfg=cfg, out=out, show_progress=not args.quiet)
    print(json.dumps({"out": str(out), "checkpoint": str(checkpoint), "notes": len(table),
                      "by_split": table["split"].value_counts().sort_index().to_dict()}, indent=2))
    return 0


def _checkpoint(args: argparse.Namespace, cfg) -> Path:
    """``--checkpoint``, or the finished training of the params (its feature cache built if missing)."""
    if args.checkpoint:
        return cli_path(args.checkpoint)
    from vaelib.data.prepare import prepare_features
    from vaelib.model.checkpoint import find_checkpoint

    checkpoint = find_checkpoint(cfg, prepare_features(cfg, show_progress=not args.quiet))
    if checkpoint is None:
        raise CheckpointError("no finished training matches these params: run `vaelib train` "
                              "(or 02_train) first, or pass --checkpoint")
    return checkpoint


def _checkpoint_input(args: argparse.Namespace, checkpoint: Path) -> tuple[str, Path]:
    """The checkpoint as an input the outputs must not replace, named as it came: ``--checkpoint`` (returned by
    ``_checkpoint`` without any work, so checked before it), or the one found for the params."""
    return ("--checkpoint" if args.checkpoint else "checkpoint"), checkpoint


def _output(path: Path, flag: str, suffix: str) -> Path:
    """Check an output file's place before any work: not a folder, in a folder that can be written."""
    if path.is_dir():
        raise ParameterError(f"{flag} {path}: is a folder; expected the path of a {suffix} file")
    try:
        writable_folder(path.parent)
    except OSError as exc:
        raise ParameterError(f"{flag} {path}: {os_error_text(exc)}") from exc
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _outputs_apart(outputs: list[tuple[str, Path]], inputs: list[tuple[str, Path]],
                   folders: list[tuple[str, Path]] = ()) -> None:
    """Refuse, before any work, outputs that name one file together or that would overwrite an input: a file
    given as input, or a file already inside an input folder (a dataset's metadata or audio)."""
    for i, (flag, path) in enumerate(outputs):
        for other_flag, other in outputs[i + 1:]:
            if _same_file(path, other):
                raise ParameterError(f"{flag} and {other_flag} both name {path}: each output needs a file of its own")
        for in_flag, source in inputs:
            if _same_file(path, source):
                raise ParameterError(f"{flag} {path} is the {in_flag} file: writing there would replace it; "
                                     "choose another path")
        for in_flag, folder in folders:
            # a table written there before (.parquet) may be written again; the dataset's own files may not
            if (path.exists() and path.suffix.lower() != ".parquet"
                    and path.resolve().is_relative_to(folder.resolve())):
                raise ParameterError(f"{flag} {path} is a file of the {in_flag} folder {folder}: writing there "
                                     "would replace it; choose another path")


def cmd_encode(args: argparse.Namespace) -> int:
    from types import SimpleNamespace

    from vaelib.analysis.encode import (
        encode_sounds,
        find_sounds,
        nearest_notes,
        place_on_map,
        read_sounds,
        sounds_table,
        write_sounds_table,
    )
    from vaelib.analysis.latent import checkpoint_config
    from vaelib.analysis.latent_cache import run_latents
    from vaelib.analysis.listening import placed_map
    from vaelib.data.prepare import prepare_features
    from vaelib.io import atomic_path
    from vaelib.model.checkpoint import load_model, model_differences
    from vaelib.report.explorer import figure_png, map_figure
    from vaelib.report.listening_map import write_map_page

    cfg = load_config(args.params, args.overrides)
    # where the results go is checked before the files are read, the features built or anything encoded
    out = _output(cli_path(args.out), "--out", "Parquet")
    map_png = _output(cli_path(args.map) if args.map else out.with_suffix(".map.png"), "--map", "PNG")
    map_html = _output(cli_path(args.map_html) if args.map_html else out.with_suffix(".map.html"),
                       "--map-html", "HTML")
    files = find_sounds(args.paths)
    outputs = [("--out", out), ("--map", map_png), ("--map-html", map_html)]
    _outputs_apart(outputs, [("sound", f) for f in files])
    checkpoint = _checkpoint(args, cfg)
    _outputs_apart(outputs, [_checkpoint_input(args, checkpoint)])
    model, ckpt = load_model(checkpoint)
    differences = model_differences(ckpt, cfg, Path(checkpoint))
    if differences:
        warnings.warn(f"{checkpoint}: encoding with the checkpoint's own model and log-mel, which differ from the "
                      "params': " + "; ".join(differences), stacklevel=1)
    # the sounds are brought to the features the model was trained on, and so are the run's notes of the map
    trained = checkpoint_config(ckpt)
    features = dataclasses.replace(trained.features, cache_dir=cfg.features.cache_dir)
    sounds = read_sounds(files, cfg=features)
    # the model's own settings decide its pitch conditioning and timbre dimensions; data and analysis the params'
    run_cfg = dataclasses.replace(cfg, features=features, model=trained.model, train=trained.train)
    cache = prepare_features(run_cfg, show_progress=not args.quiet)
    _, mu, logvar = encode_sounds(model, sounds, cfg=features)
    # the run's notes as 05 encoded them (read back when it did), so the map of 05 is read back too
    run_mu, _ = run_latents(SimpleNamespace(cfg=run_cfg, cache=cache, model=model, checkpoint=Path(checkpoint)))
    projection, points = place_on_map(run_mu, mu, seed=cfg.run.seed)
    rows, distances = nearest_notes(run_mu, mu, k=1)
    table = sounds_table(sounds, mu, logvar)
    png = figure_png(map_figure(projection.coords, cache.meta["instrument_family_str"].to_numpy(), points=points,
                                labels=[s.name for s in sounds], explained=projection.explained,
                                title=f"PCA of mu: the notes of {cfg.run.name} and {len(sounds)} sound(s) placed"),
                     dpi=110)
    # the sound of the page is made before anything is written: a failure there leaves no output half done
    lmap = placed_map(sounds, mu, model=model, cfg=run_cfg, meta=cache.meta, run_mu=run_mu,
                      show_progress=not args.quiet)
    write_sounds_table(table, out)
    with atomic_path(map_png, suffix=".png") as tmp:
        tmp.write_bytes(png)
    page = write_map_page(lmap, map_html, title=f"{len(sounds)} sound(s) on the map of run {cfg.run.name}",
                          links=())
    print(json.dumps({
        "out": str(out), "map_png": str(map_png), "map_html": str(map_html), "map_html_bytes": page.bytes,
        "map_maps": list(lmap.labels), "map_sounds_with_audio": len(sounds) - lmap.left_out,
        "map_griffin_lim_seconds_per_note": round(lmap.seconds_per_note, 4),
        "checkpoint": str(checkpoint), "sounds": len(sounds), "run_notes": len(cache.meta),
        "placed": [{"file": s.name, "pca": [round(float(v), 4) for v in p],
                    "nearest_note": str(cache.meta["note_str"].iloc[int(r[0])]), "distance": round(float(d[0]), 4)}
                   for s, p, r, d in zip(sounds, points, rows, distances)],
    }, indent=2))
    return 0


def register(sub: argparse._SubParsersAction, add_config_args) -> None:
    """Add the analysis subcommands to the `vaelib` parser."""
    p = sub.add_parser("embed", help="write mu/logvar of every note of a dataset (Parquet)",
                       description="Write mu and logvar of every note of an NSynth-layout folder, beside its "
                                   "metadata, as one Parquet table.",
                       epilog="The model is always built from the checkpoint's own config and the features are "
                              "computed with its own log-mel parameters. A --checkpoint whose model or log-mel "
                              "differ from the params' is used all the same, with a warning naming every "
                              "differing key (the table is that model's). The --out location is checked before "
                              "any work; the table is written whole or not at all.")
    add_config_args(p)
    p.add_argument("--checkpoint", help="a .pt checkpoint (default: the finished training of the params, which a "
                                        "retrain under way replaces only once it finishes)")
    p.add_argument("--data", help="NSynth-layout folder (default: data.root of the params)")
    p.add_argument("--out", help="Parquet file (default: data/embeddings/<run>.parquet, outside the run folder, "
                                 "which each run replaces whole)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("encode", help="encode sound files of one's own and place them on the map of a run's notes",
                       description="Encode audio files (any format libsndfile reads: wav, flac, ogg, aiff, mp3; any "
                                   "rate and channel count; no NSynth metadata) with a run's checkpoint: mu and "
                                   "logvar as one Parquet table, a PNG map of the new points among the run's "
                                   "notes (PCA of mu fitted on the run's notes), and a listening map: a standalone "
                                   "HTML page of the same maps (PCA, UMAP, timbre dimensions) where a click on a "
                                   "sound plays the file as encoded and its reconstruction, and its nearest run "
                                   "note plays its own.",
                       epilog="Each file is downmixed by the mean of its channels, resampled to the features' rate "
                              "with librosa, and padded with silence or cut to features.duration_s, as the feature "
                              "cache treats NSynth wavs. With features.ref='max' the log-mel is relative to each "
                              "sound's own peak, so a file's gain changes nothing; with 'fixed' its level is used as "
                              "it is (a warning says so). A file that cannot be read, is digitally silent or is "
                              "shorter than one STFT frame (features.n_fft samples) is refused, naming it, before "
                              "anything is written; the output locations are checked before any work, and each file "
                              "is written whole or not at all. The HTML map costs at most two Griffin-Lim inversions "
                              "a sound (analysis.map_griffin_lim_iters iterations: its reconstruction and its "
                              "nearest run note's, about 1-2 s each on a 2-core CPU) and at most about 55 kB of "
                              "MP3; sound stops at analysis.map_max_mb, the sounds past it are drawn without sound "
                              "(a warning says so). What places "
                              "meaningfully is a single sustained note of about features.duration_s seconds, its "
                              "onset at the start (docs/explore.md).")
    add_config_args(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="audio files, or folders searched recursively for "
                                                             "wav/flac/ogg/aiff/mp3 files")
    p.add_argument("--checkpoint", help="a .pt checkpoint (default: the finished training of the params, as for "
                                        "`vaelib embed`)")
    p.add_argument("--out", required=True, help="Parquet file: file, path, source_rate, source_channels, "
                                                "source_seconds, mu_*, logvar_* (relative paths from the project root)")
    p.add_argument("--map", help="PNG of the map (default: the --out path with .map.png)")
    p.add_argument("--map-html", help="standalone HTML listening map that plays the sounds and their nearest run "
                                      "notes (default: the --out path with .map.html)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_encode)
