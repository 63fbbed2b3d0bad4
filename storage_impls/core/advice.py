"""How a memory-mapped method has the kernel read its map (``hdf5:advice=willneed``, ``npy-memmap:advice=random``):
the ``advice`` variant option, the ``madvise`` call behind it and the per-batch prefetch of ``willneed``.

- ``random`` (``MADV_RANDOM``): no read-ahead; each page fault reads its own page, one at a time, so a cold
  shuffled epoch waits for every 4 KiB page in turn.
- ``normal`` (``MADV_NORMAL``): the kernel's read-around on a fault (up to the device's ``read_ahead_kb``: 8 MiB on
  the development VM). A cold epoch over a dataset that fits in memory then reads it in few large reads; over a
  dataset larger than the memory it may read, evict and read again most of each window for one image.
- ``willneed``: ``random``, plus, before each batch's gather, ``POSIX_FADV_WILLNEED`` over exactly the pages of
  the batch's images (sorted, adjacent pages merged), so the kernel starts all of a batch's reads at once
  instead of one fault after another, and reads nothing the batch does not need. Costs a system call per run of
  pages, also when the pages are cached.

A read-time choice of the handle, not of the store: nothing is written, and any handle may pick another. The
default is the one the read-ahead table of docs/benchmarks.md ("Read-ahead") measured best.
"""
from __future__ import annotations

import mmap
import os

import numpy as np

from storage_impls.core.options import choice

ADVICES = ("random", "normal", "willneed")
DEFAULT_ADVICE = "normal"
OPTIONS = {"advice": choice(*ADVICES)}
PAGE = mmap.PAGESIZE


def advise(mapped: mmap.mmap, advice: str) -> None:
    """Apply ``advice`` (one of ADVICES) to the whole of ``mapped``, where the platform has ``madvise``."""
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
