"""Faults of the data layer a hostile but fair user can provoke, each through a public function or the CLI.

Each ends in a DataError naming the file and what to do (exit code 2 from the CLI) with nothing
written half, or in a repair that is counted and logged; never a traceback, never a silent wrong result.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SMOKE_PARAMS, entry, sine

import vaelib.data.cache as cache_mod
import vaelib.io as io_mod
from vaelib.config import PROJECT_ROOT, DataConfig, FeatureConfig, load_config
from vaelib.data.cache import FEATURES_FILE, MANIFEST_FILE, META_FILE, build_feature_cache, open_feature_cache
from vaelib.data.nsynth import load_dataset, read_examples, read_wav
from vaelib.data.prepare import close_dataset, ensure_dataset, prepare_features
from vaelib.exceptions import DataError
from vaelib.io import HOST, FileLock

KEYS = [f"{fam}_acoustic_00{i}-0{p}-075" for fam in ("brass", "string") for i in (0, 1) for p in (48, 60, 72)]
VAELIB = Path(sys.executable).with_name("vaelib")


@pytest.fixture
def split(make_split, tmp_path):
    """Twelve sine notes in one split folder, their table with splits, and a config with its own cache_dir."""
    folder = make_split({k: entry(k) for k in KEYS})
    df = read_examples(folder).assign(split="train")
    return folder, df, FeatureConfig(cache_dir=str(tmp_path / "cache"), batch_size=4, workers=1)


def listing(folder: str | Path) -> list[str]:
    """Every entry of a folder, hidden ones included ([] when it does not exist)."""
    return sorted(os.listdir(folder)) if Path(folder).exists() else []


def wav_of(folder: Path, key: str) -> Path:
    return folder / "audio" / f"{key}.wav"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VAELIB), *args], capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)


# --- 1. non-finite and clipped audio ---------------------------------------------------------------------

def test_nan_wav_is_refused_naming_the_file(split):
    folder, df, cfg = split
    nan, inf = sine(440.0), sine(440.0)
    nan[1000], inf[2000] = np.nan, -np.inf
    sf.write(wav_of(folder, KEYS[0]), nan, 16000, subtype="FLOAT")
    sf.write(wav_of(folder, KEYS[5]), inf, 16000, subtype="FLOAT")
    with pytest.raises(DataError, match=r"1 of 64000 samples are NaN or infinite"):
        read_wav(wav_of(folder, KEYS[0]))
    with pytest.raises(DataError, match=r"2 wav file\(s\) hold NaN or infinite samples") as err:
        build_feature_cache(df, cfg, show_progress=False)
    assert str(wav_of(folder, KEYS[0])) in str(err.value) and str(wav_of(folder, KEYS[5])) in str(err.value)
    assert "examples.json" in str(err.value)  # what to do
    assert listing(cfg.cache_dir) == [], "a refused build left something in the cache folder"


def test_a_wav_that_is_a_pipe_a_device_or_a_folder_is_named_without_blocking(tmp_path):
    import os
    import re
    import threading

    os.mkfifo(tmp_path / "pipe.wav")  # no writer: a blocking read would wait for ever
    (tmp_path / "zero.wav").symlink_to("/dev/zero")
    (tmp_path / "folder.wav").mkdir()
    errors: dict[str, str] = {}

    def read_all():
        for name in ("pipe.wav", "zero.wav", "folder.wav", "missing.wav"):
            for _ in range(20):  # again and again, as a listening page would: no descriptor may be left open
                try:
                    read_wav(tmp_path / name)
                except DataError as exc:
                    errors[name] = str(exc)

    open_fds = len(os.listdir("/proc/self/fd"))
    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    reader.join(60)
    assert not reader.is_alive(), "read_wav blocked on a pipe with no writer"
    assert len(os.listdir("/proc/self/fd")) == open_fds
    for name in ("pipe.wav", "zero.wav", "folder.wav"):
        assert re.search(rf"{name}: not a regular file \(a folder, a device or a pipe\)", errors[name])
    assert errors["missing.wav"].endswith("missing.wav: wav file not found")


def test_silent_notes_are_counted_and_a_set_of_nothing_but_silence_refused(split, caplog):
    folder, df, cfg = split
    sf.write(wav_of(folder, KEYS[3]), np.zeros(64000, np.float32), 16000, subtype="FLOAT")
    caplog.set_level(logging.WARNING, logger="vaelib")
    cache = build_feature_cache(df, cfg, show_progress=False)
    assert "1 note(s) are digital silence" in caplog.text and str(wav_of(folder, KEYS[3])) in caplog.text
    row = int(np.flatnonzero(cache.meta["note_str"].to_numpy() == KEYS[3])[0])
    assert (np.asarray(cache.features[row]) == -1.0).all()  # kept, at the floor
    for key in KEYS:
        sf.write(wav_of(folder, key), np.zeros(64000, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(DataError, match=rf"every one of the {len(KEYS)} notes is digital silence"):
        build_feature_cache(df, cfg, show_progress=False)


def test_many_nan_wavs_are_counted_and_the_first_ten_named(split):
    folder, df, cfg = split
    bad = sine(440.0)
    bad[::7] = np.nan
    for key in KEYS:
        sf.write(wav_of(folder, key), bad, 16000, subtype="FLOAT")
    with pytest.raises(DataError, match=r"12 wav file\(s\) hold NaN .* and 2 more") as err:
        build_feature_cache(df, cfg, show_progress=False)
    assert sum(str(wav_of(folder, k)) in str(err.value) for k in KEYS) == 10
    assert listing(cfg.cache_dir) == []


def test_nan_wav_refused_by_the_cli_with_exit_2(split, tmp_path):
    folder, _, cfg = split
    bad = sine(440.0)
    bad[5] = np.nan
    sf.write(wav_of(folder, KEYS[3]), bad, 16000, subtype="FLOAT")
    proc = cli("preprocess", "--params", str(SMOKE_PARAMS), "--quiet", "--set", f"data.root={folder}",
               "--set", f"features.cache_dir={cfg.cache_dir}")
    assert proc.returncode == 2, proc.stderr
    assert "vaelib preprocess: error: 1 wav file(s) hold NaN" in proc.stderr and KEYS[3] in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert listing(cfg.cache_dir) == []


def test_non_finite_features_are_refused_before_they_are_written(split):
    # finite samples far beyond full scale overflow the float32 power spectrum: caught on the features
    folder, df, cfg = split
    sf.write(wav_of(folder, KEYS[2]), sine(440.0) * np.float32(1e30), 16000, subtype="FLOAT")
    with pytest.raises(DataError, match=r"1 note\(s\) give non-finite log-mel values") as err:
        build_feature_cache(df, cfg, show_progress=False)
    assert str(wav_of(folder, KEYS[2])) in str(err.value)
    assert listing(cfg.cache_dir) == []


def test_clipped_wav_is_counted_with_a_warning(split, caplog):
    folder, df, cfg = split
    square = np.sign(sine(220.0)).astype(np.float32)  # runs of full-scale samples: clipped
    sf.write(wav_of(folder, KEYS[1]), square, 16000, subtype="PCM_16")
    one_peak = sine(440.0)
    one_peak[100] = 1.0  # a single sample at full scale is a peak, not clipping
    sf.write(wav_of(folder, KEYS[4]), one_peak, 16000, subtype="PCM_16")
    with caplog.at_level(logging.WARNING, logger="vaelib.data.cache"):
        cache = build_feature_cache(df, cfg, show_progress=False)
    assert cache.manifest["fixes"]["clipped"] == 1
    assert cache.manifest["clipped_files"] == [str(wav_of(folder, KEYS[1]))]
    assert cache.manifest["fixed_files"] == []  # clipped audio is used as it is, not fixed
    assert any("1 wav files are clipped" in r.message and KEYS[1] in r.message for r in caplog.records)
    assert np.isfinite(np.asarray(cache.features, dtype=np.float32)).all()


# --- 2. truncated wavs -----------------------------------------------------------------------------------

def test_truncated_wav_is_counted_apart_from_a_short_one(split, caplog):
    folder, df, cfg = split
    sf.write(wav_of(folder, KEYS[0]), sine(220.0, seconds=2.0), 16000, subtype="PCM_16")  # short but complete
    cut = wav_of(folder, KEYS[1])
    cut.write_bytes(cut.read_bytes()[:70000])  # cut short mid-data: the header still claims 4 s
    with caplog.at_level(logging.WARNING, logger="vaelib.data.cache"), \
            pytest.warns(UserWarning, match=rf"{KEYS[1]}\.wav: truncated"):
        cache = build_feature_cache(df, cfg, show_progress=False)
    fixes = cache.manifest["fixes"]
    assert (fixes["padded"], fixes["truncated"]) == (1, 1)
    assert cache.manifest["truncated_files"] == [str(cut)]
    assert sorted(cache.manifest["fixed_files"]) == sorted([str(cut), str(wav_of(folder, KEYS[0]))])
    assert any("1 wav files were truncated" in r.message and str(cut) in r.message for r in caplog.records)


# --- 3. labels edited in examples.json -------------------------------------------------------------------

def test_edited_labels_rebuild_the_cache_and_change_its_key(split):
    from vaelib.model.checkpoint import checkpoint_dir

    folder, _, cfg = split
    data = DataConfig(root=str(folder))
    before = build_feature_cache(load_dataset(data), cfg, show_progress=False)
    raw = json.loads((folder / "examples.json").read_text())
    mtimes = {k: wav_of(folder, k).stat().st_mtime_ns for k in KEYS}
    raw[KEYS[0]]["pitch"] = 50
    raw[KEYS[1]]["qualities"] = [1] + [0] * 9
    (folder / "examples.json").write_text(json.dumps(raw))
    after = build_feature_cache(load_dataset(data), cfg, show_progress=False)
    assert {k: wav_of(folder, k).stat().st_mtime_ns for k in KEYS} == mtimes, "the wavs must be untouched"
    assert after.manifest["key"] != before.manifest["key"]
    meta = after.meta.set_index("note_str")
    assert meta.loc[KEYS[0], "pitch"] == 50 and list(meta.loc[KEYS[1], "qualities"]) == [1] + [0] * 9
    np.testing.assert_array_equal(np.asarray(after.features), np.asarray(before.features))  # same audio
    run = load_config(SMOKE_PARAMS, [f"data.root={folder}", f"features.cache_dir={cfg.cache_dir}"])
    assert checkpoint_dir(run, after.manifest["key"]) != checkpoint_dir(run, before.manifest["key"])


# --- 4. a damaged cache ----------------------------------------------------------------------------------

def _truncate_features(path: Path) -> None:
    f = path / FEATURES_FILE
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 2)


def _corrupt_meta(path: Path) -> None:
    f = path / META_FILE
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])  # same size, other bytes
    f.write_bytes(bytes(data))


def _corrupt_a_row(path: Path) -> None:
    features = np.load(path / FEATURES_FILE, mmap_mode="r+")
    features[0] = 0.5  # row 0 is always sampled
    features.flush()


def _garble_manifest(path: Path) -> None:
    (path / MANIFEST_FILE).write_text("{ not json")


def _delete_meta(path: Path) -> None:
    (path / META_FILE).unlink()


@pytest.mark.parametrize(("damage", "message"), [
    (_truncate_features, r"features\.npy: \d+ bytes, the manifest records \d+"),
    (_corrupt_meta, r"meta\.parquet: its sha256 differs"),
    (_corrupt_a_row, r"features\.npy: the sha256 of its sampled rows differs"),
    (_garble_manifest, r"damaged feature cache \(JSONDecodeError"),
    (_delete_meta, r"damaged feature cache \(FileNotFoundError"),
])
def test_damaged_cache_is_rebuilt_with_a_warning(split, caplog, damage, message):
    _, df, cfg = split
    first = build_feature_cache(df, cfg, show_progress=False)
    expected = np.array(first.features)
    del first
    damage(Path(cfg.cache_dir) / cache_mod.cache_key(df, cfg))
    path = Path(cfg.cache_dir) / cache_mod.cache_key(df, cfg)
    with pytest.raises(DataError, match=message):
        open_feature_cache(path)
    with caplog.at_level(logging.WARNING, logger="vaelib.data.cache"):
        repaired = build_feature_cache(df, cfg, show_progress=False)
    assert any(f"feature cache {path} is damaged" in r.message for r in caplog.records)
    np.testing.assert_array_equal(np.asarray(repaired.features), expected)
    assert listing(cfg.cache_dir) == [path.name], "the damaged copy or a lock file was left behind"
    assert open_feature_cache(path).manifest["key"] == path.name


@pytest.mark.parametrize("error", [PermissionError(errno.EACCES, "Permission denied"),
                                   OSError(errno.EMFILE, "Too many open files"),
                                   OSError(errno.EIO, "Input/output error")], ids=["EACCES", "EMFILE", "EIO"])
def test_a_cache_that_cannot_be_read_is_an_error_not_damage(split, monkeypatch, error):
    _, df, cfg = split
    built = build_feature_cache(df, cfg, show_progress=False)
    path, expected = built.path, np.array(built.features)
    del built
    inodes = [(path / name).stat().st_ino for name in (".", FEATURES_FILE, META_FILE)]  # a rebuild makes new ones
    real_open = open

    def refuse(file, *args, **kwargs):  # as the cache's checks open its files
        if Path(file).parent == path:
            raise type(error)(error.errno, error.strerror, str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(cache_mod, "open", refuse, raising=False)
    for call in (lambda: build_feature_cache(df, cfg, show_progress=False), lambda: open_feature_cache(path)):
        with pytest.raises(DataError) as err:
            call()
        assert listing(cfg.cache_dir) == [path.name]
        assert [(path / name).stat().st_ino for name in (".", FEATURES_FILE, META_FILE)] == inodes, \
            "the cache was discarded as if damaged"
        assert str(err.value) == f"cannot read {path / META_FILE}: {error.strerror} (the feature cache {path} is " \
                                 "left as it is)"
        assert isinstance(err.value, cache_mod.CacheReadError)
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(open_feature_cache(path).features), expected)


# --- 5. partial folders of killed builds ------------------------------------------------------------------

BUILDER = textwrap.dedent("""
    import hashlib, json, logging, sys, time
    from pathlib import Path
    import numpy as np
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    import vaelib.data.cache as cache_mod
    from vaelib.config import FeatureConfig
    from vaelib.data.nsynth import read_examples
    folder, cache_dir, ready, go, release = sys.argv[1:6]
    real = cache_mod.compute_features
    def held(*args, **kwargs):  # holds the build (and its lock) open until the file `release` exists
        Path(ready + ".building").touch()
        while not Path(release).exists():
            time.sleep(0.01)
        return real(*args, **kwargs)
    cache_mod.compute_features = held
    real_acquire = cache_mod.FileLock.acquire
    def acquire(self, *, blocking=True, on_wait=None):  # says, with a file, that it waits for another builder
        def waiting(lock):
            Path(ready + ".waiting").touch()
            if on_wait is not None:
                on_wait(lock)
        return real_acquire(self, blocking=blocking, on_wait=waiting)
    cache_mod.FileLock.acquire = acquire
    df = read_examples(folder).assign(split="train")
    cfg = FeatureConfig(cache_dir=cache_dir, batch_size=4, workers=1)
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.01)
    cache = cache_mod.build_feature_cache(df, cfg, show_progress=False)
    digest = hashlib.sha256(np.ascontiguousarray(cache.features).tobytes()).hexdigest()
    print(json.dumps({"path": str(cache.path), "sha256": digest}))
