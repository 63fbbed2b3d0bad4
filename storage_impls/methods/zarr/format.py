"""The zarr v3 group of one checkpoint of the zarr method: how its arrays are made, opened and checked, and how
its shard files are read without zarr's per-call machinery (byte for byte what the sharding codec specifies).

A group holds ``images`` (the store's dtype, (N, *image shape)) and ``labels`` (int64, (N,)). ``images``: one
chunk per image, ``per_shard`` images per shard file (``sharding_indexed``, index at the end: uint64 (offset,
length) per chunk, little endian, then its CRC-32C); inner codecs ``bytes`` (this machine's byte order), then
``blosc`` or ``zstd`` (zarr's defaults) if compressed, then ``crc32c`` when the store is checksummed. ``labels``:
chunks of LABEL_CHUNK labels, ``bytes`` plus ``crc32c`` when checksummed. Every chunk is written
(``write_empty_chunks``), so a missing one is damage, never a run of fill values. A store with a codec: ``images``
is (N,) ``variable_length_bytes``, one encoded image per element and chunk, serializer ``vlen-bytes`` (a chunk:
uint32 count 1, uint32 length, the bytes; little endian), the same shards and compressors, and the group's
attributes add the codec (``Layout.attributes``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import struct
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import google_crc32c
import numpy as np
import zarr
import zarr.errors
from numcodecs import Blosc, Zstd
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, VLenBytesCodec, ZstdCodec
from zarr.core.dtype import VariableLengthBytes
from zarr.core.dtype.common import UnstableSpecificationWarning
from zarr.storage import LocalStore, MemoryStore

from storage_impls.core.errors import CorruptStoreError, StoreError
from storage_impls.core.fileio import read_bounded
from storage_impls.core.records import META_MAX_BYTES

FORMAT = "storage_impls.zarr"
GROUP_ATTRIBUTES = {"format": FORMAT, "format_version": 1}  # a group without them was written by another tool
SHARD_BYTES = 64 << 20  # target bytes of pixels per shard file (balanced: see shard_images)
LABEL_CHUNK = 1 << 20  # labels per chunk of ``labels`` (8 MiB)
COMPRESSIONS = ("none", "blosc", "zstd")
MISSING = np.uint64(2**64 - 1)  # the index entry of a chunk that was never written
CRC = 4  # bytes of a crc32c codec's trailer
#: zarr's ``codec_pipeline.batch_size`` while writing (default 1: each chunk its own trip through the asyncio
#: pipeline). 16-256 all about halve store_many's time: 80-83 us per 32x32x3 image at 64, 165-211 at 1 (same run)
WRITE_BATCH = 64
_DECODERS = {"blosc": Blosc(), "zstd": Zstd()}  # both formats are self-describing: defaults decode any settings
VLEN_HEADER = struct.Struct("<II")  # a vlen-bytes chunk of one element: the element count (1), then its length


def shard_images(dtype: np.dtype, shape: tuple[int, ...], count: int) -> int:
    """Images per shard: about SHARD_BYTES of pixels, balanced so that the last shard is nearly as full as the
    others (a shard has a slot per image in its index, used or not)."""
    target = max(1, SHARD_BYTES // (math.prod(shape) * dtype.itemsize))
    shards = -(-count // target)
    return -(-count // shards)


def label_chunk(count: int) -> int:
    """Labels per chunk of ``labels`` for a store of ``count`` images."""
    return min(count, LABEL_CHUNK)


class Layout(NamedTuple):
    """Everything that fixes a checkpoint's two zarr arrays (recorded in the store's metadata)."""

    dtype: np.dtype
    shape: tuple[int, ...]
    count: int
    per_shard: int
    labels_per_chunk: int
    compression: str
    checksum: bool
    codec: str = "raw"  # the spec of the images' codec (codecs.py); not raw: ``images`` holds their encoded bytes

    @property
    def encoded(self) -> bool:
        return self.codec != "raw"

    def attributes(self) -> dict:
        """The group's attributes: this package's format, and the codec of encoded images (absent: raw pixels)."""
        return {**GROUP_ATTRIBUTES, "codec": self.codec} if self.encoded else GROUP_ATTRIBUTES

    def shard_path(self, folder: Path, index: int) -> Path:
        """The file of shard ``index`` of ``images`` (zarr's default chunk key encoding: ``c/<i>/0/0...``)."""
        return folder.joinpath("images", "c", str(index), *["0"] * (0 if self.encoded else len(self.shape)))

    def specs(self) -> dict[str, dict]:
        """Keyword arguments of ``zarr.create_array`` for ``images`` and ``labels``."""
        compressor = {"none": [], "blosc": [BloscCodec()], "zstd": [ZstdCodec()]}[self.compression]
        trailer = [Crc32cCodec()] if self.checksum else []
        common = {"filters": None, "config": {"write_empty_chunks": True}}
        if self.encoded:  # one element of bytes per image
            images = {
                "shape": (self.count,),
                "dtype": VariableLengthBytes(),
                "chunks": (1,),
                "shards": (self.per_shard,),
                "serializer": VLenBytesCodec(),
                "fill_value": b"",
            }
        else:
            images = {
                "shape": (self.count, *self.shape),
                "dtype": self.dtype,
                "chunks": (1, *self.shape),
                "shards": (self.per_shard, *self.shape),
                "serializer": BytesCodec(endian=sys.byteorder),
                "fill_value": 0,
            }
        return {
            "images": {**images, "compressors": compressor + trailer, **common},
            "labels": {
                "shape": (self.count,),
                "dtype": np.dtype(np.int64),
                "chunks": (self.labels_per_chunk,),
                "serializer": BytesCodec(endian=sys.byteorder),
                "compressors": trailer,
                "fill_value": 0,
                **common,
            },
        }


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence zarr's warning that ``variable_length_bytes`` has no zarr v3 specification yet (used on purpose: see
    zarr.py), which it gives whenever such an array's metadata is made or serialised."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableSpecificationWarning)
        yield


