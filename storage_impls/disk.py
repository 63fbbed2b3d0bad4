"""Disk: one PNG file per image (Pillow, default settings) and the labels in a CSV file.

Layout: ``DIR/CURRENT`` names the live generation folder ``DIR/gen-<hex>/``, which holds
``meta.json`` (image shape), ``labels.csv`` (``image_id,label`` rows; the row count is the
image count) and ``<id>.png``. ``store_many`` writes a whole new generation and then swaps
``CURRENT`` with an atomic rename, so a failed or killed write never reads as complete; the
old generation, and any left by killed writes, is removed afterwards. ``store_single`` writes its PNG, then rewrites
``labels.csv``, each through a temporary file and a rename (one image costs O(N) for the CSV).

Concurrency: one writer at a time; any number of readers. A reader sees the generation that
was current when it opened; once a later ``store_many`` removes it, reads raise
MissingStoreError: open the store again.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from storage_impls.base import ImageStore, fsync_path
from storage_impls.errors import CorruptStoreError, MissingStoreError

POINTER = "CURRENT"
FORMAT = "storage_impls.disk"
FORMAT_VERSION = 1
LABELS_HEADER = "image_id,label\n"
PNG_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # channels -> Pillow mode


def _png_mode(shape: tuple[int, ...]) -> str:
    return PNG_MODES[shape[2] if len(shape) == 3 else 1]


def _as_planes(array: np.ndarray, image_ndim: int) -> np.ndarray:
    """View images of shape (..., H, W, 1) as (..., H, W): Pillow's grey images have no channel axis."""
    if image_ndim == 3 and array.shape[-1] == 1:
        return array.reshape(array.shape[:-1])
    return array


