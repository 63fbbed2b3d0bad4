"""Record formats shared by the stores that keep raw pixels: a self-describing value header, a
checksummed metadata file, per-image checksums, and telling which method wrote a directory.

Values (one per image in a key-value store: rocksdb today, lmdb can adopt it): a 32-byte header
``<2sBB4sB3xIIIq``: magic ``b"IV"``, version 1, flags (bit 0: an 8-byte trailer follows the pixels; bit 1:
the pixels are encoded by the store's codec, which its metadata names, and the value is as long as they are),
the dtype as numpy spells it (``"|u1"``, NUL-padded ASCII), the number of image dimensions, three
dimensions (unused ones 0), the label; then the raw pixels in C order; then, when flagged, the
xxh3_64 of header and pixels seeded with the image id (little endian), so that bit rot anywhere in
a value, and a value found under another id, fail the check. The dtype and any 2- or 3-D shape
are in every header, so stores of other dtypes and band counts need no new format. Pixels start
at byte 32, aligned for any dtype. Every value of a store shares its first 24 bytes (``prefix``).

Metadata files (``write_meta``/``read_meta``): one line of canonical JSON and a line with its
CRC-32 in hex, replaced atomically (temporary file, rename), so a damaged one is never misread.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import xxhash

from storage_impls.core.base import check_dtype, check_image_shape
from storage_impls.core.errors import CorruptStoreError, MissingStoreError, NoSpaceError, is_no_space, no_space_error
from storage_impls.core.fileio import fsync_path, read_bounded

DTYPE = "|u1"  # the only dtype stores hold today; recorded everywhere so that more need no format break
HEADER = struct.Struct("<2sBB4sB3xIIIq")  # magic, version, flags, dtype, ndim, 3 dims, label
PREFIX_SIZE = HEADER.size - 8  # the header bytes every value of one store shares
MAGIC, VERSION = b"IV", 1
CHECKSUMMED = 0x01  # flag: an xxh3_64 trailer follows the pixels
ENCODED = 0x02  # flag: encoded bytes instead of raw pixels (variable length)
TRAILER = 8
META_MAX_BYTES = 1 << 20  # a metadata file is one line of JSON (a few hundred bytes): larger ones are refused unread
T = TypeVar("T")  # what commit_aside opens
KEY = struct.Struct(">Q")  # image id as 8 big-endian bytes: keys sort in id order
checksum_of = xxhash.xxh3_64_intdigest

#: A file only one method writes, at the top of its store directory -> that method (filled by the registry).
MARKERS: dict[str, str] = {}


def register_markers(method: str, names: tuple[str, ...]) -> None:
    """Record that the files ``names`` at the top of a directory mark a store of ``method``."""
    MARKERS.update(dict.fromkeys(names, method))


@dataclass(frozen=True)
class ValueLayout:
    """How every value of a store is laid out: dtype, image shape, and whether values carry a checksum."""

    dtype: str
    shape: tuple[int, ...]
    checksummed: bool
    encoded: bool = False
    pixel_bytes: int = field(init=False)
    size: int | None = field(init=False)  # None for encoded values: as long as their bytes
    prefix: bytes = field(init=False)

    def __post_init__(self) -> None:
        dims = (*self.shape, 0, 0, 0)[:3]
        flags = (CHECKSUMMED if self.checksummed else 0) | (ENCODED if self.encoded else 0)
        prefix = HEADER.pack(MAGIC, VERSION, flags, self.dtype.encode("ascii"), len(self.shape), *dims, 0)[:PREFIX_SIZE]
        object.__setattr__(self, "pixel_bytes", math.prod(self.shape) * np.dtype(self.dtype).itemsize)
        object.__setattr__(
            self, "size", None if self.encoded else HEADER.size + self.pixel_bytes + TRAILER * self.checksummed
        )
        object.__setattr__(self, "prefix", prefix)

    def fill_block(self, values: np.ndarray, first_id: int, labels: np.ndarray, pixels: np.ndarray) -> None:
        """Write the values (n, size) of ids ``first_id``.. into ``values`` (uint8), from ``labels`` (n,) and ``pixels``
        (n, ...)."""
        values[:, :PREFIX_SIZE] = np.frombuffer(self.prefix, np.uint8)
        values[:, PREFIX_SIZE : HEADER.size] = labels.astype("<i8").view(np.uint8).reshape(-1, 8)
        values[:, HEADER.size : HEADER.size + self.pixel_bytes] = pixels.reshape(len(values), -1).view(np.uint8)
        if self.checksummed:
            sums = np.array([checksum_of(value[:-TRAILER], first_id + row) for row, value in enumerate(values)], "<u8")
            values[:, -TRAILER:] = sums.view(np.uint8).reshape(-1, TRAILER)

    def value(self, image_id: int, label: int, pixels: np.ndarray) -> bytes:
        """The value of one image."""
        value = np.empty((1, self.size), np.uint8)
        self.fill_block(value, image_id, np.array([label]), pixels[None])
        return value.tobytes()

    def encoded_value(self, image_id: int, label: int, payload: bytes) -> bytes:
        """The value of one encoded image."""
        value = self.prefix + label.to_bytes(8, "little", signed=True) + payload
        return value + checksum_of(value, image_id).to_bytes(TRAILER, "little") if self.checksummed else value

    def payload(self, value: bytes | memoryview) -> memoryview:
        """The encoded bytes of a value (already checked)."""
        return memoryview(value)[HEADER.size : len(value) - TRAILER * self.checksummed]

    def fits(self, value: bytes | memoryview) -> bool:
        """Whether ``value`` has this layout's length: exactly, or for encoded images at least header and trailer."""
        return (
            len(value) == self.size if self.size is not None else len(value) >= HEADER.size + TRAILER * self.checksummed
        )

    def check(self, value: bytes | memoryview | None, image_id: int, where: object) -> int:
        """Validate one value read for ``image_id`` and return its label, or raise CorruptStoreError."""
        if value is None or not self.fits(value) or value[:PREFIX_SIZE] != self.prefix:
            raise self.error(value, image_id, where)
        if self.checksummed:
            self.check_sum(value, image_id, where)
        return HEADER.unpack_from(value)[-1]

    def check_sum(self, value: bytes | memoryview, image_id: int, where: object) -> None:
        """CorruptStoreError unless the trailer of ``value`` (of the right length) matches its contents."""
        if checksum_of(memoryview(value)[:-TRAILER], image_id) != int.from_bytes(value[-TRAILER:], "little"):
            raise CorruptStoreError(f"{where}: image {image_id} fails its checksum (bit rot or a damaged file)")

    def copy_into(
        self, values: Iterable[bytes | None], ids: Iterable[int], out: np.ndarray, labels: np.ndarray, where: object
    ) -> None:
        """Copy the pixels of ``values`` (those of ``ids``, in order) into ``out`` and their labels into
        ``labels``, checking each length (and checksum) as it goes and all headers at once after."""
        size, pixels, start = self.size, self.pixel_bytes, HEADER.size
        flat = memoryview(out).cast("B")
        headers = np.empty((len(out), start), np.uint8)
        header_bytes = memoryview(headers).cast("B")
        copied = 0
        for position, (image_id, value) in enumerate(zip(ids, values)):
            if value is None or len(value) != size:
                raise self.error(value, image_id, where)
            if self.checksummed:
                self.check_sum(value, image_id, where)
            view = memoryview(value)
            flat[position * pixels : (position + 1) * pixels] = view[start : start + pixels]
            header_bytes[position * start : (position + 1) * start] = view[:start]
            copied += 1
        if copied < len(out):
            raise self.error(None, list(ids)[copied], where)
        bad = np.flatnonzero((headers[:, :PREFIX_SIZE] != np.frombuffer(self.prefix, np.uint8)).any(axis=1))
        if len(bad):
            raise self.error(headers[bad[0]].tobytes(), list(ids)[bad[0]], where)
        labels[:] = np.ndarray((len(out),), "<i8", headers, PREFIX_SIZE, (start,))

    def error(self, value: bytes | memoryview | None, image_id: int, where: object) -> CorruptStoreError:
        """The error for a value of ``image_id`` that is not what this layout expects, saying what it is."""
        if value is None:
            return CorruptStoreError(f"{where}: the value of image {image_id} is missing")
        try:
            found = parse_layout(value)
        except CorruptStoreError as error:
            return CorruptStoreError(f"{where}: image {image_id}: {error}")
        return CorruptStoreError(
            f"{where}: image {image_id} holds {describe(found)}, but this store holds "
            f"{describe(self)} (a damaged value, or another writer replaced the store: open it again)"
        )


