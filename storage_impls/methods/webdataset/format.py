"""The bytes of the webdataset method's tar shards: one POSIX (ustar) member per image, written and
checked with numpy a block of members at a time.

A member is ``<key>.npy``, the key the image id as 12 decimal digits (``000000000042.npy``): a
512-byte ustar header with the fields webdataset's ``TarWriter`` writes (mode 0444, owner and group
``bigdata``, uid and gid 0, the store's write time), then a ``.npy`` file of one record of the
structured dtype ``[("image", <dtype>, <shape>), ("label", "<i8")]`` (its header, padded by numpy to a
multiple of 64 bytes: 128 in practice; the pixels; the label), zero-padded to a whole 512-byte block.
Pixels start 640 bytes into the member, 64-byte aligned in the file. A shard ends with two zero blocks
and is padded to a multiple of 20 blocks, as ``tarfile`` ends an archive. Every member of a store has
the same size, and its first 640 bytes (``MemberLayout.heads``) follow from its id: reads compare
them byte for byte, so a damaged member, a wrong offset or a shard from another tool is refused,
never read as an image.

With a codec (``SampleLayout``) a sample is WebDataset's usual pair of members, as ``TarWriter`` writes
``{"__key__": key, "cls": label, <extension>: encoded bytes}`` (members in sorted order): ``<key>.cls``, the
label as decimal text (at most 20 characters, so one data block), then ``<key>.<extension>`` (``jpg``,
``png``, ``webp``: the codec's) holding the encoded file, zero-padded to a whole block. Samples differ in size,
so their offsets and encoded lengths are in the store's index (``encoded_shard_sizes`` checks it); the first
1536 bytes of a sample (both headers and the label's block, ``SampleLayout.heads``) follow from its id, label
and length, and reads compare them byte for byte.

The tar header is built here, not by ``tarfile``, so that its bytes are fixed by this format whatever the
running Python's ``tarfile`` writes: the store checks them on every read.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from storage_impls.core.errors import CorruptStoreError
from storage_impls.formats.npy import header

BLOCK, RECORD = 512, 10240  # a tar block; tarfile pads an archive to a multiple of 20 blocks
END_OF_ARCHIVE = 2 * BLOCK
KEY_DIGITS = 12
MAX_IDS = 10**KEY_DIGITS
EXTENSION = "npy"
OWNER = b"bigdata"  # webdataset's TarWriter writes this user and group
MODE = 0o444
SIZE_FIELD = slice(124, 135)  # eleven octal digits, then NUL
CHECKSUM_FIELD = slice(148, 154)  # six octal digits, then NUL and a space
MAX_TAR_SIZE = 8**11 - 1  # the largest member a ustar size field holds
LABEL_CHARS = 20  # the decimal text of any int64 ("-9223372036854775808") fits
MAX_MEMBER_DATA = 2**31 - 1  # numpy's limit on the size of a structured dtype
_POWERS = 10 ** np.arange(KEY_DIGITS - 1, -1, -1, dtype=np.int64)


def sample_dtype(dtype: np.dtype, shape: tuple[int, ...]) -> np.dtype:
    """The structured dtype of one member's ``.npy`` record: the image, then its label."""
    return np.dtype([("image", dtype, shape), ("label", "<i8")])


def member_limit(dtype: np.dtype, shape: tuple[int, ...]) -> str | None:
    """None if one image of ``dtype`` and ``shape`` fits a member, else why not."""
    if math.prod(shape) * dtype.itemsize + 8 > MAX_MEMBER_DATA:
        return f"an image and its label must fit in {MAX_MEMBER_DATA} bytes (numpy's limit on a .npy record)"
    return None


def unsigned_header(name: bytes, size: int, mtime: int) -> bytes:
    """A ustar header with its checksum field blank (eight spaces, as the checksum is computed)."""
    fields = [
        name.ljust(100, b"\0"),
        b"%07o\0" % MODE,
        b"%07o\0" % 0,
        b"%07o\0" % 0,
        b"%011o\0" % size,
        b"%011o\0" % mtime,
        b" " * 8,
        b"0",
        b"\0" * 100,
        b"ustar\x0000",
        OWNER.ljust(32, b"\0"),
        OWNER.ljust(32, b"\0"),
        b"\0" * 16,
        b"\0" * 155,
    ]
    return b"".join(fields).ljust(BLOCK, b"\0")


def ustar_header(name: bytes, size: int, mtime: int) -> bytes:
    """The 512-byte ustar header of a regular file as this format writes it (and TarWriter does)."""
    block = unsigned_header(name, size, mtime)
    return block[: CHECKSUM_FIELD.start] + b"%06o\0" % sum(block) + block[CHECKSUM_FIELD.stop + 1 :]


def octal(values: np.ndarray, digits: int) -> np.ndarray:
    """(n, digits) uint8: the ASCII octal digits of ``values`` (n,), zero-padded."""
    return (values[:, None] >> np.arange(3 * digits - 3, -1, -3, dtype=np.int64) & 7 | ord("0")).astype(np.uint8)


