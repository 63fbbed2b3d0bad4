"""A write-ahead journal of single-image writes, for methods whose main files cannot take one
image in place both cheaply and atomically (HDF5's file, the PNG folder's labels.csv).

Such a store is a *checkpoint* (what ``store_many`` wrote, named by a token the method keeps
with it) plus this journal: one file that ``store_single`` appends one record to. The file is a
header line (JSON: format, version, checkpoint token, image shape and dtype, and the codec of the
payloads where the method encodes them) and its CRC-32, then, at a
16-byte aligned offset, the *commit word* ``<QI4x>`` (where the committed records end, CRC-32
of that), then the records. A record is ``<QqII``: image id, label, payload length, CRC-32 of
those fields and the payload; then the payload (the method decides what: raw pixels, PNG bytes).
An append writes the record past the committed end, then the commit word (one aligned 16-byte
write, which a kill cannot tear): rewriting the commit word is the commit. A new journal is written
aside with its first record and renamed into place (the rename is that write's commit).

- a write is all-or-nothing: bytes past the committed end (a record cut short by a kill or a
  full disk) are ignored by readers and truncated away by the next writer;
- damage is never mistaken for an unfinished write: a journal shorter than its committed end, a
  committed record or a header or commit word that fails its CRC raise CorruptStoreError;
- its cost does not grow with the store (two ``pwrite``, plus two fdatasyncs when durable, so
  that the record is on disk before the commit word that points past it);
- a journal names the checkpoint it extends, so after ``store_many`` (or a compaction, which
  folds the journal into a new checkpoint) a leftover journal is stale and ignored. A journal is
  created aside and renamed into place, and committed bytes are never rewritten, so a reader's
  open journal stays a consistent snapshot.

Readers load the journal once when they open (a snapshot, like the checkpoint's open file);
writers bring it up to date under the store's writer lock with ``refresh``.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from storage_impls.core.base import check_dtype, check_image_shape
from storage_impls.core.codecs import Codec
from storage_impls.core.encoded import decode
from storage_impls.core.errors import CorruptStoreError, is_no_space, no_space_error
from storage_impls.core.fileio import fsync_path, open_regular

FORMAT = "storage_impls.journal"
FORMAT_VERSION = 2
RECORD = struct.Struct("<QqII")  # image id, label, payload length, crc32(fields before it + payload)
RECORD_FIELDS = np.dtype([("id", "<u8"), ("label", "<i8"), ("length", "<u4"), ("crc", "<u4")])  # RECORD, as numpy
HEADER_CRC = struct.Struct("<I")
COMMIT = struct.Struct("<QI4x")  # end of the committed records, crc32 of that end
COMMIT_ALIGN = 16  # the commit word never straddles a page or sector, so one pwrite of it is atomic
COMMIT_READ_TRIES = 3  # a reader may race a writer's update of the commit word: read it again before calling it damage
HEADER_MAX = 4096
SCAN_BLOCK_BYTES = 16 << 20  # journal bytes read at a time when loading its records
COMPACT_MIN_RECORDS = 256  # fold the journal into a new checkpoint past this many records ...
# ... or past as many as the checkpoint holds images (1/COMPACT_FRACTION of them), whichever is more. A fold copies
# the store once: with 1/16 a write paid ~17 image copies amortised (2-15x the cost at 10 images into 100 000); with
# 1, about 1.5 (as a doubling array), and the journal never outgrows the checkpoint.
COMPACT_FRACTION = 1


def compaction_cycle(checkpoint_count: int) -> int:
    """Records a journal extending a checkpoint of ``checkpoint_count`` images holds when the next write folds it:
    one fold per this many single writes (ImageStore.single_write_cycle)."""
    return max(COMPACT_MIN_RECORDS, checkpoint_count // COMPACT_FRACTION) + 1


class Entry(NamedTuple):
    """The newest record of one image id: its label and where its payload lies in the journal file."""

    label: int
    offset: int
    length: int
    crc: int


class Journal:
    """The journal file ``path`` as seen by one handle: ``entries`` maps id -> newest Entry.

    ``image_shape`` and ``image_dtype`` are None unless a journal extending ``checkpoint`` is loaded."""

    def __init__(self, path: Path, checkpoint: str) -> None:
        self.path, self.checkpoint = path, checkpoint
        self.entries: dict[int, Entry] = {}
        self.image_shape: tuple[int, ...] | None = None
        self.image_dtype: np.dtype | None = None
        self.codec: str | None = None  # the codec of the payloads, for a method that encodes them
        self.records = 0
        self._fd: int | None = None
        self._fd_writable = False  # opened for writing (a reader's journal is opened read-only)
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file loaded
        self._commit_at = 0  # offset of the commit word
        self._end = 0  # end of the committed records loaded
        self._load()

    # -- reading -----------------------------------------------------------------------------
    def _load(self) -> None:
        """Open the journal if it exists and extends ``checkpoint``; a missing or stale one reads as empty."""
        self.close()
        self.entries, self.image_shape, self.image_dtype, self.records, self._end, self._identity = (
            {},
            None,
            None,
            0,
            0,
            None,
        )
        self.codec = None
        try:
            fd = open_regular(self.path)
        except FileNotFoundError:
            return
        try:
            checkpoint, image_dtype, image_shape, codec, commit_at = _read_header(fd, self.path)
        except BaseException:
            os.close(fd)
            raise
        if checkpoint != self.checkpoint:
            os.close(fd)
            return
        self._fd = fd
        info = os.fstat(fd)
        self._identity = (info.st_dev, info.st_ino)
        self.image_dtype, self.image_shape, self.codec, self._commit_at = image_dtype, image_shape, codec, commit_at
        self._end = commit_at + COMMIT.size
        self._scan()

    def _committed_end(self) -> int:
        """Where the committed records end, from the commit word."""
        for attempt in range(COMMIT_READ_TRIES):
            word = os.pread(self._fd, COMMIT.size, self._commit_at)
            if len(word) == COMMIT.size:
                end, crc = COMMIT.unpack(word)
                if zlib.crc32(word[:8]) == crc:
                    return end
            time.sleep(0.001 * (attempt + 1))
        raise CorruptStoreError(
            f"{self.path}: the commit word at byte {self._commit_at} is missing or fails its checksum "
            "(a damaged or partial copy)"
        )

    def _scan(self) -> None:
        """Add the committed records past ``_end``; CorruptStoreError if any of them is missing or damaged."""
        end = self._committed_end()
        size = os.fstat(self._fd).st_size
        if end < self._end or size < end:
            raise CorruptStoreError(
                f"{self.path} is {size} bytes but its committed records end at byte {end} (a damaged or partial copy)"
            )
        position = self._end
        while position < end:  # a block of records per read: a journal as large as its checkpoint opens fast
            block = os.pread(self._fd, min(SCAN_BLOCK_BYTES, end - position), position)
            scanned = self._scan_block(block, position)
            if not scanned:  # a record larger than the block: read it whole
                length = RECORD.unpack(block[: RECORD.size].ljust(RECORD.size, b"\0"))[2]
                scanned = self._scan_block(
                    os.pread(self._fd, min(RECORD.size + length, end - position), position), position
                )
            if not scanned:
                raise self._damaged_record(position)
            position += scanned
        self._end = end

    def _scan_block(self, block: bytes, position: int) -> int:
        """Add the whole records at the start of ``block`` (the journal's bytes from ``position``); return how many
        bytes they span. CorruptStoreError for a record that fails its CRC. Records are taken a run of equal lengths
        at a time (raw pixels: the whole block), their fields read as one strided array."""
        view, offset = memoryview(block), 0
        while offset + RECORD.size <= len(block):
            length = RECORD.unpack_from(block, offset)[2]
            stride = RECORD.size + length
            fields = np.ndarray(((len(block) - offset) // stride,), RECORD_FIELDS, block, offset, (stride,))
            if not len(fields):
                break
            run = int(np.argmax(fields["length"] != length)) or len(fields)  # records of this length from offset
            fields = fields[:run]
            starts = range(offset + RECORD.size, offset + run * stride, stride)
            crcs = [
                zlib.crc32(view[start : start + length], zlib.crc32(view[start - RECORD.size : start - 4]))
                for start in starts
            ]
            damaged = np.flatnonzero(np.array(crcs, np.uint32) != fields["crc"])
            if len(damaged):
                raise self._damaged_record(position + offset + int(damaged[0]) * stride)
            located = zip(fields["label"].tolist(), range(position + starts.start, position + starts.stop, stride))
            self.entries.update(zip(fields["id"].tolist(), (Entry(*at, length, crc) for at, crc in zip(located, crcs))))
            self.records += run
            offset += run * stride
        return offset

    def _damaged_record(self, position: int) -> CorruptStoreError:
        return CorruptStoreError(f"{self.path}: the record at byte {position} fails its checksum (bit rot or damage)")

    def refresh(self) -> bool:
        """Catch up with records other writers appended (or a journal they replaced); True if anything changed."""
        before = (self._identity, self.records)
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            if self._fd is not None:
                self._load()
            return (self._identity, self.records) != before
        if (info.st_dev, info.st_ino) != self._identity:
            self._load()
        else:
            self._scan()
        return (self._identity, self.records) != before

    def read(self, image_id: int) -> bytes:
        """The payload of ``image_id``'s newest record, checked against its CRC."""
        entry = self.entries[image_id]
        payload = os.pread(self._fd, entry.length, entry.offset)
        self._check(image_id, entry, payload, len(payload))
        return payload

    def read_into(self, image_id: int, target: np.ndarray | memoryview | bytearray) -> None:
        """Read ``image_id``'s newest payload straight into ``target`` (exactly its size), checked against its CRC."""
        entry = self.entries[image_id]
        view = memoryview(target).cast("B")
        if len(view) != entry.length:
            raise CorruptStoreError(
                f"{self.path}: the record of image {image_id} holds {entry.length} bytes, expected {len(view)}"
            )
        self._check(image_id, entry, view, os.preadv(self._fd, [view], entry.offset))

    def decode_into(self, image_id: int, codec: Codec, target: np.ndarray) -> int:
        """Put ``image_id``'s newest record into ``target``: raw pixels read straight in, else decoded with ``codec``
        (CorruptStoreError naming the journal and id unless it is exactly such an image); return its label."""
        if codec.spec == "raw":
            self.read_into(image_id, target)
        else:
            decode(codec, self.read(image_id), target, f"{self.path}: image {image_id}")
        return self.entries[image_id].label

    def overlay_payloads(
        self, start: int, stop: int, stored: list[bytes | memoryview], stored_labels: np.ndarray
    ) -> tuple[list[bytes | memoryview], np.ndarray]:
        """The encoded bytes and labels of images start..stop-1: the checkpoint's (``stored``, for the first ids of
        the range), with the newest record of every id that has one over them (every id past the checkpoint has)."""
        payloads, labels = [*stored, *[b""] * (stop - start - len(stored))], np.zeros(stop - start, np.int64)
        labels[: len(stored_labels)] = stored_labels
        for image_id in self.ids_between(start, stop):
            payloads[image_id - start], labels[image_id - start] = self.read(image_id), self.entries[image_id].label
        return payloads, labels

    def _check(self, image_id: int, entry: Entry, payload: bytes | memoryview, length: int) -> None:
        fields = RECORD.pack(image_id, entry.label, entry.length, 0)[:-4]
        if length != entry.length or zlib.crc32(payload, zlib.crc32(fields)) != entry.crc:
            raise CorruptStoreError(
                f"{self.path}: the record of image {image_id} fails its checksum (bit rot or a damaged copy)"
            )

    def ids_between(self, start: int, stop: int) -> Iterable[int]:
        """The ids start..stop-1 that have a record, in order (walking whichever is shorter: the range or the
        records)."""
        if stop - start <= len(self.entries):
            return filter(self.entries.__contains__, range(start, stop))
        return sorted(image_id for image_id in self.entries if start <= image_id < stop)

    def next_id(self, checkpoint_count: int) -> int:
        """The store's length: the checkpoint's images plus those the journal appended."""
        return max(checkpoint_count, max(self.entries, default=-1) + 1)

    def needs_compaction(self, checkpoint_count: int) -> bool:
        """True once folding the journal into a new checkpoint costs O(1) per record it held."""
        return self.records >= compaction_cycle(checkpoint_count)

    # -- writing (under the store's writer lock) --------------------------------------------
    def append(
        self,
        image_id: int,
        label: int,
        payload: bytes | memoryview | np.ndarray,
        image_dtype: np.dtype,
        image_shape: tuple[int, ...],
        *,
        durable: bool,
        codec: str | None = None,
    ) -> None:
        """Commit one record (of an image of ``image_dtype`` and ``image_shape``, encoded by ``codec`` if any,
        which a new journal records); on any failure (a full disk included) the journal is left as it was."""
        payload = memoryview(payload).cast("B")
        fields = RECORD.pack(image_id, label, len(payload), 0)[:-4]
        crc = zlib.crc32(payload, zlib.crc32(fields))
        record = [fields + crc.to_bytes(4, "little"), payload]
        if self._fd is None:  # a new journal: its header and first record, written aside and renamed into place
            self._create(image_dtype, image_shape, codec, record, durable)
            self._committed(image_id, label, len(payload), crc)
            return
        committed = False
        fd = self._writable_fd()
        try:
            os.ftruncate(fd, self._end)  # drop what a killed or failed writer left past the committed end
            pwrite_all(fd, record, self._end)
            if durable:
                os.fdatasync(fd)  # the record is on disk before the commit word that points past it
            pwrite_all(fd, _commit_word(self._end + RECORD.size + len(payload)), self._commit_at)
            committed = True
            if durable:
                os.fdatasync(fd)
        except OSError as error:
            if not committed:
                os.ftruncate(fd, self._end)
            raise (no_space_error(self.path.parent, error) if is_no_space(error) else error) from error
        finally:
            if committed:  # visible to every reader from now on, even if a durable fdatasync failed
                self._committed(image_id, label, len(payload), crc)

    def _committed(self, image_id: int, label: int, length: int, crc: int) -> None:
        """Account for the record just committed at the old end."""
        start = self._end + RECORD.size
        self.entries[image_id] = Entry(label, start, length, crc)
        self.records += 1
        self._end = start + length

    def _writable_fd(self) -> int:
        """The journal's fd, reopened for writing the first time a handle appends (under the writer lock, after
        ``refresh``: the path still names the file loaded)."""
        if not self._fd_writable:
            fd = os.open(self.path, os.O_RDWR)
            os.close(self._fd)
            self._fd, self._fd_writable = fd, True
        return self._fd

    def _create(
        self,
        image_dtype: np.dtype,
        image_shape: tuple[int, ...],
        codec: str | None,
        record: list[bytes | memoryview],
        durable: bool,
    ) -> None:
        """Start a journal for this checkpoint holding its first ``record`` (fields, payload): written aside, then
        renamed over any stale one (the commit: one new file, one write, one rename)."""
        line = (
            json.dumps(
                {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "checkpoint": self.checkpoint,
                    "image_shape": list(image_shape),
                    "dtype": image_dtype.str,
                    **({"codec": codec} if codec else {}),
                }
            ).encode()
            + b"\n"
        )
        commit_at = -(-(len(line) + HEADER_CRC.size) // COMMIT_ALIGN) * COMMIT_ALIGN
        records_at = commit_at + COMMIT.size
        end = records_at + sum(len(part) for part in record)
        header = (line + HEADER_CRC.pack(zlib.crc32(line))).ljust(commit_at, b"\0") + _commit_word(end)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.close()
        try:
            fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                pwrite_all(fd, [header, *record], 0)
                if durable:
                    os.fsync(fd)
                os.replace(temporary, self.path)
                if durable:
                    fsync_path(self.path.parent)  # the new name survives a power cut
            except BaseException:
                os.close(fd)
                raise
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise (no_space_error(self.path.parent, error) if is_no_space(error) else error) from error
        # what _load would read back: the file just written, kept open (renaming did not change it)
        info = os.fstat(fd)
        self._fd, self._fd_writable, self._identity = fd, True, (info.st_dev, info.st_ino)
        self.entries, self.records, self.image_shape, self.image_dtype = (
            {},
            0,
            tuple(image_shape),
            np.dtype(image_dtype),
        )
        self.codec = codec
        self._commit_at, self._end = commit_at, records_at  # the caller accounts for the record

    def discard(self) -> None:
        """Remove the journal file (after its records were folded into a new checkpoint)."""
        self.close()
        self.path.unlink(missing_ok=True)
        self.entries, self.image_shape, self.image_dtype, self.records, self._end, self._identity = (
            {},
            None,
            None,
            0,
            0,
            None,
        )
        self.codec = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self._fd_writable = None, False


def gather_overlaid(
    in_journal: np.ndarray | None,
    ids: np.ndarray,
    out: np.ndarray,
    labels: np.ndarray,
    take: Callable[[np.ndarray, np.ndarray, np.ndarray], None],
    read_record: Callable[[int, np.ndarray, np.ndarray, int], None],
) -> None:
    """Fill ``out``/``labels`` with images ``ids``: through ``read_record(id, out, labels, position)`` where
    ``in_journal`` (a bool per id, None for an empty journal) says its journal record is the newest version, the
    rest through ``take(ids, out, labels)`` (the checkpoint's gather)."""
    from_journal = None if in_journal is None else in_journal[ids]
    positions = None if from_journal is None else np.flatnonzero(~from_journal)
    if positions is None or len(positions) == len(ids):
        take(ids, out, labels)
    elif len(positions):
        images, image_labels = (
            np.empty((len(positions), *out.shape[1:]), out.dtype),
            np.empty(len(positions), labels.dtype),
        )
        take(ids[positions], images, image_labels)
        out[positions], labels[positions] = images, image_labels
    if from_journal is None:
        return
    for position in np.flatnonzero(from_journal).tolist():
        read_record(int(ids[position]), out, labels, position)


def _commit_word(end: int) -> bytes:
    end_bytes = end.to_bytes(8, "little")
    return COMMIT.pack(end, zlib.crc32(end_bytes))


def pwrite_all(fd: int, data: bytes | memoryview | np.ndarray | list, offset: int) -> None:
    """Write all of ``data`` (one buffer, or a list written back to back in one call) at ``offset``
    (a regular file may take a large write in parts)."""
    views = [memoryview(part).cast("B") for part in (data if isinstance(data, list) else [data])]
    views = [view for view in views if view]
    while views:
        written = os.pwritev(fd, views, offset)
        if written == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        offset += written
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]


def _read_header(fd: int, path: Path) -> tuple[str, np.dtype, tuple[int, ...], str | None, int]:
    """(checkpoint, image dtype, image shape, codec, offset of the commit word) of a journal file; CorruptStoreError
    if it is not one. Journals written before stores held other dtypes have no dtype: theirs is uint8."""
    head = os.pread(fd, HEADER_MAX, 0)
    line, newline, rest = head.partition(b"\n")
    try:
        if not newline or len(rest) < HEADER_CRC.size or HEADER_CRC.unpack_from(rest)[0] != zlib.crc32(line + newline):
            raise ValueError("its header is cut short or fails its checksum")
        header = json.loads(line)
        if header["format"] != FORMAT or header["format_version"] != FORMAT_VERSION:
            raise ValueError(f"format {header['format']!r} version {header['format_version']!r}")
        commit_at = -(-(len(line) + 1 + HEADER_CRC.size) // COMMIT_ALIGN) * COMMIT_ALIGN
        dtype = check_dtype(header.get("dtype", "|u1"), "the journal's images")
        codec = header.get("codec")
        if codec is not None and not isinstance(codec, str):
            raise ValueError(f"codec {codec!r}")
        shape = tuple(header["image_shape"])
        if not all(type(side) is int for side in shape):
            raise ValueError(f"image_shape {header['image_shape']!r}")
        check_image_shape(shape, "the journal's images")  # before any record of that shape is read
        return str(header["checkpoint"]), dtype, shape, codec, commit_at
    except (ValueError, KeyError, TypeError) as error:  # check_dtype raises TypeError
        raise CorruptStoreError(
            f"{path}: not a journal written by {FORMAT} version {FORMAT_VERSION} ({error})"
        ) from None
