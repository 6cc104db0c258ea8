"""The train split's rows, batch by batch: one tensor in memory, or read from the cache's file as training goes.

Both sources serve the batches of one epoch order (:func:`batch_positions` cuts them, the same for
both), so ``train.data`` changes where the rows come from, never which rows a step sees: the memory
path and the stream path give the same numbers.

* :class:`MemoryRows`: the split as one float32 tensor on the training device; a batch is an index
  into it. The fastest path, and the default while the split fits (:func:`choose_data`).
* :class:`StreamRows`: a background thread reads each batch's rows from ``features.npy`` with
  positional reads (``os.preadv`` straight into the batch's buffer, one call per run of consecutive
  rows, the GIL released; no memory map, whose pages would stay mapped into the process and fault in
  4 KiB at a time), tells the kernel the next batch's rows (``POSIX_FADV_WILLNEED``, so that reads
  from the disk overlap) and converts the rows to float32, at most ``train.prefetch`` batches ahead of
  the step. With the block order (:func:`block_order`, ``train.shuffle_block``) it reads whole blocks
  and keeps the blocks of the last two windows, so the file is read in long runs, once an epoch.
  Throughputs in docs/scale.md.

Order and the gradient. The default order is a uniform permutation of the notes (``torch.randperm``
of the batch generator), as before streaming existed: every batch is a uniform sample of the split.
:func:`block_order` keeps runs of ``block`` consecutive rows of the file together and shuffles the
rows of ``window`` blocks at a time, so each batch draws its notes from ``window`` random blocks, not
from the whole split. Every note is still seen exactly once an epoch, and the expected gradient of
an epoch is the same, but notes of one block stay in the same part of the epoch; where the file's
rows are sorted by instrument (NSynth's are: ~300 notes an instrument), a block of 64 rows is mostly
one instrument, so a window of 32 blocks mixes ~32 instruments, and a batch of 64 from it is less
varied than a uniform one (more variance between batches, fewer instruments per batch). Keep
``window`` several times ``batch_size / block`` or more; both are in the run's hash, so they are
part of what a run computes.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from vaelib.exceptions import DataError, ParameterError, TrainingError

__all__ = ["MEMORY_SHARE", "HOST_BYTES_PER_VALUE", "block_order", "batch_positions", "available_memory",
           "choose_data", "MemoryRows", "StreamRows", "read_npy_header"]

log = logging.getLogger(__name__)

# auto streams when loading the split would take more than this share of the memory available to a process.
MEMORY_SHARE = 0.5
# Host bytes a feature value takes while the memory path loads it: the float16 copy of the split (2) and
# the float32 tensor made from it (4); on a GPU the float32 tensor then lives on the device.
HOST_BYTES_PER_VALUE = 6
DEVICE_BYTES_PER_VALUE = 4
_GRAIN = 32768  # at::internal::GRAIN_SIZE: torch runs an op on fewer values in the calling thread
_POLL_S = 0.1  # how often a blocked reader or consumer checks whether the other side has stopped


# ----------------------------------------------------------------------------- order

def block_order(n: int, *, block: int, window: int, gen: torch.Generator) -> torch.Tensor:
    """An epoch's order of ``n`` notes that keeps runs of ``block`` consecutive rows together.

    The blocks (rows ``k * block`` to ``(k + 1) * block``; the last may be shorter) are shuffled;
    then, ``window`` blocks at a time in that order, their rows are shuffled among themselves. A
    pure function of ``gen``'s state, so a resumed run replays it; see the module docstring for what
    it means for the gradient.

    Parameters
    ----------
    n : int, >= 1, notes
    block : int, >= 1, rows per block
    window : int, >= 1, blocks whose rows are shuffled together
    gen : torch.Generator on the CPU

    Returns
    -------
    [shape=(n,)] int64, a permutation of ``0..n-1``
    """
    if n < 1 or block < 1 or window < 1:
        raise ParameterError(f"block_order: n, block and window must be >= 1, got {n}, {block}, {window}")
    n_blocks = -(-n // block)
    blocks = torch.randperm(n_blocks, generator=gen)
    rows = (blocks[:, None] * block + torch.arange(block)[None, :]).flatten()  # (n_blocks * block,)
    rows = rows[rows < n]  # the short last block, wherever it went
    parts = []
    start = 0
    for w in range(0, n_blocks, window):
        chosen = blocks[w:w + window]
        size = int((torch.clamp(n - chosen * block, max=block)).sum())
        part = rows[start:start + size]
        parts.append(part[torch.randperm(size, generator=gen)])
        start += size
    return torch.cat(parts)


def batch_positions(order: torch.Tensor | np.ndarray, b: int, *, batch_size: int,
                    part: Callable[[int], tuple[int, int]] | None = None) -> torch.Tensor | np.ndarray:
    """Positions (in the split) of batch ``b`` of ``order``, or of the part of it one process trains on:
    ``part(n)`` is that process's (start, stop) of a batch of ``n`` notes
    (:meth:`vaelib.model.distributed.Ranks.part`)."""
    idx = order[b * batch_size:(b + 1) * batch_size]
    if part is None:
        return idx
    start, stop = part(len(idx))
    return idx[start:stop]


# ----------------------------------------------------------------------------- memory or stream

def available_memory() -> int:
    """Bytes of memory this process may still take: the kernel's ``MemAvailable``, lowered to what the
    cgroup (a container, a SLURM job) leaves below its limit."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 1 << 62  # unknown: nothing to compare against, so the memory path is kept
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            avail = min(avail, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return avail


def choose_data(mode: str, *, values: int, host_available: int, processes: int = 1,
                device_available: int | None = None) -> str:
    """``"memory"`` or ``"stream"``: ``mode`` itself unless it is ``"auto"``.

    ``auto`` streams when loading the train split, ``values`` feature values, would take more than
    ``MEMORY_SHARE`` of the host memory available to each of the node's ``processes``
    (``HOST_BYTES_PER_VALUE`` bytes a value) or, on a GPU, more than that share of the device's free
    memory ``device_available`` (a float32 tensor).

    Raises
    ------
    ParameterError
        When ``mode`` is none of auto, memory, stream.
    """
    if mode not in ("auto", "memory", "stream"):
        raise ParameterError(f"train.data: {mode!r} is not one of auto, memory, stream")
    if mode != "auto":
        return mode
    if values * HOST_BYTES_PER_VALUE > MEMORY_SHARE * host_available / max(processes, 1):
        return "stream"
    if device_available is not None and values * DEVICE_BYTES_PER_VALUE > MEMORY_SHARE * device_available:
        return "stream"
    return "memory"


class MemoryRows:
    """The train split in memory: ``x`` [shape=(notes, 1, n_mels, frames)] float32 on the training device."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.n_notes = x.shape[0]

    @contextmanager
    def epoch(self, order: torch.Tensor, *, batch_size: int, first: int, n_batches: int,
              part: Callable[[int], tuple[int, int]] | None = None) -> Iterator:
        """Batches ``first..n_batches-1`` of ``order``: ``get(b)`` gives batch ``b``'s rows (this process's
        ``part``: see :func:`batch_positions`)."""
        device = self.x.device

        def get(b: int) -> torch.Tensor:
            return self.x[batch_positions(order, b, batch_size=batch_size, part=part).to(device)]

        yield _Batches(get)


class _Batches:
    def __init__(self, get) -> None:
        self.get = get


def read_npy_header(path: Path) -> tuple[int, np.dtype, tuple[int, ...]]:
    """The data offset, dtype and shape of ``.npy`` file ``path``.

    Raises
    ------
    DataError
        When it is not a ``.npy`` file (naming the path), or is Fortran-ordered.
    """
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            offset = fh.tell()
    except (ValueError, EOFError) as exc:  # numpy's words for a file that is not .npy
        raise DataError(f"{path}: not a .npy features file ({exc})") from exc
    if fortran:
        raise DataError(f"{path}: a Fortran-ordered array, the feature cache writes C order")
    return offset, np.dtype(dtype), tuple(shape)


class StreamRows:
    """The train split read from the cache's ``features.npy`` as training goes.

    Parameters
    ----------
    path : the features file, [shape=(rows, 1, n_mels, frames)] float16 (``vaelib.data.cache``)
    rows : [shape=(notes,)] int64, the file row of each train note (the split's rows, in its order)
    row_shape : (1, n_mels, frames) expected of every row
    device : where the batches go
    prefetch : int, >= 1, batches read ahead of the step
    block : int, >= 0, ``train.shuffle_block``: when > 0 whole blocks of the split are read and the
        last ``keep_blocks`` kept, for an order from :func:`block_order`; 0: each batch's rows are read
    keep_blocks : int, blocks kept (2 windows: a batch may take rows of two)
    names : [shape=(notes,)] the notes' names, for the message that refuses non-finite features
    advise : bool, tell the kernel the next batch's rows while reading this one (``POSIX_FADV_WILLNEED``)

    Raises
    ------
    DataError
        When the file is not a float16 ``.npy`` of rows ``row_shape``, or is shorter than its header
        says or than ``rows`` needs (truncated), naming the file.
    """

    def __init__(self, path: str | os.PathLike, rows: np.ndarray, *, row_shape: tuple[int, ...],
                 device: torch.device, prefetch: int, block: int = 0, keep_blocks: int = 64,
                 names: np.ndarray | None = None, advise: bool = True) -> None:
        if prefetch < 1:
            raise ParameterError(f"train.prefetch must be >= 1, got {prefetch}")
        self.path = Path(path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.n_notes = len(self.rows)
        self.device, self.prefetch, self.block, self.keep_blocks = device, prefetch, block, max(keep_blocks, 1)
        self.names, self.advise = names, advise
        offset, dtype, shape = read_npy_header(self.path)
        if dtype != np.float16:
            raise DataError(f"{self.path}: {dtype} features, the feature cache holds float16")
        if tuple(shape[1:]) != tuple(row_shape):
            raise DataError(f"{self.path}: rows of shape {list(shape[1:])}, the model reads {list(row_shape)}")
        self.offset, self.row_shape = offset, tuple(row_shape)
        self.row_bytes = int(np.prod(row_shape)) * 2
        size = self.path.stat().st_size
        expected = offset + shape[0] * self.row_bytes
        if size < expected:
            raise DataError(f"{self.path}: {size} bytes, its header says {shape[0]} rows of {self.row_bytes} bytes "
                            f"({expected} bytes): the file is truncated")
        if self.n_notes and self.rows.max() >= shape[0]:
            raise DataError(f"{self.path}: row {int(self.rows.max())} asked of a file of {shape[0]} rows")
        self.rows_in_file = shape[0]

    # --- reading

    @staticmethod
    def _runs(file_rows: np.ndarray) -> list[tuple[int, int, int]]:
        """(index in ``file_rows``, first row, rows) of each run of consecutive rows of sorted ``file_rows``."""
        starts = np.concatenate([[0], np.flatnonzero(np.diff(file_rows) != 1) + 1])
        counts = np.diff(np.concatenate([starts, [len(file_rows)]]))
        return [(int(i), int(file_rows[i]), int(c)) for i, c in zip(starts, counts) if c]

    def _advise(self, fd: int, positions: np.ndarray, kept: OrderedDict) -> None:
        """Ask the kernel to start reading the rows of split positions ``positions`` (a batch to come), so
        that reads from the disk overlap instead of waiting one after the other; nothing where the
        call does not exist. Rows already in a kept block are left out."""
        if not hasattr(os, "posix_fadvise"):
            return
        if self.block:
            wanted = [k for k in np.unique(positions // self.block).tolist() if k not in kept]
            file_rows = (self.rows[np.concatenate([np.arange(k * self.block, min((k + 1) * self.block,
                                                                                 self.n_notes)) for k in wanted])]
                         if wanted else np.empty(0, np.int64))
        else:
            file_rows = self.rows[positions]
        for _, first, count in self._runs(np.sort(file_rows)):
            os.posix_fadvise(fd, self.offset + first * self.row_bytes, count * self.row_bytes,
                             os.POSIX_FADV_WILLNEED)

    def _read_runs(self, fd: int, file_rows: np.ndarray, out: np.ndarray) -> None:
        """Read rows ``file_rows`` (sorted ascending) into ``out`` [shape=(len, *row_shape)] float16, one
        ``preadv`` per run of consecutive rows."""
        flat = out.reshape(len(file_rows), -1)
        for i, first, count in self._runs(file_rows):
            view = memoryview(flat[i:i + count]).cast("B")
            pos = self.offset + first * self.row_bytes
            while len(view):
                got = os.preadv(fd, [view], pos)
                if got <= 0:
                    raise DataError(f"{self.path}: the file ended at byte {pos} while reading rows {first}:"
                                    f"{first + count} (it is shorter than its header says: truncated while "
                                    "training?)")
                view, pos = view[got:], pos + got

    def _read_rows(self, fd: int, positions: np.ndarray) -> np.ndarray:
        """The rows of split positions ``positions``, in that order: [shape=(len, *row_shape)] float16."""
        file_rows = self.rows[positions]
        sort = np.argsort(file_rows, kind="stable")
        buf = np.empty((len(positions), *self.row_shape), dtype=np.float16)
        self._read_runs(fd, file_rows[sort], buf)
        out = np.empty_like(buf)
        out[sort] = buf
        return out

    def _block(self, fd: int, k: int, kept: OrderedDict) -> np.ndarray:
        """Block ``k`` of the split (positions ``k * block`` on), read once and kept while it is recent."""
        got = kept.get(k)
        if got is not None:
            kept.move_to_end(k)
            return got
        positions = np.arange(k * self.block, min((k + 1) * self.block, self.n_notes))
        got = self._read_rows(fd, positions)
        kept[k] = got
        while len(kept) > self.keep_blocks:
            kept.popitem(last=False)
        return got

    def _batch(self, fd: int, positions: np.ndarray, kept: OrderedDict) -> torch.Tensor:
        if self.block:
            rows = np.empty((len(positions), *self.row_shape), dtype=np.float16)
            blocks = positions // self.block
            for k in np.unique(blocks):
                mine = blocks == k
                rows[mine] = self._block(fd, int(k), kept)[positions[mine] - k * self.block]
        else:
            rows = self._read_rows(fd, positions)
        # float16 NaN and infinity have every exponent bit set: one pass of integer ops, no conversion
        nonfinite = ((rows.view(np.uint16) & 0x7C00) == 0x7C00).reshape(len(rows), -1).any(axis=1)
        if nonfinite.any():
            bad = positions[nonfinite]
            names = self.names[bad[:5]].tolist() if self.names is not None else bad[:5].tolist()
            raise TrainingError(
                f"{self.path}: the 'train' split's features hold non-finite values (NaN or infinity) in {len(bad)} "
                f"notes of a batch ({', '.join(map(str, names))}{', ...' if len(bad) > 5 else ''}), found as the "
                "batch was read; no step was taken on them; the cache is damaged: delete that folder to rebuild it")
        src = torch.from_numpy(rows)
        if self.device.type != "cpu":
            return src  # float16 over the bus, half the bytes: converted on the device (see epoch's get)
        # Converted here, off the step's path, in slices below torch's parallel grain (32768 values), so that
        # this thread converts them itself: a slice above it would start an OpenMP team of its own beside the
        # step's, and two teams on the same cores wait at their barriers.
        x = torch.empty(src.shape, dtype=torch.float32)
        step = max(1, _GRAIN // max(int(np.prod(self.row_shape)), 1))
        for i in range(0, len(src), step):
            x[i:i + step].copy_(src[i:i + step])
        return x.contiguous(memory_format=torch.channels_last)

    # --- one epoch

    @contextmanager
    def epoch(self, order: torch.Tensor, *, batch_size: int, first: int, n_batches: int,
              part: Callable[[int], tuple[int, int]] | None = None) -> Iterator:
        """Read batches ``first..n_batches-1`` of ``order`` (their ``part``) in a background thread.

        ``get(b)`` must be asked for the batches in that order. Leaving the block (at the end, on an
        error or a KeyboardInterrupt) stops the thread and waits for it; an error of the reader (a
        truncated file, non-finite features) is raised by the ``get`` of the batch it was reading.
        """
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        order_np = order.cpu().numpy()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=_POLL_S)
                    return True
                except queue.Full:
                    continue
            return False

        def read() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError as exc:
                put(("error", DataError(f"cannot read {self.path}: {exc.strerror or exc}")))
                return
            kept: OrderedDict = OrderedDict()
            try:
                for b in range(first, n_batches):
                    positions = batch_positions(order_np, b, batch_size=batch_size, part=part)
                    if self.advise and b + 1 < n_batches:
                        self._advise(fd, batch_positions(order_np, b + 1, batch_size=batch_size, part=part), kept)
                    if not put((b, self._batch(fd, positions, kept))):
                        return
            except BaseException as exc:  # handed to the consumer, which raises it
                put(("error", exc))
            finally:
                os.close(fd)

        thread = threading.Thread(target=read, name=f"vaelib-stream-{self.path.parent.name}", daemon=True)
        thread.start()

        def get(b: int) -> torch.Tensor:
            while True:
                try:
                    tag, item = q.get(timeout=_POLL_S)
                    break
                except queue.Empty:
                    if not thread.is_alive() and q.empty():
                        raise TrainingError(f"{self.path}: the stream reader stopped before batch {b}") from None
            if tag == "error":
                raise item
            assert tag == b, f"stream reader gave batch {tag}, the step asked for {b}"
            return item.to(self.device, non_blocking=True).float() if self.device.type != "cpu" else item

        try:
            yield _Batches(get)
        finally:
            stop.set()
            while thread.is_alive():  # a reader blocked on a full queue sees the stop at its next poll
                try:
                    q.get_nowait()
                except queue.Empty:
                    pass
                thread.join(timeout=_POLL_S)
