#!/usr/bin/env python3
"""Hostile but fair inputs thrown at the real ``vaelib`` command line, each outcome classified.

Every case runs ``.venv/bin/vaelib <cmd> ...`` as a subprocess with a timeout, in a temporary folder
of its own (a copy of a smoke dataset rendered once, its own feature cache and checkpoint folder), and
classifies what came back:

``clear_error``
    exit 2; stderr's last line is ``vaelib <cmd>: error: ...`` and names the file, key or path at fault;
    no Python traceback anywhere in stderr; nothing written half where the command was to write.
``repair``
    exit 0 with a logged warning that counts or names what was repaired (a damaged cache rebuilt, a short
    wav padded, a stereo wav downmixed).
``accepted``
    a valid (if unusual) input that succeeds (exit 0, or the documented status), its result checked (the
    labels in the cache are the edited ones, the features are finite and match the original's).
``FAIL``
    anything else: a traceback, exit 1, a timeout, exit 0 with a silent wrong result (NaN in the
    features, old labels after an edit, a finished run's best.pt changed), data lost.

Each case declares what it expects (one of the first three, plus the outcomes it tolerates); the
verdict is ``FAIL`` when what came back is ``FAIL`` or neither the expectation nor a tolerated outcome.
The harness only calls the CLI (and ``python -c`` with ``vaelib.data.cache.open_feature_cache`` or
pandas to read what the CLI wrote), so it runs while the code is being changed.

Usage::

    python scripts/hostile_cases.py                 # every case; writes scripts/results/hostile_cases.json
    python scripts/hostile_cases.py --only audio    # one group (or case ids; repeatable); JSON only with --json
    python scripts/hostile_cases.py --list          # the cases, with what each expects

Nothing is written into the repository's data/. ``vaelib run`` always writes into the repository's
reports/ (the CLI has no reports-root option): those cases use unique ``run.name`` values and remove
their folders afterwards, then rewrite reports/index.html from what is left. Mount-based cases (a full
disk as a tiny tmpfs, a read-only folder as a read-only bind mount when running as root, where chmod
does not block writes) are skipped, with the reason, where mounting is not permitted.
"""

from __future__ import annotations

import os
import sys

# The harness reads and writes wavs with numpy and soundfile: run it with the project's interpreter.
try:
    import numpy as np
except ImportError:  # pragma: no cover - started with a bare python
    _venv = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv", "bin", "python")
    if os.path.exists(_venv) and not os.environ.get("VAELIB_HOSTILE_REEXEC"):
        os.environ["VAELIB_HOSTILE_REEXEC"] = "1"
        os.execv(_venv, [_venv, *sys.argv])
    raise

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import html.parser
import json
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import traceback
import wave
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_PY = ROOT / ".venv" / "bin" / "python"
VAELIB = ROOT / ".venv" / "bin" / "vaelib"
SMOKE = ROOT / "params" / "smoke.yaml"
RESULTS = ROOT / "scripts" / "results" / "hostile_cases.json"
REPORTS = ROOT / "reports"

EXPECTATIONS = ("clear_error", "repair", "accepted")
GROUPS = ("audio", "metadata", "params", "checkpoints", "runs", "filesystem", "reports")
TRACEBACK = "Traceback (most recent call last)"
DEFAULT_TIMEOUT = 300
UNSET_VAR = "VAELIB_HOSTILE_UNSET_VAR"


# ----------------------------------------------------------------------------------------------- cases

@dataclasses.dataclass
class Case:
    id: str
    group: str
    expected: str
    description: str
    fn: Callable[[CaseRun], None]
    tolerate: tuple[str, ...] = ()
    repair: str | None = None  # regex a warning line must match for the outcome to be a repair
    ok_rc: tuple[int, ...] = (0,)  # exit statuses of a success (vaelib check exits 1 on problems found)
    timeout: int = DEFAULT_TIMEOUT
    needs: tuple[str, ...] = ()  # base artefacts: "trained", "other_model"


CASES: list[Case] = []


def case(id: str, group: str, expected: str, description: str, **kw) -> Callable:
    assert group in GROUPS and expected in EXPECTATIONS, (id, group, expected)

    def deco(fn: Callable[[CaseRun], None]) -> Callable[[CaseRun], None]:
        assert all(c.id != id for c in CASES), id
        CASES.append(Case(id=id, group=group, expected=expected, description=description, fn=fn, **kw))
        return fn
    return deco


class Skip(Exception):
    """The case cannot be run here (the reason is recorded)."""


@dataclasses.dataclass
class Result:
    argv: list[str]
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    @property
    def cmd(self) -> str:
        return self.argv[1] if len(self.argv) > 1 else ""

    @property
    def last(self) -> str:
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    @property
    def warnings(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines()
                if ln.startswith("WARNING ") or re.search(r"\b\w*Warning: ", ln)]

    def json(self) -> dict | None:
        try:
            return json.loads(self.stdout)
        except (json.JSONDecodeError, ValueError):
            return None