def describe(layout: ValueLayout) -> str:
    encoded = " encoded by the store's codec" if layout.encoded else ""
    return (
        f"images of dtype {layout.dtype} and shape "
        f"{layout.shape}{encoded}{' with checksums' if layout.checksummed else ''}"
    )


def parse_layout(value: bytes | memoryview) -> ValueLayout:
    """The layout a value claims in its header, checked against its own length; CorruptStoreError if it is not ours."""
    if len(value) < HEADER.size:
        raise CorruptStoreError(f"a value of {len(value)} bytes is too short to hold an image header")
    magic, version, flags, dtype, ndim, *dims, _ = HEADER.unpack_from(value)
    try:
        layout = ValueLayout(
            dtype.rstrip(b"\0").decode("ascii"), tuple(dims[:ndim]), bool(flags & CHECKSUMMED), bool(flags & ENCODED)
        )
        valid = (
            magic == MAGIC
            and version == VERSION
            and not flags & ~(CHECKSUMMED | ENCODED)
            and ndim in (2, 3)
            and all(dims[:ndim])
        )
    except (TypeError, ValueError, UnicodeDecodeError):
        valid = False
    if not valid:
        raise CorruptStoreError(
            f"a value of {len(value)} bytes has an invalid header (not an image written by storage_impls, or damaged)"
        )
    if not layout.fits(value):
        raise CorruptStoreError(
            f"a value of {len(value)} bytes does not match its header ({describe(layout)}: "
            f"{layout.size or 'more'} bytes)"
        )
    return layout


