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

The tar header is built here, not by ``tarfile``, so that its bytes are fixed by this format whatever the
running Python's ``tarfile`` writes: the store checks them on every read.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from storage_impls.errors import CorruptStoreError
from storage_impls.npy_format import header

BLOCK, RECORD = 512, 10240  # a tar block; tarfile pads an archive to a multiple of 20 blocks
END_OF_ARCHIVE = 2 * BLOCK
KEY_DIGITS = 12
MAX_IDS = 10 ** KEY_DIGITS
EXTENSION = "npy"
OWNER = b"bigdata"  # webdataset's TarWriter writes this user and group
MODE = 0o444
CHECKSUM_FIELD = slice(148, 154)  # six octal digits, then NUL and a space
MAX_MEMBER_DATA = 2 ** 31 - 1  # numpy's limit on the size of a structured dtype
_POWERS = 10 ** np.arange(KEY_DIGITS - 1, -1, -1, dtype=np.int64)
_OCTAL_SHIFTS = np.arange(15, -1, -3, dtype=np.int64)


def sample_dtype(dtype: np.dtype, shape: tuple[int, ...]) -> np.dtype:
    """The structured dtype of one member's ``.npy`` record: the image, then its label."""
    return np.dtype([("image", dtype, shape), ("label", "<i8")])


def member_limit(dtype: np.dtype, shape: tuple[int, ...]) -> str | None:
    """None if one image of ``dtype`` and ``shape`` fits a member, else why not."""
    if math.prod(shape) * dtype.itemsize + 8 > MAX_MEMBER_DATA:
        return f"an image and its label must fit in {MAX_MEMBER_DATA} bytes (numpy's limit on a .npy record)"
    return None


def ustar_header(name: bytes, size: int, mtime: int) -> bytes:
    """The 512-byte ustar header of a regular file as this format writes it (and TarWriter does)."""
    fields = [name.ljust(100, b"\0"), b"%07o\0" % MODE, b"%07o\0" % 0, b"%07o\0" % 0, b"%011o\0" % size,
              b"%011o\0" % mtime, b" " * 8, b"0", b"\0" * 100, b"ustar\x0000", OWNER.ljust(32, b"\0"),
              OWNER.ljust(32, b"\0"), b"\0" * 16, b"\0" * 155]
    block = b"".join(fields).ljust(BLOCK, b"\0")
    checksum = sum(block)
    return block[:CHECKSUM_FIELD.start] + b"%06o\0" % checksum + block[CHECKSUM_FIELD.stop + 1:]


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
        """The first ``head`` bytes of the members of ``ids``, (n, head) uint8: only the name and the checksum differ."""
        heads = np.empty((len(ids), self.head), np.uint8)
        heads[:] = self.template
        digits = ids[:, None] // _POWERS % 10  # id 0 has "0" (48) in each; an id adds its digits to the sum
        heads[:, :KEY_DIGITS] = digits + ord("0")
        heads[:, CHECKSUM_FIELD] = (self._checksum + digits.sum(1))[:, None] >> _OCTAL_SHIFTS & 7 | ord("0")
        return heads

    def fill(self, members: np.ndarray, first: int, images: np.ndarray, labels: np.ndarray) -> None:
        """Write the members (n, size) of ids ``first``.. from ``images`` and ``labels`` (padding stays as it is)."""
        count = len(members)
        members[:, :self.head] = self.heads(np.arange(first, first + count, dtype=np.int64))
        members[:, self.head:self.head + self.pixels] = images.reshape(count, -1).view(np.uint8)
        members[:, self.label:self.label + 8] = labels.astype("<i8").view(np.uint8).reshape(count, 8)

    def first_bad(self, ids: np.ndarray, heads: np.ndarray) -> int | None:
        """The position of the first of ``heads`` (n, head) that is not its id's, None if all are."""
        bad = np.flatnonzero((heads != self.heads(ids)).any(axis=1))
        return int(bad[0]) if len(bad) else None


def member_error(path: Path, offset: int, image_id: int) -> CorruptStoreError:
    """The error for a member that is not the one this store wrote for ``image_id`` at ``offset`` of ``path``."""
    return CorruptStoreError(f"{path}: the member at byte {offset} is not {key(image_id).decode()} as this store writes "
                             "it (its tar or .npy header differs: a damaged shard, or one from another tool)")


def key(image_id: int) -> bytes:
    """The member name of an image."""
    return b"%0*d.%s" % (KEY_DIGITS, image_id, EXTENSION.encode())


def shard_images(shard_size: int, member: int) -> int:
    """Images per shard: as many members as fit in ``shard_size`` bytes with the end of the archive and the
    padding to a whole record, at least one."""
    return max(1, (shard_size // RECORD * RECORD - END_OF_ARCHIVE) // member)


def shard_bytes(images: int, member: int) -> int:
    """The size of a shard of ``images`` members: members, two zero blocks, padded to a whole record."""
    return -(-(images * member + END_OF_ARCHIVE) // RECORD) * RECORD


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
        views = [views[filled][read:], *views[filled + 1:]]


def write_all(fd: int, data: memoryview) -> None:
    """Write all of ``data`` to ``fd`` (os.write may write less)."""
    while data:
        data = data[os.write(fd, data):]
