"""An object as a read-only, seekable Python file (ranged GETs through a read-ahead buffer), for libraries that
parse a file's structure themselves (h5py's file-object driver) before a method knows which ranges it needs."""

from __future__ import annotations

import io

from storage_impls.remote.client import Location
from storage_impls.remote.ranges import Span

READ_AHEAD = 256 << 10  # bytes per request: a file's scattered metadata reads share few requests


class RangeFile(io.RawIOBase):
    """Object ``key`` of ``location``, of ``size`` bytes."""

    def __init__(self, location: Location, key: str, size: int) -> None:
        self.location, self.key, self.size, self.position = location, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self.size - self.position))
        if count:
            buffer[:count] = self.location.fetch([Span(self.key, self.position, self.position + count)])[0]
            self.position += count
        return count


def open_object(location: Location, key: str, size: int) -> io.BufferedReader:
    """Object ``key`` as a buffered binary file."""
    return io.BufferedReader(RangeFile(location, key, size), READ_AHEAD)