def image_checksums(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """xxh3_64 of each image (N, ...) seeded with its label: one uint64 per image, so a flip in either is caught."""
    return np.fromiter(
        map(checksum_of, images, labels.astype(np.int64).view(np.uint64).tolist()), np.uint64, len(images)
    )


def verify_checksums(ids: np.ndarray, images: np.ndarray, labels: np.ndarray, sums: np.ndarray, where: object) -> None:
    """CorruptStoreError naming the first of ``ids`` whose image and label do not match ``sums`` (one per id)."""
    bad = np.flatnonzero(image_checksums(images, labels) != sums)
    if len(bad):
        raise CorruptStoreError(f"{where}: image {ids[bad[0]]} fails its checksum (bit rot or a damaged file)")


# -- metadata files ------------------------------------------------------------------------------
def write_meta(path: Path, meta: dict, *, durable: bool) -> None:
    """Replace ``path`` with ``meta`` (JSON and its CRC-32) atomically; a full disk raises NoSpaceError, path
    untouched."""
    body = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    write_file_atomic(path, f"{body}\n{zlib.crc32(body.encode()):08x}\n".encode(), durable=durable)


def check_image_fields(meta: dict, format_version: int) -> None:
    """ValueError (or KeyError, TypeError) unless ``meta`` has this format version and a dtype and image shape a
    store holds (``image_shape`` becomes a tuple): the fields every metadata file of a raw-pixel store shares."""
    if meta["format_version"] != format_version or check_dtype(meta["dtype"], "images").str != meta["dtype"]:
        raise ValueError(
            f"version {meta['format_version']!r}, dtype {meta['dtype']!r}: this version reads "
            f"version {format_version} and numeric dtypes of this machine's byte order"
        )
    meta["image_shape"] = tuple(meta["image_shape"])
    check_image_shape(meta["image_shape"], "each image")


def remove_stale(directory: Path, folders: re.Pattern[str], live: str | None) -> None:
    """Remove temporaries and the folders matching ``folders`` other than ``live`` (left by killed or replaced
    writes)."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if is_temporary(entry.name) or (folders.fullmatch(entry.name) and entry.name != live):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)


def commit_aside(
    temporary: Path,
    folder: Path,
    write: Callable[[Path], object],
    meta_path: Path,
    meta: dict,
    *,
    durable: bool,
    sync: Callable[[Path], object] = fsync_path,
    open_folder: Callable[[Path], T] = lambda folder: None,
    close: Callable[[T], object] = lambda opened: None,
) -> T:
    """Replace a store's contents by a folder written aside: ``write(temporary)`` makes it (``meta`` may take what
    it learns), ``sync`` makes it durable when ``durable``, a rename puts it at ``folder``, ``open_folder`` opens
    it, then ``meta`` replaces the metadata file ``meta_path`` (the commit point); what ``open_folder`` returned.
    Whatever fails leaves the store as it was: what opened is closed, both folders are removed, and a full disk
    raises NoSpaceError."""
    opened = None
    try:
        write(temporary)
        if durable:
            sync(temporary)
        os.rename(temporary, folder)
        opened = open_folder(folder)
        write_meta(meta_path, meta, durable=durable)  # fsyncs the directory: the rename is durable too
    except BaseException as error:
        if opened is not None:
            close(opened)
        for path in (temporary, folder):
            shutil.rmtree(path, ignore_errors=True)
        if isinstance(error, OSError) and is_no_space(error) and not isinstance(error, NoSpaceError):
            raise no_space_error(meta_path.parent, error) from error
        raise
    return opened


def current_token(path: Path, fmt: str) -> str | None:
    """The token the metadata file ``path`` names now (None if there is none or it is unreadable): how a reader
    tells that a writer committed while it opened the store."""
    try:
        meta = read_meta(path, fmt)
    except CorruptStoreError:
        return None
    return None if meta is None else meta.get("token")


def read_meta(path: Path, fmt: str) -> dict | None:
    """The metadata in ``path`` (None if it does not exist); CorruptStoreError naming the file unless it is
    intact and written for format ``fmt``."""
    try:
        data = read_bounded(path, META_MAX_BYTES)
    except FileNotFoundError:
        return None
    body, _, rest = data.partition(b"\n")
    try:
        if rest.strip() != f"{zlib.crc32(body):08x}".encode():
            raise ValueError("it is cut short or fails its checksum")
        meta = json.loads(body)
        if not isinstance(meta, dict) or meta.get("format") != fmt:
            raise ValueError(f"it was written for format {meta.get('format') if isinstance(meta, dict) else None!r}")
    except ValueError as error:
        raise CorruptStoreError(f"{path} is not metadata of {fmt} ({error})") from None
    return meta


def write_file_atomic(path: Path, data: bytes, *, durable: bool) -> None:
    """Write ``path`` through a temporary file (``.NAME.*.tmp``) and a rename; fsync both when durable."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if is_no_space(error):
            raise no_space_error(path.parent, error) from error
        raise
    if durable:
        fsync_path(path.parent)


def is_temporary(name: str) -> bool:
    """True for the names this package gives files and folders while it writes them."""
    return name.startswith(".") and name.endswith(".tmp")


def refuse_foreign(directory: Path, method: str) -> None:
    """CorruptStoreError if ``directory`` holds another method's store (named by its marker files)."""
    found = [(name, owner) for name, owner in MARKERS.items() if owner != method and (directory / name).exists()]
    if found:
        name, owner = found[0]
        raise CorruptStoreError(
            f"{directory} holds a {owner} store ({name}), not a {method} store: open it with method {owner!r}"
        )


def missing_store(directory: Path, method: str, marker: str) -> MissingStoreError:
    """The error for a read-only open of a directory without a store of ``method`` (after refuse_foreign)."""
    return MissingStoreError(f"no {method} store at {directory}: {marker} does not exist")
