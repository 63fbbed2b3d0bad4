"""The image folder's files: the ``CURRENT`` pointer, a generation's ``meta.json`` and ``labels.csv``,
and how each image file is checked and decoded.

- ``CURRENT``: the name of the live generation folder, ``gen-<32 hex digits>``, nothing else.
- ``gen-*/meta.json``: ``{"format", "format_version", "image_shape", "count", "dtype", "codec"}`` (no dtype:
  uint8; no codec: png).
- ``gen-*/labels.csv``: the header ``image_id,label,crc32`` and one row per image, ids 0..count-1 in
  order; ``crc32`` is zlib's CRC-32 of the image file's bytes seeded with the label's 8 little-endian
  bytes, so a flipped bit in a file or a label is caught on read (about 2 % of a PNG decode).
- ``gen-*/<id>.<extension>``: one file per image in the store's codec (codecs.py): ``.png`` by default
  (8- or 16-bit grey, RGB or RGBA, compressed as Pillow's default save compresses it), ``.jpg``, ``.webp``,
  or ``.raw`` (the pixels).

Decoding (codecs.py) checks each file's header against the store's dtype and image shape before anything
is allocated: Pillow's decompression-bomb limit (a global, about 179 M pixels) is for images of unknown
origin; a store reads back every image it accepted, and a file of any other size, depth or mode (a
planted "bomb" included) raises CorruptStoreError.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from storage_impls.core.base import check_dtype, check_image_shape
from storage_impls.core.codecs import Codec, get_codec
from storage_impls.core.errors import CorruptStoreError, MissingStoreError
from storage_impls.core.fileio import READ_FLAGS, open_regular, read_bounded

FORMAT = "storage_impls.disk"
FORMAT_VERSION = 2
POINTER, META, LABELS, JOURNAL = "CURRENT", "meta.json", "labels.csv", "journal"
GENERATION = re.compile(r"gen-[0-9a-f]{32}")
LABELS_HEADER = b"image_id,label,crc32\n"
META_MAX_BYTES = 4096
POINTER_MAX_BYTES = 256  # CURRENT holds one generation name (40 bytes)
LABEL = struct.Struct("<q")
LABEL_ROW_MAX_BYTES = 20 + 1 + 20 + 1 + 10 + 1  # id, label (int64 with its sign), crc32, two commas and a newline


def image_crc(png: bytes | memoryview, label: int) -> int:
    """The CRC-32 labels.csv keeps for one image: of its PNG bytes, seeded with its label."""
    return zlib.crc32(png, zlib.crc32(LABEL.pack(label)))


def read_pointer(directory: Path) -> str | None:
    """The generation ``CURRENT`` names, None if there is no CURRENT; CorruptStoreError if it names none."""
    path = directory / POINTER
    try:
        fd = open_regular(path)  # no buffered file object: this runs before every write
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, POINTER_MAX_BYTES)
    finally:
        os.close(fd)
    name = data.decode("ascii", "replace")
    if not GENERATION.fullmatch(name):  # its content is not quoted: a crafted CURRENT could be a link to a secret
        raise CorruptStoreError(
            f"{path} does not name a generation folder (gen-<32 hex digits>): {len(data)} bytes of something else"
        )
    return name


def format_meta(dtype: np.dtype, shape: tuple[int, ...], codec: Codec, count: int) -> bytes:
    return json.dumps(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "image_shape": list(shape),
            "count": count,
            "dtype": dtype.str,
            "codec": codec.spec,
        }
    ).encode()


def format_labels(labels: np.ndarray, crcs: np.ndarray) -> bytes:
    rows = "".join(
        f"{image_id},{label},{crc}\n" for image_id, (label, crc) in enumerate(zip(labels.tolist(), crcs.tolist()))
    )
    return LABELS_HEADER + rows.encode()


class Generation:
    """One generation folder, loaded: ``dtype``, ``shape``, ``codec``, ``count``, ``labels`` (int64) and ``crcs`` per
    image. Its PNGs are opened when read. FileNotFoundError if a file is missing; CorruptStoreError if damaged."""

    def __init__(
        self,
        directory: Path,
        name: str,
        loaded: tuple[np.dtype, tuple[int, ...], Codec, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Read ``directory/name``; ``loaded`` = (dtype, shape, codec, labels, crcs) of a generation this handle just
        wrote."""
        self.name = self.token = name  # token: what a journal extending it names
        self.path = directory / name
        self._prefix = f"{self.path}/"
        self.dtype, self.shape, self.codec, self.labels, self.crcs = loaded or self._read()
        self._suffix = f".{self.codec.extension}"
        self.count = len(self.labels)
        self.max_bytes = max_file_bytes(self.dtype, self.shape)

    def _read(self) -> tuple[np.dtype, tuple[int, ...], Codec, np.ndarray, np.ndarray]:
        dtype, shape, codec, count = self._read_meta(self.path / META)
        labels, crcs = _parse_labels(self.path / LABELS, count)
        return dtype, shape, codec, labels, crcs

    @staticmethod
    def _read_meta(path: Path) -> tuple[np.dtype, tuple[int, ...], Codec, int]:
        try:
            meta = json.loads(read_bounded(path, META_MAX_BYTES).decode("utf-8"))
            if (
                not isinstance(meta, dict)
                or meta.get("format") != FORMAT
                or meta.get("format_version") != FORMAT_VERSION
            ):
                raise ValueError(f"it was not written by {FORMAT} version {FORMAT_VERSION}")
            shape, count = meta["image_shape"], meta["count"]
            if (
                not isinstance(shape, list)
                or not all(type(side) is int for side in shape)
                or type(count) is not int
                or count < 1
            ):
                raise ValueError(f"image_shape {shape!r} or count {count!r} is not what it should be")
            check_image_shape(tuple(shape), "image_shape")
            dtype = check_dtype(meta.get("dtype", "|u1"), "images")  # stores written before other dtypes: uint8
            codec = get_codec(meta.get("codec", "png"))  # stores written before codecs: png
            limit = codec.limit(dtype, tuple(shape))
            if limit:
                raise ValueError(limit)
        except CorruptStoreError:
            raise
        except (ValueError, KeyError, TypeError) as error:  # JSON and UTF-8 errors are ValueErrors
            raise CorruptStoreError(
                f"{path} is not a disk store's metadata ({type(error).__name__}: {error})"
            ) from None
        return dtype, tuple(shape), codec, count

    def close(self) -> None:
        """Nothing to release: image files are opened when read."""

    def file(self, image_id: int) -> str:
        return f"{self._prefix}{image_id}{self._suffix}"

    def _open(self, image_id: int) -> int:
        """A descriptor of the file of ``image_id``; MissingStoreError naming it if it is gone."""
        path = self.file(image_id)
        try:  # no fstat: the store's tree was checked at open (fileio.check_tree); O_NONBLOCK, a FIFO reads as empty
            return os.open(path, READ_FLAGS)
        except FileNotFoundError:
            raise MissingStoreError(
                f"{path} is missing (image {image_id}): the store was replaced since this handle "
                "opened it (open it again) or the file was deleted"
            ) from None
        except OSError as error:
            raise CorruptStoreError(
                f"{path} (image {image_id}) cannot be read as a file of the store ({error.strerror})"
            ) from None

    def encoded(self, image_id: int) -> bytes:
        """The file of ``image_id``, checked against its CRC; MissingStoreError naming it if it is gone."""
        fd = self._open(image_id)
        try:
            data = os.read(fd, self.max_bytes + 1)  # bounded: a file larger than any encoding of the image is refused
        finally:
            os.close(fd)
        if len(data) > self.max_bytes:
            raise CorruptStoreError(
                f"{self.file(image_id)}: image {image_id} is over {self.max_bytes} bytes, more than its codec makes"
            )
        self._check_crc(image_id, data)
        return data

    def read_raw_into(self, image_id: int, target: np.ndarray) -> bool:
        """Raw pixels: the file of ``image_id`` read straight into ``target`` (its C-contiguous slot) and checked
        against its CRC, no copy in between; False if the file is not exactly an image's size (``encoded`` and the
        codec then say what is wrong)."""
        pixels = memoryview(target).cast("B")
        fd = self._open(image_id)
        try:
            read = os.readv(fd, [pixels, _PAST_END])  # a byte past the pixels: the file is too long
        finally:
            os.close(fd)
        if read != len(pixels):
            return False
        self._check_crc(image_id, pixels)
        return True

    def _check_crc(self, image_id: int, data: bytes | memoryview) -> None:
        if image_crc(data, int(self.labels[image_id])) != self.crcs[image_id]:
            raise CorruptStoreError(
                f"{self.file(image_id)}: image {image_id} fails its checksum (bit rot or a damaged copy)"
            )


