"""The latent space of a trained model: encoding notes, decoding latents, the embedding table, 2-D maps.

``embed`` (also ``vaelib embed``) writes mu and logvar of every note of any NSynth-layout folder,
beside the note's metadata, from any checkpoint. The projections return fitted objects so that
points off the data (interpolation paths) can be placed on the same map.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA

from vaelib.config import AnalysisConfig, Config, config_from_dict
from vaelib.exceptions import ParameterError

__all__ = [
    "maps_of_mu",
    "META_COLUMNS",
    "encode_features",
    "decode_latents",
    "reconstruct",
    "held_out_reconstructions",
    "decoder_pitch",
    "embedding_table",
    "write_embedding_table",
    "latent_matrix",
    "checkpoint_config",
    "embed",
    "Projection",
    "project_pca",
    "project_umap",
]

log = logging.getLogger(__name__)

# Metadata kept beside mu/logvar in the embedding table.
META_COLUMNS = ("note_str", "pitch", "velocity", "instrument_str", "instrument_family_str",
                "instrument_source_str", "soundfont", "program", "split")
DEFAULT_BATCH = 128


def _check_features(features: np.ndarray) -> None:
    if features.ndim != 4 or features.shape[1] != 1:
        raise ParameterError(f"features: expected shape (notes, 1, n_mels, frames), got {tuple(features.shape)}")


@torch.no_grad()
def encode_features(model: torch.nn.Module, features: np.ndarray, *, batch_size: int = DEFAULT_BATCH,
                    device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """mu and logvar of every note, in batches.

    Parameters
    ----------
    model : a VAE with ``encode(x) -> (mu, logvar)``, in eval mode.
    features : [shape=(notes, 1, n_mels, frames)] normalised log-mel (float16 memmap accepted).

    Returns
    -------
    mu, logvar : [shape=(notes, latent_dim)] float32 each.
    """
    _check_features(features)
    if batch_size < 1:
        raise ParameterError(f"batch_size: expected >= 1, got {batch_size}")
    mus, logvars = [], []
    for start in range(0, len(features), batch_size):
        x = torch.from_numpy(np.asarray(features[start:start + batch_size], dtype=np.float32)).to(device)
        mu, logvar = model.encode(x)  # (B, D) each
        mus.append(mu.float().cpu().numpy())
        logvars.append(logvar.float().cpu().numpy())
    if not mus:
        raise ParameterError("features: no notes to encode")
    return np.concatenate(mus), np.concatenate(logvars)


@torch.no_grad()
def decode_latents(model: torch.nn.Module, z: np.ndarray, *, pitch: np.ndarray | None = None,
                   batch_size: int = DEFAULT_BATCH, device: str = "cpu") -> np.ndarray:
    """Decoded spectrograms of latent vectors.

    Parameters
    ----------
    z : [shape=(n, latent_dim)] latent vectors.
    pitch : [shape=(n,)] MIDI pitches, for a pitch-conditioned decoder only (None otherwise).

    Returns
    -------
    [shape=(n, 1, n_mels, frames)] float32 normalised log-mel in [-1, 1].
    """
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2:
        raise ParameterError(f"z: expected shape (n, latent_dim), got {z.shape}")
    if pitch is not None and len(pitch) != len(z):
        raise ParameterError(f"pitch: {len(pitch)} pitches for {len(z)} latent vectors")
    out = []
    for start in range(0, len(z), batch_size):
        zb = torch.from_numpy(z[start:start + batch_size]).to(device)
        pb = None
        if pitch is not None:
            pb = torch.as_tensor(np.asarray(pitch[start:start + batch_size], dtype=np.int64), device=device)
        out.append(model.decode(zb, pitch=pb).float().cpu().numpy())
    return np.concatenate(out)


def reconstruct(model: torch.nn.Module, features: np.ndarray, *, pitch: np.ndarray | None = None,
                batch_size: int = DEFAULT_BATCH, device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic reconstruction: decode(mu) of every note.

    Returns
    -------
    x_hat : [shape=(notes, 1, n_mels, frames)] float32; mu, logvar : [shape=(notes, latent_dim)].
    """
    mu, logvar = encode_features(model, features, batch_size=batch_size, device=device)
    return decode_latents(model, mu, pitch=pitch, batch_size=batch_size, device=device), mu, logvar


