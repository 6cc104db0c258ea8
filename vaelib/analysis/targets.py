"""The study's targets in one table, evaluated on a run's metrics.

The analysis notebooks, the run's index page and ``docs/results.md`` all read :data:`TARGETS`, so a
threshold lives in one place. A target's ``threshold`` is a number or the name of another metric
(the PCA baseline measured in the same run); a target with ``unless`` applies only to runs whose
config has that boolean set to false (a decoder given the pitch makes the pitch probe meaningless).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from vaelib.analysis.interpolate import CENTROID_MIN_REL_DIFF
from vaelib.config import Config
from vaelib.exceptions import ParameterError

__all__ = ["Target", "TARGETS", "metric_value", "check_target", "evaluate_targets", "targets_frame", "targets_verdict",
           "targets_reference"]


@dataclass(frozen=True)
class Target:
    """One target: ``metric op threshold`` over the metrics a notebook writes."""

    key: str
    notebook: str
    metric: str  # dotted path into the notebook's metrics, e.g. "probes.mu.pitch1_logreg"
    op: str  # ">=", "<=", or "==" (a verdict string)
    threshold: float | str  # a number, a verdict, or the dotted path of a metric of the same run
    text: str
    unless: str = ""  # "section.key" of a boolean config field that makes the target not apply


TARGETS: tuple[Target, ...] = (
    Target("active_units_fraction", "03_diagnostics", "active_units_fraction", ">=", 0.9,
           "active units at least 90% of latent_dim (test notes)"),
    Target("no_collapse", "03_diagnostics", "collapse.verdict", "==", "none", "no posterior collapse"),
    Target("test_recon_mse_vs_pca", "03_diagnostics", "test_recon_mse", "<=", "pca_test_recon_mse",
           "test reconstruction MSE no worse than PCA's"),
    Target("family_logreg_margin_vs_pca", "04_latent_map", "family_logreg_margin_vs_pca", ">=", 0.10,
           "family accuracy of the logistic probe on mu at least 10 points above the same probe on PCA features"),
    Target("interp_step_ratio_median", "04_latent_map", "interp_step_ratio_median", "<=", 2.5,
           "median largest-to-mean step ratio at most 2.5"),
    Target("interp_centroid_spearman_median", "04_latent_map", "interp_centroid_spearman_median", ">=", 0.9,
           f"median |Spearman| of the centroid at least 0.9 (pairs whose end centroids differ > "
           f"{CENTROID_MIN_REL_DIFF:.0%})"),
    Target("pitch1_logreg", "04_latent_map", "probes.mu.pitch1_logreg", ">=", 0.85,
           "pitch within one semitone (logistic probe on mu) at least 0.85", unless="model.pitch_conditioning"),
)


def metric_value(metrics: dict, path: str) -> Any:
    """The value at dotted ``path`` of ``metrics``; None when any part is missing."""
    value: Any = metrics
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def check_target(value: float | None, threshold: float, *, op: str, text: str) -> dict:
    """One numeric target: the value, the threshold and whether it is met (``op``: '>=' or '<=').

    A value of None (not measurable) or NaN fails.
    """
    if op not in (">=", "<="):
        raise ParameterError(f"op: expected '>=' or '<=', got {op!r}")
    finite = value is not None and math.isfinite(value)
    ok = finite and (value >= threshold if op == ">=" else value <= threshold)
    return {"value": float(value) if finite else None, "threshold": float(threshold), "op": op, "pass": bool(ok),
            "target": text}


def _applies(target: Target, cfg: Config) -> bool:
    if not target.unless:
        return True
    section, key = target.unless.split(".")
    return not getattr(getattr(cfg, section), key)


def evaluate_targets(metrics: dict, *, notebook: str, cfg: Config) -> dict:
    """Every target of ``notebook`` that applies to ``cfg``, measured on ``metrics``.

    Returns
    -------
    ``{key: {"value", "threshold", "op", "pass", "target"}}`` in table order; a missing or non-finite
    value is a failed target, not a missing one.
    """
    out = {}
    for t in TARGETS:
        if t.notebook != notebook or not _applies(t, cfg):
            continue
        value = metric_value(metrics, t.metric)
        if t.op == "==":
            out[t.key] = {"value": value, "threshold": t.threshold, "op": "==", "pass": value == t.threshold,
                          "target": t.text}
            continue
        threshold = metric_value(metrics, t.threshold) if isinstance(t.threshold, str) else t.threshold
        if threshold is None:
            raise ParameterError(f"target {t.key}: the baseline metric {t.threshold!r} is not in the metrics")
        out[t.key] = check_target(value, threshold, op=t.op, text=t.text)
    return out


def targets_frame(targets: dict) -> pd.DataFrame:
    """The targets as a table: target text, value, threshold, pass."""
    return pd.DataFrame(targets).T.reindex(columns=["target", "value", "threshold", "pass"])


def targets_verdict(targets: dict) -> str:
    """One markdown sentence: every target met, or the missed ones with value and threshold."""
    missed = [k for k, t in targets.items() if not t["pass"]]
    if not missed:
        return "**All targets of this notebook are met.**"
    return "**Missed targets:** " + ", ".join(f"{k} ({targets[k]['value']} vs {targets[k]['threshold']})"
                                              for k in missed)


def targets_reference() -> str:
    """A markdown table of every target (for ``docs/results.md``)."""
    lines = ["| target | notebook | metric | must be | threshold | applies |", "|---|---|---|---|---|---|"]
    for t in TARGETS:
        threshold = f"`{t.threshold}` of the same run" if isinstance(t.threshold, str) and t.op != "==" \
            else f"`{t.threshold}`"
        applies = f"unless `{t.unless}`" if t.unless else "always"
        lines.append(f"| `{t.key}` | {t.notebook} | `{t.metric}` | `{t.op}` | {threshold} | {applies} |")
    return "\n".join(lines)
