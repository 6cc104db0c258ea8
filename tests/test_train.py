"""Training: loss goes down, checkpoints round-trip, resume is exact, NaN guard, config mismatches, CLI;
the run-state objects of vaelib.model.progress save and restore themselves."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _training import interrupt_at

import vaelib.model.loss as vloss
import vaelib.model.train as vtrain
import vaelib.model.vae as vae_module
from vaelib.config import PROJECT_ROOT, load_config
from vaelib.data.cache import FeatureCache
from vaelib.data.prepare import prepare_features
from vaelib.exceptions import CheckpointError, DataError, ParameterError, TrainingError
from vaelib.model.augment import Augmenter
from vaelib.model.checkpoint import checkpoint_dir, find_checkpoint, load_checkpoint, load_model, staging_dir
from vaelib.model.distributed import Ranks
from vaelib.model.progress import EarlyStopping, EpochProgress, RandomStreams
from vaelib.model.stream import MemoryRows
from vaelib.model.train import HISTORY_COLUMNS, train
from vaelib.model.vae import ConvVAE

SMOKE = PROJECT_ROOT / "params" / "smoke.yaml"
# 56 train notes in batches of 16: 4 steps an epoch (the last one of 8 notes).
BASE = ["train.epochs=4", "train.batch_size=16", "train.patience=10", "train.warmup_steps=6", "train.num_threads=2"]


def _cfg(root: Path, dataset: Path, ckpt: str = "ckpt", extra: tuple[str, ...] = ()):
    return load_config(SMOKE, [f"data.root={dataset}", f"features.cache_dir={root / 'cache'}",
                               f"train.checkpoint_dir={root / ckpt}", *BASE, *extra])


@pytest.fixture(scope="module")
def work(tmp_path_factory, smoke_dataset) -> tuple[Path, Path]:
    return tmp_path_factory.mktemp("train"), smoke_dataset


@pytest.fixture(scope="module")
def cache(work) -> FeatureCache:
    root, ds = work
    return prepare_features(_cfg(root, ds), show_progress=False)


@pytest.fixture(scope="module")
def reference(work, cache):
    """An uninterrupted 4-epoch run."""
    root, ds = work
    cfg = _cfg(root, ds)
    return cfg, train(cfg, cache, show_progress=False)


def test_training_lowers_the_loss_and_logs_every_epoch(reference):
    cfg, res = reference
    h = res.history
    assert list(h.columns) == list(HISTORY_COLUMNS)
    assert len(h) == 4 and h["step"].tolist() == [4, 8, 12, 16]
    assert h["train_recon"].iloc[-1] < h["train_recon"].iloc[0]
    assert h["valid_recon"].iloc[-1] < h["valid_recon"].iloc[0]
    assert np.isfinite(h.drop(columns=["seconds"]).to_numpy(dtype=float)).all()
    assert h["beta"].iloc[-1] == cfg.train.beta  # warm-up of 6 steps is over
    saved = pd.read_csv(res.run_dir / "history.csv")
    assert np.allclose(saved[list(HISTORY_COLUMNS)].to_numpy(float), h.to_numpy(float))
    for name in ("last.pt", "best.pt", "history.csv", "config.yaml"):
        assert (res.run_dir / name).is_file()
    assert res.run_dir == checkpoint_dir(cfg, res_key(res))


def res_key(res) -> str:
    return torch.load(res.last_path, weights_only=True)["cache_key"]


def test_checkpoint_round_trip(reference, cache):
    cfg, res = reference
    model, ckpt = load_model(res.best_path, cfg=cfg)
    assert not model.training
    assert ckpt["epoch"] == res.best_epoch and ckpt["config"]["model"]["latent_dim"] == cfg.model.latent_dim
    assert {"model", "optimizer", "rng", "history", "step", "config"} <= set(ckpt)
    again, _ = load_model(res.best_path)
    x = torch.from_numpy(cache.split("valid")[0][:4].astype(np.float32))
    assert torch.equal(model.encode(x)[0], again.encode(x)[0])
    assert find_checkpoint(cfg, cache) == res.best_path
    other = load_config(SMOKE, [*(f"{k}={v}" for k, v in [("data.root", cfg.data.root),
                                                          ("features.cache_dir", cfg.features.cache_dir),
                                                          ("train.checkpoint_dir", cfg.train.checkpoint_dir)]),
                                *BASE, "model.latent_dim=4"])
    assert find_checkpoint(other, cache) is None
    # where and how fast a run goes is not part of its identity
    moved = load_config(SMOKE, [f"data.root={cfg.data.root}", f"features.cache_dir={cfg.features.cache_dir}",
                                f"train.checkpoint_dir={cfg.train.checkpoint_dir}", *BASE,
                                "train.num_threads=1", "train.device=cpu", "features.workers=1",
                                "features.batch_size=3"])
    assert checkpoint_dir(moved, res_key(res)) == res.run_dir
    htk = load_config(SMOKE, [f"data.root={cfg.data.root}", f"features.cache_dir={cfg.features.cache_dir}",
                              f"train.checkpoint_dir={cfg.train.checkpoint_dir}", *BASE, "features.mel_scale=htk"])
    assert checkpoint_dir(htk, res_key(res)) != res.run_dir


def test_mismatched_config_is_a_clear_error(reference, tmp_path):
    cfg, res = reference
    other = load_config(SMOKE, [f"data.root={cfg.data.root}", "model.latent_dim=4", "model.channels=[8,16,64]"])
    with pytest.raises(CheckpointError, match=r"model\.latent_dim.*model\.channels|model\.channels.*latent_dim"):
        load_model(res.best_path, cfg=other)
    # same input shape, another log-mel: the model's input would mean something else
    htk = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, mel_scale="htk", n_fft=2048))
    with pytest.raises(CheckpointError, match=r"features\.n_fft \(checkpoint 1024, asked 2048\).*"
                                              r"features\.mel_scale \(checkpoint 'slaney', asked 'htk'\)"):
        load_model(res.best_path, cfg=htk)
    # where the features are cached and how fast they are built is not part of the representation
    load_model(res.best_path, cfg=dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, batch_size=3)))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a vaelib checkpoint"):
        load_model(bad)
    # weights that do not fit the checkpoint's own config, or that hold NaN, are named, not a torch traceback
    ckpt = torch.load(res.best_path, weights_only=False)
    ckpt["config"]["model"]["latent_dim"] += 3
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=r"edited\.pt: its weights do not fit the model its own config"):
        load_model(tmp_path / "edited.pt")
    ckpt = torch.load(res.best_path, weights_only=False)
    ckpt["model"]["encoder.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"nan\.pt: 1 weight tensor\(s\) hold NaN.*encoder\.0\.weight"):
        load_model(tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pt")


def _interrupted(cfg, cache, monkeypatch, at_step: int = 5) -> Path:
    """Train ``cfg`` until Ctrl-C arrives at step ``at_step``; the ``last.pt`` it leaves."""
    interrupt_at(monkeypatch, at_step)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, cache, show_progress=False)
    monkeypatch.undo()
    return checkpoint_dir(cfg, cache.manifest["key"]) / "last.pt"


def _interrupt_then_resume(cfg, cache, monkeypatch, at_step: int):
    """Train ``cfg`` until Ctrl-C arrives at step ``at_step``, then resume it to the end."""
    _interrupted(cfg, cache, monkeypatch, at_step)
    return train(cfg, cache, resume=True, show_progress=False)


def _assert_same_history(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    cols = [c for c in HISTORY_COLUMNS if c != "seconds"]
    np.testing.assert_allclose(got[cols].to_numpy(float), expected[cols].to_numpy(float), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("at_step", [5, 7], ids=["mid-epoch", "epoch-end"])
def test_resume_after_interrupt_matches_uninterrupted(reference, work, cache, monkeypatch, at_step):
    _, ref = reference
    root, ds = work
    cfg = _cfg(root, ds, ckpt=f"ckpt_resume_{at_step}")
    interrupt_at(monkeypatch, at_step)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, cache, show_progress=False)
    saved = torch.load(checkpoint_dir(cfg, cache.manifest["key"]) / "last.pt", weights_only=True)
    assert saved["step"] == at_step + 1 and not saved["finished"]
    assert set(saved["best"]) == {"valid_recon", "epoch", "bad_epochs"}
    if at_step == 5:  # stopped inside epoch 2, before its batch 3
        assert set(saved["partial"]) == {"batch", "epoch_gen_state", "sums", "seen", "seconds", "rng_after"}
        assert saved["partial"]["batch"] == 2 and saved["partial"]["seen"] == 32
    else:
        assert saved["partial"] is None
    monkeypatch.undo()
    res = train(cfg, cache, resume=True, show_progress=False)
    _assert_same_history(res.history, ref.history)
    # a finished run resumed is returned as it is
    again = train(cfg, cache, resume=True, show_progress=False)
    assert len(again.history) == 4


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(work, cache, monkeypatch):
    root, ds = work
    cfg = _cfg(root, ds, ckpt="ckpt_nan")
    real = vloss.vae_terms
    calls = {"train": 0}

    def poisoned(recon, mu, logvar, *, beta, free_bits):
        parts = real(recon, mu, logvar, beta=beta, free_bits=free_bits)
        if torch.is_grad_enabled():
            calls["train"] += 1
            if calls["train"] == 6:  # step 5, in epoch 2
                return parts._replace(total=parts.total * float("nan"))
        return parts

    monkeypatch.setattr(vloss, "vae_terms", poisoned)  # as training_objective calls it
    with pytest.raises(TrainingError, match=r"non-finite loss at step 5 \(epoch 2") as err:
        train(cfg, cache, show_progress=False)
    assert "last.pt (epoch 1)" in str(err.value)
    model, ckpt = load_model(checkpoint_dir(cfg, cache.manifest["key"]) / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["step"] == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # the inputs were finite: the training diverged, and float32 is offered where it ran in bf16
    assert "diverged" in str(err.value)
    assert ("train.bf16=false" in str(err.value)) == (ckpt["dtype"] == "bfloat16")


def test_cli_train_resume_prints_folder_and_metrics(reference, capsys):
    from vaelib.cli import main

    cfg, res = reference
    args = ["train", "--params", str(SMOKE), "--quiet", "--resume",
            "--set", f"data.root={cfg.data.root}", "--set", f"features.cache_dir={cfg.features.cache_dir}",
            "--set", f"train.checkpoint_dir={cfg.train.checkpoint_dir}", *sum((["--set", s] for s in BASE), [])]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert str(res.run_dir) in out and "best_valid_recon" in out
    assert main(["train", "--params", str(SMOKE), "--set", "train.device=cuda"]) == 2 or torch.cuda.is_available()


def test_instrument_grouped_order_is_a_permutation_of_whole_groups():
    inst = torch.tensor([3] * 7 + [5] * 4 + [9] * 6 + [1])
    order = vtrain.instrument_grouped_order(inst, 4, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(len(inst)))  # every note exactly once
    runs, start = [], 0
    labels = inst[order].tolist()
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start] or i - start == 4:
            runs.append((labels[start], i - start))
            start = i
    # groups of 4 (an instrument's last group smaller); 7 notes of instrument 3 -> 4 + 3
    assert sorted(runs) == [(1, 1), (3, 3), (3, 4), (5, 4), (9, 2), (9, 4)]
    again = vtrain.instrument_grouped_order(inst, 4, torch.Generator().manual_seed(0))
    assert torch.equal(order, again)  # a pure function of the generator's state



def test_notes_per_class_groups_a_program_across_its_banks():
    # 3 GM programs, each rendered by two banks (instruments 2p and 2p + 1), 12 notes per instrument
    program = torch.arange(3).repeat_interleave(24)
    instrument = torch.arange(6).repeat_interleave(12)
    data = vtrain._Data(x=MemoryRows(torch.zeros(72, 1, 2, 2)), pitch=torch.zeros(72, dtype=torch.long),
                        instrument=instrument, classes=program, x_valid=None, pitch_valid=None, batch_size=8,
                        n_batches=9)
    tc = load_config(None, ["train.contrast=1", "train.notes_per_class=4"]).train
    order = vtrain._epoch_order(data, tc, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(72))
    groups = order.view(-1, 4)  # 24 notes a program: whole groups of 4
    assert (program[groups] == program[groups][:, :1]).all()
    mixed = (instrument[groups] != instrument[groups][:, :1]).any(dim=1).float().mean()
    assert mixed > 0.75  # a random 4 of a program's 24 notes is one bank's in 2 x C(12,4)/C(24,4) = 9.3% of groups
    by_instrument = vtrain._epoch_order(data, load_config(None, ["train.notes_per_instrument=4"]).train,
                                        torch.Generator().manual_seed(0))
    assert not (instrument[by_instrument.view(-1, 4)] != instrument[by_instrument.view(-1, 4)][:, :1]).any()


def test_notes_per_class_names_its_own_run_folder_only_when_on():
    from vaelib.model.checkpoint import checkpoint_dir

    base = load_config(PROJECT_ROOT / "params" / "default.yaml")
    assert checkpoint_dir(base, "0123456789abcdef") == checkpoint_dir(
        load_config(PROJECT_ROOT / "params" / "default.yaml", ["train.notes_per_class=0"]), "0123456789abcdef")
    grouped = load_config(PROJECT_ROOT / "params" / "default.yaml", ["train.notes_per_class=4"])
    assert checkpoint_dir(grouped, "0123456789abcdef") != checkpoint_dir(base, "0123456789abcdef")

AUX = ("train.contrast=5", "train.contrast_dims=4", "train.notes_per_instrument=4", "train.pitch_order=5",
       "model.pitch_head=true", "train.pitch_weight=2", "train.epochs=2")  # 2 epochs of 4 steps


def test_auxiliary_terms_are_logged_and_resume_exactly(work, cache, monkeypatch, reference):
    root, ds = work
    ref_cfg = _cfg(root, ds, ckpt="ckpt_aux_ref", extra=AUX)
    ref = train(ref_cfg, cache, show_progress=False)
    h = ref.history
    aux_cols = ["train_contrast", "train_pitch_ce", "train_pitch_order"]
    assert (h[aux_cols] > 0).all().all()
    assert (reference[1].history[aux_cols] == 0).all().all()  # off by default
    model, _ = load_model(ref.best_path, cfg=ref_cfg)
    assert model.pitch_logits is not None and model.pitch_logits.out_features == 128
    torch.manual_seed(ref_cfg.run.seed)
    init = ConvVAE(ref_cfg.model)
    assert not torch.allclose(model.pitch_logits.weight, init.pitch_logits.weight)  # the head is trained
    assert not np.allclose(h["train_recon"], reference[1].history["train_recon"][:2])  # the terms act on training
    res = _interrupt_then_resume(_cfg(root, ds, ckpt="ckpt_aux_resume", extra=AUX), cache, monkeypatch, 5)
    _assert_same_history(res.history, h)


def test_cosine_lr_follows_the_schedule_and_resumes_exactly(work, cache, monkeypatch, reference):
    root, ds = work
    extra = ("train.lr_schedule=cosine", "train.lr_final=0.1")
    ref = train(_cfg(root, ds, ckpt="ckpt_cos_ref", extra=extra), cache, show_progress=False)
    lr = ref.history["lr"].to_numpy()
    # each epoch logs the rate of its last step: 4 epochs of 4 steps, steps 3, 7, 11, 15 of 16
    np.testing.assert_allclose(lr, [1e-3 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * s / 15))) for s in (3, 7, 11, 15)])
    assert lr[-1] == pytest.approx(1e-4) and (reference[1].history["lr"] == 1e-3).all()
    assert not np.allclose(ref.history["train_recon"][1:], reference[1].history["train_recon"][1:])
    res = _interrupt_then_resume(_cfg(root, ds, ckpt="ckpt_cos_resume", extra=extra), cache, monkeypatch, 6)
    _assert_same_history(res.history, ref.history)


AUGMENT = ("train.augment_detune=20", "train.augment_tilt=2", "train.augment_eq=6", "train.augment_reverb=0.5")


def test_augmentation_changes_training_is_reproducible_and_resumes_exactly(work, cache, monkeypatch, reference):
    root, ds = work
    cfg = _cfg(root, ds, ckpt="ckpt_aug_ref", extra=AUGMENT)
    assert checkpoint_dir(cfg, "k") != checkpoint_dir(reference[0], "k")
    calls = []
    real_call = Augmenter.__call__
    monkeypatch.setattr(Augmenter, "__call__", lambda self, x, u: calls.append(len(x)) or real_call(self, x, u))
    ref = train(cfg, cache, show_progress=False)
    monkeypatch.undo()
    assert calls == [16, 16, 16, 8] * 4  # every training batch, and no validation batch
    h, plain = ref.history, reference[1].history
    assert not np.allclose(h["train_recon"], plain["train_recon"])  # the batches were changed
    again = train(_cfg(root, ds, ckpt="ckpt_aug_again", extra=AUGMENT), cache, show_progress=False)
    _assert_same_history(again.history, h)
    for at_step in (5, 7):  # inside an epoch and at its end
        res = _interrupt_then_resume(_cfg(root, ds, ckpt=f"ckpt_aug_resume_{at_step}", extra=AUGMENT), cache,
                                     monkeypatch, at_step)
        _assert_same_history(res.history, h)


MASKS = ("train.augment_mask_bands=4", "train.augment_mask_frames=6")


def _training_pairs(cfg, cache, monkeypatch) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], object]:
    """(what the encoder heard, the objective's target) of every training batch of a run of ``cfg``."""
    heard, pairs = [], []
    real_forward, real_objective = ConvVAE.forward, vtrain.training_objective
    monkeypatch.setattr(ConvVAE, "forward",
                        lambda self, x, *a, **k: heard.append(x.detach().clone()) or real_forward(self, x, *a, **k))
    monkeypatch.setattr(vtrain, "training_objective",
                        lambda x, out, *a, **k: pairs.append((heard[-1], x.detach().clone()))
                        or real_objective(x, out, *a, **k))
    res = train(cfg, cache, show_progress=False)
    monkeypatch.undo()
    return pairs, res


def test_masks_hide_parts_of_what_the_encoder_hears_not_of_the_target_and_resume_exactly(work, cache, monkeypatch,
                                                                                        reference):
    root, ds = work
    cfg = _cfg(root, ds, ckpt="ckpt_mask_ref", extra=MASKS)
    assert checkpoint_dir(cfg, "k") != checkpoint_dir(reference[0], "k")
    plain, _ = _training_pairs(_cfg(root, ds, ckpt="ckpt_mask_plain"), cache, monkeypatch)
    made = []  # the masks' own geometry is tested in test_masking.py; here, that training hears what they make
    real_mask = vtrain.mask_notes
    monkeypatch.setattr(vtrain, "mask_notes", lambda x, u, **k: made.append(real_mask(x, u, **k)) or made[-1])
    masked, ref = _training_pairs(cfg, cache, monkeypatch)
    assert len(masked) == len(plain) == 16  # every training batch, and no validation batch
    hidden_total = 0
    assert len(made) == 16
    for (heard, target), (plain_heard, plain_target), hid in zip(masked, plain, made):
        assert torch.equal(heard, hid)
        assert torch.equal(target, plain_target) and torch.equal(plain_heard, plain_target)  # the notes as cached
        hidden = heard != target
        assert (heard[hidden] == -1.0).all()  # hidden means at the floor
        hidden_total += int(hidden.sum())
    assert hidden_total > 0
    assert not np.allclose(ref.history["train_recon"], reference[1].history["train_recon"])
    # drawn from the run's seeded stream: a run stopped mid-epoch and resumed masks what the whole run masked
    res = _interrupt_then_resume(_cfg(root, ds, ckpt="ckpt_mask_resume", extra=MASKS), cache, monkeypatch, 5)
    _assert_same_history(res.history, ref.history)


MIXSTYLE = ("train.mixstyle=1", "train.mixstyle_alpha=0.3")


def test_mixstyle_changes_training_is_reproducible_and_resumes_exactly(work, cache, monkeypatch, reference):
    root, ds = work
    cfg = _cfg(root, ds, ckpt="ckpt_ms_ref", extra=MIXSTYLE)
    assert checkpoint_dir(cfg, "k") != checkpoint_dir(reference[0], "k")
    off = _cfg(root, ds, extra=("train.mixstyle=0", "train.mixstyle_alpha=0.3"))
    assert checkpoint_dir(off, "k") == checkpoint_dir(reference[0], "k")  # a run without it keeps its folder
    mixed = []
    real_mix = vae_module.mix_style
    monkeypatch.setattr(vae_module, "mix_style", lambda h, mix: mixed.append(tuple(h.shape[:2])) or real_mix(h, mix))
    ref = train(cfg, cache, show_progress=False)
    monkeypatch.undo()
    # the first two levels of every training batch (smoke.yaml's channels), and no validation batch
    assert Counter(mixed) == {(16, 8): 12, (8, 8): 4, (16, 16): 12, (8, 16): 4}
    assert not np.allclose(ref.history["train_recon"], reference[1].history["train_recon"])
    again = train(_cfg(root, ds, ckpt="ckpt_ms_again", extra=MIXSTYLE), cache, show_progress=False)
    _assert_same_history(again.history, ref.history)
    res = _interrupt_then_resume(_cfg(root, ds, ckpt="ckpt_ms_resume", extra=MIXSTYLE), cache, monkeypatch, 5)
    _assert_same_history(res.history, ref.history)


@pytest.mark.parametrize("setting", ["train.mixstyle=1.0", "train.source_adversary=1.0"])
def test_one_process_settings_are_refused_in_several_before_the_run_folder_is_touched(work, cache, monkeypatch,
                                                                                      setting):
    root, ds = work
    cfg = _cfg(root, ds, ckpt=f"ckpt_ddp_{setting}", extra=(setting,))
    run_dir = checkpoint_dir(cfg, cache.manifest["key"])
    staged = staging_dir(run_dir)  # an unfinished retrain, which --retrain would start afresh
    staged.mkdir(parents=True)
    (staged / "last.pt").write_bytes(b"kept")
    monkeypatch.setattr(vtrain, "setup", lambda device: Ranks(world=2, rank=0))
    for retrain in (False, True):
        with pytest.raises(ParameterError, match=rf"{setting}: .*: one process only, this run has 2"):
            train(cfg, cache, retrain=retrain, show_progress=False)
    assert not run_dir.exists() and (staged / "last.pt").read_bytes() == b"kept"


def test_checkpoint_from_before_a_new_model_key_still_matches(reference, tmp_path):
    cfg, ref = reference
    ckpt = torch.load(ref.best_path, weights_only=True)
    del ckpt["config"]["model"]["pitch_head"]  # as written before model.pitch_head existed
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    model, _ = load_model(old, cfg=cfg)  # the missing key reads as its default (False)
    assert model.pitch_logits is None
    with pytest.raises(CheckpointError, match="model.latent_dim"):
        load_model(old, cfg=load_config(SMOKE, [f"data.root={cfg.data.root}", "model.latent_dim=4"]))
    # a config no longer valid here is compared as saved, defaults filling the keys it lacks
    ckpt["config"]["model"]["depth"] = 99
    torch.save(ckpt, old)
    with pytest.raises(CheckpointError, match=r"model\.depth \(checkpoint 99, asked 3\)") as err:
        load_model(old, cfg=cfg)
    assert "pitch_head" not in str(err.value) and "features." not in str(err.value)
    # without its features it names the gap
    del ckpt["config"]["features"]
    torch.save(ckpt, old)
    with pytest.raises(CheckpointError, match=r"old\.pt: the checkpoint's config has no 'features' section"):
        load_model(old, cfg=cfg)


def test_program_labels_are_one_class_across_soundfonts_and_need_programs(cache):
    _, meta = cache.split("train")
    assert (meta["program"] >= 0).all()  # a render records each note's GM program
    # two banks' renderings of one program: one class, whatever the instrument id
    two_banks = dataclasses.replace(cache, meta=cache.meta.copy())
    first = two_banks.meta.index[two_banks.meta["split"].to_numpy() == "train"][:2]
    two_banks.meta.loc[first, "program"] = 7
    two_banks.meta.loc[first, "instrument"] = [100, 200]
    classes = vtrain.contrast_classes(two_banks, "program", torch.device("cpu")).tolist()
    assert classes[0] == classes[1] == 7
    # NSynth's own notes carry no program (-1): the term refuses them, naming the setting
    no_program = dataclasses.replace(cache, meta=cache.meta.assign(program=-1))
    with pytest.raises(ParameterError, match=r"contrast_labels 'program'.*no GM program"):
        vtrain.contrast_classes(no_program, "program", torch.device("cpu"))
    assert vtrain.contrast_classes(no_program, "family", torch.device("cpu")).shape == (len(meta),)


def _spy_on_contrast_labels(monkeypatch) -> tuple[list[torch.Tensor], list[torch.Tensor | None], object]:
    """The labels and the spared super-classes of every call of the contrastive term, collected while it still
    computes; and the term."""
    seen, spared = [], []
    real = vloss.instrument_contrast

    def spy(feats, labels, **kw):
        seen.append(labels.cpu())
        spared.append(kw.get("spared"))
        return real(feats, labels, **kw)

    monkeypatch.setattr(vloss, "instrument_contrast", spy)
    return seen, spared, real


def _one_and_two_banks(cache: FeatureCache) -> tuple[FeatureCache, FeatureCache, np.ndarray]:
    """The cache as rendered from one SoundFont, and from two: every other note of each instrument (so of
    each program) from a second bank; and the SoundFont of each note of the second."""
    one_bank = dataclasses.replace(cache, meta=cache.meta.assign(soundfont="TimGM6mb.sf2"))
    banks = np.where(cache.meta.groupby("instrument").cumcount().to_numpy() % 2 == 0, "A.sf2", "B.sf2")
    return one_bank, dataclasses.replace(cache, meta=cache.meta.assign(soundfont=banks)), banks


def test_program_across_labels_carry_each_notes_soundfont(work, cache, monkeypatch):
    rows = cache.meta["split"].to_numpy() == "train"
    one_bank, two_banks, banks = _one_and_two_banks(cache)
    with pytest.raises(ParameterError, match=r"contrast_labels 'program_across'.*one SoundFont"):
        vtrain.contrast_classes(one_bank, "program_across", torch.device("cpu"))
    classes = vtrain.contrast_classes(two_banks, "program_across", torch.device("cpu"))
    assert classes.shape == (rows.sum(), 2)
    np.testing.assert_array_equal(classes[:, 0].numpy(), cache.meta.loc[rows, "program"].to_numpy())
    np.testing.assert_array_equal(classes[:, 1].numpy() == classes[0, 1].item(), banks[rows] == banks[rows][0])
    # training takes them, batches grouped by program too
    root, ds = work
    seen, _, real = _spy_on_contrast_labels(monkeypatch)
    cfg = _cfg(root, ds, ckpt="ckpt_labels_across", extra=("train.contrast=5", "train.epochs=1",
                                                            "train.contrast_labels=program_across",
                                                            "train.notes_per_class=4"))
    res = train(cfg, two_banks, show_progress=False)
    assert res.history["train_contrast"].iloc[0] > 0  # a program's notes of the other bank are in its batches
    assert all(labels.ndim == 2 and labels.shape[1] == 2 for labels in seen)
    full = [labels for labels in seen if len(labels) % 4 == 0]
    groups = torch.cat([labels[:, 0].view(-1, 4) for labels in full])
    # groups of four of one program (a short last group of a program shifts those after it; uniform: ~0)
    assert (groups == groups[:, :1]).all(dim=1).float().mean() > 0.6
    # with program_across the same notes give another term than with program: own-bank pairs are left out
    mixed = seen[0]
    feats = torch.randn(len(mixed), 8, generator=torch.Generator().manual_seed(0))
    assert float(real(feats, mixed, temperature=0.1)) != pytest.approx(float(real(feats, mixed[:, 0], temperature=0.1)))


def test_program_family_labels_spare_a_programs_family_mates(work, cache, monkeypatch):
    rows = cache.meta["split"].to_numpy() == "train"
    classes = vtrain.contrast_classes(cache, "program_family", torch.device("cpu"))
    assert classes.shape == (rows.sum(), 3)
    for col, column in ((0, "program"), (2, "instrument_family")):
        np.testing.assert_array_equal(classes[:, col].numpy(), cache.meta.loc[rows, column].to_numpy())
    assert (classes[:, 1] == 0).all()  # no SoundFont needed without train.source_align
    root, ds = work
    seen, spared_seen, _ = _spy_on_contrast_labels(monkeypatch)
    cfg = _cfg(root, ds, ckpt="ckpt_labels_program_family",
               extra=("train.contrast=5", "train.epochs=1", "train.contrast_labels=program_family"))
    res = train(cfg, cache, show_progress=False)
    assert res.history["train_contrast"].iloc[0] > 0
    # the term gets each note's program as its class and its family as what is spared, pair by pair
    family_of = dict(zip(cache.meta.loc[rows, "program"], cache.meta.loc[rows, "instrument_family"], strict=False))
    calls = list(zip(seen, spared_seen, strict=True))
    assert all(labels.ndim == 1 and spared is not None and spared.shape == labels.shape for labels, spared in calls)
    pairs = {(int(p), int(f)) for labels, spared in calls for p, f in zip(labels, spared, strict=True)}
    assert pairs == {(int(p), int(family_of[p])) for p, _ in pairs} and len(pairs) > 1


def test_source_alignment_trains_on_each_notes_soundfont(work, cache, monkeypatch):
    rows = cache.meta["split"].to_numpy() == "train"
    one_bank, two_banks, banks = _one_and_two_banks(cache)
    with pytest.raises(ParameterError, match=r"train.source_align: the train split of .* one SoundFont"):
        vtrain.contrast_classes(one_bank, "family", torch.device("cpu"), sources=["train.source_align"])
    classes = vtrain.contrast_classes(two_banks, "family", torch.device("cpu"), sources=["train.source_align"])
    np.testing.assert_array_equal(classes[:, 0].numpy(), cache.meta.loc[rows, "instrument_family"].to_numpy())
    np.testing.assert_array_equal(classes[:, 1].numpy() == classes[0, 1].item(), banks[rows] == banks[rows][0])
    # training: the contrastive term gets the families alone, the alignment term is logged, the run has its
    # own folder (and a run without it keeps the folder it had)
    root, ds = work
    seen, _, _ = _spy_on_contrast_labels(monkeypatch)
    base = ("train.contrast=5", "train.epochs=1", "train.contrast_labels=family")
    cfg = _cfg(root, ds, ckpt="ckpt_source_align", extra=(*base, "train.source_align=50"))
    res = train(cfg, two_banks, show_progress=False)
    # (unbiased, so it may fall below 0 for two halves of one set of instruments, as here; 0 only when off)
    assert res.history["train_source_align"].iloc[0] != 0 and res.history["train_contrast"].iloc[0] > 0
    assert all(labels.ndim == 1 for labels in seen)
    off = _cfg(root, ds, ckpt="ckpt_source_align", extra=(*base, "train.source_align=0"))
    assert checkpoint_dir(off, "k") == checkpoint_dir(_cfg(root, ds, ckpt="ckpt_source_align", extra=base), "k")
    assert checkpoint_dir(cfg, "k") != checkpoint_dir(off, "k")
    with pytest.raises(ParameterError, match="train.source_align"):
        train(_cfg(root, ds, ckpt="ckpt_source_align_one", extra=(*base, "train.source_align=50")), one_bank,
              show_progress=False)


def test_the_soundfont_adversary_trains_beside_the_model_and_resumes_exactly(work, cache, monkeypatch):
    _, two_banks, _ = _one_and_two_banks(cache)
    root, ds = work
    base = ("train.contrast=5", "train.contrast_labels=family")
    cfg = _cfg(root, ds, ckpt="ckpt_adversary", extra=(*base, "train.source_adversary=2"))
    res = train(cfg, two_banks, show_progress=False)
    # two banks at chance: log 2 of cross-entropy; the classifier is in the checkpoint, beside the model
    assert res.history["train_source_adversary"].between(0.3, 1.2).all()
    ckpt = load_checkpoint(res.last_path)
    assert {k for k in ckpt["adversary"]} == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    assert ckpt["adversary"]["net.2.weight"].shape == (2, 64)
    # its four tensors are the optimiser's last, and were stepped
    model_tensors = len(list(ConvVAE(cfg.model, n_mels=cfg.features.n_mels, frames=cfg.features.frames)
                             .parameters()))
    assert len(ckpt["optimizer"]["param_groups"][0]["params"]) == model_tensors + 4
    assert all(i in ckpt["optimizer"]["state"] for i in range(model_tensors, model_tensors + 4))
    model, _ = load_model(res.best_path)  # the model alone loads for analysis, as any run's
    assert isinstance(model, ConvVAE) and not model.training
    off = _cfg(root, ds, ckpt="ckpt_adversary", extra=(*base, "train.source_adversary=0"))
    assert checkpoint_dir(off, "k") == checkpoint_dir(_cfg(root, ds, ckpt="ckpt_adversary", extra=base), "k")
    assert checkpoint_dir(cfg, "k") != checkpoint_dir(off, "k")
    plain = train(off, two_banks, show_progress=False)
    assert not np.allclose(res.history["train_recon"], plain.history["train_recon"])
    resumed = _interrupt_then_resume(_cfg(root, ds, ckpt="ckpt_adversary_resume",
                                          extra=(*base, "train.source_adversary=2")), two_banks, monkeypatch, 5)
    _assert_same_history(resumed.history, res.history)
    one_bank = _one_and_two_banks(cache)[0]
    with pytest.raises(ParameterError, match=r"train.source_adversary: the train split of .* one SoundFont.*set "
                                             r"train.source_adversary 0"):
        train(_cfg(root, ds, ckpt="ckpt_adversary_one", extra=(*base, "train.source_adversary=2")), one_bank,
              show_progress=False)


def test_a_run_resumed_from_before_a_new_term_logs_it_as_off(work, cache, monkeypatch, reference):
    root, ds = work
    cfg = _cfg(root, ds, ckpt="ckpt_old_history")
    last = _interrupted(cfg, cache, monkeypatch)
    ckpt = load_checkpoint(last)
    del ckpt["history"]["train_source_adversary"]  # as written before the term existed
    torch.save(ckpt, last)
    res = train(cfg, cache, resume=True, show_progress=False)
    saved = pd.read_csv(res.run_dir / "history.csv")
    assert list(saved.columns) == list(HISTORY_COLUMNS)
    assert (saved["train_source_adversary"] == 0.0).all()
    _assert_same_history(res.history, reference[1].history)


def test_family_labels_change_what_the_contrast_term_groups(work, cache, monkeypatch):
    feats, meta = cache.split("train")
    for kind, column in (("instrument", "instrument"), ("family", "instrument_family"), ("program", "program")):
        classes = vtrain.contrast_classes(cache, kind, torch.device("cpu"))
        np.testing.assert_array_equal(classes.numpy(), meta[column].to_numpy())  # row by row
    root, ds = work
    seen, _, real = _spy_on_contrast_labels(monkeypatch)
    cfg = _cfg(root, ds, ckpt="ckpt_labels_family",
               extra=("train.contrast=5", "train.epochs=1", "train.contrast_labels=family"))
    res = train(cfg, cache, show_progress=False)
    assert res.history["train_contrast"].iloc[0] > 0
    labels = torch.cat(seen).tolist()  # each train note once, under its family id
    expected = meta["instrument_family"].tolist()
    assert len(labels) >= len(expected) - 1 and not Counter(labels) - Counter(expected)


def test_early_stopping_counts_bad_epochs_and_resumes_from_its_state():
    early = EarlyStopping(2)
    assert early.state_dict() == {"valid_recon": float("inf"), "epoch": 0, "bad_epochs": 0}
    flags = [early.update(v, epoch=e) for e, v in enumerate([5.0, 4.0, 4.0, float("nan")], start=1)]
    assert flags == [True, True, False, False]  # equal is not better, NaN never is
    assert early.should_stop and (early.best_epoch, early.best_value, early.bad_epochs) == (2, 4.0, 2)
    # the layout of a checkpoint's "best", restored into a fresh object, continues the same count
    again = EarlyStopping(3)
    again.load_state_dict({"valid_recon": 4.0, "epoch": 2, "bad_epochs": 1})
    assert not again.should_stop and again.update(3.5, epoch=4) and again.state_dict() == {
        "valid_recon": 3.5, "epoch": 4, "bad_epochs": 0}
    with pytest.raises(ParameterError, match="patience must be >= 1, got 0"):
        EarlyStopping(0)


def test_random_streams_round_trip_their_state():
    streams = RandomStreams(3, torch.device("cpu"))
    state = streams.state_dict()
    first = (torch.rand(3), np.random.rand(), torch.rand(2, generator=streams.batch),
             torch.randn(2, generator=streams.noise), torch.rand(2, generator=streams.augment))
    other = RandomStreams(99, torch.device("cpu"))
    other.load_state_dict(state)
    again = (torch.rand(3), np.random.rand(), torch.rand(2, generator=other.batch),
             torch.randn(2, generator=other.noise), torch.rand(2, generator=other.augment))
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    assert torch.equal(first[2], again[2]) and torch.equal(first[3], again[3]) and torch.equal(first[4], again[4])
    assert not torch.equal(first[2], first[4])  # the augmentation has a stream of its own
    del state["augment"]  # a checkpoint from before the augmentation: its stream stays where the seed put it
    fresh = RandomStreams(99, torch.device("cpu"))
    fresh.load_state_dict(state)
    seeded = RandomStreams(99, torch.device("cpu")).augment
    assert torch.equal(torch.rand(2, generator=fresh.augment), torch.rand(2, generator=seeded))
    assert not torch.equal(first[2], first[3])  # the batch and noise streams are distinct


def _epoch(progress, streams, epoch=0, *, stop_before=None):
    """Run one epoch of fake batches (parts depend on the order and the noise stream); stop before a batch."""
    order = progress.start(epoch, streams, draw=lambda gen: torch.randperm(10, generator=gen))
    for b in progress:
        if b == stop_before:
            progress.pause(b, streams)
            return None
        noise = float(torch.rand(1, generator=streams.noise))
        progress.add({"recon": float(order[b]) + noise, "kl_raw": 1.0}, notes=b + 1, batch=b, beta=0.5)
    return order, progress.finish()


def test_epoch_progress_continues_an_interrupted_epoch_exactly():
    terms = ("recon", "kl_raw", "kl_fb", "contrast")

    def make():
        return EpochProgress(5, epochs=2, terms=terms, show=False)

    ref_streams = RandomStreams(0, torch.device("cpu"))
    ref_order, ref = _epoch(make(), ref_streams)
    assert ref["train_kl_raw"] == 1.0 and ref["train_kl_fb"] == 0.0 == ref["train_contrast"]  # never added: 0
    assert set(ref) == {"seconds", *(f"train_{k}" for k in terms)}

    streams, progress = RandomStreams(0, torch.device("cpu")), make()
    assert progress.state_dict() is None  # at an epoch boundary
    assert _epoch(progress, streams, stop_before=3) is None
    saved = progress.state_dict()
    assert set(saved) == {"batch", "epoch_gen_state", "sums", "seen", "seconds", "rng_after"}
    assert saved["batch"] == 3 and saved["seen"] == 1 + 2 + 3
    # what a resumed run does: fresh objects, the checkpoint's streams, then the partial epoch
    streams2, progress2 = RandomStreams(0, torch.device("cpu")), make()
    streams2.load_state_dict(streams.state_dict())
    progress2.load_state_dict(saved)
    order, got = _epoch(progress2, streams2)
    assert torch.equal(order, ref_order)
    assert {k: v for k, v in got.items() if k != "seconds"} == {k: v for k, v in ref.items() if k != "seconds"}
    assert torch.equal(streams2.batch.get_state(), ref_streams.batch.get_state())
    assert torch.equal(streams2.noise.get_state(), ref_streams.noise.get_state())
    assert progress2.state_dict() is None and got["seconds"] >= saved["seconds"]
    # a partial epoch saved before a term existed reads that term's sum as 0
    progress3 = make()
    progress3.load_state_dict({**saved, "sums": {k: saved["sums"][k] for k in ("recon", "kl_raw", "kl_fb")}})
    streams3 = RandomStreams(0, torch.device("cpu"))
    streams3.load_state_dict(streams.state_dict())
    assert _epoch(progress3, streams3)[1]["train_contrast"] == 0.0


# ----------------------------------------------------------------------------- non-finite inputs and figures

def _poisoned_cache(cache: FeatureCache, split: str) -> tuple[FeatureCache, str]:
    """``cache`` with NaN written into the features of the first note of ``split`` (in memory: the files on
    disk are shared, and opening a damaged file is the cache's own check); that note's name."""
    row = int(np.flatnonzero(cache.meta["split"].to_numpy() == split)[0])
    feats = np.array(cache.features)
    feats[row, 0, 3, 5] = np.nan
    return dataclasses.replace(cache, features=feats), cache.meta["note_str"].iloc[row]


@pytest.mark.parametrize("split", ["valid", "train"])
def test_non_finite_features_are_refused_naming_the_notes(work, cache, split):
    root, ds = work
    poisoned, note = _poisoned_cache(cache, split)
    cfg = _cfg(root, ds, ckpt=f"ckpt_nan_{split}")
    with pytest.raises(TrainingError, match=rf"the '{split}' split's features hold non-finite values \(NaN or "
                                            rf"infinity\) in 1 of \d+ notes \({note}\)") as err:
        train(cfg, poisoned, show_progress=False)
    assert str(poisoned.path) in str(err.value) and "train.lr" not in str(err.value)
    run_dir = checkpoint_dir(cfg, poisoned.manifest["key"])
    assert not (run_dir / "best.pt").exists() and not (run_dir / "last.pt").exists()


def test_non_finite_inputs_in_a_batch_are_not_blamed_on_the_learning_rate(work, cache, monkeypatch):
    root, ds = work
    poisoned, _ = _poisoned_cache(cache, "train")
    monkeypatch.setattr(vtrain, "_check_finite_features", lambda *a, **k: None)  # as if loaded from elsewhere
    with pytest.raises(TrainingError, match=r"non-finite loss at step \d+ \(epoch 1.*1 of the batch's 16 input "
                                            r"notes hold non-finite features") as err:
        train(_cfg(root, ds, ckpt="ckpt_nan_batch"), poisoned, show_progress=False)
    assert "train.lr" not in str(err.value)


def test_non_finite_validation_figure_stops_training_naming_the_epoch(work, cache, monkeypatch):
    root, ds = work
    cfg = _cfg(root, ds, ckpt="ckpt_nan_valid")
    real = vtrain.vae_loss  # what _evaluate calls
    evaluations = []

    def nan_on_second_evaluation(x, out, *, beta, free_bits):
        parts = real(x, out, beta=beta, free_bits=free_bits)
        if x.shape[0] == cache.split("valid")[0].shape[0] and not torch.is_grad_enabled():
            evaluations.append(1)
            if len(evaluations) == 2:
                return parts._replace(recon=parts.recon * float("nan"), total=parts.total * float("nan"))
        return parts

    monkeypatch.setattr(vtrain, "vae_loss", nan_on_second_evaluation)
    with pytest.raises(TrainingError, match=r"non-finite validation figures after epoch 2: valid_recon=nan.*the "
                                            r"valid notes are finite, so the model gives non-finite outputs") as err:
        train(cfg, cache, show_progress=False)
    assert "last.pt (epoch 1)" in str(err.value)
    run_dir = checkpoint_dir(cfg, cache.manifest["key"])
    best, last = load_checkpoint(run_dir / "best.pt"), load_checkpoint(run_dir / "last.pt")
    assert best["epoch"] == last["epoch"] == 1 and np.isfinite(best["best"]["valid_recon"])


# ----------------------------------------------------------------------------- existing runs

def test_retrain_replaces_a_finished_run_only_once_finished(work, cache, monkeypatch, caplog):
    from vaelib.model.train import train_or_reuse

    root, ds = work
    cfg = _cfg(root, ds, ckpt="ckpt_retrain_api", extra=("train.epochs=2",))
    res, trained = train_or_reuse(cfg, cache, show_progress=False)  # as 02_train calls it
    assert trained and find_checkpoint(cfg, cache) == res.best_path
    before = res.best_path.read_bytes()
    assert train(cfg, cache, show_progress=False).best_epoch == res.best_epoch  # kept as it is
    assert res.best_path.read_bytes() == before
    # a retrain (02_train's retrain=True) interrupted after one epoch leaves the finished run
    interrupt_at(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train_or_reuse(cfg, cache, retrain=True, show_progress=False)
    monkeypatch.undo()
    assert res.best_path.read_bytes() == before and find_checkpoint(cfg, cache) == res.best_path
    assert train_or_reuse(cfg, cache, show_progress=False)[1] is False  # still reused
    # a replacement killed between its two renames is completed by the next call, with a warning
    run_dir, staging = res.run_dir, res.run_dir.with_name(res.run_dir.name + ".retrain")
    import shutil

    shutil.rmtree(staging)
    shutil.copytree(run_dir, staging)  # a finished retrain
    run_dir.rename(run_dir.with_name(run_dir.name + ".replaced"))
    caplog.set_level(logging.INFO, logger="vaelib")
    again = train(cfg, cache, show_progress=False)
    assert "interrupted replacement by its retrain is completed" in caplog.text
    assert again.run_dir == run_dir and (run_dir / "best.pt").read_bytes() == before
    assert not staging.exists() and not run_dir.with_name(run_dir.name + ".replaced").exists()
    # the retrain run to its end replaces the run, with the same numbers
    new, trained = train_or_reuse(cfg, cache, retrain=True, show_progress=False)
    assert trained and new.run_dir == run_dir and new.best_path == run_dir / "best.pt"
    _assert_same_history(new.history, res.history)
    assert not staging.exists() and find_checkpoint(cfg, cache) == new.best_path
    # a finished run without its best.pt is not returned as if it had one
    new.best_path.unlink()
    with pytest.raises(CheckpointError, match=r"the run has finished but its best\.pt is missing.*retrain"):
        train(cfg, cache, show_progress=False)
    # nor one whose best.pt is damaged
    train_or_reuse(cfg, cache, retrain=True, show_progress=False)
    best = new.best_path.read_bytes()
    new.best_path.write_bytes(best[:len(best) // 2])
    with pytest.raises(CheckpointError, match=r"best\.pt.*the run has finished but its best model cannot be "
                                              r"read.*--retrain"):
        train(cfg, cache, show_progress=False)
    # nor is one without its last.pt trained over, in its folder, from scratch: its best.pt is kept
    train_or_reuse(cfg, cache, retrain=True, show_progress=False)
    best = new.best_path.read_bytes()
    new.last_path.unlink()
    for resume in (False, True):
        with pytest.raises(CheckpointError, match=r"holds history\.csv but no last\.pt.*--retrain"):
            train(cfg, cache, resume=resume, show_progress=False)
    assert new.best_path.read_bytes() == best and not staging.exists()


def _stop_in_the_last_evaluation(monkeypatch) -> None:
    """Send ourselves SIGINT while the second (last, with train.epochs=2) evaluation runs."""
    real, calls = vtrain._evaluate, []

    def evaluate_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(vtrain, "_evaluate", evaluate_then_signal)


@pytest.mark.parametrize("where", ["last-batch", "evaluation"])
def test_retrain_stopped_in_its_last_epoch_replaces_the_run(work, cache, monkeypatch, caplog, where):
    root, ds = work
    cfg = _cfg(root, ds, ckpt=f"ckpt_retrain_stop_{where}", extra=("train.epochs=2",))
    res = train(cfg, cache, show_progress=False)
    run_dir, staging = res.run_dir, res.run_dir.with_name(res.run_dir.name + ".retrain")
    (run_dir / "old-run").touch()  # gone once the retrain has replaced the folder
    if where == "last-batch":
        interrupt_at(monkeypatch, 7)  # step 7: the last batch of epoch 2 of 2
    else:
        _stop_in_the_last_evaluation(monkeypatch)
    caplog.set_level(logging.INFO, logger="vaelib")
    with pytest.raises(KeyboardInterrupt):  # the stop is honoured...
        train(cfg, cache, retrain=True, show_progress=False)
    monkeypatch.undo()
    # ...once the finished retrain has replaced the run: nothing is stranded in <run>.retrain
    assert not staging.exists() and not (run_dir / "old-run").exists()
    last = load_checkpoint(run_dir / "last.pt")
    assert last["finished"] and last["epoch"] == 2
    assert "which finished the training: it is complete and replaces the run" in caplog.text
    _assert_same_history(pd.read_csv(run_dir / "history.csv"), res.history)
    assert find_checkpoint(cfg, cache) == run_dir / "best.pt"
    kept = train(cfg, cache, show_progress=False)  # a plain call keeps it
    assert kept.run_dir == run_dir and len(kept.history) == 2


def test_a_finished_retrain_left_beside_the_run_replaces_it_first(work, cache, monkeypatch, caplog):
    """A retrain killed after its last checkpoint and before replace_run: the next call of any kind puts it in
    place (a plain train keeps it; --retrain starts over only after it replaced the run; --retrain --resume
    returns it)."""
    import shutil

    root, ds = work
    cfg = _cfg(root, ds, ckpt="ckpt_retrain_stranded", extra=("train.epochs=2",))
    res = train(cfg, cache, show_progress=False)
    run_dir, staging = res.run_dir, res.run_dir.with_name(res.run_dir.name + ".retrain")

    def strand(marker: str) -> None:
        shutil.copytree(run_dir, staging)  # a finished training, as a killed retrain leaves it
        (staging / marker).touch()

    class NotTrained(Exception):
        pass

    def no_training(*args, **kwargs):
        raise NotTrained

    caplog.set_level(logging.INFO, logger="vaelib")
    strand("retrain-1")
    kept = train(cfg, cache, show_progress=False)  # a plain `vaelib train`
    assert kept.run_dir == run_dir and (run_dir / "retrain-1").exists() and not staging.exists()
    assert "had finished but had not replaced the run" in caplog.text

    monkeypatch.setattr(vtrain, "_fit", no_training)
    strand("retrain-2")
    assert find_checkpoint(cfg, cache) == run_dir / "best.pt"  # without the lock: the run, with a warning
    assert "holds a finished retrain that has not replaced the run yet" in caplog.text
    with pytest.raises(NotTrained):  # --retrain without --resume: the finished one replaces the run first
        train(cfg, cache, retrain=True, show_progress=False)
    assert (run_dir / "retrain-2").exists() and not staging.exists()

    strand("retrain-3")
    got = train(cfg, cache, retrain=True, resume=True, show_progress=False)  # the retrain to continue had finished
    assert (run_dir / "retrain-3").exists() and not staging.exists()
    assert got.run_dir == run_dir and got.best_path == run_dir / "best.pt"
    _assert_same_history(got.history, res.history)


def test_a_file_system_without_locks_trains_with_a_warning(work, cache, monkeypatch, caplog):
    import vaelib.io as io_mod

    root, ds = work
    cfg = _cfg(root, ds, ckpt="ckpt_no_locks", extra=("train.epochs=1",))

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(io_mod.fcntl, "flock", no_locks)
    caplog.set_level(logging.WARNING, logger="vaelib")
    res = train(cfg, cache, show_progress=False)
    assert len(res.history) == 1 and load_checkpoint(res.last_path)["finished"]
    assert f"the file system has no locks (No locks available); training run {res.run_dir.name} without one" \
        in caplog.text
    assert not res.run_dir.with_name(res.run_dir.name + ".lock").exists()


def test_a_run_lock_that_cannot_be_created_names_the_folder(work, cache, monkeypatch):
    from vaelib.model.checkpoint import RunLock

    root, ds = work
    run_dir = root / "ckpt_read_only" / "0123456789abcdef"
    run_dir.parent.mkdir()
    lock = run_dir.with_name(run_dir.name + ".lock")
    real_open, real_access = os.open, os.access

    def read_only_open(path, flags, *args):  # the folder of mode 0o555 that root could write all the same
        if Path(path) == lock:
            if flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only_open)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != run_dir.parent and real_access(
        path, mode, **kw))
    with pytest.raises(TrainingError, match=rf"cannot take the lock of run {run_dir.name}: {run_dir.parent}: the "
                                            r"folder is not writable.*train\.checkpoint_dir"):
        with RunLock(run_dir):
            pass


def test_unreadable_last_pt_is_a_checkpoint_error_saying_how_to_start_over(work, cache, monkeypatch):
    root, ds = work
    cfg = _cfg(root, ds, ckpt="ckpt_truncated_api")
    last = _interrupted(cfg, cache, monkeypatch)
    with pytest.raises(TrainingError, match=r"holds an unfinished training \(1 of 4 epochs.*resume=True"):
        train(cfg, cache, show_progress=False)
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"last\.pt: cannot read checkpoint.*nothing to resume|"
                                              r"last\.pt: cannot read checkpoint.*neither reused nor resumed.*retrain"):
        train(cfg, cache, resume=True, show_progress=False)


def test_a_run_locked_by_another_trainer_is_refused(work, cache):
    from vaelib.model.checkpoint import RunLock

    root, ds = work
    cfg = _cfg(root, ds, ckpt="ckpt_locked")
    run_dir = checkpoint_dir(cfg, cache.manifest["key"])
    with RunLock(run_dir):  # a separate lock object excludes like another process
        with pytest.raises(TrainingError, match=rf"run {run_dir.name} is being trained by process {os.getpid()}"):
            train(cfg, cache, show_progress=False)
    assert not run_dir.exists()


@pytest.mark.parametrize("setting", ["train.contrast_labels=program_across", "train.source_align=10",
                                     "train.source_adversary=10"])
def test_settings_that_need_several_soundfonts_are_refused_before_a_run_writes_anything(tmp_path, setting, capsys):
    import json

    from vaelib.analysis.run import start_run
    from vaelib.cli.main import main
    from vaelib.data.prepare import check_train_sources
    from vaelib.data.render import RENDER_SUMMARY
    from vaelib.report.pipeline import run_pipeline
    from vaelib.report.sweep import run_sweep

    name = setting.split("=")[0].removeprefix("train.")
    one = [setting, f"data.root={tmp_path / 'gm'}"]  # one SoundFont (the bundled one), not rendered yet
    refused = rf"{name}.*: the train split of data.root .*gm' \(to be rendered from TimGM6mb.sf2\) holds notes "
    with pytest.raises(ParameterError, match=refused + r"of one SoundFont, and it needs several; set "):
        start_run(SMOKE, one, run_dir=tmp_path / "run")
    with pytest.raises(ParameterError, match=refused):
        run_pipeline(SMOKE, one, reports_root=tmp_path / "reports")
    key, value = setting.removeprefix("train.").split("=")
    (tmp_path / "p.yaml").write_text(f"base: {SMOKE}\nrun:\n  name: second\ntrain:\n  {key}: {value}\n")
    with pytest.raises(ParameterError, match=refused):  # the second experiment's, before the first runs
        run_sweep([SMOKE, tmp_path / "p.yaml"], one[1:], reports_root=tmp_path / "reports")
    assert main(["train", "--params", str(SMOKE), "--quiet", *(a for o in one for a in ("--set", o))]) == 2
    assert "holds notes of one SoundFont" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "reports").exists() and not (tmp_path / "gm").exists()
    two = [*one, "render.soundfont=[TimGM6mb.sf2, Other_GM.sf2]"]
    check_train_sources(load_config(SMOKE, two))  # two sources: left to run
    # the second held out as the test split leaves one to train on: the message says which setting does it
    with pytest.raises(ParameterError, match=r"\(to be rendered from TimGM6mb.sf2\) holds notes of one SoundFont "
                                             r"\(data.test_soundfonts holds out Other_GM.sf2\)"):
        check_train_sources(load_config(SMOKE, [*two, "data.test_soundfonts=[Other_GM.sf2]"]))
    # a folder vaelib rendered from the params' one SoundFont is refused; one rendered from others is left to
    # ensure_dataset, which names the mismatch; one vaelib did not render, to the training, which reads its notes
    (tmp_path / "gm").mkdir()
    summary = tmp_path / "gm" / RENDER_SUMMARY
    summary.write_text(json.dumps({"soundfonts": ["/x/TimGM6mb.sf2"]}))
    with pytest.raises(ParameterError, match=r"\(rendered from TimGM6mb.sf2\) holds notes of one SoundFont"):
        check_train_sources(load_config(SMOKE, one))
    summary.write_text(json.dumps({"soundfonts": ["/x/TimGM6mb.sf2", "/x/Other_GM.sf2"]}))
    check_train_sources(load_config(SMOKE, one))
    summary.unlink()
    check_train_sources(load_config(SMOKE, one))
    check_train_sources(load_config(SMOKE, [*one[1:], "render.enabled=false", setting]))
    check_train_sources(load_config(SMOKE, one[1:]))  # none of the settings


