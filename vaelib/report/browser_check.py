"""Check the HTML reports as a reader would see them: every page loaded in headless Chromium.

A page fails on an image the browser could not decode or that has no alternative text, a relative link or
media source that points at no file, or an executed notebook holding an error output.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat

__all__ = ["find_chromium", "check_reports", "page_problems"]

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic")
# Runs in the page after load and writes what it found into the DOM that --dump-dom prints.
_PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                   .map(function (i) { return (i.getAttribute('src') || '').slice(0, 80); });
  var out = document.createElement('pre');
  out.id = 'vaelib-check';
  out.textContent = JSON.stringify({images: imgs.length, broken: broken,
                                    audio: document.querySelectorAll('audio').length});
  document.body.appendChild(out);
});
</script>"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


# What nbconvert writes into an image's alt when the notebook gave it none: no description at all.
NO_ALT_PLACEHOLDER = "No description has been provided for this image"


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.without_alt = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for attr in ("href", "src"):
            if tag in ("a", "img", "audio", "source", "video") and attrs.get(attr):
                self.refs.append((tag, attrs[attr]))
        alt = (attrs.get("alt") or "").strip()
        if tag == "img" and (not alt or alt == NO_ALT_PLACEHOLDER):
            self.without_alt += 1


def _broken_links(page: Path) -> list[str]:
    parser = _Refs()
    parser.feed(page.read_text(errors="replace"))
    problems = [f"{page}: {parser.without_alt} image(s) without alternative text (a screen reader says nothing "
                "of them)"] if parser.without_alt else []
    for tag, ref in parser.refs:
        url = urlparse(ref)
        if url.scheme in ("data", "http", "https", "mailto", "javascript") or ref.startswith("#"):
            continue
        target = (page.parent / unquote(url.path)).resolve()
        if not target.exists():
            problems.append(f"{page}: <{tag}> points at missing {ref}")
    return problems


def _notebook_errors(page: Path) -> list[str]:
    ipynb = page.with_suffix(".ipynb")
    if not ipynb.is_file():
        return []
    nb = nbformat.read(ipynb, as_version=4)
    return [f"{page}: cell {i} has an error output ({o.get('ename')}: {o.get('evalue')})"
            for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def _browser_problems(page: Path, chromium: str, timeout: float) -> tuple[list[str], dict]:
    text = page.read_text(errors="replace")
    probe = re.sub(r"</body>", _PROBE + "</body>", text, count=1, flags=re.IGNORECASE)
    if probe == text:
        probe = text + _PROBE
    # Beside the page, so its relative references resolve as they would for a reader.
    with tempfile.NamedTemporaryFile("w", suffix=".html", prefix=".check-", dir=page.parent,
                                     delete=False) as fh:
        fh.write(probe)
        tmp = Path(fh.name)
    profile = tempfile.mkdtemp(prefix="vaelib-chromium-")
    try:
        proc = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000",
             "--dump-dom", tmp.as_uri()],
            capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [f"{page}: Chromium did not load the page within {timeout:.0f} s"], {}
    except OSError as exc:
        return [f"{page}: Chromium ({chromium}) could not start: {exc}"], {}
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(profile, ignore_errors=True)
    match = re.search(r'<pre id="vaelib-check">(.*?)</pre>', proc.stdout, flags=re.DOTALL)
    if not match:
        return [f"{page}: Chromium did not finish loading the page (exit {proc.returncode})"], {}
    found = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    return [f"{page}: image not displayed ({src})" for src in found["broken"]], found


def page_problems(page: Path, *, chromium: str | None, timeout: float = 60.0) -> tuple[list[str], dict]:
    """Problems of one page, and what the browser counted on it (images, audio players)."""
    problems = _broken_links(page) + _notebook_errors(page)
    seen: dict = {}
    if chromium:
        browser, seen = _browser_problems(page, chromium, timeout)
        problems += browser
    return problems, seen


def check_reports(root: Path, *, use_browser: bool = True,
                  chromium: str | None = None) -> tuple[list[str], dict[str, dict]]:
    """Check every report page under ``root`` (staging and failed runs excluded).

    Returns
    -------
    problems : one line per problem, naming the page
    seen : per page, the browser's counts of images and audio players
    """
    chromium = (chromium or find_chromium()) if use_browser else None
    problems: list[str] = []
    seen: dict[str, dict] = {}
    for page in sorted(Path(root).glob("**/*.html")):
        rel = page.relative_to(root).parts
        if any(p.startswith(".") or p.endswith(".failed") for p in rel):
            continue
        page_issues, counts = page_problems(page, chromium=chromium)
        problems += page_issues
        seen[str(page.relative_to(root))] = counts
    return problems, seen
