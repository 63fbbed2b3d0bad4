"""Image codecs: encode an array to bytes and decode bytes back into a caller's array.

A codec is named by a spec (``CODECS`` lists them): ``raw`` (the pixels as they are), ``png`` or
``png-L`` (zlib level L, 0..9; ``png`` is Pillow's default 6), ``jpeg-Q`` and ``webp-Q`` (quality Q,
1..100), ``webp-lossless``. ``get_codec(spec)`` returns its ``Codec``: ``limit`` says what it cannot
hold (checked before anything is written), ``encode`` gives bytes, ``decode_into`` fills a
preallocated image. Containers store the bytes and never look inside them. Lossy codecs
(``lossless`` False) are deterministic: a read equals ``decode(encode(x))`` exactly, which is what
the benchmarks verify against; ``psnr_db`` measures what the encoding lost.

PNG holds uint8 and uint16 images of 1, 3 or 4 channels (grey, RGB, RGBA) and nothing else.
8-bit images are compressed by Pillow's PNG ("zip") encoder through the public ``Image.tobytes``
(the same filtered, deflated stream ``Image.save`` writes, without its per-call file machinery, a
fifth of a 32x32 image's encode time) and decoded by Pillow. Pillow has no 16-bit RGB(A) mode, so
16-bit images are filtered here with numpy (the "Up" filter on every row), deflated with zlib, and
decoded here; any PNG reader reads them (big-endian samples, as PNG requires).

Decoders raise ``ValueError`` naming what they found when the bytes are not exactly the image
expected; the container adds where the bytes came from.
"""

from __future__ import annotations

import abc
import functools
import io
import math
import os
import re
import struct
import zlib

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_DEFAULT_LEVEL = 6  # Pillow's default PNG compress_level
IHDR = struct.Struct(">I4sIIBBBBB")  # length, type, width, height, depth, colour type, compression, filter, interlace
CHUNK_HEAD = struct.Struct(">I4s")
PNG_COLOURS = {1: (0, "L"), 3: (2, "RGB"), 4: (6, "RGBA")}  # channels -> PNG colour type, Pillow mode (8 bits)
PNG_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
FILTER_NONE, FILTER_SUB, FILTER_UP = 0, 1, 2
PILLOW_FREE_BLOCKS = 2  # freed image blocks Pillow keeps for the next decode (its PILLOW_BLOCKS_MAX; default 0)


def keep_freed_image_blocks() -> None:
    """Let Pillow keep PILLOW_FREE_BLOCKS freed image blocks (each at most its 16 MiB block size) for the next image,
    as its documented ``PILLOW_BLOCKS_MAX`` does, unless the environment sets that. Without it, in a fresh process (a
    reader worker, a DataLoader worker) glibc hands each decoded image's memory back to the kernel and the next decode
    faults it in again: 618 page faults and about twice the CPU per 512x512x3 JPEG (docs/benchmarks.md, "Codecs")."""
    if "PILLOW_BLOCKS_MAX" not in os.environ and Image.core.get_blocks_max() < PILLOW_FREE_BLOCKS:
        Image.core.set_blocks_max(PILLOW_FREE_BLOCKS)


keep_freed_image_blocks()  # on import: every decode of the stores and of the codec floors runs through this module


def png_limit(dtype: np.dtype, shape: tuple[int, ...]) -> str | None:
    """None if PNG holds images of ``dtype`` and ``shape``, else why not."""
    if np.dtype(dtype) not in PNG_DTYPES:
        return f"PNG holds uint8 or uint16 images, not {np.dtype(dtype)}"
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in PNG_COLOURS):
        return f"PNG holds images of shape (H, W) or (H, W, C) with C = 1, 3 or 4, not {tuple(shape)}"
    return None


def _channels(shape: tuple[int, ...]) -> int:
    return shape[2] if len(shape) == 3 else 1


