"""vaelib.report.listening_map: the standalone Bokeh page of a tiny synthetic run, read as HTML and driven in
headless Chromium (a click on a note plays it; the map and colour choices swap columns; a path step plays);
the same page with sounds from outside the run placed on it (a click on a star plays the file), and the page
`vaelib encode` writes, opened in the browser."""

from __future__ import annotations

import json
import shutil
import time
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from vaelib.analysis.listening import ListeningMap, PlacedSounds, audio_data_uri
from vaelib.exceptions import ParameterError
from vaelib.report.listening_map import COLOUR_BY, PLAYER_IDS, map_layout, map_page_html, write_map_page

SR = 16000
HOSTILE = "<img src=x onerror=alert(1)>$"  # a name with markup, as a stranger's metadata may hold


def tone(freq: float, seconds: float = 0.4) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def tiny_map(*, timbre: bool = False, budget_bytes: int = 15_000_000, placed: bool = False) -> ListeningMap:
    """Six notes of three families (one instrument named with markup), a three-step path, two or four maps;
    with ``placed``, two sounds from outside the run between the notes (the first named with markup, the
    second without sound) and the context coloured by family."""
    n = 6
    instruments = [HOSTILE + "keyboard_acoustic_000", "string_acoustic_000", "brass_acoustic_000",
                   "keyboard_acoustic_001", "string_acoustic_001", "brass_acoustic_001"]
    notes = pd.DataFrame({
        "note_str": [f"{inst}-{60 + i:03d}-127" for i, inst in enumerate(instruments)],
        "instrument_str": instruments, "instrument_family_str": ["keyboard", "string", "brass"] * 2,
        "instrument_source_str": ["acoustic"] * n, "pitch": [48, 52, 56, 60, 64, 68], "velocity": [127] * n,
        "split": ["test"] * 3 + ["train"] * 3,
        "original": [audio_data_uri(tone(220.0 + 20 * i), sample_rate=SR) for i in range(n)],
        "reconstruction": [audio_data_uri(tone(330.0 + 20 * i), sample_rate=SR) for i in range(n)]})
    rng = np.random.default_rng(0)
    keys = ["pca", "umap"] + (["timbre_pca", "timbre_umap"] if timbre else [])
    # notes spread over a grid, so that each sits well apart from the others on the screen
    grid = np.array([[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]], float)
    coords = {k: grid * (i + 1) + 0.01 * rng.normal(size=(n, 2)) for i, k in enumerate(keys)}
    context = {k: np.concatenate([v, v.mean(0) + rng.normal(size=(20, 2))]) for k, v in coords.items()}
    paths = pd.DataFrame([{"pair": "keyboard:string", "instrument_a": instruments[0], "instrument_b": instruments[1],
                           "pitch": 60, "velocity": 127, "path": 0, "step": s, "t": s / 2,
                           "decoded": audio_data_uri(tone(440.0 + 50 * s), sample_rate=SR)} for s in range(3)])
    path_coords = {k: np.linspace(v[0], v[1], 3) + np.array([0.0, 0.5]) for k, v in coords.items()}
    labels = {k: k.replace("_", " ").upper() + " of mu" for k in keys}
    lmap = ListeningMap(notes=notes, coords=coords, context=context, labels=labels,
                        axes={k: (f"{k} 1", f"{k} 2") for k in keys}, paths=paths, path_coords=path_coords,
                        velocity=127, test_available=3, left_out=0, audio_bytes=0, budget_bytes=budget_bytes,
                        seconds_per_note=0.1, n_iter=8, timbre_dims=16 if timbre else None)
    if placed:
        table = pd.DataFrame({
            "file": [PLACED_NAME, "quiet.flac"], "source_rate": [44100, 8000], "source_channels": [2, 1],
            "source_seconds": [4.0, 1.5], "nearest": [notes["note_str"][0], notes["note_str"][2]],
            "distance": [0.5, 1.25], "original": [audio_data_uri(tone(600.0), sample_rate=SR), ""],
            "reconstruction": [audio_data_uri(tone(700.0), sample_rate=SR), ""]})
        # between the rows of notes and past the path's end, well apart from each of them on the screen
        lmap.placed = PlacedSounds(table=table, coords={k: np.array([[1.5, 0.5], [2.5, 0.5]]) * (i + 1)
                                                        for i, k in enumerate(keys)})
        lmap.context_family = np.array((["keyboard", "string", "brass"] * 9)[:len(context["pca"])])
        lmap.left_out = 1
    return lmap


