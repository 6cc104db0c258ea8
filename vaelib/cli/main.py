"""The `vaelib` command line: one entry point, one subcommand per stage.

Every subcommand that reads one params set takes ``--params`` and ``--set section.key=value`` and
validates the config before doing anything (``sweep`` takes several params files, ``check`` report
pages). A refused input ends as ``vaelib <command>: error: <message>`` with exit status 2, and so does
what the OS refuses (``<path>: <reason>``); output folders are checked before the work.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from vaelib.cli import analysis as cli_analysis
from vaelib.cli import report as cli_report
from vaelib.cli import train as cli_train
from vaelib.config import PARAMS_DIR, Config, cli_path, load_config, resolve_path
from vaelib.exceptions import VaelibError
from vaelib.io import os_error_text, writable_folder

__all__ = ["main"]

log = logging.getLogger("vaelib")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default=str(PARAMS_DIR / "default.yaml"),
                   help="params YAML (default: params/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one parameter; repeatable")


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.params, args.overrides)


def cmd_render(args: argparse.Namespace) -> int:
    from vaelib.data.render import render_dataset

    cfg = _config(args)
    out = cli_path(args.out) if args.out else resolve_path(cfg.data.root)
    writable_folder(out.parent)  # before rendering anything
    summary = render_dataset(cfg.render, out, show_progress=not args.quiet)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("pitches",)}, indent=2))
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from vaelib.data.prepare import merge_features, prepare_features, prepare_shard
    from vaelib.data.shards import parse_shard, parse_shard_count

    if args.synthetic is not None:
        return _synthetic(args)
    shard = parse_shard(args.shard) if args.shard is not None else None
    merge = parse_shard_count(args.merge) if args.merge is not None else None
    cfg = _config(args)
    if shard is not None:
        res = prepare_shard(cfg, index=shard[0], count=shard[1], show_progress=not args.quiet)
        print(json.dumps({"shard": f"{res.index}/{res.count}", "status": res.status, "path": str(res.path),
                          "rows": [res.start, res.stop]}, indent=2))
        return 0
    if merge is not None:
        cache = merge_features(cfg, count=merge, show_progress=not args.quiet)
    else:
        cache = prepare_features(cfg, show_progress=not args.quiet)
    counts = cache.meta["split"].value_counts().to_dict()
    print(json.dumps({"cache": str(cache.path), "notes": counts, "shape": list(cache.features.shape)}, indent=2))
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    from vaelib.data.synthetic import build_synthetic_cache, parse_synthetic_spec

    counts = parse_synthetic_spec(args.synthetic)
    cfg = _config(args)
    cache = build_synthetic_cache(cfg.features, counts, seed=cfg.run.seed, show_progress=not args.quiet)
    notes = cache.meta["split"].value_counts().to_dict()
    print(json.dumps({"cache": str(cache.path), "notes": notes, "shape": list(cache.features.shape),
                      "synthetic": True, "train_with": f"vaelib train --cache {cache.path}"}, indent=2))
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    import yaml

    from vaelib.config import config_to_dict, params_reference

    if args.reference:
        print(params_reference())
        return 0
    print(yaml.safe_dump(config_to_dict(_config(args)), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaelib", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("render", help="render the embedded GM dataset in NSynth layout")
    _add_config_args(p)
    p.add_argument("--out", help="output folder (default: data.root of the params)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("preprocess", help="render if missing, split, and cache log-mel features",
                       description="Build the feature cache of the params, in one process or in shards: "
                                   "--shard I/N in each of N processes, then --merge N once (docs/scale.md).")
    _add_config_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    sharded = p.add_mutually_exclusive_group()
    sharded.add_argument("--shard", metavar="INDEX/COUNT",
                         help="compute only shard INDEX (0 to COUNT-1) of COUNT slices of the notes, for a job "
                              "array; the dataset must exist (it is not rendered)")
    sharded.add_argument("--merge", metavar="COUNT",
                         help="merge the COUNT shards into the cache a single build writes, once all are built")
    sharded.add_argument("--synthetic", metavar="NOTES",
                         help="write a synthetic cache without audio instead, of 'nsynth' (NSynth's 289,205 train, "
                              "12,678 valid and 4,096 test notes; 5.9 GB of train rows at 80x128) or TRAIN[:VALID"
                              "[:TEST]] notes, shaped by the params' features.n_mels and features.frames; train on it "
                              "with `vaelib train --cache FOLDER` (docs/scale.md)")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("params", help="validate params and print the resolved config (or the reference)")
    _add_config_args(p)
    p.add_argument("--reference", action="store_true", help="print the table of every parameter (markdown)")
    p.set_defaults(func=cmd_params)

    # Each stage's module adds its own subcommands (train; embed; run, sweep, check).
    for module in (cli_train, cli_analysis, cli_report):
        module.register(sub, _add_config_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except VaelibError as exc:
        print(f"vaelib {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except OSError as exc:
        # What the OS refuses (a file where a folder is needed, a read-only folder, a full disk) is a
        # problem of the input or the environment: its path and reason, not a traceback (-v logs it).
        log.debug("%s failed", args.command, exc_info=True)
        print(f"vaelib {args.command}: error: {os_error_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vaelib {args.command}: interrupted", file=sys.stderr)
        return 130
