"""The Lance dataset of a ``lance`` store: its schema, building Arrow tables from images without per-row
Python objects, one open version (``Snapshot``) with its id -> row address map, and how Lance's errors
become this package's typed errors.

A row is ``id`` (int64), ``label`` (int64), ``image`` and, in a checksummed store, ``checksum`` (uint64,
xxh3_64 of the image's stored bytes seeded with the label). ``image`` holds the raw pixels in C order as
``fixed_size_binary`` of the image's byte size, or, in a store with a codec (codecs.py), each image's
encoded file (JPEG, PNG, WebP) as variable-length ``binary``. The schema metadata records the dtype
(``storage_impls.dtype``, numpy's spelling), the shape (``storage_impls.shape``, JSON) and a codec other
than raw (``storage_impls.codec``, e.g. ``jpeg-90``), so that any Lance reader can decode the images:
``np.frombuffer(row["image"], dtype).reshape(shape)``, or any decoder of that codec (Pillow).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa

from storage_impls.core.codecs import RAW, Codec, get_codec
from storage_impls.core.encoded import decode
from storage_impls.core.errors import CorruptStoreError, StoreError, is_no_space, no_space_error
from storage_impls.core.fileio import fsync_path
from storage_impls.core.records import image_checksums, verify_checksums
from storage_impls.formats.arrow import binary_values

LOCAL_NAME = re.compile(r"(_deletions/)?[\w-]+\.(lance|arrow|bin)")  # a data file, or a deletion file in _deletions/

DTYPE_KEY, SHAPE_KEY, CODEC_KEY = b"storage_impls.dtype", b"storage_impls.shape", b"storage_impls.codec"
TAKE_BLOCK_BYTES = 64 << 20  # pixels one take returns at most: a large batch is copied block by block
NO_SPACE_TEXTS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122", "File too large")
#: what Lance and Arrow raise for files they cannot read (pyo3 panics derive from BaseException, see lance_errors)
LIBRARY_ERRORS = (OSError, ValueError, RuntimeError, pa.ArrowException)


def schema(dtype: np.dtype, shape: tuple[int, ...], checksum: bool, codec: Codec = RAW) -> pa.Schema:
    """The Arrow schema of a store of images of ``dtype`` and ``shape`` stored in ``codec``."""
    image = pa.binary(int(np.prod(shape)) * dtype.itemsize) if codec is RAW else pa.binary()
    fields = [pa.field("id", pa.int64(), False), pa.field("label", pa.int64(), False), pa.field("image", image, False)]
    if checksum:
        fields.append(pa.field("checksum", pa.uint64(), False))
    metadata = {DTYPE_KEY: dtype.str.encode(), SHAPE_KEY: json.dumps(list(shape)).encode()}
    if codec is not RAW:
        metadata[CODEC_KEY] = codec.spec.encode()
    return pa.schema(fields, metadata=metadata)


def encoded(codec: Codec, images: np.ndarray) -> np.ndarray | list[bytes]:
    """What the image column stores of ``images``: the images themselves (raw), else each one's bytes, encoded once."""
    return images if codec is RAW else [codec.encode(image) for image in images]


def batch(
    table_schema: pa.Schema, first_id: int, payloads: np.ndarray | list[bytes], labels: np.ndarray
) -> pa.RecordBatch:
    """Rows with ids ``first_id``.. and ``labels`` for ``payloads`` (``encoded``: raw images, C-contiguous, which the
    image column views without a copy, or encoded bytes); a checksum column of those bytes if the schema has one."""
    count, image = len(payloads), table_schema.field("image").type
    if pa.types.is_fixed_size_binary(image):
        column = pa.FixedSizeBinaryArray.from_buffers(
            image, count, [None, pa.py_buffer(np.ascontiguousarray(payloads))]
        )
    else:
        column = pa.array(payloads, image)
    columns = [
        pa.array(np.arange(first_id, first_id + count, dtype=np.int64)),
        pa.array(labels.astype(np.int64, copy=False)),
        column,
    ]
    if "checksum" in table_schema.names:
        columns.append(pa.array(image_checksums(payloads, labels)))
    return pa.RecordBatch.from_arrays(columns, schema=table_schema)


def check_paths(dataset: lance.LanceDataset, folder: Path) -> None:
    """CorruptStoreError unless every file the open version names lies in ``folder``: no base path (a manifest
    can name other folders, anywhere, for its data files), data and deletion files by plain names (no ``..``,
    not absolute)."""
    if dataset.base_paths():
        raise CorruptStoreError(
            f"{folder}: version {dataset.version} names base paths outside the dataset "
            f"({len(dataset.base_paths())}): a store keeps every file in its own folder"
        )
    for fragment in dataset.get_fragments():
        names = [(data.path, data.base_id) for data in fragment.data_files()] + [(fragment.deletion_file(), None)]
        for name, base in names:
            if name is not None and (base is not None or not LOCAL_NAME.fullmatch(name)):
                raise CorruptStoreError(
                    f"{folder}: version {dataset.version} names a file outside the dataset "
                    f"(fragment {fragment.fragment_id})"
                )


