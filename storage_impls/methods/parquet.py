"""parquet: every image in one Parquet file written with pyarrow, read back a few row groups at a time.

Layout (see checkpointed.py for the metadata file, the journal and how writes commit):
``DIR/parquet.json`` names ``DIR/ckpt-<token>/images.parquet``, a plain Parquet file with three required
columns: ``id`` (int64, row i holds id i), ``label`` (int64) and ``image`` (``fixed_size_binary`` of the
image's byte size: its raw pixels in C order, native byte order). Row groups hold ``row_group_images``
images each (the last one fewer): as many as fit in ROW_GROUP_BYTES (96 KiB) of pixels, at least one, so 32
images of 32x32x3 uint8. No dictionary encoding (every image differs), no statistics on ``image`` (its min
and max would be two more images per row group), statistics on ``id`` and ``label``, sorted by ``id``;
compression ``none`` by default or ``zstd`` (option ``compression``, recorded in the metadata). With a codec
(``parquet:codec=jpeg-90``, codecs.py) ``image`` is variable-length ``binary`` holding each image's encoded
file (what Hugging Face's image columns hold as bytes: any reader gets the JPEG/PNG/WebP file). The file's
key-value metadata (KEY) records what the store's metadata records (dtype, image shape, count, row-group
size), so the file describes itself to ``pyarrow.parquet.read_table``, pandas or polars. ``DIR/parquet.journal``
holds single-image writes (raw pixels, CRC-checked), since a Parquet file cannot change in place: other
readers see them once the journal is folded into a new file (past max(256, N) records) or after store_many.

Writes: ``store_many`` (and folding the journal) streams blocks of whole row groups into a
``pyarrow.parquet.ParquetWriter``, each column built from the caller's buffers (``FixedSizeBinaryArray.
from_buffers``: no Python object per image), in the checkpoint's temporary folder, renamed into place
before the metadata switches to it. ``checksum=True`` writes Parquet's own page CRC-32s and verifies
them on every read (measured: twice the store time, half the shuffled-read speed); ``durable=True`` fsyncs the file.

Reads: a handle keeps the file open (``pyarrow.OSFile``: ``pread``, no memory map that a truncated file
could turn into SIGBUS; a map was no faster at this row-group size) behind one ``ParquetFile``, whose footer
is parsed and checked once, at open, so a later commit that removes the folder cannot take the snapshot
away. ``read_batch`` reads only the row groups its ids fall in (one ``read_row_groups`` call, each group
once, columns ``label`` and ``image``) and copies the rows it needs from the column's data buffer, viewed
with numpy, into the caller's array; ``read_many`` reads runs of row groups of about COPY_BLOCK_BYTES.
``pre_buffer`` and threads are off: on local disk, coalesced reads made shuffled batches 1.7-1.9x slower,
and threads gained nothing at this row-group size while they would compete with the suite's reader processes.

Row-group size, measured (100 000 synthetic 32x32x3 images, shuffled batches of 256 ids; sweep of 16..4096
images per group in .notes/parquet.md): 32 images (96 KiB) read shuffled batches 1.5-1.7x faster than 64
and 7-12x faster than 512-4096 (warm cache; cold, 1.3x and 2.6x faster than 64 and 256), read sequentially
as fast as larger groups (within the noise of a shared machine; 16 images were 20-40 % slower), and cost
0.4 % more bytes than one huge group and about 2 KB of parsed footer per row group per open handle.

A file whose schema, metadata or row groups are not what this store wrote (another tool's table, a
truncated or damaged file) raises CorruptStoreError naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage_impls.core.base import BatchReader, ImageStore
from storage_impls.core.checkpointed import COPY_BLOCK_BYTES, Checkpoint, EncodedCheckpointedStore, Source, live_folder
from storage_impls.core.codecs import Codec
from storage_impls.core.errors import CorruptStoreError
from storage_impls.core.fileio import fsync_path
from storage_impls.core.options import check_options, choice
from storage_impls.formats.arrow import binary_values
from storage_impls.remote.checkpointed import RemoteCheckpoint, RemoteCheckpointed

FORMAT = "storage_impls.parquet"
IMAGES = "images.parquet"
KEY = b"image_storage_bench"  # the file's key-value metadata entry describing the images (JSON)
ROW_GROUP_BYTES = 96 << 10  # pixels per row group: a random read of one image reads this much
MAX_IMAGE_BYTES = 2**31 - 1  # fixed_size_binary's byte width is an int32
COMPRESSIONS = ("none", "zstd")
OPTIONS = {"compression": choice(*COMPRESSIONS)}
DEFAULT_COMPRESSION = "none"
# what pyarrow raises for a file it cannot read: CRC failures are OSError, a damaged column name UnicodeDecodeError
ARROW_ERRORS = (pa.ArrowException, OSError, UnicodeDecodeError)


def row_group_images(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """Images per row group for images of ``dtype`` and ``shape``."""
    return max(1, ROW_GROUP_BYTES // (int(np.prod(shape)) * dtype.itemsize))


def schema(row: int | None, description: dict | None = None) -> pa.Schema:
    """The store's Arrow schema for raw images of ``row`` bytes (None: encoded images, variable-length ``binary``),
    with ``description`` as the file's metadata."""
    fields = pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("label", pa.int64(), nullable=False),
            pa.field("image", pa.binary() if row is None else pa.binary(row), nullable=False),
        ]
    )
    return fields.with_metadata({KEY: json.dumps(description, sort_keys=True)}) if description else fields


