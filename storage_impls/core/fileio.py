"""The containment rule for stores, enforced here: every path a method reads, writes, renames or deletes
stays inside the store directory, names a regular file (or a folder), and is read in bounded amounts.

A store directory is untrusted input (a colleague's folder, a shared drive, a tarball from a paper).
Three checks keep it from reaching outside itself or from hanging or exhausting the process:

- ``check_tree`` walks the whole store once, at open, before any file of it is opened by this package or by a
  library (lmdb, rocksdict, lance, h5py, zarr): a symbolic link anywhere in it, or a FIFO, socket or device,
  raises CorruptStoreError naming it. Symbolic links are refused even when they point inside the store: no
  method writes one, a link inside gives one file two names (a write through one changes the other), and
  refusing them all needs no resolution that a later rename could outdate. The walk reads directory entries
  only (``scandir``'s file types): no system call per image.
- ``open_regular`` opens one file without following a symbolic link (``O_NOFOLLOW``) and without blocking
  (``O_NONBLOCK``, cleared after), and refuses anything but a regular file (``fstat``): the opens of a store's
  own small files (metadata, pointers, lock files), where a file planted after the walk must not hang or escape.
- ``read_bounded`` reads a whole small file, refusing one larger than what its format allows before
  allocating: memory follows what the store declares and the caller asks for, never a file's size alone.

Errors name the file and what is wrong with it, never its content.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat

from storage_impls.core.errors import CorruptStoreError

READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
NO_LINK_ERRNOS = (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)


def check_tree(directory: str | os.PathLike) -> None:
    """CorruptStoreError naming the first entry below ``directory`` that is not a regular file or a folder
    (a symbolic link, dangling or not, a FIFO, socket or device); folders are walked without following links."""
    pending = [os.fspath(directory)]
    while pending:
        folder = pending.pop()
        try:
            entries = os.scandir(folder)
        except FileNotFoundError:  # removed by a writer's clean-up while we walked
            continue
        with entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif not entry.is_file(follow_symlinks=False):
                    raise CorruptStoreError(
                        f"{entry.path} is {_kind(entry.path)}: a store holds only regular files "
                        "and folders (symbolic links are refused, see docs/security.md)"
                    )


def _kind(path: str) -> str:
    """What a non-regular entry is, in words (not its content)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "gone"
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a folder"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """A descriptor on the regular file ``path`` (``flags`` as for os.open, e.g. O_RDWR | O_CREAT), opened without
    following a symbolic link or blocking; CorruptStoreError naming it if it is anything else. FileNotFoundError
    (and other OSErrors) pass through."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.ENOTDIR):  # a link, a socket, a folder
            raise _not_regular(path) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _not_regular(path)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _not_regular(path: str | os.PathLike) -> CorruptStoreError:
    return CorruptStoreError(f"{path} is {_kind(os.fspath(path))}, expected a regular file of the store")


def read_bounded(path: str | os.PathLike, limit: int) -> bytes:
    """The whole of the regular file ``path``, at most ``limit`` bytes: CorruptStoreError naming it if it is larger
    (checked on its size before reading) or not a regular file; FileNotFoundError if it does not exist."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise CorruptStoreError(f"{path} is {size} bytes, more than the {limit} its format allows")
        data = b""
        while len(data) <= size:  # to its end, or one byte past its size: the files read here never grow
            more = os.read(fd, size + 1 - len(data))
            if not more:
                break
            data += more
    finally:
        os.close(fd)
    if len(data) > size:
        raise CorruptStoreError(f"{path} grew while it was read (files of this kind are replaced, never extended)")
    return data


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or directory so that its contents (or entries) survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_or_copy(source: str | os.PathLike, target: str | os.PathLike, *, durable: bool) -> None:
    """Give the new file ``target`` the contents of the committed, never rewritten file ``source`` of the same store:
    a hard link (a fold keeps an unchanged image without copying it; a symbolic link stays one, and reads refuse
    it), else a copy where the file system has no links (fsynced when durable). FileNotFoundError if ``source``
    is missing."""
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as error:
        if error.errno not in NO_LINK_ERRNOS:
            raise
        shutil.copyfile(source, target, follow_symlinks=False)
        if durable:
            fsync_path(target)
