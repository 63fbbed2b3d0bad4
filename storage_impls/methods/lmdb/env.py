"""One LMDB environment per store and process, shared by every handle on that store.

LMDB must not open one environment twice in a process: its locks are POSIX ``fcntl`` locks,
which belong to the process, so a second open would share them and closing it would release
the first one's (py-lmdb refuses the second open). Handles on one store in one process (a
reader and a writer, two readers, two writers) therefore share one ``SharedEnv``, found by the
``(st_dev, st_ino)`` of the store's directory and counted: the environment closes when its last
handle does. Environment-wide settings come from the handle that opened it: ``readahead`` (a
hint, ignored for later handles) and ``durable`` (LMDB syncs per environment: a writing handle
asking for another setting gets ValueError).

Opening checks ``data.mdb``'s meta pages first (lmdb_format.check_data_file), then opens
writable; where the files cannot be written it falls back to ``readonly=True``, and where not
even ``lock.mdb`` can be opened for writing (0444 files, a 0555 folder) to ``lock=False``; a ``lockless``
environment (``readonly_media=True``, or a store on a read-only file system) opens so at once. A
lockless reader is not in LMDB's reader table, so a writer that could write the store anyway
(its owner, root) might reuse pages it is reading: lockless is only safe on a store nobody
writes while it is open, which is what unwritable files normally mean.

Writes (``commit``): one write transaction, the map grown first when short and on MapFullError; a
failed write cuts ``data.mdb`` back to its committed pages and raises typed (a full disk, which
LMDB reports as EIO after a short write, is probed for and raised as NoSpaceError).

Across a fork: every handle ends its snapshot just before (``suspend_snapshot``) and takes a new
one when next used; the child closes its copies of the environments, so that it can open the
stores anew, while the parent's handles go on. A handle opened before the fork cannot be used
in the child (open the store again there).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import mmap
import os
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lmdb

from storage_impls.core.errors import (
    CorruptStoreError,
    MissingStoreError,
    NoSpaceError,
    StoreError,
    is_no_space,
    no_space_error,
)
from storage_impls.core.fileio import fsync_path, open_regular
from storage_impls.methods.lmdb.file import check_data_file

DATA_FILE, LMDB_LOCK_FILE = "data.mdb", "lock.mdb"
MAP_SIZE = 1 << 40 if sys.maxsize > 1 << 32 else 1 << 30  # address space, not memory or disk
MIN_MAP_SIZE = 64 << 20
MAX_READERS = 1024  # reader slots in lock.mdb: each open handle holds one (its snapshot)
LOCK_BYTES = 192 + 64 * (MAX_READERS - 1)  # lock.mdb's size: MDB_txninfo (with one slot), 64 bytes per more slot
DAMAGE = (
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.InvalidError,
    lmdb.VersionMismatchError,
    lmdb.BadValsizeError,
    lmdb.BadChecksumError,
    lmdb.IncompatibleError,
)
UNWRITABLE = (errno.EACCES, errno.EROFS, errno.EPERM)
HEADROOM = 2  # map size = HEADROOM x (pages in use + pages the write needs)
PROBE_FILE = "space-probe.tmp"  # a failed write checks here whether the disk is full
PROBE_SLACK = 1 << 20
NOT_SUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
Write = Callable[[lmdb.Transaction], None]


def store_error(directory: Path, error: lmdb.Error, doing: str) -> Exception:
    """This package's typed error for an error py-lmdb raised while ``doing`` something to the store."""
    if isinstance(error, DAMAGE):
        return CorruptStoreError(f"{directory / DATA_FILE} is damaged: LMDB found {error} while {doing}")
    code = getattr(error, "code", 0)
    if is_no_space(OSError(code, "")):
        return no_space_error(directory, OSError(code, os.strerror(code)))
    if code in UNWRITABLE:
        return PermissionError(code, f"cannot open the LMDB store in {directory} for writing while {doing}: {error}")
    return StoreError(f"LMDB failed while {doing} in {directory}: {error}")


def typed_errors(doing: str) -> Callable[[Callable], Callable]:
    """Decorate a read method of a store handle: the lmdb.Error it raises becomes ``store_error``'s typed error."""

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def wrapper(self, *args: object) -> object:
            try:
                return method(self, *args)
            except lmdb.Error as error:
                raise store_error(self.directory, error, doing) from None

        return wrapper

    return decorate


