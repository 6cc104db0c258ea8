"""Transfer: a run's probes and reconstruction scored on notes from other datasets (``analysis.transfer``).

Every probe of :mod:`vaelib.analysis.probes` (family, source, pitch and pitch within a semitone,
logistic and kNN) is fitted once on the train split of the run's own data, on mu and on the PCA
baseline (as many components as latent dimensions, fitted on the same train split), exactly as the
in-domain probes of 04 are. Each evaluation dataset is then encoded with the run's model and log-mel
and scored with those probes, for all its notes and for the notes of GM programs that no train note
plays (the train split's ``program`` field; for a dataset rendered before notes recorded it, recovered
from the names the render gives, see :func:`train_programs`). Beside the probes: the reconstruction
MSE of the model, decode(mu), against PCA's on the same notes. Reconstruction and encoding go in
chunks of ``CHUNK`` notes, so a large evaluation set needs no more memory than a chunk.

Beside it, a reference for what the set's own notes tell of their family (:func:`within_set_family`): the
family logistic probe fitted on the set itself, each note predicted by a probe fitted on the folds that
hold none of its GM program. It is not a bound on the transfer probe (a probe fitted elsewhere can read
more), but a bank whose families a probe fitted on its other programs reads poorly leaves little for a
probe fitted elsewhere, and the margin of a transfer is read against it.

An evaluation dataset is an NSynth-layout folder read as it is, or a SoundFont rendered with the
run's ``render.*`` settings into ``data/transfer/<SoundFont>-<settings key>/`` (or the ``root`` given)
on first use; a folder rendered earlier with other SoundFonts or settings is refused, not reused.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA

from vaelib.analysis.diagnostics import pca_transform, recon_mse
from vaelib.analysis.latent import decode_latents, encode_features
from vaelib.analysis.latent_map import LatentSpace, markdown_escape
from vaelib.analysis.pca_store import pca_store, spectrogram_pca
from vaelib.analysis.probes import PROBE_TARGETS, FittedProbes, accuracy, fit_probes, grouped_predictions
from vaelib.analysis.run import TrainedRun
from vaelib.analysis.targets import TARGETS, check_target
from vaelib.config import Config, TransferSet, project_relative, resolve_path
from vaelib.data.cache import FeatureCache, build_feature_cache
from vaelib.data.nsynth import load_dataset
from vaelib.data.render import (
    GM_FAMILY_SOURCE,
    check_rendered,
    instrument_programs,
    render_dataset,
    rendered_summary,
    settings_key,
)
from vaelib.data.soundfonts import resolve_soundfont
from vaelib.exceptions import DataError, ParameterError

__all__ = ["TRANSFER_ROOT", "CHUNK", "TABLE_PROBES", "WITHIN_ROW", "Reference", "NoteScores", "Transfer",
           "fit_reference", "note_scores", "score_notes", "unseen_programs", "within_set_family",
           "transfer_targets", "score_transfer_set", "train_programs", "transfer_dataset", "transfer_cache",
           "evaluate_transfer", "transfer_table"]

log = logging.getLogger(__name__)

TRANSFER_ROOT = "data/transfer"  # where a transfer SoundFont is rendered when its entry gives no root
CHUNK = 512  # notes encoded, decoded and compared at a time
# The probes shown in the transfer table (every key of PROBE_KEYS is in metrics.json); keys of PROBE_KEYS.
TABLE_PROBES = ("family_logreg", "family_knn", "pitch1_logreg", "pitch1_knn", "source_logreg", "source_knn")
# the table's row of within_set_family: the family probe fitted on the set's own notes, program-grouped folds
WITHIN_ROW = "family_logreg fitted on the set itself, by program folds"


@dataclass
class Reference:
    """What every note set is scored against: the PCA baseline and the probes, fitted on the run's train split."""

    pca: PCA
    probes: dict[str, FittedProbes]  # 'mu', 'pca'
    n_train_notes: int


@dataclass
class NoteScores:
    """Per-note quantities of one note set, from which any subset is scored."""

    meta: pd.DataFrame
    mu: np.ndarray  # [shape=(notes, latent_dim)]
    pca: np.ndarray  # [shape=(notes, latent_dim)] PCA coefficients
    mse_model: np.ndarray  # [shape=(notes,)] reconstruction MSE of decode(mu)
    mse_pca: np.ndarray  # [shape=(notes,)] reconstruction MSE of PCA


