"""mu and logvar of every note of a run, encoded once for the run's notebooks.

03, 04 and 05 each need every note's posterior; the default model takes a quarter of a minute or more
to encode the embedded set on 2 cores, and the three notebooks are three processes. The first to ask
encodes and writes ``<features.cache_dir>/latents/<digest>.npz``; the others read it. The digest covers
the checkpoint file's bytes, the feature cache's key and the torch build and CPU kernels that computed
it, so a retrained model, another cache or another machine's kernels encode afresh.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import zipfile
from pathlib import Path

import numpy as np
import torch

from vaelib.config import resolve_path

__all__ = ["LATENTS_DIR", "run_latents", "latents_path"]

log = logging.getLogger(__name__)

LATENTS_DIR = "latents"  # under features.cache_dir
_FORMAT = 1


def _device(model: torch.nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def latents_path(run) -> Path:
    """Where ``run_latents`` keeps the posterior of ``run`` (a ``vaelib.analysis.run.TrainedRun``)."""
    h = hashlib.sha256()
    with open(run.checkpoint, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    device = _device(run.model)
    h.update(repr((_FORMAT, run.cache.manifest["key"], len(run.cache.meta), torch.__version__, device.type,
                   torch.backends.cpu.get_cpu_capability(), platform.machine())).encode())
    return resolve_path(run.cfg.features.cache_dir) / LATENTS_DIR / f"{h.hexdigest()[:24]}.npz"


def run_latents(run) -> tuple[np.ndarray, np.ndarray]:
    """mu and logvar [shape=(notes, latent_dim)] float32 of every note of ``run.cache``, in its row order:
    read from ``latents_path(run)`` when another notebook of the run encoded them, else encoded (the
    same numbers, computed by ``encode_features``) and written there for the next. ``run`` is a
    ``TrainedRun`` or anything with its ``cfg``, ``cache``, ``model`` and ``checkpoint``; a run whose model is
    not a checkpoint file (``run.checkpoint`` missing or None, a model built in code) is encoded each time."""
    from vaelib.analysis.latent import encode_features
    from vaelib.io import atomic_path

    if getattr(run, "checkpoint", None) is None:
        return encode_features(run.model, run.cache.features, device=str(_device(run.model)))
    path = latents_path(run)
    n, d = len(run.cache.meta), run.cfg.model.latent_dim
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                mu, logvar = z["mu"], z["logvar"]
            if mu.shape == logvar.shape == (n, d) and mu.dtype == logvar.dtype == np.float32:
                log.info("latents of %d notes read from %s", n, path)
                return mu, logvar
            log.warning("%s: holds latents of another shape (%s, expected %s); encoding again", path, mu.shape, (n, d))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            log.warning("%s: unreadable (%s); encoding again", path, exc)
    mu, logvar = encode_features(run.model, run.cache.features, device=str(_device(run.model)))
    try:
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, mu=mu, logvar=logvar)
    except OSError as exc:  # a read-only shared cache: the next notebook encodes again, nothing is lost
        log.info("latents not stored at %s (%s)", path, exc)
    return mu, logvar
