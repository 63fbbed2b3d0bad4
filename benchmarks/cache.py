"""Cold page cache without root: drop a store's files from the page cache and measure what stays; and write
rounds that all start alike (``start_write_round``).

``evict(directory)`` writes out the dirty pages of every file below ``directory`` (dirty pages cannot be
dropped) with ``sync_file_range``, asks the kernel to drop its cached pages with ``posix_fadvise(POSIX_FADV_DONTNEED)``,
then counts the pages still resident with ``mincore`` on a read-only map of the file. ``sync_file_range`` writes the
pages and waits for them without the journal commit and device cache flush of ``fsync``/``fdatasync``, which durability
needs and eviction does not: those cost 60-300 µs per file even on clean files on the development VM, seconds per round
for 100 000 PNGs. Only clean pages that no process has mapped are dropped, so every handle on the store (and any memory
map) must be closed first.

On a virtual machine this empties the guest's cache only: the host may still cache the disk image,
so a "cold" read can be served from the host's memory and look faster than a real cold disk.
Linux only (macOS has neither ``posix_fadvise`` nor ``sync_file_range``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from storage_impls import ImageStore
from storage_impls.registry import parse_spec

MAX_RESIDENT_FRACTION = 0.05  # a cold round may start with at most this share of the store's pages cached,
OPEN_ALLOWANCE_BYTES = 8 << 20  # or this much, what opening a store may read (headers, indexes, readahead around them)
PAGE = mmap.PAGESIZE
_PROT_READ, _MAP_SHARED = 0x1, 0x01
_MAP_FAILED = ctypes.c_void_p(-1).value
READ_CACHE_SHARE = 16  # a shuffled cell's reader may keep this fraction (1/16) of the store in a cache of its own
REMOVE_MAX_FILES = 100  # start_write_round keeps a previous round's output of more files per image than this
_WRITE_AND_WAIT = 0x1 | 0x2 | 0x4  # SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER


def start_write_round(previous: Path | None, images: int, file_per_image: bool) -> None:
    """Remove the previous round's output unless it is one file per image of more than REMOVE_MAX_FILES images, then
    write back every dirty page, so that each write round starts as every other one does. Measured here (157 MB
    written with one pwrite): 45-55 ms into page cache that the previous round's removal freed, 250-350 ms when
    earlier rounds' files stay (new pages: on this VM the first touch of guest memory is slow) and, once dirty pages
    pass the kernel's threshold, the disk's pace. Many files stay until the cell ends: creating 20 000 files right
    after deleting 20 000 took 8-11 s here, against 0.6-1.7 s with the old ones kept. The choice depends on the
    round's images and the layout only, so that a cell (conftest.FreshStores) and its write floor (test_floors.py)
    start their rounds alike whatever extra files the method writes."""
    if previous is not None and previous.exists() and not (file_per_image and images > REMOVE_MAX_FILES):
        if previous.is_dir():
            shutil.rmtree(previous)
        else:
            previous.unlink()
    os.sync()


def supported() -> str | None:
    """None when cold rounds can run here, else why not."""
    if not hasattr(os, "posix_fadvise") or not hasattr(_libc(), "sync_file_range"):
        return "cold-cache rounds need posix_fadvise and sync_file_range (Linux)"
    return None


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    if hasattr(libc, "sync_file_range"):
        libc.sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return libc


def store_files(directory: Path) -> Iterator[Path]:
    """Every regular file below ``directory`` (``directory`` itself when it is a file)."""
    if Path(directory).is_file():
        yield Path(directory)
        return
    for root, _dirs, files in os.walk(directory):
        for name in files:
            yield Path(root, name)


def _resident(fd: int, size: int, libc: ctypes.CDLL) -> tuple[int, int]:
    """(pages in the page cache, pages) of the open file ``fd`` of ``size`` bytes, by ``mincore`` on a read-only map."""
    pages = (size + PAGE - 1) // PAGE
    if not pages:
        return 0, 0
    address = libc.mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
    if address in (None, _MAP_FAILED):
        raise OSError(ctypes.get_errno(), f"mmap failed: {os.strerror(ctypes.get_errno())}")
    try:
        vector = (ctypes.c_ubyte * pages)()
        if libc.mincore(address, size, vector) != 0:
            raise OSError(ctypes.get_errno(), f"mincore failed: {os.strerror(ctypes.get_errno())}")
        return int(np.count_nonzero(np.frombuffer(vector, np.uint8) & 1)), pages
    finally:
        libc.munmap(address, size)


def _fraction(directory: Path, drop: bool) -> float:
    """Share of the pages of every file below ``directory`` in the page cache, after dropping each file first if
    ``drop``."""
    libc = _libc()
    resident = total = 0
    for path in store_files(directory):
        fd = os.open(path, os.O_RDONLY)
        try:
            if drop:
                if libc.sync_file_range(fd, 0, 0, _WRITE_AND_WAIT) != 0:
                    raise OSError(
                        ctypes.get_errno(), f"sync_file_range of {path} failed: {os.strerror(ctypes.get_errno())}"
                    )
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            cached, pages = _resident(fd, os.fstat(fd).st_size, libc)
        finally:
            os.close(fd)
        resident, total = resident + cached, total + pages
    return resident / total if total else 0.0


def resident_fraction(directory: Path) -> float:
    """Share of the pages of every file below ``directory`` that the page cache holds (0 for no pages)."""
    return _fraction(directory, drop=False)


def too_resident(directory: Path, fraction: float) -> str | None:
    """Why a cold round cannot start with ``fraction`` of the store below ``directory`` cached, once its readers have
    opened it (more than MAX_RESIDENT_FRACTION of its pages and more than OPEN_ALLOWANCE_BYTES); None if it can.
    Measured on 10 000-image 32x32x3 stores here: opening cached 4 KB (npz) to 170 KB, and 4.8 MB (12 %) for lmdb,
    whose open reads its first and last records with the kernel's readahead on."""
    size = sum(path.stat().st_size for path in store_files(directory))
    if fraction > MAX_RESIDENT_FRACTION and fraction * size > OPEN_ALLOWANCE_BYTES:
        return (
            f"{fraction:.1%} of the store ({fraction * size / 1e6:.1f} MB) was in the page cache once it had been "
            f"dropped and opened again (at most {MAX_RESIDENT_FRACTION:.0%} or {OPEN_ALLOWANCE_BYTES >> 20} MiB "
            "allowed)"
        )
    return None


def evict(directory: Path) -> float:
    """Drop every file below ``directory`` from the page cache; returns the share of its pages still resident.

    Close every handle on the store first: pages that a process maps stay cached.
    """
    return _fraction(directory, drop=True)


def read_cache_options(store_class: type[ImageStore], method: str, directory: Path) -> dict[str, int]:
    """Constructor options that keep a reading handle's own cache of the store's data (``read_cache_option``:
    RocksDB's block cache, 32 MiB by default, which holds a whole 10 000-image store) at 1/READ_CACHE_SHARE of the
    store, so that a shuffled epoch is read through the page cache as every other method's is; none when the method
    keeps no such cache or the method spec sets it (``rocksdb:block_cache=1GiB``: the reader asked for it)."""
    option = store_class.read_cache_option
    if option is None or option in parse_spec(method)[1]:
        return {}
    return {option: sum(path.stat().st_size for path in store_files(directory)) // READ_CACHE_SHARE}
