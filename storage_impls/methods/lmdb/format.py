"""The values of an LMDB store: one image each, a header, the raw pixels and an optional checksum.

A value (under the image id as 8 big-endian bytes) starts with a prefix. uint8 images of up to 255
channels take the 8-byte prefix ``<2sBBHH`` (magic ``b"IM"``, version 1 or 2, channels or 0 for a
2-D image, height, width); any other dtype or band count the 24-byte ``<2sBBB3x4sIII`` (magic,
version 3 or 4, the number of dimensions, the dtype as numpy spells it (``"<f4"``), three dimensions,
unused ones 0). Images kept encoded (the ``codec`` option, codecs.py) take the 36-byte
``<2sBB4sIII16s``: the same fields, version 5 or 6, then the codec's spec (``"jpeg-90"``, NUL-padded);
their values are as long as the encoded bytes make them. Versions 1, 3 and 5: the label (``<q``) and
the pixels (or the encoded bytes) follow. Versions 2, 4 and 6 (``checksum=True``): the xxh3_64 (``<Q``)
of the label and what follows it, seeded with the image id, then the label and the pixels; so bit rot
anywhere in a value, and a value LMDB returns under another id (a damaged key), are caught; a damaged
prefix never matches. Every read checks the prefix against the store's, the length against header + pixels,
and the checksum if any, and raises CorruptStoreError naming the image id. Both versions are read.

Writing (``put_all``, ``put_value``): values up to ``STAGING_BYTES`` are assembled a block at a time
in one reused buffer; a larger value is filled where LMDB keeps it (``_put_in_place``), so a huge
image costs one copy in memory (LMDB's dirty pages), not two.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
import numpy as np

from storage_impls.core.base import check_dtype, check_image_shape
from storage_impls.core.codecs import RAW, get_codec
from storage_impls.core.errors import CorruptStoreError
from storage_impls.core.records import KEY, checksum_of

PREFIX = struct.Struct("<2sBBHH")  # magic, version, channels (0 = 2-D), height, width: uint8 images
WIDE_PREFIX = struct.Struct("<2sBB4sIII4x")  # magic, version, ndim, dtype, 3 dims: any other image
ENCODED_PREFIX = struct.Struct("<2sBB4sIII16s")  # the same, then the codec's spec: encoded images
VERSION = struct.Struct("<2sB")
MAGIC = b"IM"
PLAIN, CHECKSUMMED, WIDE_PLAIN, WIDE_CHECKSUMMED, ENCODED_PLAIN, ENCODED_CHECKSUMMED = (
    1,
    2,
    3,
    4,
    5,
    6,
)  # value versions
UINT8 = np.dtype(np.uint8)
WORD = 8  # bytes of a label or a checksum
STAGING_BYTES = 8 << 20  # values assembled per block in put_all; larger values are filled in place


@dataclass(frozen=True)
class LmdbValueLayout:
    """How every value of a store is laid out: image shape, whether it carries a checksum, image dtype, codec
    (``size`` is None for encoded images: each value is as long as its bytes)."""

    shape: tuple[int, ...]
    checksummed: bool
    dtype: np.dtype = UINT8
    codec: str = RAW.spec
    prefix_size: int = field(init=False)
    header_size: int = field(init=False)  # prefix [+ checksum] + label: where the pixels start
    label_offset: int = field(init=False)  # where the label starts, and the checksummed bytes
    pixel_bytes: int = field(init=False)
    size: int = field(init=False)
    prefix: bytes = field(init=False)

    def __post_init__(self) -> None:
        channels = self.shape[2] if len(self.shape) == 3 else 0
        if self.codec != RAW.spec:
            prefix = ENCODED_PREFIX.pack(
                MAGIC,
                ENCODED_CHECKSUMMED if self.checksummed else ENCODED_PLAIN,
                len(self.shape),
                self.dtype.str.encode("ascii"),
                *(*self.shape, 0)[:3],
                self.codec.encode("ascii"),
            )
        elif self.dtype == UINT8 and channels <= 255:
            prefix = PREFIX.pack(MAGIC, CHECKSUMMED if self.checksummed else PLAIN, channels, *self.shape[:2])
        else:
            prefix = WIDE_PREFIX.pack(
                MAGIC,
                WIDE_CHECKSUMMED if self.checksummed else WIDE_PLAIN,
                len(self.shape),
                self.dtype.str.encode("ascii"),
                *(*self.shape, 0)[:3],
            )
        header_size = len(prefix) + WORD * (1 + self.checksummed)
        object.__setattr__(self, "prefix_size", len(prefix))
        object.__setattr__(self, "header_size", header_size)
        object.__setattr__(self, "label_offset", header_size - WORD)
        object.__setattr__(self, "pixel_bytes", math.prod(self.shape) * self.dtype.itemsize)
        object.__setattr__(self, "size", header_size + self.pixel_bytes if self.codec == RAW.spec else None)
        object.__setattr__(self, "prefix", prefix)

    def fill(self, value: np.ndarray, image_id: int, label: int, pixels: np.ndarray) -> None:
        """Write the value of ``image_id`` into ``value``, a writable uint8 buffer of ``size`` bytes."""
        self.fill_block(value[np.newaxis], image_id, np.array([label]), pixels[np.newaxis])

    def fill_block(self, values: np.ndarray, first_id: int, labels: np.ndarray, pixels: np.ndarray) -> None:
        """Write the values (n, size) of ids ``first_id``.. with ``labels`` (n,) and ``pixels`` (n images,
        C-contiguous)."""
        values[:, : self.prefix_size] = np.frombuffer(self.prefix, np.uint8)
        values[:, self.label_offset : self.header_size] = labels.astype("<i8").view(np.uint8).reshape(-1, WORD)
        values[:, self.header_size :] = pixels.reshape(len(values), -1).view(np.uint8)
        if self.checksummed:
            sums = [checksum_of(value[self.label_offset :], first_id + row) for row, value in enumerate(values)]
            values[:, self.prefix_size : self.label_offset] = np.array(sums, "<u8").view(np.uint8).reshape(-1, WORD)

    def encoded_value(self, image_id: int, label: int, payload: bytes) -> bytes:
        """The value of one encoded image."""
        tail = label.to_bytes(WORD, "little", signed=True) + payload
        checksum = checksum_of(tail, image_id).to_bytes(WORD, "little") if self.checksummed else b""
        return self.prefix + checksum + tail

    def fits(self, value: memoryview | bytes) -> bool:
        """Whether ``value`` has this layout's length: exactly, or for encoded images at least a header."""
        return len(value) == self.size if self.size is not None else len(value) >= self.header_size

    def check(self, value: memoryview | None, image_id: int, directory: Path) -> int:
        """Validate one value read for ``image_id`` and return its label, or raise CorruptStoreError."""
        if value is None or not self.fits(value) or value[: self.prefix_size] != self.prefix:
            raise self.error(value, image_id, directory)
        if self.checksummed and checksum_of(value[self.label_offset :], image_id) != int.from_bytes(
            value[self.prefix_size : self.label_offset], "little"
        ):
            raise self.checksum_error(image_id, directory)
        return int.from_bytes(value[self.label_offset : self.header_size], "little", signed=True)

    def check_headers(
        self, headers: np.ndarray, sums: list[int], ids: list[int] | range, directory: Path
    ) -> np.ndarray:
        """Validate the headers (n, header_size) of values already checked for length, and their checksums
        against ``sums`` (computed from their contents); return their labels or raise naming the first bad id."""
        bad = np.flatnonzero((headers[:, : self.prefix_size] != np.frombuffer(self.prefix, np.uint8)).any(axis=1))
        if len(bad):
            raise self.error(headers[bad[0]].tobytes(), ids[bad[0]], directory, whole=False)
        if self.checksummed:
            stored = headers[:, self.prefix_size : self.label_offset].copy().view("<u8").ravel()
            bad = np.flatnonzero(stored != np.array(sums, np.uint64))
            if len(bad):
                raise self.checksum_error(ids[bad[0]], directory)
        return headers[:, self.label_offset :].copy().view("<i8").ravel()

    @staticmethod
    def checksum_error(image_id: int, directory: Path) -> CorruptStoreError:
        return CorruptStoreError(f"{directory}: image {image_id} fails its checksum (bit rot or a damaged data.mdb)")

    def error(
        self, value: memoryview | bytes | None, image_id: int, directory: Path, *, whole: bool = True
    ) -> CorruptStoreError:
        """The error for a value of ``image_id`` (or its header only, ``whole=False``) that is not what this
        layout expects, saying what it is."""
        if value is None:
            return CorruptStoreError(
                f"{directory}: the value of image {image_id} is missing from data.mdb (damaged, "
                "or another writer replaced the store with fewer images: open it again)"
            )
        try:
            found = parse_layout(value, whole=whole)
        except CorruptStoreError as error:
            return CorruptStoreError(f"{directory}: image {image_id}: {error}")
        return CorruptStoreError(
            f"{directory}: image {image_id} holds {describe(found)}, but this store holds "
            f"{describe(self)} (a damaged value, or another writer replaced the store: open it again)"
        )


