"""npy-memmap: every image in one ``.npy`` file, read through a memory map: the floor that every
single-file method is compared against.

Layout (see checkpointed.py for the metadata file, the journal and how writes commit):
``DIR/npy-memmap.json`` names ``DIR/ckpt-<token>/`` holding ``images.npy`` (the store's dtype, (N, *image shape), C
order), ``labels.npy`` (little-endian int64, (N,)) and, with ``checksum=True``, ``checksums.npy``
(uint64, xxh3_64 of each image seeded with its label); ``DIR/npy-memmap.journal`` holds single-image
writes. Every file is a plain ``.npy``: ``np.load(path, mmap_mode="r")`` reads it.

``store_many`` writes ``images.npy`` (the ``.npy`` header, then ``pwrite`` of 64 MiB blocks) in the
checkpoint's temporary folder, which is renamed into place before the metadata switches to it. Not
through a writable ``open_memmap``: its page faults made store_many 5x slower (215 ms against 43 ms
for 157 MB), and a full disk raises NoSpaceError from ``pwrite`` where a map would kill the process
with SIGBUS.

Reads: the handle keeps ``images.npy`` open and mapped (a snapshot: a later commit renames other
files into place and cannot change it), ``labels.npy`` in memory. ``read_many`` copies with one
``preadv`` (sequential, no page faults), ``read_batch`` gathers rows with ``numpy.take`` over the map,
advised as ``npy-memmap:advice=auto|random|normal|willneed`` says (core/advice.py). Files are checked at open:
exact header, exact size (a file cut short is refused before it is mapped); a file truncated *while* a
handle has it mapped can still kill that process with SIGBUS, as with any memory map.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from storage_impls.core.advice import DEFAULT_ADVICE, advise, close_map, gather, resolve
from storage_impls.core.advice import OPTIONS as ADVICE_OPTIONS
from storage_impls.core.base import Mode
from storage_impls.core.checkpointed import COPY_BLOCK_BYTES, Checkpoint, CheckpointedStore, Source
from storage_impls.core.codecs import Codec
from storage_impls.core.fileio import READ_FLAGS
from storage_impls.core.journal import pwrite_all
from storage_impls.core.options import check_options
from storage_impls.core.records import verify_checksums
from storage_impls.formats.npy import (
    LabelsWriter,
    check_array,
    check_size,
    header,
    load_labels,
    parse_header,
    pread_into,
)

IMAGES = "images.npy"


class MemmapCheckpoint(Checkpoint):
    """``images.npy`` open and mapped; labels and checksums in memory."""

    def __init__(self, folder: Path, meta: dict, advice: str = DEFAULT_ADVICE) -> None:
        super().__init__(folder, meta)
        self.labels, self.sums = load_labels(folder, self.count, self.checksum)
        self.path = folder / IMAGES
        self._fd = os.open(self.path, READ_FLAGS)
        try:
            with os.fdopen(os.dup(self._fd), "rb") as file:
                shape, dtype, self._offset = parse_header(file, self.path)
            check_array(self.path, (shape, dtype), self.dtype, (self.count, *self.shape))
            check_size(self.path, os.fstat(self._fd).st_size, self._offset + self.count * self.row)
            self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        except BaseException:
            os.close(self._fd)
            raise
        advice = resolve(advice, len(self._map))
        advise(self._map, advice)
        self._prefetch = advice == "willneed"
        self.pixels = np.frombuffer(self._map, self.dtype, self.count * int(np.prod(self.shape)), self._offset).reshape(
            self.count, *self.shape
        )

    def read_rows(self, start: int, out: np.ndarray, labels: np.ndarray) -> None:
        pread_into(self._fd, out, self._offset + start * self.row, self.path)
        labels[:] = self.labels[start : start + len(out)]
        self._verify(np.arange(start, start + len(out)), out, labels)

    def take(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        gather(self.pixels, ids, out, self._fd, self._offset, self.row, self._prefetch)
        np.take(self.labels, ids, out=labels, mode="clip")
        self._verify(ids, out, labels)

    def _verify(self, ids: np.ndarray, images: np.ndarray, labels: np.ndarray) -> None:
        if self.sums is not None:
            verify_checksums(ids, images, labels, self.sums[ids], self.path)

    def close(self) -> None:
        self.pixels = None
        close_map(self._map, self._fd)


class NpyMemmapStore(CheckpointedStore):
    """All images in one memory-mapped ``.npy`` file, labels in another, plus a journal."""

    method = "npy-memmap"
    reads_through_map = True
    POINTER, JOURNAL, FORMAT = "npy-memmap.json", "npy-memmap.journal", "storage_impls.npy_memmap"
    OPTIONS = ADVICE_OPTIONS

    def __init__(
        self, directory: str | os.PathLike, mode: Mode = "a", *, advice: str | None = None, **options: object
    ) -> None:
        self._advice = check_options(self.method, ADVICE_OPTIONS, {"advice": advice}).get("advice", DEFAULT_ADVICE)
        super().__init__(directory, mode, **options)

    def _write_checkpoint(
        self,
        folder: Path,
        dtype: np.dtype,
        shape: tuple[int, ...],
        count: int,
        source: Source,
        checksum: bool,
        codec: Codec,
    ) -> dict:
        path = folder / IMAGES
        head, row = header(dtype, (count, *shape)), int(np.prod(shape)) * dtype.itemsize
        written = LabelsWriter(count, checksum)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:  # pwrite, not a writable map: page faults made it 5x slower, and a full disk fails here, not as SIGBUS
            pwrite_all(fd, head, 0)
            step = max(1, COPY_BLOCK_BYTES // max(1, row))
            for start in range(0, count, step):
                block, block_labels = source(start, min(count, start + step))
                pwrite_all(fd, np.ascontiguousarray(block), len(head) + start * row)
                written.add(start, block, block_labels)
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        written.save(folder, durable=self.durable)
        return {}

    def _open_checkpoint(self, folder: Path, meta: dict) -> Checkpoint:
        return MemmapCheckpoint(folder, meta, self._advice)
