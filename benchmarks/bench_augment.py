"""What the augmentation adds to a training step: milliseconds per batch, side by side.

Alternating rounds in one process, on the default batch size and features: the augmentation of one batch
with each part of the recording chain alone and with all of them (``train.augment_*`` of
``params/augment.yaml`` plus detune and reverb, as ``--set`` would give them), and with the note's envelope
(a faster decay and darkening), against one training step of the ``--params`` model (forward,
backward and Adam, bf16 autocast where the run would use it, channels-last as training is). The inputs are
normalised log-mel in [-1, 1] drawn at random: the augmentation's cost does not depend on what the notes
hold. The ratio of the medians is the figure to read; the absolute times depend on the load.

Writes ``benchmarks/results/augment.json`` (``--out``) with the machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from vaelib.config import PROJECT_ROOT, load_config, project_relative
from vaelib.io import atomic_write_json
from vaelib.model.augment import Augmenter
from vaelib.model.device import autocast_dtype, machine_info, resolve_device, set_threads
from vaelib.model.loss import vae_loss
from vaelib.model.vae import ConvVAE

OUT = PROJECT_ROOT / "benchmarks" / "results" / "augment.json"
PARTS = {
    "detune": ["train.augment_detune=20"],
    "tilt": ["train.augment_tilt=4"],
    "eq": ["train.augment_eq=12"],
    "reverb": ["train.augment_reverb=1", "train.augment_rt60=1.5"],
    "envelope": ["train.augment_decay=20", "train.augment_darkening=2"],
    "all": ["train.augment_detune=20", "train.augment_tilt=4", "train.augment_eq=12", "train.augment_reverb=1",
            "train.augment_rt60=1.5"],
}


def _median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(PROJECT_ROOT / "params" / "default.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10, help="batches timed per part and round")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    cfg = load_config(args.params, args.overrides)
    set_threads(cfg.train.num_threads)
    device = resolve_device(cfg.train.device)
    dtype = autocast_dtype(device, enabled=cfg.train.bf16)
    fc, bs = cfg.features, cfg.train.batch_size
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(bs, 1, fc.n_mels, fc.frames, generator=gen) * 2 - 1).contiguous(memory_format=torch.channels_last)
    augmenters = {name: Augmenter.from_config(load_config(args.params, [*args.overrides, *sets]), device)
                  for name, sets in PARTS.items()}

    torch.manual_seed(0)
    model = ConvVAE(cfg.model, n_mels=fc.n_mels, frames=fc.frames).to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = model(x, generator=gen)
        loss = vae_loss(x, out, beta=1.0, free_bits=0.25).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def augment(aug: Augmenter):
        return lambda: aug(x, aug.draw(bs, gen))

    step()  # warm-up: oneDNN primitives, the allocator
    for aug in augmenters.values():
        augment(aug)()
    rounds = []
    for r in range(args.rounds):
        row = {"training_step": _median_ms(step, args.reps)}
        row.update({name: _median_ms(augment(aug), args.reps) for name, aug in augmenters.items()})
        rounds.append(row)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in row.items()), flush=True)
    median = {k: float(np.median([row[k] for row in rounds])) for k in rounds[0]}
    result = {
        "what": "ms per batch: one training step of the model, and the augmentation of the batch by each part",
        "params": project_relative(Path(args.params)), "overrides": args.overrides, "batch_size": bs,
        "features": {"n_mels": fc.n_mels, "frames": fc.frames}, "dtype": str(dtype).replace("torch.", ""),
        "parts": PARTS, "rounds": rounds, "median_ms": median,
        "share_of_step": {k: median[k] / median["training_step"] for k in PARTS},
        "machine": machine_info(),
    }
    atomic_write_json(Path(args.out), result)
    print(", ".join(f"{k} {v:.0%} of a step" for k, v in result["share_of_step"].items()))


if __name__ == "__main__":
    main()