def describe(layout: LmdbValueLayout) -> str:
    encoded = f" encoded as {layout.codec}" if layout.codec != RAW.spec else ""
    return (
        f"images of dtype {layout.dtype} and shape "
        f"{layout.shape}{encoded}{' with checksums' if layout.checksummed else ''}"
    )


def parse_layout(value: memoryview | bytes, *, whole: bool = True) -> LmdbValueLayout:
    """The layout a value claims in its prefix, checked against its own length (if ``whole``: not just a header);
    CorruptStoreError if it is not ours."""
    if len(value) < PREFIX.size + WORD:
        raise CorruptStoreError(f"a value of {len(value)} bytes is too short to hold an image header")
    try:
        layout = _claimed_layout(value)
    except (ValueError, TypeError, struct.error):
        raise CorruptStoreError(
            f"a value of {len(value)} bytes has an invalid header "
            "(not an image written by storage_impls.methods.lmdb.store, or damaged)"
        ) from None
    if whole and not layout.fits(value):
        raise CorruptStoreError(
            f"a value of {len(value)} bytes does not match its header ({describe(layout)}: "
            f"{layout.size or f'at least {layout.header_size}'} bytes)"
        )
    return layout


def _claimed_layout(value: memoryview | bytes) -> LmdbValueLayout:
    magic, version = VERSION.unpack_from(value)
    if magic != MAGIC:
        raise ValueError
    if version in (PLAIN, CHECKSUMMED):
        _, _, channels, height, width = PREFIX.unpack_from(value)
        shape = (height, width, channels) if channels else (height, width)
        dtype, codec = UINT8, RAW.spec
    elif version in (WIDE_PLAIN, WIDE_CHECKSUMMED, ENCODED_PLAIN, ENCODED_CHECKSUMMED):
        encoded = version in (ENCODED_PLAIN, ENCODED_CHECKSUMMED)
        _, _, ndim, dtype_text, *dims = WIDE_PREFIX.unpack_from(value)
        if ndim not in (2, 3) or any(dims[ndim:]):
            raise ValueError
        shape, dtype = tuple(dims[:ndim]), check_dtype(dtype_text.rstrip(b"\0").decode("ascii"), "a value")
        codec = (
            get_codec(ENCODED_PREFIX.unpack_from(value)[-1].rstrip(b"\0").decode("ascii")).spec if encoded else RAW.spec
        )
    else:
        raise ValueError
    check_image_shape(shape, "a value's image")
    return LmdbValueLayout(shape, version in (CHECKSUMMED, WIDE_CHECKSUMMED, ENCODED_CHECKSUMMED), dtype, codec)


