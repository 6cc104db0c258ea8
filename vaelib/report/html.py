"""Self-contained HTML: executed notebooks through nbconvert, and the index pages of runs and sweeps.

Figures are embedded as data URIs and audio players carry their data, so every page reads and plays
on its own; links between pages are relative so a copied ``reports/`` folder still works.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

import nbformat

from vaelib.io import atomic_write_text

__all__ = ["notebook_to_html", "run_index_html", "runs_index_html", "sweep_index_html", "KEY_METRICS",
           "EXTRA_PAGES", "flatten_metrics", "png_data_uri"]

# Shown, in this order, in the index tables; nested keys are joined with '.'.
KEY_METRICS = (
    "latent_dim", "active_units", "test_recon_mse", "pca_test_recon_mse",
    "probes.mu.family_logreg", "probes.pca.family_logreg", "probes.mu.family_knn",
    "probes.mu.pitch1_logreg", "probes.pca.pitch1_logreg",
    "interp_step_ratio_median", "interp_centroid_spearman_median", "gl_logmel_mae_db",
    "gl_logmel_mae_db_loud", "epoch_seconds_median",
)

# Pages a notebook writes beside its report, linked after it: (the metric naming the page's file, its link text).
EXTRA_PAGES = {"05_listening": (("map_page", "listening map"),)}

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.pass{color:#176c2b;font-weight:600} .fail{color:#b0201a;font-weight:600}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}
img{max-width:100%}
"""


def _is_progress_noise(output: dict) -> bool:
    # tqdm bars arrive as stderr streams full of carriage returns: useful in the log, noise in a report.
    return output.get("output_type") == "stream" and output.get("name") == "stderr" and "\r" in output.get("text", "")


def _with_alt_text(output: dict) -> dict:
    """An image output whose metadata carries alternative text (vaelib.report.plots.show) given an HTML form
    that keeps it: the lab template draws a PNG without its ``alt``, and HTML comes first in its order."""
    data = output.get("data", {})
    meta = output.get("metadata", {}).get("image/png", {})
    if "image/png" not in data or "text/html" in data or not isinstance(meta, dict) or not meta.get("alt"):
        return output
    png = "".join(data["image/png"].split())
    width = f" width={int(meta['width'])}" if isinstance(meta.get("width"), (int, float)) else ""
    data["text/html"] = f'<img src="data:image/png;base64,{png}" alt="{html.escape(str(meta["alt"]))}"{width}>'
    return output


def notebook_to_html(ipynb: Path, out: Path, *, keep_code: bool = False) -> None:
    """Render an executed notebook to self-contained HTML (code cells hidden unless ``keep_code``)."""
    from nbconvert import HTMLExporter

    nb = nbformat.read(ipynb, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [_with_alt_text(o) for o in cell.get("outputs", []) if not _is_progress_noise(o)]
    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input = not keep_code
    exporter.exclude_input_prompt = not keep_code
    exporter.exclude_output_prompt = not keep_code
    body, _resources = exporter.from_notebook_node(nb)
    atomic_write_text(out, _without_mathjax(body))


_MATHJAX = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.DOTALL)


def _without_mathjax(body: str) -> str:
    """The page without nbconvert's MathJax: the notebooks typeset no TeX, the script would be fetched from
    a CDN (a report must work offline), and it would read the text between two '$' of names from metadata
    as TeX."""
    return _MATHJAX.sub("", body)