def held_out_reconstructions(model: torch.nn.Module, cache, cfg: Config) -> tuple[str, pd.DataFrame, np.ndarray,
                                                                                np.ndarray]:
    """One held-out note of every family (nearest ``analysis.interp_pitch``, loudest velocity) and its
    reconstruction ``decode(mu)``.

    Returns
    -------
    The split used ('test', else 'valid'), its chosen rows, originals and reconstructions
    [shape=(families, 1, n_mels, frames)].
    """
    from vaelib.data.summary import example_per_family, held_out_split

    split = held_out_split(cache.meta)
    x_held, meta_held = cache.split(split)
    shown = example_per_family(meta_held, pitch=cfg.analysis.interp_pitch)
    x = x_held[shown.index.to_numpy()].astype(np.float32)
    x_hat, _, _ = reconstruct(model, x, pitch=decoder_pitch(shown, cfg=cfg))
    return split, shown, x, x_hat


def decoder_pitch(meta: pd.DataFrame, *, cfg: Config) -> np.ndarray | None:
    """The MIDI pitches a pitch-conditioned decoder needs, or None for an unconditioned one."""
    return meta["pitch"].to_numpy(dtype=np.int64) if cfg.model.pitch_conditioning else None


def embedding_table(meta: pd.DataFrame, mu: np.ndarray, logvar: np.ndarray) -> pd.DataFrame:
    """One row per note: its metadata (``META_COLUMNS`` present in ``meta``), ``mu_0..``, ``logvar_0..``."""
    if len(meta) != len(mu) or mu.shape != logvar.shape:
        raise ParameterError(f"embedding_table: {len(meta)} notes, mu {mu.shape}, logvar {logvar.shape}")
    cols = [c for c in META_COLUMNS if c in meta.columns]
    table = meta[cols].reset_index(drop=True).copy()
    d = mu.shape[1]
    lat = pd.DataFrame(np.concatenate([mu, logvar], axis=1).astype(np.float32),
                       columns=[f"mu_{i}" for i in range(d)] + [f"logvar_{i}" for i in range(d)])
    return pd.concat([table, lat], axis=1)


def write_embedding_table(meta: pd.DataFrame, mu: np.ndarray, logvar: np.ndarray, out: Path) -> pd.DataFrame:
    """``embedding_table`` of the notes, written to ``out`` as Parquet (atomically); returns the table."""
    from vaelib.io import atomic_path

    table = embedding_table(meta, mu, logvar)
    with atomic_path(out, suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)
    log.info("embedded %d notes (latent %d) into %s", len(table), mu.shape[1], out)
    return table


def latent_matrix(table: pd.DataFrame, *, prefix: str = "mu") -> np.ndarray:
    """The ``mu`` (or ``logvar``) columns of an embedding table, [shape=(notes, latent_dim)] float32."""
    cols = [c for c in table.columns if c.startswith(f"{prefix}_") and c[len(prefix) + 1:].isdigit()]
    if not cols:
        raise ParameterError(f"table has no {prefix}_<i> columns")
    cols.sort(key=lambda c: int(c[len(prefix) + 1:]))
    return table[cols].to_numpy(dtype=np.float32)


def checkpoint_config(ckpt: dict) -> Config:
    """The resolved Config a checkpoint was trained with."""
    return config_from_dict(ckpt["config"], where="checkpoint config")


