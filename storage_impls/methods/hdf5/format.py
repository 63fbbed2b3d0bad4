"""The HDF5 store's checkpoint file, ``images.h5``: how it is written, validated and read.

Datasets (all contiguous, unfiltered, so each is one run of raw bytes at a fixed file offset): ``images`` (N, *image
shape) of the store's dtype (native byte order), ``labels`` little-endian int64 (N,), and, when the store keeps
checksums, ``checksums`` little-endian uint64 (N,): xxh3_64 of each image's pixels seeded with its label (as uint64), so
a flipped bit in either is caught. Attributes (fixed-length strings: HDF5 keeps variable-length ones in a global heap
that has no checksum): ``format``, ``format_version``, ``token`` (names this checkpoint; the journal names the token it
extends), ``checksum``. Written with HDF5 1.10's file format (superblock 3, object headers 2), whose
metadata carries checksums, so damaged metadata fails to open instead of reading as other data.

Encoded images (a store with a codec, codecs.py): ``encoded`` (uint8, every image's encoded file back to back,
in id order) and ``offsets`` (little-endian int64, N+1: image i is ``encoded[offsets[i]:offsets[i+1]]``) take
the place of ``images``, and the attributes ``codec``, ``dtype`` and ``image_shape`` say what the bytes decode
to; ``checksums`` are then of each image's encoded bytes. No ``codec`` attribute: raw pixels, as above.

Chunked raw pixels (``hdf5:compression=lzf``, ``hdf5:chunks=16``, hdf5_chunked.py): ``images`` in chunks of whole
images, compressed by HDF5, with the attributes ``compression`` and ``chunks`` recording the options; the other
datasets stay contiguous. No such attribute: ``images`` is contiguous, as above.

Writing: h5py lays out the datasets (metadata only: space allocated, never filled), then the
pixel (or encoded), label and checksum bytes go in with ``pwrite`` at the datasets' offsets, so a full disk
surfaces as a plain ``OSError(ENOSPC)`` and HDF5 never holds a half-written file. Chunked ``images`` are written
by HDF5 itself, through a file object that turns a failed write into one error after HDF5 has closed the file.

Reading: HDF5 opens the file once to validate it and find the offsets (with its default file
locking); then the handle keeps only a read-only descriptor and a memory map of the file, and
reads with ``preadv`` (ranges) or ``numpy.take`` over the map (random batches); encoded images are
sliced out of the map (or a ``preadv`` of a range) and decoded straight into the caller's array. Chunked ``images``
keep the h5py file open and are read through it (hdf5_chunked.py).
"""

from __future__ import annotations

import contextlib
import errno
import math
import mmap
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
import xxhash

from storage_impls.core.advice import DEFAULT_ADVICE, advise, close_map, gather, resolve, windows
from storage_impls.core.base import check_dtype, check_image_shape
from storage_impls.core.codecs import RAW, Codec, get_codec
from storage_impls.core.encoded import decode
from storage_impls.core.errors import NO_SPACE_ERRNOS, CorruptStoreError, is_no_space, no_space_error
from storage_impls.core.fileio import READ_FLAGS
from storage_impls.core.journal import pwrite_all
from storage_impls.core.journaled import ChangedError
from storage_impls.methods.hdf5.chunked import CONTIGUOUS, ChunkedImages, Layout, hdf5_writing

FORMAT = "storage_impls.hdf5"
FORMAT_VERSION = 2
LIBVER = ("v110", "v110")  # metadata checksums; readable by HDF5 >= 1.10
LOCKING = "best-effort"  # HDF5's shared/exclusive file locks, skipped where the file system has none (some NFS)
METADATA_RESERVE = 64 << 10  # free bytes required before h5py writes a file's metadata (see write_checkpoint)
LABEL_DTYPE, CHECKSUM_DTYPE = np.dtype("<i8"), np.dtype("<u8")
UINT64_MASK = (1 << 64) - 1  # a label's checksum seed: its int64 bits as uint64
READ_BLOCK_BYTES = 16 << 20  # encoded bytes read at a time by read_rows
WRITE_VECTOR = 512  # encoded images per pwritev (the system takes at most IOV_MAX, 1024 on Linux)
Identity = tuple[int, int]  # (device, inode)
Block = tuple[
    int, np.ndarray | Sequence[bytes | memoryview], np.ndarray
]  # first id, images (or encoded images), labels


