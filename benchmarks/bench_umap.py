"""The UMAP map of a run in a new process: umap-learn as it ships against vaelib's ``project_umap``.

umap-learn compiles its layout, embedding and transform kernels with numba without an on-disk cache,
so every process that draws a map (04, 05, ``vaelib encode``, each test kernel) compiled them anew, and
from 4,096 points it finds the neighbours with pynndescent's NN-descent (approximate, with kernels of
its own to compile in a new environment). ``vaelib.analysis.latent.project_umap`` turns numba's cache on
for umap-learn's kernels (filled at install by ``vaelib.cli.jit_cache``) and gives the fit exact
neighbours (``vaelib.analysis.neighbours``) up to 50,000 points. Each round starts one fresh Python
process per way, in alternating order, and times in each the import, ``fit_transform`` of the points and
one ``transform`` of 50 of them (what placing a path costs). A third way, **stored**, is what 05 and
``vaelib encode`` do after 04 has mapped the same mu: the fitted map read from ``features.cache_dir/maps``
(``project_umap(store=...)``), filled by one process before the rounds. The coordinates and transformed
points of ``project_umap``, every process and the stored map must be equal to the bit; umap-learn's own
map is drawn on other (approximate) neighbours, so for both maps the benchmark records the
trustworthiness (scikit-learn, 15 neighbours: how far the map's neighbourhoods are the data's) and the
share of each point's 15 nearest map neighbours that the two maps have in common.

The points are mu of a run (``--embeddings``, an ``embeddings.parquet`` of 04) or, by default, 10,800
seeded points in 32 dimensions around 11 centres (the default run's size: 10,797 notes, latent 32).

Writes ``benchmarks/results/umap.json`` (``--out``) with the machine and the load average.

Usage: ``.venv/bin/python benchmarks/bench_umap.py [--embeddings reports/default/embeddings.parquet] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _record import conditions

from vaelib.config import PROJECT_ROOT, project_relative
from vaelib.io import atomic_write_json

OUT = PROJECT_ROOT / "benchmarks" / "results" / "umap.json"

# One process: import, fit, transform, timed; the coordinates saved for the comparison.
CHILD = r"""
import sys, time, json, warnings
import numpy as np
way, points, coords_out, store = sys.argv[1:5]
x = np.load(points)
t0 = time.perf_counter()
if way in ("cached", "stored"):
    from vaelib.analysis.latent import project_umap
else:
    warnings.filterwarnings("ignore", message="IProgress not found")
    import umap
t1 = time.perf_counter()
if way in ("cached", "stored"):
    p = project_umap(x, n_neighbors=15, min_dist=0.1, seed=0, store=store if way == "stored" else None)
    coords, transform = p.coords, p.transform
else:
    reducer = umap.UMAP(n_components=2, n_neighbors=15, min_dist=0.1, random_state=0, n_jobs=1)
    coords, transform = reducer.fit_transform(x), reducer.transform
