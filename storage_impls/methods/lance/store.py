"""lance: images in a Lance dataset (``pylance``), written and versioned by the library itself.

Layout: ``DIR/lance.json`` (records.py metadata: format, version, ``token``, ``dtype``, ``image_shape``,
``checksum``) names the live dataset ``DIR/images-<token>.lance/``, a plain Lance dataset (file format
2.2; ``lance.dataset(path).to_table()`` reads it) of one row per image: ``id``, ``label``, ``image``
(fixed_size_binary of the image's bytes), ``checksum`` in a checksummed store (lance_format.py).

Codecs (``lance:codec=jpeg-90``, ``png``, ``webp-80``, ...; codecs.py, encoding.py): ``image`` is then
variable-length ``binary`` holding each image's encoded file, and the codec is recorded in ``lance.json``
(``codec``; none: raw, the layout above) and in the schema metadata (``storage_impls.codec``), so a
``to_table()`` user decodes with any JPEG/PNG/WebP decoder. Plain ``binary``, not Lance's blob columns
(``lance-encoding:blob``, ``lance.blob_field``): those are for lazily read objects of megabytes; for images of
1-30 KB taking 256 shuffled rows by address was as fast (10 000 32x32 JPEGs: binary 2.8 ms, large_binary 3.0,
blob ``read_blobs`` 3.5; 1 500 256x256: 6.3, 6.8, 6.0-6.4 ms), ``binary`` arrives as one Arrow buffer instead
of a bytes object per image, and ``to_table()`` of a blob column returns descriptors, not the files. An
image is encoded once (``store_many`` with the handle's codec, ``store_single`` with the store's); a
compaction copies the stored bytes. ``checksum`` covers the stored bytes and is checked before decoding.

Writes, under the store's writer lock:
- ``store_many`` writes a fresh dataset with ``lance.write_dataset`` (Arrow batches that are views of the
  input, no per-row objects; one fragment per million rows, Lance's default) into
  ``.images-<token>.lance.tmp``, renames it into place, opens it, and then replaces the metadata file:
  the commit. A killed or failed write leaves the old dataset; the next writer removes what it left.
  A dataset of another dtype or shape needs no schema change, and a damaged store is written around.
- ``store_single`` commits one Lance version through the library's transaction API: the row goes into a
  fragment of its own (``write_fragments``); an append commits ``LanceOperation.Append``, a replacement
  ``LanceOperation.Update`` that also marks the old row deleted (``delete_rows`` at its row address), so
  the cost does not grow with the store (4-8 ms each at 10 and at 10 000 images). Lance's manifest
  (written aside, renamed into ``_versions/``) is the commit point.
- Each single write leaves a version (a manifest and a transaction file), a one-row data file and, for
  a replacement, a deletion file; commits and reads slow down as they pile up. Once the dataset keeps
  more than ``COMPACT_VERSIONS`` (16) versions, the next single write first compacts
  (``lance.optimize.Compaction``: fragments under ``COMPACT_TARGET_BYTES`` merged, deletions
  materialised past Lance's 10 % default) and removes every older version and unreferenced file
  (``cleanup_old_versions``): 20-50 ms every 16 writes, 1-3 ms a write amortised.
``durable=True`` fsyncs every new file and folder, data before the manifest that names it.

Reads: a handle opens the newest version of the named dataset, reads its ``id``, ``label`` (and
``checksum``) columns with each row's address once, and keeps that version (its snapshot).
``read_batch`` takes rows by address (``_take_rows``, which pylance marks internal) in blocks of at most
64 MiB of pixels and copies Arrow's buffer into the caller's array (or decodes each encoded image straight
into its slot): ``take`` by offset is as fast on a fresh dataset (5 ms for 256 shuffled ids of 10 000)
but slows with every deleted row (19 ms after one replaced image, 54 ms after 495); by address it stays at
5-7 ms. ``read_many`` scans (1.4-4x faster than taking every row) while rows 0..n-1 hold ids 0..n-1 in
order, as after ``store_many`` and appends. A later ``store_many`` or compaction removes the files of older
versions: a handle on one then raises MissingStoreError ("open it again"), never other data.

Lance is not fork-safe: in processes forked from one that had used it, a fresh handle crashed (SIGSEGV)
or hung in 10 of 30 tries. A handle refuses to open, read or write in such a process (RuntimeError naming
spawn; ``fork_safe = False`` says so to loaders): open stores in processes started with spawn or
forkserver, as benchmarks/workers.py does.
"""

from __future__ import annotations

import os
import re
import uuid
from datetime import timedelta
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
from lance.fragment import write_fragments
from lance.optimize import Compaction