@dataclass
class Transfer:
    """04's transfer section: the figures per evaluation dataset, and the table beside the in-domain ones."""

    metrics: dict[str, dict]  # name -> what metrics.json holds under transfer.<name>
    in_domain: dict  # score_notes of the run's own test split
    table: pd.DataFrame

    @property
    def shown(self) -> pd.DataFrame:
        """``table`` as text for the report: counts as integers, accuracies to 3 decimals, MSE to 4."""
        def cell(measure: str, value: float) -> str:
            if measure.startswith(WITHIN_ROW) and np.isnan(value):
                return ""  # not measured: the own split, or a set without programs (the text says why)
            if measure in ("notes", "instruments"):
                return f"{value:.0f}"
            return f"{value:.4f}" if measure.startswith("recon") else f"{value:.3f}"

        return pd.DataFrame({c: [cell(m, v) for m, v in self.table[c].items()] for c in self.table.columns},
                            index=self.table.index)

    @property
    def text(self) -> str:
        """The section for the report (markdown): one line per dataset, where its notes come from and which
        programs training never saw, then ``shown`` as a table."""
        if not self.metrics:
            return "No transfer datasets: `analysis.transfer` is empty."
        lines = []
        for name, m in self.metrics.items():
            d, unseen = m["dataset"], m["unseen_programs"]
            origin = f"rendered from {markdown_escape(d['soundfont'])}" if d["soundfont"] else "read as it is"
            if unseen is None:
                part = f"unseen programs: not measured ({m['unseen_programs_note']})"
            else:
                part = f"{unseen['notes']} notes of {len(unseen['programs'])} GM programs unseen in training"
            targets = m.get("targets")
            if targets:
                missed = [f"{k} ({t['value']:.4g} vs {t['threshold']:.4g})" if t["value"] is not None else k
                          for k, t in targets.items() if not t["pass"]]
                part += ("; the run's targets on them: **all met**" if not missed else
                         "; the run's targets on them: **missed** " + ", ".join(missed))
            within = m.get("within_set") or {}
            if within.get("note"):
                part += f"; the probe fitted on the set itself: not measured ({within['note']})"
            lines.append(f"- **{name}**: {m['all']['notes']} notes of {m['all']['instruments']} instruments in "
                         f"{markdown_escape(d['root'])} ({origin}); {part}.")
        return "\n".join(lines) + "\n\n" + _markdown_table(self.shown)


def _markdown_table(table: pd.DataFrame) -> str:
    """A table of strings as a markdown table, its index as the first column."""
    head = [table.index.name or "", *table.columns]
    rows = ["| " + " | ".join(markdown_escape(str(c)) for c in head) + " |", "|" + "---|" * len(head)]
    rows += ["| " + " | ".join(markdown_escape(str(v)) for v in (label, *values)) + " |"
             for label, values in zip(table.index, table.to_numpy())]
    return "\n".join(rows)


def fit_reference(train_x: np.ndarray, train_meta: pd.DataFrame, train_mu: np.ndarray, *, n_components: int,
                  knn_k: int, seed: int = 0, store: Path | None = None) -> Reference:
    """Fit the PCA baseline and every probe, on mu and on PCA, on the train notes.

    Parameters
    ----------
    train_x : [shape=(notes, 1, n_mels, frames)] normalised log-mel of the train split.
    train_meta : its metadata (the columns of ``PROBE_TARGETS``).
    train_mu : [shape=(notes, latent_dim)] its mu.
    n_components : PCA components, the latent dimensions.
    store : folder of fitted PCAs to read the fit from or add it to (``vaelib.analysis.pca_store``).
    """
    if not len(train_x) == len(train_meta) == len(train_mu):
        raise ParameterError(f"fit_reference: {len(train_x)} spectrograms, {len(train_meta)} rows and "
                             f"{len(train_mu)} mu for the train notes")
    pca = spectrogram_pca(train_x, n_components=n_components, seed=seed, store=store)
    probes = {"mu": fit_probes(train_mu, train_meta, knn_k=knn_k, seed=seed),
              "pca": fit_probes(pca_transform(pca, train_x), train_meta, knn_k=knn_k, seed=seed)}
    return Reference(pca=pca, probes=probes, n_train_notes=len(train_x))


