"""A run's posterior encoded against read back: what ``run_latents`` saves each notebook after the first.

03, 04 and 05 each need mu and logvar of every note of the run; ``vaelib.analysis.latent_cache.run_latents``
encodes them once and keeps them in ``<features.cache_dir>/latents/``. In one process, alternating, each
round times ``encode_features`` over the run's whole cache and ``run_latents`` reading the stored file,
and checks that both give the same numbers to the bit. The run must have been trained (``vaelib run``).

Writes ``benchmarks/results/latents.json`` (``--out``) with the machine and the load average.

Usage: ``.venv/bin/python benchmarks/bench_latents.py [--run default] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _record import conditions

from vaelib.analysis.latent import encode_features
from vaelib.analysis.latent_cache import latents_path, run_latents
from vaelib.analysis.run import load_trained_run
from vaelib.config import PROJECT_ROOT
from vaelib.io import atomic_write_json

OUT = PROJECT_ROOT / "benchmarks" / "results" / "latents.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="default", help="a trained run under reports/")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    run = load_trained_run(args.run)
    run_latents(run)  # the stored file exists before the first round
    rounds = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        mu, logvar = encode_features(run.model, run.cache.features)
        t1 = time.perf_counter()
        read_mu, read_logvar = run_latents(run)
        t2 = time.perf_counter()
        if not (np.array_equal(mu, read_mu) and np.array_equal(logvar, read_logvar)):
            raise SystemExit(f"{latents_path(run)}: the stored latents differ from a fresh encoding")
        rounds.append({"encode_s": round(t1 - t0, 3), "read_s": round(t2 - t1, 4)})
        print(rounds[-1], flush=True)
    result = {
        "run": args.run, "notes": len(mu), "latent_dim": int(mu.shape[1]),
        "model": {"channels": list(run.cfg.model.channels), "depth": run.cfg.model.depth},
        "best": {"encode_s": min(r["encode_s"] for r in rounds), "read_s": min(r["read_s"] for r in rounds)},
        "rounds": rounds, "stored_bytes": latents_path(run).stat().st_size, "equal": True,
        "measured": "one process, alternating: encode_features over the run's cache, then run_latents reading "
                    "the stored file; best round of each",
        **conditions(),
    }
    atomic_write_json(args.out, result)
    print(result["best"])


if __name__ == "__main__":
    main()
