"""zarr: images in a zarr v3 group, one chunk per image, chunks grouped in shard files (zarr's sharding codec),
written through zarr-python (``create_array(shards=...)``) and readable by any zarr v3 reader (with a codec: by
zarr-python alone, and any reader of its variable-length bytes).

Layout (see checkpointed.py for the metadata file, the journal and how writes commit): ``DIR/zarr.json`` (this
package's metadata, not zarr's: JSON and its CRC-32; ``shard_images``, ``label_chunk``, ``compression``) names
``DIR/ckpt-<token>/``, a zarr v3 group: ``zarr.open_group(live_group(DIR))["images"][i]`` is image i,
``["labels"][i]`` its label (zarr_format.py has the codecs). A shard holds about SHARD_BYTES (64 MiB) of
pixels, balanced over the store (100 000 images of 32x32x3: 5 shards of 20 000). Compression none (default),
``blosc`` or ``zstd``, each with zarr's default settings (option ``compression``); ``checksum=True`` adds zarr's
``crc32c`` codec to every chunk, checked on every read. ``DIR/zarr.journal`` holds ``store_single`` writes
until they are folded into a new group: zarr's own readers see the group as of the last ``store_many`` or fold.

Codecs (option ``codec``, e.g. ``zarr:codec=jpeg-90``; codecs.py): ``raw`` (default) is the layout above, byte for
byte. Any other codec makes ``images`` a 1-D array of zarr-python's variable-length bytes data type
(``variable_length_bytes``, serializer ``vlen-bytes``, fill value b""): element i is image i's whole encoded file
(the JPEG, PNG or WebP that Pillow or any decoder reads), one chunk per image in shards of ``shard_images`` images
(counted from the raw size: encoded shards are smaller), then ``compression`` and ``crc32c`` as for pixels, so a
checksum covers the encoded bytes. The group's attributes add ``"codec": "<spec>"``. A zarr-python user needs
nothing of this package: ``Image.open(io.BytesIO(zarr.open_group(path)["images"][i]))``. Chosen over a uint8 array
of the concatenated files plus an offsets array (numeric types every zarr reader knows, but images straddle chunks:
zarr-python reads whole chunks per image, checksums and compression cover chunks rather than images, and the
writer must know the total length before it writes or resize as it goes) and over a zarr codec of this package's
own (no other reader could open the group). The price: zarr-python warns that ``variable_length_bytes`` has no
zarr v3 specification yet (silenced here); zarrs reads it as an alias of the registered ``bytes`` data type, and
zarr-python means to do the same (zarr-python issue 3517). Journal records hold the encoded bytes too; folds copy
them. Reads: ``reader=zarr`` takes the elements (an object array of bytes) with one orthogonal selection;
``pread`` reads each image's chunk with one ``pread`` through the shard index, checks its CRC-32C, decompresses
and takes the element out of its vlen-bytes frame (uint32 count 1, uint32 length); either way the checkpointed base
decodes each file into the caller's array. Measured (2 shared cores, warm cache, 20 000 32x32x3 images, png):
batches of 256 ids 100 us per image with ``pread`` (the PNG decode alone: 120-140 us), 370 with ``zarr`` (raw:
2 and 510 in the same run); ``read_many`` 110 and 340 us; 2 253 bytes per image against 3 096 raw.

Writes: ``store_many`` creates the group in the checkpoint's temporary folder and writes ``images`` one whole
shard per call (``images[a:b] = block`` on shard bounds: each shard file is written once and never read back
and modified), then ``labels``, with zarr's ``codec_pipeline.batch_size`` at WRITE_BATCH; when durable, every
file and folder is fsynced. zarr-python still takes each chunk through its asyncio pipeline: 80-190 us per
32x32x3 image here (npy-memmap: 5-11 us; zarr 3.0.10: ~2.5 ms).

Reads (option ``reader``): ``zarr`` (default: the number a zarr-python user sees) reads through zarr-python's
orthogonal and basic selections into the caller's array (``out=``), opening shard files per call (its
snapshot expires when a later commit removes them: MissingStoreError, "open it again"). ``pread`` opens every
shard file when the handle opens (a snapshot that no later commit takes away), reads a shard's index on
first use (checked: CRC-32C, bounds, sizes) and each image with one ``preadv`` straight into the caller's
array (a shard's run at once for ``read_many``), checking CRC-32Cs and decompressing as the store says: what
the format allows. Measured (2 shared cores, warm cache, 20 000
32x32x3 images): batches of 256 ids 2.1-3.2 us per image with ``pread``, 660-1 150 us with ``zarr``; one image
24-73 us against 1.5-3.8 ms; ``read_many`` 1.2-2.0 against 215-255 us per image. Each zarr call crosses to
zarr's event-loop thread (a 100-370 us round trip, more under load), reads every chunk as a separate file read
in a worker thread and reads the touched shards' whole index again. Either way the group's metadata and labels
are read through zarr, from a strict LocalStore (a missing chunk raises; plain LocalStore reads it as zeros),
and checked against what this package writes: another tool's group, an array of another dtype, shape,
chunking or codec raises CorruptStoreError naming its zarr.json.

Processes: zarr-python resets its event-loop thread in a forked child (``os.register_at_fork``), so a child
that opens its own handle reads; handles must not cross a fork (the suite's workers are spawned).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import zarr
from zarr.core.buffer.cpu import NDBuffer

from storage_impls.core.base import BatchReader, ImageStore, Mode
from storage_impls.core.checkpointed import Checkpoint, EncodedCheckpointedStore, Source, live_folder
from storage_impls.core.codecs import Codec
from storage_impls.core.errors import CorruptStoreError, StoreError
from storage_impls.core.fileio import READ_FLAGS, fsync_path
from storage_impls.core.options import check_options, choice
from storage_impls.methods.zarr.format import (
    COMPRESSIONS,
    CRC,
    FORMAT,
    WRITE_BATCH,
    ChunkDecoder,
    Layout,
    foreign_metadata,
    label_chunk,
    open_group,
    read_labels,
    read_shard_index,
    shard_images,
    write_group,
)

OPTIONS = {"compression": choice(*COMPRESSIONS), "reader": choice("pread", "zarr")}
DEFAULTS = {"compression": "none", "reader": "zarr"}
T = TypeVar("T")


def live_group(directory: str | os.PathLike) -> Path:
    """The folder of the zarr group a store in ``directory`` reads now (for zarr's own readers)."""
    return live_folder(directory, ZarrStore.POINTER, FORMAT)


class ZarrCheckpoint(Checkpoint):
    """One group, open: its labels in memory; with ``reader="pread"`` every shard file open."""

    def __init__(self, folder: Path, meta: dict, reader: str) -> None:
        super().__init__(folder, meta)
        self.per_shard, self.label_chunk, self.compression = (
            meta.get(key) for key in ("shard_images", "label_chunk", "compression")
        )
        if (
            not all(type(value) is int and 1 <= value <= self.count for value in (self.per_shard, self.label_chunk))
            or self.compression not in COMPRESSIONS
        ):
            raise CorruptStoreError(
                f"{folder}: {self.per_shard!r} images per shard, {self.label_chunk!r} labels per chunk "
                f"and compression {self.compression!r} do not fit a store of {self.count} images"
            )
        layout = Layout(
            self.dtype,
            self.shape,
            self.count,
            self.per_shard,
            self.label_chunk,
            self.compression,
            self.checksum,
            self.codec.spec,
        )
        self.images, labels = open_group(folder, layout)  # the metadata only: nothing of the declared count yet
        shards, present = -(-self.count // self.per_shard), len(os.listdir(folder / "images" / "c"))
        if present != shards:  # before a path per declared shard, or an array of the declared count, is made
            raise CorruptStoreError(
                f"{folder}: {self.count} images make {shards} shards of {self.per_shard}, {present} are there"
            )
        self.paths = [layout.shard_path(folder, index) for index in range(-(-self.count // self.per_shard))]
        self.decoder = ChunkDecoder(self.compression, self.checksum, self.row, layout.encoded)
        self.reader = reader
        self.fds: list[int] = []
        # the pread reader's view of the shard indexes, loaded a shard at a time on first use
        self.offsets, self.lengths = np.zeros(self.count, np.int64), np.zeros(self.count, np.int64)
        self.loaded, self.dense = np.zeros(len(self.paths), bool), np.zeros(len(self.paths), bool)
        try:
            for path in self.paths:  # pread: kept open; zarr: only checked here, zarr opens them per read
                if reader == "pread":
                    self.fds.append(os.open(path, READ_FLAGS))
                else:
                    os.stat(path)
            self.labels = read_labels(labels, folder)
        except BaseException:
            self.close()
            raise

    # -- reading through zarr-python ----------------------------------------------------------
    def _through_zarr(self, read: Callable[[], T], ids: Callable[[], np.ndarray]) -> T:
        """Run a zarr read of images ``ids()``; zarr's errors become CorruptStoreError naming the shard that fails."""
        try:
            return read()
        except (FileNotFoundError, StoreError):
            raise
        except Exception as error:  # noqa: BLE001  (a damaged shard: a checksum, a size or a codec that fails)
            if isinstance(error, MemoryError):
                raise
            raise CorruptStoreError(
                f"{self._failing_shard(ids())} is damaged ({type(error).__name__}: {error})"
            ) from None

    def _failing_shard(self, ids: np.ndarray) -> Path | str:
        """The first shard whose images among ``ids`` zarr fails to read (read again shard by shard)."""
        for shard in np.unique(ids // self.per_shard).tolist():
            try:
                self.images.get_orthogonal_selection((ids[ids // self.per_shard == shard],))
            except Exception:  # noqa: BLE001
                return self.paths[shard]
        return f"a shard of {self.folder / 'images'}"

    # -- reading shard files --------------------------------------------------------------------
    def _load_indexes(self, shards: np.ndarray) -> None:
        """Read the index of each of ``shards`` not read yet."""
        for shard in np.unique(shards[~self.loaded[shards]]).tolist():
            first = shard * self.per_shard
            used = min(self.per_shard, self.count - first)
            offsets, lengths = read_shard_index(
                self.fds[shard], self.paths[shard], self.per_shard, used, self.decoder.raw_bytes
            )
            self.offsets[first : first + used], self.lengths[first : first + used] = offsets, lengths
            self.dense[shard] = self.decoder.raw_bytes is not None and bool(
                np.array_equal(offsets, offsets[0] + np.arange(used) * self.decoder.raw_bytes)
            )
            self.loaded[shard] = True

    def _cut_short(self, shard: int, offset: int, size: int) -> CorruptStoreError:
        return CorruptStoreError(f"{self.paths[shard]} ends before byte {offset + size} (cut short)")

    def read_rows(self, start: int, out: np.ndarray, labels: np.ndarray) -> None:
        stop = start + len(out)
        labels[:] = self.labels[start:stop]
        if self.reader == "zarr":
            self._through_zarr(
                lambda: self.images.get_basic_selection(slice(start, stop), out=NDBuffer.from_numpy_array(out)),
                lambda: np.arange(start, stop),
            )
            return
        flat = out.reshape(len(out), -1).view(np.uint8)
        shards = np.arange(start // self.per_shard, (stop - 1) // self.per_shard + 1)
        self._load_indexes(shards)
        for shard in shards.tolist():
            low, high = max(start, shard * self.per_shard), min(stop, (shard + 1) * self.per_shard)
            rows, offsets, lengths = flat[low - start : high - start], self.offsets[low:high], self.lengths[low:high]
            if self.dense[shard] and not self.decoder.checksum:  # the run of chunks is the run of pixels: one read
                span, begin = rows, int(offsets[0])
            else:  # the chunks' run, then each decoded (and checked) into its row
                begin = int(offsets.min())
                span = np.empty(int((offsets + lengths).max()) - begin, np.uint8)
            if os.preadv(self.fds[shard], [span], begin) != span.nbytes:
                raise self._cut_short(shard, begin, span.nbytes)
            if span is not rows:
                for row, offset, length in zip(rows, (offsets - begin).tolist(), lengths.tolist()):
                    self.decoder.decode_into(span[offset : offset + length], row, self.paths[shard])

    def take(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        np.take(self.labels, ids, out=labels)
        if self.reader == "zarr":
            self._through_zarr(
                lambda: self.images.get_orthogonal_selection((ids,), out=NDBuffer.from_numpy_array(out)), lambda: ids
            )
            return
        shards = ids // self.per_shard
        self._load_indexes(shards)
        flat, decoder, fds, row_bytes = out.reshape(len(out), -1).view(np.uint8), self.decoder, self.fds, self.row
        places = zip(flat, shards.tolist(), self.offsets[ids].tolist())
        if decoder.raw_bytes is None:  # compressed: read each chunk, then decode it into its row
            for (row, shard, offset), length in zip(places, self.lengths[ids].tolist()):
                data = os.pread(fds[shard], length, offset)
                if len(data) != length:
                    raise self._cut_short(shard, offset, length)
                decoder.decode_into(data, row, self.paths[shard])
        elif decoder.checksum:  # the pixels straight into the row, their CRC-32C beside them
            trailer = np.empty(CRC, np.uint8)
            for row, shard, offset in places:
                if os.preadv(fds[shard], [row, trailer], offset) != row_bytes + CRC:
                    raise self._cut_short(shard, offset, row_bytes + CRC)
                decoder.check_crc(row, trailer, self.paths[shard])
        else:  # the pixels straight into the row: one preadv per image
            for row, shard, offset in places:
                if os.preadv(fds[shard], [row], offset) != row_bytes:
                    raise self._cut_short(shard, offset, row_bytes)

    def payloads(self, ids: np.ndarray) -> tuple[list[bytes | memoryview], np.ndarray]:
        if self.reader == "zarr":  # an object array of bytes, one per id
            values = self._through_zarr(lambda: self.images.get_orthogonal_selection((ids,)), lambda: ids)
            return list(values), self.labels[ids]
        shards = ids // self.per_shard
        self._load_indexes(shards)
        payloads = []
        for shard, offset, length in zip(shards.tolist(), self.offsets[ids].tolist(), self.lengths[ids].tolist()):
            data = os.pread(self.fds[shard], length, offset)  # the chunk: one pread per image
            if len(data) != length:
                raise self._cut_short(shard, offset, length)
            payloads.append(self.decoder.payload(data, self.paths[shard]))
        return payloads, self.labels[ids]

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop())


class ZarrStore(EncodedCheckpointedStore):
    """A zarr v3 group of sharded images and labels per checkpoint, plus a journal."""

    method = "zarr"
    OPTIONS = {**EncodedCheckpointedStore.OPTIONS, **OPTIONS}
    slow_random_reads = (
        "zarr-python's orthogonal selection costs about 1 ms per image of a shuffled batch (zarr's "
        "event-loop round trip and a file read per chunk); zarr:reader=pread reads the same shards at "
        "about 3 us per image: name either in --methods to run them"
    )
    POINTER, JOURNAL, FORMAT = "zarr.json", "zarr.journal", FORMAT

    def __init__(
        self,
        directory: str | os.PathLike,
        mode: Mode = "a",
        *,
        compression: str | None = None,
        reader: str | None = None,
        **options: object,
    ) -> None:
        # compression None: the store's recorded one (a new store: none); reader: this handle's way of reading
        self.settings = check_options(self.method, OPTIONS, {"compression": compression, "reader": reader})
        foreign = foreign_metadata(Path(os.path.abspath(directory)))
        if foreign:  # refused before the base class creates anything in the directory
            raise CorruptStoreError(
                f"{foreign} belongs to a zarr node written by another tool, not to a zarr store "
                "of this package (whose zarr.json names its live group): use another directory"
            )
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
        recorded = (self._meta or {}).get("compression", DEFAULTS["compression"])
        compression = self.settings.get("compression", recorded)
        per_shard, labels_per_chunk = shard_images(dtype, shape, count), label_chunk(count)
        with zarr.config.set({"codec_pipeline.batch_size": WRITE_BATCH}):  # read when an array is made
            layout = Layout(dtype, shape, count, per_shard, labels_per_chunk, compression, checksum, codec.spec)
            images, labels = write_group(folder, layout)
            all_labels = np.empty(count, np.int64)
            for start in range(0, count, per_shard):  # one whole shard per call: written once, never read back
                block, block_labels = source(start, min(count, start + per_shard))
                if layout.encoded:  # a list of encoded images (bytes, or memoryviews when folding): zarr takes objects
                    values = np.empty(len(block), object)
                    values[:] = [bytes(payload) for payload in block]
                    block = values
                images[start : start + len(block)] = block
                all_labels[start : start + len(block)] = block_labels
            labels[:] = all_labels
        if self.durable:
            for root, _folders, files in os.walk(folder, topdown=False):
                for name in files:
                    fsync_path(Path(root, name))
                fsync_path(Path(root))
        return {
            "shard_images": per_shard,
            "label_chunk": labels_per_chunk,
            "compression": compression,
            "zarr_version": zarr.__version__,
        }  # what wrote the group, for whoever reads it with another

    def _open_checkpoint(self, folder: Path, meta: dict) -> Checkpoint:
        return ZarrCheckpoint(folder, meta, self.settings.get("reader", DEFAULTS["reader"]))

    @classmethod
    def library_reader(cls, directory: Path, image_shape: tuple[int, ...]) -> tuple[str, BatchReader]:
        from storage_impls.methods.zarr.reference import orthogonal_reader

        return "zarr-python alone (oindex)", orthogonal_reader(live_group(directory))

    @classmethod
    def remote_reader(cls) -> type[ImageStore]:
        from storage_impls.methods.zarr.remote import RemoteZarrStore  # it imports this module

        return RemoteZarrStore