class DiskStore(ImageStore):
    """One PNG file per image plus ``labels.csv``."""

    method = "disk"

    def _open(self) -> None:
        self._generation: Path | None = None
        self._labels = np.empty(0, np.int64)
        self._shape: tuple[int, ...] | None = None
        pointer = self.directory / POINTER
        if not pointer.exists():
            if self.mode == "r":
                raise MissingStoreError(f"{pointer} is missing: {self.directory} holds no complete disk store")
            return
        generation = self.directory / pointer.read_text().strip()
        try:
            meta = json.loads((generation / "meta.json").read_text())
            labels_text = (generation / "labels.csv").read_text()
        except FileNotFoundError as error:
            raise MissingStoreError(f"disk store {self.directory}: {error.filename} is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CorruptStoreError(f"disk store {self.directory}: unreadable meta.json or labels.csv ({error})") from None
        if meta.get("format") != FORMAT:
            raise CorruptStoreError(f"{generation / 'meta.json'} was not written by {FORMAT}")
        self._generation = generation
        self._shape = tuple(meta["image_shape"])
        self._labels = _parse_labels(labels_text, generation / "labels.csv")

    def _refresh(self) -> None:
        pass  # TODO(fault work): catch up with other writers

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        return self._shape

    def _replace_all(self, images: np.ndarray, labels: np.ndarray) -> None:
        def write_pngs(generation: Path) -> None:
            buffer = io.BytesIO()
            for image_id, plane in enumerate(_as_planes(images, images.ndim - 1)):
                self._write_file(generation / f"{image_id}.png", _encode_png(plane, buffer))

        self._publish_generation(images.shape[1:], labels, write_pngs)

    def _put(self, image: np.ndarray, image_id: int, label: int) -> None:
        labels = self._labels.copy() if image_id < len(self._labels) else np.append(self._labels, np.int64(label))
        labels[image_id] = label
        encoded = _encode_png(_as_planes(image, image.ndim), io.BytesIO())
        if self._generation is None:
            self._publish_generation(image.shape, labels, lambda generation: self._write_file(generation / f"{image_id}.png", encoded))
            return
        self._replace_file(self._generation / f"{image_id}.png", encoded)
        self._replace_file(self._generation / "labels.csv", _format_labels(labels))
        self._labels = labels

    def _get(self, image_id: int) -> tuple[np.ndarray, int]:
        image = np.empty(self._shape, np.uint8)
        self._decode_into(image_id, _as_planes(image, image.ndim))
        return image, int(self._labels[image_id])

    def _read_into(self, out: np.ndarray, labels: np.ndarray) -> None:
        for image_id, target in enumerate(_as_planes(out, out.ndim - 1)):
            self._decode_into(image_id, target)
        labels[:] = self._labels[:len(out)]

    def _decode_into(self, image_id: int, target: np.ndarray) -> None:
        path = self._generation / f"{image_id}.png"
        try:
            with open(path, "rb") as file:
                encoded = file.read()
        except FileNotFoundError:
            raise MissingStoreError(f"disk store {self.directory}: {path.name} is missing (image {image_id})") from None
        try:
            with Image.open(io.BytesIO(encoded), formats=["PNG"]) as image:
                if image.size != (target.shape[1], target.shape[0]) or image.mode != _png_mode(self._shape):
                    raise CorruptStoreError(f"{path}: {image.mode} {image.size[0]}x{image.size[1]}, "
                                            f"expected {_png_mode(self._shape)} of shape {self._shape}")
                target[...] = np.asarray(image)
        except (OSError, SyntaxError, ValueError) as error:
            if isinstance(error, CorruptStoreError):
                raise
            raise CorruptStoreError(f"{path} is not a readable PNG: {error}") from None

    def _publish_generation(self, shape: tuple[int, ...], labels: np.ndarray, write_pngs) -> None:
        """Write a complete new generation (``write_pngs(folder)`` adds the images) and make it live."""
        generation = self.directory / f"gen-{uuid.uuid4().hex}"
        generation.mkdir()
        try:
            meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "image_shape": list(shape)}
            self._write_file(generation / "meta.json", json.dumps(meta).encode())
            write_pngs(generation)
            self._write_file(generation / "labels.csv", _format_labels(labels))
            if self.durable:
                fsync_path(generation)
            self._replace_file(self.directory / POINTER, generation.name.encode())
        except BaseException:
            shutil.rmtree(generation, ignore_errors=True)
            raise
        self._generation, self._labels, self._shape = generation, labels, tuple(shape)
        for stale in self.directory.glob("gen-*"):  # the previous generation and leftovers of killed writes
            if stale != generation:
                shutil.rmtree(stale, ignore_errors=True)

    def _replace_file(self, path: Path, data: bytes | memoryview) -> None:
        """Write ``path`` through a temporary file and an atomic rename."""
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            self._write_file(temporary, data)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        if self.durable:
            fsync_path(path.parent)

    def _write_file(self, path: Path, data: bytes | memoryview) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _close(self) -> None:
        """Nothing stays open between calls."""


def _encode_png(plane: np.ndarray, buffer: io.BytesIO) -> bytes:
    """PNG bytes of one image (Pillow's default compression), encoded into a reused buffer."""
    buffer.seek(0)
    buffer.truncate()
    Image.fromarray(plane).save(buffer, format="PNG")
    return buffer.getvalue()


def _format_labels(labels: np.ndarray) -> bytes:
    rows = np.column_stack([np.arange(len(labels)), labels])
    return (LABELS_HEADER + "\n".join(f"{i},{label}" for i, label in rows.tolist()) + "\n").encode()


def _parse_labels(text: str, path: Path) -> np.ndarray:
    header, _, body = text.partition("\n")
    if header + "\n" != LABELS_HEADER or not text.endswith("\n"):
        raise CorruptStoreError(f"{path}: not a labels file written by {FORMAT}")
    try:
        rows = np.array(body.replace(",", " ").split(), dtype=np.int64).reshape(-1, 2)
    except (ValueError, OverflowError):
        raise CorruptStoreError(f"{path}: a row is not two integers") from None
    if not np.array_equal(rows[:, 0], np.arange(len(rows))):
        raise CorruptStoreError(f"{path}: image ids are not 0..{len(rows) - 1} in order")
    return rows[:, 1].copy()