def note_scores(model: torch.nn.Module, reference: Reference, x: np.ndarray, meta: pd.DataFrame, *,
                pitch_conditioning: bool = False, chunk: int = CHUNK) -> NoteScores:
    """mu, PCA coefficients and both reconstruction errors of every note of ``x``, ``chunk`` notes at a time.

    Parameters
    ----------
    x : [shape=(notes, 1, n_mels, frames)] normalised log-mel (a float16 memmap is read chunk by chunk).
    meta : its metadata, one row per note (``pitch`` for a pitch-conditioned decoder).
    """
    if len(x) != len(meta) or len(x) == 0:
        raise ParameterError(f"note_scores: {len(x)} spectrograms for {len(meta)} rows (at least one needed)")
    mus, coefs, mse_model, mse_pca = [], [], [], []
    pitches = meta["pitch"].to_numpy(dtype=np.int64)
    for start in range(0, len(x), chunk):
        part = np.asarray(x[start:start + chunk], dtype=np.float32)
        mu, _ = encode_features(model, part)
        pitch = pitches[start:start + chunk] if pitch_conditioning else None
        mse_model.append(recon_mse(part, decode_latents(model, mu, pitch=pitch)))
        coef = pca_transform(reference.pca, part)
        mse_pca.append(recon_mse(part, reference.pca.inverse_transform(coef).reshape(part.shape)))
        mus.append(mu)
        coefs.append(coef)
    return NoteScores(meta=meta.reset_index(drop=True), mu=np.concatenate(mus), pca=np.concatenate(coefs),
                      mse_model=np.concatenate(mse_model), mse_pca=np.concatenate(mse_pca))


