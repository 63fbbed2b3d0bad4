"""LMDB: one key per image (the id as 8 big-endian bytes), the value a header and the raw pixels.

Layout: ``data.mdb`` and ``lock.mdb`` (LMDB's), ``.writer.lock`` (this package's writer lock).
Values are described in lmdb_format.py: header (magic, version, shape, label), pixels, and with
``checksum=True`` an xxh3_64 of label and pixels seeded with the id (in the header), so bit rot,
and a value found under another id, raise CorruptStoreError naming the id. No pickle: loading
pickles runs arbitrary code. A store records its checksum setting in its values (all carry one
or none): store_single follows the store, store_many writes what the handle asks (None: keep).

Atomicity: ``store_many`` is one write transaction (drop everything, append every key) and
``store_single`` one put in one transaction, so a killed or failed write leaves the old
contents. A full disk raises NoSpaceError naming the directory, and ``data.mdb`` is cut back
to its committed pages (what the failed write appended; under LMDB's writer mutex). The map is
address space (1 TiB where possible, lmdb_env.py), grown on ``MapFullError``; the file grows only
as it fills. Values larger than the staging block are filled in the pages LMDB allocated for
them (lmdb_format.py), so a huge image costs one copy in memory (LMDB's), not two.

Concurrency: one writer at a time (the writer lock in base, LMDB's own mutex besides); readers
never wait (MVCC). A handle reads one snapshot, a read transaction it keeps open: the store as it
was at open or at this handle's last write (a writer catches up under the writer lock first);
open the store again to see later writes. Only if LMDB ends that transaction (a map resize in
this process, a fork) is a new one taken, on the newest commit; a store replaced meanwhile with
other counts or shapes then raises MissingStoreError. An open handle pins its snapshot's pages
(LMDB cannot reuse them), so close handles you no longer need. Handles on one store in one process
share one LMDB environment (lmdb_env.py), which must not cross a fork.

Readers' flags: the environment is opened writable where the files allow (a writing handle in the
process may share it), ``readonly=True`` where they do not, and ``lock=False`` where not even
``lock.mdb`` can be opened or created (0444 files, a 0555 folder): safe only while nobody writes
the store. ``lmdb:readahead=false`` (set by the first handle on a store in a process) turns off the
kernel's readahead (LMDB's MDB_NORDAHEAD), which helps random reads (``read_batch``) of a store larger
than the memory (with readahead, a cold epoch in a memory cgroup of a fifth of the store thrashed or was
killed) and hurts those of a store that fits (a cold epoch 5-7x slower); by default (neither given) it is
on when ``data.mdb`` fits in half the memory the process may use (core/advice.py's ``fits_in_memory``).
``readonly_media=True`` (mode "r" only) opens with ``lock=False`` at once, and so does any reader of
a store on a read-only file system: nothing is written, ``lock.mdb`` included, for media no writer can
change. Otherwise a reader uses ``lock.mdb`` (creating it if missing), the one file mode "r" writes: LMDB's
reader table, which keeps a writer in another process from reusing the pages a reader reads.

Durability: by default commits do not fsync (``sync=False``, ``metasync=False``): data reach the
OS at once. With ``durable=True`` LMDB fsyncs the data before writing the meta page and the meta
page after, so a power cut leaves the old or the new contents.

Damage: ``data.mdb`` is checked with ``pread`` before LMDB maps it (meta pages, length, both
B-trees: lmdb_file.py), since a short file would kill the process with SIGBUS; LMDB's own errors
and bad values raise CorruptStoreError. A damaged store opened in mode "a" raises on reads and
``store_single``; ``store_many`` rebuilds it into a new ``data.mdb`` (written in ``rebuild.tmp/``,
then renamed over the old one with a fresh ``lock.mdb``). A ``data.mdb`` truncated while a
process has it open can still kill that process: LMDB maps it.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import lmdb
import numpy as np

from storage_impls.core.advice import fits_in_memory
from storage_impls.core.base import BatchReader
from storage_impls.core.codecs import RAW
from storage_impls.core.encoded import EncodedStore, decode
from storage_impls.core.errors import CorruptStoreError, MissingStoreError, NoSpaceError, is_no_space, no_space_error
from storage_impls.core.fileio import fsync_path
from storage_impls.core.options import check_options, flag
from storage_impls.core.records import KEY, checksum_of, refuse_foreign
from storage_impls.methods.lmdb.env import (
    DATA_FILE,
    HEADROOM,
    MIN_MAP_SIZE,
    SharedEnv,
    acquire,
    catch_up,
    commit,
    release,
    replace_data_file,
    store_error,
    typed_errors,
)
from storage_impls.methods.lmdb.format import LmdbValueLayout, parse_layout, put_all, put_value

REBUILD_DIR = "rebuild.tmp"  # where store_many rebuilds a damaged store


class LmdbStore(EncodedStore):
    """Images as raw bytes (or encoded: ``lmdb:codec=jpeg-90``) under one key each in an LMDB environment."""

    method = "lmdb"
    reads_through_map = True  # LMDB maps its data file

    @classmethod
    def library_versions(cls) -> dict[str, str]:
        return {"lmdb": lmdb.__version__, "lmdb_library": ".".join(map(str, lmdb.version()))}

    @classmethod
    def library_reader(cls, directory: Path, image_shape: tuple[int, ...]) -> tuple[str, BatchReader]:
        from storage_impls.methods.lmdb.reference import raw_reader

        return "raw py-lmdb txn.get loop", raw_reader(directory, image_shape)

    OPTIONS = {**EncodedStore.OPTIONS, "readahead": flag()}

    def __init__(
        self,
        directory: str | os.PathLike,
        mode: str = "a",
        *,
        readahead: bool | str | None = None,
        readonly_media: bool = False,
        **options,
    ) -> None:
        if readonly_media and mode != "r":
            raise ValueError("readonly_media=True is for read-only opens (mode='r') of stores nobody writes")
        self.readonly_media = readonly_media
        # None: read ahead when data.mdb fits in the memory this process may use (core/advice.py), decided at open
        self.readahead = check_options(self.method, {"readahead": flag()}, {"readahead": readahead}).get("readahead")
        super().__init__(directory, mode, **options)

    # -- opening and catching up ------------------------------------------------------------
    def _open(self) -> None:
        self._shared: SharedEnv | None = None
        self._snapshot: lmdb.Transaction | None = None
        self._layout: LmdbValueLayout | None = None
        self._count = 0
        self._damage: str | None = None
        self._rebuild_dir = str(self.directory / REBUILD_DIR)
        created = not (self.directory / DATA_FILE).exists()
        if created:
            refuse_foreign(self.directory, self.method)
        created &= self.mode == "a"
        try:
            self._shared = self._acquire()
            self._shared.handles.add(self)
            self._load()
        except CorruptStoreError as error:
            if self.mode == "r":
                self._close()
                raise
            self._damage = str(error)  # raised by reads and store_single; store_many rebuilds
        if created and self.durable:
            fsync_path(self.directory)

    def _acquire(self) -> SharedEnv:
        if self.readahead is None:
            data = self.directory / DATA_FILE
            self.readahead = fits_in_memory(data.stat().st_size if data.exists() else 0)
        return acquire(
            self.directory,
            create=self.mode == "a",
            writer=self.mode == "a",
            durable=self.durable,
            readahead=self.readahead,
            lockless=self.readonly_media,
        )

    def _load(self) -> None:
        """Take a new snapshot (a read transaction on the newest commit) and read its count and value layout."""
        try:
            self._count, self._layout = self._read_view(self._renew_snapshot())
        except lmdb.Error as error:
            raise store_error(self.directory, error, "reading its first and last keys") from None
        self._damage = None

    def _renew_snapshot(self) -> lmdb.Transaction:
        """End this handle's snapshot and take one of the newest commit."""
        self._end_snapshot()
        env = self._shared.env
        try:
            self._snapshot = env.begin(buffers=True)
        except lmdb.MapResizedError:
            env.set_mapsize(0)  # another process grew the map: adopt its size
            self._snapshot = env.begin(buffers=True)
        return self._snapshot

    def _read_view(self, txn: lmdb.Transaction) -> tuple[int, LmdbValueLayout | None]:
        """The count and value layout of the store as ``txn`` sees it, checking that ids are dense."""
        count = txn.stat()["entries"]
        if not count:
            return 0, None
        cursor, layout = txn.cursor(), None
        for image_id in (0, count - 1):
            found = cursor.first() if image_id == 0 else cursor.last()
            if not found or cursor.key() != KEY.pack(image_id):
                raise CorruptStoreError(
                    f"{self.directory / DATA_FILE} is damaged: it counts {count} images "
                    f"but image {image_id} is not where it belongs"
                )
            if layout is None:
                with contextlib.suppress(CorruptStoreError):  # a damaged first value: use the last one
                    layout = parse_layout(cursor.value())
        if layout is None:
            raise CorruptStoreError(
                f"{self.directory / DATA_FILE} is damaged: neither its first nor its last value is an image header"
            )
        return count, layout

    def _end_snapshot(self) -> None:
        if self._snapshot is not None:
            with contextlib.suppress(lmdb.Error):  # already ended by a map resize or a rebuild
                self._snapshot.abort()
            self._snapshot = None

    def _refresh(self) -> None:
        if os.path.lexists(self._rebuild_dir):
            shutil.rmtree(self._rebuild_dir, ignore_errors=True)  # left by a killed rebuild
        try:
            if self._shared is None:
                self._shared = self._acquire()
                self._shared.handles.add(self)
            elif not catch_up(self._shared) and self._damage is None and self._is_newest():
                return  # no other writer committed since this handle's snapshot
            self._load()
        except CorruptStoreError as error:
            self._damage = str(error)

    def _is_newest(self) -> bool:
        """Whether this handle's snapshot is of the newest commit."""
        try:
            return self._snapshot.id() == self._shared.env.info()["last_txnid"]
        except lmdb.Error:  # ended by a map resize
            return False

    def __len__(self) -> int:
        if self._damage is not None:
            raise CorruptStoreError(f"{self._damage} (store_many rebuilds the store)")
        return self._count

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        return None if self._layout is None else self._layout.shape

    @property
    def image_dtype(self) -> np.dtype | None:
        return None if self._layout is None else self._layout.dtype

    @property
    def recorded_codec(self) -> str | None:
        return None if self._layout is None else self._layout.codec

    # -- writing ----------------------------------------------------------------------------
    def _replace_all(self, images: np.ndarray, labels: np.ndarray) -> None:
        checksummed = self.checksum if self.checksum is not None else bool(self._layout and self._layout.checksummed)
        layout = LmdbValueLayout(images.shape[1:], checksummed, images.dtype, self.writing_codec(replacing=True).spec)
        needed = len(images) * self._footprint(
            layout.size or layout.header_size + layout.pixel_bytes
        )  # encoded: at most raw, mostly
        if self._damage is None:
            try:
                env = self._shared.env
                commit(env, lambda txn: put_all(env, txn, layout, images, labels), needed, self.directory)
            except CorruptStoreError as error:  # LMDB met damage while dropping the old contents
                self._damage = str(error)
        if self._damage is not None:
            self._rebuild(layout, images, labels, needed)
        self._renew_snapshot()
        self._count, self._layout = len(images), layout

    def _rebuild(self, layout: LmdbValueLayout, images: np.ndarray, labels: np.ndarray, needed: int) -> None:
        """Write a new data.mdb beside the damaged one, then put it in place (a kill leaves the old one)."""
        staging = self.directory / REBUILD_DIR
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            env = lmdb.open(
                str(staging),
                map_size=HEADROOM * needed + MIN_MAP_SIZE,
                sync=self.durable,
                metasync=self.durable,
                max_dbs=0,
                lock=False,
            )  # private: no lock.mdb to map
            try:
                commit(env, lambda txn: put_all(env, txn, layout, images, labels), needed, self.directory, staging)
            finally:
                env.close()
            replace_data_file(self.directory, staging / DATA_FILE, self.durable)
        except lmdb.Error as error:
            raise store_error(self.directory, error, "rebuilding it") from None
        except OSError as error:
            if is_no_space(error) and not isinstance(error, NoSpaceError):
                raise no_space_error(self.directory, error) from None
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if self._shared is None:
            self._shared = self._acquire()
            self._shared.handles.add(self)
        self._damage = None

    def _put(self, image: np.ndarray, image_id: int, label: int) -> None:
        layout = self._layout or LmdbValueLayout(image.shape, bool(self.checksum), image.dtype, self.codec.spec)
        commit(
            self._shared.env,
            lambda txn: put_value(txn, layout, image_id, label, image),
            self._footprint(layout.size or layout.header_size + layout.pixel_bytes),
            self.directory,
        )
        self._renew_snapshot()
        self._count, self._layout = max(self._count, image_id + 1), layout

    def _footprint(self, value_size: int) -> int:
        """Bytes one value takes in the map: overflow pages for values above half a page, else a share of a leaf."""
        page = self._shared.env.stat()["psize"] if self._shared else mmap.PAGESIZE
        if value_size > page // 2:
            return math.ceil((value_size + 16) / page) * page
        return 2 * (value_size + KEY.size + 16)

    # -- reading ----------------------------------------------------------------------------
    def _snapshot_txn(self) -> lmdb.Transaction:
        """This handle's snapshot. A map resize in this process (a write that grew the map) ends every read
        transaction of the environment, and a fork ends them all (lmdb_env): the snapshot is then taken
        anew, on the newest commit, which must show the same count and shape as the one it replaces."""
        if self._damage is not None:
            raise CorruptStoreError(f"{self._damage} (store_many rebuilds the store)")
        if self._shared.env is None:
            raise ValueError(f"{self!r} was opened in another process (before a fork): open the store again here")
        if self._snapshot is not None:
            with contextlib.suppress(lmdb.Error):
                self._snapshot.id()  # raises once the transaction was ended
                return self._snapshot
        seen = self._count, self._layout
        self._load()
        if (self._count, self._layout) != seen:
            raise MissingStoreError(
                f"the store in {self.directory} changed since this handle read it "
                f"({seen[0]} images then, {self._count} now): open it again"
            )
        return self._snapshot

    def suspend_snapshot(self) -> None:
        """End this handle's snapshot until its next read (called just before the process forks)."""
        self._end_snapshot()

    @typed_errors("reading an image")
    def _get(self, image_id: int) -> tuple[np.ndarray, int]:
        layout = self._layout
        value = self._snapshot_txn().get(KEY.pack(image_id))
        label = layout.check(value, image_id, self.directory)
        if layout.codec != RAW.spec:
            image = np.empty(layout.shape, layout.dtype)
            self._decode(value, image, image_id)
            return image, label
        pixels = np.frombuffer(value, layout.dtype, math.prod(layout.shape), layout.header_size)
        return pixels.reshape(layout.shape).copy(), label

    @typed_errors("reading images")
    def _read_into(self, out: np.ndarray, labels: np.ndarray) -> None:
        self._copy(self._snapshot_txn().cursor().iternext(keys=False, values=True), range(len(out)), out, labels)

    @typed_errors("reading a batch")
    def _read_batch_into(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        keys = ids.astype(">u8").tobytes()
        get = self._snapshot_txn().get
        self._copy(
            map(get, [keys[start : start + KEY.size] for start in range(0, len(keys), KEY.size)]),
            ids.tolist(),
            out,
            labels,
        )

    def _copy(
        self, values: Iterable[memoryview | None], ids: list[int] | range, out: np.ndarray, labels: np.ndarray
    ) -> None:
        """Copy the pixels of ``values`` (those of ``ids``, in order) into ``out`` and their labels into
        ``labels``: each length checked here, headers and checksums all at once after."""
        layout, directory = self._layout, self.directory
        if layout.codec != RAW.spec:
            decoded = 0
            for position, (image_id, value) in enumerate(zip(ids, values)):
                labels[position] = layout.check(value, image_id, directory)
                self._decode(value, out[position], image_id)
                decoded += 1
            if decoded < len(out):
                raise layout.error(None, ids[decoded], directory)
            return
        size, pixels, header, summed = layout.size, layout.pixel_bytes, layout.header_size, layout.label_offset
        flat = memoryview(out).cast("B")
        headers = np.empty((len(out), header), np.uint8)
        header_bytes = memoryview(headers).cast("B")
        sums: list[int] = []
        copied = 0
        for position, (image_id, value) in enumerate(zip(ids, values)):
            if value is None or len(value) != size:
                raise layout.error(value, image_id, directory)
            flat[position * pixels : (position + 1) * pixels] = value[header:]
            header_bytes[position * header : (position + 1) * header] = value[:header]
            if layout.checksummed:
                sums.append(checksum_of(value[summed:], image_id))
            copied += 1
        if copied < len(out):
            raise layout.error(None, ids[copied], directory)
        labels[:] = layout.check_headers(headers, sums, ids, directory)

    def _decode(self, value: memoryview, target: np.ndarray, image_id: int) -> None:
        """Decode an encoded value (its header already checked) into ``target``."""
        decode(self.codec, value[self._layout.header_size :], target, f"{self.directory}: image {image_id}")

    def _close(self) -> None:
        self._end_snapshot()
        if self._shared is not None:
            release(self._shared)
            self._shared = None
