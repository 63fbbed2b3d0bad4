"""A write-ahead journal of single-image writes, for methods whose main files cannot take one
image in place both cheaply and atomically (HDF5's file, the PNG folder's labels.csv).

Such a store is a *checkpoint* (what ``store_many`` wrote, named by a token the method keeps
with it) plus this journal: one file that ``store_single`` appends one record to. A record is
``<QqII``: image id, label, payload length, CRC-32 of those fields and the payload; then the
payload (the method decides what: raw pixels, PNG bytes). Appending the record is the commit:

- a write is all-or-nothing: a record cut short by a kill or a full disk fails its CRC, so
  readers stop before it and the next writer truncates it away;
- its cost does not grow with the store (one ``pwritev``, plus an fsync when durable);
- a journal names the checkpoint it extends, so after ``store_many`` (or a compaction, which
  folds the journal into a new checkpoint) a leftover journal is stale and ignored.

Readers load the journal once when they open (a snapshot, like the checkpoint's open file);
writers bring it up to date under the store's writer lock with ``refresh``.
"""
from __future__ import annotations

import errno
import json
import os
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from storage_impls.errors import CorruptStoreError, is_no_space, no_space_error

FORMAT = "storage_impls.journal"
FORMAT_VERSION = 1
RECORD = struct.Struct("<QqII")  # image id, label, payload length, crc32(fields before it + payload)
COMPACT_MIN_RECORDS = 256  # fold the journal into a new checkpoint past this many records ...
COMPACT_FRACTION = 16  # ... or past 1/16 of the checkpoint's images, whichever is more: O(1) per write, amortised


class Entry(NamedTuple):
    """The newest record of one image id: its label and where its payload lies in the journal file."""

    label: int
    offset: int
    length: int
    crc: int


class Journal:
    """The journal file ``path`` as seen by one handle: ``entries`` maps id -> newest Entry."""

    def __init__(self, path: Path, checkpoint: str) -> None:
        self.path, self.checkpoint = path, checkpoint
        self.entries: dict[int, Entry] = {}
        self.image_shape: tuple[int, ...] | None = None
        self.records = 0
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file loaded
        self._end = 0  # bytes of header and whole, valid records
        self._load()

    # -- reading -----------------------------------------------------------------------------
    def _load(self) -> None:
        """Open the journal if it exists and extends ``checkpoint``; a missing or stale one reads as empty."""
        self.close()
        self.entries, self.image_shape, self.records, self._end, self._identity = {}, None, 0, 0, None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        header = _read_header(fd, self.path)
        if header is None or header[0] != self.checkpoint:
            os.close(fd)
            return
        self._fd = fd
        info = os.fstat(fd)
        self._identity = (info.st_dev, info.st_ino)
        self.image_shape = header[1]
        self._end = header[2]
        self._scan()

    def _scan(self) -> None:
        """Add the whole, valid records past ``_end``; stop at the first cut-short or damaged one."""
        size = os.fstat(self._fd).st_size
        while self._end + RECORD.size <= size:
            fields = os.pread(self._fd, RECORD.size, self._end)
            image_id, label, length, crc = RECORD.unpack(fields)
            start = self._end + RECORD.size
            if start + length > size:
                break
            payload = os.pread(self._fd, length, start)
            if zlib.crc32(payload, zlib.crc32(fields[:-4])) != crc:
                break
            self.entries[image_id] = Entry(label, start, length, crc)
            self.records += 1
            self._end = start + length

    def refresh(self) -> bool:
        """Catch up with records other writers appended (or a journal they replaced); True if anything changed."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            if self._fd is None:
                return False
            self._load()
            return True
        if (info.st_dev, info.st_ino) != self._identity:
            self._load()
            return True
        before = self.records
        self._scan()
        return self.records != before

    def read(self, image_id: int) -> bytes:
        """The payload of ``image_id``'s newest record, checked against its CRC."""
        entry = self.entries[image_id]
        payload = os.pread(self._fd, entry.length, entry.offset)
        fields = RECORD.pack(image_id, entry.label, entry.length, 0)[:-4]
        if len(payload) != entry.length or zlib.crc32(payload, zlib.crc32(fields)) != entry.crc:
            raise CorruptStoreError(f"{self.path}: the record of image {image_id} fails its checksum (bit rot or a damaged copy)")
        return payload

    def next_id(self, checkpoint_count: int) -> int:
        """The store's length: the checkpoint's images plus those the journal appended."""
        return max(checkpoint_count, max(self.entries, default=-1) + 1)

    def needs_compaction(self, checkpoint_count: int) -> bool:
        """True once folding the journal into a new checkpoint costs O(1) per record it held."""
        return self.records > max(COMPACT_MIN_RECORDS, checkpoint_count // COMPACT_FRACTION)

    # -- writing (under the store's writer lock) --------------------------------------------
    def append(self, image_id: int, label: int, payload: bytes | memoryview | np.ndarray,
               image_shape: tuple[int, ...], *, durable: bool) -> None:
        """Commit one record; on any failure (a full disk included) the journal is left as it was."""
        if self._fd is None:
            self._create(image_shape, durable)
        payload = memoryview(payload).cast("B")
        fields = RECORD.pack(image_id, label, len(payload), 0)[:-4]
        crc = zlib.crc32(payload, zlib.crc32(fields))
        record = [fields + crc.to_bytes(4, "little"), payload]
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, self._end)  # drop a record a killed writer cut short
            written = os.pwritev(fd, record, self._end)
            if written != RECORD.size + len(payload):
                raise OSError(errno.ENOSPC, "short write")
            if durable:
                os.fsync(fd)
        except OSError as error:
            os.ftruncate(fd, self._end)
            raise (no_space_error(self.path.parent, error) if is_no_space(error) else error) from error
        finally:
            os.close(fd)
        self.entries[image_id] = Entry(label, self._end + RECORD.size, len(payload), crc)
        self.records += 1
        self._end += RECORD.size + len(payload)

    def _create(self, image_shape: tuple[int, ...], durable: bool) -> None:
        """Start a journal for this checkpoint: written aside, then renamed over any stale one."""
        header = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "checkpoint": self.checkpoint,
                             "image_shape": list(image_shape)}).encode() + b"\n"
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                if os.write(fd, header) != len(header):
                    raise OSError(errno.ENOSPC, "short write")
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise (no_space_error(self.path.parent, error) if is_no_space(error) else error) from error
        self._load()

    def discard(self) -> None:
        """Remove the journal file (after its records were folded into a new checkpoint)."""
        self.close()
        self.path.unlink(missing_ok=True)
        self.entries, self.records, self._end, self._identity = {}, 0, 0, None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_header(fd: int, path: Path) -> tuple[str, tuple[int, ...], int] | None:
    """(checkpoint, image shape, header length) of a journal file; None for a stale leftover that is not ours."""
    head = os.pread(fd, 4096, 0)
    line, newline, _ = head.partition(b"\n")
    if not newline:
        return None  # a header cut short: the journal was never started, so it holds nothing
    try:
        header = json.loads(line)
        if header["format"] != FORMAT or header["format_version"] != FORMAT_VERSION:
            raise ValueError("not a journal of this version")
        return str(header["checkpoint"]), tuple(int(side) for side in header["image_shape"]), len(line) + 1
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptStoreError(f"{path}: not a journal written by {FORMAT} ({error})") from None