def test_every_setting_that_needs_several_soundfonts_is_named_with_its_way_out(tmp_path):
    from vaelib.data.prepare import check_train_sources

    cfg = load_config(SMOKE, [f"data.root={tmp_path / 'gm'}", "train.contrast_labels=program_across",
                              "train.source_align=5", "train.source_adversary=5"])
    with pytest.raises(ParameterError, match=r"^train.contrast_labels 'program_across' and train.source_align and "
                                             r"train.source_adversary: .* and they need several; set "
                                             r"train.contrast_labels 'program' and train.source_align 0 and "
                                             r"train.source_adversary 0, or train on several SoundFonts$"):
        check_train_sources(cfg)


def test_a_misspelled_data_root_is_named_before_the_one_soundfont_refusal(tmp_path):
    import json

    from vaelib.data.prepare import check_train_sources
    from vaelib.data.render import RENDER_SUMMARY

    # the folder meant holds two SoundFonts' notes: the typo, not the one SoundFont the params name, is the fault
    meant = tmp_path / "gm_two"
    meant.mkdir()
    (meant / RENDER_SUMMARY).write_text(json.dumps({"soundfonts": ["/x/TimGM6mb.sf2", "/x/Other_GM.sf2"]}))
    (meant / "examples.json").write_text("{}")
    cfg = load_config(SMOKE, [f"data.root={tmp_path / 'gm_tow'}", "train.source_align=10"])
    with pytest.raises(DataError, match=rf"did you mean {meant}\?"):
        check_train_sources(cfg)
    assert not (tmp_path / "gm_tow").exists()
