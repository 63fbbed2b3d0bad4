"""The errors this package raises about stores, each also an instance of the builtin a caller may expect."""

from __future__ import annotations

import errno
import os

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # device full, quota, file-size limit


class StoreError(Exception):
    """Base class of the errors this package raises about a store's contents."""


class CorruptStoreError(StoreError, ValueError):
    """The store exists but its files are not what this method wrote."""


class MissingStoreError(StoreError, FileNotFoundError):
    """The store, or one of its files, does not exist."""


class ImageNotFoundError(StoreError, KeyError):
    """An id that was never stored."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class StoreLockedError(StoreError, TimeoutError):
    """Another writer held the store's writer lock for longer than the handle's ``lock_timeout``."""


class NoSpaceError(StoreError, OSError):
    """A write ran out of space (device full, quota or file-size limit); the store is as it was before."""


def no_space_error(directory: os.PathLike | str, error: OSError) -> NoSpaceError:
    """A NoSpaceError (errno ENOSPC) naming the store's directory and the original cause."""
    cause = os.strerror(error.errno) if error.errno else str(error)
    return NoSpaceError(
        errno.ENOSPC,
        f"no space left on device writing the store in {directory} ({cause}); the store keeps its earlier contents",
        str(directory),
    )


def damaged(damage: StoreError) -> StoreError:
    """What a handle that found its store damaged at open (mode "a", where store_many can repair it) raises on
    reads: the damage, of its type, and the way out."""
    return type(damage)(f"{damage} (store_many replaces the damaged contents)")


def is_no_space(error: BaseException) -> bool:
    """True for an OSError that means the device (or a quota or size limit) is full."""
    return isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS


class RemoteError(StoreError, ConnectionError):
    """A request to an object store failed after the client's bounded retries (network, server, credentials)."""


class LocalOnlyError(StoreError, NotImplementedError):
    """A method whose library reads only local files was asked to read from an object store: stage the store's
    files to a local folder first (``storage_impls.remote.stage``), then open that folder."""