PLACED_NAME = HOSTILE + "my note.wav"  # a file name is the user's own text


class Tags(HTMLParser):
    """Start tags of a page, with the scripts' sources and the elements a name's markup would become."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_page_is_standalone_and_shows_names_as_text(tmp_path):
    page = write_map_page(tiny_map(), tmp_path / "05_map.html", title=f"Listening map of {HOSTILE}")
    text = page.path.read_text()
    assert page.bytes == len(text.encode()) and page.bytes < page.budget_bytes
    tags = Tags()
    tags.feed(text)
    scripts = [a for t, a in tags.tags if t == "script"]
    assert scripts and not any("src" in a for a in scripts), "every script is inline: the page works offline"
    assert not any(t == "link" for t, _ in tags.tags)
    ids = {a.get("id") for t, a in tags.tags if t in ("audio", "p")}
    assert set(PLAYER_IDS.values()) <= ids
    hrefs = {a.get("href") for t, a in tags.tags if t == "a"}
    assert {"index.html", "05_listening.html"} <= hrefs
    assert not any(t == "img" and a.get("onerror") for t, a in tags.tags), "metadata markup became an element"
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert text.count("</body>") == 1  # the page's own, where vaelib check adds its probe
    assert "[The listening map](05_map.html)" in page.text


def test_layout_offers_every_map_and_colouring():
    from bokeh.models import Select

    for timbre in (False, True):
        lmap = tiny_map(timbre=timbre)
        selects = {s.name: s for s in map_layout(lmap).select({"type": Select})}
        assert [k for k, _ in selects["map"].options] == list(lmap.labels)
        assert len(selects["map"].options) == (4 if timbre else 2)
        assert selects["colour"].options == list(COLOUR_BY)


def test_page_over_its_budget_warns(tmp_path):
    with pytest.warns(UserWarning, match="over its budget"):
        page = write_map_page(tiny_map(budget_bytes=100_000), tmp_path / "05_map.html", title="tiny")
    assert page.bytes > page.budget_bytes


def test_a_page_of_placed_sounds_is_standalone_and_shows_file_names_as_text(tmp_path):
    lmap = tiny_map(placed=True)
    page = write_map_page(lmap, tmp_path / "mine.map.html", title="2 sound(s) on the map", links=())
    text = page.path.read_text()
    tags = Tags()
    tags.feed(text)
    scripts = [a for t, a in tags.tags if t == "script"]
    assert scripts and not any("src" in a for a in scripts) and not any(t == "link" for t, _ in tags.tags)
    assert not any(t == "img" and a.get("onerror") for t, a in tags.tags), "a file name's markup became an element"
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;$my note.wav" in text
    assert not any(t == "a" for t, _ in tags.tags)  # written away from a run folder: nothing to link
    table = lmap.placed.table
    assert table["original"][0] in text and table["reconstruction"][0] in text  # the file and its reconstruction
    assert "Stars are your sounds" in text and "2 sound(s) placed" in text and "left 1 of them without sound" in text
    # the family colours of the context are those of the notes' legend; the placed layer is listed in it
    layout = map_layout(lmap)
    legend = next(iter(layout.select({"name": "legend"})))
    assert "every note of the run" in legend.text and "your sounds" in legend.text
    context = next(iter(layout.select({"name": "context_renderer"})))
    codes = context.data_source.data["family"]
    names = sorted(set(lmap.context_family))  # brass, keyboard, string
    assert codes.dtype == np.uint8 and codes.tolist() == [names.index(f) for f in lmap.context_family]
    palette = context.glyph.fill_color.transform.palette
    notes = next(iter(layout.select({"name": "notes"}))).data
    assert [palette[names.index(f)] for f in notes["family"]] == list(notes["c_family"])  # a family, one colour


def test_a_map_without_projection_is_refused():
    lmap = tiny_map()
    lmap.labels = {}
    with pytest.raises(ParameterError, match="no map"):
        map_page_html(lmap, title="empty")


# --- in a browser -------------------------------------------------------------------------------------------------


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium, the dev extra)"
    for name in ("chromedriver",):
        if shutil.which(name) is None:
            return f"{name} not found on PATH (apt-get install -y chromium chromium-driver)"
    if not any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")):
        return "Chromium not found on PATH (apt-get install -y chromium)"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _browser_missing()
    if reason:
        pytest.skip(f"listening map browser test skipped: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required",
                 "--window-size=1400,1200", "--mute-audio"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.set_script_timeout(20)
    yield driver
    driver.quit()


def _until(probe, timeout: float = 15.0):
    """Call ``probe`` until it returns something truthy (Bokeh runs its callbacks after a change), or time out."""
    deadline = time.time() + timeout
    while True:
        value = probe()
        if value or time.time() > deadline:
            return value
        time.sleep(0.1)


def _wait(driver, script: str, *args, timeout: float = 15.0):
    return _until(lambda: driver.execute_script(script, *args), timeout)


_READY = "return typeof Bokeh !== 'undefined' && Bokeh.documents.length > 0 && Object.keys(Bokeh.index).length > 0"
_MODEL = "const doc = Bokeh.documents[0]; const m = (name) => doc.get_model_by_name(name);"
# Where a data point of a source is on the screen: the plot view maps data to canvas pixels.
_SCREEN = _MODEL + """
const plot = m('map_plot'), src = m(arguments[0]), i = arguments[1];
const find = (v) => { if (v.model === plot) return v;
  for (const c of (v.child_views ?? [])) { const r = find(c); if (r) return r; } return null; };
