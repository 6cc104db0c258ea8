"""The `vaelib train` subcommand: features from the cache (built if missing), then training."""

from __future__ import annotations

import argparse
import json

from vaelib.config import load_config

__all__ = ["register", "cmd_train"]


def cmd_train(args: argparse.Namespace) -> int:
    from vaelib.data.prepare import prepare_features
    from vaelib.model.device import resolve_device
    from vaelib.model.train import train

    cfg = load_config(args.params, args.overrides)
    resolve_device(cfg.train.device)  # a missing device is an error before any work
    cache = prepare_features(cfg, show_progress=not args.quiet)
    res = train(cfg, cache, resume=args.resume, show_progress=not args.quiet)
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
    p = sub.add_parser("train", help="train the VAE on the cached features (resumable)")
    add_config_args(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from last.pt of this config's checkpoint folder (after Ctrl-C or a kill)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)
