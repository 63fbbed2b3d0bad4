"""RocksDB plumbing for storage_impls.methods.rocksdb.store: the store's settings and metadata, the rocksdict options
they make, RocksDB's errors as this package's typed errors, and the bulk write of a new database.

Settings (recorded in ``rocksdb.json``, so a later open uses them): ``compression`` of data blocks
(``none``, ``lz4``, ``zstd``), ``bloom_bits`` (bits per key of a full bloom filter, 0 = none) and
``block_cache`` (bytes of RocksDB's LRU block cache of a reading handle, 0 = none: partial caching).
Databases are opened in raw mode (bytes keys and values, no pickle), with the block-based table
format's default 4 KiB blocks and per-block CRC checks on every read (``verify_checksums``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rocksdict

from storage_impls.core.codecs import Codec, get_codec
from storage_impls.core.errors import CorruptStoreError, MissingStoreError, StoreError, is_no_space, no_space_error
from storage_impls.core.options import byte_size, choice, integer
from storage_impls.core.records import KEY, ValueLayout, check_image_fields, read_meta

META, FORMAT, FORMAT_VERSION = "rocksdb.json", "storage_impls.rocksdb", 1
DB_DIR = "db-{token}"
DB_NAME = re.compile(r"db-[0-9a-f]{32}")
INGEST_DIR = "ingest"  # inside a database being written: the SST files before they are ingested
SST_BYTES = 64 << 20  # values per SST file written by store_many (RocksDB's target file size)
STAGING_BYTES = 8 << 20  # values assembled at a time
L0_COMPACT_FILES = 8  # sorted runs (one more per store_single session) that start RocksDB's universal compaction
FULL_COMPACT_PERCENT = 5  # newer runs over this % of the oldest's bytes: RocksDB merges them all into it
SETTLE_POLL_SECONDS = 0.001  # how often a writer session checks whether RocksDB's compactions are done
SETTLE_IDLE_SECONDS = 0.1  # a compaction pending with none running this long (RocksDB did not start it): stop waiting
KEEP_INFO_LOGS = 1
CONFIG = "rocksdict-config.json"  # rocksdict's own file, which it rewrites at every open (never read here)
SMALL_FILE = re.compile(r"CURRENT|IDENTITY|OPTIONS-\d+")  # files RocksDB reads whole at open
SMALL_FILE_BYTES = 1 << 20  # they hold a name, a UUID, the options (about 8 KB)

OPTIONS = {"compression": choice("none", "lz4", "zstd"), "bloom_bits": integer(0, 64), "block_cache": byte_size()}
DEFAULTS = {"compression": "none", "bloom_bits": 10, "block_cache": 32 << 20}
COMPRESSION = {
    "none": rocksdict.DBCompressionType.none,
    "lz4": rocksdict.DBCompressionType.lz4,
    "zstd": rocksdict.DBCompressionType.zstd,
}


def db_options(settings: dict, *, read_only: bool) -> rocksdict.Options:
    """rocksdict options (raw mode) for a database of ``settings``: a reader opens every SST file at
    open (so a later commit that removes them cannot take them away) and gets the block cache;
    a writer session runs RocksDB's universal compaction (store.py's docstring, "Upkeep") and never stalls."""
    options = rocksdict.Options(raw_mode=True)
    table = rocksdict.BlockBasedOptions()
    if settings["bloom_bits"]:
        table.set_bloom_filter(settings["bloom_bits"], False)  # a full (not block-based) filter per SST file
    if read_only and settings["block_cache"]:
        table.set_block_cache(rocksdict.Cache(settings["block_cache"]))
    else:
        table.disable_cache()
    options.set_block_based_table_factory(table)
    options.set_compression_type(COMPRESSION[settings["compression"]]())
    options.set_keep_log_file_num(KEEP_INFO_LOGS)
    options.set_skip_stats_update_on_db_open(True)
    options.set_max_open_files(-1)
    if not read_only:
        options.create_if_missing(True)
        options.set_disable_auto_compactions(True)  # until settle() finds room for them
        options.set_compaction_style(rocksdict.DBCompactionStyle.universal())
        options.set_level_zero_file_num_compaction_trigger(L0_COMPACT_FILES)
        tiers = rocksdict.UniversalCompactOptions()
        tiers.max_size_amplification_percent = FULL_COMPACT_PERCENT
        options.set_universal_compaction_options(tiers)
        options.set_level_zero_slowdown_writes_trigger(1 << 20)
        options.set_level_zero_stop_writes_trigger(1 << 20)
    return options


def open_db(folder: Path, settings: dict, *, read_only: bool) -> rocksdict.Rdict:
    """The database in ``folder``: read-only (no lock; nothing written in the store) or a writer's session.

    RocksDB reads its small files (CURRENT, IDENTITY, OPTIONS-*) whole: each is checked against SMALL_FILE_BYTES
    first. rocksdict (re)writes its ``rocksdict-config.json`` beside the database at every open, read-only
    included (strace shows nothing else written by a read-only open), so a reader opens through a private
    folder of symbolic links to the database's files but that one and the info logs (removed once open: a
    read-only instance has read its logs and opened every SST file by then): mode "r" writes nothing into
    the store, and opens stores it cannot write. The links also make the open one committed state: RocksDB
    reads the MANIFEST, then lists the folder for write-ahead logs; in the store's folder a session closing
    in between (its put flushed to an SST file that MANIFEST does not name, its log deleted) left an open
    with neither, one write behind, silently. The links are made from one listing taken before: a file
    deleted after it, or made after it and named by the CURRENT or MANIFEST read, is an error, and the
    reader opens again (tests/test_methods_rocksdb.py)."""
    options = db_options(settings, read_only=read_only)
    names = checked_names(folder)
    if not read_only:
        return rocksdict.Rdict(str(folder), options, access_type=rocksdict.AccessType.read_write())
    links = Path(tempfile.mkdtemp(prefix="rocksdb-reader-"))
    try:
        for name in names:
            if name != CONFIG and not name.startswith("LOG"):
                (links / name).symlink_to(folder / name)
        return rocksdict.Rdict(str(links), options, access_type=rocksdict.AccessType.read_only())
    finally:
        shutil.rmtree(links, ignore_errors=True)


def checked_names(folder: Path) -> list[str]:
    """The names in the database folder ``folder``; CorruptStoreError if a file RocksDB reads whole is over
    SMALL_FILE_BYTES (FileNotFoundError if the folder is gone)."""
    names = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if SMALL_FILE.fullmatch(entry.name) and entry.stat(follow_symlinks=False).st_size > SMALL_FILE_BYTES:
                raise CorruptStoreError(f"{entry.path} is over {SMALL_FILE_BYTES} bytes: not a RocksDB {entry.name}")
            names.append(entry.name)
    return names


def close_db(db: rocksdict.Rdict | None) -> None:
    """Close ``db`` (a writer's session flushes its memtable); errors are the caller's to have seen already."""
    if db is not None:
        try:
            db.close()
        except Exception:  # noqa: BLE001 - rocksdict raises bare Exception; a read-only db refuses to flush
            pass


def settle(db: rocksdict.Rdict) -> bool:
    """Flush a writer session's memtable (a sorted run of its writes) and wait until the compactions RocksDB
    scheduled are done, as WaitForCompact would (rocksdict does not expose it; closing would cancel them, and the
    next session start them again). They are enabled only when the disk has room for the largest, a merge of every
    file (as RocksDB's SstFileManager would check), not to have a merge fail for room and be retried until close.
    True if they merged runs into the oldest (its files changed): the O(N) upkeep. A failed compaction (RocksDB's
    background error), or one pending with none running for SETTLE_IDLE_SECONDS, ends the wait: the files stay
    as they are, readable, for a later session."""
    db.flush()
    files = db.live_files()
    room = shutil.disk_usage(db.path()).free
    if room < sum(file["size"] for file in files):  # a merge into the oldest run may rewrite every file
        return False
    oldest, idle = _oldest_run(files), time.monotonic()
    db.set_options({"disable_auto_compactions": "false"})
    while True:
        if db.property_int_value("rocksdb.background-errors"):  # RocksDB would retry it until close, which waits
            db.cancel_all_background(True)
            break
        if db.property_int_value("rocksdb.num-running-compactions"):
            idle = time.monotonic()
        elif not db.property_int_value("rocksdb.compaction-pending") or time.monotonic() - idle > SETTLE_IDLE_SECONDS:
            break
        time.sleep(SETTLE_POLL_SECONDS)
    return _oldest_run(db.live_files()) != oldest


def _oldest_run(files: list[dict]) -> set[str]:
    """The names of the files (``Rdict.live_files()``) of a database's oldest sorted run (its last level)."""
    bottom = max(file["level"] for file in files)
    return {file["name"] for file in files if file["level"] == bottom}


def is_rocks_error(error: BaseException) -> bool:
    """rocksdict raises bare ``Exception`` (and DbClosedError) for RocksDB's statuses."""
    return type(error) is Exception or isinstance(error, rocksdict.DbClosedError)


def typed_error(directory: Path, error: BaseException, doing: str) -> Exception:
    """This package's error for a RocksDB status met while ``doing`` something with the store in ``directory``."""
    if isinstance(error, StoreError):
        return error
    text = str(error)
    if "No space left" in text or "ENOSPC" in text or (isinstance(error, OSError) and is_no_space(error)):
        return no_space_error(directory, error if isinstance(error, OSError) else OSError(28, text))
    if "No such file" in text:
        return MissingStoreError(f"rocksdb store {directory}: a file is missing {doing} ({text})")
    return CorruptStoreError(f"rocksdb store {directory} is damaged: RocksDB failed {doing} ({text})")


def load_meta(path: Path) -> dict | None:
    """The store's metadata (None if there is none), checked field by field; CorruptStoreError if damaged."""
    meta = read_meta(path, FORMAT)
    if meta is None:
        return None
    try:
        check_image_fields(meta, FORMAT_VERSION)
        if "codec" in meta and get_codec(meta["codec"]).spec != meta["codec"]:
            raise ValueError(f"codec {meta['codec']!r}")
        for name, option in OPTIONS.items():
            if option.parse(meta[name]) != meta[name]:
                raise ValueError(f"{name}={meta[name]!r}")
        if (
            not DB_NAME.fullmatch(DB_DIR.format(token=meta["token"]))
            or type(meta["checksum"]) is not bool
            or not all(type(meta[name]) is int and meta[name] >= 0 for name in ("count", "sequence"))
        ):
            raise ValueError("a field is out of range")
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptStoreError(f"{path}: not a rocksdb store's metadata ({error})") from None
    return meta


def write_new_db(
    folder: Path, settings: dict, layout: ValueLayout, images: np.ndarray, labels: np.ndarray, codec: Codec
) -> int:
    """Write ``images``/``labels`` as ids 0..N-1 into a new database in ``folder`` (exists, empty): sorted SST
    files of about SST_BYTES written with SstFileWriter, then ingested (moved) into the database: no WAL, no
    memtable. ``codec`` encodes the images of an encoded layout. Return the database's sequence number."""
    staging = folder / INGEST_DIR
    staging.mkdir()
    options = db_options(settings, read_only=False)
    keys = np.arange(len(images), dtype=">u8").tobytes()
    paths, writer, written = [], None, 0
    for image_id, value in enumerate(_values(layout, images, labels, codec)):
        if writer is None or written >= SST_BYTES:
            if writer is not None:
                writer.finish()
            paths.append(str(staging / f"{len(paths):06d}.sst"))
            writer, written = rocksdict.SstFileWriter(options=options), 0
            writer.open(paths[-1])
        writer[keys[image_id * KEY.size : (image_id + 1) * KEY.size]] = value
        written += len(value)
    writer.finish()
    db = open_db(folder, settings, read_only=False)
    try:
        ingest = rocksdict.IngestExternalFileOptions()
        ingest.set_move_files(True)
        db.ingest_external_file(paths, ingest)
        sequence = db.latest_sequence_number()
    finally:
        close_db(db)
    shutil.rmtree(staging)
    return sequence


def _values(layout: ValueLayout, images: np.ndarray, labels: np.ndarray, codec: Codec) -> Iterator[bytes]:
    """The value of each image in id order: encoded one by one, or raw pixels assembled STAGING_BYTES at a time."""
    count = len(images)
    if layout.encoded:
        for image_id, image in enumerate(images):
            yield layout.encoded_value(image_id, int(labels[image_id]), codec.encode(image))
        return
    size, pixels = layout.size, images.reshape(count, -1)
    block = max(1, min(count, STAGING_BYTES // size))
    buffer = np.empty((block, size), np.uint8)
    for first in range(0, count, block):
        last = min(count, first + block)
        layout.fill_block(buffer[: last - first], first, labels[first:last], pixels[first:last])
        data = buffer[: last - first].tobytes()
        for row in range(last - first):
            yield data[row * size : (row + 1) * size]


def fingerprint(directory: Path) -> tuple:
    """What a writer changes in ``directory`` (names, inodes, sizes, times of the top level and of every
    database folder): equal before and after a failed open means the failure is the store's, not a race."""
    seen = []
    for root in [directory, *(path for path in directory.glob("db-*") if path.is_dir())]:
        try:
            with os.scandir(root) as entries:
                for entry in entries:
                    if entry.name == CONFIG:  # rewritten by every reader's open
                        continue
                    info = entry.stat(follow_symlinks=False)
                    seen.append((root.name, entry.name, info.st_ino, info.st_size, info.st_mtime_ns))
        except FileNotFoundError:
            seen.append((root.name, None))
    return tuple(sorted(seen, key=repr))
