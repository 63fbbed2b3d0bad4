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
  than max(256, N/16) records, it is folded into a new generation that commits as ``store_many``
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

import errno
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from storage_impls.core.base import BatchReader, ImageStore
from storage_impls.core.codecs import Codec
from storage_impls.core.encoded import EncodedStore, decode
from storage_impls.core.errors import (
    CorruptStoreError,
    MissingStoreError,
    StoreError,
    StoreLockedError,
    damaged,
    is_no_space,
    no_space_error,
)
from storage_impls.core.fileio import fsync_path
from storage_impls.core.journal import Journal, compaction_cycle
from storage_impls.core.records import is_temporary, refuse_foreign, write_file_atomic
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

OPEN_TRIES = 100  # a reader opens again when a writer commits while it opens
NO_LINK_ERRNOS = (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)
Fill = Callable[
    [Generation | None, str], tuple[np.ndarray, np.ndarray]
]  # (old generation, new folder/) -> labels, crcs


class DiskStore(EncodedStore):
    """One image file per image plus ``labels.csv``, in generation folders, plus a journal of single writes."""

    method = "disk"
    file_per_image = appends_single_writes = True  # a journal record

    @classmethod
    def library_reader(cls, directory: Path, image_shape: tuple[int, ...]) -> tuple[str, BatchReader]:
        from storage_impls.methods.disk.reference import pillow_reader

        return "Pillow alone, same files", pillow_reader(directory)

    DEFAULT_CODEC = "png"

    def _open(self) -> None:
        self._journal_path = self.directory / JOURNAL
        self._generation: Generation | None = None
        self._journal: Journal | None = None
        self._damage: StoreError | None = None
        self._count = 0
        if not (self.directory / POINTER).exists():
            refuse_foreign(self.directory, self.method)
            if self.mode == "r" and not self._journal_path.exists():
                raise MissingStoreError(f"no disk store at {self.directory}: {POINTER} does not exist")
        self._load()

    # -- the handle's view ------------------------------------------------------------------------
    def _load(self) -> None:
        """Read the current generation and the journal extending it. A damaged store raises in mode "r";
        in mode "a" the damage is kept and raised by reads, so that store_many can repair it."""
        self._release()
        try:
            self._generation, self._journal = self._open_consistent()
            self._count = self._journal.next_id(self._generation.count if self._generation else 0)
            self._check_journal()
        except (CorruptStoreError, MissingStoreError) as error:
            self._release()
            if self.mode == "r":
                raise
            self._damage = error

    def _open_consistent(self) -> tuple[Generation | None, Journal]:
        """The generation and its journal as they were at one moment (no commit in between)."""
        for _ in range(OPEN_TRIES):
            name = read_pointer(self.directory)
            try:
                generation = Generation(self.directory, name) if name else None
            except FileNotFoundError as error:
                if self._current() != name:
                    continue  # a writer committed and removed the folder meanwhile
                raise MissingStoreError(f"disk store {self.directory}: {error.filename} is missing") from None
            journal = Journal(self._journal_path, name or "")
            # no journal extends this generation: consistent only if it is still the current one
            if journal.image_shape is not None or self._current() == name:
                if name is None and journal.image_shape is None and self._journal_path.exists():
                    journal.close()
                    raise MissingStoreError(
                        f"disk store {self.directory}: {POINTER} is missing but {JOURNAL} extends a generation"
                    )
                return generation, journal
            journal.close()
        raise StoreLockedError(f"{self.directory} changed under every one of {OPEN_TRIES} attempts to open it")

    def _current(self) -> str | None:
        """The generation CURRENT names now (None if there is none or it is unreadable)."""
        try:
            return read_pointer(self.directory)
        except CorruptStoreError:
            return None

    def _check_journal(self) -> None:
        """The journal must fit the generation: same shape, appended ids without gaps."""
        journal, generation = self._journal, self._generation
        if not journal.entries:
            return
        if generation and (journal.image_dtype, journal.image_shape, journal.codec or self.DEFAULT_CODEC) != (
            generation.dtype,
            generation.shape,
            generation.codec.spec,
        ):
            raise CorruptStoreError(
                f"{journal.path}: images of {journal.image_dtype} {journal.image_shape} in {journal.codec}, "
                f"but {generation.path}'s are {generation.dtype} {generation.shape} in {generation.codec.spec}"
            )
        first = generation.count if generation else 0
        if sum(image_id >= first for image_id in journal.entries) != self._count - first:
            raise CorruptStoreError(f"{journal.path}: records that leave a gap in the ids")

    def _refresh(self) -> None:
        """Under the writer lock: catch up with other writers, then remove what killed writes left."""
        current = self._current()
        if self._damage or current != (self._generation.name if self._generation else None):
            self._load()
        else:
            try:
                if self._journal.refresh():
                    self._count = self._journal.next_id(self._generation.count if self._generation else 0)
                    self._check_journal()
            except CorruptStoreError as error:
                self._release()
                self._damage = error
        if not self._damage:  # a damaged store's files stay until store_many replaces them
            self._remove_stale()

    def _remove_stale(self) -> None:
        """Remove temporaries and generation folders CURRENT does not name (left by killed or replaced writes);
        without a CURRENT, folders stay (a deleted CURRENT must not cost the images) until a commit."""
        live = self._generation.name if self._generation else None
        for entry in os.scandir(self.directory):
            if is_temporary(entry.name) or (live and GENERATION.fullmatch(entry.name) and entry.name != live):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)

    def _release(self) -> None:
        if self._journal is not None:
            self._journal.close()
        self._generation, self._journal, self._damage, self._count = None, None, None, 0

    def __len__(self) -> int:
        if self._damage:
            raise damaged(self._damage)
        return self._count

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        if self._generation:
            return self._generation.shape
        return self._journal.image_shape if self._journal else None

    @property
    def image_dtype(self) -> np.dtype | None:
        if self._generation:
            return self._generation.dtype
        return self._journal.image_dtype if self._journal else None

    @property
    def recorded_codec(self) -> str | None:
        if self._generation:
            return self._generation.codec.spec
        if self._journal and self._journal.image_shape is not None:
            return self._journal.codec or self.DEFAULT_CODEC  # journals written before codecs: png
        return None

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

    def single_write_cycle(self) -> int:
        return compaction_cycle(self._generation.count if self._generation else 0)

    def _put(self, image: np.ndarray, image_id: int, label: int) -> None:
        codec = self.codec
        encoded = codec.encode(image)
        if self._journal.needs_compaction(self._generation.count if self._generation else 0):
            self._fold()
        self._journal.append(image_id, label, encoded, image.dtype, image.shape, durable=self.durable, codec=codec.spec)
        self._count = max(self._count, image_id + 1)

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
        """Give ``target`` the contents of the unchanging file ``source``: a hard link, else a copy."""
        try:
            os.link(source, target)
        except FileNotFoundError:
            raise MissingStoreError(f"{source} is missing: the store is damaged (store_many replaces it)") from None
        except OSError as error:
            if error.errno not in NO_LINK_ERRNOS:
                raise
            shutil.copyfile(source, target)
            if self.durable:
                fsync_path(Path(target))

    def _commit(self, dtype: np.dtype, shape: tuple[int, ...], codec: Codec, fill: Fill) -> None:
        """Write a new generation aside, then point CURRENT at it (the commit); drop the stale journal and folders."""
        name = f"gen-{uuid.uuid4().hex}"
        folder = self.directory / name
        try:
            folder.mkdir()
            labels, crcs = fill(self._generation, f"{folder}/")
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
        self._release()
        self._journal_path.unlink(missing_ok=True)  # stale: it names the old generation
        self._generation = Generation(self.directory, name, (dtype, tuple(shape), codec, labels, crcs))
        self._journal, self._count = Journal(self._journal_path, name), len(labels)
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
            generation = self._generation
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

    def _close(self) -> None:
        self._release()

    @classmethod
    def remote_reader(cls) -> type[ImageStore]:
        from storage_impls.methods.disk.remote import RemoteDiskStore  # it imports this module

        return RemoteDiskStore