def flatten_metrics(metrics: dict, prefix: str = "") -> dict:
    """``{'probes': {'mu': {'family_logreg': 0.4}}}`` -> ``{'probes.mu.family_logreg': 0.4}``."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, name + "."))
        else:
            flat[name] = value
    return flat


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if value is None:
        return "–"
    return html.escape(str(value))


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def _targets_table(targets: dict, notebooks: list[str] | None = None) -> str:
    """Measured targets with their verdict, then the targets of the study's table whose notebook this
    run did not execute (so a reader sees what was not checked, not only what passed)."""
    from vaelib.analysis.targets import TARGETS

    rows = []
    for name, t in targets.items():
        ok = t.get("pass") if isinstance(t, dict) else None
        cls, word = ("pass", "met") if ok else ("fail", "missed") if ok is not None else ("", "–")
        value = t.get("value") if isinstance(t, dict) else t
        threshold = t.get("threshold") if isinstance(t, dict) else None
        text = t.get("target", "") if isinstance(t, dict) else ""
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(text))}</td><td>{_fmt(value)}</td>"
                    f"<td>{_fmt(threshold)}</td><td class='{cls}'>{word}</td></tr>")
    if notebooks is not None:
        for t in TARGETS:
            if t.key not in targets and t.notebook not in notebooks:
                rows.append(f"<tr><td>{html.escape(t.key)}</td><td>{html.escape(t.text)}</td><td>–</td>"
                            f"<td>{_fmt(t.threshold)}</td><td>not run ({html.escape(t.notebook)})</td></tr>")
    if not rows:
        return "<p>No targets were measured in this run.</p>"
    return ("<table><tr><th>target</th><th>what</th><th>measured</th><th>threshold</th><th>verdict</th></tr>"
            + "".join(rows) + "</table>")


def run_index_html(metrics: dict, config: dict, notebooks: list[str], info: dict) -> str:
    """The page of one run: key metrics, targets, links to each report (and to the pages beside it,
    ``EXTRA_PAGES``, when its metrics name them), the resolved params, commit, date."""
    flat = flatten_metrics({k: v for k, v in metrics.items() if k not in ("targets", "run_info")})
    key_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(flat[k])}</td></tr>"
                       for k in KEY_METRICS if k in flat)
    for name in ("n_notes", "n_instruments"):
        if isinstance(metrics.get(name), dict):
            key_rows += f"<tr><td>{name}</td><td>{_fmt(metrics[name])}</td></tr>"
    seconds = info.get("notebook_seconds", {})
    links = "".join(
        f"<li><a href='{n}.html'>{n}</a> ({_fmt(seconds.get(n))} s) · <a href='{n}.ipynb'>executed notebook</a>"
        + "".join(f" · <a href='{html.escape(str(metrics[key]))}'>{html.escape(label)}</a>"
                  for key, label in EXTRA_PAGES.get(n, ()) if metrics.get(key))
        + "</li>" for n in notebooks)
    import yaml

    body = (
        f"<p>Commit <code>{html.escape(info.get('commit', ''))}</code> · {html.escape(info.get('date', ''))} · "
        f"params <code>{html.escape(str(info.get('params_file', '')))}</code>"
        f"{' with ' + html.escape(' '.join(info['overrides'])) if info.get('overrides') else ''} · "
        f"{_fmt(info.get('total_seconds'))} s · <a href='../index.html'>all runs</a></p>"
        f"<h2>Reports</h2><ul>{links}</ul>"
        f"<h2>Key metrics</h2><table><tr><th>metric</th><th>value</th></tr>{key_rows}</table>"
        f"<p>Every figure: <a href='metrics.json'>metrics.json</a>.</p>"
        f"<h2>Targets</h2>{_targets_table(metrics.get('targets', {}), notebooks)}"
        f"<h2>Resolved params</h2><pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>"
    )
    return _page(f"Run {info.get('run', '')}", body)


def _metrics_table(runs: list[tuple[str, dict]], link_suffix: str = "/index.html") -> str:
    flats = [(name, flatten_metrics({k: v for k, v in m.items() if k != "targets"})) for name, m in runs]
    cols = [k for k in KEY_METRICS if any(k in f for _, f in flats)]
    head = "<tr><th>run</th><th>date</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"
    rows = []
    for name, flat in flats:
        cells = "".join(f"<td>{_fmt(flat.get(c))}</td>" for c in cols)
        date = _fmt(flat.get("run_info.date"))
        rows.append(f"<tr><td><a href='{html.escape(name)}{link_suffix}'>{html.escape(name)}</a></td>"
                    f"<td>{date}</td>{cells}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def runs_index_html(runs: list[tuple[str, dict]]) -> str:
    """``reports/index.html``: every run with its key metrics and a link to its page."""
    if not runs:
        return _page("VAE timbre space: runs", "<p>No runs yet: <code>make reports</code> writes the first.</p>")
    return _page("VAE timbre space: runs", _metrics_table(runs))


def png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def sweep_index_html(runs: list[tuple[str, dict]], figures: list[tuple[str, str]]) -> str:
    """``reports/experiments/index.html``: the experiments side by side, then the trade-off plots."""
    figs = "".join(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='{uri}'>"
                   for title, uri in figures)
    body = (_metrics_table(runs) + figs
            + "<p><a href='../index.html'>all runs</a> · raw figures: "
            + " ".join(f"<a href='{html.escape(n)}/metrics.json'>{html.escape(n)}</a>" for n, _ in runs) + "</p>")
    return _page("Experiments: reconstruction vs timbre structure", body)