class Snapshot:
    """One version of the dataset in ``folder``, open for reading: labels (and checksums) in memory, and the
    row address (fragment id << 32 | row in fragment) of every id, read once when it opens."""

    def __init__(self, folder: Path, meta: dict) -> None:
        self.folder, self.meta = folder, meta
        self.dtype, self.shape, self.checksum = np.dtype(meta["dtype"]), tuple(meta["image_shape"]), meta["checksum"]
        self.codec = get_codec(meta.get("codec", RAW.spec))
        self.schema = schema(self.dtype, self.shape, self.checksum, self.codec)
        self.row = int(np.prod(self.shape)) * self.dtype.itemsize  # bytes of an image's pixels
        with lance_errors(folder):
            self.dataset = self._open_dataset()
            found = self.dataset.schema
            if _fields(found) != _fields(self.schema) or found.metadata != self.schema.metadata:  # nulls: on read
                stored = "" if self.codec is RAW else f" in {self.codec.spec}"
                raise CorruptStoreError(
                    f"{folder} is not a Lance dataset of {self.dtype} images of shape {self.shape}"
                    f"{stored}: its schema is {_describe(found)}, expected {_describe(self.schema)}"
                )
            columns = ["id", "label"] + ["checksum"] * self.checksum
            table = self.dataset.to_table(columns=columns, with_row_address=True)
        self.version = self.dataset.version
        ids = _column(table, "id", np.int64, folder)
        count = len(ids)
        if not _is_permutation(ids):
            raise CorruptStoreError(
                f"{folder}: the ids of version {self.version} are not 0..{count - 1}, each once "
                "(a damaged dataset, or rows another tool added)"
            )
        self.labels, self.addresses = np.empty(count, np.int64), np.empty(count, np.uint64)
        self.labels[ids] = _column(table, "label", np.int64, folder)
        self.addresses[ids] = _column(table, "_rowaddr", np.uint64, folder)
        mismatch = np.flatnonzero(ids != np.arange(count))
        self.in_order = int(mismatch[0]) if len(mismatch) else count  # rows 0..in_order-1 hold ids 0..in_order-1
        self.sums = None
        if self.checksum:
            self.sums = np.empty(count, np.uint64)
            self.sums[ids] = _column(table, "checksum", np.uint64, folder)

    def _open_dataset(self) -> lance.LanceDataset:
        if not (self.folder / "_versions").is_dir():  # lance.dataset says "not found" for damage and absence alike
            raise FileNotFoundError(2, "no such Lance dataset", str(self.folder))
        dataset = lance.dataset(str(self.folder))
        check_paths(dataset, self.folder)  # no base path or file outside the store
        return dataset

    def __len__(self) -> int:
        return len(self.labels)

    def committed(self, dataset: lance.LanceDataset, image_id: int, label: int, row: pa.Table) -> bool:
        """Take on ``dataset``, the version a single write of ``row`` (image ``image_id``) just committed, whose new
        fragment (that one row) Lance puts last; False, changing nothing, if it is not there."""
        fragment = dataset.get_fragments()[-1]
        if fragment.metadata.physical_rows != 1:
            return False
        address = np.uint64(fragment.fragment_id << 32)
        checksum = row.column("checksum").to_numpy() if self.sums is not None else None
        if image_id == len(self):
            self.in_order += self.in_order == image_id  # an append after rows that are all in order keeps the order
            self.labels, self.addresses = np.append(self.labels, label), np.append(self.addresses, address)
            if checksum is not None:
                self.sums = np.append(self.sums, checksum)
        else:
            self.in_order = min(self.in_order, image_id)  # the old row is deleted: the rows after it move up
            self.labels[image_id], self.addresses[image_id] = label, address
            if checksum is not None:
                self.sums[image_id] = checksum[0]
        self.dataset, self.version = dataset, dataset.version
        return True

    def read_rows(self, out: np.ndarray, labels: np.ndarray) -> None:
        """Fill ``out``/``labels`` with images 0..len(out)-1: a scan of the first rows where they hold those ids in
        order (after store_many and appends), 1.4-4x faster than a take of every row; a take where they do not."""
        count = len(out)
        if self.in_order < count:
            self.take(np.arange(count, dtype=np.int64), out, labels)
            return
        position = 0
        with lance_errors(self.folder):
            for found in self.dataset.to_batches(columns=["image"], limit=count):
                column = pa.chunked_array([found.column(0)])
                self._fill(column, np.arange(position, position + len(column)), out[position : position + len(column)])
                position += len(column)
        if position != count:
            raise CorruptStoreError(f"{self.folder}: a scan of {count} images returned {position} rows")
        labels[:] = self.labels[:count]

    def take(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        """Fill ``out[i]``/``labels[i]`` with image ``ids[i]`` (valid ids, any order), a block of rows per take."""
        step = max(1, TAKE_BLOCK_BYTES // self.row)
        for start in range(0, len(ids), step):
            block = ids[start : start + step]
            with lance_errors(self.folder):
                # row addresses, not offsets: take() by offset slows down with every deleted row (a replaced image)
                column = self.dataset._take_rows(self.addresses[block], columns=["image"]).column("image")
            self._fill(column, block, out[start : start + len(block)])
        labels[:] = self.labels[ids]

    def _fill(self, column: pa.ChunkedArray, ids: np.ndarray, out: np.ndarray) -> None:
        """Images ``ids`` into ``out`` from ``column``, the image values of their rows: raw pixels copied, encoded
        bytes decoded; in a checksummed store the stored bytes are checked first."""
        if len(column) != len(out) or column.null_count or column.type != self.schema.field("image").type:
            raise CorruptStoreError(
                f"{self.folder}: a read of {len(out)} images returned {len(column)} rows of "
                f"{column.type} ({column.null_count} null)"
            )
        if self.codec is RAW:
            flat, position = out.reshape(len(out), -1).view(np.uint8), 0
            for chunk in column.chunks:
                flat[position : position + len(chunk)] = np.frombuffer(
                    chunk.buffers()[1], np.uint8, len(chunk) * self.row, chunk.offset * self.row
                ).reshape(-1, self.row)
                position += len(chunk)
            payloads = out
        else:
            payloads = [value for chunk in column.chunks for value in binary_values(chunk)]
        if self.sums is not None:
            verify_checksums(ids, payloads, self.labels[ids], self.sums[ids], self.folder)
        if self.codec is not RAW:
            for image_id, payload, target in zip(ids.tolist(), payloads, out):
                decode(self.codec, payload, target, f"{self.folder}: image {image_id}")


def _is_permutation(ids: np.ndarray) -> bool:
    """True if ``ids`` holds each of 0..len-1 exactly once."""
    if len(ids) == 0 or ids.min() < 0 or ids.max() >= len(ids):
        return False
    seen = np.zeros(len(ids), bool)
    seen[ids] = True
    return bool(seen.all())


def _column(table: pa.Table, name: str, dtype: type, folder: Path) -> np.ndarray:
    column = table.column(name)
    if column.null_count:
        raise CorruptStoreError(f"{folder}: column {name} holds nulls")
    return column.to_numpy().astype(dtype, copy=False)


def _fields(found: pa.Schema) -> list[tuple[str, pa.DataType]]:
    return [(field.name, field.type) for field in found]


def _describe(found: pa.Schema) -> str:
    fields = ", ".join(f"{field.name} {field.type}" for field in found)
    meta = {
        key.decode(errors="replace"): value.decode(errors="replace") for key, value in (found.metadata or {}).items()
    }
    return f"({fields}) with metadata {meta}"


@contextlib.contextmanager
def lance_errors(where: Path) -> Iterator[None]:
    """Turn what Lance and Arrow raise into typed errors naming ``where``: NoSpaceError for a full disk,
    FileNotFoundError (for the caller to classify) for a missing file, CorruptStoreError for the rest."""
    try:
        yield
    except (StoreError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as error:  # noqa: BLE001  (pyo3's PanicException derives from BaseException)
        if isinstance(error, OSError) and error.errno is not None:  # Python's own: a missing file, a permission
            if is_no_space(error):
                raise no_space_error(where.parent, error) from error
            raise
        if not isinstance(error, LIBRARY_ERRORS) and type(error).__name__ != "PanicException":
            raise
        text = str(error)
        if any(marker in text for marker in NO_SPACE_TEXTS):
            raise no_space_error(where.parent, OSError(errno.ENOSPC, text)) from None
        if "Not found" in text or "No such file or directory" in text or "was not found" in text:
            raise FileNotFoundError(errno.ENOENT, f"Lance could not find a file ({text[:300]})", str(where)) from None
        first_line = text.splitlines()[0][:300] if text else ""
        raise CorruptStoreError(f"{where}: Lance cannot read it ({type(error).__name__}: {first_line})") from None


def sync_new(folder: Path, before: set[str]) -> None:
    """fsync every file below ``folder`` not in ``before`` (relative paths), then every directory, deepest first."""
    directories = []
    for root, _dirs, files in os.walk(folder):
        directories.append(root)
        for name in files:
            path = os.path.join(root, name)
            if os.path.relpath(path, folder) not in before:
                fsync_path(Path(path))
    for root in reversed(directories):
        fsync_path(Path(root))


def listing(folder: Path) -> set[str]:
    """Relative paths of every file below ``folder``."""
    return {
        os.path.relpath(os.path.join(root, name), folder) for root, _dirs, files in os.walk(folder) for name in files
    }