def describe(meta: dict) -> dict:
    """What the file's key-value metadata records, from the store's metadata."""
    return {
        "format": FORMAT,
        "dtype": meta["dtype"],
        "image_shape": list(meta["image_shape"]),
        "count": meta["count"],
        "row_group_images": meta["row_group_images"],
        **({"codec": meta["codec"]} if meta.get("codec", "raw") != "raw" else {}),
    }


class ParquetCheckpoint(Checkpoint):
    """``images.parquet`` open behind one ParquetFile, its footer checked against the store's metadata."""

    def __init__(self, folder: Path, meta: dict) -> None:
        super().__init__(folder, meta)
        self.path = folder / IMAGES
        self.per_group = meta.get("row_group_images")
        if type(self.per_group) is not int or self.per_group < 1 or meta.get("compression") not in COMPRESSIONS:
            raise CorruptStoreError(
                f"{folder.parent / ParquetStore.POINTER}: row_group_images {self.per_group!r}, "
                f"compression {meta.get('compression')!r} are out of range"
            )
        self._source = pa.OSFile(
            str(self.path)
        )  # FileNotFoundError: the store expects it (a commit removed the folder)
        try:
            self._file = pq.ParquetFile(self._source, pre_buffer=False, page_checksum_verification=self.checksum)
            self._check(self._file.metadata, self._file.schema_arrow, meta)
        except BaseException as error:
            self._source.close()
            if isinstance(error, ARROW_ERRORS) and not isinstance(error, CorruptStoreError):
                raise CorruptStoreError(f"{self.path} is not a readable Parquet file ({error})") from None
            raise

    def _check(self, metadata: pq.FileMetaData, found: pa.Schema, meta: dict) -> None:
        """CorruptStoreError naming the file unless its schema, description and row groups are this store's."""
        expected = schema(self.row if self.codec.spec == "raw" else None)
        if not found.remove_metadata().equals(expected):
            raise CorruptStoreError(
                f"{self.path} is not a table of this store: its schema is "
                f"{found.remove_metadata().to_string()!r}, expected {expected.to_string()!r}"
            )
        try:
            description = json.loads((metadata.metadata or {})[KEY])
        except (KeyError, ValueError) as error:
            raise CorruptStoreError(
                f"{self.path} has no readable {KEY.decode()} metadata ({type(error).__name__}): "
                "not a file written by this package"
            ) from None
        if description != describe(meta):
            raise CorruptStoreError(
                f"{self.path} describes {description}, but the store's metadata records {describe(meta)}"
            )
        sizes = [metadata.row_group(index).num_rows for index in range(metadata.num_row_groups)]
        whole, rest = divmod(self.count, self.per_group)
        if metadata.num_rows != self.count or sizes != [self.per_group] * whole + [rest] * bool(rest):
            raise CorruptStoreError(
                f"{self.path} holds {metadata.num_rows} rows in row groups of {sorted(set(sizes))}, "
                f"expected {self.count} in groups of {self.per_group}"
            )

    def _read(self, groups: list[int]) -> pa.Table:
        """Columns label and image of row groups ``groups`` (in that order), checked for their length."""
        try:
            table = self._file.read_row_groups(groups, columns=["label", "image"], use_threads=False)
        except ARROW_ERRORS as error:
            raise self._damaged(groups, error) from None
        expected = sum(min(self.per_group, self.count - group * self.per_group) for group in groups)
        if table.num_rows != expected:
            raise CorruptStoreError(f"{self.path}: row groups {groups} hold {table.num_rows} rows, expected {expected}")
        return table

    def _damaged(self, groups: list[int], error: Exception) -> CorruptStoreError:
        """The error for a failed read of ``groups``, naming the first row group that fails alone."""
        for group in groups:
            try:
                self._file.read_row_group(group, columns=["label", "image"], use_threads=False)
            except ARROW_ERRORS as cause:
                first = group * self.per_group
                last = min(self.count, first + self.per_group) - 1
                return CorruptStoreError(
                    f"{self.path}: row group {group} (images {first}..{last}) cannot be read ({cause})"
                )
        return CorruptStoreError(f"{self.path}: row groups {groups} cannot be read ({error})")

    def _copy(self, table: pa.Table, rows: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        """Copy the table's ``rows`` (positions) into ``out`` and ``labels``. Each chunk's data buffer is viewed
        with numpy, so no Python object is made per image."""
        labels[:] = table.column("label").to_numpy()[rows]  # one chunk: a view
        pixels, start = out.reshape(len(out), -1).view(np.uint8), 0
        for chunk in table.column("image").chunks:
            data = self._pixels(chunk)
            if start == 0 and len(data) == table.num_rows:
                np.take(data, rows, axis=0, out=pixels, mode="clip")  # valid rows; "clip" writes straight into out
            else:
                inside = (rows >= start) & (rows < start + len(data))
                pixels[inside] = data[rows[inside] - start]
            start += len(data)

    def _pixels(self, chunk: pa.FixedSizeBinaryArray) -> np.ndarray:
        """The images of one chunk as a (n, row bytes) uint8 view of its data buffer."""
        return np.frombuffer(chunk.buffers()[1], np.uint8, len(chunk) * self.row, chunk.offset * self.row).reshape(
            -1, self.row
        )

    def payloads(self, ids: np.ndarray) -> tuple[list[memoryview], np.ndarray]:
        groups, inverse = np.unique(ids // self.per_group, return_inverse=True)
        table = self._read(groups.tolist())
        rows = inverse.reshape(-1) * self.per_group + ids % self.per_group
        values = [value for chunk in table.column("image").chunks for value in binary_values(chunk)]
        return [values[row] for row in rows.tolist()], table.column("label").to_numpy()[rows]

    def read_rows(self, start: int, out: np.ndarray, labels: np.ndarray) -> None:
        size, stop = self.per_group, start + len(out)
        step = max(1, COPY_BLOCK_BYTES // (size * self.row))  # row groups read at a time
        last = (stop - 1) // size
        for first in range(start // size, last + 1, step):
            groups = list(range(first, min(first + step, last + 1)))
            low, high = max(start, first * size), min(stop, (groups[-1] + 1) * size)  # ids this block fills
            table = self._read(groups)
            pixels = out[low - start : high - start].reshape(high - low, -1).view(np.uint8)
            labels[low - start : high - start] = table.column("label").to_numpy()[
                low - first * size : high - first * size
            ]
            position = first * size  # the id of the chunk's first row
            for chunk in table.column("image").chunks:
                data = self._pixels(chunk)
                begin, end = max(low, position), min(high, position + len(data))
                if begin < end:
                    pixels[begin - low : end - low] = data[begin - position : end - position]
                position += len(data)

    def take(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        groups, inverse = np.unique(ids // self.per_group, return_inverse=True)
        table = self._read(groups.tolist())
        # every group but the last holds per_group rows, and the last one sorts last
        self._copy(table, inverse.reshape(-1) * self.per_group + ids % self.per_group, out, labels)

    def close(self) -> None:
        self._file.close()
        self._source.close()


class ParquetStore(EncodedCheckpointedStore):
    """All images in one Parquet file (``id``, ``label``, ``image`` columns), plus a journal."""

    method = "parquet"
    OPTIONS = {**EncodedCheckpointedStore.OPTIONS, **OPTIONS}
    POINTER, JOURNAL, FORMAT = "parquet.json", "parquet.journal", FORMAT

    def __init__(
        self, directory: str | os.PathLike, mode: str = "a", *, compression: str | None = None, **options
    ) -> None:
        # None: the store's recorded compression (a new store: none); a value: what this handle's checkpoints use
        self.compression = check_options(self.method, OPTIONS, {"compression": compression}).get("compression")
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
        row = int(np.prod(shape)) * dtype.itemsize
        if row > MAX_IMAGE_BYTES:
            raise ValueError(f"parquet holds images of up to {MAX_IMAGE_BYTES} bytes (fixed_size_binary), got {row}")
        compression = self.compression or (self._meta or {}).get("compression", DEFAULT_COMPRESSION)
        per_group = row_group_images(dtype, shape)
        added = {"compression": compression, "row_group_images": per_group}
        raw = codec.spec == "raw"
        description = describe({"dtype": dtype.str, "image_shape": shape, "count": count, "codec": codec.spec, **added})
        table_schema = schema(row if raw else None, description)
        step = per_group * max(1, COPY_BLOCK_BYTES // (per_group * row))  # whole row groups per block
        path = folder / IMAGES
        sink, writer = pa.OSFile(str(path), "w"), None
        try:
            writer = pq.ParquetWriter(
                sink,
                table_schema,
                compression=compression,
                use_dictionary=False,
                write_statistics=["id", "label"],
                write_page_checksum=checksum,
                sorting_columns=[pq.SortingColumn(0)],
            )
            for start in range(0, count, step):
                images, labels = source(start, min(count, start + step))
                pixels = (
                    pa.FixedSizeBinaryArray.from_buffers(pa.binary(row), len(images), [None, pa.py_buffer(images)])
                    if raw
                    else pa.array(images, pa.binary())
                )
                ids = pa.array(np.arange(start, start + len(images), dtype=np.int64))
                writer.write_table(
                    pa.Table.from_arrays([ids, pa.array(labels), pixels], schema=table_schema), row_group_size=per_group
                )
            writer.close()
        except BaseException:
            sink.close()  # first, so that closing the writer cannot write a footer (the folder is removed)
            if writer is not None:
                with contextlib.suppress(*ARROW_ERRORS):
                    writer.close()
            raise
        sink.close()
        if self.durable:
            fsync_path(path)
        return added

    def _open_checkpoint(self, folder: Path, meta: dict) -> Checkpoint:
        return ParquetCheckpoint(folder, meta)

    @classmethod
    def library_reader(cls, directory: Path, image_shape: tuple[int, ...]) -> tuple[str, BatchReader]:
        return "pyarrow alone (read_row_groups)", row_group_reader(live_folder(directory, cls.POINTER, FORMAT) / IMAGES)

    @classmethod
    def remote_reader(cls) -> type[ImageStore]:
        return RemoteParquetStore


# -- from an object store (remote/): the footer at open, then the label and image column chunks of the row groups a
# read touches, by range (a shuffled batch: two ranges per row group, all in flight at once) -----------------------
FOOTER_GUESS = 64 << 10  # bytes fetched from the end at open: the footer of most stores, else one more request


class RemoteParquetCheckpoint(RemoteCheckpoint, ParquetCheckpoint):
    def stage(self, meta: dict) -> None:
        name = f"{self.key}/{IMAGES}"
        self.staged.sparse(self.key, [IMAGES])
        size = self.staged.size(name)
        tail = min(size, FOOTER_GUESS)
        self.staged.fill([self.span(IMAGES, size - tail, size)])
        footer = int.from_bytes(self.staged.read(name, size - 8, size - 4) if size >= 8 else b"", "little")
        if tail < footer + 8 <= size:
            self.staged.fill([self.span(IMAGES, size - footer - 8, size - tail)])

    def _read(self, groups: list[int]) -> pa.Table:
        metadata, spans = self._file.metadata, []
        for group in groups:
            for column in (1, 2):  # label, image
                chunk = metadata.row_group(group).column(column)
                start = min(offset for offset in (chunk.dictionary_page_offset, chunk.data_page_offset) if offset)
                spans.append(self.span(IMAGES, start, start + chunk.total_compressed_size))
        with self.staged.filled(spans):
            return super()._read(groups)


class RemoteParquetStore(RemoteCheckpointed, ParquetStore):
    """A parquet store read from an object store (read-only)."""

    CHECKPOINT = RemoteParquetCheckpoint


def row_group_reader(path: Path) -> BatchReader:
    """pyarrow alone on a parquet store's file, as its documentation reads part of a file (``ParquetFile``, the row
    groups a batch needs, the image column only), rows then taken out of the column's buffer: benchmarks compare
    read_batch with it. Raw uint8 images only."""
    file = pq.ParquetFile(path)
    per_group = file.metadata.row_group(0).num_rows

    def read(ids: np.ndarray, out: np.ndarray) -> None:
        groups, inverse = np.unique(ids // per_group, return_inverse=True)
        column = file.read_row_groups(groups.tolist(), columns=["image"]).column("image").combine_chunks()
        rows = np.frombuffer(
            column.buffers()[1], np.uint8, len(column) * column.type.byte_width, column.offset * column.type.byte_width
        ).reshape(len(column), -1)
        np.take(
            rows, inverse.reshape(-1) * per_group + ids % per_group, axis=0, out=out.reshape(len(out), -1), mode="clip"
        )

    return read