def image_checksums(images: Iterable, labels: np.ndarray) -> np.ndarray:
    """xxh3_64 of each image (rows of (N, ...), or each image's encoded bytes) seeded with its label: one uint64 per
    image."""
    return np.fromiter(map(xxhash.xxh3_64_intdigest, images, labels.view(np.uint64).tolist()), np.uint64, len(labels))


def is_h5_no_space(error: BaseException) -> bool:
    """True for an OSError meaning a full device, including h5py's, which may carry the errno only in its message."""
    return is_no_space(error) or (
        isinstance(error, OSError) and any(os.strerror(code) in str(error) for code in NO_SPACE_ERRNOS)
    )


def file_identity(path: Path) -> Identity | None:
    """(device, inode) of ``path``, None if it does not exist."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def write_checkpoint(
    path: Path,
    dtype: np.dtype,
    shape: tuple[int, ...],
    count: int,
    blocks: Iterable[Block],
    *,
    token: str,
    checksum: bool,
    durable: bool,
    codec: Codec = RAW,
    sizes: np.ndarray | None = None,
    layout: Layout = CONTIGUOUS,
) -> None:
    """Write a complete checkpoint of ``count`` images of ``dtype`` and ``shape`` at ``path`` (a temporary name);
    ``blocks`` yields (first id, images, labels) covering ids 0..count-1. With a ``codec`` other than raw the
    images of a block are their encoded bytes (a sequence) and ``sizes`` gives every image's byte count in advance
    (the layout is fixed before the bytes go in); raw pixels are laid out as ``layout`` says. A full disk raises
    NoSpaceError."""
    attributes = {
        "format": np.bytes_(FORMAT),
        "token": np.bytes_(token),
        "format_version": FORMAT_VERSION,
        "checksum": checksum,
    }
    if codec is RAW:
        datasets = {"images": ((count, *shape), dtype)}
        attributes.update(layout.attributes())
    else:
        offsets = np.zeros(count + 1, LABEL_DTYPE)
        np.cumsum(sizes, out=offsets[1:])
        attributes.update(
            codec=np.bytes_(codec.spec), dtype=np.bytes_(dtype.str), image_shape=np.array(shape, np.int64)
        )
        datasets = {"encoded": ((int(offsets[-1]),), np.dtype(np.uint8)), "offsets": ((count + 1,), LABEL_DTYPE)}
    datasets["labels"] = ((count,), LABEL_DTYPE)
    if checksum:
        datasets["checksums"] = ((count,), CHECKSUM_DTYPE)
    chunked = layout.dataset(count, shape, dtype) if layout.chunked else None
    with _writing(path, attributes, datasets, durable, chunked) as (fd, at, write_images):
        if codec is not RAW:
            pwrite_all(fd, offsets, at["offsets"])
        for start, images, labels in blocks:
            if codec is RAW:
                write_images(start, images)
            else:
                if sum(map(len, images)) != offsets[start + len(images)] - offsets[start]:
                    raise ValueError(
                        f"images {start}..{start + len(images) - 1} are not the sizes the layout was made for"
                    )
                for first in range(0, len(images), WRITE_VECTOR):
                    pwrite_all(
                        fd, list(images[first : first + WRITE_VECTOR]), at["encoded"] + int(offsets[start + first])
                    )
            pwrite_all(fd, np.ascontiguousarray(labels, LABEL_DTYPE), at["labels"] + start * LABEL_DTYPE.itemsize)
            if checksum:
                pwrite_all(fd, image_checksums(images, labels), at["checksums"] + start * CHECKSUM_DTYPE.itemsize)


@contextlib.contextmanager
def _writing(
    path: Path,
    attributes: dict,
    datasets: dict[str, tuple[tuple[int, ...], np.dtype]],
    durable: bool,
    chunked: dict | None,
) -> Iterator[tuple[int, dict[str, int], Callable[[int, np.ndarray], None]]]:
    """The new file laid out; yields a descriptor writing into it, each contiguous dataset's offset, and a function
    writing raw images start..start+len-1: a ``pwrite`` at their offset, or (``chunked``: ``images``' create_dataset
    keywords) HDF5's own write of its chunks, the file then open in h5py until the end."""
    if chunked is None:
        at = _lay_out(path, attributes, datasets)
        with _filling(path, durable) as fd:
            yield fd, at, lambda start, images: pwrite_all(fd, images, at["images"] + start * images[0].nbytes)
        return
    with hdf5_writing(path, LIBVER, durable) as (file, sink):
        at = _create(file, attributes, {name: spec for name, spec in datasets.items() if name != "images"})
        images = file.create_dataset("images", **chunked)

        def write_images(start: int, block: np.ndarray) -> None:
            images.write_direct(block, dest_sel=np.s_[start : start + len(block)])
            sink.check()  # a full disk: stop now

        yield sink.fd, at, write_images