def put_all(
    env: lmdb.Environment, txn: lmdb.Transaction, layout: LmdbValueLayout, images: np.ndarray, labels: np.ndarray
) -> None:
    """Replace the contents of ``env`` (in its write transaction ``txn``) with every image as ids 0..N-1."""
    txn.drop(env.open_db(), delete=False)
    count = len(images)
    if layout.codec != RAW.spec:
        codec, cursor = get_codec(layout.codec), txn.cursor()
        for image_id, image in enumerate(images):
            cursor.put(
                KEY.pack(image_id),
                layout.encoded_value(image_id, int(labels[image_id]), codec.encode(image)),
                append=True,
            )
        return
    pixels = images.reshape(count, -1)
    if layout.size > STAGING_BYTES:
        for image_id in range(count):
            put_value(txn, layout, image_id, int(labels[image_id]), pixels[image_id])
        return
    cursor = txn.cursor()
    keys = np.arange(count, dtype=">u8").view(np.uint8).reshape(count, KEY.size)
    block = max(1, min(count, STAGING_BYTES // layout.size))
    staging = np.empty((block, layout.size), np.uint8)
    for first in range(0, count, block):
        last = min(count, first + block)
        values = staging[: last - first]
        layout.fill_block(values, first, labels[first:last], pixels[first:last])
        for key, value in zip(keys[first:last], values):
            cursor.put(key, value, append=True)


def put_value(txn: lmdb.Transaction, layout: LmdbValueLayout, image_id: int, label: int, pixels: np.ndarray) -> None:
    """Put the value of one image in ``txn``: assembled, or filled in place when larger than STAGING_BYTES."""
    key = KEY.pack(image_id)
    if layout.codec != RAW.spec:
        txn.put(key, layout.encoded_value(image_id, label, get_codec(layout.codec).encode(pixels)))
    elif layout.size > STAGING_BYTES:
        _put_in_place(txn, key, layout, image_id, label, pixels)
    else:
        value = np.empty(layout.size, np.uint8)
        layout.fill(value, image_id, label, pixels)
        txn.put(key, value)


def _put_in_place(
    txn: lmdb.Transaction, key: bytes, layout: LmdbValueLayout, image_id: int, label: int, pixels: np.ndarray
) -> None:
    """Put one large value without assembling it first (MDB_RESERVE, which py-lmdb lacks): put zeros read
    from an untouched private mapping (the kernel's zero page, no memory), then fill the value where
    LMDB keeps it. A value put in a write transaction lives in pages LMDB malloc'd for it (dirty, never
    the read-only map: without MDB_WRITEMAP LMDB only maps committed pages, and it spills dirty pages only
    inside a later put or delete), and ``txn.get`` returns those pages (mdb_page_get looks in the dirty list)."""
    zeros = mmap.mmap(-1, layout.size, flags=mmap.MAP_PRIVATE)
    try:
        txn.put(key, zeros)
    finally:
        zeros.close()
    view = txn.get(key)
    address = np.frombuffer(view, np.uint8).ctypes.data
    layout.fill(np.ctypeslib.as_array((ctypes.c_uint8 * layout.size).from_address(address)), image_id, label, pixels)
