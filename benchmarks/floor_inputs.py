"""What the floors of benchmarks/test_floors.py move and read, made once per session, untimed: each image's bytes as a
store of one codec holds them (raw pixels, or encoded), as one file or one file per image."""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from benchmarks.progress import announce
from benchmarks.verify import verify_images
from storage_impls.core.codecs import RAW, Codec, get_codec


def write_all(fd: int, data: np.ndarray) -> None:
    """Write the whole array at the descriptor's position (os.write may write less than asked)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


def read_into(fd: int, out: np.ndarray, offset: int = 0) -> None:
    """Fill ``out`` from the descriptor at ``offset`` (os.preadv may read less than asked)."""
    view = memoryview(out).cast("B")
    while view:
        done = os.preadv(fd, [view], offset)
        if done == 0:
            raise EOFError(f"file ended {len(view)} bytes early")
        view, offset = view[done:], offset + done


def encode_all(codec: Codec, images: np.ndarray) -> list[bytes]:
    """The bytes of each image, as a store of that codec encodes them."""
    return [codec.encode(image) for image in images]


def decode_all(codec: Codec, blobs: list[bytes], out: np.ndarray) -> None:
    for blob, target in zip(blobs, out):
        codec.decode_into(blob, target)


class Payload(NamedTuple):
    """What an I/O floor moves: each image's bytes as a store of its codec holds them, back to back in ``whole``
    (raw pixels: the images' own bytes), image i at ``whole[offsets[i]:offsets[i + 1]]``."""

    codec: str
    images: np.ndarray  # the source images (what a raw payload's bytes verify against)
    whole: np.ndarray  # uint8
    offsets: np.ndarray  # int64, len(images) + 1

    def blobs(self) -> list[np.ndarray]:
        return [self.whole[start:stop] for start, stop in zip(self.offsets[:-1], self.offsets[1:])]

    def check(self, what: str, got: np.ndarray, order: np.ndarray | None = None) -> None:
        """Fail the floor unless ``got`` (flat bytes) is the payload, its images in ``order`` if given."""
        ids = np.arange(len(self.images)) if order is None else order
        if self.codec == RAW.spec:
            verify_images(what, got.view(self.images.dtype).reshape(self.images.shape), self.images[ids])
            return
        expected = np.concatenate([self.whole[self.offsets[i] : self.offsets[i + 1]] for i in ids])
        if got.shape != expected.shape or not np.array_equal(got, expected):
            pytest.fail(f"{what}: the bytes differ from what was written", pytrace=False)


class FloorInputs:
    """What the floors move and read, made once per session, untimed, in the run's folder."""

    def __init__(self, config: pytest.Config, root: Path, images: np.ndarray) -> None:
        self.config, self.root, self.images = config, root, images
        self.made: dict[tuple, object] = {}

    def _once(self, key: tuple, what: str, count: int, make: Callable[[], object]) -> object:
        if key not in self.made:
            with announce(self.config, f"preparing the {what} floor's input ({count} images)", count):
                self.made[key] = make()
        return self.made[key]

    def payload(self, codec: str, count: int) -> Payload:
        """The first ``count`` images as codec ``codec`` stores them (encoded once per codec and count)."""
        images = self.images[:count]
        if codec == RAW.spec:
            whole = images.reshape(-1).view(np.uint8)
            return Payload(codec, images, whole, np.arange(count + 1, dtype=np.int64) * (whole.nbytes // max(count, 1)))

        def make() -> Payload:
            blobs = encode_all(get_codec(codec), images)
            offsets = np.concatenate([[0], np.cumsum([len(blob) for blob in blobs])]).astype(np.int64)
            return Payload(codec, images, np.frombuffer(b"".join(blobs), np.uint8), offsets)

        return self._once(("payload", codec, count), f"{codec} bytes", count, make)

    def file(self, payload: Payload, name: str = "") -> Path:
        """The payload as one file (fsynced, so that the cold floor can drop it), from its first byte."""

        def make() -> Path:
            self.root.mkdir(parents=True, exist_ok=True)
            path = self.root / f"{payload.codec}-{len(payload.images)}{name}.bin"
            with open(path, "wb") as file:
                file.write(payload.whole)
                os.fsync(file.fileno())
            return path

        return self._once(("file", payload.codec, len(payload.images), name), "file-read", len(payload.images), make)

    def files(self, payload: Payload) -> Path:
        """A folder of one file per image of the payload, named by id."""

        def make() -> Path:
            folder = self.root / f"files-{payload.codec}-{len(payload.images)}"
            folder.mkdir(parents=True)
            for image_id, blob in enumerate(payload.blobs()):
                (folder / str(image_id)).write_bytes(blob)
            return folder

        return self._once(("files", payload.codec, len(payload.images)), "files-read", len(payload.images), make)

    def encoded(self, spec: str, count: int) -> list[bytes]:
        """The first ``count`` images in codec ``spec``, as bytes."""
        return [bytes(blob) for blob in self.payload(spec, count).blobs()]


def mapped(path: Path) -> np.ndarray:
    """The bytes of the file ``path`` through a read-only map of it, which lives as long as the array."""
    with open(path, "rb") as file:
        return np.frombuffer(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