@functools.lru_cache(maxsize=64)
def expected_metadata(layout: Layout) -> dict[str, dict]:
    """The zarr metadata (less attributes) of both arrays as this zarr version writes them for ``layout``: made
    once per layout in memory, so that every field counts (shape, data type, chunk grid, codecs, fill value)."""
    with quiet():
        return {name: _metadata(zarr.create_array(MemoryStore(), **spec)) for name, spec in layout.specs().items()}


def write_group(folder: Path, layout: Layout) -> tuple[zarr.Array, zarr.Array]:
    """Create the group and its two (empty) arrays in ``folder``."""
    specs = layout.specs()
    group = zarr.create_group(LocalStore(folder), zarr_format=3, attributes=layout.attributes())
    with quiet():
        return group.create_array("images", **specs["images"]), group.create_array("labels", **specs["labels"])


class StrictLocalStore(LocalStore):
    """A LocalStore that raises FileNotFoundError (naming the file) for a missing chunk or shard: plain
    LocalStore returns None, which zarr reads as fill values, so a deleted shard would read as zeros."""

    async def get(self, key: str, prototype: object = None, byte_range: object = None) -> object:
        value = await super().get(key, prototype, byte_range)
        if value is None:
            raise FileNotFoundError(errno.ENOENT, "a zarr chunk or metadata file is missing", str(self.root / key))
        return value