@dataclass(frozen=True)
class MemberLayout:
    """Where everything is in the members of a store of ``dtype`` and ``shape`` written at ``mtime``."""

    dtype: np.dtype
    shape: tuple[int, ...]
    mtime: int
    pixels: int = field(init=False)  # bytes of one image
    head: int = field(init=False)  # tar header + .npy header: the bytes before the pixels
    size: int = field(init=False)  # bytes of one member, header and padding included
    template: np.ndarray = field(init=False, repr=False)  # the head of id 0
    _checksum: int = field(init=False, repr=False)  # the tar header checksum of id 0

    def __post_init__(self) -> None:
        npy = header(sample_dtype(self.dtype, self.shape), ())
        pixels = math.prod(self.shape) * self.dtype.itemsize
        data = len(npy) + pixels + 8
        tar = ustar_header(key(0), data, self.mtime)
        object.__setattr__(self, "pixels", pixels)
        object.__setattr__(self, "head", BLOCK + len(npy))
        object.__setattr__(self, "size", BLOCK + -(-data // BLOCK) * BLOCK)
        object.__setattr__(self, "template", np.frombuffer(tar + npy, np.uint8))
        object.__setattr__(self, "_checksum", int(tar[CHECKSUM_FIELD], 8))

    @property
    def label(self) -> int:
        """Where the label starts in a member: after the pixels."""
        return self.head + self.pixels

    def heads(self, ids: np.ndarray) -> np.ndarray:
        """The first ``head`` bytes of the members of ``ids``, (n, head) uint8: only the name and the checksum
        differ."""
        heads = np.empty((len(ids), self.head), np.uint8)
        heads[:] = self.template
        digits = ids[:, None] // _POWERS % 10  # id 0 has "0" (48) in each; an id adds its digits to the sum
        heads[:, :KEY_DIGITS] = digits + ord("0")
        heads[:, CHECKSUM_FIELD] = octal(self._checksum + digits.sum(1), 6)
        return heads

    def fill(self, members: np.ndarray, first: int, images: np.ndarray, labels: np.ndarray) -> None:
        """Write the members (n, size) of ids ``first``.. from ``images`` and ``labels`` (padding stays as it is)."""
        count = len(members)
        members[:, : self.head] = self.heads(np.arange(first, first + count, dtype=np.int64))
        members[:, self.head : self.head + self.pixels] = images.reshape(count, -1).view(np.uint8)
        members[:, self.label : self.label + 8] = labels.astype("<i8").view(np.uint8).reshape(count, 8)

    def first_bad(self, ids: np.ndarray, heads: np.ndarray) -> int | None:
        """The position of the first of ``heads`` (n, head) that is not its id's, None if all are."""
        bad = np.flatnonzero((heads != self.heads(ids)).any(axis=1))
        return int(bad[0]) if len(bad) else None


def member_error(path: Path, offset: int, image_id: int) -> CorruptStoreError:
    """The error for a member that is not the one this store wrote for ``image_id`` at ``offset`` of ``path``."""
    return CorruptStoreError(
        f"{path}: the member at byte {offset} is not {key(image_id).decode()} as this store writes "
        "it (its tar or .npy header differs: a damaged shard, or one from another tool)"
    )


@dataclass(frozen=True)
class SampleLayout:
    """The members of an encoded sample (``<key>.cls``, then ``<key>.<extension>``) of a store written at ``mtime``."""

    extension: str
    mtime: int
    template: np.ndarray = field(init=False, repr=False)  # the head of id 0: sizes 0, no label, checksums blank

    HEAD = 3 * BLOCK  # the .cls header, the label's block, the image's header; the encoded bytes follow

    def __post_init__(self) -> None:
        image = unsigned_header(key(0, self.extension.encode()), 0, self.mtime)
        head = unsigned_header(key(0, b"cls"), 0, self.mtime) + bytes(BLOCK) + image
        object.__setattr__(self, "template", np.frombuffer(head, np.uint8))

    def heads(self, ids: np.ndarray, labels: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The first HEAD bytes of the samples of ``ids`` with ``labels`` and encoded ``lengths``, (n, HEAD) uint8."""
        texts = [b"%d" % label for label in labels.tolist()]
        heads = np.empty((len(ids), self.HEAD), np.uint8)
        heads[:] = self.template
        heads[:, BLOCK : BLOCK + LABEL_CHARS] = np.frombuffer(
            b"".join(text.ljust(LABEL_CHARS, b"\0") for text in texts), np.uint8
        ).reshape(len(ids), LABEL_CHARS)
        digits = (ids[:, None] // _POWERS % 10 + ord("0")).astype(np.uint8)
        for start, sizes in ((0, np.array([len(text) for text in texts], np.int64)), (2 * BLOCK, lengths)):
            header = heads[:, start : start + BLOCK]
            header[:, :KEY_DIGITS] = digits
            header[:, SIZE_FIELD] = octal(sizes, 11)
            header[:, CHECKSUM_FIELD] = octal(header.sum(1, dtype=np.int64), 6)
            header[:, CHECKSUM_FIELD.stop] = 0
        return heads

    def labels(self, ids: np.ndarray, heads: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, int | None]:
        """The labels in ``heads`` (n, HEAD) read for ``ids`` of encoded ``lengths``, and the position of the first
        head that is not what this store writes for its id, label and length (None if all are)."""
        texts = np.ascontiguousarray(heads[:, BLOCK : BLOCK + LABEL_CHARS]).view(f"S{LABEL_CHARS}")[
            :, 0
        ]  # trailing NULs dropped
        unreadable = np.zeros(len(ids), bool)
        try:
            labels = texts.astype(np.int64)
        except (ValueError, OverflowError):  # a text that is not an int64's: find which
            labels = np.zeros(len(ids), np.int64)
            for position, text in enumerate(texts.tolist()):
                try:
                    labels[position] = int(text)
                except (ValueError, OverflowError):
                    unreadable[position] = True
        bad = np.flatnonzero(unreadable | (heads != self.heads(ids, labels, lengths)).any(axis=1))
        return labels, int(bad[0]) if len(bad) else None

    def members(self, heads: np.ndarray, payloads: list[bytes | memoryview]) -> list[bytes | memoryview]:
        """The bytes of whole samples, one after another: each head, its encoded bytes, zeros to a whole block."""
        parts = []
        for head, payload in zip(heads, payloads):
            parts += [head, payload, bytes(-len(payload) % BLOCK)]
        return parts


def sample_bytes(lengths: np.ndarray) -> np.ndarray:
    """The bytes of encoded samples of ``lengths``: both members, headers and padding included."""
    return SampleLayout.HEAD + -(-lengths // BLOCK) * BLOCK


def encoded_shard_sizes(index: np.ndarray, shards: int) -> np.ndarray:
    """The size of each of ``shards`` shards that an encoded store's ``index`` ((n, 3): shard, offset, length)
    describes; ValueError unless its samples follow one another from the start of each shard."""
    shard, offset, length = index.T
    if len(index) == 0 or not (0 < length).all() or not (length <= MAX_TAR_SIZE).all():
        raise ValueError("an encoded length is out of range")
    if shard[0] != 0 or shard[-1] != shards - 1 or not np.isin(np.diff(shard), (0, 1)).all():
        raise ValueError(f"shards {shard[0]}..{shard[-1]}, expected 0..{shards - 1} in order")
    end = np.cumsum(sample_bytes(length))
    start = end - sample_bytes(length)
    first = np.flatnonzero(np.diff(shard, prepend=-1))  # the first sample of each shard
    if not np.array_equal(offset, start - start[first][shard]):
        raise ValueError("samples do not follow one another from the start of their shard")
    return archive_bytes(end[np.append(first[1:], len(index)) - 1] - start[first])


def key(image_id: int, extension: bytes = EXTENSION.encode()) -> bytes:
    """The member name of an image."""
    return b"%0*d.%s" % (KEY_DIGITS, image_id, extension)


def shard_capacity(shard_size: int) -> int:
    """Bytes of members a shard of at most ``shard_size`` bytes holds, with the end of the archive and the padding
    to a whole record (a shard holds at least one image, whatever its size)."""
    return shard_size // RECORD * RECORD - END_OF_ARCHIVE


def shard_images(shard_size: int, member: int) -> int:
    """Images per shard: as many members as fit in ``shard_size`` bytes, at least one."""
    return max(1, shard_capacity(shard_size) // member)


def archive_bytes(members: int | np.ndarray) -> int | np.ndarray:
    """The size of a shard of ``members`` bytes of members: those, two zero blocks, padded to a whole record."""
    return -(-(members + END_OF_ARCHIVE) // RECORD) * RECORD


def shard_bytes(images: int, member: int) -> int:
    """The size of a shard of ``images`` members of ``member`` bytes."""
    return archive_bytes(images * member)


def layout_index(count: int, per_shard: int, member: int) -> np.ndarray:
    """The index of a store: (count, 2) little-endian int64, the shard and the byte offset of each image's member."""
    ids = np.arange(count, dtype=np.int64)
    return np.stack([ids // per_shard, ids % per_shard * member], axis=1).astype("<i8")


def preadv_full(fd: int, views: list[memoryview], offset: int, total: int) -> bool:
    """Fill ``views`` (``total`` bytes) with the bytes of ``fd`` from ``offset`` on; False if the file ends first."""
    while True:
        read = os.preadv(fd, views, offset)
        total -= read
        if total == 0:
            return True
        if read == 0:
            return False
        offset += read
        filled = 0
        while read >= len(views[filled]):
            read -= len(views[filled])
            filled += 1
        views = [views[filled][read:], *views[filled + 1 :]]


def write_all(fd: int, data: memoryview) -> None:
    """Write all of ``data`` to ``fd`` (os.write may write less)."""
    while data:
        data = data[os.write(fd, data) :]
