"""Data-parallel training under ``torchrun``: the processes, and the pieces that make them compute one run.

``torchrun --nproc-per-node N -m vaelib train ...`` starts N processes (ranks); :func:`setup` joins
them in a process group (gloo on the CPU, NCCL on GPUs, one GPU per rank) from the variables torchrun
sets. A run in N processes computes what one process computes with the same params:

* ``train.batch_size`` is the global batch: every rank draws the same epoch order and takes its
  contiguous part of each batch (:meth:`Ranks.part`), and draws the noise of the whole batch, using
  its rows (``noise_rows`` of :meth:`vaelib.model.vae.ConvVAE.forward`);
* the objective is the one of the whole batch, not a mean of the ranks' objectives: each rank
  gathers every note's reconstruction error, ``mu`` and ``logvar`` (:func:`global_objective`), so
  free bits (a batch mean per dimension), the contrastive and pitch-order terms (pairs of notes) and
  the pitch head see the global batch; gradients flow back through the gather (its backward sums
  the ranks' gradients, :func:`gather_rows`), and DDP's average of the ranks' gradients is then the
  gradient of that one objective;
* BatchNorm normalises by the statistics of the global batch (:class:`GlobalBatchNorm2d`);
* decisions are taken once: rank 0 decides what to do with the run's folder, evaluates the valid
  split and broadcasts the epoch's figures (:meth:`Ranks.from_main`), so early stopping and any error
  are the same on every rank; a non-finite loss is the same number on every rank (computed from the
  same gathered rows), and a stop (Ctrl-C, SIGTERM) on any rank stops all at the same batch
  (:meth:`Ranks.agree`);
* rank 0 alone writes (checkpoints, history, config, the run's lock) and logs.

The difference left is floating-point: the statistics and sums are added in another order (about
1e-7 relative per step; figures in docs/scale.md).
"""

from __future__ import annotations

import atexit
import datetime
import inspect
import logging
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from vaelib.config import TrainConfig
from vaelib.exceptions import ParameterError, TrainingError
from vaelib.model.loss import objective_from_terms, recon_per_note

__all__ = ["Ranks", "SINGLE", "launched", "setup", "GlobalBatchNorm2d", "convert_batchnorm", "gather_rows",
           "all_reduce_sum", "global_objective", "wrap_model"]

log = logging.getLogger(__name__)
T = TypeVar("T")
TIMEOUT = datetime.timedelta(minutes=30)  # a collective waiting longer than this fails instead of hanging