""")


def _start_builder(folder: Path, cfg: FeatureConfig, tag: Path) -> subprocess.Popen:
    """A process that touches ``tag`` once set up, starts its build once ``<tag>.go`` exists, touches
    ``<tag>.building`` once inside it (holding the lock) and goes on only once ``release`` (beside ``tag``)
    exists, or ``<tag>.waiting`` when it waits for another builder's lock."""
    return subprocess.Popen([sys.executable, "-c", BUILDER, str(folder), cfg.cache_dir, str(tag),
                             f"{tag}.go", str(tag.with_name("release"))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)


def _wait_for(path: Path, procs: list[subprocess.Popen], timeout: float = 180.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"builder ended early ({p.returncode}): {p.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


def test_killed_build_is_removed_by_the_next_build(split, tmp_path, caplog):
    folder, df, cfg = split
    proc = _start_builder(folder, cfg, tmp_path / "a")  # never released
    try:
        _wait_for(tmp_path / "a", [proc])
        (tmp_path / "a.go").touch()
        _wait_for(tmp_path / "a.building", [proc])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    key = cache_mod.cache_key(df, cfg)
    left = [n for n in listing(cfg.cache_dir) if n.startswith(f".{key}.build.{HOST}.{proc.pid}.")]
    assert len(left) == 1, listing(cfg.cache_dir)
    assert (Path(cfg.cache_dir) / left[0] / FEATURES_FILE).stat().st_size > 12 * 80 * 128 * 2  # full size
    with caplog.at_level(logging.WARNING, logger="vaelib.data.cache"):
        cache = build_feature_cache(df, cfg, show_progress=False)
    assert any(left[0] in r.message and "killed" in r.message for r in caplog.records)
    assert listing(cfg.cache_dir) == [key], "the killed build's folder or its lock file is still there"
    assert cache.features.shape[0] == len(df)


def test_partial_of_a_live_build_is_kept(split, tmp_path):
    _, df, cfg = split
    root = Path(cfg.cache_dir)
    root.mkdir()
    key = cache_mod.cache_key(df, cfg)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    two_hours_ago = time.time() - 7200
    names = {
        "live": f".{key}.build.{HOST}.{live.pid}.0a1b2c3d",
        "dead": f".{key}.build.{HOST}.{dead.pid}.0a1b2c3d",
        "dead_other_key": f".0123456789abcdef.build.{HOST}.{dead.pid}.0a1b2c3d",
        "remote_fresh": f".{key}.build.elsewhere.1.0a1b2c3d",
        "remote_idle": f".{key}.damaged.elsewhere.1.0a1b2c3e",
        "legacy_fresh": f".{key}.ab_cd123",
        "legacy_idle": f".{key}.ef_gh456",
    }
    for what, name in names.items():
        (root / name).mkdir()
        (root / name / FEATURES_FILE).write_bytes(b"\0" * 100)
        if what.endswith("idle"):
            for p in (root / name / FEATURES_FILE, root / name):
                os.utime(p, (two_hours_ago, two_hours_ago))
    try:
        build_feature_cache(df, cfg, show_progress=False)
        kept = {what for what, name in names.items() if (root / name).exists()}
    finally:
        live.kill()
        live.wait()
    assert kept == {"live", "remote_fresh", "legacy_fresh"}


# --- 6. two processes building the same cache -------------------------------------------------------------

def test_two_processes_build_the_same_cache_once(split, tmp_path):
    folder, df, cfg = split
    procs = [_start_builder(folder, cfg, tmp_path / "a")]
    try:
        # A builds and holds its build open; B starts only then, and waits for A's lock
        _wait_for(tmp_path / "a", procs)
        (tmp_path / "a.go").touch()
        _wait_for(tmp_path / "a.building", procs)
        procs.append(_start_builder(folder, cfg, tmp_path / "b"))
        _wait_for(tmp_path / "b", procs)
        (tmp_path / "b.go").touch()
        _wait_for(tmp_path / "b.waiting", procs)
        (tmp_path / "release").touch()  # A finishes; B then finds the cache A built
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    logs = "".join(err for _, err in results)
    assert logs.count("feature cache built:") == 1, logs
    assert logs.count("waiting for") == 1 and logs.count("built by another process meanwhile") == 1, logs
    assert "feature cache built:" in results[0][1] and "meanwhile" in results[1][1], logs
    assert not (tmp_path / "b.building").exists(), "B built too"
    outs = [json.loads(out) for out, _ in results]
    assert outs[0] == outs[1]
    assert listing(cfg.cache_dir) == [cache_mod.cache_key(df, cfg)]


def test_file_lock_excludes_and_leaves_no_file(tmp_path):
    a, b = FileLock(tmp_path / ".k.lock"), FileLock(tmp_path / ".k.lock")
    assert a.acquire(blocking=False)
    assert not b.acquire(blocking=False), "a second lock object of the same file must not get it"
    assert a.holder().endswith(f".{os.getpid()}")
    a.release()
    assert not (tmp_path / ".k.lock").exists()
    with b:
        assert (tmp_path / ".k.lock").exists()
    assert listing(tmp_path) == []


def _simulate_lock_folder(monkeypatch, lock: Path, *, writable: bool, vanishing: int = 0) -> list[int]:
    """Opens of ``lock`` as in a folder this user may not write (root writes a folder of mode 0o555 all the
    same, so it is simulated): creating the lock file is refused, and it does not exist. With ``writable``,
    the folder is writable but the file existed (another user's, not writable by us) and was removed by its
    holder before the read-only open, ``vanishing`` times; after that the create succeeds. Returns the
    list of the flags of each open of ``lock``."""
    real_open, real_access = os.open, os.access
    opens: list[int] = []

    def fake_open(path, flags, *args):
        if Path(path) != lock:
            return real_open(path, flags, *args)
        opens.append(flags)
        if writable and len([f for f in opens if f & os.O_CREAT]) > vanishing:
            return real_open(path, flags, *args)
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (writable or Path(path) != lock.parent)
                        and real_access(path, mode, **kw))
    return opens


def test_lock_in_a_read_only_folder_names_the_folder(tmp_path, monkeypatch):
    lock = tmp_path / "cache" / ".0123456789abcdef.lock"
    lock.parent.mkdir()
    _simulate_lock_folder(monkeypatch, lock, writable=False)
    with pytest.raises(PermissionError, match="the folder is not writable, so its lock file") as err:
        FileLock(lock).acquire()
    assert err.value.filename == str(lock.parent) and not isinstance(err.value, FileNotFoundError)


def test_lock_file_removed_between_the_opens_is_created_again(tmp_path, monkeypatch):
    lock = tmp_path / ".k.lock"
    opens = _simulate_lock_folder(monkeypatch, lock, writable=True, vanishing=1)
    fl = FileLock(lock)
    assert fl.acquire(blocking=False)
    assert [bool(f & os.O_CREAT) for f in opens] == [True, False, True]  # create, read-only: gone, create
    fl.release()
    assert listing(tmp_path) == []


def test_cache_dir_where_the_lock_cannot_be_created_is_a_data_error(split, monkeypatch):
    _, df, cfg = split
    root = Path(cfg.cache_dir)
    root.mkdir()
    _simulate_lock_folder(monkeypatch, root / f".{cache_mod.cache_key(df, cfg)}.lock", writable=False)
    with pytest.raises(DataError, match=rf"cannot write the feature cache in {root}: {root}: the folder is not "
                                        r"writable.*make it writable or set features\.cache_dir"):
        build_feature_cache(df, cfg, show_progress=False)
    assert listing(root) == []


def test_file_system_without_locks_still_builds(split, monkeypatch, caplog):
    _, df, cfg = split

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(io_mod.fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="vaelib.data.cache"):
        cache = build_feature_cache(df, cfg, show_progress=False)
    assert any("has no locks" in r.message for r in caplog.records)
    assert listing(cfg.cache_dir) == [cache.path.name]


# --- 7. file system faults -------------------------------------------------------------------------------

def test_cache_dir_under_a_file_is_refused(split, tmp_path):
    _, df, _ = split
    (tmp_path / "afile").write_text("x")
    cfg = FeatureConfig(cache_dir=str(tmp_path / "afile" / "cache"))
    with pytest.raises(DataError, match=rf"{tmp_path / 'afile'}: .*features\.cache_dir"):
        build_feature_cache(df, cfg, show_progress=False)
    assert (tmp_path / "afile").read_text() == "x"


def test_data_root_under_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    cfg = load_config(SMOKE_PARAMS, [f"data.root={tmp_path / 'afile' / 'ds'}"])
    with pytest.raises(DataError, match=rf"{tmp_path / 'afile'} is a file, not a folder.*set data\.root"):
        ensure_dataset(cfg, show_progress=False)
    with pytest.raises(DataError, match=r"is a file, expected a dataset folder"):
        load_dataset(DataConfig(root=str(tmp_path / "afile")))
    with pytest.raises(DataError, match=rf"ds: {tmp_path / 'afile'} is a file, expected a dataset folder"):
        load_dataset(DataConfig(root=str(tmp_path / "afile" / "ds")))


def test_cache_dir_under_a_file_is_refused_before_a_render(tmp_path, monkeypatch):
    import vaelib.data.prepare as prepare_mod

    (tmp_path / "afile").write_text("x")
    cache_dir = tmp_path / "afile" / "cache"
    cfg = load_config(SMOKE_PARAMS, [f"data.root={tmp_path / 'new_ds'}", f"features.cache_dir={cache_dir}"])
    rendered = []
    monkeypatch.setattr(prepare_mod, "render_dataset", lambda *a, **k: rendered.append(a))
    with pytest.raises(DataError, match=rf"cannot write the feature cache in {cache_dir}: {tmp_path / 'afile'}: a "
                                        r"file stands where a folder is needed"):
        prepare_features(cfg, show_progress=False)
    assert rendered == [] and not (tmp_path / "new_ds").exists(), "the dataset was rendered before the check"


def test_read_only_cache_dir_is_refused(split, read_only_dir):
    _, df, _ = split
    root = read_only_dir
    with pytest.raises(DataError, match=rf"{root}.*make it writable or set features\.cache_dir"):
        build_feature_cache(df, FeatureConfig(cache_dir=str(root)), show_progress=False)
    assert listing(root) == []


def test_unwritable_cache_dir_is_refused_simulated(split, monkeypatch):
    _, df, cfg = split

    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(cache_mod, "writable_folder", refuse)
    with pytest.raises(DataError, match=rf"{cfg.cache_dir}: Permission denied; make it writable or set "
                                        r"features\.cache_dir"):
        build_feature_cache(df, cfg, show_progress=False)
    assert listing(cfg.cache_dir) == []


def test_full_disk_while_building_is_refused_leaving_nothing(split, monkeypatch):
    _, df, cfg = split

    def full(self, rows, block):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(cache_mod.NpyRowWriter, "__setitem__", full)
    with pytest.raises(DataError, match=r"features\.npy: No space left on device; free space .* features\.cache_dir"):
        build_feature_cache(df, cfg, show_progress=False)
    assert listing(cfg.cache_dir) == [], "the partial build or its lock file was left behind"


def test_too_little_free_space_is_refused_before_the_build(split, monkeypatch):
    _, df, cfg = split
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    monkeypatch.setattr(cache_mod, "compute_features", lambda *a, **k: pytest.fail("the build should not start"))
    with pytest.raises(DataError, match=r"0 MB free, the feature cache needs about 1 MB"):
        build_feature_cache(df, cfg, show_progress=False)
    assert listing(cfg.cache_dir) == []


def test_cache_dir_under_a_file_refused_by_the_cli_with_exit_2(split, tmp_path):
    folder, _, _ = split
    (tmp_path / "afile").write_text("x")
    proc = cli("preprocess", "--params", str(SMOKE_PARAMS), "--quiet", "--set", f"data.root={folder}",
               "--set", f"features.cache_dir={tmp_path / 'afile' / 'cache'}")
    assert proc.returncode == 2, proc.stderr
    assert f"vaelib preprocess: error: cannot write the feature cache in {tmp_path / 'afile' / 'cache'}" \
        in proc.stderr and "Traceback" not in proc.stderr


# --- 8. a misspelled data.root ---------------------------------------------------------------------------

def test_misspelled_data_root_is_refused_with_did_you_mean(make_split, tmp_path):
    make_split({k: entry(k) for k in KEYS[:2]}, name="gm_default")
    make_split({k: entry(k) for k in KEYS[:2]}, name="nsynth/nsynth-valid")
    for typo, meant in [("gm_defualt", "gm_default"), ("nsyth/nsynth-valid", "nsynth/nsynth-valid")]:
        cfg = load_config(SMOKE_PARAMS, [f"data.root={tmp_path / typo}", f"features.cache_dir={tmp_path / 'c'}"])
        with pytest.raises(DataError, match=rf"did you mean {tmp_path / meant}\?.*vaelib render"):
            prepare_features(cfg, show_progress=False)
        assert not (tmp_path / typo.split("/")[0]).exists(), "the misspelled folder was rendered into"
    assert close_dataset(tmp_path / "gm_other_set") is None  # a new name far from any dataset renders
    assert close_dataset(tmp_path / "gm_defaults" / "x") is None  # close, but gm_default/x holds nothing
    assert close_dataset(tmp_path / "gm_defaults") == tmp_path / "gm_default"
    assert close_dataset(tmp_path / "gm_default2") == tmp_path / "gm_default"  # no separator: a typo


@pytest.mark.parametrize("name", ["gm_default_v2", "gm_default-2", "gm_default_2", "gm_default.v2", "gm_def"])
def test_a_new_name_beside_a_dataset_is_rendered(make_split, tmp_path, monkeypatch, name):
    import vaelib.data.prepare as prepare_mod

    make_split({k: entry(k) for k in KEYS[:2]}, name="gm_default")
    assert close_dataset(tmp_path / name) is None
    rendered = []
    monkeypatch.setattr(prepare_mod, "render_dataset", lambda render, root, **k: rendered.append(root))
    cfg = load_config(SMOKE_PARAMS, [f"data.root={tmp_path / name}", f"features.cache_dir={tmp_path / 'c'}"])
    ensure_dataset(cfg, show_progress=False)
    assert rendered == [tmp_path / name]


def test_typo_rule():
    from vaelib.data.prepare import is_typo_of

    for typo, meant in [("gm_defualt", "gm_default"), ("gm_smoek", "gm_smoke"), ("nsyth", "nsynth"),
                        ("gm_defaults", "gm_default"), ("gm_default2", "gm_default"), ("gm_dflt", "gm_dfault")]:
        assert is_typo_of(typo, meant), (typo, meant)
    for new, existing in [("gm_default_v2", "gm_default"), ("gm_default-2", "gm_default"),
                          ("gm_default_2", "gm_default"), ("gm_default", "gm_default_2"),
                          ("gm_default", "gm_default"), ("gm_other_set", "gm_default")]:
        assert not is_typo_of(new, existing), (new, existing)


def test_misspelled_data_root_refused_by_the_cli_with_exit_2(make_split, tmp_path):
    make_split({k: entry(k) for k in KEYS[:2]}, name="gm_smoke")
    proc = cli("preprocess", "--params", str(SMOKE_PARAMS), "--quiet", "--set", f"data.root={tmp_path / 'gm_smoek'}",
               "--set", f"features.cache_dir={tmp_path / 'cache'}")
    assert proc.returncode == 2, proc.stderr
    assert f"did you mean {tmp_path / 'gm_smoke'}?" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "gm_smoek").exists()


