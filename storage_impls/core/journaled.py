"""The one checkpoint + journal protocol of the journaled methods (checkpointed.py's folders, hdf5's file, disk's
generations): a *checkpoint*, what the last ``store_many`` or fold committed, which the store's ``POINTER`` file
names (hdf5: is), plus a write-ahead journal (journal.py) of the single-image writes made since, which names the
checkpoint it extends by its token, so that a journal left over from an older checkpoint is ignored.

A method says how its checkpoint is opened (``_open_current``, ``_is_current``), committed (its ``_commit`` ends
with ``_switch``) and cleaned up after (``_remove_stale``); this class keeps the handle's view:
- Open: the checkpoint the pointer names, then the journal extending it, again (OPEN_TRIES) while a commit comes in
  between. A damaged store raises CorruptStoreError or MissingStoreError in mode "r"; in mode "a" the damage is kept
  and raised by reads (``__len__``), so that ``store_many`` can replace the contents.
- Before each write (``_refresh``, under the writer lock): another writer's commit reloads the view, its appended
  records are read in; then what killed writes left goes.
- ``store_single`` appends one journal record (raw pixels, or the codec's bytes); once the journal holds more than
  max(256, N) records (N: the checkpoint's images) the method's ``_fold`` first commits it into a new checkpoint
  (a fold of N images every N writes: amortised O(1) per write).
  ``JOURNAL_FIRST``: an empty store's first writes make only a journal (extending no checkpoint, token ""); else
  the first image makes a checkpoint of one.
- Reads: the checkpoint's images (``_read_rows``, ``_take``) with the journal's records laid over them.
"""

from __future__ import annotations

import abc
import math
from typing import Protocol

import numpy as np

from storage_impls.core.base import ImageStore
from storage_impls.core.codecs import RAW, Codec, get_codec
from storage_impls.core.errors import CorruptStoreError, MissingStoreError, StoreError, StoreLockedError, damaged
from storage_impls.core.journal import Journal, compaction_cycle, gather_overlaid
from storage_impls.core.records import missing_store, refuse_foreign

OPEN_TRIES = 100  # a reader opens again when a writer commits while it opens


class ChangedError(Exception):
    """A commit replaced the checkpoint while it was being opened: open it again."""


class OpenCheckpoint(Protocol):
    """What the protocol reads of a method's open checkpoint (the default reads also call its ``read_rows(start,
    out, labels)`` and ``take(ids, out, labels)``)."""

    count: int
    dtype: np.dtype
    shape: tuple[int, ...]
    codec: Codec
    token: str  # what a journal extending it names

    def close(self) -> None: ...


