"""npz: images in compressed ``.npz`` shards (``np.savez_compressed``, zlib's default level): the
"compressed numpy files" baseline.

Layout (see checkpointed.py for the metadata file, the journal and how writes commit):
``DIR/npz.json`` names ``DIR/ckpt-<token>/`` holding ``shard-000000.npz``, ``shard-000001.npz``, ...
Shard ``k`` holds images ``k*S .. (k+1)*S-1``, where S (``shard_images`` in the metadata) is as many
images as fit in ``SHARD_BYTES`` (1 MiB) of pixels, at least one: 341 images of 32x32x3. Each shard
has the members ``images`` (the store's dtype, (n, *image shape)), ``labels`` (little-endian int64) and, with
``checksum=True``, ``checksums`` (uint64, xxh3_64 of each image seeded with its label): ``np.load``
reads it. ``DIR/npz.journal`` holds single-image writes (raw pixels, CRC-checked).

Reads decompress whole shards: ``read_single`` one shard, ``read_batch`` each shard its ids fall in
(once per call); for ``read_single`` the handle keeps the last shard it decoded, bulk reads never use it (a
benchmark reading the same images again must pay for them again). Every member is read to its end, so
zip's CRC-32 is always checked; a damaged shard raises CorruptStoreError naming the file.

Shard files are opened when read, so a reader's snapshot expires once a later commit (a
``store_many``, or the journal folded into a new checkpoint) removes its folder: its reads then
raise MissingStoreError ("open it again"), never other data.
"""

from __future__ import annotations

import io
import math
import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from storage_impls.core.checkpointed import Checkpoint, CheckpointedStore, Source
from storage_impls.core.codecs import Codec
from storage_impls.core.errors import CorruptStoreError
from storage_impls.core.records import image_checksums, verify_checksums
from storage_impls.formats.npy import read_array

SHARD_BYTES = 1 << 20  # pixels per shard: a read of one image decompresses at most this much
SHARD = "shard-{index:06d}.npz"
SHARD_NAME = re.compile(r"shard-\d{6,}\.npz")
NPY_HEADER_MAX = 1 << 16  # a .npy header's bytes at most (format 1.0 spells its length in 2 bytes)
LABEL_DTYPE, CHECKSUM_DTYPE = np.dtype("<i8"), np.dtype("<u8")
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError, NotImplementedError, RuntimeError)


def shard_images(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """Images per shard for images of ``dtype`` and ``shape``."""
    return max(1, SHARD_BYTES // (int(np.prod(shape)) * dtype.itemsize))


class NpzCheckpoint(Checkpoint):
    """A folder of shards, decoded on demand (the last one kept for single reads)."""

    def __init__(self, folder: Path, meta: dict) -> None:
        super().__init__(folder, meta)
        self.per_shard = meta["shard_images"]
        expected = shard_images(self.dtype, self.shape)
        if type(self.per_shard) is not int or self.per_shard != expected:
            raise CorruptStoreError(f"{folder}: {self.per_shard!r} images per shard, expected {expected}")
        if not (folder / SHARD.format(index=0)).is_file():
            raise FileNotFoundError(2, "no such shard", str(folder / SHARD.format(index=0)))
        shards = -(-self.count // self.per_shard)
        present = sum(bool(SHARD_NAME.fullmatch(name)) for name in os.listdir(folder))
        if present != shards:  # before anything of the declared count is allocated
            raise CorruptStoreError(
                f"{folder}: {self.count} images make {shards} shards of {self.per_shard}, {present} are there"
            )
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    def shard(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of shard ``index`` for single reads, the last one kept (neighbours are read next)."""
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, *self._decode(index))
        return self._cached[1], self._cached[2]

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of shard ``index``, read and checked (CRC-32 of each member, shapes, checksums).
        Bulk reads always decode, so that reading the same images again costs what reading them costs."""
        first = index * self.per_shard
        count = min(self.per_shard, self.count - first)
        path = self.folder / SHARD.format(index=index)
        names = ["images", "labels"] + ["checksums"] * self.checksum
        shapes = {"images": (count, *self.shape), "labels": (count,), "checksums": (count,)}
        dtypes = {"images": self.dtype, "labels": LABEL_DTYPE, "checksums": CHECKSUM_DTYPE}
        try:
            with zipfile.ZipFile(path) as archive:
                for name in names:  # a member inflates to the size its entry declares: at most what the shard holds
                    declared = archive.getinfo(f"{name}.npy").file_size
                    if declared > math.prod(shapes[name]) * dtypes[name].itemsize + NPY_HEADER_MAX:
                        raise CorruptStoreError(
                            f"{path}: {name}.npy declares {declared} bytes, more than "
                            f"{shapes[name]} {dtypes[name]} take"
                        )
                members = {name: archive.read(f"{name}.npy") for name in names}  # read whole: CRC-32 checked
            arrays = [self._member(path, members, name, dtypes[name], shapes[name]) for name in names]
        except FileNotFoundError:
            raise
        except ZIP_ERRORS + (OSError,) as error:
            if isinstance(error, CorruptStoreError):
                raise
            raise CorruptStoreError(f"{path} is not a readable .npz shard ({type(error).__name__}: {error})") from None
        images, labels = arrays[0], arrays[1].astype(np.int64)
        if self.checksum:
            verify_checksums(np.arange(first, first + count), images, labels, arrays[2], path)
        return images, labels

    @staticmethod
    def _member(
        path: Path, members: dict[str, bytes], name: str, dtype: np.dtype, shape: tuple[int, ...]
    ) -> np.ndarray:
        data = members[name]
        return read_array(io.BytesIO(data), f"{path}:{name}.npy", dtype, shape, len(data))

    def read_rows(self, start: int, out: np.ndarray, labels: np.ndarray) -> None:
        stop = start + len(out)
        for index in range(start // self.per_shard, (stop - 1) // self.per_shard + 1):
            first = index * self.per_shard
            images, image_labels = self._decode(index)
            low, high = max(start, first), min(stop, first + len(images))
            out[low - start : high - start] = images[low - first : high - first]
            labels[low - start : high - start] = image_labels[low - first : high - first]

    def take(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        shards = ids // self.per_shard
        order = np.argsort(shards, kind="stable")
        bounds = np.flatnonzero(np.diff(shards[order])) + 1
        for positions in np.split(order, bounds):
            index = int(shards[positions[0]])
            images, image_labels = self._decode(index)
            rows = ids[positions] - index * self.per_shard
            out[positions], labels[positions] = images[rows], image_labels[rows]


class NpzStore(CheckpointedStore):
    """Images and labels in compressed ``.npz`` shards, plus a journal."""

    method = "npz"
    slow_random_reads = (
        "each image read at random decompresses its whole shard: about 1 000 images/s on the "
        "development machine, minutes per shuffled epoch of 100 000 images"
    )
    POINTER, JOURNAL, FORMAT = "npz.json", "npz.journal", "storage_impls.npz"

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
        per_shard = shard_images(dtype, shape)
        for index, start in enumerate(range(0, count, per_shard)):
            images, labels = source(start, min(count, start + per_shard))
            arrays = {"images": images, "labels": labels.astype(LABEL_DTYPE)}
            if checksum:
                arrays["checksums"] = image_checksums(images, labels)
            with open(folder / SHARD.format(index=index), "xb") as file:
                np.savez_compressed(file, **arrays)
                if self.durable:
                    file.flush()
                    os.fsync(file.fileno())
        return {"shard_images": per_shard}

    def _open_checkpoint(self, folder: Path, meta: dict) -> Checkpoint:
        return NpzCheckpoint(folder, meta)
