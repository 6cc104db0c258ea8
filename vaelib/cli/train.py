"""The `vaelib train` subcommand: features from the cache (built if missing), then training."""

from __future__ import annotations

import argparse
import json

from vaelib.config import cli_path, load_config, resolve_path
from vaelib.exceptions import ConfigError
from vaelib.io import os_error_text, writable_folder

__all__ = ["register", "cmd_train"]

EPILOG = """\
A run is named by a hash of the params that change what training computes; its folder in
train.checkpoint_dir holds last.pt, best.pt, history.csv and config.yaml.

  no run yet          it is trained from scratch.
  a finished run      it is kept and printed as it is: nothing is trained or written.
                      --retrain trains it again in <run>.retrain/ beside it, which replaces the
                      run only once that training has finished: an interrupted or failed retrain
                      leaves the finished run (and what `vaelib embed` finds) as it was.
  an unfinished run   (Ctrl-C, SIGTERM, a kill, an error) --resume continues it from last.pt with
                      the numbers an uninterrupted run would give; without --resume or --retrain
                      it is refused (exit 2), not started over.
  unreadable last.pt  (truncated, damaged) it cannot be resumed: --retrain trains the run again,
                      keeping the old files until the new training finishes.

--retrain --resume continues an interrupted retrain. One process trains a run at a time: a second
one is refused, naming the process that holds <run>.lock. A non-finite loss, validation figure or
feature stops training with an error saying which, and last.pt keeps the last good epoch.

Several processes (data-parallel, docs/scale.md): torchrun --nproc-per-node N -m vaelib train ...
train.batch_size is the global batch and the numbers are those of one process; rank 0 alone
writes and prints. --cache trains on a feature cache folder as it is (one written by
`vaelib preprocess --synthetic`, or one built elsewhere) instead of the params' dataset.
"""


def _cache(cfg, args: argparse.Namespace):
    """The feature cache to train on: ``--cache`` as it is, else the params' (built if missing)."""
    from vaelib.data.cache import open_feature_cache
    from vaelib.data.prepare import prepare_features

    if args.cache is None:
        return prepare_features(cfg, show_progress=not args.quiet)
    cache = open_feature_cache(cli_path(args.cache))
    want = [1, cfg.features.n_mels, cfg.features.frames]
    if list(cache.features.shape[1:]) != want:
        raise ConfigError(f"--cache {args.cache}: notes of shape {list(cache.features.shape[1:])}, the params' "
                          f"model reads {want} (features.n_mels={cfg.features.n_mels}, "
                          f"features.frames={cfg.features.frames})")
    return cache


def cmd_train(args: argparse.Namespace) -> int:
    from vaelib.data.cache import open_feature_cache
    from vaelib.data.prepare import check_train_sources
    from vaelib.model.device import resolve_device
    from vaelib.model.distributed import setup
    from vaelib.model.train import train

    cfg = load_config(args.params, args.overrides)
    if args.cache is None:  # before a render; a --cache is not what the params describe
        check_train_sources(cfg)
    device = resolve_device(cfg.train.device)  # a missing device is an error before any work
    try:
        writable_folder(resolve_path(cfg.train.checkpoint_dir))  # so is a checkpoint folder that cannot be written
    except OSError as exc:
        raise ConfigError(f"train.checkpoint_dir: {os_error_text(exc)}") from exc
    ranks = setup(device)  # one process, or this one of torchrun's
    if ranks.world > 1 and args.cache is None:
        # rank 0 builds the cache if it is missing (rendering the dataset first if need be), then all open it
        folder = ranks.from_main(lambda: str(_cache(cfg, args).path))
        cache = open_feature_cache(folder)
    else:
        cache = _cache(cfg, args)
    res = train(cfg, cache, resume=args.resume, retrain=args.retrain, show_progress=not args.quiet)
    if not ranks.is_main:
        return 0
    last = res.history.iloc[-1] if len(res.history) else {}
    summary = {
        "checkpoint_dir": str(res.run_dir),
        "best": str(res.best_path),
        "epochs_run": len(res.history),
        "best_epoch": res.best_epoch,
        "best_valid_recon": res.best_valid_recon,
        "final_train_recon": float(last["train_recon"]) if len(res.history) else None,
        "final_valid_kl_raw": float(last["valid_kl_raw"]) if len(res.history) else None,
        "active_units": int(last["active_units"]) if len(res.history) else None,
        "stopped_early": res.stopped_early,
        "epoch_seconds_median": float(res.history["seconds"].median()) if len(res.history) else None,
        "device": res.device,
        "dtype": res.dtype,
        "params_count": res.params_count,
    }
    print(json.dumps(summary, indent=2))
    return 0


def register(sub, add_config_args) -> None:
    """Add the ``train`` subparser to ``sub`` (called by :func:`vaelib.cli.build_parser`)."""
    p = sub.add_parser("train", help="train the VAE on the cached features (resumable; a finished run is kept)",
                       description="Train the VAE of the params on their cached features (built if missing).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the unfinished run of these params from its last.pt (after Ctrl-C, SIGTERM or a "
                        "kill); with --retrain, continue an interrupted retrain")
    p.add_argument("--retrain", action="store_true",
                   help="train the run again from scratch even if it has finished, beside it; the new training "
                        "replaces the run only once it finishes")
    p.add_argument("--cache", metavar="FOLDER",
                   help="train on this feature cache folder (e.g. from `vaelib preprocess --synthetic`) instead of "
                        "the params' dataset; its notes must have the params' features.n_mels x features.frames")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)