_PAST_END = bytearray(1)  # where read_raw_into reads a byte beyond an image's size (its value is never used)


def max_file_bytes(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """The most bytes an image file of ``dtype`` and ``shape`` may take: twice its raw pixels and 64 KiB (headers,
    tables), above what any codec makes of noise (PNG and WebP lossless add a little to raw, JPEG at quality 100
    of noise about half)."""
    return 2 * math.prod(shape) * dtype.itemsize + (1 << 16)


def _parse_labels(path: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, crcs) from ``path``, which must hold exactly ``count`` well-formed rows."""
    try:
        data = read_bounded(path, len(LABELS_HEADER) + count * LABEL_ROW_MAX_BYTES)
        if not data.startswith(LABELS_HEADER) or not data.endswith(b"\n"):
            raise ValueError(f"it does not start with {LABELS_HEADER!r} or is cut short")
        body = data[len(LABELS_HEADER) :].decode("ascii")
        if body.count("\n") != count or body.count(",") != 2 * count:
            raise ValueError(f"it does not hold {count} rows of three fields, as meta.json says")
        rows = np.array(body.replace(",", " ").split(), dtype=np.int64).reshape(count, 3)
        if not np.array_equal(rows[:, 0], np.arange(count)) or rows[:, 2].min() < 0 or rows[:, 2].max() > 0xFFFFFFFF:
            raise ValueError(f"image ids are not 0..{count - 1} in order or a crc32 is out of range")
    except FileNotFoundError:
        raise
    except CorruptStoreError:
        raise
    except (ValueError, OverflowError) as error:
        raise CorruptStoreError(f"{path} is not a disk store's labels file ({type(error).__name__}: {error})") from None
    return rows[:, 1].copy(), rows[:, 2].astype(np.uint32)
