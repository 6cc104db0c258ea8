"""`vaelib embed`: mu and logvar of every note of an NSynth-layout folder, from a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vaelib.config import DATA_DIR, load_config, resolve_path
from vaelib.exceptions import CheckpointError, ParameterError
from vaelib.io import os_error_text, writable_folder

__all__ = ["register", "cmd_embed"]


def cmd_embed(args: argparse.Namespace) -> int:
    from vaelib.analysis.latent import embed

    cfg = load_config(args.params, args.overrides)
    out = resolve_path(args.out) if args.out else DATA_DIR / "embeddings" / f"{cfg.run.name}.parquet"
    # where the table goes is checked before the features and the encoding, not after them
    if out.is_dir():
        raise ParameterError(f"--out {out}: is a folder; expected the path of a Parquet file")
    try:
        writable_folder(out.parent)
    except OSError as exc:
        raise ParameterError(f"--out {out}: {os_error_text(exc)}") from exc
    if args.checkpoint:
        checkpoint = resolve_path(args.checkpoint)
    else:
        from vaelib.data.prepare import prepare_features
        from vaelib.model.checkpoint import find_checkpoint

        checkpoint = find_checkpoint(cfg, prepare_features(cfg, show_progress=not args.quiet))
        if checkpoint is None:
            raise CheckpointError("no finished training matches these params: run `vaelib train` "
                                  "(or 02_train) first, or pass --checkpoint")
    data = resolve_path(args.data) if args.data else None
    table = embed(Path(checkpoint), data, cfg=cfg, out=out, show_progress=not args.quiet)
    print(json.dumps({"out": str(out), "checkpoint": str(checkpoint), "notes": len(table),
                      "by_split": table["split"].value_counts().sort_index().to_dict()}, indent=2))
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
