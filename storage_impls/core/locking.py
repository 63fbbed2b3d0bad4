"""One writer at a time per store, across processes and handles: an ``flock`` on a lock file.

Every write (``store_single``, ``store_many``) holds the store's writer lock for its duration,
so two processes (or two handles in one process) writing one store take turns instead of
interleaving. A writer that cannot get the lock within ``timeout`` seconds raises
StoreLockedError naming the holder. Readers never take it. The lock is released by the kernel
when its holder exits or is killed, so a crashed writer never leaves the store locked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from storage_impls.core.errors import StoreLockedError
from storage_impls.core.fileio import open_regular

LOCK_FILE = ".writer.lock"
POLL_SECONDS = 0.005


@contextlib.contextmanager
def writer_lock(directory: Path, timeout: float) -> Iterator[None]:
    """Hold the writer lock of the store in ``directory``; wait up to ``timeout`` s, else StoreLockedError."""
    path = os.path.join(directory, LOCK_FILE)  # a str join: this runs on every write
    fd = open_regular(path, os.O_RDWR | os.O_CREAT)  # never through a link, never a FIFO
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise StoreLockedError(
                        f"{directory} is being written by another writer: waited {timeout:g} s for its lock {path}"
                    ) from None
                time.sleep(POLL_SECONDS)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