def commit(env: lmdb.Environment, write: Write, needed: int, store: Path, directory: Path | None = None) -> None:
    """Run ``write(txn)`` in one write transaction of ``env`` (whose files are in ``directory``, the store's
    by default): grow the map first if it is short and on MapFullError; on failure cut data.mdb back to its
    committed pages and raise typed (errors name ``store``). ``needed``: bytes the write adds at most."""
    info, page = env.info(), env.stat()["psize"]
    in_use = (info["last_pgno"] + 1) * page
    if info["map_size"] < in_use + needed:
        env.set_mapsize(HEADROOM * (in_use + needed))
    while True:
        try:
            with env.begin(write=True, buffers=True) as txn:
                write(txn)
            return
        except lmdb.MapFullError:
            env.set_mapsize(2 * env.info()["map_size"])
        except lmdb.MapResizedError:
            env.set_mapsize(0)  # another process grew the map: adopt its size
        except BaseException as error:
            _cut_back(env, (directory or store) / DATA_FILE)
            if not isinstance(error, lmdb.Error):
                raise
            raise _write_error(store, error, needed) from None


def _write_error(store: Path, error: lmdb.Error, needed: int) -> Exception:
    """The typed error for a failed write: LMDB reports a short write on a full disk as EIO, so
    an EIO is a NoSpaceError when the disk cannot take what the write needed (probed)."""
    mapped = store_error(store, error, "writing")
    if isinstance(mapped, NoSpaceError) or getattr(error, "code", 0) != errno.EIO:
        return mapped
    shortage = _space_shortage(store / PROBE_FILE, 2 * needed + PROBE_SLACK)
    return mapped if shortage is None else no_space_error(store, shortage)


def _cut_back(env: lmdb.Environment, data: Path) -> None:
    """After a failed write, truncate ``data`` to its committed pages (what the failed write appended is
    garbage no commit refers to), inside a write transaction so that no other LMDB writer extends it meanwhile."""
    with contextlib.suppress(lmdb.Error, OSError), env.begin(write=True):
        committed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        if os.stat(data).st_size > committed:
            os.truncate(data, committed)


def _space_shortage(probe: Path, size: int) -> OSError | None:
    """The OSError that allocating ``size`` bytes in a file at ``probe`` gives when the disk (or a quota or
    file-size limit) cannot take them, None when it can; the probe file is removed."""
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as error:
        return error if is_no_space(error) else None
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
            return None
    except OSError as error:
        if is_no_space(error):
            return error
        if error.errno not in NOT_SUPPORTED:
            return None
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)
    stats = os.statvfs(probe.parent)  # no fallocate here: compare with the free space
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if stats.f_bavail * stats.f_frsize < size else None


def reserve_lock_file(directory: Path) -> None:
    """Allocate lock.mdb's blocks before LMDB maps it. LMDB sizes a new lock file with ftruncate (a hole)
    and writes its header through the map: on a full disk that kills the process with SIGBUS, whereas
    here it raises NoSpaceError. The size is LMDB's own for MAX_READERS, so a file another process is
    setting up at the same time is not changed. Nothing to do where the file cannot be written (readers
    of read-only stores fall back to lock=False) or exists at full size."""
    path = directory / LMDB_LOCK_FILE
    try:
        fd = open_regular(path, os.O_RDWR | os.O_CREAT)  # LMDB opens it next: a regular file of the store, no link
    except OSError as error:
        if error.errno in UNWRITABLE:
            return
        if is_no_space(error):
            raise no_space_error(directory, error) from None
        raise
    try:
        if os.fstat(fd).st_size < LOCK_BYTES:
            os.posix_fallocate(fd, 0, LOCK_BYTES)
    except OSError as error:
        if is_no_space(error):
            raise no_space_error(directory, error) from None
        if error.errno not in NOT_SUPPORTED:
            raise
    finally:
        os.close(fd)


