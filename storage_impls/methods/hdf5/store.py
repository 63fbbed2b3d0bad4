"""HDF5: a checkpoint file ``images.h5`` (see hdf5_format.py: contiguous ``images`` of the store's dtype
(N, H, W[, C]), int64 ``labels``, optional uint64 ``checksums``, a ``token`` naming it) plus a
write-ahead journal ``images.h5.journal`` (journal.py) of single-image writes, raw pixels each.

Codecs (``hdf5:codec=jpeg-90``, ``png``, ``png-9``, ``webp-80``, ``webp-lossless``; ``raw``, the default, is the
layout above): ``images.h5`` holds every image's encoded file back to back in one contiguous uint8 dataset
``encoded`` with int64 ``offsets`` (N+1), so plain h5py reads image i as ``f["encoded"][off[i]:off[i+1]]``;
the codec, dtype and shape are attributes of the file, and checksums cover the encoded bytes. Journal records
hold encoded bytes too (the journal's header names the codec), so folding the journal copies bytes and never
re-encodes: a lossy image is encoded once, when it is written. ``store_many`` writes with the handle's
``codec`` option, ``store_single`` and reads use the store's (encoding.py); bytes that do not decode to
exactly an image of the store's shape raise CorruptStoreError naming the file and image id. A codec that cannot
hold the images (JPEG of RGBA or uint16, WebP of one channel) is refused before anything is written.

Chunked raw pixels (hdf5_chunked.py): ``hdf5:compression=gzip|lzf|none`` (default none) and ``hdf5:chunks=N`` (images
per chunk, N >= 1; default: contiguous, the layout above) make ``images`` what h5py's ``create_dataset(chunks=(N,
*shape), compression=...)`` makes (gzip at h5py's default level, 4; compression without chunks: whole images up to
64 KiB per chunk), HDF5 compressing and writing the chunks. The checkpoint's attributes record the options.
``store_many`` writes the layout this handle's options name (one given: the other at its default, so
``compression=none`` returns to contiguous), else the store's; ``store_single`` and folds keep the store's (a store
without a checkpoint yet: the handle's). Raw pixels only: a codec other than raw with either option is a ValueError
at open, or at ``store_many`` when the codec is the store's; ``store_many`` with a codec writes contiguous bytes.

Writes, all under the store's writer lock (locking.py):
- ``store_many`` writes a complete new checkpoint under a temporary name, opens and validates it,
  renames it over ``images.h5`` (the commit point) and removes the journal, now stale (it names
  the old token). Nothing ever opens ``images.h5`` for writing, so a reader holding it open can
  never make a writer fail (HDF5's file locks only ever meet shared, read-only opens).
- ``store_single`` appends one record to the journal (O(1): three small writes; the last, of the
  commit word, is the commit point). A fresh store's first writes make only the journal, whose
  header carries the image shape. Before an append, once the journal holds more than
  max(256, N/16) records, they are folded into a new checkpoint as ``store_many`` commits one
  (amortised O(1) per write). ``compact()`` folds them at once, so that h5py sees every write in ``images.h5``.
- A failed write (a full disk: NoSpaceError, errno ENOSPC) or a killed one leaves the store as it
  was; temporary files (``.images.h5.*.tmp``) are ignored by readers and removed by the next write.

Reads overlay the journal's records on the checkpoint, which is read through its own file
descriptor and memory map: ``read_many`` with one ``preadv``, ``read_single`` with one copy out of
the map, ``read_batch`` with ``numpy.take`` over the map (``hdf5:advice=auto|random|normal|willneed``: how the map
is advised, core/advice.py), each journal record
with one ``preadv`` (CRC-checked). Chunked images are read through the h5py file the handle keeps open (HDF5
decompresses whole chunks): ``read_many`` and folds with one H5Dread into the caller's array (what
``read_direct`` does), ``read_batch`` with one H5Dread per chunk it touches (the span of its sorted unique ids),
then scattered into place. Encoded images are decoded straight into the caller's array from a
slice of the map (``read_batch``, ``read_single``) or of one ``preadv`` per 16 MiB (``read_many``). With
``checksum=True`` at ``store_many`` (recorded in the checkpoint; later handles verify whatever
they pass) every checkpoint image read is checked against its xxh3_64 (of the encoded bytes, before
decoding, in an encoded store); journal records always carry a CRC-32.

Concurrency and isolation: one writer at a time; any number of readers, never blocked (HDF5 opens
a checkpoint only to validate it, with its file locking where the file system has it; a chunked one stays open,
read-only, for the handle's life: writers never open it, they write new files). A handle
reads a snapshot: the checkpoint file and the journal records that were committed when it opened
(it keeps the files open, so a later commit, which renames a new checkpoint into place, does not
change what it reads: open the store again to see it). Before each write the handle catches up
with what other writers did (``_refresh``). The open files and maps must not cross a fork: open
the store in each worker process (after fork or spawn).

Durability: by default nothing is fsynced. ``durable=True`` fsyncs each new checkpoint and the
directory after its rename, and fdatasyncs each journal record before and after its commit word.
Damage (truncation, flipped metadata or journal bytes; flipped pixels with checksums) raises
CorruptStoreError; mode "a" still opens such a store, so that ``store_many`` can replace it.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from storage_impls.core.advice import DEFAULT_ADVICE
from storage_impls.core.advice import OPTIONS as ADVICE_OPTIONS
from storage_impls.core.base import ImageStore
from storage_impls.core.codecs import Codec, get_codec
from storage_impls.core.encoded import EncodedStore
from storage_impls.core.errors import CorruptStoreError, MissingStoreError, StoreLockedError, damaged
from storage_impls.core.fileio import fsync_path
from storage_impls.core.journal import Journal, compaction_cycle, gather_overlaid
from storage_impls.core.options import check_options
from storage_impls.core.records import refuse_foreign
from storage_impls.methods.hdf5.chunked import CONTIGUOUS, Layout
from storage_impls.methods.hdf5.chunked import OPTIONS as LAYOUT_OPTIONS
from storage_impls.methods.hdf5.format import RAW, Block, ChangedError, Checkpoint, file_identity, write_checkpoint

FILE_NAME = "images.h5"
JOURNAL_NAME = FILE_NAME + ".journal"
TEMPORARY_PREFIX, TEMPORARY_SUFFIX = f".{FILE_NAME}", ".tmp"  # checkpoints and journals being written
COPY_BLOCK_BYTES = 64 << 20  # images copied at a time when folding the journal into a new checkpoint
OPEN_TRIES = 100  # a reader opens again when a writer commits between its opening the checkpoint and the journal


class Hdf5Store(EncodedStore):
    """Images (raw, or encoded: ``hdf5:codec=jpeg-90``) and labels in one HDF5 checkpoint file plus a journal of
    single-image writes."""

    method = "hdf5"
    reads_through_map = appends_single_writes = True  # the checkpoint's map; a journal record

    @classmethod
    def library_versions(cls) -> dict[str, str]:
        import h5py

        return {"h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version}

    OPTIONS = {**LAYOUT_OPTIONS, **EncodedStore.OPTIONS, **ADVICE_OPTIONS}

    def __init__(
        self,
        directory: str | os.PathLike,
        mode: str = "a",
        *,
        compression: str | None = None,
        chunks: int | str | None = None,
        codec: str | None = None,
        advice: str | None = None,
        **options: object,
    ) -> None:
        self._advice = check_options(self.method, ADVICE_OPTIONS, {"advice": advice}).get("advice", DEFAULT_ADVICE)
        # neither given: the store's recorded layout (a new store: contiguous); either: the layout this handle's
        # store_many writes (the other option at its default)
        self._layout_options = check_options(
            self.method, LAYOUT_OPTIONS, {"compression": compression, "chunks": chunks}
        )
        if codec is not None and self._layout_options:
            self._refuse_layout(get_codec(check_options(self.method, EncodedStore.OPTIONS, {"codec": codec})["codec"]))
        super().__init__(directory, mode, codec=codec, **options)

    def _refuse_layout(self, codec: Codec) -> None:
        """ValueError if this handle's compression or chunks would apply to images encoded with ``codec``."""
        if codec is not RAW and Layout(**self._layout_options).chunked:
            raise ValueError(
                f"{self.method}: {Layout(**self._layout_options).spec} applies to raw pixels only (codec=raw); "
                f"{codec.spec} images are already compressed and kept back to back in one contiguous dataset"
            )

    def _writing_layout(self, codec: Codec, replacing: bool) -> Layout:
        """The layout of a new checkpoint: ``store_many`` (``replacing``) the one this handle's options name, if they
        name one, else the store's; a fold the store's (no checkpoint yet: this handle's). Encoded: contiguous."""
        if codec is not RAW:
            if replacing:
                self._refuse_layout(codec)
            return CONTIGUOUS
        recorded = self._checkpoint.layout if self._checkpoint else None
        return Layout(**self._layout_options) if recorded is None or replacing and self._layout_options else recorded

    def _open(self) -> None:
        self._path = self.directory / FILE_NAME
        self._checkpoint: Checkpoint | None = None
        self._journal: Journal | None = None
        self._damage: CorruptStoreError | None = None
        self._count = 0
        self._in_journal: np.ndarray | None = None  # bool per id: its newest version is a journal record
        # the journal first: a store with contents always has one of the two, and images.h5 is never removed
        if file_identity(self.directory / JOURNAL_NAME) is None and file_identity(self._path) is None:
            refuse_foreign(self.directory, self.method)
            if self.mode == "r":
                raise MissingStoreError(f"no hdf5 store at {self.directory}: {FILE_NAME} does not exist")
        self._load()

    # -- the handle's view ------------------------------------------------------------------------
    def _load(self) -> None:
        """Read the current checkpoint and the journal extending it. A damaged store raises CorruptStoreError
        in mode "r"; in mode "a" the damage is kept and raised by reads, so that store_many can repair it."""
        self._release()
        try:
            self._checkpoint, self._journal = self._open_consistent()
            self._count = self._journal.next_id(self._checkpoint.count if self._checkpoint else 0)
            self._check_journal()
        except CorruptStoreError as error:
            self._release()
            if self.mode == "r":
                raise
            self._damage = error

    def _open_consistent(self) -> tuple[Checkpoint | None, Journal]:
        """The checkpoint and its journal as they were at one moment (no commit in between)."""
        for _ in range(OPEN_TRIES):
            try:
                checkpoint = Checkpoint(self._path, advice=self._advice)
            except FileNotFoundError:
                checkpoint = None
            except ChangedError:
                continue
            try:
                journal = Journal(self.directory / JOURNAL_NAME, checkpoint.token if checkpoint else "")
            except BaseException:
                if checkpoint:
                    checkpoint.close()
                raise
            # no journal extends this checkpoint: consistent only if the checkpoint is still the current one
            if journal.image_shape is not None or file_identity(self._path) == (
                checkpoint.identity if checkpoint else None
            ):
                return checkpoint, journal
            journal.close()
            if checkpoint:
                checkpoint.close()
        raise StoreLockedError(f"{self.directory} changed under every one of {OPEN_TRIES} attempts to open it")

    def _check_journal(self) -> None:
        """The journal must fit the checkpoint: same shape and codec, whole images, appended ids without gaps."""
        journal, checkpoint = self._journal, self._checkpoint
        if not journal.entries:
            return
        if checkpoint and (journal.image_dtype, journal.image_shape) != (checkpoint.dtype, checkpoint.shape):
            raise CorruptStoreError(
                f"{journal.path}: images of {journal.image_dtype} {journal.image_shape}, but the "
                f"checkpoint's are {checkpoint.dtype} {checkpoint.shape}"
            )
        try:
            codec = get_codec(journal.codec or RAW.spec)
        except ValueError as error:
            raise CorruptStoreError(f"{journal.path}: {error}") from None
        if checkpoint and codec is not checkpoint.codec:
            raise CorruptStoreError(
                f"{journal.path}: images in {codec.spec}, but the checkpoint's are in {checkpoint.codec.spec}"
            )
        row = math.prod(journal.image_shape) * journal.image_dtype.itemsize
        first = checkpoint.count if checkpoint else 0
        raw = codec is RAW  # encoded records vary in length: decoding checks them
        if (
            raw
            and any(entry.length != row for entry in journal.entries.values())
            or sum(image_id >= first for image_id in journal.entries) != self._count - first
        ):
            raise CorruptStoreError(f"{journal.path}: records that are not whole images or leave a gap in the ids")

    def _refresh(self) -> None:
        """Under the writer lock: remove temporaries of killed writes, then catch up with other writers."""
        for entry in os.scandir(self.directory):
            if entry.name.startswith(TEMPORARY_PREFIX) and entry.name.endswith(TEMPORARY_SUFFIX):
                Path(entry.path).unlink(missing_ok=True)
        if self._damage or file_identity(self._path) != (self._checkpoint.identity if self._checkpoint else None):
            self._load()
            return
        try:
            if self._journal.refresh():
                self._count = self._journal.next_id(self._checkpoint.count if self._checkpoint else 0)
                self._check_journal()
                self._in_journal = None
        except CorruptStoreError as error:
            self._release()
            self._damage = error

    def _release(self) -> None:
        for part in self._checkpoint, self._journal:
            if part is not None:
                part.close()
        self._checkpoint, self._journal, self._damage, self._count, self._in_journal = None, None, None, 0, None

    def __len__(self) -> int:
        if self._damage:
            raise damaged(self._damage)
        return self._count

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        if self._checkpoint:
            return self._checkpoint.shape
        return self._journal.image_shape if self._journal else None

    @property
    def image_dtype(self) -> np.dtype | None:
        if self._checkpoint:
            return self._checkpoint.dtype
        return self._journal.image_dtype if self._journal else None

    @property
    def recorded_codec(self) -> str | None:
        if self._checkpoint:
            return self._checkpoint.codec.spec
        return (self._journal.codec or RAW.spec) if self._journal and self._journal.image_shape else None

    # -- writes -------------------------------------------------------------------------------------
    def _replace_all(self, images: np.ndarray, labels: np.ndarray) -> None:
        checksum = self.checksum if self.checksum is not None else bool(self._checkpoint and self._checkpoint.checksum)
        codec = self.writing_codec(replacing=True)
        layout = self._writing_layout(codec, replacing=True)
        if codec is RAW:
            self._commit(images.dtype, images.shape[1:], len(images), [(0, images, labels)], checksum, codec, layout)
            return
        payloads = [codec.encode(image) for image in images]
        self._commit(
            images.dtype,
            images.shape[1:],
            len(images),
            [(0, payloads, labels)],
            checksum,
            codec,
            layout,
            np.fromiter(map(len, payloads), np.int64, len(payloads)),
        )

    def single_write_cycle(self) -> int:
        return compaction_cycle(self._checkpoint.count if self._checkpoint else 0)

    def _put(self, image: np.ndarray, image_id: int, label: int) -> None:
        codec = self.codec
        payload, spec = (image, None) if codec is RAW else (codec.encode(image), codec.spec)
        if self._journal.needs_compaction(self._checkpoint.count if self._checkpoint else 0):
            self._fold()
        self._journal.append(image_id, label, payload, image.dtype, image.shape, durable=self.durable, codec=spec)
        if image_id == self._count:
            self._count += 1
            self._in_journal = None
        elif self._in_journal is not None:
            self._in_journal[image_id] = True

    def _fold(self) -> None:
        """Commit this handle's view (the checkpoint, journal records over it) as a new checkpoint of the store's
        layout, if the journal holds any; encoded images are copied as bytes, never encoded again."""
        if self._journal.entries:
            self.upkeeps += 1  # a fold: the periodic work single writes amortise
            codec = self.codec
            checksum = self._checkpoint.checksum if self._checkpoint else bool(self.checksum)
            sizes = None if codec is RAW else self._payload_sizes()
            layout = self._writing_layout(codec, replacing=False)
            self._commit(
                self.image_dtype,
                self.image_shape,
                self._count,
                self._blocks(codec, layout),
                checksum,
                codec,
                layout,
                sizes,
            )

    def _blocks(self, codec: Codec, layout: Layout) -> Iterator[Block]:
        """The store's images (raw: one reused buffer; encoded: their bytes, never decoded) and labels, a block at a
        time (whole chunks of ``layout``), journal records applied."""
        row = math.prod(self.image_shape) * self.image_dtype.itemsize
        step = max(1, min(self._count, COPY_BLOCK_BYTES // row))
        if layout.chunked:  # HDF5 never has to read back a chunk it wrote in part
            per_chunk = layout.chunk_images(self._count, row)
            step = max(per_chunk, step // per_chunk * per_chunk)
        if codec is not RAW:
            for start in range(0, self._count, step):
                yield start, *self._read_payloads(start, min(self._count, start + step))
            return
        images, labels = np.empty((step, *self.image_shape), self.image_dtype), np.empty(step, np.int64)
        for start in range(0, self._count, step):
            size = min(step, self._count - start)
            self._read_range_into(start, images[:size], labels[:size])
            yield start, images[:size], labels[:size]

    def _read_payloads(self, start: int, stop: int) -> tuple[list[bytes | memoryview], np.ndarray]:
        """The encoded bytes and labels of images start..stop-1 as this handle reads them (a store with a codec)."""
        count = self._checkpoint.count if self._checkpoint else 0
        stored, labels = self._checkpoint.payloads(np.arange(start, min(stop, count))) if start < count else ([], [])
        return self._journal.overlay_payloads(start, stop, stored, labels)

    def _payload_sizes(self) -> np.ndarray:
        """The byte count of every image's encoded bytes (the checkpoint's, journal records over them)."""
        sizes = np.zeros(self._count, np.int64)
        if self._checkpoint:
            sizes[: self._checkpoint.count] = np.diff(self._checkpoint.offsets)
        for image_id, entry in self._journal.entries.items():
            sizes[image_id] = entry.length
        return sizes

    def _commit(
        self,
        dtype: np.dtype,
        shape: tuple[int, ...],
        count: int,
        blocks: Iterable[Block],
        checksum: bool,
        codec: Codec,
        layout: Layout,
        sizes: np.ndarray | None = None,
    ) -> None:
        """Write a new checkpoint aside, open it, rename it into place (the commit), drop the stale journal."""
        token = uuid.uuid4().hex
        temporary = self.directory / f"{TEMPORARY_PREFIX}.{token}{TEMPORARY_SUFFIX}"
        try:
            write_checkpoint(
                temporary,
                dtype,
                shape,
                count,
                blocks,
                token=token,
                checksum=checksum,
                durable=self.durable,
                codec=codec,
                sizes=sizes,
                layout=layout,
            )
            # opened before the rename: nothing can fail after it
            checkpoint = Checkpoint(temporary, self._path, self._advice)
            try:
                os.replace(temporary, self._path)
            except BaseException:
                checkpoint.close()
                raise
        finally:
            temporary.unlink(missing_ok=True)
        self._release()
        (self.directory / JOURNAL_NAME).unlink(missing_ok=True)
        self._checkpoint, self._journal, self._count = checkpoint, Journal(self.directory / JOURNAL_NAME, token), count
        if self.durable:
            fsync_path(self.directory)

    # -- reads --------------------------------------------------------------------------------------
    def _get(self, image_id: int) -> tuple[np.ndarray, int]:
        if image_id not in self._journal.entries:
            return self._checkpoint.image(image_id)
        image, label = np.empty((1, *self.image_shape), self.image_dtype), np.empty(1, np.int64)
        self._read_record(image_id, image, label, 0)
        return image[0], int(label[0])

    def _read_into(self, out: np.ndarray, labels: np.ndarray) -> None:
        self._read_range_into(0, out, labels)

    def _read_range_into(self, start: int, out: np.ndarray, labels: np.ndarray) -> None:
        """Fill ``out``/``labels`` with images start..start+len(out)-1: checkpoint rows, then journal records over
        them."""
        stop = start + len(out)
        in_checkpoint = min(stop, self._checkpoint.count if self._checkpoint else 0) - start
        if in_checkpoint > 0:
            self._checkpoint.read_rows(start, out[:in_checkpoint], labels[:in_checkpoint])
        for image_id in self._journal.ids_between(start, stop):
            self._read_record(image_id, out, labels, image_id - start)

    def _read_batch_into(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        """Gather from the checkpoint's map, then put journal records in their places."""
        mask = self._journal_mask() if self._journal.entries else None
        gather_overlaid(
            mask, ids, out, labels, lambda *gather: self._checkpoint.take(*gather), self._read_record
        )  # none yet: all in the journal

    def _read_record(self, image_id: int, out: np.ndarray, labels: np.ndarray, position: int) -> None:
        labels[position] = self._journal.decode_into(image_id, self.codec, out[position])

    def _journal_mask(self) -> np.ndarray:
        """True for the ids whose newest version is a journal record (rebuilt after a write)."""
        if self._in_journal is None:
            self._in_journal = np.zeros(self._count, bool)
            self._in_journal[np.fromiter(self._journal.entries, np.int64, len(self._journal.entries))] = True
        return self._in_journal

    def _close(self) -> None:
        self._release()

    @classmethod
    def remote_reader(cls) -> type[ImageStore]:
        from storage_impls.methods.hdf5.remote import RemoteHdf5Store  # it imports this module

        return RemoteHdf5Store
