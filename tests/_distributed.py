"""Helpers of the data-parallel tests: their skip mark and tiny model, a free port, and the function each
spawned rank runs."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest
import torch.distributed as dist

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="this torch has no gloo backend: data-parallel training on the CPU needs it")

# A model and log-mel small enough for a few epochs of several processes in seconds, in fp32 (bf16 rounding
# would differ between one process and several).
TINY_MODEL = ["features.n_mels=16", "features.frames=16", "model.channels=[4,8,8]", "model.latent_dim=4",
              "train.batch_size=16", "train.num_threads=1", "train.bf16=false", "train.warmup_steps=4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    """What torchrun sets for a rank of one node."""
    env = {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    if Path("/sys/class/net/lo").exists() and "GLOO_SOCKET_IFNAME" not in os.environ:
        env["GLOO_SOCKET_IFNAME"] = "lo"  # the loopback, whatever the host's name resolves to
    return env


def run_jobs(rank: int, world: int, port: int, cache_path: str, jobs: list[dict], out: str) -> None:
    """Run ``jobs`` one after the other as rank ``rank`` of ``world`` (the target of torch.multiprocessing.spawn),
    writing ``<out>/<job name>.<rank>.json``: the history (or the interrupt), and what this rank wrote.

    A job: ``name``, ``overrides`` (``--set`` strings), ``resume``; ``interrupt`` = [rank, step]: that rank
    sends itself SIGINT when the schedule is asked for that step; ``valid_recon``: rank 0's validation
    reconstruction of each epoch, replacing the computed one.
    """
    os.environ.update(rank_env(rank, world, port))
    import vaelib.model.train as vtrain
    from vaelib.config import PROJECT_ROOT, load_config
    from vaelib.data.cache import open_feature_cache

    cache = open_feature_cache(cache_path)
    for job in jobs:
        writes: list[str] = []
        saved = {name: getattr(vtrain, name) for name in ("save_checkpoint", "atomic_write_text", "_open_run_dir",
                                                          "beta_at", "_evaluate")}

        def save_checkpoint(obj, path, writes=writes, real=saved["save_checkpoint"]):
            writes.append(Path(path).name)
            real(obj, path)

        def atomic_write_text(path, text, writes=writes, real=saved["atomic_write_text"]):
            writes.append(Path(path).name)
            real(path, text)

        def open_run_dir(cfg, run_dir, writes=writes, real=saved["_open_run_dir"]):
            writes.append("config.yaml")
            real(cfg, run_dir)

        vtrain.save_checkpoint, vtrain.atomic_write_text, vtrain._open_run_dir = (save_checkpoint, atomic_write_text,
                                                                                 open_run_dir)
        if job.get("interrupt") and job["interrupt"][0] == rank:
            at, sent = job["interrupt"][1], []

            def beta_then_signal(step, *, cfg, at=at, sent=sent, real=saved["beta_at"]):
                if step == at and not sent:
                    sent.append(step)
                    os.kill(os.getpid(), signal.SIGINT)
                return real(step, cfg=cfg)

            vtrain.beta_at = beta_then_signal
        if job.get("valid_recon") and rank == 0:
            values = list(job["valid_recon"])

            def evaluate(*args, values=values, real=saved["_evaluate"], **kw):
                return {**real(*args, **kw), "valid_recon": values.pop(0)}

            vtrain._evaluate = evaluate
        cfg = load_config(PROJECT_ROOT / "params" / "smoke.yaml", job["overrides"])
        result: dict = {"writes": writes}
        try:
            res = vtrain.train(cfg, cache, resume=job.get("resume", False), show_progress=False)
            result.update(history=res.history.to_dict("list"), stopped_early=res.stopped_early)
        except KeyboardInterrupt:
            result["interrupted"] = True
        finally:
            for name, fn in saved.items():
                setattr(vtrain, name, fn)
        Path(out, f"{job['name']}.{rank}.json").write_text(json.dumps(result))


# The label layouts of the contrastive and source-alignment terms (see vaelib.model.train.contrast_classes):
# for each, the settings and the columns of the classes, on a batch of 12 notes (a rank's part: 6).
LABEL_CASES = {
    "program": ({"contrast_labels": "program"}, (0,)),
    "program + source_align": ({"contrast_labels": "program", "source_align": 3.0}, (0, 1)),
    "program_across": ({"contrast_labels": "program_across"}, (0, 1)),
    "program_family + source_align": ({"contrast_labels": "program_family", "source_align": 3.0}, (0, 1, 2)),
}


def label_batch():
    """A batch the objective can be computed on without a network: inputs, outputs, pitches and the
    label table [program, SoundFont, family]."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x, x_hat = torch.randn(12, 1, 4, 4, generator=gen), torch.randn(12, 1, 4, 4, generator=gen)
    mu, logvar = torch.randn(12, 8, generator=gen), 0.1 * torch.randn(12, 8, generator=gen)
    program = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3])
    table = torch.stack([program, torch.tensor([0, 0, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1]), program // 2], dim=1)
    return x, x_hat, mu, logvar, torch.randint(0, 128, (12,), generator=gen), table


def label_case(name: str, table):
    """The training settings of LABEL_CASES' ``name`` and its columns of ``table``; and a model without a
    network or heads, whose contrastive features are the leading dimensions of mu."""
    from types import SimpleNamespace

    from vaelib.config import TrainConfig

    settings, columns = LABEL_CASES[name]
    classes = table[:, list(columns)] if len(columns) > 1 else table[:, 0]
    model = SimpleNamespace(contrast_features=lambda m, dims: m[:, :dims], pitch_logits=None)
    return TrainConfig(contrast=2.0, contrast_dims=4, **settings), classes, model


def label_objectives(rank: int, world: int, port: int, out: str) -> None:
    """Each LABEL_CASES objective of ``label_batch`` as the global objective of ``world`` ranks, written to
    ``<out>/labels.<rank>.json``: the loss and its parts (the target of torch.multiprocessing.spawn)."""
    os.environ.update(rank_env(rank, world, port))
    from types import SimpleNamespace

    import torch

    from vaelib.model.distributed import global_objective, setup

    ranks = setup(torch.device("cpu"))
    x, x_hat, mu, logvar, pitch, table = label_batch()
    lo, hi = ranks.part(len(x))
    got = {}
    for name in LABEL_CASES:
        cfg, classes, model = label_case(name, table)
        out_part = SimpleNamespace(x_hat=x_hat[lo:hi], mu=mu[lo:hi], logvar=logvar[lo:hi])
        loss, parts = global_objective(x[lo:hi], out_part, model, pitch=pitch[lo:hi], classes=classes[lo:hi],
                                       beta=0.5, cfg=cfg, ranks=ranks, batch=len(x))
        got[name] = {"loss": loss.item(), **parts}
    Path(out, f"labels.{rank}.json").write_text(json.dumps(got))
