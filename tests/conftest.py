"""Shared fixtures: the real NSynth metadata fixtures, a tiny rendered GM dataset, a split-folder writer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vaelib.config import NSYNTH_FAMILIES, NSYNTH_SOURCES, PROJECT_ROOT, load_config
from vaelib.data.nsynth import QUALITIES

NSYNTH_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nsynth"
SMOKE_PARAMS = PROJECT_ROOT / "params" / "smoke.yaml"


SHARED_RUN = "smoke_run"


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the node ids
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test`` runs two workers with ``--dist loadgroup``), keep each module on
    one worker, so its module fixtures are built once, and every module that reads the session's smoke
    run on the same worker, so that run (the suite's longest setup) is made once."""
    shares_run = {item.module.__name__ for item in items if SHARED_RUN in getattr(item, "fixturenames", ())}
    for item in items:
        name = item.module.__name__
        item.add_marker(pytest.mark.xdist_group(SHARED_RUN if name in shares_run else name))


def pytest_collection_finish(session):
    """Fail before any test when ``--dist loadgroup`` did not take: xdist groups by a suffix of the node ids,
    which pytest-xdist 3.8 cannot set under pytest 9.2 (hence pytest<9.2 in the lock), and the smoke run
    would then be made once per worker."""
    items = session.items
    if getattr(session.config.option, "loadgroup", False) and items and not any("@" in item.nodeid for item in items):
        raise pytest.UsageError("--dist loadgroup: pytest-xdist did not group the tests (no '@group' node ids); "
                                "install the pytest of requirements.lock")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``tests/fixtures/nsynth``: real NSynth examples.json subsets (no audio; provenance in its README.md).

    They are part of the repository, so a missing file is an error, not a skip."""
    for name in ("valid-acoustic-subset.examples.json", "test-acoustic-subset.examples.json"):
        if not (NSYNTH_FIXTURES / name).is_file():
            raise FileNotFoundError(f"{NSYNTH_FIXTURES / name}: the vendored NSynth metadata fixture is missing")
    return NSYNTH_FIXTURES


@pytest.fixture
def read_only_dir(tmp_path):
    """An empty folder of mode 0o555; the test is skipped where that does not block writes (as root)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this user (root?) may write into a folder of mode 0o555, so it cannot be made read-only; "
                        "the simulated write failure covers the path")
        yield folder
    finally:
        folder.chmod(0o755)


@pytest.fixture(scope="session")
def smoke_config():
    return load_config(SMOKE_PARAMS)


@pytest.fixture(scope="session")
def smoke_dataset(tmp_path_factory, smoke_config) -> Path:
    """params/smoke.yaml rendered once per session: 12 GM programs, 168 notes, in NSynth layout."""
    from vaelib.data.render import render_dataset

    root = tmp_path_factory.mktemp("smoke") / "ds"
    render_dataset(smoke_config.render, root, show_progress=False)
    return root


def sine(freq: float, *, sr: int = 16000, seconds: float = 4.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def entry(note_str: str, /, **changes) -> dict:
    """A complete examples.json entry for ``<family>_<source>_<idx>-<pitch>-<vel>``."""
    inst, pitch, vel = note_str.rsplit("-", 2)
    fam, src, _idx = inst.rsplit("_", 2)
    e = {
        "note": 0, "note_str": note_str, "instrument": 0, "instrument_str": inst,
        "instrument_family": NSYNTH_FAMILIES.index(fam), "instrument_family_str": fam,
        "instrument_source": NSYNTH_SOURCES.index(src), "instrument_source_str": src,
        "pitch": int(pitch), "velocity": int(vel), "sample_rate": 16000,
        "qualities": [0] * len(QUALITIES), "qualities_str": [],
    }
    e.update(changes)
    return e


@pytest.fixture
def make_split(tmp_path):
    """Factory: write a split folder with the given entries and, for each, a 4 s 16 kHz sine wav."""

    def make(entries: dict[str, dict], *, name: str = "split", wav: bool = True, sr: int = 16000,
             seconds: float = 4.0, channels: int = 1) -> Path:
        folder = tmp_path / name
        (folder / "audio").mkdir(parents=True)
        (folder / "examples.json").write_text(json.dumps(entries))
        if wav:
            for note_str, e in entries.items():
                freq = 440.0 * 2 ** ((float(e["pitch"]) - 69) / 12)
                audio = sine(freq, sr=sr, seconds=seconds)
                if channels > 1:
                    audio = np.stack([audio] * channels, axis=1)
                sf.write(folder / "audio" / f"{note_str}.wav", audio, sr, subtype="PCM_16")
        return folder

    return make


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, smoke_dataset) -> dict:
    """The whole pipeline (`vaelib run`) on params/smoke.yaml, once per session: the six notebooks
    executed by papermill into ``<tmp>/reports/smoke/``, with one transfer set for 04. Every notebook
    test reads this one run."""
    import shutil

    from vaelib.data.soundfonts import default_soundfont
    from vaelib.report.pipeline import run_pipeline

    tmp = tmp_path_factory.mktemp("run")
    dataset = hostile_copy(smoke_dataset, tmp / "ds")
    # 04's transfer section on one small set: the smoke programs rendered from the bundled SoundFont's copy
    font = tmp / "Copy_GM.sf2"
    shutil.copy(default_soundfont(), font)
    overrides = [f"data.root={dataset}", f"features.cache_dir={tmp}/cache",
                 f"train.checkpoint_dir={tmp}/ckpt",
                 f"analysis.transfer=[{{name: copy, soundfont: {font}, root: {tmp}/transfer_copy}}]"]
    run_dir = run_pipeline(SMOKE_PARAMS, overrides, reports_root=tmp / "reports")
    return {"tmp": tmp, "dataset": dataset, "overrides": overrides, "run_dir": run_dir,
            "cfg": load_config(SMOKE_PARAMS, overrides)}


# Metadata a stranger may have written: markup that would run in a report page if it were not escaped,
# and an unbalanced '$' that would break matplotlib's mathtext in a figure title.
HOSTILE_PREFIX = "<img src=x onerror=alert(1)>$"


def hostile_copy(root: Path, out: Path) -> Path:
    """A copy of an NSynth-layout folder whose every instrument_str (and so note_str and wav name) starts
    with ``HOSTILE_PREFIX``."""
    import shutil

    (out / "audio").mkdir(parents=True)
    examples = json.loads((root / "examples.json").read_text())
    renamed = {}
    for note_str, e in examples.items():
        new = HOSTILE_PREFIX + note_str
        renamed[new] = {**e, "note_str": new, "instrument_str": HOSTILE_PREFIX + e["instrument_str"]}
        shutil.copy2(root / "audio" / f"{note_str}.wav", out / "audio" / f"{new}.wav")
    (out / "examples.json").write_text(json.dumps(renamed))
    if (root / "render_summary.json").is_file():  # what rendered the notes, which the renaming leaves true
        shutil.copy2(root / "render_summary.json", out / "render_summary.json")
    return out
