"""Data-parallel training: two gloo processes compute the loss curve of one process with the same global
batch, rank 0 alone writes, a stop on one rank stops both and --resume continues, early stopping agrees,
and the objective of every label layout (SoundFont and family columns) is the one process's.

The processes are spawned once (torch.multiprocessing) and run every job in turn, since starting them
costs more than the jobs. fp32 (train.bf16=false): the ranks add the batch in two halves, which
rounds differently, about 1e-7 relative per step; 3 epochs stay within the rtol asserted here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from _distributed import (
    LABEL_CASES,
    TINY_MODEL,
    free_port,
    label_batch,
    label_case,
    label_objectives,
    needs_gloo,
    run_jobs,
)

from vaelib.config import PROJECT_ROOT, load_config
from vaelib.data.synthetic import build_synthetic_cache
from vaelib.model.checkpoint import load_checkpoint
from vaelib.model.distributed import GlobalBatchNorm2d, Ranks, convert_batchnorm
from vaelib.model.train import HISTORY_COLUMNS, train
from vaelib.model.vae import ConvVAE

pytestmark = needs_gloo

SMOKE = PROJECT_ROOT / "params" / "smoke.yaml"
# 90 train notes, global batches of 16 (the last of 10): 6 steps an epoch, each rank 8 notes (5 in the last).
TINY = [*TINY_MODEL, "train.epochs=3", "train.patience=10"]
RTOL, ATOL = 1e-5, 1e-6
CURVE = [c for c in HISTORY_COLUMNS if c != "seconds"]
AUGMENT = ("train.augment_detune=20", "train.augment_tilt=2", "train.augment_eq=6", "train.augment_reverb=0.5")


def _overrides(root, ckpt: str, *extra: str) -> list[str]:
    return [f"features.cache_dir={root / 'cache'}", f"train.checkpoint_dir={root / ckpt}", *TINY, *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process's run, then two processes running every job, and what each rank reported."""
    root = tmp_path_factory.mktemp("ddp")
    cfg = load_config(SMOKE, _overrides(root, "one"))
    cache = build_synthetic_cache(cfg.features, (90, 12, 0), per_instrument=20, show_progress=False)
    one = train(cfg, cache, show_progress=False)
    one_aug = train(load_config(SMOKE, _overrides(root, "one_aug", *AUGMENT)), cache, show_progress=False)
    jobs = [
        {"name": "plain", "overrides": _overrides(root, "two")},
        {"name": "augmented", "overrides": _overrides(root, "two_aug", *AUGMENT)},
        # rank 1 alone is asked to stop, in epoch 2 before its batch 3; then the run is resumed
        {"name": "stopped", "overrides": _overrides(root, "resumed"), "interrupt": [1, 8]},
        {"name": "resumed", "overrides": _overrides(root, "resumed"), "resume": True},
        # rank 0's valid figures say stop after epoch 3 (patience 1); rank 1 is told
        {"name": "early", "overrides": _overrides(root, "early", "train.epochs=5", "train.patience=1"),
         "valid_recon": [10.0, 9.0, 9.5, 8.0, 7.0]},
    ]
    out = root / "out"
    out.mkdir()
    mp.spawn(run_jobs, args=(2, free_port(), str(cache.path), jobs, str(out)), nprocs=2, join=True)
    got = {(job["name"], r): json.loads((out / f"{job['name']}.{r}.json").read_text())
           for job in jobs for r in (0, 1)}
    return root, one, got, one_aug


def _curve(history: dict) -> np.ndarray:
    return np.array([history[c] for c in CURVE], dtype=float).T