from storage_impls.core.base import BatchReader, ImageStore
from storage_impls.core.codecs import RAW, get_codec
from storage_impls.core.encoded import EncodedStore
from storage_impls.core.errors import (
    CorruptStoreError,
    MissingStoreError,
    StoreLockedError,
    damaged,
)
from storage_impls.core.fileio import check_tree
from storage_impls.core.records import (
    check_image_fields,
    commit_aside,
    current_token,
    missing_store,
    read_meta,
    refuse_foreign,
    remove_stale,
)
from storage_impls.methods.lance.format import Snapshot, batch, encoded, lance_errors, listing, schema, sync_new

META, FORMAT, FORMAT_VERSION = "lance.json", "storage_impls.lance", 1
FOLDER = "images-{token}.lance"
FOLDER_NAME = re.compile(r"images-[0-9a-f]{32}\.lance")
DATA_STORAGE_VERSION = "2.2"  # Lance's file format: the library's stable default, pinned so files do not change
WRITE_BLOCK_BYTES = 64 << 20  # pixels per Arrow batch handed to write_dataset
COMPACT_VERSIONS = 16  # versions kept before a single write first compacts and cleans up
COMPACT_TARGET_BYTES = 8 << 20  # compaction merges fragments up to this many bytes of pixels (larger ones stay)
OPEN_TRIES = 100  # a reader opens again when a writer commits while it opens
_LANCE_PID: int | None = None  # the process in which this module first used lance (and lance started its threads)


def _check_process() -> None:
    """RuntimeError in a process forked from one that used lance, where lance crashes (SIGSEGV) or hangs at times."""
    global _LANCE_PID
    if _LANCE_PID is None:
        _LANCE_PID = os.getpid()
    elif _LANCE_PID != os.getpid():
        raise RuntimeError(
            f"lance is not fork-safe: this process was forked from process {_LANCE_PID}, which had used "
            "it, and could crash or hang here; open lance stores in processes started with spawn or "
            "forkserver (multiprocessing.get_context('spawn'), "
            "DataLoader(multiprocessing_context='spawn'))"
        )


