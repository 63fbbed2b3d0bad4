"""How a memory-mapped method has the kernel read its map (``hdf5:advice=willneed``, ``npy-memmap:advice=random``):
the ``advice`` variant option, the ``madvise`` call behind it and the per-batch prefetch of ``willneed``.

- ``random`` (``MADV_RANDOM``): no read-ahead; each page fault reads its own page, one at a time, so a cold
  shuffled epoch waits for every 4 KiB page in turn.
- ``normal`` (``MADV_NORMAL``): the kernel's read-around on a fault (up to the device's ``read_ahead_kb``: 8 MiB on
  the development VM). A cold epoch over a dataset that fits in memory then reads it in few large reads; over a
  dataset larger than the memory it may read, evict and read again most of each window for one image.
- ``auto`` (the default): ``normal`` when the file fits in half the memory this process may use (the smaller of
  the machine's ``MemAvailable`` and its memory cgroup's limit less its usage, read when the store opens),
  else ``willneed``: each regime gets what the read-ahead table of docs/benchmarks.md measured best there.
- ``willneed``: ``random``, plus, before each batch's gather, ``POSIX_FADV_WILLNEED`` over exactly the pages of
  the batch's images (sorted, adjacent pages merged), so the kernel starts a batch's reads at once instead of
  one fault after another, and reads nothing the batch does not need. A batch larger than WINDOW_BYTES goes in
  windows: the next one is prefetched while the current one is gathered, so that a batch larger than the
  memory left for the cache is not read, evicted and read again. Costs a system call per run of
  pages, also when the pages are cached.

A read-time choice of the handle, not of the store: nothing is written, and any handle may pick another.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

import numpy as np

from storage_impls.core.options import choice

ADVICES = ("auto", "random", "normal", "willneed")
DEFAULT_ADVICE = "auto"
FITS_SHARE = 0.5  # auto: a file fits when it takes at most this share of the memory the process may use
WINDOW_BYTES = 4 << 20  # willneed: a batch is prefetched and gathered this many bytes at a time
OPTIONS = {"advice": choice(*ADVICES)}
PAGE = mmap.PAGESIZE


def resolve(advice: str, size: int) -> str:
    """The advice to apply to a file of ``size`` bytes: ``auto`` made ``normal`` or ``willneed``, others as given."""
    if advice != "auto":
        return advice
    return "normal" if fits_in_memory(size) else "willneed"


def fits_in_memory(size: int) -> bool:
    """Whether ``size`` bytes take at most FITS_SHARE of the memory this process may use; True where unknown."""
    available = _available_memory()
    return available is None or size <= FITS_SHARE * available


def _available_memory() -> int | None:
    """The smaller of MemAvailable and this process's memory cgroup's room (limit less usage), None where unknown."""
    room = []
    try:
        with open("/proc/meminfo") as meminfo:
            room += [int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")]
        with open("/proc/self/cgroup") as cgroups:
            lines = [line.rstrip("\n").split(":", 2) for line in cgroups]
    except OSError:
        return min(room, default=None)
    for _, controllers, path in lines:
        if controllers == "":  # cgroup v2
            folder, names = f"/sys/fs/cgroup{path}", ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):  # cgroup v1
            folder, names = f"/sys/fs/cgroup/memory{path}", ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        try:
            limit, usage = (open(f"{folder}/{name}").read().strip() for name in names)
            if limit.isdigit():
                room.append(max(0, int(limit) - int(usage)))
        except (OSError, ValueError):
            continue
    return min(room, default=None)


def advise(mapped: mmap.mmap, advice: str) -> None:
    """Apply ``advice`` (random, normal or willneed: ``resolve`` d) to the whole of ``mapped``, where the platform
    has ``madvise``."""
    if hasattr(mapped, "madvise"):
        mapped.madvise(mmap.MADV_NORMAL if advice == "normal" else mmap.MADV_RANDOM)


def prefetch(fd: int, starts: np.ndarray, stops: np.ndarray) -> None:
    """Ask the kernel to start reading bytes ``starts[i]:stops[i]`` of the file ``fd`` for every i, one
    ``POSIX_FADV_WILLNEED`` per run of adjacent pages (where the platform has ``posix_fadvise``)."""
    if not hasattr(os, "posix_fadvise") or not len(starts):
        return
    order = np.argsort(starts, kind="stable")
    first, last = np.asarray(starts)[order] // PAGE, (np.asarray(stops)[order] - 1) // PAGE
    last = np.maximum.accumulate(last)
    breaks = np.flatnonzero(first[1:] > last[:-1] + 1) + 1  # where a run of pages ends
    for begin, end in zip(first[np.r_[0, breaks]].tolist(), last[np.r_[breaks - 1, len(last) - 1]].tolist()):
        os.posix_fadvise(fd, begin * PAGE, (end - begin + 1) * PAGE, os.POSIX_FADV_WILLNEED)


def windows(fd: int, starts: np.ndarray, stops: np.ndarray) -> Iterator[slice]:
    """Slices of the batch (positions in ``starts``/``stops``) of at most WINDOW_BYTES each (at least one image),
    each yielded once it and the next one are prefetched, for the caller to gather."""
    sizes = np.cumsum(np.asarray(stops) - np.asarray(starts))
    ends = (
        np.unique(np.r_[np.searchsorted(sizes, np.arange(WINDOW_BYTES, sizes[-1], WINDOW_BYTES), "right"), len(sizes)])
        if len(sizes)
        else np.array([], np.int64)
    )
    parts = [slice(begin, end) for begin, end in zip(np.r_[0, ends[:-1]].tolist(), ends.tolist()) if end > begin]
    for index, part in enumerate(parts):
        if index == 0:
            prefetch(fd, starts[part], stops[part])
        if index + 1 < len(parts):
            following = parts[index + 1]
            prefetch(fd, starts[following], stops[following])
        yield part


def gather(
    pixels: np.ndarray, ids: np.ndarray, out: np.ndarray, fd: int, offset: int, row: int, prefetch: bool
) -> None:
    """Rows ``ids`` (valid, any order) of ``pixels``, a map of ``fd`` whose row i is ``row`` bytes at ``offset + i *
    row``, into ``out``; with ``prefetch`` (willneed) window by window, each prefetched ahead."""
    if prefetch:
        for part in windows(fd, offset + ids * row, offset + (ids + 1) * row):
            np.take(pixels, ids[part], axis=0, out=out[part], mode="clip")
    else:
        np.take(pixels, ids, axis=0, out=out, mode="clip")  # "clip": no buffering of out; ids are valid


def close_map(mapped: mmap.mmap, fd: int) -> None:
    """Unmap ``mapped`` and close ``fd``; while a caller still holds a view of the map, it stays until the view goes."""
    try:
        mapped.close()
    except BufferError:
        pass
    os.close(fd)
