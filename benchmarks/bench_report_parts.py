"""Parts of the main job outside training, each timed against the way it was done before, side by side.

- ``render_mix``: the rendered note's stereo mix, ``stereo.mean(axis=1)`` against ``(left + right) * 0.5``
  (what ``vaelib.data.render.render_note`` does), on stereo buffers of a note's length; the bits compared.
- ``feature_stats``: 01's statistics of the cache, float64 copies of every chunk (the way before, kept
  here as ``feature_stats_float64``) against ``vaelib.data.summary.feature_stats`` (counts of the float16
  bit patterns); the tables compared.
- ``figure``: a figure of 120 image axes under constrained layout, like 04's interpolation strips,
  saved and then drawn again for the notebook (``savefig`` + ``plt.show()``) against ``save_and_show``.
- ``pca``: the spectrogram PCA of the train split, fitted against read back from ``pca_store``; the
  transforms compared.
- ``descriptors``: 04's descriptors of every note, centroid and bandwidth each from its own mel power (the
  way before, kept here as ``note_descriptors_three_powers``) against ``note_descriptors`` (one mel power
  a block); the tables compared.

The default run's cache is used when it is built (``features.cache_dir`` of params/default.yaml), else
a seeded uniform one of the same note shape. Rounds alternate the order of the two ways; the best
round of each is kept.

Writes ``benchmarks/results/report_parts.json`` (``--out``) with the machine and the load average.

Usage: ``.venv/bin/python benchmarks/bench_report_parts.py [--rounds 3]``
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from _record import conditions

import vaelib.analysis.descriptors as desc
import vaelib.report.plots.common as common
from vaelib.analysis.diagnostics import fit_spectrogram_pca
from vaelib.analysis.interpolate import mel_bandwidth, mel_centroid
from vaelib.analysis.pca_store import spectrogram_pca
from vaelib.config import PROJECT_ROOT, FeatureConfig, load_config, resolve_path
from vaelib.data.cache import FeatureCache
from vaelib.data.summary import _ordered_splits, feature_stats
from vaelib.io import atomic_write_json

OUT = PROJECT_ROOT / "benchmarks" / "results" / "report_parts.json"


def feature_stats_float64(cache: FeatureCache, *, chunk: int = 4096) -> pd.DataFrame:
    """01's feature statistics the way they were computed before: every chunk copied to float64."""
    splits = cache.meta["split"].to_numpy()
    names = _ordered_splits(cache.meta)
    acc = {s: np.zeros(4) for s in names + ["all"]}
    lo, hi = dict.fromkeys(acc, np.inf), dict.fromkeys(acc, -np.inf)
    for start in range(0, len(splits), chunk):
        block = np.asarray(cache.features[start:start + chunk], dtype=np.float64)
        labels = splits[start:start + chunk]
        for s in names:
            x = block[labels == s]
            if x.size:
                for key in (s, "all"):
                    acc[key] += [x.size, x.sum(), np.square(x).sum(), np.count_nonzero(x <= -1.0)]
                    lo[key], hi[key] = min(lo[key], float(x.min())), max(hi[key], float(x.max()))
    cells = int(np.prod(cache.features.shape[1:]))
    rows = {}
    for key, (n, s1, s2, floor) in acc.items():
        mean = s1 / n
        rows[key] = {"n_notes": int(n // cells), "min": lo[key], "max": hi[key], "mean": mean,
                     "std": float(np.sqrt(max(s2 / n - mean**2, 0.0))), "frac_at_floor": floor / n}
    return pd.DataFrame.from_dict(rows, orient="index")


def note_descriptors_three_powers(x: np.ndarray, cfg: FeatureConfig) -> pd.DataFrame:
    """``note_descriptors`` as it was: ``mel_centroid`` and ``mel_bandwidth`` each converted the block's dB
    to power again, beside the block's own ``mel_power``."""
    blocks = []
    for start in range(0, len(x), desc.CHUNK):
        xb = desc._as_notes(x[start:start + desc.CHUNK], cfg)
        power = desc.mel_power(xb, cfg=cfg)
        bands, energy = power.sum(axis=2), power.sum(axis=1)
        blocks.append(pd.DataFrame({
            "centroid": mel_centroid(xb, cfg=cfg), "bandwidth": mel_bandwidth(xb, cfg=cfg),
            "flatness": desc._flatness(bands), "rolloff": desc._rolloff(bands, cfg, desc.ROLL_PERCENT),
            "attack": desc._attack(energy, cfg, desc.ONSET_DB, desc.PEAK_DB),
            "temporal_centroid": desc._temporal_centroid(energy, cfg)}, dtype=np.float64))
    return pd.concat(blocks, ignore_index=True)[list(desc.DESCRIPTORS)]


def the_cache() -> tuple[FeatureCache, str]:
    """The default run's cache (built from its dataset when that is rendered), else a seeded one of its shape."""
    cfg = load_config(PROJECT_ROOT / "params" / "default.yaml")
    if resolve_path(cfg.data.root).is_dir():
        from vaelib.data.prepare import prepare_features

        return prepare_features(cfg, show_progress=False), "the default run's cache"
    rng = np.random.default_rng(0)
    n = 10_000
    features = rng.uniform(-1, 1, size=(n, 1, cfg.features.n_mels, cfg.features.frames)).astype(np.float16)
    meta = pd.DataFrame({"split": rng.choice(["train", "valid", "test"], size=n, p=[0.6, 0.15, 0.25])})
    return FeatureCache(path=PROJECT_ROOT, features=features, meta=meta, manifest={}), "a seeded uniform cache"


def strips_figure() -> plt.Figure:
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(12, 10, figsize=(14.4, 18.6), constrained_layout=True)
    for i, ax in enumerate(axes.flat):
        ax.imshow(rng.uniform(-1, 1, size=(80, 128)), origin="lower", aspect="auto")
        ax.set_title(f"step {i % 10}", fontsize=7)
        ax.set_xlabel("frame")
        ax.set_ylabel("mel band")
    fig.suptitle("120 spectrograms")
    return fig


def save_then_show(path: Path) -> None:
    fig = strips_figure()
    fig.savefig(path, dpi=90)
    fig.savefig(io.BytesIO(), format="png", bbox_inches="tight")  # what the inline backend draws for plt.show()
    plt.close(fig)


def pairs(rounds: int, ways: dict[str, Callable[[], object]]) -> tuple[dict[str, float], dict[str, object]]:
    """Best seconds of each way over ``rounds`` alternating rounds, and each way's last result."""
    seconds: dict[str, list[float]] = {w: [] for w in ways}
    results: dict[str, object] = {}
    for r in range(rounds):
        for way in (list(ways) if r % 2 == 0 else list(reversed(ways))):
            t0 = time.perf_counter()
            results[way] = ways[way]()
            seconds[way].append(time.perf_counter() - t0)
    return {w: min(s) for w, s in seconds.items()}, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    out: dict = {}

    stereo = [np.random.default_rng(i).uniform(-1, 1, size=(65_600, 2)).astype(np.float32) for i in range(64)]
    best, res = pairs(args.rounds, {"mean_axis1": lambda: [s.mean(axis=1).astype(np.float32) for s in stereo],
                                    "add": lambda: [(s[:, 0] + s[:, 1]) * np.float32(0.5) for s in stereo]})
    out["render_mix"] = {"ms_per_note": {w: round(t / len(stereo) * 1e3, 4) for w, t in best.items()},
                         "speedup": round(best["mean_axis1"] / best["add"], 2),
                         "same_bits": all(np.array_equal(a, b) for a, b in zip(res["mean_axis1"], res["add"]))}

    cache, what = the_cache()
    best, res = pairs(args.rounds, {"float64": lambda: feature_stats_float64(cache),
                                    "bit_counts": lambda: feature_stats(cache)})
    out["feature_stats"] = {"cache": what, "notes": len(cache.meta),
                            "seconds": {w: round(t, 3) for w, t in best.items()},
                            "speedup": round(best["float64"] / best["bit_counts"], 2),
                            "max_abs_difference": float((res["float64"] - res["bit_counts"]).abs().to_numpy().max())}

    with tempfile.TemporaryDirectory() as tmp:
        import IPython.display

        shown = IPython.display.display
        IPython.display.display = lambda *objs: None  # no notebook here: what is shown is not drawn again
        try:
            best, _ = pairs(args.rounds, {"savefig_then_show": lambda: save_then_show(Path(tmp) / "a.png"),
                                          "save_and_show": lambda: common.save_and_show(strips_figure(),
                                                                                        Path(tmp) / "b.png", dpi=90)})
        finally:
            IPython.display.display = shown
        out["figure"] = {"axes": 120, "seconds": {w: round(t, 3) for w, t in best.items()},
                         "speedup": round(best["savefig_then_show"] / best["save_and_show"], 2)}

        train, _ = cache.split("train")
        d = load_config(PROJECT_ROOT / "params" / "default.yaml").model.latent_dim
        store = Path(tmp) / "pca"
        spectrogram_pca(train, n_components=d, seed=0, store=store)  # the store holds the fit from here on
        best, res = pairs(args.rounds, {"fit": lambda: fit_spectrogram_pca(train, n_components=d, seed=0),
                                        "read": lambda: spectrogram_pca(train, n_components=d, seed=0, store=store)})
        flat = np.asarray(train[:512], np.float32).reshape(min(512, len(train)), -1)
        out["pca"] = {"train_notes": len(train), "components": d, "seconds": {w: round(t, 3) for w, t in best.items()},
                      "speedup": round(best["fit"] / best["read"], 2),
                      "same_transform": bool(np.array_equal(res["fit"].transform(flat), res["read"].transform(flat)))}

    features = load_config(PROJECT_ROOT / "params" / "default.yaml").features
    best, res = pairs(args.rounds, {"three_powers": lambda: note_descriptors_three_powers(cache.features, features),
                                    "one_power": lambda: desc.note_descriptors(cache.features, cfg=features)})
    out["descriptors"] = {"notes": len(cache.meta), "seconds": {w: round(t, 3) for w, t in best.items()},
                          "speedup": round(best["three_powers"] / best["one_power"], 2),
                          "same_table": bool(res["three_powers"].equals(res["one_power"]))}

    result = {**out, "rounds": args.rounds, **conditions()}
    atomic_write_json(args.out, result)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