t2 = time.perf_counter()
placed = transform(x[:50] + 0.01)
t3 = time.perf_counter()
np.savez(coords_out, coords=np.asarray(coords), placed=np.asarray(placed))
print(json.dumps({"import_s": t1 - t0, "fit_s": t2 - t1, "transform_50_s": t3 - t2, "total_s": t3 - t0}))
"""


def points(embeddings: Path | None) -> tuple[np.ndarray, str]:
    if embeddings is not None:
        import pandas as pd

        table = pd.read_parquet(embeddings)
        cols = [c for c in table.columns if c.startswith("mu_")]
        named = project_relative(embeddings)
        if Path(named).is_absolute():  # outside the project: its name only
            named = Path(embeddings).name
        return table[cols].to_numpy(np.float32), named
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(11, 32))
    x = centres[rng.integers(0, 11, size=10_800)] + rng.normal(size=(10_800, 32))
    return x.astype(np.float32), "10,800 seeded points in 32 dimensions around 11 centres"


QUALITY_MAX_POINTS = 20_000  # trustworthiness holds n x n distances and their ranks: a seeded sample above


def map_quality(x: np.ndarray, shipped: np.ndarray, ours: np.ndarray, k: int = 15) -> dict:
    """Trustworthiness of each map and the share of map neighbours the two have in common (on a seeded
    sample of ``QUALITY_MAX_POINTS`` points when there are more)."""
    from sklearn.manifold import trustworthiness
    from sklearn.neighbors import NearestNeighbors

    if len(x) > QUALITY_MAX_POINTS:
        keep = np.sort(np.random.default_rng(0).choice(len(x), QUALITY_MAX_POINTS, replace=False))
        x, shipped, ours = x[keep], shipped[keep], ours[keep]

    def map_neighbours(coords: np.ndarray) -> np.ndarray:
        return NearestNeighbors(n_neighbors=k + 1).fit(coords).kneighbors(coords, return_distance=False)[:, 1:]

    a, b = map_neighbours(shipped), map_neighbours(ours)
    shared = np.mean([len(np.intersect1d(ra, rb)) / k for ra, rb in zip(a, b, strict=True)])
    return {"trustworthiness_as_shipped": round(float(trustworthiness(x, shipped, n_neighbors=k)), 4),
            "trustworthiness_project_umap": round(float(trustworthiness(x, ours, n_neighbors=k)), 4),
            "shared_map_neighbours": round(float(shared), 3), "k": k, "points": len(x)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embeddings", type=Path, default=None, help="an embeddings.parquet of 04 (default: synthetic)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    x, what = points(args.embeddings)
    runs: dict[str, list[dict]] = {"as_shipped": [], "cached": [], "stored": []}
    with tempfile.TemporaryDirectory(prefix="bench_umap_") as tmp:
        np.save(Path(tmp) / "x.npy", x)

        def child(way: str, coords_name: str) -> dict:
            out = subprocess.run([sys.executable, "-c", CHILD, way, str(Path(tmp) / "x.npy"),
                                  str(Path(tmp) / coords_name), str(Path(tmp) / "maps")], capture_output=True,
                                 text=True, check=True, cwd=PROJECT_ROOT)
            return json.loads(out.stdout.strip().splitlines()[-1])

        store_fill = child("stored", "fill.npz")
        (stored_file,) = (Path(tmp) / "maps").glob("umap-*.pkl")
        stored_bytes = stored_file.stat().st_size
        print("store filled", store_fill, flush=True)
        for r in range(args.rounds):
            order = ["as_shipped", "cached", "stored"] if r % 2 == 0 else ["stored", "cached", "as_shipped"]
            for way in order:
                runs[way].append(child(way, f"{way}.npz"))
                print(way, runs[way][-1], flush=True)
        outs = {way: dict(np.load(Path(tmp) / f"{way}.npz")) for way in ("as_shipped", "cached", "stored", "fill")}
        equal = all(np.array_equal(outs["cached"][k], outs[way][k]) for way in ("stored", "fill")
                    for k in ("coords", "placed"))
    quality = map_quality(x, outs["as_shipped"]["coords"], outs["cached"]["coords"])
    print("map quality", quality, flush=True)
    best = {way: min(rs, key=lambda d: d["total_s"]) for way, rs in runs.items()}
    result = {
        "points": what, "shape": list(x.shape),
        "best": {way: {k: round(v, 2) for k, v in d.items()} for way, d in best.items()},
        "all_rounds": {way: [{k: round(v, 2) for k, v in d.items()} for d in rs] for way, rs in runs.items()},
        "speedup_total": round(best["as_shipped"]["total_s"] / best["cached"]["total_s"], 2),
        "speedup_stored_over_cached": round(best["cached"]["total_s"] / best["stored"]["total_s"], 2),
        "store_fill": {k: round(v, 2) for k, v in store_fill.items()},
        "stored_map_bytes": stored_bytes,
        "coordinates_equal": equal,  # the map's and the 50 transformed points', project_umap's processes and store
        "map_quality": quality,
        "measured": "fresh Python process per way and round, alternating order: import, fit_transform (stored: "
                    "the fitted map read from the store), transform of 50 points; best round of each",
        **conditions(),
    }
    atomic_write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("best", "speedup_total", "speedup_stored_over_cached",
                                             "coordinates_equal", "map_quality")}, indent=2))
    if not equal:
        raise SystemExit("project_umap gave other coordinates in another process or from the store")


if __name__ == "__main__":
    main()
