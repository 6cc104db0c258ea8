"""vaelib.config: loading, overrides, and refusal of unknown keys, wrong types and out-of-range values."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest

from vaelib.config import (
    PROJECT_ROOT,
    Config,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
    resolve_path,
    section_hash,
)
from vaelib.exceptions import ConfigError


def test_defaults_and_params_files_load():
    cfg = load_config(PROJECT_ROOT / "params" / "default.yaml")
    assert isinstance(cfg, Config)
    assert cfg.features.n_mels == 80 and cfg.features.frames == 128
    assert cfg.data.pitch_min == 21 and cfg.data.pitch_max == 108
    smoke = load_config(PROJECT_ROOT / "params" / "smoke.yaml")
    assert smoke.render.programs == (0, 1, 4, 24, 25, 26, 40, 41, 48, 56, 57, 58)
    assert smoke.run.name == "smoke"


def test_every_params_file_loads_and_the_experiments_change_the_plain_model(monkeypatch):
    # the experiments are measured against the plain beta-VAE (their README figures), not the default run
    monkeypatch.setenv("NSYNTH_ROOT", "/data/nsynth")
    plain = load_config(PROJECT_ROOT / "params" / "plain.yaml")
    default = load_config(PROJECT_ROOT / "params" / "default.yaml")
    assert plain.train.contrast == 0 and not plain.model.pitch_head and plain.model.channels == (16, 32, 64)
    assert default.train.contrast_labels == "family" and default.model.pitch_head and default.model.depth == 4
    # the default's log-mel: still the study's 80 bands and 128 frames, on HTK's scale from a 2048-point STFT
    assert (default.features.mel_scale, default.features.n_fft) == ("htk", 2048)
    assert (plain.features.mel_scale, plain.features.n_fft) == ("slaney", 1024)
    assert (default.features.n_mels, default.features.frames) == (plain.features.n_mels, plain.features.frames)
    fm, fm_program = (load_config(PROJECT_ROOT / "params" / f) for f in ("fm.yaml", "fm_program.yaml"))
    assert (fm.train.contrast_labels, fm_program.train.contrast_labels) == ("family", "program")
    assert dataclasses.replace(fm_program.train, contrast_labels="family") == fm.train
    assert fm_program.render == fm.render and fm_program.data == fm.data
    nsynth = load_config(PROJECT_ROOT / "params" / "nsynth.yaml")
    assert nsynth.model == default.model and nsynth.train == default.train and nsynth.features == default.features
    names = set()
    for path in sorted((PROJECT_ROOT / "params" / "experiments").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.run.name == path.stem, path
        assert cfg.data == plain.data and cfg.features == plain.features, path
        names.add(cfg.run.name)
    assert {"depth4", "family_contrast", "timbre_pitch_split"} <= names
    assert load_config(PROJECT_ROOT / "params" / "experiments" / "depth4.yaml").train == plain.train
    # the default: the narrow full-resolution levels, 14 epochs on a cosine (docs/results.md, "Fewer epochs")
    assert default.model.channels == (8, 16, 64, 128)
    assert (default.train.epochs, default.train.lr_schedule) == (14, "cosine")
    # the wide network is the default's with 32-64-128-256 channels, trained as the default was before the
    # cosine (20 epochs at a constant rate), nothing else
    wide = load_config(PROJECT_ROOT / "params" / "wide.yaml")
    assert wide.model.channels == (32, 64, 128, 256)
    assert dataclasses.replace(wide.model, channels=default.model.channels) == default.model
    assert (wide.train.epochs, wide.train.lr_schedule) == (20, "constant")
    assert dataclasses.replace(wide.train, epochs=14, lr_schedule="cosine") == default.train
    assert (wide.data, wide.features, wide.render) == (default.data, default.features, default.render)
    # the transfer run is the wide network's run (whose figures docs/results.md gives) scored on other
    # SoundFonts: same training, data and features
    transfer = load_config(PROJECT_ROOT / "params" / "transfer.yaml")
    assert (transfer.model, transfer.train, transfer.data, transfer.features, transfer.render) == (
        wide.model, wide.train, wide.data, wide.features, wide.render)
    assert [t.soundfont for t in transfer.analysis.transfer][0] == "FluidR3_GM.sf2"
    assert len({t.name for t in transfer.analysis.transfer}) == len(transfer.analysis.transfer) >= 2
    sources = load_config(PROJECT_ROOT / "params" / "sources.yaml")
    assert sources.render.soundfont[:2] == ("TimGM6mb.sf2", "FluidR3_GM.sf2")
    assert sources.data.test_soundfonts == sources.render.soundfont[2:]
    assert sources.data.root != default.data.root and sources.model == wide.model
    # the FM training is the default model's, on TimGM6mb and the project's FM bank, programs held out
    fm = load_config(PROJECT_ROOT / "params" / "fm.yaml")
    assert (fm.model, fm.train, fm.features) == (default.model, default.train, default.features)
    assert fm.render.soundfont == ("TimGM6mb.sf2", "vaelib_fm.sf2") and fm.data.split_by == "program"
    assert fm.data.root not in (default.data.root, sources.data.root)
    assert [t.soundfont for t in fm.analysis.transfer] == ["sf_GMbank.sf2", "OPL-3_FM_128M.sf2"]


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.features.n_mels = 64  # type: ignore[misc]


def test_overrides_apply_and_are_typed():
    cfg = load_config(None, ["features.n_mels=64", "data.families=brass,flute", "render.velocities=[25, 127]",
                             "data.resample=false", "features.fmin=20"])
    assert cfg.features.n_mels == 64
    assert cfg.data.families == ("brass", "flute")
    assert cfg.render.velocities == (25, 127)
    assert cfg.data.resample is False
    assert cfg.features.fmin == 20.0 and isinstance(cfg.features.fmin, float)


def test_integral_float_accepted_for_int():
    assert config_from_dict({"train": {"epochs": 3.0}}).train.epochs == 3


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"features": {"n_melz": 80}}, "n_melz"),
        ({"featurez": {}}, "featurez"),
        ({"features": {"n_mels": "eighty"}}, "features.n_mels"),
        ({"features": {"n_mels": 80.5}}, "features.n_mels"),
        ({"train": {"bf16": "yes"}}, "train.bf16"),
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"data": {"root": 3}}, "data.root"),
        ({"features": {"n_mels": 4}}, "features.n_mels"),
        ({"features": {"n_mels": 100000}}, "features.n_mels"),
        ({"data": {"valid_fraction": 0.9}}, "data.valid_fraction"),
        ({"features": {"ref": "median"}}, "features.ref"),
        ({"data": {"families": ["banjo"]}}, "data.families[0]"),
        ({"render": {"velocities": [0]}}, "render.velocities[0]"),
        ({"data": {"families": 3}}, "data.families"),
        ({"data": {"pitch_min": 90, "pitch_max": 40}}, "data.pitch_min"),
        ({"model": {"depth": 4}}, "model.channels"),
        ({"model": {"pitch_dims": 33}}, "model.pitch_dims"),
        ({"features": {"fmax": 9000.0}}, "features.fmax"),
        ({"features": "all"}, "features"),
        ({"analysis": {"interp_pairs": ["keyboard-string"]}}, "analysis.interp_pairs"),
        ({"render": {"soundfont": "font.txt"}}, "render.soundfont[0]"),
        ({"render": {"soundfont": ["a/F.sf2", "b/F.sf2"]}}, "render.soundfont"),
        ({"data": {"test_soundfonts": ["x/F.sf2"]}}, "data.test_soundfonts[0]"),
        ({"data": {"test_soundfonts": ["C.sf2"]}, "render": {"soundfont": ["A.sf2", "B.sf2"]}},
         "data.test_soundfonts"),
        ({"data": {"test_soundfonts": ["A.sf2"]}, "render": {"soundfont": "A.sf2"}}, "data.test_soundfonts"),
    ],
)
def test_bad_values_refused_naming_the_key(raw, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(raw)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("features.n_mels", "features.n_mels"),       # no '='
        ("n_mels=80", "n_mels=80"),                   # no section
        ("a.b.c=1", "a.b.c=1"),                       # too deep
        ("features.n_mels=[1,", "features.n_mels"),   # not YAML
        ("features.nope=1", "nope"),                  # unknown key
        ("train.epochs=many", "train.epochs"),        # wrong type
        ("train.epochs=0", "train.epochs"),           # below minimum
        ("train.contrast_dims=33", "train.contrast_dims"),          # more than latent_dim (32)
        ("train.notes_per_instrument=5", "train.notes_per_instrument"),  # 64 notes are not groups of 5
        ("train.notes_per_class=5", "train.notes_per_class"),  # the same for groups of a class
    ],
)
def test_bad_overrides_refused_naming_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[")):
        load_config(None, [override])


def test_soundfont_takes_one_path_or_a_list():
    assert load_config().render.soundfont == ()  # the bundled TimGM6mb.sf2
    one = config_from_dict({"render": {"soundfont": "/fonts/My, Font.sf2"}})  # one path, comma and all
    assert one.render.soundfont == ("/fonts/My, Font.sf2",)
    two = load_config(None, ["render.soundfont=[TimGM6mb.sf2, FluidR3_GM.sf2]"])
    assert two.render.soundfont == ("TimGM6mb.sf2", "FluidR3_GM.sf2")
    # an earlier params file's '' still means the default, and reloads as it was saved
    assert config_from_dict({"render": {"soundfont": ""}}).render.soundfont == ()
    assert config_from_dict(config_to_dict(two)) == two


def test_transfer_entries_are_mappings_checked_on_load():
    cfg = load_config(None, ["analysis.transfer=[{name: fluidr3, soundfont: FluidR3_GM.sf2}, "
                             "{name: nsynth_test, root: /data/nsynth/nsynth-test}]"])
    assert [(t.name, t.root, t.soundfont) for t in cfg.analysis.transfer] == [
        ("fluidr3", "", "FluidR3_GM.sf2"), ("nsynth_test", "/data/nsynth/nsynth-test", "")]
    assert config_from_dict(config_to_dict(cfg)) == cfg  # the run's params.yaml reloads to the same config
    single = config_from_dict({"analysis": {"transfer": {"name": "a", "root": "x"}}})  # one entry, no list
    assert single.analysis.transfer[0].name == "a"


@pytest.mark.parametrize(
    ("transfer", "message"),
    [
        ([{"soundfont": "FluidR3_GM.sf2"}], r"analysis.transfer\[0\]: 'name' is missing"),
        ([{"name": "fl"}], r"analysis.transfer\[0\] \(fl\): give 'root' .* or 'soundfont'"),
        ([{"name": "fl", "sf": "x.sf2"}], r"analysis.transfer\[0\]: unknown key\(s\) \['sf'\]; allowed: "
                                          r"\['name', 'root', 'soundfont'\]"),
        ([{"name": "a b", "root": "x"}], r"analysis.transfer\[0\].name: 'a b' is not a plain name"),
        ([{"name": "a", "root": "x"}, {"name": "a", "root": "y"}],
         r"analysis.transfer\[1\].name: 'a' is also the name of analysis.transfer\[0\]"),
        ([{"name": "a", "soundfont": "font.sfz"}], r"analysis.transfer\[0\].soundfont: 'font.sfz' is not a .sf2"),
        (["FluidR3_GM.sf2"], r"analysis.transfer\[0\]: expected a mapping of keys"),
        ([{"name": "a", "root": 3}], r"analysis.transfer\[0\].root: expected a string"),
        ("fluidr3", r"analysis.transfer\[0\]: expected a mapping"),
    ],
)
def test_bad_transfer_entries_name_the_entry(transfer, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"analysis": {"transfer": transfer}})


def test_params_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(tmp_path / "nowhere.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("features: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("features:\n  hop_lenght: 256\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml.*hop_lenght"):
        load_config(typo)


def test_base_chain_merges(tmp_path):
    (tmp_path / "base.yaml").write_text("features:\n  n_mels: 64\ntrain:\n  epochs: 5\n")
    (tmp_path / "exp.yaml").write_text("base: base.yaml\ntrain:\n  epochs: 7\n")
    cfg = load_config(tmp_path / "exp.yaml")
    assert (cfg.features.n_mels, cfg.train.epochs) == (64, 7)
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    with pytest.raises(ConfigError, match="itself"):
        load_config(tmp_path / "self.yaml")


def test_parse_override_values():
    assert parse_override("train.lr=0.0003") == {"train": {"lr": 3e-4}}
    assert parse_override("data.families=[brass, flute]") == {"data": {"families": ["brass", "flute"]}}
    assert parse_override("data.root=") == {"data": {"root": ""}}


def test_section_hash_stable_and_sensitive():
    a = load_config()
    b = load_config(None, ["features.n_mels=64"])
    assert section_hash(a.features) == section_hash(load_config().features)
    assert section_hash(a.features) != section_hash(b.features)
    assert len(section_hash(a.features)) == 12
    assert config_from_dict(config_to_dict(b)) == b


def test_resolve_path(monkeypatch, tmp_path):
    assert resolve_path("data/x") == PROJECT_ROOT / "data" / "x"
    assert resolve_path(str(tmp_path)) == tmp_path
    monkeypatch.setenv("VAE_TEST_ROOT", str(tmp_path))
    assert resolve_path("$VAE_TEST_ROOT/ds") == tmp_path / "ds"
    monkeypatch.delenv("VAE_TEST_ROOT")
    with pytest.raises(ConfigError, match="VAE_TEST_ROOT"):
        resolve_path("$VAE_TEST_ROOT/ds")


def test_exponent_without_a_dot_is_a_number(tmp_path):
    # PyYAML reads 3e-4 as the string '3e-4'; the config still takes it as a float.
    assert load_config(overrides=["train.lr=3e-4"]).train.lr == 3e-4
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  lr: 5e-4\n")
    assert load_config(path).train.lr == 5e-4
    with pytest.raises(ConfigError, match="train.lr: expected a number, got 'fast'"):
        load_config(overrides=["train.lr=fast"])


def _float_keys() -> list[str]:
    hints = typing.get_type_hints(Config)
    return [f"{section.name}.{f.name}" for section in dataclasses.fields(Config)
            for f in dataclasses.fields(hints[section.name])
            if typing.get_type_hints(hints[section.name])[f.name] is float]


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan", "inf", "1e400"])
def test_every_float_refuses_nan_and_infinity_naming_the_key(value):
    # NaN passes a range check (every comparison with it is false), so it is refused on its own
    keys = _float_keys()
    assert {"train.lr", "train.beta", "features.fmin", "model.logvar_bound"} <= set(keys)
    for key in keys:
        with pytest.raises(ConfigError, match=rf"{re.escape(key)}: expected a finite number, got"):
            load_config(None, [f"{key}={value}"])
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer"):
        load_config(None, [f"train.epochs={value}"])


def test_hostile_params_files_are_clear_errors(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="circle"):
        load_config(a)
    utf16 = tmp_path / "u.yaml"
    utf16.write_text("train:\n  epochs: 2\n", encoding="utf-16")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(utf16)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(bad)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["train: {1: 2, epochs: 3}\n", "1: a\nrun: {name: x}\n", "train: {null: 3}\n"])
def test_keys_that_yaml_reads_as_numbers_or_null_are_named(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"key\(s\) \[(1|None)\] are not names"):
        load_config(path)


@pytest.mark.parametrize("text,key", [("train:\n  epochs: 3\n  epochs: 5\n", "epochs"),
                                      ("train:\n  epochs: 3\ntrain:\n  lr: 0.1\n", "train")])
def test_a_key_given_twice_is_refused_not_overwritten(tmp_path, text, key):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"p\.yaml: not valid YAML \(key '{key}' appears twice in one mapping"):
        load_config(path)


def test_yaml_merge_keys_are_not_taken_for_keys_given_twice(tmp_path):
    merged = tmp_path / "m.yaml"
    merged.write_text("train: {<<: {epochs: 3, lr: 0.01}, epochs: 5}\n")  # the explicit key wins, as in YAML
    cfg = load_config(merged)
    assert (cfg.train.epochs, cfg.train.lr) == (5, 0.01)


def test_an_empty_section_keeps_its_base(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("train:\n  epochs: 2\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\ntrain:\n")
    assert load_config(child).train.epochs == 2


@pytest.mark.parametrize("name", ["", "../outside", "/tmp/x", "a/b", ".hidden"])
def test_run_names_that_are_not_folder_names_are_refused(name):
    with pytest.raises(ConfigError, match="run.name"):
        load_config(None, [f"run.name={name}"])


@pytest.mark.parametrize("name", ["experiments", "index.html", "Index.HTML", "README.md", "default.failed"])
def test_run_names_that_reports_itself_uses_are_refused(name):
    # a run of that name would replace the sweeps' comparison, the list of runs, or a failed run's copy
    with pytest.raises(ConfigError, match=r"run.name: .* is taken by reports/ itself"):
        load_config(None, [f"run.name={name}"])
    assert load_config(None, ["run.name=experiments2"]).run.name == "experiments2"


def test_notes_per_class_needs_the_contrastive_term_and_one_order():
    with pytest.raises(ConfigError, match=r"train.notes_per_class \(4\) groups notes by the classes"):
        load_config(None, ["train.contrast=0", "train.notes_per_class=4"])
    with pytest.raises(ConfigError, match=r"notes_per_instrument \(4\) and train.notes_per_class \(4\) are 2 orders"):
        load_config(None, ["train.contrast=1", "train.notes_per_instrument=4", "train.notes_per_class=4"])
    assert load_config(None, ["train.contrast=1", "train.notes_per_class=4"]).train.notes_per_class == 4