def embed(checkpoint: str | Path, dataset_root: str | Path | None, *, cfg: Config, out: str | Path,
          show_progress: bool = True, device: str = "cpu") -> pd.DataFrame:
    """mu and logvar of every note of an NSynth-layout folder, written as Parquet with the metadata.

    The model is built from the checkpoint's own config and the features are computed with its own
    feature parameters (the model only reads those), cached in ``cfg.features.cache_dir``; the notes
    are filtered and split by ``cfg.data``. A checkpoint whose model or log-mel differ from ``cfg``'s
    is still used, with a warning naming every differing key: the table is then that model's.

    Parameters
    ----------
    checkpoint : a ``.pt`` written by ``vaelib.model.train``.
    dataset_root : NSynth-layout folder (None: ``cfg.data.root``).
    out : Parquet file, written atomically; its folder is checked (created if missing) before any work.

    Returns
    -------
    The table written (see ``embedding_table``).

    Raises
    ------
    ParameterError
        When ``out`` is a folder.
    OSError
        When ``out``'s folder cannot be created or written (naming it), before any work.
    CheckpointError
        When the checkpoint cannot be read.
    """
    from vaelib.data.cache import build_feature_cache
    from vaelib.data.nsynth import load_dataset
    from vaelib.io import writable_folder
    from vaelib.model.checkpoint import load_model, model_differences

    out = Path(out)
    if out.is_dir():
        raise ParameterError(f"out: {out} is a folder; expected the path of a Parquet file")
    writable_folder(out.parent)
    model, ckpt = load_model(Path(checkpoint), device=device)
    trained = checkpoint_config(ckpt)
    differences = model_differences(ckpt, cfg, Path(checkpoint))
    if differences:
        warnings.warn(f"{checkpoint}: embedding with the checkpoint's own model and log-mel, which differ from the "
                      "params': " + "; ".join(differences), stacklevel=2)
    features_cfg = dataclasses.replace(trained.features, cache_dir=cfg.features.cache_dir)
    df = load_dataset(cfg.data, seed=cfg.run.seed, root=dataset_root)
    cache = build_feature_cache(df, features_cfg, resample=cfg.data.resample, show_progress=show_progress)
    mu, logvar = encode_features(model, cache.features, device=device)
    return write_embedding_table(cache.meta, mu, logvar, out)