class JournaledStore(ImageStore):
    """A checkpoint plus a journal of single writes; subclasses open, commit and clean up the checkpoint."""

    POINTER: str  # the file naming the checkpoint; its absence marks a store without one
    JOURNAL: str  # the journal file
    JOURNAL_FIRST = False  # an empty store's first single writes go to a journal extending no checkpoint
    #: the error reads raise for damage found at open in mode "a" (None: the one found)
    DAMAGE: type[StoreError] | None = None
    DEFAULT_CODEC = "raw"  # the codec of journal records whose header names none
    appends_single_writes = True  # a journal record

    @abc.abstractmethod
    def _open_current(self) -> OpenCheckpoint | None:
        """The checkpoint the pointer names now, None if it names none; ChangedError if a commit replaced it while
        it opened (``_open_failed``); CorruptStoreError or MissingStoreError if it is damaged."""

    @abc.abstractmethod
    def _is_current(self, checkpoint: OpenCheckpoint | None) -> bool:
        """True if the pointer names ``checkpoint`` (None: no checkpoint) now."""

    @abc.abstractmethod
    def _remove_stale(self) -> None:
        """Remove what killed or replaced writes left (under the writer lock, the store not damaged)."""

    # -- opening and catching up --------------------------------------------------------------
    def _open(self) -> None:
        self._pointer, self._journal_path = self.directory / self.POINTER, self.directory / self.JOURNAL
        self._checkpoint: OpenCheckpoint | None = None
        self._journal: Journal | None = None
        self._damage: StoreError | None = None
        self._count = 0
        self._in_journal: np.ndarray | None = None  # bool per id: its newest version is a journal record
        if not self._pointer.exists():
            refuse_foreign(self.directory, self.method)
            if self.mode == "r" and not (self.JOURNAL_FIRST and self._journal_path.exists()):
                raise missing_store(self.directory, self.method, self.POINTER)
        self._load()

    def _load(self) -> None:
        """Open the current checkpoint and its journal, keeping the damage found in mode "a"."""
        self._release()
        try:
            self._checkpoint, self._journal = self._open_consistent()
            if self._journal is not None:
                self._count = self._journal.next_id(self._checkpoint_count())
                self._check_journal()
        except (CorruptStoreError, MissingStoreError) as error:
            self._release()
            if self.mode == "r":
                raise
            self._damage = error if self.DAMAGE is None or isinstance(error, self.DAMAGE) else self.DAMAGE(str(error))

    def _open_consistent(self) -> tuple[OpenCheckpoint | None, Journal | None]:
        """The checkpoint and the journal extending it as they were at one moment (no commit in between)."""
        for _ in range(OPEN_TRIES):
            try:
                checkpoint = self._open_current()
            except ChangedError:
                continue
            if checkpoint is None and not self.JOURNAL_FIRST:
                return None, None
            try:
                journal = Journal(self._journal_path, checkpoint.token if checkpoint is not None else "")
            except BaseException:
                if checkpoint is not None:
                    checkpoint.close()
                raise
            # no journal extends this checkpoint: consistent only if it is still the current one
            if journal.image_shape is not None or self._is_current(checkpoint):
                return checkpoint, journal
            journal.close()
            if checkpoint is not None:
                checkpoint.close()
        raise StoreLockedError(f"{self.directory} changed under every one of {OPEN_TRIES} attempts to open it")

    def _open_failed(self, error: FileNotFoundError | CorruptStoreError, named: bool) -> Exception:
        """What a failed open of the checkpoint the pointer named raises: ChangedError unless the pointer still
        ``named`` it (a commit was removing its files: gone, listings short), else the damage."""
        if not named:
            return ChangedError()
        if isinstance(error, FileNotFoundError):
            return MissingStoreError(f"{self.method} store {self.directory}: {error.filename} is missing")
        return error

    def _check_journal(self) -> None:
        """The journal must fit the checkpoint: same dtype, shape and codec, whole images, appended ids without
        gaps."""
        journal, checkpoint, first = self._journal, self._checkpoint, self._checkpoint_count()
        if not journal.entries:
            return
        spec = journal.codec or self.DEFAULT_CODEC
        if checkpoint is not None and (journal.image_dtype, journal.image_shape, spec) != (
            checkpoint.dtype,
            checkpoint.shape,
            checkpoint.codec.spec,
        ):
            raise CorruptStoreError(
                f"{journal.path}: images of {journal.image_dtype} {journal.image_shape} in {spec}, but the "
                f"checkpoint's are {checkpoint.dtype} {checkpoint.shape} in {checkpoint.codec.spec}"
            )
        try:
            raw = get_codec(spec) is RAW  # encoded records vary in length: decoding checks them
        except ValueError as error:
            raise CorruptStoreError(f"{journal.path}: {error}") from None
        row = math.prod(journal.image_shape) * journal.image_dtype.itemsize
        if (
            raw
            and any(entry.length != row for entry in journal.entries.values())
            or sum(image_id >= first for image_id in journal.entries) != self._count - first
        ):
            raise CorruptStoreError(f"{journal.path}: records that are not whole images or leave a gap in the ids")

    def _refresh(self) -> None:
        """Under the writer lock: catch up with other writers, then remove what killed writes left."""
        if self._damage or not self._is_current(self._checkpoint):
            self._load()
        elif self._journal is not None:
            try:
                if self._journal.refresh():
                    self._count = self._journal.next_id(self._checkpoint_count())
                    self._check_journal()
                    self._in_journal = None
            except CorruptStoreError as error:
                self._release()
                self._damage = error
        if not self._damage:  # a damaged store's files stay until store_many replaces them
            self._remove_stale()

    def _release(self) -> None:
        for part in self._checkpoint, self._journal:
            if part is not None:
                part.close()
        self._checkpoint = self._journal = self._damage = self._in_journal = None
        self._count = 0

    def _switch(self, checkpoint: OpenCheckpoint) -> None:
        """After a commit: ``checkpoint`` (open) is the view, with an empty journal; the old journal goes (it names
        the old checkpoint)."""
        self._release()
        self._journal_path.unlink(missing_ok=True)
        self._checkpoint, self._journal = checkpoint, Journal(self._journal_path, checkpoint.token)
        self._count = checkpoint.count

    def _checkpoint_count(self) -> int:
        return self._checkpoint.count if self._checkpoint is not None else 0

    def __len__(self) -> int:
        if self._damage:
            raise damaged(self._damage)
        return self._count

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        if self._checkpoint is not None:
            return self._checkpoint.shape
        return self._journal.image_shape if self._journal is not None else None

    @property
    def image_dtype(self) -> np.dtype | None:
        if self._checkpoint is not None:
            return self._checkpoint.dtype
        return self._journal.image_dtype if self._journal is not None else None

    @property
    def recorded_codec(self) -> str | None:
        """The codec the store records (for an EncodedStore), None while it is empty."""
        if self._checkpoint is not None:
            return self._checkpoint.codec.spec
        journal = self._journal
        return (journal.codec or self.DEFAULT_CODEC) if journal is not None and journal.image_shape else None

    # -- single writes ------------------------------------------------------------------------
    def single_write_cycle(self) -> int:
        return compaction_cycle(self._checkpoint_count())

    def _records_codec(self) -> Codec:
        """The codec of the journal's records: the checkpoint's (none yet: an EncodedStore's first writes)."""
        return self._checkpoint.codec if self._checkpoint is not None else self.codec

    def _record(self, image: np.ndarray, codec: Codec) -> tuple[np.ndarray | bytes, str | None]:
        """The payload of ``image``'s journal record and the codec a new journal names (None: raw pixels)."""
        return (image, None) if codec is RAW else (codec.encode(image), codec.spec)

    def _put(self, image: np.ndarray, image_id: int, label: int) -> None:
        if self._journal is None:  # the first image of a store that journals only over a checkpoint: one of one
            self._replace_all(image[None], np.array([label], np.int64))
            return
        payload, spec = self._record(image, self._records_codec())
        if self._journal.needs_compaction(self._checkpoint_count()):
            self._fold()
        self._journal.append(image_id, label, payload, image.dtype, image.shape, durable=self.durable, codec=spec)
        if image_id == self._count:
            self._count += 1
            self._in_journal = None
        elif self._in_journal is not None:
            self._in_journal[image_id] = True

    def _read_payloads(self, start: int, stop: int) -> tuple[list[bytes | memoryview], np.ndarray]:
        """The encoded bytes and labels of images start..stop-1 as this handle reads them (a store with a codec)."""
        count = self._checkpoint_count()
        stored, labels = self._checkpoint.payloads(np.arange(start, min(stop, count))) if start < count else ([], [])
        return self._journal.overlay_payloads(start, stop, stored, labels)

    # -- reads --------------------------------------------------------------------------------
    def _read_rows(self, start: int, out: np.ndarray, labels: np.ndarray) -> None:
        """Fill ``out``/``labels`` with the checkpoint's images start..start+len(out)-1."""
        self._checkpoint.read_rows(start, out, labels)

    def _take(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        """Fill ``out[i]``/``labels[i]`` with the checkpoint's image ``ids[i]``."""
        self._checkpoint.take(ids, out, labels)

    def _read_into(self, out: np.ndarray, labels: np.ndarray) -> None:
        self._read_range_into(0, out, labels)

    def _read_range_into(self, start: int, out: np.ndarray, labels: np.ndarray) -> None:
        """Fill ``out``/``labels`` with images start..: checkpoint rows, then journal records over them."""
        stop = start + len(out)
        in_checkpoint = min(stop, self._checkpoint_count()) - start
        if in_checkpoint > 0:
            self._read_rows(start, out[:in_checkpoint], labels[:in_checkpoint])
        for image_id in self._journal.ids_between(start, stop):
            self._read_record(image_id, out, labels, image_id - start)

    def _read_batch_into(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        """Gather from the checkpoint, then put journal records in their places."""
        mask = self._journal_mask() if self._journal.entries else None
        gather_overlaid(mask, ids, out, labels, self._take, self._read_record)

    def _read_record(self, image_id: int, out: np.ndarray, labels: np.ndarray, position: int) -> None:
        labels[position] = self._journal.decode_into(image_id, self._records_codec(), out[position])

    def _journal_mask(self) -> np.ndarray:
        """True for the ids whose newest version is a journal record (rebuilt after a write)."""
        if self._in_journal is None:
            self._in_journal = np.zeros(self._count, bool)
            self._in_journal[np.fromiter(self._journal.entries, np.int64, len(self._journal.entries))] = True
        return self._in_journal

    def _close(self) -> None:
        self._release()
