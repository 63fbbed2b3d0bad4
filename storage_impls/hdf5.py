"""HDF5: one file, ``images.h5``, with a uint8 ``images`` dataset (N, H, W[, C]) and an int64
``labels`` dataset (N,).

``store_many`` writes a new file beside the old one with contiguous datasets (the fastest
layout to read) and renames it into place, so a failed or killed write leaves the previous
file intact. ``read_many`` reads with ``read_direct`` straight into the caller's array.
``store_single`` writes in place; appending to a contiguous file converts it once to
resizable chunked datasets. In-place writes are not crash-safe (HDF5 has no journal).

Concurrency: HDF5's file locks allow one writer or many readers per file, across processes.
The h5py handle stays open between calls; open the store again in each process after a fork.
"""
from __future__ import annotations

import os
import uuid

import h5py
import numpy as np

from storage_impls.base import ImageStore, fsync_path
from storage_impls.errors import CorruptStoreError, MissingStoreError

FILE_NAME = "images.h5"
FORMAT = "storage_impls.hdf5"
FORMAT_VERSION = 1
CHUNK_BYTES = 16 << 10  # chunk size of resizable datasets: cheap appends, little waste on small stores
COPY_BLOCK_BYTES = 64 << 20  # images copied at a time when converting to a resizable layout


class Hdf5Store(ImageStore):
    """Images and labels as two datasets of one HDF5 file."""

    method = "hdf5"

    def _open(self) -> None:
        self._path = self.directory / FILE_NAME
        self._file: h5py.File | None = None
        if self._path.exists():
            self._attach(self._open_file(self._path, "r" if self.mode == "r" else "r+"))
        elif self.mode == "r":
            raise MissingStoreError(f"no hdf5 store at {self.directory}: {FILE_NAME} does not exist")

    def _open_file(self, path: os.PathLike, h5_mode: str) -> h5py.File:
        try:
            file = h5py.File(path, h5_mode)
        except OSError as error:
            raise CorruptStoreError(f"{path} is not a readable HDF5 file: {error}") from None
        try:
            images, labels = file["images"], file["labels"]
            if file.attrs.get("format") != FORMAT:
                raise CorruptStoreError(f"{path} was not written by {FORMAT}")
            if images.dtype != np.uint8 or labels.dtype != np.int64 or labels.ndim != 1 or len(images) != len(labels):
                raise CorruptStoreError(f"{path}: images/labels datasets have unexpected dtype or length")
        except (KeyError, CorruptStoreError) as error:
            file.close()
            if isinstance(error, KeyError):
                raise CorruptStoreError(f"{path} lacks the images or labels dataset") from None
            raise
        return file

    def _attach(self, file: h5py.File) -> None:
        """Keep the file and its two datasets open: looking a dataset up by name costs more than a small read."""
        self._file, self._images, self._labels = file, file["images"], file["labels"]

    def _refresh(self) -> None:
        pass  # TODO(fault work): catch up with other writers

    def __len__(self) -> int:
        return 0 if self._file is None else len(self._labels)

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        return None if self._file is None else self._images.shape[1:]

    def _replace_all(self, images: np.ndarray, labels: np.ndarray) -> None:
        temporary = self.directory / f".{FILE_NAME}.{uuid.uuid4().hex}.tmp"
        try:
            with h5py.File(temporary, "w") as file:
                _write_layout(file, images=images, labels=labels)
            self._commit(temporary)
        finally:
            temporary.unlink(missing_ok=True)

    def _put(self, image: np.ndarray, image_id: int, label: int) -> None:
        if self._file is None:
            temporary = self.directory / f".{FILE_NAME}.{uuid.uuid4().hex}.tmp"
            try:
                with h5py.File(temporary, "w") as file:
                    _write_layout(file, images=image[np.newaxis], labels=np.array([label], np.int64), resizable=True)
                self._commit(temporary)
            finally:
                temporary.unlink(missing_ok=True)
            return
        if image_id == len(self):
            if self._images.maxshape[0] is not None:
                self._convert_to_resizable()
            for dataset in self._images, self._labels:
                dataset.resize(image_id + 1, axis=0)
        self._images[image_id] = image
        self._labels[image_id] = label
        self._file.flush()
        if self.durable:
            fsync_path(self._path)

    def _convert_to_resizable(self) -> None:
        """Rewrite the file with chunked, resizable datasets so that appends are cheap."""
        source = self._file
        temporary = self.directory / f".{FILE_NAME}.{uuid.uuid4().hex}.tmp"
        try:
            with h5py.File(temporary, "w") as target:
                _write_layout(target, shape=source["images"].shape, resizable=True)
                step = max(1, COPY_BLOCK_BYTES // max(1, np.prod(source["images"].shape[1:])))
                for start in range(0, len(source["labels"]), step):
                    block = np.s_[start:start + step]
                    target["images"][block] = source["images"][block]
                    target["labels"][block] = source["labels"][block]
            self._commit(temporary)
        finally:
            temporary.unlink(missing_ok=True)

    def _commit(self, temporary: os.PathLike) -> None:
        """Rename a complete file into place and reopen it."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.durable:
            fsync_path(temporary)
        os.replace(temporary, self._path)
        if self.durable:
            fsync_path(self.directory)
        self._attach(self._open_file(self._path, "r+"))

    def _get(self, image_id: int) -> tuple[np.ndarray, int]:
        return self._images[image_id], int(self._labels[image_id])

    def _read_into(self, out: np.ndarray, labels: np.ndarray) -> None:
        selection = np.s_[0:len(out)]
        self._images.read_direct(out, selection)
        self._labels.read_direct(labels, selection)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _write_layout(file: h5py.File, *, images: np.ndarray | None = None, labels: np.ndarray | None = None,
                  shape: tuple[int, ...] | None = None, resizable: bool = False) -> None:
    """Create the two datasets, filled from ``images``/``labels`` or empty with ``shape``."""
    file.attrs["format"] = FORMAT
    file.attrs["format_version"] = FORMAT_VERSION
    shape = images.shape if images is not None else shape
    images_per_chunk = max(1, CHUNK_BYTES // int(np.prod(shape[1:])))
    options = {"chunks": (images_per_chunk, *shape[1:]), "maxshape": (None, *shape[1:])} if resizable else {}
    file.create_dataset("images", shape=shape, dtype=np.uint8, data=images, **options)
    label_options = {"chunks": (512,), "maxshape": (None,)} if resizable else {}
    file.create_dataset("labels", shape=shape[:1], dtype=np.int64, data=labels, **label_options)