let view = null;
for (const v of Object.values(Bokeh.index)) { view = find(v); if (view) break; }
const rect = view.canvas_view.el.getBoundingClientRect();
return [rect.left + view.frame.x_scale.compute(src.data.x[i]), rect.top + view.frame.y_scale.compute(src.data.y[i])];
"""
_PLAYERS = """
const [rec, dec, now] = [...arguments].map((id) => document.getElementById(id));
const played = (a) => !a.paused || (a.played.length > 0 && a.played.end(0) > 0);  // playing, or has played
return {rec_src: rec.getAttribute('src'), rec_played: played(rec), dec_src: dec.getAttribute('src'),
        dec_played: played(dec), now: now.textContent};
"""


def _players(driver) -> dict:
    return driver.execute_script(_PLAYERS, PLAYER_IDS["recording"], PLAYER_IDS["decoded"], PLAYER_IDS["now"])


@pytest.fixture(scope="module")
def opened(browser, tmp_path_factory):
    lmap = tiny_map(timbre=True)
    page = write_map_page(lmap, tmp_path_factory.mktemp("map") / "05_map.html", title="tiny listening map")
    browser.get(page.path.as_uri())
    assert _wait(browser, _READY), "Bokeh did not render the page"
    return lmap


def _click(browser, x: float, y: float) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(browser)
    actions.pointer_action.move_to_location(int(round(x)), int(round(y))).pause(0.2).click()
    actions.perform()


def test_a_click_on_a_note_plays_its_recording_then_its_reconstruction(browser, opened):
    lmap, i = opened, 4
    x, y = browser.execute_script(_SCREEN, "notes", i)
    _click(browser, x, y)
    assert _wait(browser, _MODEL + "return m('notes').selected.indices[0] === arguments[0]", i), \
        "the click on the note did not select it"
    state = _until(lambda: (s := _players(browser))["rec_played"] and s)
    assert state, f"the recording did not start playing: {_players(browser)}"
    assert state["rec_src"] == lmap.notes["original"][i]
    assert state["dec_src"] == lmap.notes["reconstruction"][i]
    assert lmap.notes["instrument_str"][i] in state["now"] and "pitch 64" in state["now"]
    # the recording lasts 0.4 s; the reconstruction plays once it has ended
    assert _until(lambda: _players(browser)["dec_played"]), "the reconstruction did not play after the recording"


def test_a_step_of_a_path_plays_what_was_decoded_there(browser, opened):
    lmap = opened
    browser.execute_script(_MODEL + "m('steps').selected.indices = [2];")
    state = _until(lambda: (s := _players(browser))["dec_src"] and s)
    assert state and state["dec_src"] == lmap.paths["decoded"][2] and state["rec_src"] is None
    assert "step 2" in state["now"] and "t = 1.00" in state["now"]


def test_the_map_and_colour_choices_swap_the_columns(browser, opened):
    lmap = opened
    browser.execute_script(_MODEL + "m('map').value = 'timbre_umap';")
    moved = _wait(browser, _MODEL + "const d = m('notes').data; return d.x[0] === d.x_timbre_umap[0] && "
                  "m('steps').data.y[1] === m('steps').data.y_timbre_umap[1] && "
                  "m('lines').data.xs[0][2] === m('lines').data.xs_timbre_umap[0][2] && m('map_plot').title.text")
    assert moved == lmap.labels["timbre_umap"]
    browser.execute_script(_MODEL + "m('colour').value = 'pitch';")
    legend = _wait(browser, _MODEL + "const d = m('notes').data; return d.color.join() === d.c_pitch.join() && "
                   "m('legend').text")
    assert legend and "pitch" in legend
    tooltips = browser.execute_script(_MODEL + "return JSON.stringify(m('notes').data.instrument)")
    assert HOSTILE in json.loads(tooltips)[0]  # the name as data; Bokeh's tooltips escape what they show


def test_the_run_index_links_the_map_when_05_wrote_it():
    from vaelib.report.html import run_index_html

    notebooks = ["04_latent_map", "05_listening"]
    page = run_index_html({"map_page": "05_map.html"}, {}, notebooks, {"run": "r"})
    assert "<a href='05_map.html'>listening map</a>" in page
    assert "05_map.html" not in run_index_html({}, {}, notebooks, {"run": "r"})  # an older 05 wrote none
    assert "05_map.html" not in run_index_html({"map_page": "05_map.html"}, {}, ["04_latent_map"], {"run": "r"})


def test_the_page_passes_the_report_check(browser, tmp_path):
    from vaelib.report.browser_check import find_chromium, page_problems

    for name in ("index.html", "05_listening.html"):  # the pages it links to, as in a run folder
        (tmp_path / name).write_text("<!DOCTYPE html><html><body></body></html>")
    page = write_map_page(tiny_map(), tmp_path / "05_map.html", title="tiny")
    problems, seen = page_problems(page.path, chromium=find_chromium())
    assert problems == [] and seen["audio"] == 2


# --- sounds from outside the run, placed on the page (after every test of the 05 page: this navigates away) -----

# What Bokeh's tooltips show, as text, and how many elements of markup they hold (in the plot's shadow DOM).
_TOOLTIPS = """
const out = [];
const walk = (root) => { for (const el of root.querySelectorAll('*')) {
  if (el.shadowRoot) walk(el.shadowRoot);
  if (String(el.className).includes('Tooltip') && el.shadowRoot) {
    const content = el.shadowRoot.querySelector('.bk-tooltip-content');
    if (content) out.push([content.textContent, content.querySelectorAll('img').length]);
  } } };
