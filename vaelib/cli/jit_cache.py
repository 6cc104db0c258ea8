"""Fill numba's on-disk caches of vaelib, librosa, UMAP and pynndescent once, at install (``make venv``).

Those libraries compile many numba kernels on first use and cache them beside their sources
(``cache=True``; umap-learn's own kernels are given the cache by ``vaelib.analysis.latent``). In a new
environment the first process to use them pays the compilation (the first test run, or the first
report, would). Running each code path that vaelib uses once, on tiny inputs, writes the caches, so
later processes only load them (timings in docs/benchmarks.md).

Usage: ``python -m vaelib.cli.jit_cache``
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["warm_numba_caches", "warm_features", "warm_umap", "cached_kernels"]


def warm_features() -> None:
    """Compile the kernels of the feature path: vaelib's log-mel and Griffin-Lim, and librosa's resampler."""
    import librosa
    import torch

    from vaelib.config import FeatureConfig
    from vaelib.data.features import log_mel_batch
    from vaelib.data.griffin_lim import griffin_lim

    rng = np.random.default_rng(0)
    y = rng.normal(size=22050).astype(np.float32)
    log_mel_batch(torch.from_numpy(y[None, :16000].copy()), cfg=FeatureConfig(duration_s=1.0, frames=8))
    griffin_lim(np.ones((65, 5), np.float32), n_iter=1, n_fft=128, hop_length=32, length=128)
    librosa.resample(y, orig_sr=22050, target_sr=16000)  # librosa.core.audio compiles its kernels on import


def warm_umap() -> None:
    """Compile the kernels of a UMAP fit and transform (umap-learn's, and pynndescent's that its import builds)."""
    from vaelib.analysis.latent import project_umap

    # The neighbours come from vaelib.analysis.neighbours up to 50,000 points, so NN-descent's kernels are
    # compiled (and then cached) only by a first map larger than that, not here.
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    projection = project_umap(x, n_neighbors=5, min_dist=0.1, seed=0)
    projection.transform(x[:4])


def warm_numba_caches() -> float:
    """Run the log-mel, librosa's resampler and a UMAP fit and transform (the paths vaelib takes) on tiny
    inputs; return the seconds it took.

    numba compiles on one core, and the two paths share no kernel: the UMAP half runs in a second
    process beside this one, so on two cores the warm-up takes about as long as its longer half.

    Raises
    ------
    RuntimeError
        When the UMAP half fails (its traceback is on stderr).
    """
    t0 = time.perf_counter()
    umap_half = subprocess.Popen([sys.executable, "-c", "from vaelib.cli.jit_cache import warm_umap; warm_umap()"])
    try:
        warm_features()
    finally:
        code = umap_half.wait()
    if code:
        raise RuntimeError(f"the UMAP half of the numba warm-up failed (exit status {code}; its traceback above)")
    return time.perf_counter() - t0


def cached_kernels() -> dict[str, int]:
    """Numba cache index files on disk per package (what a later process loads instead of compiling)."""
    import librosa
    import pynndescent
    import umap

    import vaelib

    return {pkg.__name__: sum(1 for _ in Path(pkg.__file__).parent.rglob("__pycache__/*.nbi"))
            for pkg in (vaelib, librosa, umap, pynndescent)}


if __name__ == "__main__":
    seconds = warm_numba_caches()
    counts = cached_kernels()
    if not all(counts.values()):
        raise SystemExit(f"numba wrote no cache for {[k for k, n in counts.items() if not n]}: is site-packages "
                         "writable (or NUMBA_CACHE_DIR set to a writable folder)?")
    print(f"numba caches filled in {seconds:.1f} s: " + ", ".join(f"{k} {n} kernels" for k, n in counts.items()))
