"""vaelib.data.soundfonts: where a SoundFont name points, the Debian package of a missing one, checked before a run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vaelib.config import PROJECT_ROOT, load_config
from vaelib.data import fm_soundfont as fm_mod
from vaelib.data import soundfonts as sf_mod
from vaelib.data.soundfonts import (
    DEBIAN_SOUNDFONTS,
    check_soundfonts,
    debian_package,
    default_soundfont,
    present_soundfonts,
    resolve_soundfont,
    resolve_soundfonts,
    source_names,
    source_prefix,
)
from vaelib.exceptions import DataError, ParameterError

SMOKE = PROJECT_ROOT / "params" / "smoke.yaml"
FLUID = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")


@pytest.fixture
def fake_debian(monkeypatch, tmp_path):
    """A Debian SoundFont that is not installed: ``Fake_GM.sf2`` of package ``fake-soundfont-gm``."""
    path = tmp_path / "usr" / "share" / "sounds" / "sf2" / "Fake_GM.sf2"
    monkeypatch.setitem(DEBIAN_SOUNDFONTS, str(path), "fake-soundfont-gm")
    return path


def test_debian_table_names_the_packages():
    assert DEBIAN_SOUNDFONTS["/usr/share/sounds/sf2/FluidR3_GM.sf2"] == "fluid-soundfont-gm"
    assert debian_package("FluidR3_GM.sf2") == debian_package("/elsewhere/FluidR3_GM.sf2") == "fluid-soundfont-gm"
    assert debian_package("OPL-3_FM_128M.sf2") == "opl3-soundfont"
    assert debian_package("sf_GMbank.sf2") == "csound-soundfont"
    assert debian_package("MyFont.sf2") is None
    assert all(Path(p).suffix in (".sf2", ".sf3") and Path(p).is_absolute() for p in DEBIAN_SOUNDFONTS)


def test_bare_names_resolve(tmp_path, monkeypatch, fake_debian):
    # '' and the bundled file's name are the SoundFont inside the pretty_midi wheel, found with pip alone
    assert resolve_soundfont("") == resolve_soundfont("TimGM6mb.sf2") == default_soundfont()
    assert resolve_soundfonts("") == resolve_soundfonts(()) == [default_soundfont()]
    # a Debian name is looked up where its package installs it
    fake_debian.parent.mkdir(parents=True)
    shutil.copy(default_soundfont(), fake_debian)
    assert resolve_soundfont("Fake_GM.sf2") == fake_debian
    # a path is a path: relative to the project, or absolute
    mine = tmp_path / "mine.sf3"
    shutil.copy(default_soundfont(), mine)
    assert resolve_soundfont(str(mine)) == mine
    assert source_names(("a/One.sf2", "Two.sf3")) == ["One.sf2", "Two.sf3"] and source_names("") == ["TimGM6mb.sf2"]


def test_present_soundfonts_looks_without_raising_or_writing(tmp_path, monkeypatch, fake_debian):
    monkeypatch.setattr(fm_mod, "FM_FOLDER", str(tmp_path / "fm"))
    mine = tmp_path / "Mine.sf2"
    shutil.copy(default_soundfont(), mine)
    spec = ("TimGM6mb.sf2", "Fake_GM.sf2", str(mine), "vaelib_fm.sf2", str(tmp_path / "Gone.sf2"))
    assert present_soundfonts(spec) == [default_soundfont(), None, mine, None, None]
    assert not (tmp_path / "fm").exists()  # the project's FM bank is not written just to be looked at
    (tmp_path / "fm").mkdir()
    shutil.copy(default_soundfont(), tmp_path / "fm" / "vaelib_fm.sf2")
    assert present_soundfonts("vaelib_fm.sf2") == [tmp_path / "fm" / "vaelib_fm.sf2"]
    assert present_soundfonts("") == [default_soundfont()]


def test_a_missing_debian_soundfont_names_its_package(fake_debian):
    with pytest.raises(ParameterError, match=rf"render.soundfont {fake_debian}: file not found .*"
                                             r"`apt-get install fake-soundfont-gm`"):
        resolve_soundfont("Fake_GM.sf2")
    # the same file given by another path: its name still tells the package
    with pytest.raises(ParameterError, match=r"/opt/fonts/Fake_GM.sf2: file not found .*apt-get install fake-"):
        resolve_soundfont("/opt/fonts/Fake_GM.sf2")
    with pytest.raises(ParameterError, match=r"Unknown.sf2: file not found$"):  # not Debian's: no package named
        resolve_soundfont("Unknown.sf2")
    with pytest.raises(ParameterError, match=r"render.soundfont\[1\] .*Fake_GM.sf2: file not found"):
        resolve_soundfonts(["TimGM6mb.sf2", "Fake_GM.sf2"])


def test_fluidr3_is_debians():
    if not FLUID.is_file():
        pytest.skip(f"{FLUID} is not installed (apt-get install fluid-soundfont-gm)")
    assert resolve_soundfont("FluidR3_GM.sf2") == FLUID


def test_source_prefixes():
    assert source_prefix("FluidR3_GM.sf2") == "fluidr3gm" and source_prefix("/x/TimGM6mb.sf2") == "timgm6mb"
    assert source_prefix("OPL-3_FM_128M.sf2") == "opl3fm128m"
    with pytest.raises(ParameterError, match="no letter or digit"):
        source_prefix("__.sf2")


def test_a_run_naming_a_missing_soundfont_stops_before_any_work(tmp_path, fake_debian):
    from vaelib.analysis.run import start_run
    from vaelib.report.pipeline import run_pipeline

    for override in ("render.soundfont=Fake_GM.sf2",
                     "analysis.transfer=[{name: fake, soundfont: Fake_GM.sf2}]"):
        cfg = load_config(SMOKE, [override])
        with pytest.raises(ParameterError, match="Fake_GM.sf2: file not found .*apt-get install fake-soundfont-gm"):
            check_soundfonts(cfg)
        with pytest.raises(ParameterError, match="apt-get install fake-soundfont-gm"):
            run_pipeline(SMOKE, [override], reports_root=tmp_path / "reports")
        with pytest.raises(ParameterError, match="apt-get install fake-soundfont-gm"):
            start_run(SMOKE, [override], run_dir=tmp_path / "run")
    assert not (tmp_path / "reports" / "smoke").exists() and not (tmp_path / "run").exists()
    # nothing is rendered with render.enabled false, so its SoundFont is not needed
    check_soundfonts(load_config(SMOKE, ["render.soundfont=Fake_GM.sf2", "render.enabled=false"]))
    # a transfer folder that is neither there nor renderable
    cfg = load_config(SMOKE, [f"analysis.transfer=[{{name: gone, root: {tmp_path / 'gone'}}}]"])
    with pytest.raises(DataError, match=r"analysis.transfer\[0\].root \(gone\): .*gone: dataset folder not found"):
        check_soundfonts(cfg)


def _damaged(kind: str, path: Path) -> Path:
    whole = default_soundfont().read_bytes()
    path.write_bytes({"empty": b"", "text": b"not a soundfont\n", "truncated": whole[:100_000],
                      "riff_of_another_kind": b"RIFF" + whole[4:8] + b"WAVE" + whole[12:],
                      "damaged_inside": whole[:12] + b"\0" * (len(whole) - 12)}[kind])
    return path


@pytest.mark.parametrize(("kind", "said"), [
    ("empty", "the file is empty"), ("text", "not a SoundFont .*b'not a soundf"),
    ("truncated", "truncated: its header announces 5,994,284 bytes, the file holds 100,000"),
    ("riff_of_another_kind", "not a SoundFont .*RIFF 'sfbk' header")])
def test_a_damaged_soundfont_is_named_before_any_work(tmp_path, kind, said):
    from vaelib.data.render import render_dataset

    bad = _damaged(kind, tmp_path / f"{kind}.sf2")
    with pytest.raises(DataError, match=rf"analysis.transfer\[0\].soundfont \(x\) {bad}: {said}"):
        check_soundfonts(load_config(SMOKE, [f"analysis.transfer=[{{name: x, soundfont: {bad}}}]"]))
    with pytest.raises(DataError, match=f"render.soundfont {bad}: {said}"):
        render_dataset(load_config(SMOKE, [f"render.soundfont={bad}"]).render, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_a_soundfont_damaged_past_its_header_is_named_by_the_render(tmp_path):
    from vaelib.data.render import render_dataset

    bad = _damaged("damaged_inside", tmp_path / "inside.sf2")
    assert resolve_soundfont(str(bad)) == bad  # a whole header: only the synth can tell
    cfg = load_config(SMOKE, [f"render.soundfont={bad}", "render.programs=[0]"]).render
    with pytest.raises(DataError, match=f"{bad}: tinysoundfont could not read this SoundFont"):
        render_dataset(cfg, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_module_names_no_missing_symbol():
    assert set(sf_mod.__all__) <= set(dir(sf_mod))
