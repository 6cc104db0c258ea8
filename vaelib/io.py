"""Atomic file writes: a temp file in the target's folder, fsynced, then renamed over the target.

A reader therefore sees either the old file or the complete new one, never a partial write; a writer
killed mid-write leaves a temp file that the next write of the same target removes.
Also the tools of work that several processes may share: an exclusive lock file (``FileLock``, and
``acquire_unless_unsupported`` for file systems without locks) and the owner of a folder left behind
(``OWNER_TAG``, ``owner_gone``); and the checks of an output folder (``writable_folder``,
``file_in_the_way``).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

UMASK = os.umask(0)
os.umask(UMASK)

__all__ = ["UMASK", "atomic_path", "remove_orphaned_temps", "atomic_write_text", "atomic_write_json", "FileLock",
           "NO_LOCKS", "acquire_unless_unsupported", "HOST", "OWNER_TAG", "pid_alive", "owner_gone", "writable_folder",
           "file_in_the_way", "os_error_text"]

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(target: str | os.PathLike, *, suffix: str = "", mode: int | None = None):
    """Yield a temporary path beside ``target``; on a clean exit it replaces ``target``.

    On an exception (or KeyboardInterrupt) the temporary file is removed and ``target`` is untouched.
    ``target`` gets ``mode``, or (None) the mode the umask gives a new file. The temporary file's name
    carries its writer's pid and a short id of its host, so a writer killed mid-write (SIGKILL, a lost
    machine) leaves a file that the next write of ``target`` on that host removes (:func:`remove_orphaned_temps`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temps(target)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(target)}{_HOST_ID}.{os.getpid()}.", suffix=suffix + ".tmp",
                               dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
        except OSError as exc:
            if exc.filename is not None:
                raise
            # a writer's error without a path (pyarrow: "Error writing bytes to file ... [errno 28]"): name the target
            code = exc.errno if exc.errno is not None else _errno_in(str(exc))
            raise OSError(code, exc.strerror or str(exc), str(target)) from exc
        # mkstemp creates 0600; a report or cache file should read like any file the user writes.
        os.chmod(tmp_path, 0o666 & ~UMASK if mode is None else mode)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _temp_prefix(target: Path) -> str:
    return f".{target.name}."


