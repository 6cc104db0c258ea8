"""The install's numba warm-up (``python -m vaelib.cli.jit_cache``): its two halves one after the other
against side by side in two processes (``warm_numba_caches``, what ``make venv`` runs).

Each round starts one fresh process per way, each with an empty numba cache of its own
(``NUMBA_CACHE_DIR`` in a temporary folder), so both compile every kernel as a new environment does;
the order alternates between rounds and the best round of each way is kept. The site-packages caches
that ``make venv`` filled are not touched.

Writes ``benchmarks/results/jit_cache.json`` (``--out``) with the machine and the load average.

Usage: ``.venv/bin/python benchmarks/bench_jit_cache.py [--rounds 2]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _record import conditions

from vaelib.config import PROJECT_ROOT, project_relative
from vaelib.io import atomic_write_json

OUT = PROJECT_ROOT / "benchmarks" / "results" / "jit_cache.json"
WAYS = {
    "one_after_the_other": "from vaelib.cli.jit_cache import warm_features, warm_umap; warm_features(); warm_umap()",
    "side_by_side": "from vaelib.cli.jit_cache import warm_numba_caches; warm_numba_caches()",
}


def timed(code: str) -> float:
    """Wall seconds of a fresh interpreter running ``code`` with an empty numba cache."""
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    for r in range(args.rounds):
        for way in (WAYS if r % 2 == 0 else reversed(WAYS)):
            seconds[way].append(round(timed(WAYS[way]), 2))
            print(f"round {r}: {way} {seconds[way][-1]:.1f} s", flush=True)
    best = {way: min(s) for way, s in seconds.items()}
    result = {
        "benchmark": "numba warm-up of make venv, from empty caches, wall seconds of a fresh process",
        "seconds_best": best, "seconds_all_rounds": seconds,
        "speedup_side_by_side": round(best["one_after_the_other"] / best["side_by_side"], 2),
        "cpu_count": os.cpu_count(), **conditions(),
    }
    atomic_write_json(args.out, result)
    print(f"{best} -> {project_relative(args.out)}")


if __name__ == "__main__":
    main()
