"""06_explore as executed by papermill in the session's smoke run: its JSON, figures, players and widget."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.slow

FIGURES = ("explore_path.png", "explore_samples.png", "explore_axes.png", "explore_map.png", "explore_sound.png")


@pytest.fixture(scope="module")
def out(smoke_run):
    assert (smoke_run["run_dir"] / "06_explore.ipynb").is_file()
    return smoke_run["run_dir"]


def test_explore_json_holds_the_measured_update_latency(out, smoke_run):
    m = json.loads((out / "explore.json").read_text())
    assert all(k.startswith("explore_") for k in m)
    total, decode, gl = (m[f"explore_{k}_seconds_median"] for k in ("update", "decode", "inversion"))
    assert 0 < decode < total and 0 < gl < total and total == pytest.approx(decode + gl, rel=0.5)
    assert m["explore_update_seconds_max"] >= total and m["explore_gl_iters"] == 32
    assert m["explore_cpu"] and m["explore_cpu_count"] >= 1
    assert m["explore_path"]["steps"] == smoke_run["cfg"].analysis.interp_steps
    assert m["explore_path"]["method"] == "slerp"
    explained = m["explore_principal_explained"]
    assert len(explained) == 4 and explained == sorted(explained, reverse=True) and sum(explained) <= 1
    # the report places the wav of note A, a note of the run: it lands on that note's own point
    assert m["explore_sound"]["file"] == m["explore_sound"]["nearest_note"] + ".wav"
    assert m["explore_sound"]["nearest_distance"] < 1e-2
    assert m["explore_n_notes"] == 168
    merged = json.loads((out / "metrics.json").read_text())
    assert merged["explore_update_seconds_median"] == total


def test_figures_players_and_the_widget(out, smoke_run):
    for name in FIGURES:
        assert (out / name).stat().st_size > 10_000, name
    html = (out / "06_explore.html").read_text()
    steps = smoke_run["cfg"].analysis.interp_steps
    assert html.count("data:audio/wav;base64") >= steps + 3  # the path, two samples, the reconstruction
    nb = nbformat.read(out / "06_explore.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    widget = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widget) == 1 and "vaelib explorer" in widget[0]["data"]["text/plain"]


# --- the explorer in a real JupyterLab, driven by headless Chromium ------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(smoke_run, tmp_path):
    """A JupyterLab server on a free port, serving a copy of 06_explore that points at the smoke run."""
    import os
    import shutil
    import subprocess
    import sys
    import time
    import urllib.request

    pytest.importorskip("selenium", reason="selenium not installed (pip install selenium): browser test skipped")
    pytest.importorskip("jupyterlab", reason="jupyterlab not installed: browser test skipped")
    for tool in ("chromium", "chromedriver"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found (apt-get install -y chromium chromium-driver): browser test skipped")
    from vaelib.config import PROJECT_ROOT

    nb = nbformat.read(PROJECT_ROOT / "notebooks" / "06_explore.ipynb", as_version=4)
    params = nb.cells[1]
    params.source = params.source.replace('run_dir: str = ""', f'run_dir: str = "{smoke_run["run_dir"]}"')
    root = tmp_path / "lab"
    root.mkdir()
    nbformat.write(nb, root / "06_explore.ipynb")
    # every cell attached and drawn: with JupyterLab's windowing, a cell scrolled out of view may be detached or
    # left undrawn, and its audio player found not displayed, depending on where the notebook was scrolled
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    port, token = _free_port(), "vaelib-test"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"), "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTER_DATA_DIR": str(Path(sys.prefix) / "share" / "jupyter")}
    log = open(tmp_path / "lab.log", "w")  # closed with the server, below
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"JupyterLab exited: {(tmp_path / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer within 2 minutes")
        with urllib.request.urlopen(f"{url}/lab/api/settings/@jupyterlab/notebook-extension:tracker?token={token}",
                                    timeout=30) as answer:
            assert json.load(answer)["settings"]["windowingMode"] == "none"  # the settings folder above was read
        yield f"{url}/lab/tree/06_explore.ipynb?token={token}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_the_explorer_answers_a_slider_in_jupyterlab(lab):
    """Open 06_explore in JupyterLab in headless Chromium, run every cell, move the Path tab's slider with
    the keyboard and wait for the tab's audio player to be given new audio."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(lab)
        wait = WebDriverWait(driver, 300, poll_frequency=1)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"))
        run_menu = wait.until(lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel")
                                              if e.text == "Run"), None))
        run_menu.click()
        wait.until(lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, ".lm-Menu-itemLabel")
                                   if e.text == "Run All Cells"), None)).click()
        # every cell has run once the last one shows the metrics it wrote
        WebDriverWait(driver, 900, poll_frequency=2).until(
            lambda d: "explore_update_seconds_median" in d.find_element(By.CSS_SELECTOR, ".jp-Notebook").text)

        def path_audio():
            players = [a for a in driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea audio") if a.is_displayed()]
            return players[0].get_attribute("src") if players else None

        def caption(text: str):
            return next((e.text for e in driver.find_elements(By.CSS_SELECTOR, ".widget-html-content")
                         if e.is_displayed() and text in e.text), None)

        before = wait.until(lambda d: path_audio())
        assert caption("t = 0.50")
        handle = next(h for h in driver.find_elements(By.CSS_SELECTOR, ".widget-slider .noUi-handle")
                      if h.is_displayed())
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus()", handle)
        handle.send_keys(Keys.ARROW_RIGHT)  # one step of 0.05: the kernel decodes t = 0.55
        WebDriverWait(driver, 300, poll_frequency=1).until(lambda d: caption("t = 0.55"))
        WebDriverWait(driver, 60, poll_frequency=1).until(lambda d: path_audio() not in (None, before))
        assert "Griffin-Lim" in caption("t = 0.55")
    finally:
        driver.quit()