def open_group(folder: Path, layout: Layout) -> tuple[zarr.Array, zarr.Array]:
    """``images`` and ``labels`` of the group in ``folder``, read only, each exactly as ``layout`` makes it;
    CorruptStoreError naming the metadata file otherwise, FileNotFoundError (naming it) if one is missing."""
    group = _open_node(
        folder, "", lambda: zarr.open_group(StrictLocalStore(folder, read_only=True), mode="r", zarr_format=3)
    )
    if not isinstance(group, zarr.Group) or dict(group.attrs) != layout.attributes():
        attributes = dict(group.attrs) if isinstance(group, zarr.Group) else None
        raise CorruptStoreError(
            f"{folder / 'zarr.json'}: a zarr group written by another tool, or of another codec "
            f"(attributes {attributes!r}, expected {layout.attributes()!r})"
        )
    arrays = []
    for name in ("images", "labels"):
        with quiet():
            node = _open_node(folder, name, lambda name=name: group[name])
            found = _metadata(node) if isinstance(node, zarr.Array) else {"node_type": "group"}
        expected = expected_metadata(layout)[name]
        if found != expected:
            differs = "; ".join(
                f"{key} {found.get(key)!r}, expected {expected.get(key)!r}"
                for key in sorted(expected.keys() | found.keys())
                if expected.get(key) != found.get(key)
            )
            raise CorruptStoreError(
                f"{folder / name / 'zarr.json'}: {name} is not the array this store wrote ({differs})"
            )
        arrays.append(node)
    return arrays[0], arrays[1]


def _open_node(folder: Path, name: str, opener: Callable[[], object]) -> object:
    """``opener()``, with zarr's errors turned into this package's, naming ``folder/name/zarr.json``."""
    path = folder / name / "zarr.json" if name else folder / "zarr.json"
    try:
        return opener()
    except Exception as error:  # noqa: BLE001  (zarr's parsing raises many kinds: each means a damaged file)
        if isinstance(error, MemoryError):
            raise
        if not path.exists():  # missing, or removed by a commit while this handle opened it
            raise FileNotFoundError(errno.ENOENT, "a zarr metadata file is missing", str(path)) from None
        raise CorruptStoreError(
            f"{path} is not readable zarr v3 metadata of an {'array' if name else 'group'} "
            f"({type(error).__name__}: {error})"
        ) from None


def _metadata(array: zarr.Array) -> dict:
    """An array's zarr metadata as a dict, less its attributes."""
    return {key: value for key, value in array.metadata.to_dict().items() if key != "attributes"}


def read_labels(labels: zarr.Array, folder: Path) -> np.ndarray:
    """All labels, read through zarr a chunk at a time; CorruptStoreError naming the chunk file that fails."""
    out = np.empty(labels.shape, np.int64)
    step = labels.chunks[0]
    for index, start in enumerate(range(0, len(out), step)):
        try:
            out[start : start + step] = labels[start : start + step]
        except (FileNotFoundError, StoreError):
            raise
        except Exception as error:  # noqa: BLE001  (a damaged chunk: a checksum, a size or a codec that fails)
            if isinstance(error, MemoryError):
                raise
            raise CorruptStoreError(
                f"{folder / 'labels' / 'c' / str(index)} is damaged ({type(error).__name__}: {error})"
            ) from None
    return out


