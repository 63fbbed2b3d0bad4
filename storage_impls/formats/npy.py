"""Reading and writing ``.npy`` files (numpy's format) strictly: what the numpy methods write is exactly
what ``np.save`` writes, and a file that is not exactly the array expected (other dtype or shape, cut
short, trailing bytes, a damaged header) raises CorruptStoreError naming the file."""

from __future__ import annotations

import io
import math
import os
import tokenize
from pathlib import Path
from typing import BinaryIO

import numpy as np

from storage_impls.core.errors import CorruptStoreError
from storage_impls.core.fileio import open_regular
from storage_impls.core.records import image_checksums

LABELS, CHECKSUMS = "labels.npy", "checksums.npy"  # a checkpoint's labels, and its images' checksums if it has them
LABEL_DTYPE, CHECKSUM_DTYPE = np.dtype("<i8"), np.dtype("<u8")


def header(dtype: np.dtype | str, shape: tuple[int, ...]) -> bytes:
    """The bytes ``np.save`` writes before the data of a C-ordered array of ``dtype`` and ``shape``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    )
    return buffer.getvalue()


def parse_header(file: BinaryIO, name: object) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of the .npy file open in ``file`` (at its start); CorruptStoreError if it is not
    one."""
    try:
        version = np.lib.format.read_magic(file)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"format version {version}")
        shape, fortran_order, dtype = read(file)
    except (
        ValueError,
        SyntaxError,
        TypeError,
        EOFError,
        tokenize.TokenError,
    ) as error:  # numpy parses the header as Python
        raise CorruptStoreError(f"{name} is not a readable .npy file ({error})") from None
    if fortran_order:
        raise CorruptStoreError(f"{name} holds a Fortran-ordered array, which this package never writes")
    return tuple(shape), dtype, file.tell()


def check_array(
    name: object, found: tuple[tuple[int, ...], np.dtype], dtype: np.dtype | str, shape: tuple[int, ...]
) -> None:
    """CorruptStoreError unless ``found`` (shape, dtype) is exactly ``shape`` and ``dtype``."""
    if found != (tuple(shape), np.dtype(dtype)):
        raise CorruptStoreError(
            f"{name} holds {found[1]} of shape {found[0]}, expected {np.dtype(dtype)} of shape {tuple(shape)}"
        )


def read_array(file: BinaryIO, name: object, dtype: np.dtype | str, shape: tuple[int, ...], size: int) -> np.ndarray:
    """The whole array of the .npy file open in ``file`` (``size`` bytes), which must be ``dtype`` of ``shape``."""
    found_shape, found_dtype, offset = parse_header(file, name)
    check_array(name, (found_shape, found_dtype), dtype, shape)
    check_size(name, size, offset + math.prod(shape) * np.dtype(dtype).itemsize)  # before allocating what it declares
    array = np.empty(shape, dtype)
    if file.readinto(memoryview(array).cast("B")) != array.nbytes:
        raise CorruptStoreError(f"{name} ends before its data does")
    return array


def load(path: Path, dtype: np.dtype | str, shape: tuple[int, ...]) -> np.ndarray:
    """The array in the .npy file ``path``; FileNotFoundError if it is missing, CorruptStoreError unless it is exactly
    as expected."""
    with os.fdopen(open_regular(path), "rb") as file:
        return read_array(file, path, dtype, shape, os.fstat(file.fileno()).st_size)


def check_size(name: object, size: int, expected: int) -> None:
    if size != expected:
        raise CorruptStoreError(f"{name} is {size} bytes, expected {expected} (cut short, or bytes after its data)")


def save(path: Path, array: np.ndarray, *, durable: bool) -> None:
    """Write ``array`` to a new file ``path`` as ``np.save`` would (C order), fsynced when durable."""
    write_file(path, [header(array.dtype, array.shape), np.ascontiguousarray(array)], durable=durable)


def write_file(path: Path, parts: list[bytes | np.ndarray], *, durable: bool) -> None:
    """Create ``path`` (it must not exist) holding ``parts`` one after another; fsync it when durable."""
    views = [memoryview(part).cast("B") for part in parts]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        remaining = sum(len(view) for view in views)
        while remaining:
            written = os.writev(fd, views)
            remaining -= written
            while written:
                step = min(written, len(views[0]))
                views[0], written = views[0][step:], written - step
                if not views[0]:
                    views.pop(0)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def pread_into(fd: int, array: np.ndarray, offset: int, name: object) -> None:
    """Fill ``array`` with the bytes of ``fd`` at ``offset``; CorruptStoreError if the file ends first."""
    view = memoryview(array).cast("B")
    while view:
        read = os.preadv(fd, [view], offset)
        if read == 0:
            raise CorruptStoreError(f"{name} ends before byte {offset}")
        view, offset = view[read:], offset + read


def nbytes(dtype: np.dtype | str, shape: tuple[int, ...]) -> int:
    return np.dtype(dtype).itemsize * math.prod(shape)


def load_labels(folder: Path, count: int, checksum: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The labels (int64) of a checkpoint of ``count`` images in ``folder``, and its checksums if ``checksum``."""
    labels = load(folder / LABELS, LABEL_DTYPE, (count,)).astype(np.int64)
    return labels, load(folder / CHECKSUMS, CHECKSUM_DTYPE, (count,)) if checksum else None


class LabelsWriter:
    """The labels (and checksums, if ``checksum``) of a checkpoint of ``count`` images being written: gathered
    block by block beside the images, saved after them."""

    def __init__(self, count: int, checksum: bool) -> None:
        self.labels = np.empty(count, LABEL_DTYPE)
        self.sums = np.empty(count, CHECKSUM_DTYPE) if checksum else None

    def add(self, start: int, images: np.ndarray, labels: np.ndarray) -> None:
        """Images start.. and their labels, as written."""
        self.labels[start : start + len(images)] = labels
        if self.sums is not None:
            self.sums[start : start + len(images)] = image_checksums(images, labels)

    def save(self, folder: Path, *, durable: bool) -> None:
        save(folder / LABELS, self.labels, durable=durable)
        if self.sums is not None:
            save(folder / CHECKSUMS, self.sums, durable=durable)
