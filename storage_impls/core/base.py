"""The interface every storage method implements, and the checks they all share.

A store is bound to one directory and holds a dense sequence of images with ids 0..N-1, all of one dtype and shape
(fixed by the first write), each with an int64 label. An image is any 2- or 3-D array of a numeric dtype
(``SUPPORTED_DTYPES``): (H, W), (H, W, C) with any band count, or channel-first (C, H, W), stored as given; a method may
hold less (PNG: ``layout_limit``). Public methods validate their input here, once, and then call the backend's
primitives (the ``_``-prefixed abstract methods), which may assume valid input. Every write runs under the store's
writer lock (locking.py), after the backend has brought its view of the store up to date (``_refresh``).
"""

from __future__ import annotations

import abc
import contextlib
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from storage_impls.core.errors import ImageNotFoundError, MissingStoreError
from storage_impls.core.fileio import check_tree, open_regular
from storage_impls.core.locking import LOCK_FILE, writer_lock

MAX_SIDE = 65535  # image sides are recorded as uint16 by some backends
#: values (pixels x bands) of one image at most, 2**30 (32768 x 32768, or 18918 x 18918 x 3): a store declaring more
#: is refused before anything is allocated, so that a small crafted store cannot make a reader allocate gigabytes
MAX_IMAGE_VALUES = 1 << 30
#: dtypes a store holds (native byte order; input of the other byte order is converted, values kept)
SUPPORTED_DTYPES = tuple(
    np.dtype(name)
    for name in (
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "int8",
        "int16",
        "int32",
        "int64",
        "float16",
        "float32",
        "float64",
    )
)
INT64 = np.iinfo(np.int64)
DEFAULT_LOCK_TIMEOUT = 60.0  # seconds a writer waits for another writer before StoreLockedError


class DiskUsage(NamedTuple):
    """Bytes a store takes: ``allocated`` as ``du`` counts (blocks), ``apparent`` as file sizes add up."""

    allocated: int
    apparent: int


Mode = Literal["r", "a"]
BatchReader = Callable[[np.ndarray, np.ndarray], None]  # (ids, out): fills out[i] with image ids[i]


def check_image(image: object) -> np.ndarray:
    """Return ``image`` as a C-contiguous array of a supported dtype (native byte order), 2- or 3-D, or raise."""
    array = _check_array(image, "image")
    check_image_shape(array.shape, "image")
    return array


def check_images(images: object) -> np.ndarray:
    """Return a batch (N, ...) of 2- or 3-D images as a C-contiguous array of a supported dtype, or raise."""
    array = _check_array(images, "images")
    if array.ndim not in (3, 4):
        raise ValueError(f"images must be a batch (N, H, W) or (N, H, W, C) (or (N, C, H, W)), got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("images is an empty batch: store at least one image")
    check_image_shape(array.shape[1:], "each image")
    return array


def check_image_shape(shape: tuple[int, ...], what: str) -> None:
    """ValueError unless ``shape`` has 2 or 3 dimensions, each 1..MAX_SIDE, and MAX_IMAGE_VALUES values at most."""
    if len(shape) not in (2, 3):
        raise ValueError(f"{what} must have 2 or 3 dimensions ((H, W), (H, W, C) or (C, H, W)), got shape {shape}")
    if not all(1 <= side <= MAX_SIDE for side in shape):
        raise ValueError(f"{what} must have every dimension 1..{MAX_SIDE}, got shape {shape}")
    if math.prod(shape) > MAX_IMAGE_VALUES:
        raise ValueError(f"{what} must hold at most {MAX_IMAGE_VALUES} values (2**30), got shape {shape}")


def check_dtype(dtype: object, what: str) -> np.dtype:
    """The native-byte-order dtype of ``dtype`` if a store holds it, else TypeError listing what it holds."""
    found = np.dtype(dtype)
    native = found.newbyteorder("=")
    if found.kind not in "uif" or native not in SUPPORTED_DTYPES:
        allowed = ", ".join(str(kind) for kind in SUPPORTED_DTYPES)
        raise TypeError(f"{what} must have a numeric dtype ({allowed}), got {found}")
    return native


def _check_array(value: object, name: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(value).__name__}")
    return np.ascontiguousarray(value, dtype=check_dtype(value.dtype, name))


def check_label(label: object) -> int:
    """Return ``label`` as a Python int if it is an integer that fits int64, else raise."""
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise TypeError(f"label must be an integer, got {type(label).__name__} {label!r}")
    if not INT64.min <= int(label) <= INT64.max:
        raise ValueError(f"label {label} does not fit in int64")
    return int(label)


def check_labels(labels: object, count: int) -> np.ndarray:
    """Return ``labels`` as an int64 array of length ``count``, or raise."""
    array = np.asarray(labels)
    if array.dtype.kind not in "iu" or array.dtype == np.bool_:
        raise TypeError(f"labels must be integers, got dtype {array.dtype}")
    if array.ndim != 1 or len(array) != count:
        raise ValueError(f"labels must be a 1-D sequence of {count} integers (one per image), got shape {array.shape}")
    if array.dtype.kind == "u" and count and array.max() > INT64.max:  # any unsigned width, any byte order
        raise ValueError(f"label {array.max()} does not fit in int64")
    return array.astype(np.int64, copy=False)


def check_id(image_id: object) -> int:
    """Return ``image_id`` as a Python int if it is a non-negative integer, else raise."""
    if isinstance(image_id, (bool, np.bool_)) or not isinstance(image_id, (int, np.integer)):
        raise TypeError(f"image_id must be a non-negative integer, got {type(image_id).__name__} {image_id!r}")
    if image_id < 0:
        raise ValueError(f"image_id must be non-negative, got {image_id}")
    return int(image_id)


def check_ids(ids: object, count: int, directory: Path) -> np.ndarray:
    """Return ``ids`` as a 1-D int64 array of stored ids (any order, repeats allowed), or raise naming the first bad
    one."""
    array = np.asarray(ids)
    if array.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got dtype {array.dtype}")
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"ids must be a non-empty 1-D sequence of image ids, got shape {array.shape}")
    bad = np.flatnonzero((array < 0) | (array >= count))
    if len(bad):
        raise ValueError(f"ids[{bad[0]}] = {array[bad[0]]} is not a stored id: {directory} holds ids 0..{count - 1}")
    return array.astype(np.int64, copy=False)


