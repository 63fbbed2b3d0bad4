"""RocksDB (through ``rocksdict``, raw mode): one key per image (the id as 8 big-endian bytes), the value a
self-describing header and the raw pixels (records.py: magic, dtype, shape, label, and with
``checksum=True`` an xxh3_64 trailer seeded with the id), checked on every read: a value that is not
exactly what the store holds raises CorruptStoreError naming the id. No pickle.

Layout: ``DIR/rocksdb.json`` (records.py metadata: token, dtype, image shape, checksum, the settings
``compression``, ``bloom_bits``, ``block_cache`` (rocksdb_format.py), and the high-water marks ``count``
and ``sequence``) names the live database ``DIR/db-<token>/`` (an ordinary RocksDB: plain
``rocksdict.Rdict(path)`` reads it); ``DIR/.writer.lock`` is this package's writer lock.

Writes, under the writer lock (one writer at a time, any process):
- ``store_many`` writes a new database in ``DIR/.db-<token>.tmp/``: sorted SST files written with
  ``SstFileWriter`` and ingested (no write-ahead log, no memtable), renames it to ``db-<token>`` and
  replaces ``rocksdb.json`` (the commit point, an atomic rename); the old database goes after. A killed
  or failed write leaves the old contents; the next writer removes what it left.
- ``store_single`` opens the live database read-write for the duration of the write (RocksDB's own
  lock is then held only while writing, so any handle in any process can be the next writer), puts
  one value with the write-ahead log on (the commit point), flushes it (a sorted run of one image),
  enables compactions if the disk has room for a merge of every file, waits for those RocksDB then runs
  (closing would cancel them; format.settle) and closes. Then it raises the marks in ``rocksdb.json``. A
  session costs a few milliseconds (an open and a flush).

Upkeep: RocksDB's universal (size-tiered) compaction. Past L0_COMPACT_FILES sorted runs it merges the newer runs,
of similar sizes, with each other (never the store's bulk); once they hold FULL_COMPACT_PERCENT of the oldest
run's bytes it merges them all into it (``upkeeps`` counts these). That O(N) merge comes every N/20 writes, so a
write pays for about 20 image copies, whatever N, plus the merges of the newer runs (a run is merged a logarithmic
number of times): amortised O(1) up to that logarithm, and reads check at most L0_COMPACT_FILES runs
(bloom filters); docs/benchmarks.md, "Single writes amortised", has the figures.

Reads: every handle reads through a read-only instance (``AccessType.read_only()``: no lock, nothing
written, every SST file opened at open), a snapshot of the store when the handle opened or last wrote;
a later commit that removes its files cannot take them away (they stay open). ``read_many`` iterates
(no block-cache fill), ``read_batch`` multi-gets (``Rdict.get(list)``), both into the caller's array.
An instance that opened while a writer changed the files, and failed, opens again.

Damage: RocksDB checks each block's CRC on read and its MANIFEST at open, and the values are checked
here; but RocksDB reads a log (WAL or MANIFEST) cut short, or with a bad record, as if a writer had
crashed: an older state. The marks catch that: a database whose sequence number (or count) is below
what ``rocksdb.json`` records raises CorruptStoreError. The marks are raised after each commit, so
they are lower bounds (a write killed between its commit and its mark only weakens the check). A
damaged store opened in mode "a" raises on reads and ``store_single``; ``store_many`` replaces it.

Durability: without ``durable`` nothing is fsynced by this package (RocksDB syncs the SST files it
writes and its MANIFEST); ``durable=True`` syncs the write-ahead log on each put (``sync=True``), and
fsyncs folders and the metadata before a write returns.
"""

from __future__ import annotations

import functools
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import rocksdict

from storage_impls.core.codecs import RAW
from storage_impls.core.encoded import EncodedStore, decode
from storage_impls.core.errors import (
    CorruptStoreError,
    MissingStoreError,
    StoreError,
    StoreLockedError,
    damaged,
)
from storage_impls.core.options import check_options
from storage_impls.core.records import (
    HEADER,
    KEY,
    ValueLayout,
    commit_aside,
    missing_store,
    refuse_foreign,
    remove_stale,
    write_meta,
)
from storage_impls.methods.rocksdb.format import (
    DB_DIR,
    DB_NAME,
    DEFAULTS,
    FORMAT,
    FORMAT_VERSION,
    FULL_COMPACT_PERCENT,
    L0_COMPACT_FILES,
    META,
    OPTIONS,
    close_db,
    fingerprint,
    is_rocks_error,
    load_meta,
    open_db,
    settle,
    typed_error,
    write_new_db,
)