def _lay_out(path: Path, attributes: dict, datasets: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, int]:
    """Create the file with ``attributes`` and contiguous ``datasets`` (name -> shape, dtype), space allocated but never
    filled; return each dataset's file offset."""
    free = os.statvfs(path.parent)
    if (free.f_bfree if os.geteuid() == 0 else free.f_bavail) * free.f_frsize < METADATA_RESERVE:
        # HDF5 keeps a file it failed to flush open until exit: never let its own writes meet a full disk
        raise no_space_error(path.parent, OSError(errno.ENOSPC, "less than 64 KiB free for the file's metadata"))
    try:
        with h5py.File(path, "w", libver=LIBVER, locking=LOCKING) as file:
            return _create(file, attributes, datasets)
    except OSError as error:
        raise (no_space_error(path.parent, error) if is_h5_no_space(error) else error) from error


def _create(file: h5py.File, attributes: dict, datasets: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, int]:
    """Set ``attributes`` and create contiguous ``datasets``, allocated but never filled; return their file offsets."""
    layout = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    layout.set_layout(h5py.h5d.CONTIGUOUS)
    layout.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    layout.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    for name, value in attributes.items():
        file.attrs[name] = value
    return {
        name: file.create_dataset(name, shape=dataset_shape, dtype=dtype, dcpl=layout).id.get_offset()
        for name, (dataset_shape, dtype) in datasets.items()
    }


@contextlib.contextmanager
def _filling(path: Path, durable: bool) -> Iterator[int]:
    """A descriptor writing into the laid-out file; fsynced at the end when durable, ENOSPC as NoSpaceError."""
    fd = os.open(path, os.O_WRONLY)
    try:
        yield fd
        if durable:
            os.fsync(fd)
    except OSError as error:
        raise (no_space_error(path.parent, error) if is_no_space(error) else error) from error
    finally:
        os.close(fd)