@dataclass(frozen=True)
class Ranks:
    """The processes of a run: ``world`` of them, this one ``rank`` (``local_rank`` of ``local_world``
    on its node). ``Ranks()`` (:data:`SINGLE`) is one process, for which every method does nothing
    more than the one-process code would."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world: int = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that decides, writes and logs."""
        return self.rank == 0

    def part(self, n: int) -> tuple[int, int]:
        """(start, stop) of this rank's contiguous part of a batch of ``n`` notes; parts differ by at most one
        note and, taken in rank order, make up the batch."""
        return n * self.rank // self.world, n * (self.rank + 1) // self.world

    def counts(self, n: int) -> list[int]:
        """The number of notes of each rank's part of a batch of ``n``, in rank order."""
        return [n * (r + 1) // self.world - n * r // self.world for r in range(self.world)]

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 and its result (or the error it raised) given to every rank."""
        if self.world == 1:
            return fn()
        payload: list[Any] = [None]
        if self.is_main:
            try:
                payload = [("ok", fn())]
            except Exception as exc:
                try:
                    pickle.dumps(exc)
                    payload = [("error", exc)]
                except Exception:
                    payload = [("error", TrainingError(f"{type(exc).__name__}: {exc}"))]
                dist.broadcast_object_list(payload, src=0)
                raise
        dist.broadcast_object_list(payload, src=0)
        kind, value = payload[0]
        if kind == "error":
            raise value
        return value

    def together(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on every rank; when it fails on any, it fails on all (the ranks where it did not
        raise a :class:`TrainingError` saying so), instead of the others waiting at their next collective."""
        if self.world == 1:
            return fn()
        try:
            result, failed = fn(), None
        except Exception as exc:
            result, failed = None, exc
        (any_failed,) = self.agree(failed is not None)
        if failed is not None:
            raise failed
        if any_failed:
            raise TrainingError(f"rank {self.rank}: another process of the run failed; its error is in its output")
        return result

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag true on every rank when it is true on any (one all-reduce of them all)."""
        if self.world == 1:
            return tuple(bool(f) for f in flags)
        t = torch.tensor([float(f) for f in flags], device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in t.tolist())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


SINGLE = Ranks()


def launched() -> bool:
    """Whether this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> Ranks:
    """The processes of this run: :data:`SINGLE` unless started by torchrun, else this rank of the process
    group, which is created on the first call (gloo for ``device`` CPU, NCCL for CUDA, on which each rank
    takes GPU ``LOCAL_RANK``) and destroyed when the process exits. Ranks other than 0 log errors only.

    Raises
    ------
    TrainingError
        When torchrun's variables are incomplete, or a CUDA run has fewer GPUs than ranks on the node.
    """
    if not launched():
        return SINGLE
    try:
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    except (KeyError, ValueError) as exc:
        raise TrainingError(f"WORLD_SIZE is {os.environ.get('WORLD_SIZE')} but the other variables torchrun sets "
                            f"(RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) are missing or wrong ({exc}): start the "
                            "processes with torchrun") from exc
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise TrainingError(f"rank {rank} is process {local_rank} of its node but the node has "
                                f"{torch.cuda.device_count()} GPU(s): start at most one process per GPU "
                                "(torchrun --nproc-per-node)")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        if backend == "gloo" and not dist.is_gloo_available():
            raise TrainingError("this torch has no gloo backend, which distributed training on the CPU needs")
        dist.init_process_group(backend, timeout=TIMEOUT)
        atexit.register(_destroy)
    elif dist.get_world_size() != world:
        raise TrainingError(f"the process group has {dist.get_world_size()} processes, WORLD_SIZE says {world}")
    if rank != 0:
        logging.getLogger("vaelib").setLevel(logging.ERROR)
    return Ranks(world=world, rank=rank, local_rank=local_rank, local_world=local_world,
                 backend=dist.get_backend())


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- collectives with gradients

class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; its backward sums the ranks' gradients, as the sum's derivative does."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.detach().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks, differentiably (the gradient of every rank's use of the sum reaches each
    rank's ``t``)."""
    return _AllReduceSum.apply(t)


def gather_rows(t: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """The rows of every rank's ``t`` in rank order: [shape=(sum(counts), ...)], differentiably.

    ``counts`` is each rank's number of rows (known to all: :meth:`Ranks.part`). Written as a sum of
    zero-padded parts so that its backward is an all-reduce, which every backend has (gloo lacks a
    reduce-scatter): rank r's part of the gradient is then the sum of what every rank's use of the
    gathered rows gives it.
    """
    rank = dist.get_rank()
    start = sum(counts[:rank])
    full = t.new_zeros((sum(counts), *t.shape[1:]))
    full = full.index_copy(0, torch.arange(start, start + t.shape[0], device=t.device), t)
    return all_reduce_sum(full)


def _gather_plain(t: torch.Tensor, counts: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return gather_rows(t, counts)


# ----------------------------------------------------------------------------- the model

class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, summed over the ranks.

    Each rank sums its rows per channel (sum, sum of squares, count); one differentiable all-reduce
    of the three gives every rank the mean and the biased variance of the whole batch (the running
    variance takes the unbiased one, as ``nn.BatchNorm2d``). Works on every backend: torch's
    ``nn.SyncBatchNorm`` computes the same statistics but only on CUDA, and one module keeps the CPU
    test the proof of the GPU path. In eval mode, or in one process, it is ``nn.BatchNorm2d``; its
    ``state_dict`` is that of ``nn.BatchNorm2d``, so checkpoints load into the plain model.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        count = xf.new_tensor([x.numel() // c])
        stats = all_reduce_sum(torch.cat([xf.sum(dim=(0, 2, 3)), xf.square().sum(dim=(0, 2, 3)), count]))
        n = stats[2 * c].detach()
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean.square()).clamp_min(0.0)  # biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / max(float(n) - 1, 1.0), alpha=m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.BatchNorm2d`` replaced by a :class:`GlobalBatchNorm2d` holding the same
    parameters and buffers (in place; returned for chaining)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum,
                                    affine=child.affine, track_running_stats=child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(device=next(child.buffers()).device)
            setattr(module, name, new)
        else:
            convert_batchnorm(child)
    return module


def wrap_model(model: nn.Module, ranks: Ranks, cfg: TrainConfig) -> nn.Module:
    """The model for training in ``ranks``: itself in one process; else with :class:`GlobalBatchNorm2d`
    in DistributedDataParallel (its ``module`` is the model).

    Parameters that no step trains (a contrastive head while ``train.contrast`` is 0) are frozen: DDP
    expects a gradient of every parameter at every step, and one process leaves them as they are too.
    """
    if ranks.world == 1:
        return model
    if getattr(model, "contrast_proj", None) is not None and cfg.contrast == 0:
        model.contrast_proj.requires_grad_(False)
    convert_batchnorm(model)
    device = next(model.parameters()).device
    # Buffers (the running statistics) are equal on every rank already: syncing them at every forward would be a
    # collective for nothing (the argument's name changed in torch 2.13).
    no_sync = ({"forward_sync_buffers": False}
               if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
               else {"broadcast_buffers": False})
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                               **no_sync)


def global_objective(x: torch.Tensor, out, model: nn.Module, *, pitch: torch.Tensor, classes: torch.Tensor | None,
                     beta: float, cfg: TrainConfig, ranks: Ranks, batch: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The training objective of the global batch (:func:`vaelib.model.loss.objective_from_terms`), from
    this rank's part of it.

    Parameters
    ----------
    x : [shape=(part, 1, n_mels, frames)] this rank's notes; ``out`` the model's output on them
    model : the model itself (not its DDP wrapper): the heads the objective uses
    pitch, classes : [shape=(part,)] int64 (classes with more columns, the SoundFont and the family: see
        ``contrast_classes``)
    batch : int, notes in the global batch

    Returns
    -------
    The same on every rank: the global batch's loss and its parts (per note).
    """
    if ranks.world == 1:
        raise ParameterError("global_objective is for several processes; one calls training_objective")
    counts = ranks.counts(batch)
    # One gather of every differentiable row (error, mu, logvar) and one of the labels.
    rows = torch.cat([recon_per_note(x, out.x_hat)[:, None], out.mu.float(), out.logvar.float()], dim=1)
    every = gather_rows(rows, counts)
    d = out.mu.shape[1]
    every_pitch, every_class = unpack_labels(_gather_plain(pack_labels(pitch, classes), counts), classes)
    return objective_from_terms(every[:, 0], every[:, 1:1 + d], every[:, 1 + d:], model, pitch=every_pitch,
                                classes=every_class, beta=beta, cfg=cfg)


def pack_labels(pitch: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
    """The pitch and the contrastive classes of a rank's notes as one int64 table to gather:
    [shape=(part, 2)], or a column more for each further column of the classes (their SoundFont, their
    family); a rank's part may be empty."""
    plain = torch.zeros_like(pitch) if classes is None else classes
    return torch.cat([pitch[:, None], plain[:, None] if plain.ndim == 1 else plain], dim=1)


def unpack_labels(labels: torch.Tensor, classes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`pack_labels` undone on the gathered table: the pitches, and the classes in the shape of
    this rank's ``classes`` (None when the contrastive term is off)."""
    if classes is None:
        return labels[:, 0], None
    return labels[:, 0], labels[:, 1] if classes.ndim == 1 else labels[:, 1:]