OPEN_TRIES = 100  # a reader opens again when a writer changed the files while it opened
RETRY_SECONDS = 0.002
READAHEAD_BYTES = 2 << 20  # read_many's iterator reads ahead this much


def _typed(doing: str) -> Callable[[Callable], Callable]:
    """Turn the bare Exception rocksdict raises into this package's typed error."""

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def wrapper(self: RocksdbStore, *args: object) -> object:
            try:
                return method(self, *args)
            except Exception as error:
                if not is_rocks_error(error):
                    raise
                raise typed_error(self.directory, error, doing) from None

        return wrapper

    return decorate


def layout_of(meta: dict) -> ValueLayout:
    """The value layout a store's metadata describes."""
    return ValueLayout(meta["dtype"], meta["image_shape"], meta["checksum"], meta.get("codec", RAW.spec) != RAW.spec)


class RocksdbStore(EncodedStore):
    """Images as raw bytes under one key each in a RocksDB database, replaced whole by store_many."""

    method = "rocksdb"
    OPTIONS = {**OPTIONS, **EncodedStore.OPTIONS}
    read_cache_option = "block_cache"

    def __init__(
        self,
        directory: str | os.PathLike,
        mode: str = "a",
        *,
        compression: str | None = None,
        bloom_bits: int | None = None,
        block_cache: int | str | None = None,
        **options,
    ) -> None:
        # None: the store's recorded setting (a new store: DEFAULTS); a value: what this handle's store_many records
        self.settings = check_options(
            self.method, OPTIONS, {"compression": compression, "bloom_bits": bloom_bits, "block_cache": block_cache}
        )
        super().__init__(directory, mode, **options)

    # -- opening and catching up --------------------------------------------------------------
    def _open(self) -> None:
        self._meta_path = self.directory / META
        self._meta: dict | None = None
        self._db: rocksdict.Rdict | None = None
        self._damage: CorruptStoreError | None = None
        self._count = 0
        if not self._meta_path.exists():
            refuse_foreign(self.directory, self.method)
            if self.mode == "r":
                raise missing_store(self.directory, self.method, META)
        self._load()

    def _load(self) -> None:
        """Open a read-only view of the newest commit. A damaged store raises in mode "r"; in mode "a" the
        damage is kept and raised by reads and store_single, so that store_many can replace it."""
        self._release()
        try:
            self._meta, self._db, self._count = self._open_view()
        except (CorruptStoreError, MissingStoreError) as error:
            self._release()
            if self.mode == "r":
                raise
            self._damage = error if isinstance(error, CorruptStoreError) else CorruptStoreError(str(error))

    def _open_view(self) -> tuple[dict | None, rocksdict.Rdict | None, int]:
        """The metadata, a read-only instance of its database and the count, as of one moment."""
        for _ in range(OPEN_TRIES):
            before = fingerprint(self.directory)
            db = None
            try:
                meta = load_meta(self._meta_path)
                if meta is None:
                    return None, None, 0
                db = open_db(self._folder(meta), self._read_settings(meta), read_only=True)
                return meta, db, self._check_view(db, meta)
            except Exception as error:
                close_db(db)
                # FileNotFoundError: rocksdict's, when a commit removed the folder named by the metadata just read
                if not (is_rocks_error(error) or isinstance(error, (StoreError, FileNotFoundError))):
                    raise
                if fingerprint(self.directory) == before:  # nothing changed meanwhile: the store is damaged
                    raise typed_error(self.directory, error, "opening its database") from None
                time.sleep(RETRY_SECONDS)
        raise StoreLockedError(f"{self.directory} changed under every one of {OPEN_TRIES} attempts to open it")

    def _check_view(self, db: rocksdict.Rdict, meta: dict) -> int:
        """The count of ``db`` (its last id + 1), checked against the marks and a dense start."""
        folder = self._folder(meta)
        sequence = db.latest_sequence_number()
        iterator = db.iter()
        iterator.seek_to_last()
        last = iterator.key() if iterator.valid() else None
        iterator.seek_to_first()
        first = iterator.key() if iterator.valid() else None
        iterator.status()
        del iterator
        if last is None or len(last) != KEY.size or first != KEY.pack(0):
            raise CorruptStoreError(
                f"{folder} is damaged: its keys are not image ids from 0 (first {first!r}, last {last!r})"
            )
        count = KEY.unpack(last)[0] + 1
        if sequence < meta["sequence"] or count < meta["count"]:
            raise CorruptStoreError(
                f"{folder} is damaged: it holds {count} images up to write {sequence}, but {META} records at least "
                f"{meta['count']} up to write {meta['sequence']} (a log file cut short or with a bad record)"
            )
        return count

    def _refresh(self) -> None:
        """Under the writer lock: catch up with other writers' commits, then remove what killed writes left."""
        try:
            changed = load_meta(self._meta_path) != self._meta
        except CorruptStoreError:
            changed = True
        if self._damage or changed:
            self._load()
        if not self._damage:
            self._remove_stale()

    def _remove_stale(self) -> None:
        """Remove temporaries and databases the metadata does not name (left by killed or replaced writes)."""
        remove_stale(self.directory, DB_NAME, DB_DIR.format(token=self._meta["token"]) if self._meta else None)

    def _folder(self, meta: dict) -> Path:
        return self.directory / DB_DIR.format(token=meta["token"])

    def _read_settings(self, meta: dict) -> dict:
        """The store's settings, with this handle's block cache if it asked for one."""
        return {name: meta[name] for name in OPTIONS} | {k: v for k, v in self.settings.items() if k == "block_cache"}

    def _layout(self) -> ValueLayout:
        return layout_of(self._meta)

    def __len__(self) -> int:
        if self._damage:
            raise damaged(self._damage)
        return self._count

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        return self._meta["image_shape"] if self._meta else None

    @property
    def image_dtype(self) -> np.dtype | None:
        return np.dtype(self._meta["dtype"]) if self._meta else None

    @property
    def recorded_codec(self) -> str | None:
        return self._meta.get("codec", RAW.spec) if self._meta else None

    # -- writes -----------------------------------------------------------------------------------
    def _replace_all(self, images: np.ndarray, labels: np.ndarray) -> None:
        recorded = {name: self._meta[name] for name in OPTIONS} if self._meta else DEFAULTS
        settings = recorded | self.settings
        checksum = self.checksum if self.checksum is not None else bool(self._meta and self._meta["checksum"])
        codec = self.writing_codec(replacing=True)
        layout = ValueLayout(images.dtype.str, images.shape[1:], checksum, codec.spec != RAW.spec)
        token = uuid.uuid4().hex
        temporary, folder = self.directory / f".db-{token}.tmp", self.directory / DB_DIR.format(token=token)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "token": token,
            "dtype": layout.dtype,
            "image_shape": list(layout.shape),
            "checksum": checksum,
            **settings,
            "count": len(images),
        }
        if layout.encoded:
            meta["codec"] = codec.spec

        def write(temporary: Path) -> None:
            temporary.mkdir()
            meta["sequence"] = write_new_db(temporary, settings, layout, images, labels, codec)

        try:
            commit_aside(temporary, folder, write, self._meta_path, meta, durable=self.durable)
        except Exception as error:
            if is_rocks_error(error):
                raise typed_error(self.directory, error, "writing a new database") from None
            raise
        self._committed(meta | {"image_shape": layout.shape}, len(images))
        self._remove_stale()  # the old database

    def single_write_cycle(self) -> int:
        # a session adds a run of one image; the runs are merged into the oldest once they hold FULL_COMPACT_PERCENT of
        # its bytes, or once L0_COMPACT_FILES runs exist in a store too small for that
        return max(L0_COMPACT_FILES, math.ceil(self._count * FULL_COMPACT_PERCENT / 100))

    @_typed("writing an image")
    def _put(self, image: np.ndarray, image_id: int, label: int) -> None:
        if self._meta is None:  # the first image of a store: a database of one
            self._replace_all(image[None], np.array([label], np.int64))
            return
        meta, layout = dict(self._meta), self._layout()
        value = (
            layout.encoded_value(image_id, label, self.codec.encode(image))
            if layout.encoded
            else layout.value(image_id, label, image)
        )
        writing = rocksdict.WriteOptions()
        writing.sync = self.durable
        db = open_db(self._folder(meta), {name: meta[name] for name in OPTIONS}, read_only=False)
        try:
            count = self._check_view(db, meta)  # RocksDB's recovery may have found what a killed writer committed
            db.put(KEY.pack(image_id), value, write_opt=writing)  # the commit point
        except BaseException:
            close_db(db)
            raise
        try:  # committed: what follows is upkeep, and failing it must not report the write as failed
            meta.update(count=max(count, image_id + 1), sequence=db.latest_sequence_number())
            if settle(db):  # RocksDB's compaction of level 0 (and of the levels below it calls for) ran
                self.upkeeps += 1
        except Exception as error:  # noqa: BLE001
            if not is_rocks_error(error):
                raise
        finally:
            close_db(db)
        try:
            write_meta(self._meta_path, meta, durable=self.durable)
        except OSError:  # a full disk: the marks stay lower bounds, the write stands
            meta = self._meta
        self._committed(meta, max(count, image_id + 1))

    def _committed(self, meta: dict, count: int) -> None:
        """After this handle's commit: its view is the new store, read through an instance opened on demand."""
        self._release()
        self._meta, self._count = meta, count

    # -- reads ----------------------------------------------------------------------------------
    def _view(self) -> rocksdict.Rdict:
        """This handle's read-only instance, opened on demand after its own writes."""
        if self._damage:
            raise damaged(self._damage)
        if self._db is None:
            seen = self._meta, self._count
            self._load()
            if self._damage:
                raise self._damage
            if self._meta is None or self._layout() != layout_of(seen[0]) or self._count < seen[1]:
                raise MissingStoreError(
                    f"the rocksdb store in {self.directory} was replaced since this handle wrote it: open it again"
                )
        return self._db

    @_typed("reading an image")
    def _get(self, image_id: int) -> tuple[np.ndarray, int]:
        layout, db = self._layout(), self._view()
        value = db.get(KEY.pack(image_id))
        label = layout.check(value, image_id, self._folder(self._meta))
        if layout.encoded:
            image = np.empty(layout.shape, layout.dtype)
            self._decode(layout, value, image, image_id)
            return image, label
        pixels = np.frombuffer(value, layout.dtype, math.prod(layout.shape), HEADER.size)
        return pixels.reshape(layout.shape).copy(), label

    @_typed("reading images")
    def _read_into(self, out: np.ndarray, labels: np.ndarray) -> None:
        db = self._view()
        reading = rocksdict.ReadOptions()
        reading.fill_cache(False)  # a scan would evict what random reads cached
        reading.set_readahead_size(READAHEAD_BYTES)
        reading.set_iterate_upper_bound(KEY.pack(len(out)))
        self._copy(db.values(read_opt=reading), range(len(out)), out, labels)

    @_typed("reading a batch")
    def _read_batch_into(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        db = self._view()
        keys = ids.astype(">u8").tobytes()
        values = db.get([keys[start : start + KEY.size] for start in range(0, len(keys), KEY.size)])
        self._copy(values, ids.tolist(), out, labels)

    def _copy(self, values: Iterable[bytes | None], ids: Iterable[int], out: np.ndarray, labels: np.ndarray) -> None:
        """Fill ``out``/``labels`` from the values of ``ids``: raw pixels copied, encoded images decoded."""
        layout, where = self._layout(), self._folder(self._meta)
        if not layout.encoded:
            layout.copy_into(values, ids, out, labels, where)
            return
        ids = list(ids)
        decoded = 0
        for position, (image_id, value) in enumerate(zip(ids, values)):
            labels[position] = layout.check(value, image_id, where)
            self._decode(layout, value, out[position], image_id)
            decoded += 1
        if decoded < len(out):
            raise layout.error(None, ids[decoded], where)

    def _decode(self, layout: ValueLayout, value: bytes, target: np.ndarray, image_id: int) -> None:
        decode(self.codec, layout.payload(value), target, f"{self._folder(self._meta)}: image {image_id}")

    def _release(self) -> None:
        close_db(self._db)
        self._db, self._meta, self._damage, self._count = None, None, None, 0

    def _close(self) -> None:
        self._release()