walk(document); return out;
"""


@pytest.fixture(scope="module")
def opened_placed(browser, tmp_path_factory):
    lmap = tiny_map(timbre=True, placed=True)
    page = write_map_page(lmap, tmp_path_factory.mktemp("placed") / "mine.map.html", title="placed", links=())
    browser.get(page.path.as_uri())
    assert _wait(browser, _READY), "Bokeh did not render the page"
    return lmap


def _hover(browser, x: float, y: float) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(browser)
    actions.pointer_action.move_to_location(int(round(x)), int(round(y))).pause(0.5)
    actions.perform()


def test_a_click_on_a_placed_sound_plays_the_file_then_its_reconstruction(browser, opened_placed):
    from selenium.common.exceptions import NoAlertPresentException

    table = opened_placed.placed.table
    x, y = browser.execute_script(_SCREEN, "placed", 0)
    _hover(browser, x, y)
    tips = _until(lambda: [t for t in browser.execute_script(_TOOLTIPS) if PLACED_NAME in t[0]])
    assert tips and "44100 Hz, 2 channel(s), 4.00 s" in tips[0][0], "the star's tooltip did not show its file"
    assert tips[0][1] == 0  # the name's markup is text there, no element
    with pytest.raises(NoAlertPresentException):  # and nothing of it ran
        browser.switch_to.alert.text  # noqa: B018
    _click(browser, x, y)
    assert _wait(browser, _MODEL + "return m('placed').selected.indices[0] === 0"), \
        "the click on the star did not select it"
    state = _until(lambda: (s := _players(browser))["rec_played"] and s)
    assert state, f"the file did not start playing: {_players(browser)}"
    assert state["rec_src"] == table["original"][0] and state["dec_src"] == table["reconstruction"][0]
    assert state["now"].startswith(PLACED_NAME) and "44100 Hz, 2 channel(s), 4.00 s" in state["now"]
    assert f"nearest run note {table['nearest'][0]}" in state["now"]
    assert _until(lambda: _players(browser)["dec_played"]), "the reconstruction did not play after the file"


def test_a_placed_sound_without_sound_says_so_and_the_stars_follow_the_map(browser, opened_placed):
    lmap = opened_placed
    browser.execute_script(_MODEL + "m('placed').selected.indices = [1];")
    state = _until(lambda: (s := _players(browser))["now"].startswith("quiet.flac") and s)
    assert state and "no sound in this page" in state["now"] and state["rec_src"] is None and state["dec_src"] is None
    browser.execute_script(_MODEL + "m('map').value = 'timbre_umap';")
    moved = _wait(browser, _MODEL + "const d = m('placed').data; return d.x[1] === d.x_timbre_umap[1] && "
                  "d.y[0] === d.y_timbre_umap[0] && m('notes').data.x[0] === m('notes').data.x_timbre_umap[0]")
    assert moved
    assert browser.execute_script(_MODEL + "return m('placed').data.x[1]") == pytest.approx(
        lmap.placed.coords["timbre_umap"][1, 0])


@pytest.fixture(scope="module")
def encoded_page(smoke_dataset, tmp_path_factory):
    """`vaelib encode` of a folder holding a 44.1 kHz stereo wav whose name holds markup, on the smoke run."""
    import soundfile as sf
    from _fixtures_analysis import trained_smoke

    from vaelib.cli import main

    trained = trained_smoke(smoke_dataset, tmp_path_factory.mktemp("encode_run"))
    work = tmp_path_factory.mktemp("encode_page")
    t = np.arange(4 * 44100) / 44100
    y = (0.4 * np.sin(2 * np.pi * 262.0 * t) * np.exp(-1.5 * t)).astype(np.float32)
    (work / "mine").mkdir()
    sf.write(work / "mine" / PLACED_NAME, np.stack([y, 0.5 * y], axis=1), 44100, subtype="PCM_16")
    sets = [x for o in trained["overrides"] for x in ("--set", o)]
    out = work / "out" / "mine.parquet"
    # UMAP left out: its numba compilation alone would take longer than the rest
    assert main(["encode", "--params", str(trained["params"]), *sets, "--set", "analysis.umap=false", "--quiet",
                 str(work / "mine"), "--out", str(out)]) == 0
    return out.with_suffix(".map.html")


def test_the_encode_page_plays_the_file_as_encoded(browser, encoded_page):
    import base64
    import io

    import soundfile as sf

    from vaelib.report.browser_check import find_chromium, page_problems

    problems, seen = page_problems(encoded_page, chromium=find_chromium())
    assert problems == [] and seen["audio"] == 2
    browser.get(encoded_page.as_uri())
    assert _wait(browser, _READY), "Bokeh did not render the page"
    # the star may sit on its nearest note (a click there selects both), so it is selected as a click would
    browser.execute_script(_MODEL + "m('placed').selected.indices = [0];")
    state = _until(lambda: (s := _players(browser))["rec_played"] and s)
    assert state, f"the file did not start playing: {_players(browser)}"
    assert state["now"].startswith(PLACED_NAME) and "44100 Hz, 2 channel(s), 4.00 s" in state["now"]
    # what plays is the file downmixed and resampled to the run's 16 kHz and 4 s, at a peak of 0.9
    audio, rate = sf.read(io.BytesIO(base64.b64decode(state["rec_src"].split(",", 1)[1])), dtype="float32")
    assert rate == 16000 and abs(len(audio) - 4 * 16000) < 2000 and 0.8 < np.abs(audio).max() < 1.0
    assert state["dec_src"].startswith("data:audio/mpeg;base64,") and state["dec_src"] != state["rec_src"]
    nearest = browser.execute_script(_MODEL + "return [m('placed').data.nearest[0], m('notes').data.note[0]]")
    assert nearest[0] == nearest[1]  # the nearest run note is the one note with sound
