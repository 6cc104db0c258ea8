"""MP3 encoding of the report's players: one clip after the other against ``audio_data_uris`` (one thread per core).

05_listening embeds every clip it plays as an MP3 data URI: a few hundred on the listening map. Both
ways encode the same clips (seeded decaying harmonic tones as long as a note of the default features),
alternating, the best round of each kept; the URIs are compared byte for byte.

Writes ``benchmarks/results/mp3.json`` (``--out``) with the machine and the load average.

Usage: ``.venv/bin/python benchmarks/bench_mp3.py [--clips 48] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _record import conditions

from vaelib.analysis.listening import audio_data_uri, audio_data_uris
from vaelib.config import PROJECT_ROOT, load_config, project_relative
from vaelib.io import atomic_write_json

OUT = PROJECT_ROOT / "benchmarks" / "results" / "mp3.json"


def clips(n: int, *, sample_rate: int, samples: int) -> list[np.ndarray]:
    """``n`` seeded harmonic tones with a decay and a little noise, peak 0.9, like the notes 05 plays."""
    rng = np.random.default_rng(0)
    t = np.arange(samples) / sample_rate
    out = []
    for f0 in rng.uniform(60.0, 1000.0, size=n):
        tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 9)) * np.exp(-t * rng.uniform(0.5, 3.0))
        tone = tone + 0.01 * rng.normal(size=samples)
        out.append((0.9 * tone / np.abs(tone).max()).astype(np.float32))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    f = load_config().features
    audio = clips(args.clips, sample_rate=f.sample_rate, samples=f.frames * f.hop_length)
    ways = {"one_after_the_other": lambda: [audio_data_uri(a, sample_rate=f.sample_rate) for a in audio],
            "threads": lambda: audio_data_uris(audio, sample_rate=f.sample_rate)}
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    uris = {}
    for r in range(args.rounds):
        for way in (list(ways) if r % 2 == 0 else list(reversed(ways))):
            t0 = time.perf_counter()
            uris[way] = ways[way]()
            seconds[way].append(round(time.perf_counter() - t0, 4))
    ms = {way: round(1000 * min(s) / len(audio), 2) for way, s in seconds.items()}
    result = {
        "benchmark": "MP3 data URIs of 4-s clips (soundfile/LAME, VBR), ms a clip, best round",
        "clips": len(audio), "ms_per_clip": ms, "seconds_all_rounds": seconds,
        "speedup_threads": round(ms["one_after_the_other"] / ms["threads"], 2),
        "same_bytes": uris["threads"] == uris["one_after_the_other"], **conditions(),
    }
    atomic_write_json(args.out, result)
    print(f"{ms} same bytes {result['same_bytes']} -> {project_relative(args.out)}")


if __name__ == "__main__":
    main()