def test_a_full_disk_while_rendering_is_a_data_error_leaving_nothing(tmp_path, monkeypatch):
    import vaelib.data.render as render_mod
    from vaelib.config import RenderConfig

    def full(path, *a, **k):
        Path(path).write_bytes(b"RIFF")
        raise sf.LibsndfileError(0, prefix="Error writing: ")

    monkeypatch.setattr(render_mod.sf, "write", full)
    cfg = RenderConfig(programs=(0,), pitch_min=60, pitch_max=60, velocities=(100,), workers=1)
    with pytest.raises(DataError, match=r"\.wav: could not write .*is the disk full\?"):
        render_mod.render_dataset(cfg, tmp_path / "ds", show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_an_os_error_without_a_path_names_the_atomic_target(tmp_path):
    with pytest.raises(OSError) as info, io_mod.atomic_path(tmp_path / "z.parquet"):
        raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(tmp_path / "z.parquet"))


def test_a_write_killed_midway_leaves_a_temp_that_the_next_write_removes(tmp_path):
    target = tmp_path / "store.npz"
    target.write_text("earlier")
    killed = textwrap.dedent(f"""
        import os, signal
        from vaelib.io import atomic_path
        with atomic_path({str(target)!r}, suffix=".npz") as tmp:
            tmp.write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", killed], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (orphan,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert target.read_text() == "earlier"  # the earlier result is intact
    # a live writer's temp (this process), another host's (a shared disk: its pid cannot be checked here) and
    # another target's are kept
    dead_pid = orphan.name.split(".")[4]
    assert orphan.name.startswith(f".store.npz.{io_mod._HOST_ID}.{dead_pid}.")
    live = tmp_path / f".store.npz.{io_mod._HOST_ID}.{os.getpid()}.abc123.npz.tmp"
    remote = tmp_path / f".store.npz.{'0' * 8 if io_mod._HOST_ID != '0' * 8 else '1' * 8}.{dead_pid}.abc123.npz.tmp"
    other_target = tmp_path / f".other.npz.{io_mod._HOST_ID}.{dead_pid}.abc123.npz.tmp"
    for path in (live, remote, other_target):
        path.write_text("x")
    io_mod.atomic_write_text(target, "new")
    assert target.read_text() == "new" and not orphan.exists()
    assert live.exists() and remote.exists() and other_target.exists()  # only the target's orphans go


def test_a_velocity_outside_midi_is_refused(make_split):
    k = "brass_acoustic_000-060-075"
    with pytest.raises(DataError, match=rf"{k}.*'velocity': 300 is not a MIDI velocity"):
        read_examples(make_split({k: entry(k, velocity=300)}))


@pytest.mark.parametrize("field,value,says", [
    ("pitch", 128, "'pitch': 128 is not a MIDI pitch"), ("pitch", -1, "'pitch': -1 is not a MIDI pitch"),
    ("pitch", 10**30, "'pitch': 10{30}0* is out of range for an integer field"),
    ("note", 10**30, "'note': 10{30}0* is out of range"), ("sample_rate", 0, "'sample_rate': 0 is not a sample rate"),
    ("qualities", [5] + [0] * 9, "'qualities': expected a list of 10 0/1 flags"),
])
def test_ints_outside_what_the_field_means_are_refused(make_split, field, value, says):
    k = "brass_acoustic_000-060-075"
    folder = make_split({k: entry(k)})
    (folder / "examples.json").write_text(json.dumps({k: {**entry(k), field: value}}))
    with pytest.raises(DataError, match=rf"{k}.*{says}"):
        read_examples(folder)


@pytest.mark.parametrize("change,field,values", [
    ({"instrument_family": 7, "instrument_family_str": "reed"}, "instrument_family_str", ("brass", "reed")),
    ({"instrument_source": 1, "instrument_source_str": "electronic"}, "instrument_source_str",
     ("acoustic", "electronic"))])
def test_one_instrument_under_two_families_or_sources_is_refused(make_split, change, field, values):
    a, b = "brass_acoustic_000-060-075", "brass_acoustic_000-062-075"
    folder = make_split({a: entry(a), b: entry(b)})
    (folder / "examples.json").write_text(json.dumps({a: entry(a), b: {**entry(b), **change}}))
    with pytest.raises(DataError, match=rf"instrument 'brass_acoustic_000' has notes of 2 values of "
                                        rf"'{field}' \('{values[0]}' in '.*', '{values[1]}' in '.*'\)"):
        read_examples(folder)


def test_examples_json_nested_beyond_the_parser_is_refused(make_split):
    k = "brass_acoustic_000-060-075"
    folder = make_split({k: entry(k)})
    (folder / "examples.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=r"examples\.json: JSON nested too deeply"):
        read_examples(folder)


def test_a_duplicate_key_in_examples_json_is_refused(make_split):
    k = "brass_acoustic_000-060-075"
    folder = make_split({k: entry(k)})
    one = json.dumps(entry(k))
    (folder / "examples.json").write_text(f'{{"{k}": {one}, "{k}": {one}}}')
    with pytest.raises(DataError, match=rf"key '{k}' appears twice"):
        read_examples(folder)


@pytest.mark.parametrize("field,value", [("instrument_family_str", "string"), ("instrument_source_str", "acustic")])
def test_a_family_or_source_name_not_matching_its_id_is_refused(make_split, field, value):
    k = "brass_acoustic_000-060-075"
    with pytest.raises(DataError, match=rf"{k}.*{field}.*{value!r}.*expected"):
        read_examples(make_split({k: entry(k, **{field: value})}))
