"""The shape shared by the checkpointed methods (npy-files, npz, npy-memmap, webdataset, parquet, zarr): an
immutable *checkpoint* (a folder of files written by ``store_many``) named by a metadata file, plus a
write-ahead journal (journal.py) of single-image writes.

Layout: ``DIR/<POINTER>`` (records.py metadata: format, version, ``token``, ``dtype``, ``image_shape``,
``count``, ``checksum``, and what the method adds) names the live checkpoint folder ``DIR/ckpt-<token>/``;
``DIR/<JOURNAL>`` holds the single-image writes made since (it names the token it extends, so a
journal left over from an older checkpoint is ignored).

Writes, under the store's writer lock:
- ``store_many`` writes a complete folder as ``.ckpt-<token>.tmp``, renames it to ``ckpt-<token>``,
  opens it, and then replaces the metadata file (the commit point, an atomic rename); the old
  folder and journal go after. A killed or failed write leaves the old contents; the next writer
  removes what it left (temporaries, folders no metadata names).
- ``store_single`` appends one journal record (O(1), CRC-checked; the commit word is the commit
  point). The first write to an empty store makes a checkpoint of that one image. Once the journal
  holds more than max(256, N/16) records, the next write first folds it into a new checkpoint
  (amortised O(1) per write); ``compact()`` folds it at once, so that other tools reading the checkpoint's
  files see every write.

Reads overlay the journal's records on the checkpoint. A handle reads a snapshot: the metadata,
the journal records committed when it opened, and the checkpoint's files that the method keeps
open; a method that opens files per read (``snapshot_can_expire``) raises MissingStoreError once a
later commit has removed its checkpoint ("open the store again"), never other data.

Codecs (``EncodedCheckpointedStore``, e.g. ``parquet:codec=jpeg-90``): the metadata records the codec (no
``codec`` field: raw pixels); the checkpoint holds each image's encoded bytes (``Checkpoint.payloads``) and
journal records hold them too, so folding the journal copies encoded bytes and never re-encodes (a lossy
image is encoded once). Reads decode each image straight into the caller's array.

Durability: nothing is fsynced by default; ``durable=True`` fsyncs every file, folder and record
before the write returns. Checksums: journal records always carry a CRC-32; with ``checksum=True``
at ``store_many`` the checkpoint records an xxh3_64 per image (seeded with its label), checked on
every read.
"""

from __future__ import annotations

import abc
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from storage_impls.core.base import ImageStore
from storage_impls.core.codecs import RAW, Codec, get_codec
from storage_impls.core.encoded import EncodedStore, decode
from storage_impls.core.errors import (
    CorruptStoreError,
    MissingStoreError,
    StoreLockedError,
    damaged,
)
from storage_impls.core.journal import Journal, compaction_cycle, gather_overlaid
from storage_impls.core.records import (
    check_image_fields,
    commit_aside,
    current_token,
    read_meta,
    refuse_foreign,
    remove_stale,
)

FORMAT_VERSION = 1
FOLDER = "ckpt-{token}"
FOLDER_NAME = re.compile(r"ckpt-[0-9a-f]{32}")
COPY_BLOCK_BYTES = 64 << 20  # images copied at a time when folding the journal into a new checkpoint
OPEN_TRIES = 100  # a reader opens again when a writer commits while it opens
# (start, stop) -> images and int64 labels; for a store with a codec, the images' encoded bytes (a list) and labels
Source = Callable[[int, int], tuple[np.ndarray | list[bytes], np.ndarray]]