class Checkpoint:
    """One checkpoint file, open read-only: a descriptor and a map of the file (a snapshot that a later
    rename over the path does not change), the labels, checksums and encoded images' offsets in memory;
    chunked ``images``: the h5py file too."""

    def __init__(self, path: Path, name: Path | None = None, advice: str = DEFAULT_ADVICE) -> None:
        """Open ``path``; ``name`` is what error messages call it (the final name of a file still being committed);
        ``advice`` is how the map is read (core/advice.py).
        FileNotFoundError if it vanished; CorruptStoreError if it is not a valid checkpoint; ChangedError if
        ``path`` was replaced while it was being opened (open it again)."""
        self.name = name or path
        try:
            file = h5py.File(path, "r", locking=LOCKING)
        except (FileNotFoundError, PermissionError, BlockingIOError):
            raise
        except OSError as error:
            raise CorruptStoreError(f"{self.name} is not a readable HDF5 file: {error}") from None
        self._fd, self.chunked = None, None
        try:
            self._fd = os.open(path, READ_FLAGS)
            info = os.fstat(self._fd)
            self.identity: Identity = (info.st_dev, info.st_ino)
            seen = os.fstat(file.id.get_vfd_handle())
            if (seen.st_dev, seen.st_ino) != self.identity:
                raise ChangedError(f"{self.name} was replaced while it was being opened")
            self._read_metadata(file, info.st_size)
            self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        except BaseException:
            file.close()
            if self._fd is not None:
                os.close(self._fd)
            raise
        self._file = file if self.chunked else None  # chunked images are read through h5py
        if self._file is None:
            file.close()
        advice = resolve(advice, len(self._map))
        advise(self._map, advice)
        self._prefetch = advice == "willneed"
        self.pixels = self.encoded = None
        if self.codec is not RAW:
            self.encoded = np.frombuffer(self._map, np.uint8, int(self.offsets[-1]), self._offset)
        elif not self.chunked:
            self.pixels = np.frombuffer(
                self._map, self.dtype, self.count * math.prod(self.shape), self._offset
            ).reshape(self.count, *self.shape)

    def _read_metadata(self, file: h5py.File, size: int) -> None:
        """Validate the layout and read the attributes, labels and checksums; CorruptStoreError naming what is wrong."""
        self.offsets: np.ndarray | None = None  # an encoded checkpoint's: image i is encoded[offsets[i]:offsets[i+1]]
        try:
            attrs = file.attrs
            if attrs.get("format") != FORMAT.encode() or attrs.get("format_version") != FORMAT_VERSION:
                raise CorruptStoreError(
                    f"{self.name} was not written by {FORMAT} version {FORMAT_VERSION} "
                    f"(format {attrs.get('format')!r}, version {attrs.get('format_version')!r})"
                )
            self.token, self.checksum = bytes(attrs["token"]).decode("ascii"), bool(attrs["checksum"])
            self.codec = get_codec(bytes(attrs["codec"]).decode("ascii")) if "codec" in attrs else RAW
            self.layout = Layout.recorded(attrs)
            if self.codec is RAW:
                images = self._dataset(file, "images")
                self.count, self.shape, found = len(images), tuple(images.shape[1:]), images.dtype
            else:
                self.shape, found = (
                    tuple(int(side) for side in attrs["image_shape"]),
                    np.dtype(bytes(attrs["dtype"]).decode("ascii")),
                )
                self.count = len(self._dataset(file, "offsets")) - 1
            check_image_shape(self.shape, f"{self.name}: each image")
            self.dtype = check_dtype(found, f"{self.name}: images")
            if (
                found != self.dtype
                or self.count < 1
                or ("codec" in attrs) != (self.codec is not RAW)
                or self.layout.chunked
                and self.codec is not RAW
            ):
                raise CorruptStoreError(
                    f"{self.name}: images are {found} of shape {(self.count, *self.shape)} in "
                    f"{self.codec.spec}, expected a numeric dtype of this machine's byte order (N, ...)"
                )
            self.row = math.prod(self.shape) * self.dtype.itemsize  # bytes per image
            if self.layout.chunked:
                self.layout.check(images, self.name)
                self.chunked = ChunkedImages(images, self.name)
            elif self.codec is RAW:
                self._offset = _raw_offset(images, self.count * self.row, size, self.name)
            else:
                self._read_encoded_layout(file, size)
            self.labels = self._read_array(file, "labels", LABEL_DTYPE, size, self.count).astype(np.int64)
            self.checksums = (
                self._read_array(file, "checksums", CHECKSUM_DTYPE, size, self.count) if self.checksum else None
            )
        except CorruptStoreError:
            raise
        except KeyError as error:
            raise CorruptStoreError(f"{self.name} lacks a dataset or attribute of {FORMAT} ({error})") from None
        except Exception as error:  # h5py reports damaged metadata with many exception types
            raise CorruptStoreError(
                f"{self.name} has damaged HDF5 metadata ({type(error).__name__}: {error})"
            ) from None

    def _read_encoded_layout(self, file: h5py.File, size: int) -> None:
        """``offsets`` (count+1, from 0, never decreasing, to the end of ``encoded``) and where ``encoded`` lies."""
        self.offsets = self._read_array(file, "offsets", LABEL_DTYPE, size, self.count + 1).astype(np.int64)
        encoded = self._dataset(file, "encoded")
        if (
            encoded.dtype != np.uint8
            or encoded.ndim != 1
            or self.offsets[0] != 0
            or (np.diff(self.offsets) < 0).any()
            or self.offsets[-1] != len(encoded)
        ):
            raise CorruptStoreError(
                f"{self.name}: offsets {self.offsets[0]}..{self.offsets[-1]} (ascending?) do not "
                f"divide encoded, {encoded.dtype} {encoded.shape}, into {self.count} images"
            )
        self._offset = _raw_offset(encoded, len(encoded), size, self.name)

    def _dataset(self, file: h5py.File, name: str) -> h5py.Dataset:
        """The dataset ``name`` of this file's root, stored in this file: an external or soft link in its place, a
        virtual dataset, or one whose data lies in external files would read outside the store (CorruptStoreError)."""
        link = file.get(name, getlink=True)
        if link is None:
            raise KeyError(name)
        if not isinstance(link, h5py.HardLink):
            raise CorruptStoreError(f"{self.name}: {name} is an {type(link).__name__}, not a dataset of this file")
        dataset = file[name]
        if not isinstance(dataset, h5py.Dataset) or dataset.is_virtual or dataset.external:
            raise CorruptStoreError(
                f"{self.name}: {name} is not a dataset whose data lies in this file "
                "(a group, a virtual dataset or external storage)"
            )
        return dataset

    def _read_array(self, file: h5py.File, name: str, dtype: np.dtype, size: int, length: int) -> np.ndarray:
        dataset = self._dataset(file, name)
        if dataset.dtype != dtype or dataset.shape != (length,):
            raise CorruptStoreError(
                f"{self.name}: {name} is {dataset.dtype} {dataset.shape}, expected {dtype} ({length},)"
            )
        array = np.empty(length, dtype)
        self._pread_into(array, _raw_offset(dataset, array.nbytes, size, self.name))
        return array

    def _pread_into(self, array: np.ndarray, offset: int) -> None:
        view = memoryview(array).cast("B")
        while view:
            read = os.preadv(self._fd, [view], offset)
            if read == 0:
                raise CorruptStoreError(f"{self.name} ends before byte {offset}")
            view, offset = view[read:], offset + read

    # -- reads: every image checked against its checksum when the store keeps them ------------------
    def read_rows(self, start: int, out: np.ndarray, labels: np.ndarray) -> None:
        """Fill ``out``/``labels`` with images start..start+len(out)-1, in one read (encoded: a read per 16 MiB)."""
        stop = start + len(out)
        labels[:] = self.labels[start:stop]
        if self.codec is RAW:
            if self.chunked:
                self.chunked.read(start, out)
            else:
                self._pread_into(out, self._offset + start * self.row)
            self._verify(np.arange(start, stop), out, labels)
            return
        offsets, first = self.offsets, start
        while first < stop:  # whole images of at most READ_BLOCK_BYTES (at least one) at a time
            last = min(
                stop, max(first + 1, int(np.searchsorted(offsets, offsets[first] + READ_BLOCK_BYTES, "right")) - 1)
            )
            base = int(offsets[first])
            block = np.empty(int(offsets[last]) - base, np.uint8)
            self._pread_into(block, self._offset + base)
            payloads = [
                block[begin - base : end - base].data
                for begin, end in zip(offsets[first:last].tolist(), offsets[first + 1 : last + 1].tolist())
            ]
            self._verify(np.arange(first, last), payloads, labels[first - start : last - start])
            self._decode(range(first, last), payloads, out[first - start : last - start])
            first = last

    def image(self, image_id: int) -> tuple[np.ndarray, int]:
        """One image (a copy out of the map, decoded from it, or read from its chunk) and its label."""
        if self.codec is not RAW or self.chunked:
            image, label = np.empty((1, *self.shape), self.dtype), np.empty(1, np.int64)
            self.take(np.array([image_id]), image, label)
            return image[0], int(label[0])
        image, label = self.pixels[image_id].copy(), int(self.labels[image_id])
        if (
            self.checksums is not None
            and xxhash.xxh3_64_intdigest(image, label & UINT64_MASK) != self.checksums[image_id]
        ):
            raise CorruptStoreError(f"{self.name}: image {image_id} fails its checksum (bit rot or a damaged copy)")
        return image, label

    def take(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        """Fill ``out[i]``/``labels[i]`` with image ``ids[i]`` (valid ids, any order), gathered from the map (or
        chunks)."""
        if self._prefetch and self.codec is not RAW:  # willneed: decoded window by window, each prefetched ahead
            for part in windows(self._fd, self._offset + self.offsets[ids], self._offset + self.offsets[ids + 1]):
                payloads, labels[part] = self.payloads(ids[part])
                self._decode(ids[part].tolist(), payloads, out[part])
            return
        if self.codec is not RAW:
            payloads, labels[:] = self.payloads(ids)
            self._decode(ids.tolist(), payloads, out)
            return
        if self.chunked:
            self.chunked.take(ids, out)
        else:
            gather(self.pixels, ids, out, self._fd, self._offset, self.row, self._prefetch)
        np.take(self.labels, ids, out=labels, mode="clip")
        self._verify(ids, out, labels)

    def payloads(self, ids: np.ndarray) -> tuple[list[memoryview], np.ndarray]:
        """The encoded bytes (views of the map, checked against their checksums) and labels of images ``ids``."""
        starts, stops = self.offsets[ids].tolist(), self.offsets[ids + 1].tolist()
        payloads, labels = [self.encoded[begin:end].data for begin, end in zip(starts, stops)], self.labels[ids]
        self._verify(ids, payloads, labels)
        return payloads, labels

    def _decode(self, ids: Iterable[int], payloads: list[memoryview], out: np.ndarray) -> None:
        for image_id, payload, target in zip(ids, payloads, out):
            decode(self.codec, payload, target, f"{self.name}: image {image_id}")

    def _verify(self, ids: np.ndarray, images: np.ndarray | list[memoryview], labels: np.ndarray) -> None:
        if self.checksums is None:
            return
        bad = np.flatnonzero(image_checksums(images, labels) != self.checksums[ids])
        if len(bad):
            raise CorruptStoreError(f"{self.name}: image {ids[bad[0]]} fails its checksum (bit rot or a damaged copy)")

    def close(self) -> None:
        self.pixels = self.encoded = self.chunked = None
        if self._file is not None:
            self._file.close()
        close_map(self._map, self._fd)


def _raw_offset(dataset: h5py.Dataset, nbytes: int, size: int, name: Path) -> int:
    """File offset of a contiguous, unfiltered dataset's bytes, which must lie inside the file."""
    plist = dataset.id.get_create_plist()
    offset = dataset.id.get_offset()
    if plist.get_layout() != h5py.h5d.CONTIGUOUS or plist.get_nfilters() or offset is None or offset + nbytes > size:
        raise CorruptStoreError(
            f"{name}: dataset {dataset.name} is not {nbytes} contiguous bytes inside the file "
            f"(offset {offset}, file size {size})"
        )
    return offset
