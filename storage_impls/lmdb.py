"""LMDB: one key per image, the value being a 16-byte header and the raw pixel bytes.

Key: the image id as 8 big-endian bytes, so that LMDB's byte order is id order and a cursor
walks ids 0..N-1. Value header (``<2sBBHHq``): magic ``b"IM"``, format version, channels
(0 for a 2-D image), height, width, label. No pickle: loading pickles runs arbitrary code.

``store_many`` is one write transaction (drop everything, append every key), so it is
all-or-nothing. The map size is computed from the data with headroom before a write and
doubled on ``MapFullError`` (the transaction is retried), so a growing store never fails for
lack of map. On Linux the map is address space, not disk: the file grows only as it fills.

Concurrency: LMDB allows one writer and any number of readers, across processes, with
readers seeing a consistent snapshot. A handle knows the image count it saw when opened (or
last wrote): open the store again to see what another process added since. The environment stays open between calls; open the
store again in each process after a fork (an LMDB environment must not cross a fork).
"""
from __future__ import annotations

import math
import struct

import lmdb
import numpy as np

from storage_impls.base import ImageStore
from storage_impls.errors import CorruptStoreError, MissingStoreError

HEADER = struct.Struct("<2sBBHHq")  # magic, version, channels (0 = 2-D), height, width, label
MAGIC = b"IM"
FORMAT_VERSION = 1
KEY = struct.Struct(">Q")
HEADROOM = 2  # map size = HEADROOM x (pages in use + pages the write needs)
MIN_MAP_SIZE = 1 << 20
STAGING_BYTES = 8 << 20  # values assembled per block in store_many


def _header_prefix(shape: tuple[int, ...]) -> bytes:
    """The header bytes that every image of ``shape`` shares (all but the label)."""
    channels = shape[2] if len(shape) == 3 else 0
    return HEADER.pack(MAGIC, FORMAT_VERSION, channels, shape[0], shape[1], 0)[:HEADER.size - 8]


