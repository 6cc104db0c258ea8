"""`vaelib run` and `vaelib sweep`: headless notebook runs and experiment sweeps."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def cmd_run(args: argparse.Namespace) -> int:
    from vaelib.report.pipeline import run_pipeline

    out = run_pipeline(args.params, args.overrides, keep_code=args.keep_code or None)
    print(f"reports written to {out}/index.html")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from vaelib.report.sweep import run_sweep

    out = run_sweep(args.params_files, args.overrides, keep_code=args.keep_code or None)
    print(f"experiments compared in {out}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vaelib.report.browser_check import check_reports, find_chromium

    root = Path(args.root)
    if not root.is_dir():
        print(f"vaelib check: error: {root}: no reports folder there (make reports writes reports/)", file=sys.stderr)
        return 2
    if find_chromium() is None:
        print("vaelib check: Chromium not found (apt-get install -y chromium); checking links and "
              "notebook errors only", file=sys.stderr)
    problems, seen = check_reports(root)
    for line in problems:
        print(line)
    print(f"{len(seen)} pages checked, {len(problems)} problems")
    return 1 if problems else 0


def register(sub, add_config_args) -> None:
    p = sub.add_parser("run", help="execute the notebooks of report.notebooks (01-06 by default) with papermill "
                                   "into reports/<run>/ with HTML")
    add_config_args(p)
    p.add_argument("--keep-code", action="store_true", help="show code cells in the HTML reports")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="run several params files and compare them in reports/experiments/")
    p.add_argument("params_files", nargs="+", help="experiment params YAMLs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one parameter in every experiment; repeatable")
    p.add_argument("--keep-code", action="store_true", help="show code cells in the HTML reports")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("check", help="load every report page in headless Chromium; fail on broken pages")
    p.add_argument("--root", default="reports", help="reports folder (default: reports)")
    p.set_defaults(func=cmd_check)