def read_shard_index(
    fd: int, path: Path, per_shard: int, used: int, chunk_bytes: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, lengths) of the first ``used`` chunks of one shard file, from the index at its end, checked: its
    CRC-32C, every chunk present, inside the data, and of ``chunk_bytes`` if known (uncompressed chunks)."""
    size, index_bytes = os.fstat(fd).st_size, 16 * per_shard + CRC
    raw = os.pread(fd, index_bytes, size - index_bytes) if size >= index_bytes else b""
    if len(raw) != index_bytes:
        raise CorruptStoreError(f"{path} is {size} bytes, too short for the index of {per_shard} chunks")
    if google_crc32c.value(raw[:-CRC]) != int.from_bytes(raw[-CRC:], "little"):
        raise CorruptStoreError(f"{path}: its shard index fails its CRC-32C (a damaged or cut file)")
    entries = np.frombuffer(raw, "<u8", 2 * used).reshape(used, 2)
    offsets, lengths = entries[:, 0], entries[:, 1]
    data_end = size - index_bytes
    bad = np.flatnonzero(
        (offsets == MISSING)
        | (lengths > data_end)
        | (offsets > data_end - np.minimum(lengths, data_end))
        | ((lengths != chunk_bytes) if chunk_bytes is not None else (lengths <= CRC))
    )
    if len(bad):
        raise CorruptStoreError(
            f"{path}: chunk {bad[0]} of its index is missing, outside the file or of the wrong "
            f"size ({int(lengths[bad[0]])} bytes at {int(offsets[bad[0]])})"
        )
    return offsets.astype(np.int64), lengths.astype(np.int64)


class ChunkDecoder:
    """Turns the bytes of one inner chunk into the pixels of one image (``decode_into``), or into the encoded image it
    holds (``payload``, a store with a codec), checking its CRC-32C if it has one. Buffers are numpy arrays or bytes
    (google_crc32c takes no memoryview)."""

    def __init__(self, compression: str, checksum: bool, row: int, encoded: bool = False) -> None:
        self.compression, self.checksum, self.row = compression, checksum, row
        # the one size of every chunk (uncompressed raw pixels), else None
        self.raw_bytes = row + CRC * checksum if compression == "none" and not encoded else None

    def _serialized(self, data: np.ndarray | bytes, where: object) -> np.ndarray | bytes:
        """The chunk as its serializer wrote it: CRC-32C checked and removed, decompressed."""
        if self.checksum:
            data, trailer = data[:-CRC], data[-CRC:]
            self.check_crc(data, trailer, where)
        if self.compression == "none":
            return data
        try:
            return _DECODERS[self.compression].decode(data)
        except (RuntimeError, ValueError, TypeError) as error:
            raise CorruptStoreError(f"{where} does not decompress ({self.compression}: {error})") from None

    def decode_into(self, data: np.ndarray | bytes, target: np.ndarray, where: object) -> None:
        """Fill ``target`` (``row`` bytes, uint8) from ``data``, the chunk as stored."""
        pixels = np.frombuffer(self._serialized(data, where), np.uint8)
        if len(pixels) != self.row:
            raise CorruptStoreError(f"{where} decompresses to {len(pixels)} bytes, expected {self.row}")
        target[:] = pixels

    def payload(self, data: bytes, where: object) -> memoryview:
        """The encoded image in ``data``, the chunk as stored: vlen-bytes of one element (a little-endian uint32 count,
        1, then the element's uint32 length and its bytes)."""
        serialized = memoryview(self._serialized(data, where))
        count, length = VLEN_HEADER.unpack_from(serialized) if len(serialized) >= VLEN_HEADER.size else (0, -1)
        if count != 1 or length != len(serialized) - VLEN_HEADER.size:
            raise CorruptStoreError(
                f"{where}: a chunk of {len(serialized)} bytes that is not one vlen-bytes element "
                f"(count {count}, length {length})"
            )
        return serialized[VLEN_HEADER.size :]

    @staticmethod
    def check_crc(pixels: np.ndarray | bytes, trailer: np.ndarray | bytes, where: object) -> None:
        """CorruptStoreError unless ``trailer`` is the CRC-32C of ``pixels`` (little endian, as zarr's crc32c codec)."""
        if google_crc32c.value(pixels) != int.from_bytes(bytes(trailer), "little"):
            raise CorruptStoreError(f"{where} fails its CRC-32C (bit rot or a damaged file)")


def foreign_metadata(directory: Path) -> str | None:
    """What zarr node another tool left at the top of ``directory`` (this package keeps its own zarr.json there:
    a line of JSON and a line of CRC, which no JSON parser reads whole), or None."""
    for name in (".zgroup", ".zarray"):  # zarr v2
        if (directory / name).exists():
            return f"{directory / name} (zarr v2 metadata)"
    try:
        node = json.loads(read_bounded(directory / "zarr.json", META_MAX_BYTES))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    if isinstance(node, dict) and ("zarr_format" in node or "node_type" in node):
        return f"{directory / 'zarr.json'} (zarr v{node.get('zarr_format', '?')} metadata)"
    return None