def test_two_processes_give_the_loss_curve_of_one(runs):
    root, one, got, _ = runs
    for rank in (0, 1):
        np.testing.assert_allclose(_curve(got["plain", rank]["history"]), _curve(one.history.to_dict("list")),
                                   rtol=RTOL, atol=ATOL)
    # every rank returns rank 0's rows, seconds included
    assert got["plain", 0]["history"] == got["plain", 1]["history"]
    # and the model it saved is the one process's model
    a, b = load_checkpoint(one.last_path), load_checkpoint(next((root / "two").glob("*/last.pt")))
    for name, w in a["model"].items():
        np.testing.assert_allclose(b["model"][name].numpy(), w.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    ConvVAE(load_config(SMOKE, TINY).model, n_mels=16, frames=16).load_state_dict(b["model"])  # the plain model's keys


def test_each_rank_augments_its_notes_as_one_process_does(runs):
    _, one, got, one_aug = runs
    assert not np.allclose(_curve(one_aug.history.to_dict("list")), _curve(one.history.to_dict("list")))
    for rank in (0, 1):
        np.testing.assert_allclose(_curve(got["augmented", rank]["history"]), _curve(one_aug.history.to_dict("list")),
                                   rtol=RTOL, atol=ATOL)


def test_rank_0_alone_writes(runs):
    _, _, got, _ = runs
    assert got["plain", 1]["writes"] == []
    writes = got["plain", 0]["writes"]
    assert writes[0] == "config.yaml" and writes.count("last.pt") == 3 and writes.count("history.csv") == 3
    assert "best.pt" in writes


def test_a_stop_on_one_rank_stops_both_and_resume_continues_the_run(runs):
    _, _, got, _ = runs
    assert got["stopped", 0].get("interrupted") and got["stopped", 1].get("interrupted")
    assert got["stopped", 0]["writes"].count("last.pt") == 2 and got["stopped", 1]["writes"] == []  # epoch 1, stop
    for rank in (0, 1):
        np.testing.assert_allclose(_curve(got["resumed", rank]["history"]), _curve(got["plain", 0]["history"]),
                                   rtol=RTOL, atol=ATOL)


def test_early_stopping_is_decided_once_for_both_ranks(runs):
    _, _, got, _ = runs
    for rank in (0, 1):
        res = got["early", rank]
        assert res["stopped_early"] and res["history"]["epoch"] == [1, 2, 3]
        assert res["history"]["valid_recon"] == [10.0, 9.0, 9.5]


def test_two_processes_give_each_label_layouts_objective_of_one(tmp_path):
    from vaelib.model.loss import objective_from_terms, recon_per_note

    mp.spawn(label_objectives, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"labels.{r}.json").read_text()) for r in (0, 1)]
    x, x_hat, mu, logvar, pitch, table = label_batch()
    for name, (settings, _) in LABEL_CASES.items():
        cfg, classes, model = label_case(name, table)
        loss, parts = objective_from_terms(recon_per_note(x, x_hat), mu, logvar, model, pitch=pitch, classes=classes,
                                           beta=0.5, cfg=cfg)
        assert ("source_align" in parts) == ("source_align" in settings), name
        for rank in (0, 1):
            assert got[rank][name]["loss"] == pytest.approx(loss.item(), rel=1e-6), (name, rank)
            assert got[rank][name] == pytest.approx({"loss": loss.item(), **parts}, rel=1e-6, abs=1e-7), (name, rank)
    # the layouts are told apart: each gives the contrastive term another value on this batch
    assert len({round(got[0][name]["contrast"], 6) for name in LABEL_CASES}) >= 3


def test_parts_of_a_batch_tile_it_in_rank_order():
    for n in (1, 5, 16, 17):
        for world in (2, 3):
            parts = [Ranks(world=world, rank=r).part(n) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert Ranks(world=world).counts(n) == [b - a for a, b in parts]


def test_global_batchnorm_is_batchnorm_in_one_process_and_keeps_its_state_dict():
    model = ConvVAE(load_config(SMOKE, TINY).model, n_mels=16, frames=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    convert_batchnorm(model)
    assert sum(isinstance(m, GlobalBatchNorm2d) for m in model.modules()) == 5
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.items()}
    bn = torch.nn.BatchNorm2d(3)
    gbn = convert_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)))[0]
    x = torch.randn(4, 3, 5, 5)
    assert torch.equal(bn(x), gbn(x))  # no process group: the plain module's arithmetic


def test_labels_pack_for_the_gather_in_every_shape_and_on_an_empty_part():
    from vaelib.model.distributed import pack_labels, unpack_labels

    pitch = torch.tensor([60, 62, 64])
    for classes in (None, torch.tensor([3, 4, 3]), torch.tensor([[3, 0], [4, 1], [3, 1]])):
        table = pack_labels(pitch, classes)
        assert table.shape == (3, 2 if classes is None or classes.ndim == 1 else 3)
        got_pitch, got_classes = unpack_labels(torch.cat([table, table]), classes)  # two ranks' parts
        assert torch.equal(got_pitch, torch.cat([pitch, pitch]))
        assert (got_classes is None) == (classes is None)
        if classes is not None:
            assert torch.equal(got_classes, torch.cat([classes, classes]))
        # a rank whose part of a short last batch is empty (more ranks than notes) still sends a table
        empty = pack_labels(pitch[:0], None if classes is None else classes[:0])
        assert empty.shape == (0, table.shape[1])