def file_identity(path: str | Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of ``path``, None if it does not exist."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


@dataclass(eq=False)
class SharedEnv:
    """An open LMDB environment, the settings it was opened with and how many handles use it."""

    directory: Path
    durable: bool
    readahead: bool
    lockless: bool = False  # asked for (readonly_media), or found (a read-only file system): open with lock=False
    env: lmdb.Environment | None = None
    writable: bool = False
    data_identity: tuple[int, int] | None = None  # of the data.mdb this environment maps
    users: int = 0
    handles: weakref.WeakSet = field(default_factory=weakref.WeakSet)  # those with a snapshot to end at a fork

    def open(self, create: bool) -> None:
        """Check ``data.mdb`` and open the environment: writable, else read-only, else read-only without lock."""
        data, committed = self.directory / DATA_FILE, 0
        new = not data.exists()
        if not new:
            committed = check_data_file(data).committed_bytes
        elif not create:
            raise MissingStoreError(f"no lmdb store at {self.directory}: {DATA_FILE} does not exist")
        lockless = self.lockless or bool(os.statvfs(self.directory).f_flag & os.ST_RDONLY)
        try:
            if not lockless:
                reserve_lock_file(self.directory)
            for readonly, lock in ((True, False),) if lockless else ((False, True), (True, True), (True, False)):
                try:
                    self.env = self._open_env(committed, readonly=readonly, lock=lock, create=create and not readonly)
                    break
                except lmdb.Error as error:
                    if getattr(error, "code", 0) not in UNWRITABLE or not lock:
                        raise store_error(self.directory, error, "opening it") from None
        except NoSpaceError:
            # a new store whose first meta pages did not fit: leave no short data.mdb (it would read as damaged)
            if new and data.exists() and data.stat().st_size < 2 * mmap.PAGESIZE:
                data.unlink()
            raise
        self.writable = not readonly
        self.data_identity = file_identity(data)
        if lock:
            self.env.reader_check()  # free the reader slots of dead processes, whose snapshots pin pages

    def _open_env(self, committed: int, **options: bool) -> lmdb.Environment:
        """lmdb.open with py-lmdb's advice for 64-bit systems, a huge map (so that it need not grow: growing
        ends every read transaction in the process); a smaller one where address space is limited."""
        settings = dict(
            sync=self.durable,
            metasync=self.durable,
            readahead=self.readahead,
            max_dbs=0,
            max_readers=MAX_READERS,
            **options,
        )
        try:
            return lmdb.open(str(self.directory), map_size=max(MAP_SIZE, 2 * committed), **settings)
        except lmdb.MemoryError:  # ulimit -v, a 32-bit build
            return lmdb.open(str(self.directory), map_size=2 * committed + MIN_MAP_SIZE, **settings)

    def close_env(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


_shared: dict[tuple[int, int], SharedEnv] = {}
_guard = threading.Lock()


def acquire(
    directory: Path, *, create: bool, writer: bool, durable: bool, readahead: bool, lockless: bool = False
) -> SharedEnv:
    """The shared environment of the store in ``directory`` (opened if no handle in this process has it; ``lockless``:
    read-only without lock.mdb), counted as used by one more handle; ``release`` it when done. CorruptStoreError if
    ``data.mdb`` is damaged."""
    key = file_identity(directory)
    with _guard:
        shared = _shared.get(key)
        if shared is None:
            shared = SharedEnv(directory, durable, readahead, lockless=lockless)
            shared.open(create)
            _shared[key] = shared
        else:
            _catch_up(shared, create)
        try:
            if writer and not shared.writable:
                raise PermissionError(f"cannot write the LMDB store in {directory}: its files are not writable")
            if writer and shared.durable != durable:
                raise ValueError(
                    f"the LMDB store in {directory} is already open in this process with "
                    f"durable={shared.durable}: LMDB syncs per environment, so open every writing "
                    "handle of a store with the same durable"
                )
        except Exception:
            if not shared.users:
                _forget(shared)
            raise
        shared.users += 1
        return shared


def catch_up(shared: SharedEnv) -> bool:
    """Reopen ``shared`` if ``data.mdb`` is no longer the file it maps (another process rebuilt the store);
    whether it did."""
    with _guard:
        return _catch_up(shared, create=shared.writable)


def _catch_up(shared: SharedEnv, create: bool) -> bool:
    if shared.env is not None and shared.data_identity == file_identity(os.path.join(shared.directory, DATA_FILE)):
        return False
    shared.close_env()
    shared.open(create)
    return True


def replace_data_file(directory: Path, new_data: Path, durable: bool) -> None:
    """Put ``new_data`` in place of the store's data.mdb with a fresh lock.mdb, reopening this process's
    environment on it. Processes that have the old files open keep both (old data, old lock) until they reopen."""
    with _guard:
        shared = _shared.get(file_identity(directory))
        if shared is not None:
            shared.close_env()
        (directory / LMDB_LOCK_FILE).unlink(missing_ok=True)  # first: a kill after it leaves the old data, no lock
        os.replace(new_data, directory / DATA_FILE)
        if durable:
            fsync_path(directory)
        if shared is not None:
            shared.open(create=False)


def release(shared: SharedEnv) -> None:
    """One handle is done with ``shared``: close the environment when it was the last."""
    with _guard:
        shared.users -= 1
        if shared.users == 0:
            _forget(shared)


def _forget(shared: SharedEnv) -> None:
    shared.close_env()
    for key, value in list(_shared.items()):
        if value is shared:
            del _shared[key]


def _before_fork() -> None:
    """End every snapshot (read transaction) in this process: a forked child closes its copies of the
    environments (to let it open the stores anew, py-lmdb allows one environment per store and process),
    and closing would end the parent's live read transactions in ``lock.mdb`` too."""
    _guard.acquire()
    for shared in _shared.values():
        for handle in list(shared.handles):
            handle.suspend_snapshot()


def _after_fork_in_parent() -> None:
    _guard.release()


def _after_fork_in_child() -> None:
    global _guard
    _guard = threading.Lock()
    for shared in _shared.values():
        shared.close_env()  # no read transaction is live: this touches nothing of the parent's
    _shared.clear()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