def check_out(out: object, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Return ``out``, or a new array, for a read of ``shape``; ValueError unless it is writable, C-contiguous,
    of that shape and dtype."""
    if out is None:
        return np.empty(shape, dtype)
    if not (
        isinstance(out, np.ndarray)
        and out.dtype == dtype
        and out.shape == shape
        and out.flags.c_contiguous
        and out.flags.writeable
    ):
        raise ValueError(f"out must be a writable C-contiguous {dtype} array of shape {shape}")
    return out


def directory_usage(directory: Path) -> DiskUsage:
    """Allocated and apparent bytes of every file below ``directory`` (as ``du`` and ``du -b`` count)."""
    allocated = apparent = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            info = os.lstat(os.path.join(root, name))
            allocated += info.st_blocks * 512
            apparent += info.st_size
    return DiskUsage(allocated, apparent)


class ImageStore(abc.ABC):
    """One storage method bound to one directory.

    ``mode="a"`` (default) reads and writes, creating the directory on first use; ``mode="r"``
    only reads and requires the store to exist. ``durable=True`` makes writes fsync files and
    directories before returning, for every method alike; the default never fsyncs.

    ``store_many`` replaces the whole contents with ids 0..N-1 and ``store_single`` replaces an
    existing id or appends id N; both are all-or-nothing: a write that failed (a full disk
    included) or was killed leaves the store reading back as it was before. One writer at a
    time: a write waits up to ``lock_timeout`` seconds for another writer (any process) to
    finish, then raises StoreLockedError. ``checksum=True`` makes ``store_many`` record a
    checksum per image where the method supports it; later handles verify what the store
    records, whatever they pass (None keeps the store's setting).

    A store is a handle on a snapshot: it sees the store as it was when opened, plus its own
    writes (a writer catches up with other writers' changes before it writes). Close it (or use
    ``with``) to release files, and open it anew in each process (handles must not cross a fork).
    The directory is made absolute once, at open, so a later ``os.chdir`` cannot redirect it. A store
    directory is untrusted input: every open first checks its whole tree (fileio.check_tree: no symbolic
    link, FIFO or device anywhere in it), docs/security.md.
    """

    method: str
    #: None, or why random reads (``read_batch`` of shuffled ids) are too slow for the benchmark suite's default run
    slow_random_reads: str | None = None
    #: None, or the constructor option that sizes a reading handle's own cache of the store's data (RocksDB's block
    #: cache), which shuffled-read benchmarks set below the store's size so that an epoch is not served from it
    read_cache_option: str | None = None
    #: False for a method whose library breaks in a process forked after it was used (lance): its handles
    #: must be opened in spawned (or forkserver) processes, e.g. ``DataLoader(multiprocessing_context="spawn")``
    fork_safe: bool = True
    # Traits the benchmark suite's floors read (benchmarks/floors.py), so that a method needs no entry there:
    #: True for one file per image: its floors write and read one file per image
    file_per_image: bool = False
    #: True for a method whose reads may copy out of a memory map it keeps of its files: its read floor is such a copy
    reads_through_map: bool = False
    #: True for a method whose ``store_single`` into a filled store appends to a file it keeps open (a journal):
    #: its floor is an append to an open file, not a new file
    appends_single_writes: bool = False
    #: how many times this handle has run the method's periodic upkeep (a journal fold, a compaction) in a single write
    upkeeps: int = 0

    @classmethod
    def library_versions(cls) -> dict[str, str]:
        """Versions of the packages (and C libraries) this method runs on, for a benchmark run's record."""
        return {}

    @classmethod
    def library_reader(cls, directory: Path, image_shape: tuple[int, ...]) -> tuple[str, BatchReader] | None:
        """What an expert would write with the method's library alone to read a batch of this store's raw uint8
        images (``read(ids, out)``), and its name; None where the suite's memmap gather is the reference."""
        return None

    @classmethod
    def remote_reader(cls) -> type[ImageStore] | None:
        """The read-only class that reads this method's stores from an object store (its constructor takes the URL
        and ``storage_options``), None where the method reads local files only (registry trait ``reads-remote``)."""
        return None

    def __init__(
        self,
        directory: str | os.PathLike,
        mode: Mode = "a",
        *,
        durable: bool = False,
        checksum: bool | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' (read) or 'a' (read/write), got {mode!r}")
        self.directory = Path(os.path.abspath(directory))
        self.mode = mode
        self.durable = durable
        self.checksum = checksum
        self.lock_timeout = lock_timeout
        if mode == "r" and not self.directory.is_dir():
            raise MissingStoreError(f"no {self.method} store at {self.directory}: directory does not exist")
        if mode == "a":
            self.directory.mkdir(parents=True, exist_ok=True)
        check_tree(self.directory)  # a store is untrusted input: no link, FIFO or device anywhere in it (fileio.py)
        if mode == "a":  # the lock file now, so that a refused write later creates nothing
            os.close(open_regular(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT))
        self._closed = False
        self._open()

    # -- primitives each backend implements -------------------------------------------------
    @abc.abstractmethod
    def _open(self) -> None:
        """Open and validate an existing store in ``self.directory`` (or note that it is empty)."""

    @abc.abstractmethod
    def _refresh(self) -> None:
        """Bring this handle's view up to date with the store on disk (called under the writer lock,
        before every write), so that a write never acts on a store the handle did not read."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of images stored (ids 0..len-1)."""

    @property
    @abc.abstractmethod
    def image_shape(self) -> tuple[int, ...] | None:
        """Shape of every stored image, None while the store is empty."""

    @property
    @abc.abstractmethod
    def image_dtype(self) -> np.dtype | None:
        """dtype of every stored image, None while the store is empty."""

    @property
    def codec_spec(self) -> str:
        """How the store encodes its images (a codecs.py spec such as "jpeg-90"): "raw" unless the method encodes."""
        return "raw"

    def layout_limit(self, dtype: np.dtype, shape: tuple[int, ...], *, replacing: bool = False) -> str | None:
        """None if this store can hold images of ``dtype`` and ``shape``, else why not: a store that encodes
        images says what its codec holds (PNG: uint8/uint16 with 1, 3 or 4 channels). ``replacing``: as
        ``store_many`` would write them (with the codec this handle was opened with, where that differs)."""
        return None

    def single_write_cycle(self) -> int:
        """Single writes from one run of the method's periodic upkeep (a journal fold, a compaction) to the next,
        for the store as it is now: the cost of a single write is only known over whole cycles. A store ``store_many``
        just wrote starts a cycle; ``upkeeps`` counts the runs. 1: no such upkeep."""
        return 1

    @abc.abstractmethod
    def _replace_all(self, images: np.ndarray, labels: np.ndarray) -> None:
        """Atomically replace the contents with ``images``/``labels`` (validated, C-contiguous)."""

    @abc.abstractmethod
    def _put(self, image: np.ndarray, image_id: int, label: int) -> None:
        """Store one validated image at ``image_id`` <= len (replace or append)."""

    @abc.abstractmethod
    def _get(self, image_id: int) -> tuple[np.ndarray, int]:
        """Read one image and its label; ``image_id`` < len."""

    @abc.abstractmethod
    def _read_into(self, out: np.ndarray, labels: np.ndarray) -> None:
        """Fill ``out`` (n, *image_shape) and ``labels`` (n,) with images 0..n-1; n <= len."""

    def _read_batch_into(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        """Fill ``out[i]``/``labels[i]`` with image ``ids[i]`` (valid ids, any order). Backends override
        this with their fast random-access path; the default reads one image at a time."""
        for position, image_id in enumerate(ids.tolist()):
            out[position], labels[position] = self._get(image_id)

    @abc.abstractmethod
    def _close(self) -> None:
        """Release the backend's open handles."""

    # -- the public operations, validated once here -----------------------------------------
    def close(self) -> None:
        """Release open handles; later operations raise ValueError. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._close()

    def store_single(self, image: np.ndarray, image_id: int, label: int) -> None:
        """Store one image with its label at ``image_id`` (an existing id, or the next one, len(store))."""
        self._require_writable()
        image = check_image(image)
        self._check_layout(image.dtype, image.shape, replacing=False)
        image_id = check_id(image_id)
        label = check_label(label)
        with self._writing():
            count = len(self)
            if image_id > count:
                raise ValueError(
                    f"image_id {image_id} would leave a gap: this store holds ids 0..{count - 1}, next is {count}"
                )
            if count and (image.dtype, image.shape) != (self.image_dtype, self.image_shape):
                raise ValueError(
                    f"image of dtype {image.dtype} and shape {image.shape} differs from the store's images "
                    f"({self.image_dtype}, {self.image_shape}): store_many fixes them for the store"
                )
            self._put(image, image_id, label)

    def store_many(self, images: np.ndarray, labels: object) -> None:
        """Replace the store's contents with ``images`` (N, H, W[, C]) and ``labels`` as ids 0..N-1."""
        self._require_writable()
        images = check_images(images)
        self._check_layout(images.dtype, images.shape[1:], replacing=True)
        labels = check_labels(labels, len(images))
        with self._writing():
            self._replace_all(images, labels)

    def compact(self) -> None:
        """Fold pending single writes into the files other tools read, so that they hold exactly what this store
        reads: the journal of ``store_single`` records goes into a new checkpoint (webdataset's shards, the Parquet
        file, the zarr group, the numpy files, ``images.h5``) or generation (disk's image files and ``labels.csv``),
        committed as ``store_many`` commits (all-or-nothing, under the writer lock); a reader opened before it
        goes on as after a ``store_many`` (its snapshot, or MissingStoreError "open it again"). A no-op where the
        container is always current: lmdb, rocksdb and lance commit every write into the database or dataset
        other tools open. Costs O(N) where there is anything to fold."""
        self._require_writable()
        with self._writing():
            if len(self):  # a damaged store raises here (store_many replaces it)
                self._fold()

    def _fold(self) -> None:
        """Fold pending single writes into the container (under the writer lock, the store holding images); by
        default nothing: the container takes each write itself."""

    def read_single(self, image_id: int) -> tuple[np.ndarray, int]:
        """Return (image, label) stored at ``image_id``."""
        self._require_open()
        image_id = check_id(image_id)
        if image_id >= len(self):
            raise ImageNotFoundError(
                f"image_id {image_id} was never stored in {self.directory} (holds {len(self)} images)"
            )
        return self._get(image_id)

    def read_many(self, num_images: int, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return (images, labels) for ids 0..num_images-1, as one (N, ...) array of the store's dtype and an
        int64 array.

        Pass ``out`` (a preallocated, writable, C-contiguous array of the right dtype and shape) to
        read without allocating; large fresh arrays are slow to touch the first time.
        """
        self._require_open()
        if isinstance(num_images, (bool, np.bool_)) or not isinstance(num_images, (int, np.integer)):
            raise TypeError(f"num_images must be an integer, got {type(num_images).__name__}")
        if not 1 <= num_images <= len(self):
            raise ValueError(f"cannot read {num_images} images: {self.directory} holds {len(self)}")
        out = check_out(out, (int(num_images), *self.image_shape), self.image_dtype)
        labels = np.empty(len(out), np.int64)
        self._read_into(out, labels)
        return out, labels

    def read_batch(self, ids: object, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return (images, labels) for ``ids`` in the order given (any order, repeats allowed), as a
        training loader reads a shuffled batch; ``out`` as for ``read_many``."""
        self._require_open()
        ids = check_ids(ids, len(self), self.directory)
        out = check_out(out, (len(ids), *self.image_shape), self.image_dtype)
        labels = np.empty(len(ids), np.int64)
        self._read_batch_into(ids, out, labels)
        return out, labels

    def disk_usage(self) -> DiskUsage:
        """Bytes the store takes on disk now."""
        return directory_usage(self.directory)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the writer lock, with this handle's view of the store brought up to date."""
        with writer_lock(self.directory, self.lock_timeout):
            self._refresh()
            yield

    def _check_layout(self, dtype: np.dtype, shape: tuple[int, ...], *, replacing: bool) -> None:
        limit = self.layout_limit(dtype, shape, replacing=replacing)
        if limit:
            raise ValueError(f"{self.method} cannot store images of dtype {dtype} and shape {shape}: {limit}")

    def _require_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self!r} is closed")

    def _require_writable(self) -> None:
        self._require_open()
        if self.mode == "r":
            raise PermissionError(f"{self.directory} was opened read-only (mode='r')")

    def __enter__(self) -> ImageStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.directory)!r}, mode={self.mode!r})"
