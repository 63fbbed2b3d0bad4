"""A local mirror of a remote store that a method's own read path runs on unchanged: its small files (metadata,
journal, index, labels) downloaded whole at open, its large ones (shards, Parquet files) sparse files of the
remote sizes, into which a read first writes exactly the byte ranges it needs, fetched concurrently (coalesced
where they touch, in offset order); the method's local code then reads and checks them as it reads a local store,
and the ranges are dropped again. So a remote read makes the requests a range-reading client makes, and no second
parser of any format exists.

The mirror lives in /dev/shm where there is one (memory, never written back), else the temporary folder; it is
removed when the handle closes, or when it is collected or the interpreter exits with it open (an unclosed
handle must not leave a copy of the store in memory until the next reboot). Errors name the remote objects, not
the mirror's files.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path

from storage_impls.core.errors import CorruptStoreError, MissingStoreError, StoreError
from storage_impls.core.records import MARKERS
from storage_impls.remote.client import Location
from storage_impls.remote.ranges import Span

SHM = Path("/dev/shm")


class StagedFolder:
    """The mirror of ``location`` in a fresh local folder (``root``)."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.root = Path(tempfile.mkdtemp(prefix="storage-remote-", dir=SHM if os.access(SHM, os.W_OK) else None))
        self._sizes: dict[str, int] = {}  # sparse files and their remote sizes
        # removed at close, collection or exit; not by a forked child closing its inherited copy (its parent's)
        self._remove = weakref.finalize(self, _remove_mirror, self.root, os.getpid())

    def download(self, key: str, *, required: bool = True) -> Path | None:
        """Object ``key`` downloaded whole to the same name in the mirror (None if absent and not ``required``)."""
        try:
            data = self.location.get(key)
        except MissingStoreError:
            if required:
                raise
            return None
        return self._write(key, data)

    def download_many(self, keys: Sequence[str]) -> None:
        """Objects ``keys`` downloaded whole into the mirror, all in flight at once."""
        for key, data in zip(keys, self.location.get_many(keys)):
            self._write(key, data)

    def path(self, key: str) -> Path:
        """The mirror's file of object ``key``; CorruptStoreError for a key that would leave the mirror (a bucket is
        untrusted input: a listed name such as ``a/../../x``)."""
        path = self.root / key
        if ".." in Path(key).parts or Path(key).is_absolute():
            raise CorruptStoreError(f"{self.location.name(key)}: an object name this package never writes")
        return path

    def _write(self, key: str, data: memoryview) -> Path:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def download_store_file(self, key: str, method: str) -> None:
        """A store's top-level file that must exist; if it does not, the error says whose store is there, if any."""
        try:
            self.download(key)
        except MissingStoreError:
            raise self.not_a_store(method, key, self.location.list()) from None

    def not_a_store(self, method: str, key: str, listed: dict[str, int]) -> StoreError:
        """The error for a location without ``method``'s file ``key``: whose store it holds, or that none is there."""
        owners = [MARKERS[name] for name in sorted(set(listed) & set(MARKERS)) if MARKERS[name] != method]
        if owners:
            return CorruptStoreError(
                f"{self.location.url} holds a {owners[0]} store, not a {method} store: open it "
                f"with method {owners[0]!r}"
            )
        return MissingStoreError(f"no {method} store at {self.location.url}: {key} does not exist")

    def sparse(self, folder: str, names: Sequence[str], sizes: dict[str, int] | None = None) -> None:
        """Files ``folder/name`` in the mirror, sparse, of their remote sizes (``sizes``, else one listing);
        MissingStoreError naming the first that does not exist."""
        sizes = self.location.list(folder) if sizes is None else sizes
        for name in names:
            key = f"{folder}/{name}" if folder else name
            if key not in sizes:
                raise self.missing(key)
            os.truncate(_create(self.path(key)), sizes[key])
            self._sizes[key] = sizes[key]

    def size(self, key: str) -> int:
        """The remote size of the sparse file ``key``."""
        return self._sizes[key]

    def read(self, key: str, start: int, stop: int) -> bytes:
        """Bytes of the mirror's file ``key`` (filled ones, or zeros)."""
        with open(self.root / key, "rb") as file:
            file.seek(start)
            return file.read(stop - start)

    def missing(self, key: str) -> MissingStoreError:
        """The error for a missing object, with its mirror's name as the file name (which some stores' messages
        name, and ``naming`` turns into the object's URL)."""
        return MissingStoreError(errno.ENOENT, "does not exist", str(self.root / key))

    def fill(self, spans: Sequence[Span]) -> None:
        """Write the remote bytes of ``spans`` into the mirror's sparse files (kept: ``filled`` drops its own)."""
        spans = [span for span in spans if span.stop > span.start]
        for span, data in zip(spans, self.location.fetch(spans) if spans else []):
            fd = os.open(self.root / span.key, os.O_WRONLY)
            try:
                _pwrite_all(fd, data, span.start)
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def filled(self, spans: Sequence[Span]) -> Iterator[None]:
        """Within the block, the mirror's sparse files hold the remote bytes of ``spans``; dropped after (the rest
        of the file, e.g. a footer filled at open, stays)."""
        try:
            self.fill(spans)
            yield
        finally:
            for span in spans:
                _punch_hole(self.root / span.key, span.start, span.stop - span.start)

    @contextlib.contextmanager
    def downloaded(self, keys: Sequence[str]) -> Iterator[None]:
        """Within the block, the objects ``keys`` are whole files in the mirror (one GET each, all in flight at
        once: the file-per-image methods' requests); removed after."""
        try:
            self.download_many(keys)
            yield
        except MissingStoreError as error:
            raise self.missing(str(error.filename).removeprefix(f"{self.location.url}/")) from None
        finally:
            for key in keys:
                (self.root / key).unlink(missing_ok=True)

    @contextlib.contextmanager
    def naming(self) -> Iterator[None]:
        """Errors raised within name the remote objects instead of the mirror's files."""
        try:
            yield
        except StoreError as error:
            text = str(error).replace(str(self.root), self.location.url)
            if text == str(error):
                raise
            raise type(error)(text) from None

    def close(self) -> None:
        self._remove()


def _remove_mirror(root: Path, pid: int) -> None:
    if os.getpid() == pid:
        shutil.rmtree(root, ignore_errors=True)


_LIBC = ctypes.CDLL(None, use_errno=True)
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def _punch_hole(path: Path, offset: int, length: int) -> None:
    """Drop bytes ``offset`` .. + ``length`` of ``path`` (they read as zeros again; the size stays)."""
    if length <= 0:
        return
    fd = os.open(path, os.O_WRONLY)
    try:
        if _LIBC.fallocate(fd, _PUNCH_HOLE, ctypes.c_int64(offset), ctypes.c_int64(length)) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"cannot drop bytes of the mirror's {path}: {os.strerror(code)}")
    finally:
        os.close(fd)


def _create(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
