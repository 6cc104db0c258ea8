"""vaelib.report.explorer: the explorer's widgets driven without a browser (each control moved in Python),
and its figures."""

from __future__ import annotations

import datetime
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from _fixtures_analysis import TinyVAE, random_spectrograms, synthetic_meta
from conftest import sine

pytest.importorskip("ipywidgets")

from vaelib.analysis import explore  # noqa: E402
from vaelib.config import FeatureConfig  # noqa: E402
from vaelib.exceptions import ParameterError  # noqa: E402
from vaelib.report import explorer as ui  # noqa: E402

CFG = FeatureConfig()
N_ITER = 2


def data(value) -> bytes:
    """A widget's bytes value (ipywidgets keeps it as a memoryview)."""
    return bytes(value)


@pytest.fixture(scope="module")
def built():
    model = TinyVAE(latent_dim=5)
    meta = synthetic_meta()
    space = explore.explore_space(model, random_spectrograms(len(meta)), meta, cfg=CFG)
    run = SimpleNamespace(model=model)  # what build_explorer reads of a TrainedRun, given the space
    return ui.build_explorer(run, space=space, pitch=52, n_iter=N_ITER), space


def test_every_tab_shows_its_first_update(built):
    ex, _ = built
    assert ex.titles == ("Path", "Axes", "Sample", "Your sound") and len(ex.children) == 4
    for tab in (ex.path, ex.axes, ex.sample):
        assert data(tab.view.image.value).startswith(b"\x89PNG") and data(tab.view.audio.value).startswith(b"RIFF")
        assert not tab.view.audio.autoplay  # opening the notebook plays nothing
    assert data(ex.sound.map.value).startswith(b"\x89PNG") and ex.sound.last is None
    assert "vaelib explorer" in repr(ex)  # what a display without a frontend shows
    assert ex.path.a.pitch.value == 52 and ex.path.b.pitch.value == ui.SAME_PITCH


def test_moving_the_path_slider_decodes_and_plays(built):
    ex, space = built
    tab = ex.path
    before = tab.view.audio.value
    tab.slider.value = 0.0
    assert tab.view.audio.autoplay and tab.view.audio.value != before
    np.testing.assert_array_equal(tab.last.z, space.mu[tab.a.note()])
    assert "t = 0.00" in tab.view.caption.value and "Griffin-Lim" in tab.view.caption.value
    tab.method.value = "linear"
    assert tab.last.info["method"] == "linear"
    tab.slider.value = 1.0
    np.testing.assert_array_equal(tab.last.z, space.mu[tab.b.note(pitch=tab.a.pitch.value)])
    # B at another pitch than A: two notes, any pitches
    tab.b.pitch.value = 60
    assert tab.last.info["note_b"].endswith("pitch 60, velocity 127")


def test_family_filter_narrows_the_instruments(built):
    ex, _ = built
    chooser = ex.path.b
    chooser.family.value = "brass"
    assert all(name.startswith("brass") for name in chooser.instrument.options)
    assert ex.path.last.info["note_b"].startswith("brass")
    chooser.family.value = ui.ALL_FAMILIES
    assert len(chooser.instrument.options) == 12


def test_axes_tab_switches_between_principal_axes_and_dimensions(built):
    ex, space = built
    tab = ex.axes
    assert tab.axis.options[0][0].startswith("PC1 (")
    tab.slider.value = 2.0
    np.testing.assert_allclose(tab.last.z - space.mu[tab.note.note()], 2.0 * space.axis_std[0] * space.axes[0],
                               atol=1e-5)
    tab.kind.value = "dimension"
    assert len(tab.axis.options) == space.latent_dim and tab.axis.options[0][0].startswith("dim 0")
    tab.axis.value = 3
    step = tab.last.z - space.mu[tab.note.note()]
    assert np.count_nonzero(step) == 1 and step[3] > 0


def test_sample_tab_draws_seeded_samples(built):
    ex, space = built
    tab = ex.sample
    first = tab.view.audio.value
    tab.draw.click()  # the next seed
    assert tab.seed.value == 1 and tab.view.audio.value != first
    np.testing.assert_array_equal(tab.last.z, explore.prior_point(space.latent_dim, seed=1))
    tab.source.value = "around"
    tab.scale.value = 0.0
    np.testing.assert_array_equal(tab.last.z, space.mu[tab.note.note()])


def test_sound_tab_places_a_named_file_and_an_upload(built, tmp_path):
    ex, _ = built
    tab = ex.sound
    path = tmp_path / "mine.flac"
    sf.write(path, np.stack([sine(262.0, sr=44100, seconds=2.0)] * 2, axis=1), 44100, format="FLAC")
    map_before = tab.map.value
    tab.path.value = str(path)
    tab.place.click()
    assert tab.last.sound.name == "mine.flac" and tab.map.value != map_before
    assert data(tab.view.audio.value).startswith(b"RIFF") and data(tab.original.value).startswith(b"RIFF")
    assert "nearest notes" in tab.nearest.value and "reconstruction of mine.flac" in tab.view.caption.value
    content = path.read_bytes()
    tab.upload.value = ({"name": "up.wav", "type": "audio/wav", "size": len(content),
                         "last_modified": datetime.datetime.now(datetime.UTC), "content": memoryview(content)},)
    assert tab.last.sound.name == "up.wav"
    # a file that is not audio: the caption says so, naming it; nothing else breaks
    bad = tmp_path / "notes.wav"
    bad.write_text("hello")
    tab.path.value = str(bad)
    tab.place.click()
    assert "DataError" in tab.view.caption.value and "notes.wav" in tab.view.caption.value
    assert tab.last.sound.name == "up.wav"


def test_an_unknown_instrument_is_refused(built):
    _, space = built
    with pytest.raises(ParameterError, match="no note"):
        ui.build_explorer(SimpleNamespace(model=TinyVAE(latent_dim=5)), space=space, instrument_a="violin_x")


def test_figures(built):
    ex, space = built
    fig = ui.map_figure(space.coords, space.meta["instrument_family_str"].to_numpy(), points=np.zeros((2, 2)),
                        labels=["a $x", "<b>"], explained=space.explained[:2])
    assert ui.figure_png(fig).startswith(b"\x89PNG")
    assert any(t.get_text() == "a $x" for t in fig.axes[0].texts)
    path = [explore.path_update(ex.path.model, space, note_a=0, note_b=9, t=t, method="slerp", n_iter=N_ITER)
            for t in (0.0, 0.5, 1.0)]
    assert len(ui.path_figure(path, cfg=CFG).axes) >= 3
    html = ui.players(path, labels=["<a>", "b", "c"]).data
    assert html.count("<audio") == 3 and "&lt;a&gt;" in html
    x = explore.axis_traversal(ex.path.model, space, note=0, axes=[0, 1], amounts=[-1.0, 1.0])
    fig = ui.traversal_figure(x, axis_labels=["PC1", "PC2"], amounts=[-1.0, 1.0], cfg=CFG, note="n")
    assert len([a for a in fig.axes if a.images]) == 4
