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
  max(256, N) records, they are folded into a new checkpoint as ``store_many`` commits one
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
from storage_impls.core.codecs import RAW, Codec, get_codec
from storage_impls.core.encoded import EncodedStore
from storage_impls.core.fileio import fsync_path
from storage_impls.core.journaled import JournaledStore
from storage_impls.core.options import check_options
from storage_impls.methods.hdf5.chunked import CONTIGUOUS, Layout
from storage_impls.methods.hdf5.chunked import OPTIONS as LAYOUT_OPTIONS
from storage_impls.methods.hdf5.format import Block, Checkpoint, file_identity, write_checkpoint

FILE_NAME = "images.h5"
JOURNAL_NAME = FILE_NAME + ".journal"
TEMPORARY_PREFIX, TEMPORARY_SUFFIX = f".{FILE_NAME}", ".tmp"  # checkpoints and journals being written
COPY_BLOCK_BYTES = 64 << 20  # images copied at a time when folding the journal into a new checkpoint


class Hdf5Store(JournaledStore, EncodedStore):
    """Images (raw, or encoded: ``hdf5:codec=jpeg-90``) and labels in one HDF5 checkpoint file plus a journal of
    single-image writes (core/journaled.py's protocol)."""

    method = "hdf5"
    reads_through_map = True  # the checkpoint's map
    POINTER, JOURNAL, JOURNAL_FIRST = FILE_NAME, JOURNAL_NAME, True  # the checkpoint file is its own pointer

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

    # -- the handle's view (core/journaled.py) ----------------------------------------------------
    def _open_current(self) -> Checkpoint | None:
        try:
            return Checkpoint(self._pointer, advice=self._advice)
        except FileNotFoundError:
            return None

    def _is_current(self, checkpoint: Checkpoint | None) -> bool:
        return file_identity(self._pointer) == (checkpoint.identity if checkpoint is not None else None)

    def _remove_stale(self) -> None:
        """Remove the temporaries of killed writes."""
        for entry in os.scandir(self.directory):
            if entry.name.startswith(TEMPORARY_PREFIX) and entry.name.endswith(TEMPORARY_SUFFIX):
                Path(entry.path).unlink(missing_ok=True)

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
            checkpoint = Checkpoint(temporary, self._pointer, self._advice)
            try:
                os.replace(temporary, self._pointer)
            except BaseException:
                checkpoint.close()
                raise
        finally:
            temporary.unlink(missing_ok=True)
        self._switch(checkpoint)
        if self.durable:
            fsync_path(self.directory)

    # -- reads --------------------------------------------------------------------------------------
    def _get(self, image_id: int) -> tuple[np.ndarray, int]:
        if image_id not in self._journal.entries:
            return self._checkpoint.image(image_id)
        image, label = np.empty((1, *self.image_shape), self.image_dtype), np.empty(1, np.int64)
        self._read_record(image_id, image, label, 0)
        return image[0], int(label[0])

    @classmethod
    def remote_reader(cls) -> type[ImageStore]:
        from storage_impls.methods.hdf5.remote import RemoteHdf5Store  # it imports this module

        return RemoteHdf5Store
