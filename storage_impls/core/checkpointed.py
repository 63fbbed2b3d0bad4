"""The shape shared by the checkpointed methods (npy-files, npz, npy-memmap, webdataset, parquet, zarr): an
immutable *checkpoint* (a folder of files written by ``store_many``) named by a metadata file, plus a
write-ahead journal (journal.py) of single-image writes, on the protocol of journaled.py.

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
  holds more than max(256, N) records, the next write first folds it into a new checkpoint
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
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from storage_impls.core.codecs import RAW, Codec, get_codec
from storage_impls.core.encoded import EncodedStore, decode
from storage_impls.core.errors import CorruptStoreError, MissingStoreError
from storage_impls.core.journaled import JournaledStore
from storage_impls.core.records import check_image_fields, commit_aside, current_token, read_meta, remove_stale

FORMAT_VERSION = 1
FOLDER = "ckpt-{token}"
FOLDER_NAME = re.compile(r"ckpt-[0-9a-f]{32}")
COPY_BLOCK_BYTES = 64 << 20  # images copied at a time when folding the journal into a new checkpoint


def live_folder(directory: str | os.PathLike, pointer: str, format_name: str) -> Path:
    """The checkpoint folder a store in ``directory`` reads now (for the method's library alone to read)."""
    meta = read_meta(Path(directory) / pointer, format_name)
    if meta is None:
        raise MissingStoreError(f"no store at {directory}: {pointer} does not exist")
    return Path(directory) / FOLDER.format(token=meta["token"])


# (start, stop) -> images and int64 labels; for a store with a codec, the images' encoded bytes (a list) and labels
Source = Callable[[int, int], tuple[np.ndarray | list[bytes], np.ndarray]]


class Checkpoint(abc.ABC):
    """One committed checkpoint, open for reading."""

    def __init__(self, folder: Path, meta: dict) -> None:
        self.folder, self.meta, self.token = folder, meta, meta["token"]
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


class CheckpointedStore(JournaledStore):
    """A checkpoint folder plus a journal; subclasses write and open the folder's files."""

    POINTER: str  # the metadata file, e.g. "npz.json"
    JOURNAL: str  # the journal file, e.g. "npz.journal"
    FORMAT: str  # e.g. "storage_impls.npz"
    DAMAGE = CorruptStoreError

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
    @property
    def _meta(self) -> dict | None:
        """The metadata file's fields this handle reads by (None: no checkpoint)."""
        return self._checkpoint.meta if self._checkpoint is not None else None

    def _open_current(self) -> Checkpoint | None:
        meta = self._read_meta()
        if meta is None:
            return None
        try:
            return self._open_checkpoint(self.directory / FOLDER.format(token=meta["token"]), meta)
        except (FileNotFoundError, CorruptStoreError) as error:
            raise self._open_failed(error, self._token() == meta["token"]) from None

    def _is_current(self, checkpoint: Checkpoint | None) -> bool:
        return self._token() == (checkpoint.token if checkpoint is not None else None)

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

    def _remove_stale(self) -> None:
        """Remove temporaries and checkpoint folders the metadata does not name (left by killed or replaced writes)."""
        remove_stale(self.directory, FOLDER_NAME, FOLDER.format(token=self._meta["token"]) if self._meta else None)

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

    def _fold(self) -> None:
        """Commit this handle's view (the checkpoint, journal records over it) as a new checkpoint, if the journal
        holds any; encoded images are copied as bytes, never encoded again."""
        if self._journal.entries:
            self.upkeeps += 1  # a fold: the periodic work single writes amortise
            codec = self._checkpoint.codec
            self._commit(
                self.image_dtype, self.image_shape, self._count, self._fold_source(), self._meta["checksum"], codec
            )

    def _fold_source(self) -> Source:
        """What a fold hands ``_write_checkpoint``: this handle's images (raw or encoded bytes) by range; a method
        that can keep the old checkpoint's unchanged files without copying them returns what it needs for that."""
        return self._read_range if self._checkpoint.codec is RAW else self._read_payloads

    def _read_range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels start..stop-1 as this handle reads them (a fresh buffer)."""
        images, labels = np.empty((stop - start, *self.image_shape), self.image_dtype), np.empty(stop - start, np.int64)
        self._read_range_into(start, images, labels)
        return images, labels

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
        self._switch(checkpoint)
        self._remove_stale()  # the old checkpoint

    # -- reads --------------------------------------------------------------------------------
    def _get(self, image_id: int) -> tuple[np.ndarray, int]:
        image, label = np.empty((1, *self.image_shape), self.image_dtype), np.empty(1, np.int64)
        self._read_range_into(image_id, image, label)
        return image[0], int(label[0])

    def _read_rows(self, start: int, out: np.ndarray, labels: np.ndarray) -> None:
        try:
            if self._checkpoint.codec is RAW:
                self._checkpoint.read_rows(start, out, labels)
            else:
                self._checkpoint.decode(np.arange(start, start + len(out)), out, labels)
        except FileNotFoundError as error:
            raise self._expired(Path(error.filename)) from None

    def _take(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        gather = self._checkpoint.take if self._checkpoint.codec is RAW else self._checkpoint.decode
        try:
            gather(ids, out, labels)
        except FileNotFoundError as error:
            raise self._expired(Path(error.filename)) from None

    def _expired(self, path: Path) -> MissingStoreError:
        """The error for a checkpoint file gone when read: replaced by a later commit, or deleted."""
        if not self._is_current(self._checkpoint):
            return MissingStoreError(
                f"the {self.method} store in {self.directory} was replaced since this handle "
                f"opened it ({path.name} is gone): open it again"
            )
        return MissingStoreError(f"{self.method} store {self.directory}: {path} is missing")


class EncodedCheckpointedStore(CheckpointedStore, EncodedStore):
    """A checkpointed method taking the ``codec`` option (encoded.py); its checkpoints implement ``payloads``."""

    def _replacing_codec(self) -> Codec:
        return self.writing_codec(replacing=True)