@dataclass
class Projection:
    """A fitted 2-D map: ``coords`` of the points it was fitted on and ``transform`` for new points."""

    method: str
    coords: np.ndarray  # (notes, 2)
    transform: Callable[[np.ndarray], np.ndarray]
    explained: tuple[float, float] | None = None  # PCA's explained variance ratios
    stored: bool = False  # a UMAP fit read back from the map store, not fitted in this call

    def transform_each(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """``transform`` of several point sets in one call (UMAP's transform has a large fixed cost)."""
        if not arrays:
            return []
        coords = self.transform(np.concatenate(arrays))
        return np.split(coords, np.cumsum([len(a) for a in arrays])[:-1])


def project_pca(x: np.ndarray, *, fit_mask: np.ndarray | None = None, seed: int = 0) -> Projection:
    """PCA to 2-D, fitted on ``x[fit_mask]`` (all rows when None), applied to every row.

    Parameters
    ----------
    x : [shape=(notes, dims)] e.g. mu.
    fit_mask : [shape=(notes,)] bool, rows the axes are fitted on (e.g. the train split).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ParameterError(f"x: expected shape (notes, dims >= 2), got {x.shape}")
    fit = x if fit_mask is None else x[np.asarray(fit_mask, dtype=bool)]
    pca = PCA(n_components=2, random_state=seed).fit(fit)
    ratio = pca.explained_variance_ratio_
    return Projection("pca", pca.transform(x), pca.transform, (float(ratio[0]), float(ratio[1])))


def project_umap(x: np.ndarray, *, n_neighbors: int, min_dist: float, seed: int,
                 store: Path | None = None) -> Projection:
    """UMAP to 2-D with a fixed seed (single-threaded, hence reproducible).

    Parameters
    ----------
    x : [shape=(notes, dims)]; ``n_neighbors`` is capped at ``notes - 1``.
    store : folder of fitted maps (``vaelib.analysis.map_store``), or None. A map of the same points
        and settings fitted before (by 04, for 05 and ``vaelib encode``, which map the same mu) is read
        from it instead of fitted again, and a new fit is stored there: the same coordinates and
        ``transform`` either way, without the fit (about 15 s for the default run's 10,797 notes on 2 cores).
    """
    from vaelib.analysis.map_store import read_fitted, save_fitted, umap_key
    from vaelib.analysis.neighbours import umap_precomputed_knn

    umap = _umap()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) < 4:
        raise ParameterError(f"x: expected shape (notes >= 4, dims), got {x.shape}")
    n_neighbors = min(n_neighbors, len(x) - 1)
    path = fitted = None
    if store is not None:
        key = umap_key(x, n_neighbors, min_dist, seed)
        path = Path(store) / f"umap-{key[:20]}.pkl"
        fitted = read_fitted(path, key, len(x))
    if fitted is None:
        reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed, n_jobs=1,
                            precomputed_knn=umap_precomputed_knn(x, n_neighbors))
        with _uncacheable_kernels_quiet():
            coords = np.asarray(reducer.fit_transform(x))
        if path is not None:
            save_fitted(path, key, coords, reducer)
    else:
        coords, reducer = fitted

    def transform(z: np.ndarray) -> np.ndarray:
        with _uncacheable_kernels_quiet():
            return np.asarray(reducer.transform(np.asarray(z, np.float32)))

    return Projection("umap", coords, transform, stored=fitted is not None)


@functools.cache
def _umap() -> ModuleType:
    """umap, with numba's on-disk cache turned on for the kernels of umap-learn and pynndescent that lack it.

    umap-learn compiles its layout, embedding and transform kernels without ``cache=True`` (and
    pynndescent some of its own), so every process that fits and transforms a map spent more than a
    minute compiling them on 2 cores, for the same machine code each time. Cached, a later process
    loads them: same coordinates, the compilation paid once (at install: ``vaelib.cli.jit_cache``;
    figures in docs/benchmarks.md). The cache is keyed by the source file, so an upgrade recompiles.
    """
    with warnings.catch_warnings():
        # umap imports tqdm.auto, which warns in a kernel without ipywidgets; the reports need no widget.
        warnings.filterwarnings("ignore", message="IProgress not found")
        import umap
    import pynndescent
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    for pkg in (umap, pynndescent):
        for module in [m for name, m in list(sys.modules.items()) if name.startswith(pkg.__name__ + ".")]:
            for obj in list(vars(module).values()):
                if isinstance(obj, Dispatcher) and isinstance(obj._cache, NullCache):
                    obj.enable_caching()
    return umap


@contextlib.contextmanager
def _uncacheable_kernels_quiet():
    # two of pynndescent's kernels read global arrays and cannot be cached; numba says so at each compile
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Cannot cache compiled function")
        # umap-learn says so of any index but NN-descent's; ExactIndex answers its transform's queries
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\] \(knn_search_index\) is not an NNDescent")
        yield


def maps_of_mu(mu: np.ndarray, *, is_train: np.ndarray, cfg: AnalysisConfig, seed: int,
               store: Path | None = None) -> dict[str, Projection]:
    """The 2-D maps of 04: PCA fitted on the train notes, and UMAP unless ``cfg.umap`` is false (read from
    ``store`` when these points were mapped before, see ``project_umap``)."""
    maps = {"PCA": project_pca(mu, fit_mask=is_train, seed=seed)}
    if cfg.umap:
        maps["UMAP"] = project_umap(mu, n_neighbors=cfg.umap_neighbors, min_dist=cfg.umap_min_dist, seed=seed,
                                    store=store)
    return maps
