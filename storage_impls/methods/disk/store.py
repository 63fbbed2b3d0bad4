"""Disk: one image file per image and the labels in a CSV file, as the tutorial stores them.

Files are PNG (uint8 or uint16, 1, 3 or 4 channels) unless the ``codec`` option names another
codec (codecs.py: ``disk:codec=jpeg-90``, ``webp-80``, ``webp-lossless``, ``png-9``, ``raw``). The
codec is recorded in the store: ``store_many`` writes with this handle's ``codec`` option (else the
store's codec, else PNG); ``store_single`` and reads use the store's.

Layout (see disk_format.py for each file): ``DIR/CURRENT`` names the live *generation* folder
``DIR/gen-<hex>/`` (``meta.json``: dtype, image shape, codec and count; ``labels.csv``:
``image_id,label,crc32`` rows; ``<id>.png`` or the codec's extension), what the last ``store_many``
(or compaction) wrote. ``DIR/journal`` is a write-ahead journal (journal.py) of the ``store_single``
writes made since: one record per write, holding the image's encoded bytes and its label; it names
the generation it extends.

Writes, all under the store's writer lock (locking.py):
- ``store_many`` writes a complete new generation folder, then replaces ``CURRENT`` through a
  temporary file and a rename (the commit point), then removes the journal (now stale: it names
  the old generation) and the old folder.
- ``store_single`` encodes the image and appends one journal record (O(1): two small writes; the
  last, of the commit word, is the commit point). A fresh store's first writes make only the
  journal, whose header carries the dtype, image shape and codec. Before an append, once the journal holds more
  than max(256, N) records, it is folded into a new generation that commits as ``store_many``
  does: the unchanged files are hard-linked (copied where the file system has no links), the
  journal's written out (amortised O(1) per write). ``compact()`` folds it at once, so that a listing of the
  generation folder (and ``labels.csv``) holds every write.
- A failed write (a full disk: NoSpaceError, errno ENOSPC) or a killed one leaves the store as it
  was. Temporaries (``.CURRENT.*.tmp``, ``.journal.*.tmp``) and folders ``CURRENT`` does not name
  are ignored by readers and removed by the next writer.

Reads overlay the journal on the generation: each image is read (one file, or one ``pread`` of its
record), checked against its CRC-32 and decoded straight into the caller's array, after its header
was checked against the store's dtype and shape. ``checksum`` is ignored: every image is
always checked. Damage (a damaged or missing CURRENT, meta.json, labels.csv, image file or journal)
raises CorruptStoreError or MissingStoreError naming the file; mode "a" still opens a damaged
store, so that ``store_many`` can replace it.

Concurrency and isolation: one writer at a time; any number of readers, never blocked. A handle
reads a snapshot: the generation ``CURRENT`` named when it opened and the journal records then
committed (it keeps the journal open). Image files are opened when read, so once a later
``store_many`` or compaction removes the handle's generation its reads raise MissingStoreError
("open it again"), never other data. Before each write the handle catches up with what other
writers did (``_refresh``).

Durability: by default nothing is fsynced. ``durable=True`` fsyncs every file of a new generation,
the folder, the new ``CURRENT`` and the directory after its rename, and fdatasyncs each journal
record before and after its commit word.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from storage_impls.core.base import BatchReader, ImageStore
from storage_impls.core.codecs import Codec, Raw
from storage_impls.core.encoded import EncodedStore, decode
from storage_impls.core.errors import CorruptStoreError, MissingStoreError, StoreError, is_no_space, no_space_error
from storage_impls.core.fileio import fsync_path, link_or_copy
from storage_impls.core.journal import Journal
from storage_impls.core.journaled import JournaledStore
from storage_impls.core.records import is_temporary, write_file_atomic
from storage_impls.methods.disk.format import (
    GENERATION,
    JOURNAL,
    LABELS,
    META,
    POINTER,
    Generation,
    format_labels,
    format_meta,
    image_crc,
    read_pointer,
)

Fill = Callable[
    [Generation | None, str], tuple[np.ndarray, np.ndarray]
]  # (old generation, new folder/) -> labels, crcs


class DiskStore(JournaledStore, EncodedStore):
    """One image file per image plus ``labels.csv``, in generation folders, plus a journal of single writes
    (core/journaled.py's protocol: a generation is its checkpoint)."""

    method = "disk"
    file_per_image = True
    POINTER, JOURNAL, JOURNAL_FIRST = POINTER, JOURNAL, True
    DEFAULT_CODEC = "png"  # also of journals written before codecs

    @classmethod
    def library_reader(cls, directory: Path, image_shape: tuple[int, ...]) -> tuple[str, BatchReader]:
        from storage_impls.methods.disk.reference import pillow_reader

        return "Pillow alone, same files", pillow_reader(directory)

    # -- the handle's view ------------------------------------------------------------------------
    def _open_current(self) -> Generation | None:
        name = read_pointer(self.directory)
        try:
            return Generation(self.directory, name) if name else None
        except (FileNotFoundError, CorruptStoreError) as error:
            raise self._open_failed(error, self._current() == name) from None

    def _open_consistent(self) -> tuple[Generation | None, Journal]:
        generation, journal = super()._open_consistent()
        if generation is None and journal.image_shape is None and self._journal_path.exists():
            journal.close()
            raise MissingStoreError(
                f"disk store {self.directory}: {POINTER} is missing but {JOURNAL} extends a generation"
            )
        return generation, journal

    def _is_current(self, generation: Generation | None) -> bool:
        return self._current() == (generation.name if generation is not None else None)

    def _current(self) -> str | None:
        """The generation CURRENT names now (None if there is none or it is unreadable)."""
        try:
            return read_pointer(self.directory)
        except CorruptStoreError:
            return None

    def _remove_stale(self) -> None:
        """Remove temporaries and generation folders CURRENT does not name (left by killed or replaced writes);
        without a CURRENT, folders stay (a deleted CURRENT must not cost the images) until a commit."""
        live = self._checkpoint.name if self._checkpoint else None
        for entry in os.scandir(self.directory):
            if is_temporary(entry.name) or (live and GENERATION.fullmatch(entry.name) and entry.name != live):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)

    def _record(self, image: np.ndarray, codec: Codec) -> tuple[bytes, str]:
        return codec.encode(image), codec.spec  # the file's bytes, the codec named even when raw

    # -- writes ---------------------------------------------------------------------------------
    def _replace_all(self, images: np.ndarray, labels: np.ndarray) -> None:
        codec = self.writing_codec(replacing=True)

        def fill(_old: Generation | None, folder: str) -> tuple[np.ndarray, np.ndarray]:
            crcs = np.empty(len(images), np.uint32)
            for image_id, image in enumerate(images):
                encoded = codec.encode(image)
                crcs[image_id] = image_crc(encoded, int(labels[image_id]))
                self._write_file(f"{folder}{image_id}.{codec.extension}", encoded)
            return labels.copy(), crcs  # the caller's array may change later

        self._commit(images.dtype, images.shape[1:], codec, fill)

    def _fold(self) -> None:
        """Commit this handle's view as a new generation, if the journal holds any records."""
        if self._journal.entries:
            self.upkeeps += 1  # a fold: the periodic work single writes amortise
            self._commit(self.image_dtype, self.image_shape, self.codec, self._fold_journal)

    def _fold_journal(self, old: Generation | None, folder: str) -> tuple[np.ndarray, np.ndarray]:
        """Fill a new generation with this handle's view: the old generation's files linked, the journal's written."""
        entries, first, extension = self._journal.entries, old.count if old else 0, self.codec.extension
        labels, crcs = np.empty(self._count, np.int64), np.empty(self._count, np.uint32)
        if old:
            labels[:first], crcs[:first] = old.labels, old.crcs
            for image_id in range(first):
                if image_id not in entries:
                    self._link(old.file(image_id), f"{folder}{image_id}.{extension}")
        for image_id, entry in entries.items():
            encoded = self._journal.read(image_id)
            labels[image_id], crcs[image_id] = entry.label, image_crc(encoded, entry.label)
            self._write_file(f"{folder}{image_id}.{extension}", encoded)
        return labels, crcs

    def _link(self, source: str, target: str) -> None:
        """Give ``target`` the contents of the unchanging file ``source`` (a hard link, else a copy)."""
        try:
            link_or_copy(source, target, durable=self.durable)
        except FileNotFoundError:
            raise MissingStoreError(f"{source} is missing: the store is damaged (store_many replaces it)") from None

    def _commit(self, dtype: np.dtype, shape: tuple[int, ...], codec: Codec, fill: Fill) -> None:
        """Write a new generation aside, then point CURRENT at it (the commit); drop the stale journal and folders."""
        name = f"gen-{uuid.uuid4().hex}"
        folder = self.directory / name
        try:
            folder.mkdir()
            labels, crcs = fill(self._checkpoint, f"{folder}/")
            self._write_file(folder / LABELS, format_labels(labels, crcs))
            self._write_file(folder / META, format_meta(dtype, shape, codec, len(labels)))
            if self.durable:
                fsync_path(folder)
            if (self.directory / POINTER).is_dir():  # damage that a rename cannot replace
                shutil.rmtree(self.directory / POINTER)
            write_file_atomic(self.directory / POINTER, name.encode(), durable=self.durable)  # the commit
        except BaseException as error:
            if self._current() != name:  # not committed (a durable fsync of the directory may fail after the rename)
                shutil.rmtree(folder, ignore_errors=True)
            if is_no_space(error) and not isinstance(error, StoreError):
                raise no_space_error(self.directory, error) from error
            raise
        self._switch(Generation(self.directory, name, (dtype, tuple(shape), codec, labels, crcs)))
        self._remove_stale()  # the old generation

    def _write_file(self, path: str | Path, data: bytes | memoryview) -> None:
        """Write a new file of a generation not yet live (no temporary needed); fsync it when durable."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    # -- reads: each image decoded straight into the caller's array ---------------------------------
    def _decode_into(self, image_id: int, target: np.ndarray) -> int:
        """Decode image ``image_id`` into ``target`` (its (H, W[, C]) slot); return its label."""
        if image_id not in self._journal.entries:
            generation = self._checkpoint
            if isinstance(generation.codec, Raw) and generation.read_raw_into(image_id, target):
                return int(generation.labels[image_id])
            decode(
                generation.codec,
                generation.encoded(image_id),
                target,
                f"{generation.file(image_id)} (image {image_id})",
            )
            return int(generation.labels[image_id])
        return self._journal.decode_into(image_id, self.codec, target)

    def _get(self, image_id: int) -> tuple[np.ndarray, int]:
        image = np.empty(self.image_shape, self.image_dtype)
        label = self._decode_into(image_id, image)
        return image, label

    def _read_into(self, out: np.ndarray, labels: np.ndarray) -> None:
        for image_id in range(len(out)):
            labels[image_id] = self._decode_into(image_id, out[image_id])

    def _read_batch_into(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        for position, image_id in enumerate(ids.tolist()):
            labels[position] = self._decode_into(image_id, out[position])

    @classmethod
    def remote_reader(cls) -> type[ImageStore]:
        from storage_impls.methods.disk.remote import RemoteDiskStore  # it imports this module

        return RemoteDiskStore