def score_notes(reference: Reference, scores: NoteScores, mask: np.ndarray | None = None) -> dict:
    """The probes on mu and on PCA and the mean reconstruction MSE over the notes of ``mask`` (all: None).

    Returns
    -------
    ``notes``, ``instruments``, ``probes`` ({'mu', 'pca'} -> accuracy for every key of ``PROBE_KEYS``),
    ``recon_mse`` ({'model', 'pca'}), ``family_logreg_margin_vs_pca``. JSON-ready.
    """
    mask = np.ones(len(scores.meta), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ParameterError("score_notes: no note selected")
    meta = scores.meta[mask]
    probes = {"mu": reference.probes["mu"].score(scores.mu[mask], meta),
              "pca": reference.probes["pca"].score(scores.pca[mask], meta)}
    return {
        "notes": int(mask.sum()),
        "instruments": int(meta["instrument_str"].nunique()),
        "probes": probes,
        "recon_mse": {"model": float(scores.mse_model[mask].mean()), "pca": float(scores.mse_pca[mask].mean())},
        "family_logreg_margin_vs_pca": probes["mu"]["family_logreg"] - probes["pca"]["family_logreg"],
    }


def _records_programs(meta: pd.DataFrame) -> bool:
    """Whether every note of ``meta`` has its GM program (NSynth's own notes, and renders made before notes
    recorded it, have none)."""
    return "program" in meta.columns and bool((meta["program"] >= 0).all())


def unseen_programs(meta: pd.DataFrame, programs: set[int] | None) -> tuple[np.ndarray | None, str]:
    """Which notes of ``meta`` play a GM program not in ``programs`` (those of the train split).

    Returns
    -------
    The mask [shape=(notes,)] bool, or None with the reason when it cannot be told (no ``program`` per
    note in the evaluation set, or the training programs unknown).
    """
    if programs is None:
        return None, "the training data records no GM program per note"
    if not _records_programs(meta):
        return None, "the evaluation dataset records no GM program per note"
    return ~meta["program"].isin(sorted(programs)).to_numpy(), ""


def within_set_family(scores: NoteScores, unseen: np.ndarray | None, *, n_folds: int, seed: int = 0) -> dict:
    """How well a set's own notes tell its families apart: the family logistic probe fitted on the set itself,
    on mu and on the run's PCA coefficients, each note predicted by the probe of the folds that hold none of
    its GM program (``n_folds`` folds grouped by program). The reference a transfer margin is read against,
    not a bound on it: a probe that has heard the bank's other programs, which the run's probes never did.

    Returns
    -------
    ``groups`` ('program'), ``folds``, ``all`` and ``unseen_programs`` ({'mu', 'pca'} -> accuracy; the latter
    None when ``unseen`` is None or selects nothing), ``note`` ('' or why nothing was measured: no program
    per note, fewer programs than folds, or one family; ``all`` and ``unseen_programs`` then None). JSON-ready.
    """
    meta = scores.meta
    out: dict = {"groups": "program", "folds": int(n_folds), "all": None, "unseen_programs": None, "note": ""}
    if not _records_programs(meta):
        out["note"] = "the dataset records no GM program per note"
        return out
    y = meta[PROBE_TARGETS["family"]].to_numpy()
    programs = meta["program"].to_numpy()
    n_programs, n_families = len(np.unique(programs)), len(np.unique(y))
    if n_programs < n_folds or n_families < 2:
        out["note"] = (f"{n_programs} GM programs and {n_families} famil{'y' if n_families == 1 else 'ies'}: "
                       f"{n_folds} program folds need as many programs, and two families")
        return out
    pred = {kind: grouped_predictions("logreg", x, y, groups=programs, n_folds=n_folds, seed=seed)
            for kind, x in (("mu", scores.mu), ("pca", scores.pca))}
    out["all"] = {kind: accuracy(y, p) for kind, p in pred.items()}
    if unseen is not None and unseen.any():
        out["unseen_programs"] = {kind: accuracy(y[unseen], p[unseen]) for kind, p in pred.items()}
    return out


def transfer_targets(unseen: dict | None, *, pitch_conditioning: bool = False) -> dict | None:
    """The run's own targets measured on a dataset's notes of unseen programs (:func:`score_notes`): the
    family margin over PCA and pitch within a semitone at the thresholds of ``TARGETS``, and the
    reconstruction no worse than PCA's (pitch left out for a decoder given the pitch). None without
    unseen programs.

    Returns
    -------
    ``{key: {"value", "threshold", "op", "pass", "target"}}`` (:func:`vaelib.analysis.targets.check_target`).
    """
    if unseen is None:
        return None
    family, pitch = (next(t.threshold for t in TARGETS if t.key == key)
                     for key in ("family_logreg_margin_vs_pca", "pitch1_logreg"))
    out = {
        "family_logreg_margin_vs_pca": check_target(
            unseen["family_logreg_margin_vs_pca"], family, op=">=",
            text=f"family accuracy of the logistic probe on mu at least {100 * family:.0f} points above PCA's, "
                 "unseen programs"),
        "recon_mse_vs_pca": check_target(unseen["recon_mse"]["model"], unseen["recon_mse"]["pca"], op="<=",
                                         text="reconstruction MSE no worse than PCA's, unseen programs"),
    }
    if not pitch_conditioning:
        out["pitch1_logreg"] = check_target(unseen["probes"]["mu"]["pitch1_logreg"], pitch, op=">=",
                                            text=f"pitch within one semitone at least {pitch}, unseen programs")
    return out


def score_transfer_set(model: torch.nn.Module, reference: Reference, x: np.ndarray, meta: pd.DataFrame, *,
                       programs: set[int] | None, pitch_conditioning: bool = False, n_folds: int = 5,
                       seed: int = 0) -> dict:
    """One evaluation dataset scored: all its notes, and its notes of programs unseen in training.

    Parameters
    ----------
    x : [shape=(notes, 1, n_mels, frames)] its normalised log-mel, with the run's feature parameters.
    meta : its metadata.
    programs : the GM programs of the train split (None: unknown).
    n_folds, seed : of :func:`within_set_family`.

    Returns
    -------
    ``all`` and ``unseen_programs`` (each :func:`score_notes`, the latter with the ``programs`` it
    covers; None when no note qualifies or it cannot be told, ``unseen_programs_note`` saying which), and
    ``within_set`` (:func:`within_set_family`) and ``targets`` (:func:`transfer_targets`).
    """
    scores = note_scores(model, reference, x, meta, pitch_conditioning=pitch_conditioning)
    out = {"all": score_notes(reference, scores), "unseen_programs": None, "unseen_programs_note": ""}
    mask, why = unseen_programs(scores.meta, programs)
    if mask is None:
        out["unseen_programs_note"] = why
    elif not mask.any():
        out["unseen_programs_note"] = "every program of the evaluation dataset is played in the train split"
    else:
        unseen = score_notes(reference, scores, mask)
        unseen["programs"] = sorted(int(p) for p in scores.meta.loc[mask, "program"].unique())
        out["unseen_programs"] = unseen
    out["within_set"] = within_set_family(scores, mask, n_folds=n_folds, seed=seed)
    out["targets"] = transfer_targets(out["unseen_programs"], pitch_conditioning=pitch_conditioning)
    return out


def train_programs(run: TrainedRun) -> set[int] | None:
    """The GM programs the train split of the run plays; None when they cannot be told.

    From the notes' ``program`` field; for a dataset vaelib rendered before notes recorded it, from the
    instrument names the run's ``render.*`` settings give (:func:`vaelib.data.render.instrument_programs`),
    used only when every instrument of the dataset has such a name and its family and source agree with
    that program's.
    """
    meta = run.cache.meta
    train = meta[meta["split"] == "train"]
    if _records_programs(meta):
        return {int(p) for p in train["program"]}
    if rendered_summary(resolve_path(run.cfg.data.root)) is None:
        return None
    try:
        by_name = instrument_programs(run.cfg.render)
    except ParameterError:
        return None
    instruments = meta.drop_duplicates("instrument_str")
    for name, fam, src in zip(instruments["instrument_str"], instruments["instrument_family_str"],
                              instruments["instrument_source_str"]):
        if name not in by_name or GM_FAMILY_SOURCE[by_name[name]] != (fam, src):
            return None
    return {by_name[name] for name in train["instrument_str"].unique()}


def transfer_dataset(entry: TransferSet, cfg: Config, *, index: int = 0, show_progress: bool = True) -> dict:
    """The folder of one ``analysis.transfer`` entry, rendered first when it names a SoundFont and is missing.

    Returns
    -------
    ``root`` (Path), ``soundfont`` (the resolved path; None for a folder read as it is, which a folder
    without a render summary is, with a warning), ``rendered`` (whether it was rendered now).

    Raises
    ------
    ParameterError
        The SoundFont is missing (naming its Debian package when there is one).
    DataError
        The folder is missing and there is no SoundFont to render it from, or it was rendered from
        another SoundFont or with other settings than the run's.
    """
    where = f"analysis.transfer[{index}]"
    if not entry.soundfont:
        root = resolve_path(entry.root)
        if not root.is_dir():
            raise DataError(f"{where}.root ({entry.name}): {root}: dataset folder not found")
        return {"root": root, "soundfont": None, "rendered": False}
    font = resolve_soundfont(entry.soundfont, where=f"{where}.soundfont ({entry.name})")
    render_cfg = dataclasses.replace(cfg.render, soundfont=(str(font),))
    root = (resolve_path(entry.root) if entry.root
            else resolve_path(TRANSFER_ROOT) / f"{font.stem}-{settings_key(render_cfg)}")
    if root.exists():
        if rendered_summary(root) is None:
            warnings.warn(f"{where}.root ({entry.name}): {root} holds no render summary, so it cannot be told "
                          f"whether it was rendered from {font.name}; it is read as it is", stacklevel=2)
            return {"root": root, "soundfont": None, "rendered": False}
        check_rendered(root, render_cfg, asked_by=f"{where}.soundfont", folder_key=f"{where}.root", strict=True)
        return {"root": root, "soundfont": font, "rendered": False}
    log.info("%s (%s): rendering %s into %s", where, entry.name, font.name, root)
    render_dataset(render_cfg, root, show_progress=show_progress)
    return {"root": root, "soundfont": font, "rendered": True}


def transfer_cache(entry: TransferSet, cfg: Config, *, index: int = 0,
                   show_progress: bool = True) -> tuple[dict, FeatureCache]:
    """One ``analysis.transfer`` dataset (:func:`transfer_dataset`) and its feature cache with the run's
    features, every note of it (no instrument filter, no held-out SoundFont, no subsample)."""
    found = transfer_dataset(entry, cfg, index=index, show_progress=show_progress)
    data_cfg = dataclasses.replace(cfg.data, root=str(found["root"]), instruments=(), test_soundfonts=(), max_notes=0)
    df = load_dataset(data_cfg, seed=cfg.run.seed)
    return found, build_feature_cache(df, cfg.features, resample=cfg.data.resample, show_progress=show_progress)


def _space_mu(space: LatentSpace, run: TrainedRun) -> np.ndarray:
    """mu of the run's notes from 04's embedding, checked to be in the order of the run's cache."""
    table = space.table
    if len(space.mu) != len(run.cache.meta) or not (
            table["note_str"].to_numpy() == run.cache.meta["note_str"].to_numpy()).all():
        raise ParameterError("evaluate_transfer: the embedding's notes are not the run's cache's, in its order")
    return space.mu


def evaluate_transfer(space: LatentSpace, run: TrainedRun, *, show_progress: bool = True) -> Transfer:
    """04's transfer section: every dataset of ``analysis.transfer`` scored against the run's train split.

    Parameters
    ----------
    space : 04's ``LatentSpace`` (``vaelib.analysis.latent_map.embed_run``): mu of every note of the run,
        in the order of ``run.cache``; the train notes' mu fit the probes.
    run : the trained run.

    Returns
    -------
    The figures per dataset (for ``metrics.json``, ``transfer.<name>``), those of the run's own test
    split ({} when it is empty), and the table of both. Nothing is computed when ``analysis.transfer``
    is empty.
    """
    cfg = run.cfg
    sets = cfg.analysis.transfer
    if not sets:
        return Transfer(metrics={}, in_domain={}, table=pd.DataFrame())
    mu = _space_mu(space, run)
    meta = run.cache.meta
    is_train = (meta["split"] == "train").to_numpy()
    train_x, train_meta = run.cache.split("train")
    reference = fit_reference(train_x, train_meta, mu[is_train], n_components=cfg.model.latent_dim,
                              knn_k=cfg.analysis.knn_k, seed=cfg.run.seed, store=pca_store(cfg))
    del train_x
    cond = cfg.model.pitch_conditioning
    test_x, test_meta = run.cache.split("test")
    in_domain = (score_notes(reference, note_scores(run.model, reference, test_x, test_meta, pitch_conditioning=cond))
                 if len(test_meta) else {})
    programs = train_programs(run)
    metrics: dict[str, dict] = {}
    for i, entry in enumerate(sets):
        found, cache = transfer_cache(entry, cfg, index=i, show_progress=show_progress)
        result = score_transfer_set(run.model, reference, cache.features, cache.meta, programs=programs,
                                    pitch_conditioning=cond, n_folds=cfg.analysis.probe_folds, seed=cfg.run.seed)
        metrics[entry.name] = {
            "dataset": {"root": project_relative(found["root"]),
                        "soundfont": Path(found["soundfont"]).name if found["soundfont"] else None,
                        "cache_key": cache.manifest["key"]},
            **result,
        }
        log.info("transfer %s: %d notes scored", entry.name, result["all"]["notes"])
    return Transfer(metrics=metrics, in_domain=in_domain, table=transfer_table(in_domain, metrics))


def transfer_table(in_domain: dict, metrics: dict[str, dict]) -> pd.DataFrame:
    """The table of 04's transfer section: one row per measure, one column per note set (the run's own test
    split first, when it has notes, then each dataset's notes and its notes of unseen programs)."""
    columns = {"own test split": in_domain} if in_domain else {}
    within: dict[str, dict | None] = {"own test split": None} if in_domain else {}
    for name, m in metrics.items():
        columns[f"{name}: all notes"] = m["all"]
        within[f"{name}: all notes"] = m.get("within_set", {}).get("all")
        if m["unseen_programs"] is not None:
            columns[f"{name}: unseen programs"] = m["unseen_programs"]
            within[f"{name}: unseen programs"] = m.get("within_set", {}).get("unseen_programs")
    rows: dict[str, list] = {"notes": [c["notes"] for c in columns.values()],
                             "instruments": [c["instruments"] for c in columns.values()]}
    for key in TABLE_PROBES:
        for features, label in (("mu", "mu"), ("pca", "PCA")):
            rows[f"{key} ({label})"] = [c["probes"][features][key] for c in columns.values()]
    for features, label in (("mu", "mu"), ("pca", "PCA")):
        rows[f"{WITHIN_ROW} ({label})"] = [np.nan if w is None else w[features] for w in within.values()]
    rows["recon MSE (model)"] = [c["recon_mse"]["model"] for c in columns.values()]
    rows["recon MSE (PCA)"] = [c["recon_mse"]["pca"] for c in columns.values()]
    return pd.DataFrame(rows, index=list(columns)).T.astype(float).rename_axis("measure")
