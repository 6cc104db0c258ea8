"""`torchrun --nproc-per-node 2 -m vaelib train`: the command of docs/scale.md trains the run one process
trains (the history within the tolerance of tests/test_distributed.py), and prints its summary once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from _distributed import TINY_MODEL, free_port, needs_gloo

from vaelib.cli import main
from vaelib.config import PROJECT_ROOT, load_config
from vaelib.data.synthetic import build_synthetic_cache
from vaelib.model.train import HISTORY_COLUMNS

pytestmark = needs_gloo

SMOKE = PROJECT_ROOT / "params" / "smoke.yaml"
TINY = [*TINY_MODEL, "train.epochs=2", "train.data=stream"]


def test_torchrun_trains_the_run_of_one_process(tmp_path, capsys):
    sets = [f"features.cache_dir={tmp_path / 'cache'}", *TINY]
    cache = build_synthetic_cache(load_config(SMOKE, sets).features, (60, 8, 0), per_instrument=20,
                                  show_progress=False)

    def args(ckpt: str) -> list[str]:
        over = [a for kv in [*sets, f"train.checkpoint_dir={tmp_path / ckpt}"] for a in ("--set", kv)]
        return ["train", "--params", str(SMOKE), *over, "--cache", str(cache.path), "--quiet"]

    assert main(args("one")) == 0
    one = json.loads(capsys.readouterr().out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    if os.path.exists("/sys/class/net/lo"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "vaelib",
                           *args("two")], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    # rank 0 alone prints: one summary
    two = json.loads(done.stdout[done.stdout.index("{"):])
    assert done.stdout.count('"checkpoint_dir"') == 1
    assert two["epochs_run"] == one["epochs_run"] == 2
    assert Path(two["checkpoint_dir"]).name == Path(one["checkpoint_dir"]).name  # the same run, hash for hash
    cols = [c for c in HISTORY_COLUMNS if c != "seconds"]
    a = pd.read_csv(f"{one['checkpoint_dir']}/history.csv")[cols].to_numpy(float)
    b = pd.read_csv(f"{two['checkpoint_dir']}/history.csv")[cols].to_numpy(float)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert "2 processes (gloo), StreamRows" in done.stderr
