"""A chunked, optionally compressed ``images`` dataset in the HDF5 checkpoint (``hdf5:compression=gzip|lzf|none``,
``hdf5:chunks=N``): what the options mean, how HDF5 writes the chunks and how they are read.

Layout: ``images`` (N, *image shape) in chunks of ``chunks`` whole images (at most the images held and HDF5's 4 GiB
per chunk), filtered by h5py's ``compression="gzip"`` (deflate at h5py's default level, 4) or ``"lzf"``, as
``h5py.File.create_dataset(..., chunks=(n, *shape), compression=...)`` makes it, so plain h5py reads it. Compression
without ``chunks`` takes as many whole images as fit in ``DEFAULT_CHUNK_BYTES`` (at least one); ``chunks`` without
compression makes uncompressed chunks. The checkpoint's attributes record the options that were given:
``compression`` (a fixed-length string, absent for ``none``) and ``chunks`` (int64, absent unless given); neither:
the contiguous layout (hdf5_format.py). Raw pixels only: encoded images (a codec) are already compressed.

Writing: HDF5 compresses and writes the chunks itself, so it writes through ``FailSafeFile`` (h5py's file-object
driver): the first write that fails (a full disk) is kept, and every later write is taken without writing, so
HDF5 finishes and closes the file cleanly (it never holds a file whose flush failed) and the caller gets one error.

Reading: through the open h5py dataset, one H5Dread (``DatasetID.read``, what ``Dataset.read_direct`` calls, with a
hyperslab selected once) straight into the caller's array per range; a random batch reads each chunk it touches
once (the span of its sorted unique ids), then scatters the rows into place. HDF5 decompresses whole chunks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from storage_impls.core.errors import CorruptStoreError, is_no_space, no_space_error
from storage_impls.core.options import choice, integer

COMPRESSIONS = ("none", "gzip", "lzf")
MAX_CHUNK_BYTES = (1 << 32) - 1  # HDF5's limit on one chunk
DEFAULT_CHUNK_BYTES = 64 << 10  # compression without chunks: whole images up to this many bytes per chunk
OPTIONS = {"compression": choice(*COMPRESSIONS), "chunks": integer(1, MAX_CHUNK_BYTES)}


class Layout(NamedTuple):
    """How a checkpoint lays out raw pixels: the options as given (None: not given)."""

    compression: str = "none"
    chunks: int | None = None  # images per chunk

    @property
    def chunked(self) -> bool:
        return self.compression != "none" or self.chunks is not None

    @property
    def spec(self) -> str:
        """The options as a variant spells them, e.g. ``compression=lzf,chunks=16``."""
        return ",".join(f"{key}={value}" for key, value in self._asdict().items() if value not in (None, "none"))

    @classmethod
    def recorded(cls, attrs: h5py.AttributeManager) -> Layout:
        """The layout a checkpoint's attributes record; ValueError if they are not what this module writes."""
        compression = bytes(attrs["compression"]).decode("ascii") if "compression" in attrs else "none"
        chunks = int(attrs["chunks"]) if "chunks" in attrs else None
        if ("compression" in attrs and compression not in COMPRESSIONS[1:]) or (chunks is not None and chunks < 1):
            raise ValueError(f"compression {compression!r} and chunks {chunks!r} are not a layout of this format")
        return cls(compression, chunks)

    def attributes(self) -> dict[str, object]:
        """What the checkpoint records (nothing for the contiguous layout, so its files stay as they were)."""
        recorded: dict[str, object] = {} if self.compression == "none" else {"compression": np.bytes_(self.compression)}
        if self.chunks is not None:
            recorded["chunks"] = np.int64(self.chunks)
        return recorded

    def chunk_images(self, count: int, row: int) -> int:
        """Images per chunk in a checkpoint of ``count`` images of ``row`` bytes each."""
        asked = self.chunks or DEFAULT_CHUNK_BYTES // row
        return max(1, min(asked, count, MAX_CHUNK_BYTES // row))

    def dataset(self, count: int, shape: tuple[int, ...], dtype: np.dtype) -> dict[str, object]:
        """``create_dataset`` keywords of the ``images`` dataset."""
        per_chunk = self.chunk_images(count, int(np.prod(shape)) * dtype.itemsize)
        return {
            "shape": (count, *shape),
            "dtype": dtype,
            "chunks": (per_chunk, *shape),
            "compression": None if self.compression == "none" else self.compression,
        }

    def check(self, dataset: h5py.Dataset, name: Path) -> None:
        """CorruptStoreError unless ``dataset`` is chunked and filtered as this layout makes it (chunks not recorded:
        any number of whole images per chunk, so that a later default need not match)."""
        count, shape = dataset.shape[0], dataset.shape[1:]
        expected = self.dataset(count, shape, dataset.dtype)
        plist = dataset.id.get_create_plist()
        per_chunk = (dataset.chunks or (0,))[0] if self.chunks is None else expected["chunks"][0]
        if (
            plist.get_layout() != h5py.h5d.CHUNKED
            or dataset.chunks != (per_chunk, *shape)
            or not 1 <= per_chunk <= count
            or dataset.compression != expected["compression"]
            or plist.get_nfilters() != (self.compression != "none")
        ):
            raise CorruptStoreError(
                f"{name}: images are in chunks {dataset.chunks} filtered by {dataset.compression}, "
                f"but its attributes record {self.spec}"
            )


CONTIGUOUS = Layout()


class ChunkedImages:
    """Reads of a chunked ``images`` dataset (an open h5py dataset) into the caller's arrays."""

    def __init__(self, dataset: h5py.Dataset, name: Path) -> None:
        self._id, self._space, self.name = dataset.id, dataset.id.get_space(), name
        self.per_chunk, self.shape = dataset.chunks[0], dataset.shape[1:]

    def read(self, start: int, out: np.ndarray) -> None:
        """Images start..start+len(out)-1 into ``out`` (C-contiguous): one H5Dread."""
        self._space.select_hyperslab((start,) + (0,) * len(self.shape), out.shape)
        try:
            self._id.read(h5py.h5s.create_simple(out.shape), self._space, out)
        except Exception as error:  # a damaged chunk: HDF5 reports a failed filter, a bad address ...
            raise CorruptStoreError(
                f"{self.name}: images {start}..{start + len(out) - 1} cannot be read ({type(error).__name__}: {error})"
            ) from None

    def take(self, ids: np.ndarray, out: np.ndarray) -> None:
        """Images ``ids`` (valid, any order, repeats allowed) into ``out``: each chunk touched read once."""
        unique, inverse = np.unique(ids, return_inverse=True)
        in_order = len(unique) == len(ids) and bool((ids[1:] > ids[:-1]).all())
        rows = out if in_order else np.empty((len(unique), *self.shape), out.dtype)
        if unique[-1] - unique[0] + 1 == len(unique):  # one run of ids
            self.read(int(unique[0]), rows)
        else:
            ends = np.append(np.flatnonzero(np.diff(unique // self.per_chunk)) + 1, len(unique))  # a group per chunk
            starts = np.insert(ends[:-1], 0, 0)
            firsts, spans = unique[starts], unique[ends - 1] - unique[starts] + 1
            scratch = np.empty((int(spans.max()), *self.shape), out.dtype) if (spans != ends - starts).any() else None
            for start, end, first, span in zip(starts.tolist(), ends.tolist(), firsts.tolist(), spans.tolist()):
                if span == end - start:  # consecutive ids: straight into place
                    self.read(first, rows[start:end])
                else:
                    self.read(first, scratch[:span])
                    np.take(scratch[:span], unique[start:end] - first, axis=0, out=rows[start:end], mode="clip")
        if rows is not out:
            np.take(rows, inverse, axis=0, out=out, mode="clip")


class FailSafeFile:
    """The file HDF5 writes a chunked checkpoint through (h5py's file-object driver), at ``path``, created. The first
    failed write is kept in ``error``; every later one is taken without writing, so that HDF5 can always finish."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        self.error: OSError | None = None
        self._position = self._end = 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:  # HDF5's writes, and those of the descriptor's owner
            self._end = max(self._end, os.fstat(self.fd).st_size)
        self._position = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._end}[whence] + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: memoryview) -> int:
        read = os.preadv(self.fd, [buffer], self._position)
        self._position += read
        return read

    def read(self, size: int) -> bytes:
        data = os.pread(self.fd, size, self._position)
        self._position += len(data)
        return data

    def write(self, data: memoryview) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        while view and self.error is None:
            try:
                written = os.pwrite(self.fd, view, self._position)
            except OSError as error:
                self.error = error
                break
            view, self._position = view[written:], self._position + written
        self._position += len(view)  # what was not written (after a failure)
        self._end = max(self._end, self._position)
        return size

    def truncate(self, size: int | None = None) -> int:
        self._end = self._position if size is None else size
        if self.error is None:
            os.ftruncate(self.fd, self._end)
        return self._end

    def flush(self) -> None:
        pass

    def check(self) -> None:
        """Raise the first failed write's error, if one failed."""
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def hdf5_writing(path: Path, libver: tuple[str, str], durable: bool) -> Iterator[tuple[h5py.File, FailSafeFile]]:
    """A new HDF5 file at ``path`` that HDF5 writes through a FailSafeFile (whose descriptor may write raw bytes
    HDF5 never touches too). Closed (and fsynced when durable) on leaving; a failed write raises then, a full disk
    as NoSpaceError."""
    sink = FailSafeFile(path)
    try:
        with h5py.File(sink, "w", libver=libver) as file:
            yield file, sink
        sink.check()
        if durable:
            os.fsync(sink.fd)
    except OSError as error:
        raise (no_space_error(path.parent, error) if is_no_space(error) else error) from error
    finally:
        os.close(sink.fd)
