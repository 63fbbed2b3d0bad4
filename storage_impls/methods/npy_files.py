"""npy-files: one ``.npy`` file per image plus a labels file: the "many small files" baseline (like
``disk`` without PNG encoding).

Layout (see checkpointed.py for the metadata file, the journal and how writes commit):
``DIR/npy-files.json`` names ``DIR/ckpt-<token>/`` holding ``<id>.npy`` per image (the store's dtype and image shape,
exactly what ``np.save`` writes), ``labels.npy`` (little-endian int64, (N,)) and, with
``checksum=True``, ``checksums.npy`` (uint64, xxh3_64 of each image seeded with its label).
``DIR/npy-files.journal`` holds single-image writes (raw pixels, CRC-checked), so that replacing
one image and its label is one atomic append, not a file write plus an O(N) labels rewrite. A fold
hard-links the old checkpoint's files of the images the journal does not replace into the new folder (committed
files are never rewritten, so both folders may share them; copied where the file system has no links) and writes
out only the journal's images: no image is read back or copied.

Reads: one ``open`` + ``readv`` + ``close`` per image, straight into the caller's array; the
header must be byte for byte the one this package writes and the file exactly header + pixels
long, else CorruptStoreError naming the file. Labels are read once, at open. Image files are
opened when read, so a reader's snapshot expires once a later commit removes its folder: its reads
then raise MissingStoreError ("open it again"), never other data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from storage_impls.core.base import ImageStore
from storage_impls.core.checkpointed import COPY_BLOCK_BYTES, Checkpoint, CheckpointedStore, Source
from storage_impls.core.codecs import Codec
from storage_impls.core.errors import CorruptStoreError
from storage_impls.core.fileio import READ_FLAGS, link_or_copy
from storage_impls.core.journal import Journal
from storage_impls.core.records import verify_checksums
from storage_impls.formats.npy import (
    CHECKSUMS,
    LABELS,
    LabelsWriter,
    check_array,
    header,
    load_labels,
    parse_header,
    write_file,
)
from storage_impls.remote.checkpointed import RemoteCheckpoint, RemoteCheckpointed


class FilesCheckpoint(Checkpoint):
    """A folder of per-image ``.npy`` files; labels and checksums in memory."""

    def __init__(self, folder: Path, meta: dict) -> None:
        super().__init__(folder, meta)
        self.labels, self.sums = load_labels(folder, self.count, self.checksum)
        self.header = header(self.dtype, self.shape)
        self._head = bytearray(len(self.header))
        self._tail = bytearray(1)  # a byte past the pixels must not exist

    def _read_file(self, image_id: int, target: np.ndarray) -> None:
        path = self.folder / f"{image_id}.npy"
        fd = os.open(path, READ_FLAGS)
        try:
            read = os.readv(fd, [self._head, target, self._tail])
        finally:
            os.close(fd)
        if read != len(self.header) + self.row or self._head != self.header:
            raise self._bad_file(path, read)

    def _bad_file(self, path: Path, read: int) -> CorruptStoreError:
        """Say what is wrong with an image file that is not what this store writes."""
        with open(path, "rb") as file:
            found_shape, found_dtype, offset = parse_header(file, path)
        check_array(path, (found_shape, found_dtype), self.dtype, self.shape)
        return CorruptStoreError(
            f"{path} is {os.stat(path).st_size} bytes with a {offset}-byte header, expected exactly "
            f"{len(self.header) + self.row} with this package's {len(self.header)}-byte header"
        )

    def read_rows(self, start: int, out: np.ndarray, labels: np.ndarray) -> None:
        for position, target in enumerate(out):
            self._read_file(start + position, target)
        labels[:] = self.labels[start : start + len(out)]
        self._verify(np.arange(start, start + len(out)), out, labels)

    def take(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        for image_id, target in zip(ids.tolist(), out):
            self._read_file(image_id, target)
        labels[:] = self.labels[ids]
        self._verify(ids, out, labels)

    def _verify(self, ids: np.ndarray, images: np.ndarray, labels: np.ndarray) -> None:
        if self.sums is not None:
            verify_checksums(ids, images, labels, self.sums[ids], self.folder)


class LinkedFold(NamedTuple):
    """A fold's source: the old checkpoint, whose files of images the journal does not replace are linked into the
    new one, and the journal, whose newest records are written out."""

    old: FilesCheckpoint
    journal: Journal


class NpyFilesStore(CheckpointedStore):
    """One ``.npy`` file per image plus ``labels.npy``, and a journal."""

    method = "npy-files"
    file_per_image = True
    POINTER, JOURNAL, FORMAT = "npy-files.json", "npy-files.journal", "storage_impls.npy_files"

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
        head = header(dtype, shape)
        written = LabelsWriter(count, checksum)
        if isinstance(source, LinkedFold):
            self._write_fold(folder, source, head, written)
        else:
            step = max(1, COPY_BLOCK_BYTES // (int(np.prod(shape)) * dtype.itemsize))
            for start in range(0, count, step):
                images, block_labels = source(start, min(count, start + step))
                for image_id, image in enumerate(images, start):
                    write_file(folder / f"{image_id}.npy", [head, image], durable=self.durable)
                written.add(start, images, block_labels)
        written.save(folder, durable=self.durable)
        return {}

    def _fold_source(self) -> LinkedFold:
        return LinkedFold(self._checkpoint, self._journal)

    def _write_fold(self, folder: Path, fold: LinkedFold, head: bytes, written: LabelsWriter) -> None:
        """Fill ``folder`` with this handle's view: unchanged files linked from the old checkpoint (no image is read
        or copied; a fold costs a link per image), the journal's newest records written out; labels and checksums
        taken over."""
        old, entries = fold.old, fold.journal.entries
        written.labels[: old.count] = old.labels
        if written.sums is not None:
            written.sums[: old.count] = old.sums
        for image_id in range(old.count):
            if image_id not in entries:
                try:
                    link_or_copy(old.folder / f"{image_id}.npy", folder / f"{image_id}.npy", durable=self.durable)
                except FileNotFoundError as error:
                    raise self._expired(Path(error.filename)) from None
        image = np.empty((1, *old.shape), old.dtype)
        for image_id, entry in entries.items():
            fold.journal.read_into(image_id, image)
            write_file(folder / f"{image_id}.npy", [head, image[0]], durable=self.durable)
            written.add(image_id, image, np.array([entry.label]))

    def _open_checkpoint(self, folder: Path, meta: dict) -> Checkpoint:
        return FilesCheckpoint(folder, meta)

    @classmethod
    def remote_reader(cls) -> type[ImageStore]:
        return RemoteNpyFilesStore


# -- from an object store (remote/): labels and checksums at open, then one GET per image, in flight at once ----
class RemoteFilesCheckpoint(RemoteCheckpoint, FilesCheckpoint):
    def stage(self, meta: dict) -> None:
        for name in (LABELS, CHECKSUMS) if meta.get("checksum") else (LABELS,):
            self.staged.download(f"{self.key}/{name}")

    def read_rows(self, start: int, out: np.ndarray, labels: np.ndarray) -> None:
        step = max(1, COPY_BLOCK_BYTES // self.row)
        for first in range(0, len(out), step):
            block = slice(first, first + step)
            with self.staged.downloaded([f"{self.key}/{start + first + row}.npy" for row in range(len(out[block]))]):
                super().read_rows(start + first, out[block], labels[block])

    def take(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        with self.staged.downloaded([f"{self.key}/{image_id}.npy" for image_id in np.unique(ids).tolist()]):
            super().take(ids, out, labels)


class RemoteNpyFilesStore(RemoteCheckpointed, NpyFilesStore):
    """An npy-files store read from an object store (read-only): one GET per image, a batch's all in flight."""

    CHECKPOINT = RemoteFilesCheckpoint