class LanceStore(EncodedStore):
    """A Lance dataset named by ``lance.json``; single writes are Lance versions, compacted past a threshold."""

    method = "lance"
    #: False: a process forked after lance ran in its parent cannot use it (_check_process); open stores after a spawn
    fork_safe = False

    # -- opening and catching up --------------------------------------------------------------
    def _open(self) -> None:
        _check_process()
        self._meta_path = self.directory / META
        self._snapshot: Snapshot | None = None
        self._damage: CorruptStoreError | None = None
        if not self._meta_path.exists():
            refuse_foreign(self.directory, self.method)
            if (self.directory / "_versions").is_dir():
                raise CorruptStoreError(
                    f"{self.directory} is a Lance dataset written by another tool ({META} is "
                    "missing): open a folder of its own, or read it with lance.dataset()"
                )
            if self.mode == "r":
                raise missing_store(self.directory, self.method, META)
        self._load()

    def _load(self) -> None:
        """Open the newest version of the named dataset. A damaged store raises CorruptStoreError in mode "r"; in
        mode "a" the damage is kept and raised by reads, so that store_many can repair it."""
        self._release()
        try:
            self._snapshot = self._open_consistent()
        except (CorruptStoreError, MissingStoreError) as error:
            if self.mode == "r":
                raise
            self._damage = error if isinstance(error, CorruptStoreError) else CorruptStoreError(str(error))

    def _open_consistent(self) -> Snapshot | None:
        """The dataset the metadata names, at a version no writer removed while it was being read."""
        for _ in range(OPEN_TRIES):
            meta = self._read_meta()
            if meta is None:
                return None
            folder = self.directory / FOLDER.format(token=meta["token"])
            versions = _manifests(folder)
            try:
                return Snapshot(folder, meta)
            except (FileNotFoundError, CorruptStoreError) as error:
                if self._token() != meta["token"] or _manifests(folder) != versions:
                    continue  # a store_many replaced the dataset, or a compaction removed the version being read
                if isinstance(error, FileNotFoundError):
                    raise MissingStoreError(f"lance store {self.directory}: {error.filename} is missing") from None
                raise
        raise StoreLockedError(f"{self.directory} changed under every one of {OPEN_TRIES} attempts to open it")

    def _read_meta(self) -> dict | None:
        meta = read_meta(self._meta_path, FORMAT)
        if meta is None:
            return None
        try:
            check_image_fields(meta, FORMAT_VERSION)
            if not FOLDER_NAME.fullmatch(FOLDER.format(token=meta["token"])) or type(meta["checksum"]) is not bool:
                raise ValueError("a field is out of range")
            get_codec(meta.get("codec", RAW.spec))
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptStoreError(f"{self._meta_path}: not a lance store's metadata ({error})") from None
        return meta

    def _token(self) -> str | None:
        return current_token(self._meta_path, FORMAT)

    def _refresh(self) -> None:
        """Under the writer lock: catch up with other writers, then remove what killed writes left."""
        _check_process()
        snapshot = self._snapshot
        if self._damage or self._token() != (snapshot.meta["token"] if snapshot else None):
            self._load()
        elif snapshot is not None:
            try:
                with lance_errors(snapshot.folder):
                    latest = snapshot.dataset.latest_version
            except (FileNotFoundError, CorruptStoreError):
                latest = None
            if latest != snapshot.version:
                self._load()
        if not self._damage:  # a damaged store's files stay until store_many replaces them
            self._remove_stale()

    def _remove_stale(self) -> None:
        """Remove temporaries and datasets the metadata does not name (left by killed or replaced writes)."""
        remove_stale(self.directory, FOLDER_NAME, self._snapshot.folder.name if self._snapshot else None)

    def _release(self) -> None:
        self._snapshot, self._damage = None, None

    def __len__(self) -> int:
        if self._damage:
            raise damaged(self._damage)
        return len(self._snapshot) if self._snapshot else 0

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        return self._snapshot.shape if self._snapshot else None

    @property
    def image_dtype(self) -> np.dtype | None:
        return self._snapshot.dtype if self._snapshot else None

    @property
    def recorded_codec(self) -> str | None:
        return self._snapshot.codec.spec if self._snapshot else None

    # -- writes ---------------------------------------------------------------------------------
    def _replace_all(self, images: np.ndarray, labels: np.ndarray) -> None:
        """Write a fresh dataset aside, rename it into place, open it, then switch the metadata to it (the commit)."""
        checksum = self.checksum if self.checksum is not None else bool(self._snapshot and self._snapshot.checksum)
        codec = self.writing_codec(replacing=True)
        token = uuid.uuid4().hex
        folder = self.directory / FOLDER.format(token=token)
        temporary = self.directory / f".{folder.name}.tmp"
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "token": token,
            "dtype": images.dtype.str,
            "image_shape": list(images.shape[1:]),
            "checksum": checksum,
        }
        if codec is not RAW:
            meta["codec"] = codec.spec
        table_schema = schema(images.dtype, images.shape[1:], checksum, codec)
        step = max(1, WRITE_BLOCK_BYTES // images[0].nbytes)
        batches = (
            batch(table_schema, start, encoded(codec, images[start : start + step]), labels[start : start + step])
            for start in range(0, len(images), step)
        )

        def write(temporary: Path) -> None:
            with lance_errors(temporary):
                lance.write_dataset(
                    pa.RecordBatchReader.from_batches(table_schema, batches),
                    str(temporary),
                    table_schema,
                    mode="create",
                    data_storage_version=DATA_STORAGE_VERSION,
                )

        snapshot = commit_aside(
            temporary,
            folder,
            write,
            self._meta_path,
            meta,
            durable=self.durable,
            sync=lambda temporary: sync_new(temporary, set()),
            open_folder=lambda folder: Snapshot(folder, {**meta, "image_shape": tuple(images.shape[1:])}),
        )
        self._release()
        self._snapshot = snapshot
        self._remove_stale()  # the old dataset

    def single_write_cycle(self) -> int:
        return COMPACT_VERSIONS

    def _put(self, image: np.ndarray, image_id: int, label: int) -> None:
        """Commit one Lance version holding the image: an Append, or an Update that also deletes the old row."""
        if self._snapshot is None:  # the first image of a store: a dataset of one
            self._replace_all(image[None], np.array([label], np.int64))
            return
        if len(_manifests(self._snapshot.folder)) > COMPACT_VERSIONS:
            self.upkeeps += 1
            self._compact()
        snapshot = self._snapshot
        dataset, folder = snapshot.dataset, snapshot.folder
        before = listing(folder) if self.durable else set()
        payload = encoded(
            snapshot.codec, image[None]
        )  # the store's codec; encoded once, never again (compaction copies bytes)
        row = pa.Table.from_batches([batch(snapshot.schema, image_id, payload, np.array([label], np.int64))])
        with lance_errors(folder):
            fragments = write_fragments(row, dataset, snapshot.schema, data_storage_version=DATA_STORAGE_VERSION)
            if image_id == len(snapshot):
                operation = lance.LanceOperation.Append(fragments)
            else:
                address = int(snapshot.addresses[image_id])
                kept = dataset.get_fragment(address >> 32).delete_rows([address & 0xFFFFFFFF])
                operation = lance.LanceOperation.Update(
                    removed_fragment_ids=[] if kept else [address >> 32],
                    updated_fragments=[kept] if kept else [],
                    new_fragments=fragments,
                )
            if self.durable:
                sync_new(folder, before)  # data and deletion files are on disk before the manifest that names them
            try:
                committed = lance.LanceDataset.commit(dataset, operation, read_version=snapshot.version)
            except BaseException:
                self._load()  # whatever the commit did, the handle reads what is on disk
                raise
        if self.durable:
            sync_new(folder, before)
        if not snapshot.committed(committed, image_id, label, row):
            self._load()

    def _compact(self) -> None:
        """Merge small fragments and materialise deletions past Lance's threshold (``lance.optimize.Compaction``:
        plan, rewrite, commit, so that durable stores fsync the new files before the manifest naming them), then
        remove every older version and unreferenced file (the writer lock is held: no write is in flight)."""
        snapshot = self._snapshot
        dataset, folder = snapshot.dataset, snapshot.folder
        before = listing(folder) if self.durable else set()
        options = {"target_rows_per_fragment": max(1, COMPACT_TARGET_BYTES // snapshot.row)}
        with lance_errors(folder):
            rewrites = [task.execute(dataset) for task in Compaction.plan(dataset, options).tasks]
            if rewrites:
                if self.durable:
                    sync_new(folder, before)
                Compaction.commit(dataset, rewrites, options)
                if self.durable:
                    sync_new(folder, before)
            check_tree(folder)  # its clean-up deletes what it does not know, wherever a link leads: none may be there
            lance.dataset(str(folder)).cleanup_old_versions(
                older_than=timedelta(0), delete_unverified=True, error_if_tagged_old_versions=False
            )
        self._load()
        if self._damage:
            raise self._damage

    # -- reads --------------------------------------------------------------------------------
    def _get(self, image_id: int) -> tuple[np.ndarray, int]:
        image, label = np.empty((1, *self.image_shape), self.image_dtype), np.empty(1, np.int64)
        self._take(np.array([image_id], np.int64), image, label)
        return image[0], int(label[0])

    def _read_into(self, out: np.ndarray, labels: np.ndarray) -> None:
        self._take(None, out, labels)

    def _read_batch_into(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        self._take(ids, out, labels)

    def _take(self, ids: np.ndarray | None, out: np.ndarray, labels: np.ndarray) -> None:
        """Images ``ids`` (None: 0..len(out)-1) into ``out``; a file gone is MissingStoreError, never other data."""
        _check_process()
        snapshot = self._snapshot
        try:
            if ids is None:
                snapshot.read_rows(out, labels)
            else:
                snapshot.take(ids, out, labels)
        except FileNotFoundError as error:
            if self._expired(snapshot):
                raise MissingStoreError(
                    f"the lance store in {self.directory} was replaced or compacted since this "
                    f"handle opened it ({snapshot.folder.name} version {snapshot.version} is "
                    "gone): open it again"
                ) from None
            raise MissingStoreError(f"lance store {self.directory}: {error.strerror} in {snapshot.folder}") from None

    def _expired(self, snapshot: Snapshot) -> bool:
        """True if a later commit (a store_many, or a compaction's cleanup) may have removed the snapshot's files."""
        if self._token() != snapshot.meta["token"]:
            return True
        try:
            with lance_errors(snapshot.folder):
                return snapshot.dataset.latest_version != snapshot.version
        except (FileNotFoundError, CorruptStoreError):
            return False

    def _close(self) -> None:
        self._release()

    @classmethod
    def library_reader(cls, directory: Path, image_shape: tuple[int, ...]) -> tuple[str, BatchReader]:
        from storage_impls.methods.lance.reference import take_reader

        meta = read_meta(directory / META, FORMAT)
        if meta is None:
            raise missing_store(directory, cls.method, META)
        return "pylance alone (take)", take_reader(directory / FOLDER.format(token=meta["token"]))

    @classmethod
    def remote_reader(cls) -> type[ImageStore]:
        from storage_impls.methods.lance.remote import RemoteLanceStore  # it imports this module

        return RemoteLanceStore


def _manifests(folder: Path) -> set[str]:
    """The manifest files of the dataset in ``folder``: one per version it keeps."""
    try:
        return {name for name in os.listdir(folder / "_versions") if name.endswith(".manifest")}
    except FileNotFoundError:
        return set()