class Checkpoint(abc.ABC):
    """One committed checkpoint, open for reading."""

    def __init__(self, folder: Path, meta: dict) -> None:
        self.folder, self.meta = folder, meta
        self.count, self.shape, self.checksum = meta["count"], tuple(meta["image_shape"]), meta["checksum"]
        self.dtype = np.dtype(meta["dtype"])
        self.row = int(np.prod(self.shape)) * self.dtype.itemsize  # bytes per image
        self.codec = get_codec(meta.get("codec", RAW.spec))

    @abc.abstractmethod
    def read_rows(self, start: int, out: np.ndarray, labels: np.ndarray) -> None:
        """Fill ``out``/``labels`` with images start..start+len(out)-1 (raw pixels)."""

    @abc.abstractmethod
    def take(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        """Fill ``out[i]``/``labels[i]`` with image ``ids[i]`` (valid ids, any order; raw pixels)."""

    def payloads(self, ids: np.ndarray) -> tuple[list[bytes | memoryview], np.ndarray]:
        """The encoded bytes and labels of images ``ids`` (valid ids, any order), for a checkpoint with a codec."""
        raise NotImplementedError(f"{type(self).__name__} holds raw pixels only")

    def decode(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        """Fill ``out[i]``/``labels[i]`` with image ``ids[i]`` decoded from its payload, a block of payloads at a
        time (at most COPY_BLOCK_BYTES of raw images' worth in memory)."""
        step = max(1, COPY_BLOCK_BYTES // self.row)
        for start in range(0, len(ids), step):
            block = ids[start : start + step]
            payloads, labels[start : start + step] = self.payloads(block)
            for image_id, payload, target in zip(block.tolist(), payloads, out[start : start + step]):
                decode(self.codec, payload, target, f"{self.folder}: image {image_id}")

    def close(self) -> None:
        """Release open files."""


class CheckpointedStore(ImageStore):
    """A checkpoint folder plus a journal; subclasses write and open the folder's files."""

    POINTER: str  # the metadata file, e.g. "npz.json"
    JOURNAL: str  # the journal file, e.g. "npz.journal"
    FORMAT: str  # e.g. "storage_impls.npz"
    appends_single_writes = True  # a journal record

    @abc.abstractmethod
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
        """Write the files of ``count`` images of ``shape`` into ``folder`` (exists, empty), reading them from
        ``source`` (raw pixels, or ``codec``'s bytes unless it is raw); fsync each when durable; return what the
        metadata file should add. A full disk raises OSError."""

    @abc.abstractmethod
    def _open_checkpoint(self, folder: Path, meta: dict) -> Checkpoint:
        """Open the checkpoint in ``folder``; FileNotFoundError if a file is missing, CorruptStoreError if damaged."""

    # -- opening and catching up --------------------------------------------------------------
    def _open(self) -> None:
        self._pointer, self._journal_path = self.directory / self.POINTER, self.directory / self.JOURNAL
        self._meta: dict | None = None
        self._checkpoint: Checkpoint | None = None
        self._journal: Journal | None = None
        self._damage: CorruptStoreError | None = None
        self._count = 0
        self._in_journal: np.ndarray | None = None  # bool per id: its newest version is a journal record
        if not self._pointer.exists():
            refuse_foreign(self.directory, self.method)
            if self.mode == "r":
                raise MissingStoreError(f"no {self.method} store at {self.directory}: {self.POINTER} does not exist")
        self._load()

    def _load(self) -> None:
        """Open the current checkpoint and its journal. A damaged store raises CorruptStoreError in mode "r";
        in mode "a" the damage is kept and raised by reads, so that store_many can repair it."""
        self._release()
        try:
            self._meta, self._checkpoint, self._journal = self._open_consistent()
            if self._meta is not None:
                self._count = self._journal.next_id(self._checkpoint.count)
                self._check_journal()
        except (CorruptStoreError, MissingStoreError) as error:
            self._release()
            if self.mode == "r":
                raise
            self._damage = error if isinstance(error, CorruptStoreError) else CorruptStoreError(str(error))

    def _open_consistent(self) -> tuple[dict | None, Checkpoint | None, Journal | None]:
        """The metadata, its checkpoint and journal as they were at one moment (no commit in between)."""
        for _ in range(OPEN_TRIES):
            meta = self._read_meta()
            if meta is None:
                return None, None, None
            try:
                checkpoint = self._open_checkpoint(self.directory / FOLDER.format(token=meta["token"]), meta)
            except FileNotFoundError as error:
                if self._token() != meta["token"]:
                    continue  # a writer committed and removed the folder meanwhile
                raise MissingStoreError(f"{self.method} store {self.directory}: {error.filename} is missing") from None
            except CorruptStoreError:
                if self._token() != meta["token"]:
                    continue  # the folder was being removed by a commit (files gone, listings short): open the new one
                raise
            try:
                journal = Journal(self._journal_path, meta["token"])
            except BaseException:
                checkpoint.close()
                raise
            # no journal extends this checkpoint: consistent only if it is still the current one
            if journal.image_shape is not None or self._token() == meta["token"]:
                return meta, checkpoint, journal
            journal.close()
            checkpoint.close()
        raise StoreLockedError(f"{self.directory} changed under every one of {OPEN_TRIES} attempts to open it")

    def _read_meta(self) -> dict | None:
        meta = read_meta(self._pointer, self.FORMAT)
        if meta is None:
            return None
        try:
            check_image_fields(meta, FORMAT_VERSION)
            if (
                not FOLDER_NAME.fullmatch(FOLDER.format(token=meta["token"]))
                or type(meta["count"]) is not int
                or meta["count"] < 1
                or type(meta["checksum"]) is not bool
            ):
                raise ValueError("a field is out of range")
            get_codec(meta.get("codec", RAW.spec))
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptStoreError(f"{self._pointer}: not a {self.method} store's metadata ({error})") from None
        return meta

    def _token(self) -> str | None:
        return current_token(self._pointer, self.FORMAT)

    def _check_journal(self) -> None:
        """The journal must fit the checkpoint: same shape, whole images, appended ids without gaps."""
        journal, first = self._journal, self._checkpoint.count
        if not journal.entries:
            return
        if (journal.image_dtype, journal.image_shape) != (self._checkpoint.dtype, self._checkpoint.shape):
            raise CorruptStoreError(
                f"{journal.path}: images of {journal.image_dtype} {journal.image_shape}, but the "
                f"checkpoint's are {self._checkpoint.dtype} {self._checkpoint.shape}"
            )
        if (journal.codec or RAW.spec) != self._checkpoint.codec.spec:
            raise CorruptStoreError(
                f"{journal.path}: images in {journal.codec or RAW.spec}, but the checkpoint's are "
                f"in {self._checkpoint.codec.spec}"
            )
        raw = self._checkpoint.codec is RAW  # encoded records vary in length: decoding checks them
        if (
            raw
            and any(entry.length != self._checkpoint.row for entry in journal.entries.values())
            or sum(image_id >= first for image_id in journal.entries) != self._count - first
        ):
            raise CorruptStoreError(f"{journal.path}: records that are not whole images or leave a gap in the ids")

    def _refresh(self) -> None:
        """Under the writer lock: catch up with other writers, then remove what killed writes left."""
        if self._damage or self._token() != (self._meta["token"] if self._meta else None):
            self._load()
        elif self._journal is not None:
            try:
                if self._journal.refresh():
                    self._count = self._journal.next_id(self._checkpoint.count)
                    self._check_journal()
                    self._in_journal = None
            except CorruptStoreError as error:
                self._release()
                self._damage = error
        if not self._damage:  # a damaged store's files stay until store_many replaces them
            self._remove_stale()

    def _remove_stale(self) -> None:
        """Remove temporaries and checkpoint folders the metadata does not name (left by killed or replaced writes)."""
        remove_stale(self.directory, FOLDER_NAME, FOLDER.format(token=self._meta["token"]) if self._meta else None)

    def _release(self) -> None:
        for part in self._checkpoint, self._journal:
            if part is not None:
                part.close()
        self._meta, self._checkpoint, self._journal, self._damage, self._count, self._in_journal = (
            None,
            None,
            None,
            None,
            0,
            None,
        )

    def __len__(self) -> int:
        if self._damage:
            raise damaged(self._damage)
        return self._count

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        return self._meta["image_shape"] if self._meta else None

    @property
    def image_dtype(self) -> np.dtype | None:
        return self._checkpoint.dtype if self._meta else None

    # -- writes ---------------------------------------------------------------------------------
    def _replacing_codec(self) -> Codec:
        """The codec ``store_many`` writes with."""
        return RAW

    def _replace_all(self, images: np.ndarray, labels: np.ndarray) -> None:
        checksum = self.checksum if self.checksum is not None else bool(self._meta and self._meta["checksum"])
        codec = self._replacing_codec()
        if codec is RAW:
            source = lambda start, stop: (images[start:stop], labels[start:stop])  # noqa: E731
        else:
            source = lambda start, stop: ([codec.encode(image) for image in images[start:stop]], labels[start:stop])  # noqa: E731
        self._commit(images.dtype, images.shape[1:], len(images), source, checksum, codec)

    def single_write_cycle(self) -> int:
        return compaction_cycle(self._checkpoint.count if self._checkpoint else 0)

    def _put(self, image: np.ndarray, image_id: int, label: int) -> None:
        if self._meta is None:  # the first image of a store: a checkpoint of one
            self._replace_all(image[None], np.array([label], np.int64))
            return
        codec = self._checkpoint.codec
        if self._journal.needs_compaction(self._checkpoint.count):
            self._fold()
        payload, spec = (image, None) if codec is RAW else (codec.encode(image), codec.spec)
        self._journal.append(image_id, label, payload, image.dtype, image.shape, durable=self.durable, codec=spec)
        if image_id == self._count:
            self._count += 1
            self._in_journal = None
        elif self._in_journal is not None:
            self._in_journal[image_id] = True

    def _fold(self) -> None:
        """Commit this handle's view (the checkpoint, journal records over it) as a new checkpoint, if the journal
        holds any; encoded images are copied as bytes, never encoded again."""
        if self._journal.entries:
            self.upkeeps += 1  # a fold: the periodic work single writes amortise
            codec = self._checkpoint.codec
            source = self._read_range if codec is RAW else self._read_payloads
            self._commit(self.image_dtype, self.image_shape, self._count, source, self._meta["checksum"], codec)

    def _read_range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels start..stop-1 as this handle reads them (a fresh buffer)."""
        images, labels = np.empty((stop - start, *self.image_shape), self.image_dtype), np.empty(stop - start, np.int64)
        self._read_range_into(start, images, labels)
        return images, labels

    def _read_payloads(self, start: int, stop: int) -> tuple[list[bytes | memoryview], np.ndarray]:
        """The encoded bytes and labels of images start..stop-1 as this handle reads them (a store with a codec)."""
        stored, stored_labels = self._checkpoint.payloads(np.arange(start, min(stop, self._checkpoint.count)))
        return self._journal.overlay_payloads(start, stop, stored, stored_labels)

    def _commit(
        self, dtype: np.dtype, shape: tuple[int, ...], count: int, source: Source, checksum: bool, codec: Codec
    ) -> None:
        """Write a new checkpoint aside, put it in place, open it, then switch the metadata to it (the commit)."""
        token = uuid.uuid4().hex
        temporary, folder = self.directory / f".ckpt-{token}.tmp", self.directory / FOLDER.format(token=token)
        meta = {
            "format": self.FORMAT,
            "format_version": FORMAT_VERSION,
            "token": token,
            "dtype": dtype.str,
            "image_shape": list(shape),
            "count": count,
            "checksum": checksum,
        }
        if codec is not RAW:
            meta["codec"] = codec.spec

        def write(temporary: Path) -> None:
            temporary.mkdir()
            meta.update(self._write_checkpoint(temporary, dtype, tuple(shape), count, source, checksum, codec))

        checkpoint = commit_aside(
            temporary,
            folder,
            write,
            self._pointer,
            meta,
            durable=self.durable,
            open_folder=lambda folder: self._open_checkpoint(folder, {**meta, "image_shape": tuple(shape)}),
            close=lambda checkpoint: checkpoint.close(),
        )
        self._release()
        self._journal_path.unlink(missing_ok=True)  # stale: it names the old token
        meta["image_shape"] = tuple(shape)
        self._meta, self._checkpoint, self._journal, self._count = (
            meta,
            checkpoint,
            Journal(self._journal_path, token),
            count,
        )
        self._remove_stale()  # the old checkpoint

    # -- reads --------------------------------------------------------------------------------
    def _get(self, image_id: int) -> tuple[np.ndarray, int]:
        image, label = np.empty((1, *self.image_shape), self.image_dtype), np.empty(1, np.int64)
        self._read_range_into(image_id, image, label)
        return image[0], int(label[0])

    def _read_into(self, out: np.ndarray, labels: np.ndarray) -> None:
        self._read_range_into(0, out, labels)

    def _read_range_into(self, start: int, out: np.ndarray, labels: np.ndarray) -> None:
        """Fill ``out``/``labels`` with images start..: checkpoint rows, then journal records over them."""
        stop = start + len(out)
        in_checkpoint = min(stop, self._checkpoint.count) - start
        if in_checkpoint > 0:
            try:
                if self._checkpoint.codec is RAW:
                    self._checkpoint.read_rows(start, out[:in_checkpoint], labels[:in_checkpoint])
                else:
                    self._checkpoint.decode(
                        np.arange(start, start + in_checkpoint), out[:in_checkpoint], labels[:in_checkpoint]
                    )
            except FileNotFoundError as error:
                raise self._expired(Path(error.filename)) from None
        for image_id in self._journal.ids_between(start, stop):
            self._read_record(image_id, out, labels, image_id - start)

    def _read_batch_into(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        """Gather from the checkpoint, then put journal records in their places."""
        mask = self._journal_mask() if self._journal.entries else None
        gather = self._checkpoint.take if self._checkpoint.codec is RAW else self._checkpoint.decode
        try:
            gather_overlaid(mask, ids, out, labels, gather, self._read_record)
        except FileNotFoundError as error:
            raise self._expired(Path(error.filename)) from None

    def _read_record(self, image_id: int, out: np.ndarray, labels: np.ndarray, position: int) -> None:
        labels[position] = self._journal.decode_into(image_id, self._checkpoint.codec, out[position])

    def _journal_mask(self) -> np.ndarray:
        """True for the ids whose newest version is a journal record (rebuilt after a write)."""
        if self._in_journal is None:
            self._in_journal = np.zeros(self._count, bool)
            self._in_journal[np.fromiter(self._journal.entries, np.int64, len(self._journal.entries))] = True
        return self._in_journal

    def _close(self) -> None:
        self._release()

    def _expired(self, path: Path) -> MissingStoreError:
        """The error for a checkpoint file gone when read: replaced by a later commit, or deleted."""
        if self._token() != self._meta["token"]:
            return MissingStoreError(
                f"the {self.method} store in {self.directory} was replaced since this handle "
                f"opened it ({path.name} is gone): open it again"
            )
        return MissingStoreError(f"{self.method} store {self.directory}: {path} is missing")


class EncodedCheckpointedStore(EncodedStore, CheckpointedStore):
    """A checkpointed method taking the ``codec`` option (encoding.py); its checkpoints implement ``payloads``."""

    @property
    def recorded_codec(self) -> str | None:
        return self._checkpoint.codec.spec if self._checkpoint else None

    def _replacing_codec(self) -> Codec:
        return self.writing_codec(replacing=True)