class LmdbStore(ImageStore):
    """Images as raw bytes under one key each in an LMDB environment."""

    method = "lmdb"

    def _open(self) -> None:
        if self.mode == "r" and not (self.directory / "data.mdb").exists():
            raise MissingStoreError(f"no lmdb store at {self.directory}: data.mdb does not exist")
        try:
            self._env = lmdb.open(
                str(self.directory), readonly=self.mode == "r", create=self.mode == "a",
                map_size=MIN_MAP_SIZE, sync=self.durable, metasync=self.durable, max_dbs=0,
            )
        except lmdb.Error as error:
            raise CorruptStoreError(f"{self.directory} is not a readable LMDB environment: {error}") from None
        self._db = self._env.open_db()
        self._shape: tuple[int, ...] | None = None
        with self._env.begin(buffers=True) as txn:
            self._count = txn.stat(self._db)["entries"]
            cursor = txn.cursor()
            if cursor.first():
                self._shape = _parse_header(cursor.value(), self.directory)[0]

    def _refresh(self) -> None:
        pass  # TODO(fault work): catch up with other writers

    def __len__(self) -> int:
        return self._count

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        return self._shape

    def _replace_all(self, images: np.ndarray, labels: np.ndarray) -> None:
        count, shape = len(images), images.shape[1:]
        pixels = images.reshape(count, -1)
        keys = np.arange(count, dtype=">u8").view(np.uint8).reshape(count, KEY.size)
        label_bytes = labels.astype("<i8").view(np.uint8).reshape(count, 8)
        # values are assembled a block at a time in one reused buffer: header prefix, label, pixels
        block = max(1, min(count, STAGING_BYTES // (HEADER.size + pixels.shape[1])))
        staging = np.empty((block, HEADER.size + pixels.shape[1]), np.uint8)
        prefix = np.frombuffer(_header_prefix(shape), np.uint8)
        staging[:, :len(prefix)] = prefix

        def write(txn: lmdb.Transaction) -> None:
            txn.drop(self._db, delete=False)
            cursor = txn.cursor()
            for start in range(0, count, block):
                stop = min(count, start + block)
                staging[:stop - start, len(prefix):HEADER.size] = label_bytes[start:stop]
                staging[:stop - start, HEADER.size:] = pixels[start:stop]
                for image_id, value in zip(range(start, stop), staging):
                    cursor.put(keys[image_id], value, append=True)

        self._write(write, count * self._value_footprint(pixels.shape[1]))
        self._count, self._shape = count, shape

    def _put(self, image: np.ndarray, image_id: int, label: int) -> None:
        value = _header_prefix(image.shape) + struct.pack("<q", label) + image.tobytes()
        self._write(lambda txn: txn.put(KEY.pack(image_id), value), self._value_footprint(image.size))
        if image_id == self._count:
            self._count += 1
        self._shape = image.shape

    def _value_footprint(self, pixel_bytes: int) -> int:
        """Bytes one value takes in the map: overflow pages for values above half a page."""
        page = self._env.stat()["psize"]
        size = HEADER.size + pixel_bytes
        if size > page // 2:
            return math.ceil((size + 16) / page) * page
        return 2 * (size + KEY.size + 16)

    def _write(self, write, needed_bytes: int) -> None:
        """Run ``write(txn)`` in one transaction, growing the map first if it is short and on MapFullError."""
        info, page = self._env.info(), self._env.stat()["psize"]
        in_use = (info["last_pgno"] + 1) * page
        if info["map_size"] < in_use + needed_bytes:
            self._env.set_mapsize(HEADROOM * (in_use + needed_bytes))
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    write(txn)
                break
            except lmdb.MapFullError:
                self._env.set_mapsize(2 * self._env.info()["map_size"])
        if self.durable:
            self._env.sync(True)

    def _read_txn(self) -> lmdb.Transaction:
        """A read transaction, adopting the map size if another process has grown it."""
        try:
            return self._env.begin(buffers=True)
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)
            return self._env.begin(buffers=True)

    def _get(self, image_id: int) -> tuple[np.ndarray, int]:
        with self._read_txn() as txn:
            value = txn.get(KEY.pack(image_id))
            if value is None:
                raise CorruptStoreError(f"{self.directory}: key of image {image_id} is missing")
            shape, label = _parse_header(value, self.directory)
            image = np.frombuffer(value, np.uint8, offset=HEADER.size).reshape(shape).copy()
        return image, label

    def _read_into(self, out: np.ndarray, labels: np.ndarray) -> None:
        count = len(out)
        pixels = out.reshape(count, -1)
        headers = np.empty((count, HEADER.size), np.uint8)
        with self._read_txn() as txn:
            values = txn.cursor().iternext(keys=False, values=True)
            try:
                for image_id in range(count):
                    value = next(values)
                    headers[image_id] = value[:HEADER.size]
                    pixels[image_id] = value[HEADER.size:]
            except (ValueError, StopIteration):
                raise CorruptStoreError(f"{self.directory}: value {image_id} has the wrong size or is missing") from None
        prefix = np.frombuffer(_header_prefix(self._shape), np.uint8)
        if not (headers[:, :len(prefix)] == prefix).all():
            raise CorruptStoreError(f"{self.directory}: an image header does not match shape {self._shape}")
        labels[:] = headers[:, len(prefix):].copy().view("<i8").ravel()

    def _close(self) -> None:
        self._env.close()


def _parse_header(value: memoryview | bytes, directory: object) -> tuple[tuple[int, ...], int]:
    """Shape and label from a value's header; CorruptStoreError if it is not one of ours."""
    if len(value) < HEADER.size:
        raise CorruptStoreError(f"{directory}: a value is too short to hold an image header")
    magic, version, channels, height, width, label = HEADER.unpack_from(value)
    shape = (height, width, channels) if channels else (height, width)
    if magic != MAGIC or version != FORMAT_VERSION or len(value) != HEADER.size + math.prod(shape):
        raise CorruptStoreError(f"{directory}: a value is not an image written by storage_impls.lmdb")
    return shape, label