def host_tag() -> str:
    """The host part of vaelib's OWNER_TAG (vaelib.io.HOST), for a partial folder of a dead build."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): sha(p) or "" for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ wav writing

def read_pcm16(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").copy()


_PCM_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")


def wav_bytes(x: np.ndarray, rate: int, kind: str = "pcm16", *, extensible: bool = False,
              extra_chunks: bytes = b"", data_size: int | None = None, riff_size: int | None = None) -> bytes:
    """A RIFF wav of float samples ``x`` [shape=(n,) or (n, channels)] in [-1, 1] (floats: as given)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    ch = x.shape[1]
    with np.errstate(invalid="ignore"):
        if kind == "pcm8":
            tag, bits, data = 1, 8, np.clip(np.round(x * 127 + 128), 0, 255).astype(np.uint8).tobytes()
        elif kind == "pcm16":
            tag, bits, data = 1, 16, np.clip(np.round(x * 32768), -32768, 32767).astype("<i2").tobytes()
        elif kind == "pcm24":
            v = np.clip(np.round(x * 8388608), -8388608, 8388607).astype("<i4")
            tag, bits, data = 1, 24, v.reshape(-1).view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
        elif kind == "pcm32":
            v = np.clip(np.round(x * 2147483648.0), -2147483648, 2147483647).astype("<i4")
            tag, bits, data = 1, 32, v.tobytes()
        elif kind == "float32":
            tag, bits, data = 3, 32, x.astype("<f4").tobytes()
        elif kind == "float64":
            tag, bits, data = 3, 64, x.astype("<f8").tobytes()
        else:
            raise ValueError(kind)
    block = ch * bits // 8
    if extensible:
        mask = (1 << ch) - 1
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, ch, rate, rate * block, block, bits, 22, bits, mask)
        fmt += struct.pack("<H", tag) + _PCM_GUID_TAIL
    else:
        fmt = struct.pack("<HHIIHH", tag, ch, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunks
    body += b"data" + struct.pack("<I", len(data) if data_size is None else data_size) + data
    if len(data) % 2:
        body += b"\x00"
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def resample_linear(x: np.ndarray, sr: int, target: int) -> np.ndarray:
    n = int(round(len(x) * target / sr))
    return np.interp(np.arange(n) / target, np.arange(len(x)) / sr, x)


# --------------------------------------------------------------------------- what the harness reads back

INSPECT_CACHE = r"""
import json, sys
import numpy as np
from vaelib.data.cache import open_feature_cache
path, notes, ref = sys.argv[1], json.loads(sys.argv[2]), (sys.argv[3] if len(sys.argv) > 3 else "")
c = open_feature_cache(path)
f = np.asarray(c.features, dtype=np.float32)
meta = c.meta
r = open_feature_cache(ref) if ref else None
out = {"path": str(c.path), "n": int(len(meta)), "shape": list(f.shape), "finite": bool(np.isfinite(f).all()),
       "min": float(np.nanmin(f)) if f.size else None, "max": float(np.nanmax(f)) if f.size else None,
       "manifest": c.manifest, "note_strs": meta["note_str"].tolist(), "notes": {}}
for n in notes:
    idx = np.flatnonzero(meta["note_str"].to_numpy() == n)
    d = {"count": int(len(idx))}
    if len(idx):
        i = int(idx[0])
        d["meta"] = json.loads(meta.iloc[[i]].to_json(orient="records", default_handler=str))[0]
        row = f[i]
        d.update(min=float(row.min()), max=float(row.max()), mean=float(row.mean()),
                 finite=bool(np.isfinite(row).all()))
        if r is not None:
            j = np.flatnonzero(r.meta["note_str"].to_numpy() == n)
            if len(j):
                d["max_abs_diff_vs_ref"] = float(np.abs(row - np.asarray(r.features[int(j[0])], np.float32)).max())
    out["notes"][n] = d
print(json.dumps(out, default=str))
"""

INSPECT_PARQUET = r"""
import json, sys
import numpy as np, pandas as pd
t = pd.read_parquet(sys.argv[1])
mu = [c for c in t.columns if c.startswith("mu_")]
print(json.dumps({"n": int(len(t)), "columns": list(t.columns), "mu_dims": len(mu),
                  "finite": bool(np.isfinite(t[mu].to_numpy(dtype=np.float64)).all()) if mu else None}))
"""

CKPT_TOOL = r"""
import os, pickle, sys, torch
kind, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
class Evil:
    def __init__(self, target):
        self.target = target
    def __reduce__(self):
        return (os.system, ("touch " + self.target,))
if kind == "evil_torch":
    torch.save({"format": 1, "model": Evil(sys.argv[4]), "config": {}}, dst)
elif kind == "evil_pickle":
    with open(dst, "wb") as fh:
        pickle.dump(Evil(sys.argv[4]), fh)
else:
    ck = torch.load(src, map_location="cpu", weights_only=True)
    if kind == "no_model":
        ck.pop("model")
    elif kind == "no_config":
        ck.pop("config")
    elif kind == "format_99":
        ck["format"] = 99
    elif kind == "state_dict_only":
        ck = ck["model"]
    torch.save(ck, dst)
"""

REFRESH_INDEX = ("from vaelib.config import REPORTS_DIR; from vaelib.report.pipeline import refresh_reports_index; "
                 "refresh_reports_index(REPORTS_DIR)")


class TagParser(html.parser.HTMLParser):
    """Start tags and text of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


# ------------------------------------------------------------------------------------------- the context

class Context:
    """The temporary work folder and the base artefacts shared by the cases (built once, copied per case)."""

    def __init__(self, work: Path, stamp: str) -> None:
        self.work = work
        self.stamp = stamp
        self.base = work / "base"
        self.base_ds = self.base / "ds"
        self.base_cache = self.base / "cache"
        self.base_ckpt = self.base / "ckpt"
        self.other_ckpt_dir = self.base / "ckpt_other"
        self.env = {k: v for k, v in os.environ.items() if k != UNSET_VAR}
        self.env["PYTHONUNBUFFERED"] = "1"
        self.report_names: list[str] = []
        self.mounts: list[Path] = []
        self._trained: dict | None = None
        self._other: Path | None = None
        self.base_cache_path: Path | None = None
        self.markup_run: Path | None = None  # reports.markup_escaped's run folder, for reports.check_markup_run
        self.note = ""  # the note whose wav and entry the cases damage

    # --- subprocesses
    def run(self, argv: list[str], *, cwd: Path, timeout: float, env: dict | None = None) -> Result:
        t0 = time.monotonic()
        try:
            p = subprocess.run(argv, cwd=cwd, env=env or self.env, capture_output=True, text=True,
                               timeout=timeout, errors="replace", preexec_fn=_default_sigint)
            return Result(argv, p.returncode, p.stdout, p.stderr, time.monotonic() - t0)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            return Result(argv, None, out, err, time.monotonic() - t0, timed_out=True)

    def smoke_opts(self, ds: Path, cache: Path, ckpt: Path, *sets: str, params: Path = SMOKE) -> list[str]:
        out = ["--params", str(params), "--set", f"data.root={ds}", "--set", f"features.cache_dir={cache}",
               "--set", f"train.checkpoint_dir={ckpt}"]
        for s in sets:
            out += ["--set", s]
        return out

    def must(self, res: Result, what: str) -> Result:
        if res.rc != 0:
            raise RuntimeError(f"base setup failed ({what}): exit {res.rc}\n{res.stderr[-3000:]}")
        return res

    # --- base artefacts
    def setup(self) -> None:
        self.base.mkdir(parents=True)
        print(f"[setup] rendering the smoke dataset into {self.base_ds}", flush=True)
        self.must(self.run([str(VAELIB), "render", "--params", str(SMOKE), "--out", str(self.base_ds), "--quiet"],
                           cwd=self.base, timeout=600), "render")
        print("[setup] building its feature cache", flush=True)
        res = self.must(self.run([str(VAELIB), "preprocess", *self.smoke_opts(self.base_ds, self.base_cache,
                                                                               self.base_ckpt), "--quiet"],
                                 cwd=self.base, timeout=600), "preprocess")
        self.base_cache_path = Path(res.json()["cache"])
        self.note = sorted(json.loads((self.base_ds / "examples.json").read_text()))[0]

    def trained(self) -> dict:
        """The base run trained (smoke params, 2 epochs): its train summary."""
        if self._trained is None:
            print("[setup] training the base run (smoke params, 2 epochs)", flush=True)
            res = self.must(self.run([str(VAELIB), "train", *self.smoke_opts(self.base_ds, self.base_cache,
                                                                              self.base_ckpt), "--quiet"],
                                     cwd=self.base, timeout=900), "train")
            self._trained = res.json()
        return self._trained

    def other_model(self) -> Path:
        """best.pt of a run of another model config (latent_dim 4, 1 epoch) on the base dataset."""
        if self._other is None:
            print("[setup] training a run of another model config (latent_dim 4)", flush=True)
            res = self.must(self.run([str(VAELIB), "train", *self.smoke_opts(
                self.base_ds, self.base_cache, self.other_ckpt_dir, "model.latent_dim=4", "train.epochs=1"),
                "--quiet"], cwd=self.base, timeout=900), "train latent_dim=4")
            self._other = Path(res.json()["best"])
        return self._other

    def base_run_dir(self) -> Path:
        return Path(self.trained()["checkpoint_dir"])

    # --- reports/ clean-up
    def report_name(self, tag: str) -> str:
        name = f"hostile-{self.stamp}-{tag}"
        self.report_names.append(name)
        return name

    def remove_reports(self) -> None:
        if not self.report_names:
            return
        for name in self.report_names:
            for p in [REPORTS / name, REPORTS / f"{name}.failed", *REPORTS.glob(f".{name}.staging-*"),
                      *REPORTS.glob(f".{name}.old-*")]:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
        subprocess.run([str(VENV_PY), "-c", REFRESH_INDEX], cwd=ROOT, capture_output=True, timeout=120)
        self.report_names = []


def _default_sigint() -> None:
    # A background shell starts its children with SIGINT ignored, and then Python installs no Ctrl-C
    # handler: give the CLI the disposition an interactive user's terminal gives it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Spawned:
    """A CLI process in the background, its stderr in a file that can be waited on."""

    def __init__(self, argv: list[str], cwd: Path, env: dict, tag: str) -> None:
        self.argv = argv
        self.err_path = cwd / f".{tag}.stderr"
        self.out_path = cwd / f".{tag}.stdout"
        self.t0 = time.monotonic()
        self._files = (open(self.out_path, "w"), open(self.err_path, "w"))
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._files[0], stderr=self._files[1],
                                     preexec_fn=_default_sigint)

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, pattern: str, timeout: float) -> bool:
        end = time.monotonic() + timeout
        rx = re.compile(pattern, re.M)
        while time.monotonic() < end:
            if rx.search(self.stderr()):
                return True
            if self.proc.poll() is not None:
                return bool(rx.search(self.stderr()))
            time.sleep(0.05)
        return False

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def finish(self, timeout: float) -> Result:
        try:
            rc = self.proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc, timed_out = self.proc.wait(), True
        for fh in self._files:
            fh.close()
        return Result(self.argv, None if timed_out else rc, self.out_path.read_text(errors="replace"), self.stderr(),
                      time.monotonic() - self.t0, timed_out=timed_out)


class CaseRun:
    """One case being run: its folder, its commands, the problems its checks found."""

    def __init__(self, c: Case, ctx: Context) -> None:
        self.case = c
        self.ctx = ctx
        self.dir = ctx.work / c.id
        self.dir.mkdir(parents=True)
        self.main: Result | None = None
        self.steps: list[Result] = []
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.names: list[str] = []  # what the error line must name (any one of them)
        self.name_all: list[str] = []  # what it must all name
        self.cleanups: list[Callable[[], None]] = []
        self.note = ctx.note

    # --- running
    def vaelib(self, cmd: str, *args: str, main: bool = True, timeout: float | None = None,
               env: dict | None = None) -> Result:
        res = self.ctx.run([str(VAELIB), cmd, *args], cwd=self.dir, timeout=timeout or self.case.timeout, env=env)
        self._record(res, main)
        return res

    def python(self, code: str, *args: str, timeout: float = 180) -> Result:
        return self.ctx.run([str(VENV_PY), "-c", code, *args], cwd=ROOT, timeout=timeout)

    def spawn(self, cmd: str, *args: str, tag: str) -> Spawned:
        return Spawned([str(VAELIB), cmd, *args], self.dir, self.ctx.env, tag)

    def _record(self, res: Result, main: bool) -> None:
        if main:
            if self.main is not None:
                self.steps.append(self.main)
            self.main = res
        else:
            self.steps.append(res)

    def record(self, res: Result, main: bool = False) -> Result:
        self._record(res, main)
        return res

    # --- checking
    def check(self, ok: bool, problem: str) -> bool:
        if not ok:
            self.problems.append(problem)
        return ok

    def expect_names(self, *names: str, all_of: tuple[str, ...] = ()) -> None:
        self.names = [str(n) for n in names]
        self.name_all = [str(n) for n in all_of]

    def skip(self, reason: str) -> None:
        raise Skip(reason)

    @property
    def failed_main(self) -> bool:
        return self.main is None or self.main.rc != 0

    def no_partial_cache(self, cache_dir: Path) -> None:
        """No hidden partial build left in ``cache_dir``; after a failed command, no cache folder either."""
        if not cache_dir.is_dir():
            return
        for e in sorted(cache_dir.iterdir()):
            if e.name.startswith(".") and not e.name.endswith(".lock"):
                self.problems.append(f"partial leftover in the cache folder: {e.name}")
            elif not e.name.startswith(".") and self.failed_main:
                self.problems.append(f"a cache folder was written although the command failed: {e.name}")

    def absent(self, path: Path, why: str = "") -> None:
        if path.exists() or path.is_symlink():
            self.problems.append(f"{self.rel(path)} exists{(': ' + why) if why else ''}")

    def no_tmp_beside(self, target: Path) -> None:
        folder = target.parent
        if folder.is_dir():
            left = [e.name for e in folder.iterdir() if e.name.startswith(f".{target.name}.")]
            if left:
                self.problems.append(f"partial temp files beside {self.rel(target)}: {left}")

    def rel(self, p: Path | str) -> str:
        return str(p).replace(str(self.ctx.work), "$TMP").replace(str(ROOT), ".")

    # --- copies of the base artefacts
    def copy_ds(self, name: str = "ds") -> Path:
        dst = self.dir / name
        shutil.copytree(self.ctx.base_ds, dst)  # copy2: sizes and mtimes kept, so cache keys match the base's
        return dst

    def copy_cache(self, name: str = "cache") -> Path:
        dst = self.dir / name
        shutil.copytree(self.ctx.base_cache, dst)
        return dst

    def copy_ckpt(self, name: str = "ckpt") -> Path:
        self.ctx.trained()
        dst = self.dir / name
        shutil.copytree(self.ctx.base_ckpt, dst)
        return dst

    def opts(self, ds: Path | None = None, cache: Path | None = None, ckpt: Path | None = None, *sets: str,
             params: Path = SMOKE) -> list[str]:
        return self.ctx.smoke_opts(ds or self.ctx.base_ds, cache or self.dir / "cache", ckpt or self.dir / "ckpt",
                                   *sets, params=params)

    def wav(self, ds: Path, note: str | None = None) -> Path:
        return ds / "audio" / f"{note or self.note}.wav"

    def base_signal(self, note: str | None = None) -> np.ndarray:
        return read_pcm16(self.wav(self.ctx.base_ds, note)).astype(np.float64) / 32768.0

    def examples(self, ds: Path) -> dict:
        return json.loads((ds / "examples.json").read_text())

    def write_examples(self, ds: Path, obj: object) -> None:
        (ds / "examples.json").write_text(json.dumps(obj, indent=1, ensure_ascii=False))

    def inspect_cache(self, cache_path: Path | str, notes: list[str] = (), ref: bool = False) -> dict | None:
        args = [str(cache_path), json.dumps(list(notes))]
        if ref:
            args.append(str(self.ctx.base_cache_path))
        res = self.python(INSPECT_CACHE, *args)
        if res.rc != 0:
            self.problems.append(f"the cache the command reported cannot be opened: {res.last}")
            return None
        return json.loads(res.stdout)

    def inspect_main_cache(self, notes: list[str] = (), ref: bool = False) -> dict | None:
        """The cache the (successful) preprocess reported on stdout, inspected."""
        if self.failed_main:
            return None
        out = self.main.json() if self.main else None
        if not out or "cache" not in out:
            self.problems.append("preprocess printed no cache path")
            return None
        return self.inspect_cache(out["cache"], notes, ref=ref)

    def finite_cache(self, info: dict | None, n: int | None = None) -> None:
        if info is None:
            return
        self.check(info["finite"], "non-finite values in the cached features")
        self.check(info["min"] is None or (-1.0001 <= info["min"] and info["max"] <= 1.0001),
                   f"features outside [-1, 1]: {info['min']}..{info['max']}")
        if n is not None:
            self.check(info["n"] == n, f"the cache holds {info['n']} notes, expected {n}")

    def inspect_parquet(self, path: Path) -> dict | None:
        res = self.python(INSPECT_PARQUET, str(path))
        if res.rc != 0:
            self.problems.append(f"{self.rel(path)} cannot be read as Parquet: {res.last}")
            return None
        return json.loads(res.stdout)

    def ckpt_tool(self, kind: str, src: Path, dst: Path, *extra: str) -> None:
        res = self.python(CKPT_TOOL, kind, str(src), str(dst), *extra)
        if res.rc != 0:
            raise RuntimeError(f"could not build the {kind} checkpoint: {res.stderr[-2000:]}")

    # --- mounts (root only): a tiny tmpfs as a full disk, a read-only bind mount as a read-only folder
    def _mount(self, args: list[str], target: Path) -> None:
        p = subprocess.run(["mount", *args], capture_output=True, text=True)
        if p.returncode != 0:
            self.skip(f"cannot mount ({' '.join(['mount', *args])}): {p.stderr.strip() or p.returncode}")
        self.ctx.mounts.append(target)
        self.cleanups.append(lambda: _umount(target, self.ctx))

    def tmpfs(self, name: str, size: str) -> Path:
        target = self.dir / name
        target.mkdir()
        self._mount(["-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)], target)
        return target

    def read_only(self, folder: Path) -> Path:
        """Make ``folder`` read-only: chmod where that blocks writes, else (root) a read-only bind mount."""
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o555)
        self.cleanups.append(lambda: os.chmod(folder, 0o755) if folder.exists() else None)
        if not os.access(folder, os.W_OK):
            self.notes.append(f"{self.rel(folder)} made read-only with chmod 555")
            return folder
        self._mount(["--bind", str(folder), str(folder)], folder)
        p = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True, text=True)
        if p.returncode != 0 or os.access(folder, os.W_OK) and _can_create(folder):
            self.skip("running as root, chmod does not block writes, and a read-only bind mount could not be "
                      f"made ({p.stderr.strip()})")
        self.notes.append(f"running as root (chmod does not block writes): {self.rel(folder)} is a read-only "
                          "bind mount")
        return folder


def _can_create(folder: Path) -> bool:
    try:
        fd, p = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(p)
    return True


def _umount(target: Path, ctx: Context) -> None:
    for args in (["umount", str(target)], ["umount", "-l", str(target)]):
        if subprocess.run(args, capture_output=True).returncode == 0:
            break
    if target in ctx.mounts:
        ctx.mounts.remove(target)


# ------------------------------------------------------------------------------------- classification

def classify(c: Case, cr: CaseRun) -> dict:
    r = cr.main
    problems = list(cr.problems)
    got = None
    if r is None:
        problems.append("the case ran no main command")
    else:
        for step in [*cr.steps, r]:
            if TRACEBACK in step.stderr:
                problems.append(f"Python traceback in the stderr of `vaelib {step.cmd}`")
        if r.timed_out:
            problems.append(f"timed out after {r.seconds:.0f} s")
        elif r.rc == 2 and any(ln.startswith(f"vaelib {r.cmd}: error: ") for ln in r.stderr.splitlines()):
            lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
            at = max(i for i, ln in enumerate(lines) if ln.startswith(f"vaelib {r.cmd}: error: "))
            message = "\n".join(lines[at:])
            if at != len(lines) - 1:
                problems.append(f"exit 2, but the error message spans {len(lines) - at} lines: the last stderr line "
                                f"is not `vaelib {r.cmd}: error: ...`")
            else:
                got = "clear_error"
            if cr.names and not any(n in message for n in cr.names):
                problems.append(f"the error message names none of {cr.names}")
            missing = [n for n in cr.name_all if n not in message]
            if missing:
                problems.append(f"the error message does not name {missing}")
        elif r.rc in c.ok_rc:
            if c.repair and any(re.search(c.repair, w) for w in r.warnings):
                got = "repair"
            else:
                got = "accepted"
        elif r.rc == 2:
            problems.append(f"exit 2 but no stderr line is `vaelib {r.cmd}: error: ...`")
        else:
            problems.append(f"exit {r.rc}")
    if problems:
        got = "FAIL"
    if got == "FAIL":
        verdict = "FAIL"
    elif got == c.expected or got in c.tolerate:
        verdict = "pass"
    else:
        verdict = "FAIL"
        extra = {"accepted": " (exit 0 with no warning matching the repair)" if c.expected == "repair" else
                 " (the input was taken without an error)"}.get(got, "")
        problems.append(f"expected {c.expected}, got {got}{extra}")
    return {"got": got, "verdict": verdict, "problems": problems}


def run_case(c: Case, ctx: Context) -> dict:
    t0 = time.monotonic()
    cr = CaseRun(c, ctx)
    record = {"id": c.id, "group": c.group, "description": c.description, "expected": c.expected,
              "tolerated": list(c.tolerate)}
    try:
        c.fn(cr)
        record.update(classify(c, cr))
    except Skip as exc:
        record.update(got="skipped", verdict="skipped", problems=[], skip_reason=str(exc))
    except Exception as exc:  # the harness's own failure: reported, not hidden
        record.update(got="FAIL", verdict="FAIL",
                      problems=[f"harness error: {type(exc).__name__}: {exc}"] + cr.problems,
                      harness_traceback=traceback.format_exc()[-3000:])
    finally:
        for fn in reversed(cr.cleanups):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001
                cr.notes.append(f"clean-up failed: {exc}")
    r = cr.main
    record.update(
        command=cr.rel(shlex.join(r.argv)) if r else None,
        exit_code=None if r is None or r.timed_out else r.rc,
        last_stderr_line=cr.rel(r.last) if r else None,
        error_line=next((cr.rel(ln) for ln in reversed(r.stderr.splitlines())
                         if ln.startswith(f"vaelib {r.cmd}: error: ")), None) if r else None,
        seconds=round(time.monotonic() - t0, 1),
        main_seconds=round(r.seconds, 1) if r else None,
        warnings=[cr.rel(w)[:400] for w in r.warnings[:6]] if r else [],
        notes=cr.notes,
        steps=[{"command": cr.rel(shlex.join(s.argv)), "exit_code": s.rc, "last_stderr_line": cr.rel(s.last)}
               for s in cr.steps],
    )
    record["problems"] = [cr.rel(p) for p in record["problems"]]
    if r and record["verdict"] == "FAIL":
        record["stdout_tail"] = cr.rel(r.stdout[-1500:])
        record["stderr_tail"] = cr.rel(r.stderr[-1500:])
    return record


# ================================================================================== 1. audio (preprocess)

def _preprocess_with_wav(c: CaseRun, data: bytes | None, *sets: str, note: str | None = None) -> Path:
    ds = c.copy_ds()
    path = c.wav(ds, note)
    if data is not None:
        path.write_bytes(data)
    c.vaelib("preprocess", *c.opts(ds, None, None, *sets), "--quiet")
    return ds


def _audio_error(c: CaseRun, data: bytes, *sets: str) -> None:
    c.expect_names(f"{c.note}.wav")
    _preprocess_with_wav(c, data, *sets)
    c.no_partial_cache(c.dir / "cache")


def _audio_same_features(c: CaseRun, data: bytes, *, tol: float = 2e-3, compare: bool = True, n: int = 168) -> None:
    _preprocess_with_wav(c, data)
    info = c.inspect_main_cache([c.note], ref=compare)
    c.finite_cache(info, n)
    if info and compare:
        d = info["notes"][c.note].get("max_abs_diff_vs_ref")
        c.check(d is not None and d <= tol, f"the note's features differ from the original 16-bit wav's by {d}")
    c.no_partial_cache(c.dir / "cache")


@case("audio.nan_float32", "audio", "clear_error", "a 32-bit float wav holding 100 NaN samples")
def _(c):
    x = c.base_signal()
    x[1000:1100] = np.nan
    _audio_error(c, wav_bytes(x, 16000, "float32"))


@case("audio.inf_one_sample", "audio", "clear_error", "a 32-bit float wav with one +Inf sample")
def _(c):
    x = c.base_signal()
    x[5000] = np.inf
    _audio_error(c, wav_bytes(x, 16000, "float32"))


@case("audio.neg_inf_float64", "audio", "clear_error", "a 64-bit float wav with one -Inf sample")
def _(c):
    x = c.base_signal()
    x[7] = -np.inf
    _audio_error(c, wav_bytes(x, 16000, "float64"))


@case("audio.nan_two_files", "audio", "clear_error", "two float wavs with NaN: one run names both")
def _(c):
    ds = c.copy_ds()
    notes = sorted(c.examples(ds))[:1] + sorted(c.examples(ds))[-1:]
    for n in notes:
        x = c.base_signal(n)
        x[::100] = np.nan
        c.wav(ds, n).write_bytes(wav_bytes(x, 16000, "float32"))
    c.expect_names(*notes, all_of=tuple(f"{n}.wav" for n in notes))
    c.vaelib("preprocess", *c.opts(ds), "--quiet")
    c.no_partial_cache(c.dir / "cache")


@case("audio.silent", "audio", "accepted",
      "an all-zero (digitally silent) 16-bit wav: documented as a log-mel of -1 (the floor) everywhere")
def _(c):
    _preprocess_with_wav(c, wav_bytes(np.zeros(64000), 16000))
    info = c.inspect_main_cache([c.note])
    c.finite_cache(info, 168)
    if info:
        row = info["notes"][c.note]
        c.check(row["min"] == -1.0 and row["max"] == -1.0, f"silent note's log-mel is {row['min']}..{row['max']}, "
                "expected -1 everywhere")


@case("audio.truncated_mid_data", "audio", "repair", "a wav cut short in a copy (its last 50,000 bytes gone)",
      repair=r"truncated")
def _(c):
    data = c.wav(c.ctx.base_ds).read_bytes()
    _preprocess_with_wav(c, data[:-50000])
    info = c.inspect_main_cache([c.note])
    c.finite_cache(info, 168)
    if info:
        c.check(any(c.note in f for f in info["manifest"].get("truncated_files", [])),
                "the manifest's truncated_files does not name the file")
    if c.main and not c.failed_main:
        c.check(any(c.note in w for w in c.main.warnings if "truncated" in w), "no warning names the truncated file")


@case("audio.truncated_odd_byte", "audio", "repair", "a 16-bit wav one byte short (odd data length)",
      repair=r"truncated")
def _(c):
    data = c.wav(c.ctx.base_ds).read_bytes()
    _preprocess_with_wav(c, data[:-1])
    c.finite_cache(c.inspect_main_cache([c.note]), 168)


@case("audio.header_only", "audio", "repair",
      "a wav whose header claims 4 s of data but holds none (policy: truncated, read as zeros, warned)",
      repair=r"truncated", tolerate=("clear_error",))
def _(c):
    c.expect_names(f"{c.note}.wav")
    data = c.wav(c.ctx.base_ds).read_bytes()
    _preprocess_with_wav(c, data[: data.find(b"data") + 8])
    c.finite_cache(c.inspect_main_cache([c.note]), 168)
    c.no_partial_cache(c.dir / "cache")


@case("audio.header_zero_frames", "audio", "repair",
      "a complete wav of zero frames (data size 0): padded to silence, counted",
      repair=r"padded|truncated|empty", tolerate=("clear_error",))
def _(c):
    c.expect_names(f"{c.note}.wav")
    _preprocess_with_wav(c, wav_bytes(np.zeros(0), 16000))
    c.finite_cache(c.inspect_main_cache([c.note]), 168)
    c.no_partial_cache(c.dir / "cache")


@case("audio.zero_bytes", "audio", "clear_error", "a zero-byte .wav file")
def _(c):
    _audio_error(c, b"")


@case("audio.text_file", "audio", "clear_error", "a text file named .wav")
def _(c):
    _audio_error(c, b"this is not audio, just a note someone saved with the wrong name\n" * 20)


@case("audio.riff_then_garbage", "audio", "clear_error", "a RIFF/WAVE header followed by random bytes")
def _(c):
    rng = np.random.default_rng(0)
    _audio_error(c, b"RIFF" + struct.pack("<I", 100004) + b"WAVE" + rng.bytes(100000))


def _compressed(c: CaseRun, fmt: str, subtype: str | None) -> None:
    import soundfile as sf

    x = c.base_signal()
    tmp = c.dir / f"note.{fmt.lower()}"
    try:
        sf.write(tmp, x, 16000, format=fmt, subtype=subtype)
    except Exception as exc:  # noqa: BLE001 - libsndfile built without that format
        c.skip(f"this libsndfile cannot write {fmt}: {exc}")
    c.expect_names(f"{c.note}.wav")
    _preprocess_with_wav(c, tmp.read_bytes())
    info = c.inspect_main_cache([c.note])
    c.finite_cache(info, 168)
    c.no_partial_cache(c.dir / "cache")


@case("audio.ogg_renamed", "audio", "accepted",
      "an Ogg Vorbis file renamed .wav (libsndfile reads by content: decoded, or refused naming the file)",
      tolerate=("clear_error",))
def _(c):
    _compressed(c, "OGG", "VORBIS")


@case("audio.mp3_renamed", "audio", "accepted",
      "an MP3 file renamed .wav (decoded by content, or refused naming the file)", tolerate=("clear_error",))
def _(c):
    _compressed(c, "MP3", "MPEG_LAYER_III")


@case("audio.pcm8", "audio", "accepted", "an 8-bit unsigned PCM wav (read by libsndfile)")
def _(c):
    _audio_same_features(c, wav_bytes(c.base_signal(), 16000, "pcm8"), compare=False)


@case("audio.pcm24", "audio", "accepted", "a 24-bit PCM wav of the same samples: same features")
def _(c):
    _audio_same_features(c, wav_bytes(c.base_signal(), 16000, "pcm24"))


@case("audio.pcm32", "audio", "accepted", "a 32-bit integer PCM wav of the same samples: same features")
def _(c):
    _audio_same_features(c, wav_bytes(c.base_signal(), 16000, "pcm32"))


@case("audio.float32", "audio", "accepted", "a 32-bit float wav of the same samples: same features")
def _(c):
    _audio_same_features(c, wav_bytes(c.base_signal(), 16000, "float32"))


@case("audio.extensible16", "audio", "accepted", "a WAVE_FORMAT_EXTENSIBLE 16-bit mono wav: same features")
def _(c):
    _audio_same_features(c, wav_bytes(c.base_signal(), 16000, "pcm16", extensible=True))


@case("audio.ulaw", "audio", "accepted", "a mu-law wav (read by libsndfile)")
def _(c):
    import soundfile as sf

    tmp = c.dir / "ulaw.wav"
    sf.write(tmp, c.base_signal(), 16000, subtype="ULAW")
    _audio_same_features(c, tmp.read_bytes(), compare=False)


@case("audio.list_chunk", "audio", "accepted", "a 16-bit wav with a LIST/INFO chunk before its data: same features")
def _(c):
    info = b"INFOISFT" + struct.pack("<I", 14) + b"hostile-case\x00\x00"
    chunk = b"LIST" + struct.pack("<I", len(info)) + info
    _audio_same_features(c, wav_bytes(c.base_signal(), 16000, "pcm16", extra_chunks=chunk))


@case("audio.streaming_sizes", "audio", "accepted",
      "a 16-bit wav whose RIFF and data sizes are 0xFFFFFFFF (a streaming writer): same features",
      tolerate=("repair",), repair=r"truncated|padded|cut")
def _(c):
    _audio_same_features(c, wav_bytes(c.base_signal(), 16000, "pcm16", data_size=0xFFFFFFFF, riff_size=0xFFFFFFFF))


@case("audio.stereo", "audio", "repair", "a stereo 16 kHz wav (equal channels): downmixed with a warning",
      repair=r"downmixed|channels")
def _(c):
    x = c.base_signal()
    _audio_same_features(c, wav_bytes(np.stack([x, x], axis=1), 16000, "pcm16"))


@case("audio.rate_44k1", "audio", "repair", "a 44.1 kHz wav: resampled with a warning (data.resample default true)",
      repair=r"resampl")
def _(c):
    _audio_same_features(c, wav_bytes(resample_linear(c.base_signal(), 16000, 44100), 44100), compare=False)


@case("audio.rate_48k", "audio", "repair", "a 48 kHz wav: resampled with a warning", repair=r"resampl")
def _(c):
    _audio_same_features(c, wav_bytes(resample_linear(c.base_signal(), 16000, 48000), 48000), compare=False)


@case("audio.rate_8k", "audio", "repair", "an 8 kHz wav: resampled with a warning", repair=r"resampl")
def _(c):
    _audio_same_features(c, wav_bytes(resample_linear(c.base_signal(), 16000, 8000), 8000), compare=False)


@case("audio.rate_44k1_resample_off", "audio", "clear_error",
      "a 44.1 kHz wav with data.resample=false: refused naming the file")
def _(c):
    _audio_error(c, wav_bytes(resample_linear(c.base_signal(), 16000, 44100), 44100), "data.resample=false")


@case("audio.short_2s", "audio", "repair", "a 2 s wav: padded with zeros to 4 s, counted", repair=r"padded")
def _(c):
    _preprocess_with_wav(c, wav_bytes(c.base_signal()[:32000], 16000))
    info = c.inspect_main_cache([c.note])
    c.finite_cache(info, 168)
    if info:
        c.check(any(c.note in f for f in info["manifest"].get("fixed_files", [])), "manifest fixed_files omits it")


@case("audio.long_10s", "audio", "repair", "a 10 s wav (the note then 6 s more): cut to 4 s, counted, same features",
      repair=r"\bcut\b")
def _(c):
    x = c.base_signal()
    _audio_same_features(c, wav_bytes(np.concatenate([x, np.tile(x, 2)[:96000]]), 16000))


@case("audio.missing_wav", "audio", "clear_error", "the wav of a note in examples.json is missing")
def _(c):
    ds = c.copy_ds()
    c.wav(ds).unlink()
    c.expect_names(f"{c.note}.wav")
    c.vaelib("preprocess", *c.opts(ds), "--quiet")
    c.no_partial_cache(c.dir / "cache")


@case("audio.extra_wav", "audio", "accepted", "an extra wav in audio/ that examples.json does not list: ignored")
def _(c):
    ds = c.copy_ds()
    shutil.copy(c.wav(ds), ds / "audio" / "stray_acoustic_999-060-100.wav")
    c.vaelib("preprocess", *c.opts(ds), "--quiet")
    info = c.inspect_main_cache()
    c.finite_cache(info, 168)
    if info:
        c.check("stray_acoustic_999-060-100" not in info["note_strs"], "the stray wav became a note")


@case("audio.clipped", "audio", "repair",
      "clipped audio (the note x8, runs of samples at +-1.0): used as it is, with a warning naming it",
      repair=r"clipped")
def _(c):
    x = np.clip(c.base_signal() * 8 / max(1e-9, np.abs(c.base_signal()).max()), -1.0, 1.0)
    _preprocess_with_wav(c, wav_bytes(x, 16000))
    c.finite_cache(c.inspect_main_cache([c.note]), 168)
    if c.main and not c.failed_main:
        c.check(any(c.note in w for w in c.main.warnings if "clipped" in w), "the clipping warning does not name it")


@case("audio.float_beyond_full_scale", "audio", "repair",
      "a float wav peaking at 4.0 (legal in float wavs): finite features, clipping warned", repair=r"clipped")
def _(c):
    x = c.base_signal()
    _audio_same_features(c, wav_bytes(x * 4.0 / np.abs(x).max(), 16000, "float32"), compare=False)


@case("audio.float_huge", "audio", "clear_error",
      "a float wav with samples of 1e30 (power overflows): refused as non-finite features, never NaN stored")
def _(c):
    x = c.base_signal() * 1e30
    _audio_error(c, wav_bytes(x, 16000, "float32"))


@case("audio.wav_is_folder", "audio", "clear_error", "a folder stands where a note's wav should be")
def _(c):
    ds = c.copy_ds()
    c.wav(ds).unlink()
    c.wav(ds).mkdir()
    c.expect_names(f"{c.note}.wav")
    c.vaelib("preprocess", *c.opts(ds), "--quiet")
    c.no_partial_cache(c.dir / "cache")


@case("audio.dangling_symlink", "audio", "clear_error", "a note's wav is a symlink to a file that is gone")
def _(c):
    ds = c.copy_ds()
    c.wav(ds).unlink()
    c.wav(ds).symlink_to(c.dir / "gone.wav")
    c.expect_names(f"{c.note}.wav", "gone.wav")
    c.vaelib("preprocess", *c.opts(ds), "--quiet")
    c.no_partial_cache(c.dir / "cache")


@case("audio.symlink_ok", "audio", "accepted", "a note's wav is a symlink to a valid wav elsewhere")
def _(c):
    ds = c.copy_ds()
    target = c.dir / "elsewhere.wav"
    shutil.move(c.wav(ds), target)
    c.wav(ds).symlink_to(target)
    c.vaelib("preprocess", *c.opts(ds), "--quiet")
    c.finite_cache(c.inspect_main_cache([c.note]), 168)


# ============================================================================= 2. metadata (preprocess)

def _meta_error(c: CaseRun, edit: Callable[[dict], object] | None = None, *, text: str | bytes | None = None,
                names: tuple[str, ...] = ("examples.json",), all_of: tuple[str, ...] = ()) -> Path:
    ds = c.copy_ds()
    if text is not None:
        (ds / "examples.json").write_bytes(text.encode() if isinstance(text, str) else text)
    elif edit is not None:
        ex = c.examples(ds)
        out = edit(ex)
        c.write_examples(ds, ex if out is None else out)
    c.expect_names(*names, all_of=all_of)
    c.vaelib("preprocess", *c.opts(ds), "--quiet")
    c.no_partial_cache(c.dir / "cache")
    return ds


def _rename_instrument(ds: Path, old: str, new: str) -> list[str]:
    ex = json.loads((ds / "examples.json").read_text())
    out, renamed = {}, []
    for key, e in ex.items():
        if e["instrument_str"] == old:
            nk = new + key[len(old):]
            e = {**e, "note_str": nk, "instrument_str": new}
            (ds / "audio" / f"{key}.wav").rename(ds / "audio" / f"{nk}.wav")
            renamed.append(nk)
            key = nk
        out[key] = e
    (ds / "examples.json").write_text(json.dumps(out, indent=1, ensure_ascii=False))
    return renamed


@case("metadata.invalid_json", "metadata", "clear_error", "examples.json cut off mid-object (not valid JSON)")
def _(c):
    text = (c.ctx.base_ds / "examples.json").read_text()
    _meta_error(c, text=text[: len(text) // 2])


@case("metadata.pitch_beyond_int64", "metadata", "clear_error", "a note's pitch of 10^30 (beyond 64-bit integers)")
def _(c):
    _meta_error(c, lambda ex: next(iter(ex.values())).update(pitch=10**30), names=("pitch",))


@case("metadata.pitch_128", "metadata", "clear_error", "a note's pitch of 128 (outside MIDI)")
def _(c):
    _meta_error(c, lambda ex: next(iter(ex.values())).update(pitch=128), names=("pitch",))


@case("metadata.json_list", "metadata", "clear_error", "examples.json is a JSON list of the entries")
def _(c):
    _meta_error(c, lambda ex: list(ex.values()))


@case("metadata.empty_object", "metadata", "clear_error", "examples.json is {}")
def _(c):
    _meta_error(c, text="{}")


@case("metadata.missing_file", "metadata", "clear_error", "the dataset folder has audio/ but no examples.json")
def _(c):
    ds = c.copy_ds()
    (ds / "examples.json").unlink()
    c.expect_names("examples.json")
    c.vaelib("preprocess", *c.opts(ds), "--quiet")
    c.no_partial_cache(c.dir / "cache")
    c.absent(ds / "examples.json", "something was rendered into an existing dataset folder")


@case("metadata.missing_pitch", "metadata", "clear_error", "an entry without its pitch field")
def _(c):
    _meta_error(c, lambda ex: ex[c.note].pop("pitch") and None, names=(c.note,), all_of=("pitch",))


@case("metadata.pitch_string", "metadata", "clear_error", 'pitch written as a string ("48")')
def _(c):
    _meta_error(c, lambda ex: ex[c.note].update(pitch="48"), names=(c.note,), all_of=("pitch",))


@case("metadata.pitch_float_integral", "metadata", "accepted", "pitch written as 48.0 (documented: read as 48)")
def _(c):
    ds = c.copy_ds()
    ex = c.examples(ds)
    want = ex[c.note]["pitch"]
    ex[c.note]["pitch"] = float(want)
    c.write_examples(ds, ex)
    c.vaelib("preprocess", *c.opts(ds), "--quiet")
    info = c.inspect_main_cache([c.note])
    c.finite_cache(info, 168)
    if info:
        c.check(info["notes"][c.note]["meta"]["pitch"] == want, "the pitch in the cache is not the integer")


@case("metadata.pitch_fractional", "metadata", "clear_error", "pitch 48.5")
def _(c):
    _meta_error(c, lambda ex: ex[c.note].update(pitch=48.5), names=(c.note,), all_of=("pitch",))


@case("metadata.pitch_bool", "metadata", "clear_error", "pitch true (a JSON boolean)")
def _(c):
    _meta_error(c, lambda ex: ex[c.note].update(pitch=True), names=(c.note,), all_of=("pitch",))


def _out_of_range(c: CaseRun, field: str, value: int) -> None:
    ds = _meta_error(c, lambda ex: ex[c.note].update({field: value}), names=(c.note,), all_of=(field,))
    if c.main and not c.failed_main:
        info = c.inspect_main_cache([c.note])
        if info:
            kept = info["notes"][c.note]["count"]
            c.check(not kept, f"{field} {value} (not a MIDI value) was stored in the cache as a label")
            if not kept:
                c.check(any("dropped" in w for w in c.main.warnings), "the note was dropped without a warning")
    del ds


@case("metadata.pitch_200", "metadata", "clear_error",
      "pitch 200 (not a MIDI pitch): refused, or at least dropped with a counted warning",
      tolerate=("repair",), repair=r"dropped")
def _(c):
    _out_of_range(c, "pitch", 200)


@case("metadata.pitch_negative", "metadata", "clear_error", "pitch -3: refused, or dropped with a counted warning",
      tolerate=("repair",), repair=r"dropped")
def _(c):
    _out_of_range(c, "pitch", -3)


@case("metadata.velocity_negative", "metadata", "clear_error",
      "velocity -5: refused, or dropped with a counted warning (never stored as a label)",
      tolerate=("repair",), repair=r"dropped")
def _(c):
    _out_of_range(c, "velocity", -5)


@case("metadata.velocity_300", "metadata", "clear_error", "velocity 300: refused, or dropped with a counted warning",
      tolerate=("repair",), repair=r"dropped")
def _(c):
    _out_of_range(c, "velocity", 300)


@case("metadata.note_str_dotdot", "metadata", "clear_error", "a key and note_str of ../../evil (leaves audio/)")
def _(c):
    def edit(ex):
        e = ex.pop(c.note)
        ex["../../evil"] = {**e, "note_str": "../../evil"}
    _meta_error(c, edit, names=("../../evil",))


@case("metadata.note_str_backslash", "metadata", "clear_error", r"a key and note_str holding a backslash (a\b)")
def _(c):
    def edit(ex):
        e = ex.pop(c.note)
        ex["a\\b"] = {**e, "note_str": "a\\b"}
    _meta_error(c, edit, names=("a\\\\b", "a\\b"))


@case("metadata.note_str_differs", "metadata", "clear_error", "an entry's note_str differs from its key")
def _(c):
    _meta_error(c, lambda ex: ex[c.note].update(note_str=c.note + "-x"), names=(c.note,))


@case("metadata.duplicate_key", "metadata", "clear_error",
      "a key written twice in examples.json (the second with another pitch): refused, not last-wins silently")
def _(c):
    text = (c.ctx.base_ds / "examples.json").read_text()
    ex = json.loads(text)
    dup = json.dumps({c.note: {**ex[c.note], "pitch": ex[c.note]["pitch"] + 1}})[1:-1]
    text = text.rstrip().rstrip("}").rstrip() + ",\n" + dup + "\n}"
    _meta_error(c, text=text, names=(c.note,))
    if not c.failed_main:
        info = c.inspect_main_cache([c.note])
        if info and info["notes"][c.note]["count"]:
            c.notes.append(f"the cache holds one {c.note} with pitch {info['notes'][c.note]['meta']['pitch']} "
                           f"(first entry {ex[c.note]['pitch']}, second {ex[c.note]['pitch'] + 1}): the other "
                           "entry was dropped without a word")


@case("metadata.case_variant_key", "metadata", "accepted",
      "a second instrument whose names differ only in case (Brass_acoustic_000 beside brass_acoustic_000)")
def _(c):
    ds = c.copy_ds()
    ex = c.examples(ds)
    inst = ex[c.note]["instrument_str"]
    new = inst[0].upper() + inst[1:]
    added = []
    for key, e in list(ex.items()):
        if e["instrument_str"] == inst:
            nk = new + key[len(inst):]
            ex[nk] = {**e, "note_str": nk, "instrument_str": new, "instrument": 999}
            shutil.copy(ds / "audio" / f"{key}.wav", ds / "audio" / f"{nk}.wav")
            added.append(nk)
    c.write_examples(ds, ex)
    c.vaelib("preprocess", *c.opts(ds), "--quiet")
    info = c.inspect_main_cache(added[:1])
    c.finite_cache(info, 168 + len(added))
    if info:
        c.check(info["notes"][added[0]]["count"] == 1, "the case-variant note is missing")


@case("metadata.unknown_family_name", "metadata", "clear_error",
      "instrument_family_str 'kazoo' (not an NSynth family) on one instrument's notes")
def _(c):
    def edit(ex):
        inst = ex[c.note]["instrument_str"]
        for e in ex.values():
            if e["instrument_str"] == inst:
                e["instrument_family_str"] = "kazoo"
    _meta_error(c, edit, names=("kazoo",))


@case("metadata.family_str_id_mismatch", "metadata", "clear_error",
      "instrument_family 1 (brass) but instrument_family_str 'reed' on one instrument: the labels disagree")
def _(c):
    def edit(ex):
        inst = ex[c.note]["instrument_str"]
        for e in ex.values():
            if e["instrument_str"] == inst:
                e["instrument_family"], e["instrument_family_str"] = 1, "reed"
    _meta_error(c, edit, names=("reed", "instrument_family", c.note, "brass"))


@case("metadata.family_id_11", "metadata", "clear_error", "instrument_family 11 (ids are 0-10)")
def _(c):
    _meta_error(c, lambda ex: ex[c.note].update(instrument_family=11), names=(c.note,), all_of=("instrument_family",))


@case("metadata.unknown_source_name", "metadata", "clear_error",
      "instrument_source_str 'alien' (not acoustic/electronic/synthetic)")
def _(c):
    def edit(ex):
        inst = ex[c.note]["instrument_str"]
        for e in ex.values():
            if e["instrument_str"] == inst:
                e["instrument_source_str"] = "alien"
    _meta_error(c, edit, names=("alien",))


@case("metadata.entry_not_object", "metadata", "clear_error", "an entry that is a number, not an object")
def _(c):
    _meta_error(c, lambda ex: ex.update({c.note: 42}), names=(c.note,))


@case("metadata.qualities_nine", "metadata", "clear_error", "qualities holding 9 flags instead of 10")
def _(c):
    _meta_error(c, lambda ex: ex[c.note].update(qualities=[0] * 9), names=(c.note,), all_of=("qualities",))


@case("metadata.null_instrument_str", "metadata", "clear_error", "instrument_str null")
def _(c):
    _meta_error(c, lambda ex: ex[c.note].update(instrument_str=None), names=(c.note,), all_of=("instrument_str",))


@case("metadata.bom", "metadata", "accepted",
      "examples.json saved with a UTF-8 byte-order mark (as some Windows editors do)", tolerate=("clear_error",))
def _(c):
    text = (c.ctx.base_ds / "examples.json").read_bytes()
    ds = _meta_error(c, text=b"\xef\xbb\xbf" + text)
    if not c.failed_main:
        c.finite_cache(c.inspect_main_cache(), 168)
    del ds


@case("metadata.latin1_bytes", "metadata", "clear_error", "examples.json with Latin-1 bytes (not UTF-8)")
def _(c):
    text = (c.ctx.base_ds / "examples.json").read_text().replace(f'"{c.note}"', f'"{c.note}\xe9"', 1)
    _meta_error(c, text=text.encode("latin-1"))


@case("metadata.extra_field", "metadata", "accepted", "entries with an extra field ('comment') NSynth does not have")
def _(c):
    ds = c.copy_ds()
    ex = c.examples(ds)
    for e in ex.values():
        e["comment"] = "added by hand"
    c.write_examples(ds, ex)
    c.vaelib("preprocess", *c.opts(ds), "--quiet")
    c.finite_cache(c.inspect_main_cache(), 168)


def _renamed_instrument_kept(c, new: str) -> None:
    """Rename one instrument to ``new`` (keys and wavs), preprocess, and check the cache holds the name as given."""
    ds = c.copy_ds()
    old = c.examples(ds)[c.note]["instrument_str"]
    renamed = _rename_instrument(ds, old, new)
    c.vaelib("preprocess", *c.opts(ds), "--quiet")
    info = c.inspect_main_cache(renamed[:1])
    c.finite_cache(info, 168)
    if info:
        got = info["notes"][renamed[0]].get("meta", {}).get("instrument_str")
        c.check(got == new, f"instrument_str in the cache is {got!r}")


@case("metadata.unicode_instrument", "metadata", "accepted",
      "an instrument named with accents, Cyrillic, CJK and an emoji (keys and wavs renamed)")
def _(c):
    _renamed_instrument_kept(c, "flûte_ацкуст_木管_🎺")


@case("metadata.markup_instrument", "metadata", "accepted",
      "an instrument named '<img src=x>$' (keys and wavs renamed): taken as plain text")
def _(c):
    _renamed_instrument_kept(c, "brass<img src=x>$")


def _edit_after(c: CaseRun, edit: Callable[[dict], None], check: Callable[[dict], list[str]]) -> None:
    ds = c.copy_ds()
    first = c.vaelib("preprocess", *c.opts(ds), "--quiet", main=False)
    if first.rc != 0:
        c.problems.append(f"the first preprocess failed: {first.last}")
        return
    ex = c.examples(ds)
    edit(ex)
    c.write_examples(ds, ex)
    c.vaelib("preprocess", *c.opts(ds), "--quiet")
    info = c.inspect_main_cache(sorted(ex))
    c.finite_cache(info, len(ex))
    if info:
        for p in check(info):
            c.problems.append(p)
        if c.main.json()["cache"] == first.json()["cache"]:
            c.notes.append("the edit reused the first cache folder")


@case("metadata.edit_pitch_after_preprocess", "metadata", "accepted",
      "a pitch edited in examples.json after a first preprocess: the new label is in the cache")
def _(c):
    def edit(ex):
        ex[c.note]["pitch"] = 50
    _edit_after(c, edit, lambda info: [] if info["notes"][c.note]["meta"]["pitch"] == 50 else
                [f"old pitch {info['notes'][c.note]['meta']['pitch']} served after the edit to 50"])


@case("metadata.edit_family_after_preprocess", "metadata", "accepted",
      "one instrument's family edited (brass -> reed, id and name) after a first preprocess: new labels cached")
def _(c):
    inst = c.examples(c.ctx.base_ds)[c.note]["instrument_str"]

    def edit(ex):
        for e in ex.values():
            if e["instrument_str"] == inst:
                e["instrument_family"], e["instrument_family_str"] = 7, "reed"

    def check(info):
        bad = [n for n, d in info["notes"].items() if d.get("meta", {}).get("instrument_str") == inst
               and (d["meta"]["instrument_family_str"], d["meta"]["instrument_family"]) != ("reed", 7)]
        return [f"{len(bad)} notes keep the old family after the edit (e.g. {bad[0]})"] if bad else []
    _edit_after(c, edit, check)


@case("metadata.edit_qualities_after_preprocess", "metadata", "accepted",
      "a note's qualities edited after a first preprocess: the new flags are cached")
def _(c):
    def edit(ex):
        ex[c.note]["qualities"] = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        ex[c.note]["qualities_str"] = ["bright"]
    _edit_after(c, edit, lambda info: [] if info["notes"][c.note]["meta"]["qualities"] == [1] + [0] * 9 else
                [f"old qualities {info['notes'][c.note]['meta']['qualities']} served after the edit"])


@case("metadata.remove_note_after_preprocess", "metadata", "accepted",
      "a note removed from examples.json (its wav kept) after a first preprocess: the cache drops it")
def _(c):
    _edit_after(c, lambda ex: ex.pop(c.note),
                lambda info: [] if c.note not in info["note_strs"] else ["the removed note is still in the cache"])


@case("metadata.nsynth_valid_only", "metadata", "repair",
      "a root holding only nsynth-valid/ (NSynth layout, train and test folders missing): reported, not silent",
      repair=r"nsynth-(train|test)|split folder", tolerate=("clear_error",))
def _(c):
    root = c.dir / "nsynth"
    root.mkdir()
    shutil.copytree(c.ctx.base_ds, root / "nsynth-valid")
    c.expect_names("nsynth-train", "nsynth-test", "train")
    c.vaelib("preprocess", *c.opts(root), "--quiet")
    if not c.failed_main:
        c.finite_cache(c.inspect_main_cache(), 168)
    c.no_partial_cache(c.dir / "cache")


# ====================================================================================== 3. params

def _params(c: CaseRun, *args: str, cmd: str = "params", names: tuple[str, ...] = (),
            all_of: tuple[str, ...] = ()) -> Result:
    c.expect_names(*names, all_of=all_of)
    extra = ["--quiet"] if cmd in ("preprocess", "train", "render", "embed") else []
    return c.vaelib(cmd, *args, *extra)


def _write(c: CaseRun, name: str, text: str | bytes) -> Path:
    p = c.dir / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


@case("params.unknown_section", "params", "clear_error", "a params file with an unknown section 'nosuch:'")
def _(c):
    p = _write(c, "p.yaml", f"base: {SMOKE}\nnosuch:\n  a: 1\n")
    _params(c, "--params", str(p), names=("nosuch",))


@case("params.unknown_key", "params", "clear_error", "--set train.lrr=0.1 (a typo of train.lr)")
def _(c):
    _params(c, "--params", str(SMOKE), "--set", "train.lrr=0.1", names=("lrr",))


@case("params.wrong_type_int", "params", "clear_error", "--set train.epochs=ten")
def _(c):
    _params(c, "--params", str(SMOKE), "--set", "train.epochs=ten", names=("train.epochs",))


@case("params.string_for_int_in_file", "params", "clear_error", 'batch_size: "32" (quoted) in a params file')
def _(c):
    p = _write(c, "p.yaml", f'base: {SMOKE}\ntrain:\n  batch_size: "32"\n')
    _params(c, "--params", str(p), names=("train.batch_size",))


for _id, _set, _key in (("params.lr_nan", "train.lr=.nan", "train.lr"),
                        ("params.lr_nan_word", "train.lr=nan", "train.lr"),
                        ("params.beta_inf", "train.beta=.inf", "train.beta"),
                        ("params.beta_neg_inf", "train.beta=-.inf", "train.beta"),
                        ("params.grad_clip_inf", "train.grad_clip=.inf", "train.grad_clip")):
    @case(_id, "params", "clear_error", f"--set {_set} (a non-finite float)")
    def _(c, _set=_set, _key=_key):
        _params(c, "--params", str(SMOKE), "--set", _set, names=(_key,))


@case("params.lr_nan_in_file_train", "params", "clear_error",
      "lr: .nan in a params file, with `vaelib train`: refused before any work (no cache, no run folder)")
def _(c):
    p = _write(c, "p.yaml", f"base: {SMOKE}\ntrain:\n  lr: .nan\n")
    _params(c, *c.opts(None, None, None, params=p), cmd="train", names=("train.lr",))
    c.absent(c.dir / "cache", "a feature cache was built before the params were refused")
    c.absent(c.dir / "ckpt", "a checkpoint folder was made before the params were refused")


@case("params.epochs_zero", "params", "clear_error", "--set train.epochs=0 (below the minimum 1)")
def _(c):
    _params(c, "--params", str(SMOKE), "--set", "train.epochs=0", names=("train.epochs",))


@case("params.lr_above_max", "params", "clear_error", "--set train.lr=5 (above the maximum 1.0)")
def _(c):
    _params(c, "--params", str(SMOKE), "--set", "train.lr=5", names=("train.lr",))


@case("params.fractions_sum", "params", "clear_error", "valid 0.5 + test 0.45 leaves no training instruments")
def _(c):
    _params(c, "--params", str(SMOKE), "--set", "data.valid_fraction=0.5", "--set", "data.test_fraction=0.45",
            names=("valid_fraction", "test_fraction"))


@case("params.fmax_above_nyquist", "params", "clear_error", "--set features.fmax=12000 at 16 kHz")
def _(c):
    _params(c, "--params", str(SMOKE), "--set", "features.fmax=12000", names=("features.fmax",))


@case("params.channels_length", "params", "clear_error", "model.channels [8, 16] with model.depth 3")
def _(c):
    _params(c, "--params", str(SMOKE), "--set", "model.channels=[8, 16]", names=("model.channels",))


@case("params.family_unknown", "params", "clear_error", "--set data.families=[kazoo]")
def _(c):
    _params(c, "--params", str(SMOKE), "--set", "data.families=[kazoo]", names=("data.families",))


@case("params.bool_as_string", "params", "clear_error", "--set data.resample='\"yes\"' (a quoted string)")
def _(c):
    _params(c, "--params", str(SMOKE), "--set", 'data.resample="yes"', names=("data.resample",))


@case("params.interp_pair_bad", "params", "clear_error", "--set analysis.interp_pairs=[keyboard-string]")
def _(c):
    _params(c, "--params", str(SMOKE), "--set", "analysis.interp_pairs=[keyboard-string]",
            names=("analysis.interp_pairs", "keyboard-string"))


@case("params.base_missing", "params", "clear_error", "a params file whose base: names a missing file")
def _(c):
    p = _write(c, "p.yaml", "base: nope_missing.yaml\ntrain:\n  epochs: 1\n")
    _params(c, "--params", str(p), names=("nope_missing.yaml",))


@case("params.base_self", "params", "clear_error", "a params file whose base: is itself")
def _(c):
    p = _write(c, "p.yaml", "base: p.yaml\n")
    _params(c, "--params", str(p), names=("p.yaml",))


@case("params.base_cycle", "params", "clear_error", "two params files whose base: name each other (a.yaml <-> b.yaml)")
def _(c):
    _write(c, "b.yaml", "base: a.yaml\ntrain:\n  epochs: 2\n")
    p = _write(c, "a.yaml", "base: b.yaml\ntrain:\n  epochs: 1\n")
    _params(c, "--params", str(p), names=("a.yaml", "b.yaml"))


@case("params.base_is_list", "params", "clear_error", "base: names a YAML file that holds a list")
def _(c):
    _write(c, "list.yaml", "- 1\n- 2\n")
    p = _write(c, "p.yaml", "base: list.yaml\n")
    _params(c, "--params", str(p), names=("list.yaml",))


@case("params.yaml_syntax", "params", "clear_error", "a params file with a YAML syntax error (unclosed bracket)")
def _(c):
    p = _write(c, "p.yaml", "train:\n  epochs: [1, 2\n  lr: 0.1\n")
    _params(c, "--params", str(p), names=("p.yaml",))


@case("params.tab_indent", "params", "clear_error", "a params file indented with a tab")
def _(c):
    p = _write(c, "p.yaml", "train:\n\tepochs: 1\n")
    _params(c, "--params", str(p), names=("p.yaml",))


@case("params.top_level_list", "params", "clear_error", "a params file that is a YAML list")
def _(c):
    p = _write(c, "p.yaml", "- train\n- epochs\n")
    _params(c, "--params", str(p), names=("p.yaml",))


@case("params.non_utf8", "params", "clear_error", "a params file saved in UTF-16 (not UTF-8)")
def _(c):
    p = _write(c, "p.yaml", "train:\n  epochs: 1\n".encode("utf-16"))
    _params(c, "--params", str(p), names=("p.yaml",))


@case("params.is_folder", "params", "clear_error", "--params names a folder")
def _(c):
    (c.dir / "folder.yaml").mkdir()
    _params(c, "--params", str(c.dir / "folder.yaml"), names=("folder.yaml",))


@case("params.missing_file", "params", "clear_error", "--params names a file that does not exist")
def _(c):
    _params(c, "--params", str(c.dir / "no_such_params.yaml"), names=("no_such_params.yaml",))


@case("params.empty_file", "params", "accepted", "an empty params file: every default")
def _(c):
    p = _write(c, "p.yaml", "")
    r = _params(c, "--params", str(p))
    if r.rc == 0:
        c.check("name: default" in r.stdout, "the printed config is not the defaults")


@case("params.section_null", "params", "accepted",
      "a section written with no keys ('train:' alone) in a file with a base: the base's train settings kept")
def _(c):
    p = _write(c, "p.yaml", f"base: {SMOKE}\ntrain:\n")
    r = _params(c, "--params", str(p))
    if r.rc == 0:
        c.check("epochs: 2" in r.stdout, "train: (null) lost the base file's train section")


@case("params.lr_exponent_no_dot", "params", "accepted", "--set train.lr=3e-4 (YAML 1.1 reads it as a string)")
def _(c):
    r = _params(c, "--params", str(SMOKE), "--set", "train.lr=3e-4")
    if r.rc == 0:
        c.check(re.search(r"^\s+lr: 0\.0003\s*$", r.stdout, re.M) is not None, "lr is not 0.0003 in the printed config")


@case("params.set_without_equals", "params", "clear_error", "--set train.epochs (no =value)")
def _(c):
    _params(c, "--params", str(SMOKE), "--set", "train.epochs", names=("train.epochs",))


@case("params.set_bad_key_shape", "params", "clear_error", "--set epochs=3 (no section)")
def _(c):
    _params(c, "--params", str(SMOKE), "--set", "epochs=3", names=("epochs=3",))


@case("params.set_three_part_key", "params", "clear_error", "--set train.epochs.max=3")
def _(c):
    _params(c, "--params", str(SMOKE), "--set", "train.epochs.max=3", names=("train.epochs.max",))


@case("params.set_bad_yaml_value", "params", "clear_error", "--set train.lr=[0.1, (not valid YAML)")
def _(c):
    _params(c, "--params", str(SMOKE), "--set", "train.lr=[0.1,", names=("train.lr",))


@case("params.unset_env_var", "params", "clear_error",
      f"data.root=${UNSET_VAR}/ds with the variable unset: refused naming it, nothing rendered anywhere")
def _(c):
    _params(c, "--params", str(SMOKE), "--set", f"data.root=${UNSET_VAR}/ds", "--set",
            f"features.cache_dir={c.dir / 'cache'}", "--set", f"train.checkpoint_dir={c.dir / 'ckpt'}",
            cmd="preprocess", names=(UNSET_VAR,))
    c.absent(ROOT / f"${UNSET_VAR}", "rendered into a folder named after the unset variable")
    c.absent(c.dir / f"${UNSET_VAR}")
    c.absent(c.dir / "cache", "a cache was built")


@case("params.device_cuda_missing", "params", "clear_error",
      "--set train.device=cuda on a machine without CUDA: refused before any work", tolerate=("accepted",))
def _(c):
    _params(c, *c.opts(None, None, None, "train.device=cuda", "train.epochs=1"), cmd="train",
            names=("cuda", "train.device"))
    if c.failed_main:
        c.absent(c.dir / "cache", "the feature cache was built before the missing device was noticed")


def _run_name(c: CaseRun, value: str, what: str) -> None:
    r = _params(c, "--params", str(SMOKE), "--set", f"run.name={value}", names=("run.name",))
    if r.rc == 0:
        c.notes.append(f"run.name {value!r} is accepted: `vaelib run` would then write {what} "
                       "(not executed by this harness)")


@case("params.run_name_empty", "params", "clear_error",
      "--set run.name= (empty): reports/<name>/ would be reports/ itself")
def _(c):
    _run_name(c, "", "its run folder as reports/ itself, replacing the whole reports folder")


@case("params.run_name_dotdot", "params", "clear_error", "--set run.name=../outside (leaves reports/)")
def _(c):
    _run_name(c, "../outside", "into <project>/outside, outside reports/")


@case("params.run_name_experiments", "params", "clear_error",
      "--set run.name=experiments (the sweeps' comparison folder in reports/)")
def _(c):
    _run_name(c, "experiments", "over reports/experiments/, the sweeps' results")


@case("params.run_name_index", "params", "clear_error", "--set run.name=index.html (the list of runs in reports/)")
def _(c):
    _run_name(c, "index.html", "a folder in place of reports/index.html")


@case("params.duplicate_key", "params", "clear_error", "train.epochs given twice in one params file")
def _(c):
    p = _write(c, "p.yaml", f"base: {SMOKE}\ntrain:\n  epochs: 3\n  epochs: 5\n")
    _params(c, "--params", str(p), names=("epochs", "twice"))


@case("params.integer_key", "params", "clear_error", "a params section with a key YAML reads as a number (1: 2)")
def _(c):
    p = _write(c, "p.yaml", f"base: {SMOKE}\ntrain:\n  1: 2\n  epochs: 3\n")
    _params(c, "--params", str(p), names=("train",))


@case("params.mel_bands_without_bins", "params", "clear_error",
      "features.fmin=7999 features.fmax=8000: every mel band narrower than an FFT bin")
def _(c):
    c.expect_names("features.n_mels", "features.fmin")
    c.vaelib("preprocess", *c.opts(c.ctx.base_ds, None, None, "features.fmin=7999", "features.fmax=8000"),
             "--quiet")
    c.no_partial_cache(c.dir / "cache")


# ================================================================================= 4. checkpoints

def _embed(c: CaseRun, checkpoint: Path | str | None, *sets: str, data: Path | None = None) -> Path:
    out = c.dir / "out" / "emb.parquet"
    args = [*c.opts(c.ctx.base_ds, c.copy_cache() if not (c.dir / "cache").exists() else c.dir / "cache",
                    c.dir / "ckpt", *sets), "--out", str(out), "--quiet"]
    if checkpoint is not None:
        args += ["--checkpoint", str(checkpoint)]
    if data is not None:
        args += ["--data", str(data)]
    c.vaelib("embed", *args)
    return out


def _embed_error(c: CaseRun, checkpoint: Path, *names: str) -> Path:
    c.expect_names(*(names or (checkpoint.name,)))
    out = _embed(c, checkpoint)
    c.absent(out, "a table was written from a bad checkpoint")
    c.no_tmp_beside(out)
    return out


@case("checkpoints.truncated_pt", "checkpoints", "clear_error", "embed --checkpoint a best.pt cut to half its size",
      needs=("trained",))
def _(c):
    src = c.ctx.base_run_dir() / "best.pt"
    bad = c.dir / "half.pt"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    _embed_error(c, bad)


@case("checkpoints.embed_out_is_the_checkpoint", "checkpoints", "clear_error",
      "embed --checkpoint X --out X (the table would replace the model)", needs=("trained",))
def _(c):
    ckpt = c.dir / "best.pt"
    shutil.copy(c.ctx.base_run_dir() / "best.pt", ckpt)
    before = ckpt.read_bytes()
    c.expect_names("--out", "best.pt")
    c.vaelib("embed", *c.opts(c.ctx.base_ds, c.copy_cache()), "--checkpoint", str(ckpt), "--out", str(ckpt),
             "--quiet")
    c.check(ckpt.read_bytes() == before, "the checkpoint was overwritten")


@case("checkpoints.random_bytes", "checkpoints", "clear_error", "embed --checkpoint a file of random bytes")
def _(c):
    bad = c.dir / "random.pt"
    bad.write_bytes(np.random.default_rng(1).bytes(200000))
    _embed_error(c, bad)


@case("checkpoints.empty_file", "checkpoints", "clear_error", "embed --checkpoint a zero-byte .pt")
def _(c):
    bad = c.dir / "empty.pt"
    bad.write_bytes(b"")
    _embed_error(c, bad)


def _evil(c: CaseRun, kind: str) -> None:
    pwned = c.dir / "PWNED"
    bad = c.dir / "evil.pt"
    c.ckpt_tool(kind, bad, bad, str(pwned))
    _embed_error(c, bad)
    c.check(not pwned.exists(), "SECURITY: loading the checkpoint ran its code (PWNED was created)")
    c.check(not (ROOT / "PWNED").exists(), "SECURITY: loading the checkpoint ran its code (./PWNED was created)")


@case("checkpoints.pickle_code_torch", "checkpoints", "clear_error",
      "a torch.save of an object whose __reduce__ runs os.system('touch PWNED'): refused, PWNED never appears")
def _(c):
    _evil(c, "evil_torch")


@case("checkpoints.pickle_code_legacy", "checkpoints", "clear_error",
      "a plain pickle (legacy, non-zip format) whose __reduce__ runs os.system('touch PWNED'): refused, no PWNED")
def _(c):
    _evil(c, "evil_pickle")


@case("checkpoints.other_model_config", "checkpoints", "repair",
      "embed --checkpoint a run of another model config (latent_dim 4): used, with a warning naming the key",
      repair=r"model\.latent_dim", needs=("other_model",))
def _(c):
    out = _embed(c, c.ctx.other_model())
    if not c.failed_main:
        info = c.inspect_parquet(out)
        if info:
            c.check(info["mu_dims"] == 4, f"the table has {info['mu_dims']} mu columns, the checkpoint's model has 4")
            c.check(info["n"] == 168 and info["finite"], f"table of {info['n']} notes, finite={info['finite']}")


@case("checkpoints.dict_without_model", "checkpoints", "clear_error",
      "a vaelib checkpoint dict with its 'model' entry removed", needs=("trained",))
def _(c):
    bad = c.dir / "nomodel.pt"
    c.ckpt_tool("no_model", c.ctx.base_run_dir() / "best.pt", bad)
    _embed_error(c, bad)


@case("checkpoints.dict_without_config", "checkpoints", "clear_error",
      "a vaelib checkpoint dict with its 'config' entry removed", needs=("trained",))
def _(c):
    bad = c.dir / "noconfig.pt"
    c.ckpt_tool("no_config", c.ctx.base_run_dir() / "best.pt", bad)
    _embed_error(c, bad)


@case("checkpoints.format_99", "checkpoints", "clear_error", "a checkpoint whose format is 99 (a future vaelib)",
      needs=("trained",))
def _(c):
    bad = c.dir / "future.pt"
    c.ckpt_tool("format_99", c.ctx.base_run_dir() / "best.pt", bad)
    _embed_error(c, bad)


@case("checkpoints.bare_state_dict", "checkpoints", "clear_error",
      "a bare model state_dict saved with torch.save (not a vaelib checkpoint)", needs=("trained",))
def _(c):
    bad = c.dir / "state_dict.pt"
    c.ckpt_tool("state_dict_only", c.ctx.base_run_dir() / "best.pt", bad)
    _embed_error(c, bad)


@case("checkpoints.missing_path", "checkpoints", "clear_error", "embed --checkpoint a path that does not exist")
def _(c):
    _embed_error(c, c.dir / "no_such.pt")


@case("checkpoints.path_is_folder", "checkpoints", "clear_error", "embed --checkpoint a folder")
def _(c):
    (c.dir / "folder.pt").mkdir()
    _embed_error(c, c.dir / "folder.pt")


@case("checkpoints.params_yaml_as_checkpoint", "checkpoints", "clear_error",
      "embed --checkpoint params/smoke.yaml (a user mixing up the arguments)")
def _(c):
    _embed_error(c, SMOKE)


def _truncate_last(c: CaseRun) -> tuple[Path, dict]:
    ckpt = c.copy_ckpt()
    run = ckpt / c.ctx.base_run_dir().name
    last = run / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    return run, {"best.pt": sha(run / "best.pt")}


@case("checkpoints.truncated_last_resume", "checkpoints", "clear_error",
      "a truncated last.pt, then `train --resume`: refused saying to --retrain, best.pt kept", needs=("trained",))
def _(c):
    run, before = _truncate_last(c)
    c.expect_names("last.pt", all_of=("--retrain",))
    c.vaelib("train", *c.opts(c.ctx.base_ds, c.copy_cache(), c.dir / "ckpt"), "--resume", "--quiet")
    c.check(sha(run / "best.pt") == before["best.pt"], "best.pt changed")


@case("checkpoints.truncated_last_train", "checkpoints", "clear_error",
      "a truncated last.pt, then plain `train`: refused saying to --retrain", needs=("trained",))
def _(c):
    run, before = _truncate_last(c)
    c.expect_names("last.pt", all_of=("--retrain",))
    c.vaelib("train", *c.opts(c.ctx.base_ds, c.copy_cache(), c.dir / "ckpt"), "--quiet")
    c.check(sha(run / "best.pt") == before["best.pt"], "best.pt changed")


@case("checkpoints.truncated_last_retrain", "checkpoints", "accepted",
      "a truncated last.pt, then `train --retrain`: trains the run again; a later `train` keeps it",
      needs=("trained",))
def _(c):
    run, _ = _truncate_last(c)
    opts = c.opts(c.ctx.base_ds, c.copy_cache(), c.dir / "ckpt")
    r = c.vaelib("train", *opts, "--retrain", "--quiet")
    if r.rc == 0:
        again = c.vaelib("train", *opts, "--quiet", main=False)
        c.check(again.rc == 0 and "finished run" in again.stderr,
                f"after the retrain, `train` does not keep a finished run: {again.last}")
        c.absent(run.with_name(run.name + ".retrain"), "the retrain folder was left")


@case("checkpoints.embed_default_no_run", "checkpoints", "clear_error",
      "embed without --checkpoint and no trained run: refused saying to train first")
def _(c):
    c.expect_names("vaelib train", "--checkpoint")
    out = _embed(c, None)
    c.absent(out)


@case("checkpoints.embed_default_finds_run", "checkpoints", "accepted",
      "embed without --checkpoint finds the finished run and writes every note", needs=("trained",))
def _(c):
    c.copy_ckpt()
    out = _embed(c, None)
    if not c.failed_main:
        info = c.inspect_parquet(out)
        if info:
            c.check(info["n"] == 168 and info["mu_dims"] == 8 and info["finite"], f"table: {info}")


@case("checkpoints.truncated_best_embed_default", "checkpoints", "clear_error",
      "a finished run whose best.pt is truncated, embed without --checkpoint: refused naming best.pt",
      needs=("trained",))
def _(c):
    ckpt = c.copy_ckpt()
    best = ckpt / c.ctx.base_run_dir().name / "best.pt"
    best.write_bytes(best.read_bytes()[:5000])
    c.expect_names("best.pt")
    out = _embed(c, None)
    c.absent(out)


@case("checkpoints.embed_data_missing", "checkpoints", "clear_error", "embed --data a folder that does not exist",
      needs=("trained",))
def _(c):
    c.expect_names("no_such_dataset")
    out = _embed(c, c.ctx.base_run_dir() / "best.pt", data=c.dir / "no_such_dataset")
    c.absent(out)


# ================================================================================== 5. runs and kills

def _wait_rc(c: CaseRun, sp: Spawned, ok: tuple[int, ...], what: str, timeout: float = 300) -> Result:
    res = c.record(sp.finish(timeout))
    if res.timed_out:
        c.problems.append(f"{what}: still running after {timeout:.0f} s")
    elif res.rc not in ok:
        c.problems.append(f"{what}: exit {res.rc} (expected one of {ok}): {res.last}")
    return res


@case("runs.train_over_finished", "runs", "accepted",
      "`train` over a finished run: kept as it is (best.pt and last.pt bytes unchanged)", needs=("trained",))
def _(c):
    ckpt = c.copy_ckpt()
    run = ckpt / c.ctx.base_run_dir().name
    before = tree_digest(run)
    r = c.vaelib("train", *c.opts(c.ctx.base_ds, c.copy_cache(), ckpt), "--quiet")
    c.check(tree_digest(run) == before, "the finished run's files changed")
    if r.rc == 0:
        c.check((r.json() or {}).get("epochs_run") == 2, f"summary: {r.stdout[:200]}")


@case("runs.retrain_sigint", "runs", "accepted",
      "`train --retrain` interrupted with SIGINT after its first epoch line: best.pt unchanged, `embed` (main "
      "command) still finds the finished run", needs=("trained",))
def _(c):
    ckpt = c.copy_ckpt()
    run = ckpt / c.ctx.base_run_dir().name
    before = tree_digest(run)
    opts = c.opts(c.ctx.base_ds, c.copy_cache(), ckpt)
    sp = c.spawn("train", *opts, "--retrain", "--quiet", tag="retrain")
    if not sp.wait_for(r"epoch 1:", 240):
        c.problems.append("no 'epoch 1:' line from the retrain")
    sp.signal(signal.SIGINT)
    res = _wait_rc(c, sp, (130, 2), "the interrupted retrain")
    if res.rc == 0:
        c.notes.append("the retrain finished before SIGINT reached it: inconclusive")
    else:
        c.check(tree_digest(run) == before, "the finished run's files changed after an interrupted retrain")
    out = c.dir / "emb.parquet"
    r = c.vaelib("embed", *opts, "--out", str(out), "--quiet")
    if r.rc == 0:
        c.check((r.json() or {}).get("checkpoint") == str(run / "best.pt"),
                f"embed used {(r.json() or {}).get('checkpoint')}, not the finished run's best.pt")


@case("runs.retrain_sigint_then_resume", "runs", "accepted",
      "after an interrupted retrain: plain `train` keeps the finished run, `train --retrain --resume` finishes "
      "the retrain and it replaces the run", needs=("trained",))
def _(c):
    ckpt = c.copy_ckpt()
    run = ckpt / c.ctx.base_run_dir().name
    before = tree_digest(run)
    opts = c.opts(c.ctx.base_ds, c.copy_cache(), ckpt)
    sp = c.spawn("train", *opts, "--retrain", "--quiet", tag="retrain")
    sp.wait_for(r"epoch 1:", 240)
    sp.signal(signal.SIGINT)
    first = _wait_rc(c, sp, (130, 2), "the interrupted retrain")
    if first.rc == 0:
        c.notes.append("the retrain finished before SIGINT reached it: inconclusive")
    keep = c.vaelib("train", *opts, "--quiet", main=False)
    c.check(keep.rc == 0 and tree_digest(run) == before, f"plain `train` did not keep the finished run: {keep.last}")
    r = c.vaelib("train", *opts, "--retrain", "--resume", "--quiet")
    if r.rc == 0:
        ran = (r.json() or {}).get("epochs_run")
        c.check(ran == 2, f"the resumed retrain ran {ran} epochs, expected 2")
        c.absent(run.with_name(run.name + ".retrain"), "the retrain folder was left after it replaced the run")
        c.check((run / "best.pt").is_file() and (run / "last.pt").is_file(), "the replaced run lacks best.pt/last.pt")


def _interrupt_then_resume(c: CaseRun, sig: int, what: str) -> None:
    ckpt = c.dir / "ckpt"
    opts = c.opts(c.ctx.base_ds, c.copy_cache(), ckpt)
    base = c.ctx.trained()
    sp = c.spawn("train", *opts, "--quiet", tag="train")
    if not sp.wait_for(r"epoch 1:", 240):
        c.problems.append("no 'epoch 1:' line from the training")
    sp.signal(sig)
    ok = (-signal.SIGKILL,) if sig == signal.SIGKILL else (130, 2, 143, -sig)
    res = _wait_rc(c, sp, ok + (0,), f"the training killed by {what}")
    if res.rc == 0:
        c.notes.append(f"the training finished before {what} reached it: inconclusive")
    r = c.vaelib("train", *opts, "--resume", "--quiet")
    if r.rc == 0:
        s = r.json() or {}
        c.check(s.get("epochs_run") == 2, f"the resumed run has {s.get('epochs_run')} epochs, expected 2")
        a, b = s.get("best_valid_recon"), base.get("best_valid_recon")
        c.check(a is not None and b is not None and abs(a - b) <= 1e-4 * max(1.0, abs(b)),
                f"resumed best_valid_recon {a} differs from the uninterrupted run's {b}")
        c.check(_same_history(Path(s["checkpoint_dir"]) / "history.csv", c.ctx.base_run_dir() / "history.csv"),
                "the resumed run's history.csv differs from the uninterrupted run's (seconds aside)")


def _same_history(a: Path, b: Path) -> bool:
    try:
        ra, rb = list(csv.DictReader(a.open())), list(csv.DictReader(b.open()))
    except OSError:
        return False
    if len(ra) != len(rb):
        return False
    for x, y in zip(ra, rb, strict=True):
        for k in x:
            if "second" in k or k not in y:
                continue
            try:
                fx, fy = float(x[k]), float(y[k])
            except ValueError:
                if x[k] != y[k]:
                    return False
                continue
            if not (fx == fy or abs(fx - fy) <= 1e-5 * max(1.0, abs(fy))):
                return False
    return True


@case("runs.train_sigint_resume", "runs", "accepted",
      "SIGINT during `train` after epoch 1, then `train --resume`: finishes with the uninterrupted numbers",
      needs=("trained",))
def _(c):
    _interrupt_then_resume(c, signal.SIGINT, "SIGINT")


@case("runs.train_sigterm_resume", "runs", "accepted",
      "SIGTERM during `train` after epoch 1, then `train --resume`: finishes with the uninterrupted numbers",
      needs=("trained",))
def _(c):
    _interrupt_then_resume(c, signal.SIGTERM, "SIGTERM")


@case("runs.train_sigkill_resume", "runs", "accepted",
      "SIGKILL during `train` after epoch 1, then `train --resume`: continues from last.pt and finishes",
      needs=("trained",))
def _(c):
    _interrupt_then_resume(c, signal.SIGKILL, "SIGKILL")


@case("runs.unfinished_without_resume", "runs", "clear_error",
      "an interrupted run, then plain `train` (no --resume): refused saying --resume, nothing overwritten")
def _(c):
    ckpt = c.dir / "ckpt"
    opts = c.opts(c.ctx.base_ds, c.copy_cache(), ckpt)
    sp = c.spawn("train", *opts, "--quiet", tag="train")
    sp.wait_for(r"epoch 1:", 240)
    sp.signal(signal.SIGINT)
    first = _wait_rc(c, sp, (130, 2), "the interrupted training")
    if first.rc == 0:
        c.skip("the training finished before SIGINT reached it")
    runs = [p for p in ckpt.iterdir() if p.is_dir()] if ckpt.is_dir() else []
    before = tree_digest(runs[0]) if runs else {}
    c.expect_names("--resume")
    c.vaelib("train", *opts, "--quiet")
    if runs:
        c.check(tree_digest(runs[0]) == before, "the unfinished run's files changed")


@case("runs.preprocess_sigkill_rerun", "runs", "repair",
      "SIGKILL during `preprocess` (while its partial folder exists), then a rerun: succeeds, the partial folder "
      "removed with a warning, no hidden leftover", repair=r"removed .*killed|left by", tolerate=("accepted",))
def _(c):
    cache = c.dir / "cache"
    opts = c.opts(c.ctx.base_ds, cache, None, "features.workers=1", "features.batch_size=1")
    sp = c.spawn("preprocess", *opts, "--quiet", tag="pre")
    end, seen = time.monotonic() + 120, False
    while time.monotonic() < end and sp.proc.poll() is None:
        if cache.is_dir() and any(".build." in e.name or re.match(r"^\.[0-9a-f]{16}\.", e.name)
                                  and not e.name.endswith(".lock") for e in cache.iterdir()):
            seen = True
            time.sleep(0.5)
            break
        time.sleep(0.02)
    sp.signal(signal.SIGKILL)
    res = c.record(sp.finish(60))
    if res.rc == 0 or not seen:
        c.notes.append("the build ended before SIGKILL or its partial folder was not seen: inconclusive")
    else:
        left = [e.name for e in cache.iterdir() if e.name.startswith(".") and not e.name.endswith(".lock")]
        c.notes.append(f"after SIGKILL the cache folder held: {left}")
    c.vaelib("preprocess", *opts, "--quiet")
    c.no_partial_cache(cache)
    c.finite_cache(c.inspect_main_cache(), 168)


@case("runs.stale_partial_folder", "runs", "repair",
      "a cache folder holding the partial build of a process that is gone: removed with a warning on the next build",
      repair=r"removed .*killed|left by")
def _(c):
    cache = c.dir / "cache"
    cache.mkdir()
    key = c.ctx.base_cache_path.name
    stale = cache / f".{key}.build.{host_tag()}.{dead_pid()}.deadbeef"
    stale.mkdir()
    (stale / "features.npy").write_bytes(b"\x93NUMPY" + b"\x00" * 1000)
    c.vaelib("preprocess", *c.opts(c.ctx.base_ds, cache), "--quiet")
    c.absent(stale, "the stale partial folder was left")
    c.no_partial_cache(cache)
    c.finite_cache(c.inspect_main_cache(), 168)


def _two_at_once(c: CaseRun, cmd: str, opts: list[str], tag: str, wait_pattern: str | None) -> tuple[Result, Result]:
    a = c.spawn(cmd, *opts, "--quiet", tag=f"{tag}-a")
    if wait_pattern:
        a.wait_for(wait_pattern, 240)
    else:
        time.sleep(0.2)
    b = c.spawn(cmd, *opts, "--quiet", tag=f"{tag}-b")
    rb = b.finish(c.case.timeout)
    ra = a.finish(c.case.timeout)
    c.record(ra)
    c.record(rb, main=True)
    return ra, rb


@case("runs.two_preprocess", "runs", "accepted",
      "two `preprocess` at once on the same cache folder: both exit 0 with the same cache, one folder, no leftover")
def _(c):
    cache = c.dir / "cache"
    ra, rb = _two_at_once(c, "preprocess", c.opts(c.ctx.base_ds, cache), "pre", None)
    c.check(ra.rc == 0, f"the first preprocess: exit {ra.rc}: {ra.last}")
    ja, jb = ra.json() or {}, rb.json() or {}
    c.check(ja.get("cache") == jb.get("cache") and ja.get("cache"), f"different caches: {ja.get('cache')} vs "
            f"{jb.get('cache')}")
    c.check(ja.get("shape") == jb.get("shape"), "different shapes")
    folders = [e.name for e in cache.iterdir() if not e.name.startswith(".")] if cache.is_dir() else []
    c.check(len(folders) == 1, f"cache folders: {folders}")
    c.no_partial_cache(cache)
    c.finite_cache(c.inspect_main_cache(), 168)


@case("runs.two_train", "runs", "clear_error",
      "two `train` of one run at once: the second refused naming the lock holder (or it waits); the first finishes",
      tolerate=("accepted",))
def _(c):
    ckpt = c.dir / "ckpt"
    # 8 epochs and no early stop, so that the first is still training when the second reaches the lock
    opts = c.opts(c.ctx.base_ds, c.copy_cache(), ckpt, "train.epochs=8", "train.patience=100")
    c.expect_names(".lock", "being trained")
    ra, rb = _two_at_once(c, "train", opts, "train", r"training \w+ on")
    c.check(ra.rc == 0, f"the first train: exit {ra.rc}: {ra.last}")
    if ra.rc == 0:
        c.check((ra.json() or {}).get("epochs_run") == 8, "the first training did not finish its 8 epochs")
        if rb.rc == 0 and "epoch 8:" not in rb.stderr:
            c.notes.append("the second process waited for the first or found its run finished")


@case("runs.truncated_features_repair", "runs", "repair",
      "a complete cache whose features.npy is truncated, then `preprocess`: rebuilt with a warning",
      repair=r"damaged|rebuil")
def _(c):
    cache = c.copy_cache()
    f = cache / c.ctx.base_cache_path.name / "features.npy"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    c.vaelib("preprocess", *c.opts(c.ctx.base_ds, cache), "--quiet")
    c.no_partial_cache(cache)
    c.finite_cache(c.inspect_main_cache(), 168)


@case("runs.nan_bytes_in_features", "runs", "repair",
      "NaN bytes written over rows of a complete cache's features.npy (same size), then `preprocess`: "
      "detected and rebuilt, never served", repair=r"damaged|rebuil")
def _(c):
    cache = c.copy_cache()
    f = cache / c.ctx.base_cache_path.name / "features.npy"
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 20480] = b"\x00\x7e" * 10240  # float16 NaN
    f.write_bytes(bytes(data))
    c.vaelib("preprocess", *c.opts(c.ctx.base_ds, cache), "--quiet")
    c.no_partial_cache(cache)
    c.finite_cache(c.inspect_main_cache(), 168)


@case("runs.corrupt_meta_repair", "runs", "repair",
      "a complete cache whose meta.parquet is overwritten with garbage, then `preprocess`: rebuilt with a warning",
      repair=r"damaged|rebuil")
def _(c):
    cache = c.copy_cache()
    m = cache / c.ctx.base_cache_path.name / "meta.parquet"
    m.write_bytes(b"PAR1" + b"garbage" * 100)
    c.vaelib("preprocess", *c.opts(c.ctx.base_ds, cache), "--quiet")
    c.no_partial_cache(cache)
    c.finite_cache(c.inspect_main_cache(), 168)


@case("runs.manifest_deleted", "runs", "accepted",
      "a cache folder whose manifest.json was deleted (never complete), then `preprocess`: rebuilt",
      tolerate=("repair",), repair=r"damaged|rebuil")
def _(c):
    cache = c.copy_cache()
    (cache / c.ctx.base_cache_path.name / "manifest.json").unlink()
    c.vaelib("preprocess", *c.opts(c.ctx.base_ds, cache), "--quiet")
    c.no_partial_cache(cache)
    c.finite_cache(c.inspect_main_cache(), 168)


@case("runs.retrain_completes", "runs", "accepted",
      "`train --retrain` of a finished run to the end: it replaces the run, no .retrain folder left, embed works",
      needs=("trained",))
def _(c):
    ckpt = c.copy_ckpt()
    run = ckpt / c.ctx.base_run_dir().name
    opts = c.opts(c.ctx.base_ds, c.copy_cache(), ckpt)
    r = c.vaelib("train", *opts, "--retrain", "--quiet")
    if r.rc == 0:
        c.absent(run.with_name(run.name + ".retrain"), "the retrain folder was left")
        e = c.vaelib("embed", *opts, "--out", str(c.dir / "emb.parquet"), "--quiet", main=False)
        c.check(e.rc == 0, f"embed after the retrain: exit {e.rc}: {e.last}")


@case("runs.retrain_sigkill_embed", "runs", "accepted",
      "`train --retrain` killed with SIGKILL mid-epoch 2: the finished run unchanged, `embed` (main) finds it",
      needs=("trained",))
def _(c):
    ckpt = c.copy_ckpt()
    run = ckpt / c.ctx.base_run_dir().name
    before = tree_digest(run)
    opts = c.opts(c.ctx.base_ds, c.copy_cache(), ckpt)
    sp = c.spawn("train", *opts, "--retrain", "--quiet", tag="retrain")
    sp.wait_for(r"epoch 1:", 240)
    sp.signal(signal.SIGKILL)
    res = c.record(sp.finish(60))
    if res.rc == 0:
        c.notes.append("the retrain finished before SIGKILL: inconclusive")
    else:
        c.check(tree_digest(run) == before, "the finished run's files changed after a killed retrain")
    r = c.vaelib("embed", *opts, "--out", str(c.dir / "emb.parquet"), "--quiet")
    if r.rc == 0:
        c.check((r.json() or {}).get("checkpoint") == str(run / "best.pt"), "embed did not use the finished run")


# ================================================================================== 6. filesystem

def _a_file(c: CaseRun, name: str = "blocker") -> Path:
    p = c.dir / name
    p.write_text("a regular file\n")
    return p


@case("filesystem.cache_dir_under_file", "filesystem", "clear_error", "features.cache_dir under a regular file")
def _(c):
    f = _a_file(c)
    c.expect_names(str(f))
    c.vaelib("preprocess", *c.opts(c.ctx.base_ds, f / "cache"), "--quiet")


@case("filesystem.cache_dir_is_file", "filesystem", "clear_error", "features.cache_dir is a regular file")
def _(c):
    f = _a_file(c)
    c.expect_names(str(f))
    c.vaelib("preprocess", *c.opts(c.ctx.base_ds, f), "--quiet")
    c.check(f.read_text() == "a regular file\n", "the file was changed")


@case("filesystem.checkpoint_dir_under_file", "filesystem", "clear_error",
      "train.checkpoint_dir under a regular file: refused before the features are built")
def _(c):
    f = _a_file(c)
    c.expect_names(str(f))
    c.vaelib("train", *c.opts(c.ctx.base_ds, None, f / "ckpt"), "--quiet")
    c.absent(c.dir / "cache", "the feature cache was built before the checkpoint folder was checked")


@case("filesystem.checkpoint_dir_is_file", "filesystem", "clear_error", "train.checkpoint_dir is a regular file")
def _(c):
    f = _a_file(c)
    c.expect_names(str(f))
    c.vaelib("train", *c.opts(c.ctx.base_ds, None, f), "--quiet")


@case("filesystem.embed_out_under_file", "filesystem", "clear_error",
      "embed --out under a regular file: refused before any work", needs=("trained",))
def _(c):
    f = _a_file(c)
    c.expect_names(str(f))
    c.vaelib("embed", *c.opts(c.ctx.base_ds), "--checkpoint", str(c.ctx.base_run_dir() / "best.pt"),
             "--out", str(f / "emb.parquet"), "--quiet")
    c.absent(c.dir / "cache", "features were computed before --out was checked")


@case("filesystem.embed_out_is_folder", "filesystem", "clear_error", "embed --out names an existing folder",
      needs=("trained",))
def _(c):
    (c.dir / "outdir").mkdir()
    c.expect_names("outdir")
    c.vaelib("embed", *c.opts(c.ctx.base_ds), "--checkpoint", str(c.ctx.base_run_dir() / "best.pt"),
             "--out", str(c.dir / "outdir"), "--quiet")
    c.check(not any((c.dir / "outdir").iterdir()), "something was written into the folder")


@case("filesystem.embed_out_new_parents", "filesystem", "accepted",
      "embed --out in folders that do not exist yet: created, the table written", needs=("trained",))
def _(c):
    out = c.dir / "new" / "deeper" / "emb.parquet"
    c.vaelib("embed", *c.opts(c.ctx.base_ds), "--checkpoint", str(c.ctx.base_run_dir() / "best.pt"),
             "--out", str(out), "--quiet")
    if not c.failed_main:
        info = c.inspect_parquet(out)
        if info:
            c.check(info["n"] == 168, f"{info['n']} rows")


@case("filesystem.render_out_under_file", "filesystem", "clear_error", "render --out under a regular file")
def _(c):
    f = _a_file(c)
    c.expect_names(str(f))
    c.vaelib("render", "--params", str(SMOKE), "--out", str(f / "ds"), "--quiet")


@case("filesystem.data_root_under_file", "filesystem", "clear_error", "data.root under a regular file")
def _(c):
    f = _a_file(c)
    c.expect_names(str(f))
    c.vaelib("preprocess", *c.opts(f / "ds"), "--quiet")
    c.no_partial_cache(c.dir / "cache")


@case("filesystem.data_root_is_file", "filesystem", "clear_error", "data.root is a regular file")
def _(c):
    f = _a_file(c)
    c.expect_names(str(f))
    c.vaelib("preprocess", *c.opts(f), "--quiet")


@case("filesystem.data_root_typo_of_default", "filesystem", "clear_error",
      "data.root .../data/gm_defualt beside an existing .../data/gm_default: refused with 'did you mean', "
      "nothing rendered into the misspelled folder (the documented policy)")
def _(c):
    good = c.dir / "data" / "gm_default"
    good.parent.mkdir()
    shutil.copytree(c.ctx.base_ds, good)
    typo = c.dir / "data" / "gm_defualt"
    c.expect_names(str(good), all_of=("did you mean",))
    c.vaelib("preprocess", *c.opts(typo), "--quiet")
    c.absent(typo, "rendered into the misspelled folder")
    c.absent(c.dir / "cache", "a cache was built")


@case("filesystem.data_root_typo_in_parent", "filesystem", "clear_error",
      "data.root .../dataa/gm_default (the typo in a parent folder) beside .../data/gm_default: 'did you mean'")
def _(c):
    good = c.dir / "data" / "gm_default"
    good.parent.mkdir()
    shutil.copytree(c.ctx.base_ds, good)
    typo = c.dir / "dataa" / "gm_default"
    c.expect_names(str(good), all_of=("did you mean",))
    c.vaelib("preprocess", *c.opts(typo), "--quiet")
    c.absent(c.dir / "dataa", "rendered into the misspelled folder")


@case("filesystem.data_root_missing_renders", "filesystem", "accepted",
      "data.root that does not exist, no folder of a close name: the embedded dataset is rendered there (documented)")
def _(c):
    root = c.dir / "fresh_dataset"
    c.vaelib("preprocess", *c.opts(root), "--quiet")
    if not c.failed_main:
        c.check((root / "examples.json").is_file(), "nothing was rendered")
        c.finite_cache(c.inspect_main_cache(), 168)


@case("filesystem.unicode_space_paths", "filesystem", "accepted",
      "dataset, cache and checkpoint folders whose paths hold spaces and non-ASCII letters")
def _(c):
    ds = c.copy_ds("my data ü")
    c.vaelib("preprocess", *c.opts(ds, c.dir / "cache dir é", c.dir / "ckpt ß"), "--quiet")
    c.finite_cache(c.inspect_main_cache(), 168)


@case("filesystem.readonly_cache_dir", "filesystem", "clear_error",
      "features.cache_dir is a read-only folder: refused naming it, nothing left")
def _(c):
    cache = c.read_only(c.dir / "cache")
    c.expect_names(str(cache))
    c.vaelib("preprocess", *c.opts(c.ctx.base_ds, cache), "--quiet")


@case("filesystem.readonly_checkpoint_dir", "filesystem", "clear_error",
      "train.checkpoint_dir is a read-only folder: refused before the features are built")
def _(c):
    ckpt = c.read_only(c.dir / "ckpt")
    c.expect_names(str(ckpt))
    c.vaelib("train", *c.opts(c.ctx.base_ds, None, ckpt), "--quiet")
    c.absent(c.dir / "cache", "the feature cache was built before the checkpoint folder was checked")


@case("filesystem.readonly_embed_out", "filesystem", "clear_error",
      "embed --out in a read-only folder: refused before any work", needs=("trained",))
def _(c):
    out_dir = c.read_only(c.dir / "out")
    c.expect_names(str(out_dir))
    c.vaelib("embed", *c.opts(c.ctx.base_ds), "--checkpoint", str(c.ctx.base_run_dir() / "best.pt"),
             "--out", str(out_dir / "emb.parquet"), "--quiet")


@case("filesystem.readonly_dataset", "filesystem", "accepted",
      "a read-only dataset folder (NSynth on a read-only share): preprocess only reads it")
def _(c):
    ds = c.read_only(c.copy_ds())
    c.vaelib("preprocess", *c.opts(ds), "--quiet")
    c.finite_cache(c.inspect_main_cache(), 168)


@case("filesystem.full_disk_cache", "filesystem", "clear_error",
      "features.cache_dir on a 2 MB disk (the cache needs 3.4 MB): refused naming it, nothing partial left")
def _(c):
    disk = c.tmpfs("disk", "2m")
    cache = disk / "cache"
    c.expect_names(str(disk))
    c.vaelib("preprocess", *c.opts(c.ctx.base_ds, cache), "--quiet")
    c.no_partial_cache(cache)


@case("filesystem.full_disk_checkpoint", "filesystem", "clear_error",
      "train.checkpoint_dir on a 256 KB disk (a checkpoint is larger): refused naming the path, no temp file left")
def _(c):
    disk = c.tmpfs("disk", "256k")
    ckpt = disk / "ckpt"
    c.expect_names(str(disk))
    c.vaelib("train", *c.opts(c.ctx.base_ds, c.copy_cache(), ckpt, "train.epochs=1"), "--quiet")
    left = [str(p.relative_to(disk)) for p in disk.rglob("*") if p.is_file() and ".tmp" in p.name]
    c.check(not left, f"temp files left on the full disk: {left}")


@case("filesystem.full_disk_embed_out", "filesystem", "clear_error",
      "embed --out on a disk with no space left: refused naming the path, no partial table", needs=("trained",))
def _(c):
    disk = c.tmpfs("disk", "1m")
    with open(disk / "filler", "wb") as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 65536)
    out = disk / "emb.parquet"
    c.expect_names(str(disk))
    c.vaelib("embed", *c.opts(c.ctx.base_ds), "--checkpoint", str(c.ctx.base_run_dir() / "best.pt"),
             "--out", str(out), "--quiet")
    c.absent(out, "a partial table was left")
    c.no_tmp_beside(out)


@case("filesystem.full_disk_render", "filesystem", "clear_error",
      "render --out on a 4 MB disk (the dataset is ~22 MB): refused naming the path, no partial dataset left")
def _(c):
    disk = c.tmpfs("disk", "4m")
    c.expect_names(str(disk))
    c.vaelib("render", "--params", str(SMOKE), "--out", str(disk / "ds"), "--quiet")
    left = [e.name for e in disk.iterdir()]
    c.check(not left, f"left on the disk: {left}")


# ======================================================================================= 7. reports

def _run(c: CaseRun, ds: Path, name: str, *sets: str, notebooks: str = "[01_preprocess]") -> Result:
    return c.vaelib("run", *c.opts(ds, c.dir / "cache", c.dir / "ckpt", f"run.name={name}",
                                   f"report.notebooks={notebooks}", *sets))


def _pages(folder: Path) -> dict[str, TagParser]:
    out = {}
    for page in sorted(folder.rglob("*.html")):
        p = TagParser()
        p.feed(page.read_text(errors="replace"))
        out[str(page.relative_to(folder))] = p
    return out


def _markup_ds(c: CaseRun) -> tuple[Path, str]:
    ds = c.copy_ds()
    insts = sorted({e["instrument_str"] for e in c.examples(ds).values()})
    for inst in insts:
        _rename_instrument(ds, inst, f"{inst}<img src=x>$")
    return ds, "<img src=x>"


def _no_markup_elements(c: CaseRun, folder: Path, marker: str) -> None:
    pages = _pages(folder)
    c.check(bool(pages), "no HTML page was written")
    shown = []
    for name, p in pages.items():
        bad = [a for t, a in p.tags if t == "img" and a.get("src") == "x"]
        c.check(not bad, f"{name}: the instrument name became an <img src=x> element")
        if any(marker in t for t in p.text):
            shown.append(name)
    c.notes.append(f"pages showing the name escaped: {shown or 'none'}")
    c.check(bool(shown), "no page shows the instrument name at all, so escaping is untested")


@case("reports.markup_escaped", "reports", "accepted",
      "every instrument named '<name><img src=x>$': `vaelib run` (all 5 notebooks, 1 epoch, no UMAP) shows the "
      "names as text, no <img src=x> element in any page", timeout=1200)
def _(c):
    ds, marker = _markup_ds(c)
    name = c.ctx.report_name("markup")
    r = _run(c, ds, name, "train.epochs=1", "analysis.umap=false",
             notebooks="[01_preprocess, 02_train, 03_diagnostics, 04_latent_map, 05_listening]")
    folder = REPORTS / name
    if r.rc == 0:
        _no_markup_elements(c, folder, marker)
        c.ctx.markup_run = folder  # checked by reports.check_markup_run; removed with the others at the end


@case("reports.check_markup_run", "reports", "accepted",
      "`vaelib check --root reports/<the markup run>`: every page loads in Chromium, exit 0", timeout=900)
def _(c):
    root = c.ctx.markup_run
    if root is None:
        c.skip("reports.markup_escaped did not produce a run (run it in the same invocation)")
    r = c.vaelib("check", "--root", str(root))
    m = re.search(r"(\d+) pages checked, (\d+) problems", r.stdout)
    c.check(m is not None and int(m.group(1)) >= 5, f"pages checked: {m.group(0) if m else r.stdout[-200:]}")


@case("reports.run_name_markup", "reports", "accepted",
      "run.name holding '<img src=x>': its page and the reports index show it as text", timeout=900)
def _(c):
    name = c.ctx.report_name("name<img src=x>")
    r = _run(c, c.ctx.base_ds, name)
    if r.rc == 0:
        for page in (REPORTS / name / "index.html", REPORTS / "index.html"):
            p = TagParser()
            p.feed(page.read_text(errors="replace"))
            c.check(not [a for t, a in p.tags if t == "img" and a.get("src") == "x"],
                    f"{c.rel(page)}: the run name became an <img src=x> element")


@case("reports.invalid_params", "reports", "clear_error",
      "`vaelib run` with --set train.lr=.nan: refused before anything is written under reports/")
def _(c):
    name = c.ctx.report_name("invalid")
    c.expect_names("train.lr")
    _run(c, c.ctx.base_ds, name, "train.lr=.nan")
    for p in [REPORTS / name, REPORTS / f"{name}.failed", *REPORTS.glob(f".{name}.*")]:
        c.absent(p, "written for a run whose params are invalid")


@case("reports.unknown_notebook", "reports", "clear_error",
      "`vaelib run` with report.notebooks=[01_preprocess, 99_nope]: refused naming 99_nope, nothing written")
def _(c):
    name = c.ctx.report_name("nonb")
    c.expect_names("99_nope")
    _run(c, c.ctx.base_ds, name, notebooks="[01_preprocess, 99_nope]")
    for p in [REPORTS / name, REPORTS / f"{name}.failed", *REPORTS.glob(f".{name}.*")]:
        c.absent(p, "written for a run that was refused")


@case("reports.failing_run_keeps_earlier", "reports", "clear_error",
      "a run that fails in 01_preprocess (a NaN wav) under the name of an earlier good run: error names the "
      "notebook, the earlier run folder is left byte for byte", timeout=900)
def _(c):
    name = c.ctx.report_name("keep")
    first = _run(c, c.ctx.base_ds, name)
    c.record(first)
    c.main = None
    if first.rc != 0:
        c.problems.append(f"the first (good) run failed: {first.last}")
        return
    before = tree_digest(REPORTS / name)
    ds = c.copy_ds("bad_ds")
    x = c.base_signal()
    x[100:200] = np.nan
    c.wav(ds).write_bytes(wav_bytes(x, 16000, "float32"))
    c.expect_names("01_preprocess")
    _run(c, ds, name)
    c.check(tree_digest(REPORTS / name) == before, "the earlier run's folder changed")
    if c.main and c.main.rc != 0:
        c.check((REPORTS / f"{name}.failed").is_dir(), "no <run>.failed folder with what the run completed")
        c.check(c.note in c.main.last, "the error line does not name the NaN wav")


@case("reports.run_name_absolute", "reports", "clear_error",
      "`vaelib run` with run.name an absolute path: refused (outputs belong under reports/)", timeout=900)
def _(c):
    target = c.dir / "escaped_run"
    c.expect_names("run.name")
    r = _run(c, c.ctx.base_ds, str(target))
    if r.rc == 0 and target.exists():
        c.problems.append(f"the run was written outside reports/, to {c.rel(target)}")


@case("reports.check_missing_root", "reports", "clear_error",
      "`vaelib check --root` a folder that does not exist: an error, not '0 pages checked' and exit 0")
def _(c):
    c.expect_names("no_such_reports")
    c.vaelib("check", "--root", str(c.dir / "no_such_reports"))


@case("reports.check_broken_page", "reports", "accepted",
      "`vaelib check --root` a folder with a page whose <img> points at a missing file: the documented exit 1 "
      "with a line naming the page and the file", ok_rc=(1,), timeout=600)
def _(c):
    root = c.dir / "reports"
    (root / "run").mkdir(parents=True)
    (root / "run" / "page.html").write_text("<html><body><p>hi</p><img src='missing.png'></body></html>")
    r = c.vaelib("check", "--root", str(root))
    c.check("page.html" in r.stdout and "missing.png" in r.stdout, f"no line names the page and the file: "
            f"{r.stdout[-300:]}")


# ============================================================================================ driver

def select(only: list[str]) -> list[Case]:
    if not only:
        return list(CASES)
    out = []
    for c in CASES:
        if any(c.group == o or c.id == o or c.id.startswith(o) for o in only):
            out.append(c)
    return out


def summary_table(records: list[dict]) -> str:
    w = max([len(r["id"]) for r in records] + [4])
    lines = [f"{'case':<{w}}  {'expected':<11}  {'got':<11}  {'verdict':<7}  {'rc':>4}  {'s':>6}",
             "-" * (w + 48)]
    for r in records:
        rc = "-" if r["exit_code"] is None else str(r["exit_code"])
        lines.append(f"{r['id']:<{w}}  {r['expected']:<11}  {r['got']:<11}  {r['verdict']:<7}  {rc:>4}  "
                     f"{r['seconds']:>6.1f}")
    return "\n".join(lines)


def totals(records: list[dict]) -> dict:
    def by(key: str) -> dict:
        return {k: sum(1 for r in records if r[key] == k) for k in sorted({r[key] for r in records})}
    groups = {}
    for r in records:
        g = groups.setdefault(r["group"], {"cases": 0, "pass": 0, "FAIL": 0, "skipped": 0})
        g["cases"] += 1
        g[r["verdict"]] += 1
    return {"cases": len(records), "by_got": by("got"), "by_verdict": by("verdict"), "by_group": groups}


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def git_state() -> dict:
    def git(*args):
        p = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return p.stdout.strip()
    return {"commit": git("rev-parse", "HEAD"), "dirty_vaelib": git("status", "--short", "vaelib").splitlines(),
            "vaelib_data_last_commit": git("log", "-1", "--format=%h %cr", "--", "vaelib/data")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[], metavar="GROUP|CASE",
                    help=f"run only this group ({', '.join(GROUPS)}) or case id (prefix); repeatable")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--json", type=Path, default=None,
                    help=f"where to write the results (default: {RESULTS.relative_to(ROOT)} for a full run; a run "
                         "with --only writes none unless given)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    args = ap.parse_args(argv)
    cases = select(args.only)
    if args.list:
        for c in cases:
            tol = f" (tolerates {', '.join(c.tolerate)})" if c.tolerate else ""
            print(f"{c.id:<44} {c.group:<12} {c.expected}{tol}: {c.description}")
        print(f"{len(cases)} cases")
        return 0
    if not cases:
        print(f"no case matches {args.only}", file=sys.stderr)
        return 2
    out_path = args.json or (None if args.only else RESULTS)
    stamp = time.strftime("%Y%m%d%H%M%S")
    work = Path(tempfile.mkdtemp(prefix="vaelib-hostile-"))
    ctx = Context(work, stamp)
    started = time.time()
    records: list[dict] = []
    try:
        ctx.setup()
        for i, c in enumerate(cases, 1):
            for need in c.needs:
                try:
                    getattr(ctx, "trained" if need == "trained" else "other_model")()
                except RuntimeError as exc:
                    print(f"[setup] {exc}", file=sys.stderr)
            print(f"[{i}/{len(cases)}] {c.id} ...", end=" ", flush=True)
            rec = run_case(c, ctx)
            records.append(rec)
            print(f"{rec['got']} ({rec['verdict']}, {rec['seconds']:.0f} s)"
                  + (f": {'; '.join(rec['problems'])[:300]}" if rec["problems"] else ""), flush=True)
    finally:
        try:
            ctx.remove_reports()
        finally:
            for m in list(ctx.mounts):
                _umount(m, ctx)
            if args.keep:
                print(f"work folder kept: {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    payload = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - started, 1),
        "selection": args.only or "all", "git": git_state(), "running_as_root": os.geteuid() == 0,
        "outcomes": {"clear_error": "exit 2, last stderr line `vaelib <cmd>: error: ...` naming the file/key/path, "
                                    "no traceback, nothing written half",
                     "repair": "exit 0 with a warning that counts or names what was repaired",
                     "accepted": "a valid input that succeeded, its result checked",
                     "FAIL": "a traceback, exit 1, a timeout, a check that failed (a silent wrong result, data lost)",
                     "skipped": "could not be run here (reason given)"},
        "totals": totals(records), "cases": records,
    }
    print()
    print(summary_table(records))
    t = payload["totals"]
    print(f"\n{t['cases']} cases; got: {t['by_got']}; verdicts: {t['by_verdict']}")
    fails = [r for r in records if r["verdict"] == "FAIL"]
    if fails:
        print("\nFAIL:")
        for r in fails:
            print(f"- {r['id']} (expected {r['expected']}, got {r['got']}): exit {r['exit_code']}\n"
                  f"    $ {r['command']}\n    stderr: {r['last_stderr_line']}\n    why: {'; '.join(r['problems'])}")
    if out_path:
        write_json(out_path, payload)
        print(f"\nwrote {out_path}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