def _chunk(kind: bytes, data: bytes) -> bytes:
    return CHUNK_HEAD.pack(len(data), kind) + data + zlib.crc32(data, zlib.crc32(kind)).to_bytes(4, "big")


def png_encode(image: np.ndarray, level: int = PNG_DEFAULT_LEVEL) -> bytes:
    """PNG bytes of ``image`` (uint8 or uint16, (H, W) or (H, W, C) with C in 1, 3, 4; C-contiguous)."""
    height, width = image.shape[:2]
    channels = _channels(image.shape)
    colour, mode = PNG_COLOURS[channels]
    if image.dtype == np.uint8:
        plane = Image.frombuffer(mode, (width, height), image, "raw", mode, 0, 1)
        idat = plane.tobytes("zip", mode, 0, level)  # the zip encoder's arguments: rawmode, optimize, level
        depth = 8
    else:
        rows = image.astype(">u2").view(np.uint8).reshape(height, width * channels * 2)
        filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
        filtered[:, 0] = FILTER_UP
        filtered[:, 1:] = rows
        filtered[1:, 1:] -= rows[:-1]  # Up: each byte minus the one above, modulo 256
        idat = zlib.compress(filtered, level)
        depth = 16
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_decode_into(data: bytes | memoryview, target: np.ndarray) -> None:
    """Decode PNG ``data`` into ``target`` (uint8 or uint16, (H, W) or (H, W, C)); ValueError unless the PNG is
    exactly an image of that shape, bit depth and colour type (checked before anything is allocated)."""
    shape, channels = target.shape, _channels(target.shape)
    depth = 8 * target.dtype.itemsize
    colour, mode = PNG_COLOURS[channels]
    try:
        length, kind, width, height, found_depth, found_colour, _, _, interlace = IHDR.unpack_from(
            data, len(PNG_SIGNATURE)
        )
    except struct.error:
        raise ValueError(f"not a PNG: {len(data)} bytes, shorter than a PNG header") from None
    if bytes(data[: len(PNG_SIGNATURE)]) != PNG_SIGNATURE or kind != b"IHDR" or length != 13:
        raise ValueError("not a PNG (no PNG signature and header)")
    if (height, width, found_depth, found_colour) != (shape[0], shape[1], depth, colour):
        raise ValueError(
            f"a {width}x{height} PNG of bit depth {found_depth}, colour type {found_colour}; "
            f"expected {shape} ({mode}, {depth} bits)"
        )
    if depth == 8:
        with PngImagePlugin.PngImageFile(io.BytesIO(data)) as image:  # not Image.open: its bomb check is done above
            image.load()
            if image.mode != mode or image.size != (width, height):
                raise ValueError(f"Pillow decoded it as {image.mode} {image.size}, expected {mode} {(width, height)}")
            target.reshape(height, width, -1)[...] = np.asarray(image).reshape(height, width, -1)
        return
    if interlace:
        raise ValueError("an interlaced 16-bit PNG: this reader takes the non-interlaced PNGs png_encode writes")
    row_bytes = width * channels * 2
    filtered = np.frombuffer(_inflate(_idat(data), height * (row_bytes + 1)), np.uint8).reshape(height, row_bytes + 1)
    rows = _unfilter(filtered, channels * 2)
    target[...] = rows.view(">u2").reshape(shape)


def _idat(data: bytes | memoryview) -> bytes:
    """The concatenated IDAT chunks of a PNG (chunk CRCs checked)."""
    view, position, parts = memoryview(data), len(PNG_SIGNATURE), []
    while position + CHUNK_HEAD.size <= len(view):
        length, kind = CHUNK_HEAD.unpack_from(view, position)
        body = view[position + CHUNK_HEAD.size : position + CHUNK_HEAD.size + length]
        crc = view[position + CHUNK_HEAD.size + length : position + CHUNK_HEAD.size + length + 4]
        if len(body) != length or len(crc) != 4 or zlib.crc32(body, zlib.crc32(kind)) != int.from_bytes(crc, "big"):
            raise ValueError(f"the PNG chunk {kind!r} at byte {position} is cut short or fails its CRC")
        if kind == b"IDAT":
            parts.append(body)
        elif kind == b"IEND":
            return b"".join(parts)
        position += CHUNK_HEAD.size + length + 4
    raise ValueError("the PNG has no IEND chunk (cut short)")