def remove_orphaned_temps(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``target`` (:func:`atomic_path`'s) whose writer has ended on this host
    without finishing (killed); return them. Those of a live writer, of another host and of unknown owners
    are kept."""
    target = Path(target)
    prefix = _temp_prefix(target)
    removed = []
    try:
        siblings = list(target.parent.iterdir())
    except OSError:  # an unreadable folder: the write itself will say what is wrong
        return removed
    for path in siblings:
        name = path.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        host_id, _, rest = name[len(prefix):].partition(".")
        pid = rest.partition(".")[0]
        if host_id == _HOST_ID and pid.isdigit() and not pid_alive(int(pid)):
            try:
                path.unlink()
            except FileNotFoundError:  # another writer removed it first
                continue
            except OSError as exc:
                log.warning("could not remove %s, left by a killed write of %s: %s", path, target, exc)
                continue
            log.info("removed %s, left by a killed write of %s", path, target)
            removed.append(path)
    return removed


def _errno_in(text: str) -> int | None:
    """The errno a message quotes as ``[errno 28]`` (pyarrow's OSError carries none of its own), else None."""
    m = re.search(r"errno (\d+)", text, re.IGNORECASE)
    return int(m.group(1)) if m else None


def _write_with(target: str | os.PathLike, writer: Callable[[Path], Any], *, suffix: str = "") -> None:
    with atomic_path(target, suffix=suffix) as tmp:
        writer(tmp)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    _write_with(target, lambda p: p.write_text(text))


def atomic_write_json(target: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


# --- Work shared between processes: a lock file, and who owns a folder left behind -------------------

HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"  # safe inside a file name
# a temp file's writer, in 8 characters: the name keeps room under NAME_MAX for a long target name
_HOST_ID = hashlib.sha1(HOST.encode()).hexdigest()[:8]
OWNER_TAG = f"{HOST}.{os.getpid()}"  # "<host>.<pid>": put in the name of a folder this process may leave behind


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def owner_gone(host: str, pid: int) -> bool:
    """Whether the process named by an ``OWNER_TAG`` has ended for sure: only a process of this host can
    be checked; one of another host (a shared disk) counts as alive."""
    return host == HOST and not pid_alive(pid)


class FileLock:
    """An exclusive ``fcntl.flock`` on ``path``, which is created on acquire and removed on release.

    The kernel drops the lock of a process that dies, so a killed holder never blocks the others.
    Removing the file on release would let a waiter hold the lock on a file no longer in the folder
    while a newcomer locks a new one; ``acquire`` therefore checks, once it holds the lock, that its
    file is still the one at ``path`` and starts over otherwise. The file holds ``OWNER_TAG`` of the
    holder, for messages (when the holder may write it: a lock file of another user is locked read-only).
    Not reentrant; separate ``FileLock`` objects exclude each other even in one process.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def holder(self) -> str:
        """``OWNER_TAG`` of the process that holds the lock, as far as it could be read ("" if unknown)."""
        try:
            return self.path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            return ""

    def acquire(self, *, blocking: bool = True, on_wait: Callable[[FileLock], None] | None = None) -> bool:
        """Take the lock; ``on_wait(self)`` is called once if another process holds it and we wait.

        Returns False only when ``blocking`` is false and the lock is held elsewhere. Raises OSError
        when the file cannot be created (``PermissionError`` naming the folder when it is not writable, a
        missing folder) or locked (errno in ``NO_LOCKS`` on a file system without locks).
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: lock already held by this FileLock")
        waited = False
        while True:
            fd, writable = self._open()
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not blocking:
                        os.close(fd)
                        return False
                    if not waited and on_wait is not None:
                        on_wait(self)
                    waited = True
                    fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    mine, there = os.fstat(fd), os.stat(self.path)
                    same = (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)
                except FileNotFoundError:
                    same = False
                if same:
                    if writable:
                        os.ftruncate(fd, 0)
                        os.pwrite(fd, f"{OWNER_TAG}\n".encode(), 0)
                    self._fd = fd
                    return True
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the holder before us removed this file: lock the one at path now

    def _open(self, attempts: int = 3) -> tuple[int, bool]:
        """The lock file, opened to be locked, and whether it was opened for writing.

        Created read-write when missing; opened read-only when it exists but this user may not write it
        (another user's: ``flock`` needs no write access). When the read-only open finds no file, either
        the holder removed it between the two opens (the create is tried again) or the folder cannot be
        written, which is then the error, naming the folder (not the missing lock file).
        """
        for _ in range(attempts):
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666), True
            except PermissionError:
                pass
            try:
                return os.open(self.path, os.O_RDONLY), False
            except FileNotFoundError:
                if not os.access(self.path.parent, os.W_OK | os.X_OK):
                    break
        raise PermissionError(errno.EACCES, f"the folder is not writable, so its lock file {self.path.name} "
                                            "cannot be created", str(self.path.parent))

    def release(self) -> None:
        """Remove the file and drop the lock (in that order: no one can lock a file that is gone)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # a file left in place is harmless: the next holder locks that same file
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# errno of flock on a file system that has no locks (an NFS mount without a lock manager, some FUSE ones)
NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS})


def acquire_unless_unsupported(lock: FileLock, *, unlocked: str, blocking: bool = True,
                               on_wait: Callable[[FileLock], None] | None = None) -> bool:
    """``lock.acquire(blocking=..., on_wait=...)``, except on a file system that has no locks.

    There (``flock`` fails with an errno in ``NO_LOCKS``) the work goes on unlocked rather than not at
    all: a warning names the folder and says ``unlocked`` (what that means for the work), the lock
    file is removed, and True is returned with nothing held (``release`` then does nothing).
    Every other OSError is raised.
    """
    try:
        return lock.acquire(blocking=blocking, on_wait=on_wait)
    except OSError as exc:
        if exc.errno not in NO_LOCKS:
            raise
        log.warning("%s: the file system has no locks (%s); %s", lock.path.parent, os_error_text(exc), unlocked)
        try:
            lock.path.unlink(missing_ok=True)
        except OSError:
            pass  # never locked by anyone on this file system: a file left there excludes nobody
        return True


# --- Output folders checked before the work that fills them ------------------------------------------

def writable_folder(path: str | os.PathLike) -> Path:
    """Create folder ``path`` (and its parents) if missing, and check that a file can be created in it.

    Called before long work whose result goes there, so that a bad output location fails first.

    Raises
    ------
    OSError
        With ``filename`` the path at fault: ``NotADirectoryError`` naming the file that stands where a
        folder is needed (``path`` or a parent), else the error of creating the folder or a file in it
        (``PermissionError`` for a read-only folder).
    """
    path = Path(path)
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise NotADirectoryError(errno.ENOTDIR, "a file stands where a folder is needed", str(blocker))
    path.mkdir(parents=True, exist_ok=True)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=path)
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
    os.close(fd)
    os.unlink(probe)
    return path


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The non-folder (a file, or a link to nothing) that stands where ``path`` or one of its parents
    must be a folder, or None: the nearest of them that exists decides."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            return None if folder.is_dir() else folder
    return None


def os_error_text(exc: OSError) -> str:
    """``"<path>: <reason>"`` of an OSError (``"<path> -> <path2>: ..."`` for a rename), for one-line messages."""
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    what = exc.strerror or str(exc)
    return f"{where}: {what}" if where else what