def _inflate(compressed: bytes, size: int) -> bytes:
    """Exactly ``size`` bytes inflated from ``compressed``; never more (a decompression bomb stops there)."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(compressed, size)
    except zlib.error as error:
        raise ValueError(f"the PNG's image data do not inflate ({error})") from None
    if len(raw) != size or inflater.unconsumed_tail or not inflater.eof:
        raise ValueError(f"the PNG's image data inflate to other than the {size} bytes its header implies")
    return raw


def _unfilter(filtered: np.ndarray, pixel_bytes: int) -> np.ndarray:
    """Undo PNG filters None, Sub and Up (``filtered``: one row per image row, its filter type first)."""
    kinds, rows = filtered[:, 0], filtered[:, 1:]
    if (kinds == FILTER_UP).all():
        return np.cumsum(rows, axis=0, dtype=np.uint8)  # wraps modulo 256, as the filter does
    out = np.empty_like(rows)
    previous = np.zeros(rows.shape[1], np.uint8)
    for row, (kind, values) in enumerate(zip(kinds.tolist(), rows)):
        if kind == FILTER_NONE:
            out[row] = values
        elif kind == FILTER_SUB:
            out[row] = np.cumsum(values.reshape(-1, pixel_bytes), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == FILTER_UP:
            out[row] = values + previous
        else:
            raise ValueError(
                f"row {row} uses PNG filter type {kind}; this reader takes None, Sub and Up (what png_encode writes)"
            )
        previous = out[row]
    return out


# -- codecs as objects the containers use ---------------------------------------------------------------
class Codec(abc.ABC):
    """One way to turn an image into bytes and back."""

    spec: str  # canonical name, e.g. "jpeg-90"
    extension: str  # file name extension for one file per image
    lossless: bool

    @abc.abstractmethod
    def limit(self, dtype: np.dtype, shape: tuple[int, ...]) -> str | None:
        """None if this codec holds images of ``dtype`` and ``shape``, else why not."""

    @abc.abstractmethod
    def encode(self, image: np.ndarray) -> bytes:
        """The bytes of one valid, C-contiguous image."""

    @abc.abstractmethod
    def decode_into(self, data: bytes | memoryview, target: np.ndarray) -> None:
        """Decode ``data`` into ``target`` (one image slot); ValueError unless it is exactly such an image."""

    def __repr__(self) -> str:
        return f"Codec({self.spec!r})"


class Raw(Codec):
    spec, extension, lossless = "raw", "raw", True

    def limit(self, dtype: np.dtype, shape: tuple[int, ...]) -> str | None:
        return None

    def encode(self, image: np.ndarray) -> bytes:
        return image.tobytes()

    def decode_into(self, data: bytes | memoryview, target: np.ndarray) -> None:
        if len(data) != target.nbytes:
            raise ValueError(
                f"{len(data)} bytes of raw pixels, expected {target.nbytes} ({target.dtype} {target.shape})"
            )
        memoryview(target).cast("B")[:] = data


class Png(Codec):
    extension, lossless = "png", True

    def __init__(self, level: int = PNG_DEFAULT_LEVEL) -> None:
        self.level = level
        self.spec = "png" if level == PNG_DEFAULT_LEVEL else f"png-{level}"

    def limit(self, dtype: np.dtype, shape: tuple[int, ...]) -> str | None:
        return png_limit(dtype, shape)

    def encode(self, image: np.ndarray) -> bytes:
        return png_encode(image, self.level)

    def decode_into(self, data: bytes | memoryview, target: np.ndarray) -> None:
        png_decode_into(data, target)


class PillowLossy(Codec):
    """JPEG or WebP through Pillow (libjpeg-turbo, libwebp); header checked before Pillow decodes."""

    def __init__(self, kind: str, quality: int | None) -> None:
        self.kind, self.quality = kind, quality  # quality None: WebP lossless
        self.lossless = quality is None
        self.spec = f"{kind}-{'lossless' if quality is None else quality}"
        self.extension = "jpg" if kind == "jpeg" else "webp"
        self._modes = {1: "L", 3: "RGB"} if kind == "jpeg" else {3: "RGB", 4: "RGBA"}
        self._plugin = JpegImagePlugin.JpegImageFile if kind == "jpeg" else WebPImagePlugin.WebPImageFile
        self._options = {"quality": quality} if quality is not None else {"lossless": True}

    def limit(self, dtype: np.dtype, shape: tuple[int, ...]) -> str | None:
        layouts = " or ".join("(H, W)" if count == 1 else f"(H, W, {count})" for count in self._modes)
        if np.dtype(dtype) != np.uint8 or len(shape) not in (2, 3) or _channels(shape) not in self._modes:
            return f"{self.kind.upper()} holds uint8 images of shape {layouts}, not {np.dtype(dtype)} {tuple(shape)}"
        return None

    def encode(self, image: np.ndarray) -> bytes:
        mode = self._modes[_channels(image.shape)]
        buffer = io.BytesIO()
        Image.frombuffer(mode, image.shape[1::-1], image, "raw", mode, 0, 1).save(
            buffer, format=self.kind.upper(), **self._options
        )
        return buffer.getvalue()

    def decode_into(self, data: bytes | memoryview, target: np.ndarray) -> None:
        mode = self._modes[_channels(target.shape)]
        with self._plugin(
            io.BytesIO(data)
        ) as image:  # not Image.open: the header is checked here, not by a global limit
            if image.size != target.shape[1::-1] or image.mode != mode:
                raise ValueError(
                    f"a {image.mode} image of {image.size[0]}x{image.size[1]}, expected {mode} of shape {target.shape}"
                )
            image.load()
            target.reshape(image.size[1], image.size[0], -1)[...] = np.asarray(image).reshape(
                image.size[1], image.size[0], -1
            )


CODECS = "raw, png, png-0..png-9, jpeg-1..jpeg-100, webp-1..webp-100, webp-lossless"
_SPEC = re.compile(r"(raw|png|jpeg|webp)(?:-(\d{1,3}|lossless))?")


@functools.cache
def get_codec(spec: str) -> Codec:
    """The codec named ``spec``; ValueError listing the codecs for an unknown name or a parameter out of range."""
    match = _SPEC.fullmatch(spec) if isinstance(spec, str) else None
    kind, parameter = (match[1], match[2]) if match else (None, None)
    if kind == "raw" and parameter is None:
        return Raw()
    if kind == "png" and (parameter is None or parameter.isdigit() and int(parameter) <= 9):
        return Png(PNG_DEFAULT_LEVEL if parameter is None else int(parameter))
    if kind in ("jpeg", "webp") and parameter and parameter.isdigit() and 1 <= int(parameter) <= 100:
        return PillowLossy(kind, int(parameter))
    if kind == "webp" and parameter == "lossless":
        return PillowLossy(kind, None)
    raise ValueError(f"unknown codec {spec!r}: use {CODECS}")


RAW = get_codec("raw")  # the pixels as they are: the codec of a store that does not encode (one object: ``is RAW``)


def psnr_db(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Peak signal-to-noise ratio of ``decoded`` against ``reference`` (uint8 peak 255), in dB; inf if equal."""
    peak = float(np.iinfo(reference.dtype).max) if reference.dtype.kind in "ui" else 1.0
    error = np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return math.inf if error == 0 else 10 * math.log10(peak * peak / error)
