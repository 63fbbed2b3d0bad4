"""LMDB's own file, checked with ``pread`` before LMDB maps it: a damaged ``data.mdb`` must raise, not kill.

LMDB maps ``data.mdb`` and trusts what it finds: a page past the end of a short file kills the
process with SIGBUS, and so does a damaged page whose node points past the end (py-lmdb reads
every page of a value it returns, whatever length the node claims). ``check_data_file`` reads
both meta pages, checks them as LMDB would and more (consecutive transaction ids, roots in
range), refuses a file shorter than the newest commit's pages, then walks both B-trees (main
and free) level by level, vectorised, and checks every node against its page and every value
against the committed pages. It raises CorruptStoreError naming the file and what is wrong.
Layouts: LMDB 0.9 and 1.0 files (page headers of 16 and 24 bytes), 64-bit builds, host byte order
(mdb.c: MDB_page, MDB_node, MDB_meta, MDB_db).
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage_impls.core.errors import CorruptStoreError
from storage_impls.core.fileio import open_regular

META = struct.Struct("=IIQQ48s48sQQ")  # mm_magic, mm_version, mm_address, mm_mapsize, mm_dbs[2], mm_last_pg, mm_txnid
DB = struct.Struct(
    "=IHHQQQQQ"
)  # md_pad (the page size, in the free DB's record), flags, depth, 3 page counts, entries, root
U16, U32 = struct.Struct("=H"), struct.Struct("=I")
LMDB_MAGIC = 0xBEEFC0DE
P_BRANCH, P_LEAF, P_META = 0x01, 0x02, 0x08
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
P_INVALID = (1 << 64) - 1  # the root of an empty tree
MAX_DEPTH = 32  # LMDB's CURSOR_STACK
CHUNK_PAGES = 4096  # pages read and checked at once
CHECK_PASSES = 20
META_OFFSETS = (0, 4096, 8192, 16384, 32768, 65536)  # meta page 0, and meta page 1 for every usual page size


@dataclass(frozen=True)
class Engine:
    """What differs between LMDB 0.9 and 1.0 files, told apart by the page-header size."""

    header: int  # PAGEHDRSZ
    version: int  # MDB_DATA_VERSION
    base: int  # PAGEBASE: node offsets count from here
    bigdata: int  # bytes of an overflow reference in a leaf node
    even_keys: bool  # keys padded to an even length


ENGINES = (Engine(16, 1, 0, 8, False), Engine(24, 3, 24, 24, True))


@dataclass(frozen=True)
class DataFile:
    """What the newest meta page of a ``data.mdb`` says."""

    page_size: int
    last_page: int
    txnid: int

    @property
    def committed_bytes(self) -> int:
        return (self.last_page + 1) * self.page_size


def check_data_file(path: Path) -> DataFile:
    """Check ``path`` (meta pages, length, both B-trees) without mapping it; CorruptStoreError naming the file.
    A writer committing meanwhile can show one pass a mix (meta pages of two commits, pages reused since):
    a failed pass is repeated while the meta pages change, and its error raised once they do not."""
    passes = 0
    while True:
        before = _meta_records(path)
        try:
            return _check_once(path)
        except CorruptStoreError:
            passes += 1
            if passes == CHECK_PASSES or _meta_records(path) == before:
                raise


def _meta_records(path: Path) -> bytes:
    """The bytes that hold the meta records, wherever the page size puts the second one."""
    with os.fdopen(open_regular(path), "rb") as file:
        return b"".join(os.pread(file.fileno(), 24 + META.size, offset) for offset in META_OFFSETS)


def _check_once(path: Path) -> DataFile:
    with os.fdopen(open_regular(path), "rb") as file:
        fd = file.fileno()
        head, size = os.pread(fd, 24 + META.size, 0), os.fstat(fd).st_size
        engine = next(
            (
                engine
                for engine in ENGINES
                if len(head) >= engine.header + 4 and U32.unpack_from(head, engine.header)[0] == LMDB_MAGIC
            ),
            None,
        )
        if engine is None and len(head) < ENGINES[-1].header + 4:
            raise _truncated(
                path, size, 2 * mmap.PAGESIZE, f"two meta pages of {mmap.PAGESIZE} bytes, this system's page size"
            )
        if engine is None:
            raise CorruptStoreError(
                f"{path} is not an LMDB data file ({size} bytes, no LMDB magic in its first meta page)"
            )
        if len(head) < engine.header + META.size:
            raise _truncated(
                path, size, 2 * mmap.PAGESIZE, f"two meta pages of {mmap.PAGESIZE} bytes, this system's page size"
            )
        first = _meta(path, head, engine, 0)
        page_size = DB.unpack_from(first[4])[0]
        if not 256 <= page_size <= 1 << 16 or page_size & (page_size - 1):
            raise CorruptStoreError(f"{path}: meta page 0 gives an invalid page size {page_size}")
        if size < page_size + engine.header + META.size:
            raise _truncated(path, size, 2 * page_size, f"two meta pages of {page_size} bytes")
        second = _meta(path, os.pread(fd, engine.header + META.size, page_size), engine, 1)
        if DB.unpack_from(second[4])[0] != page_size:
            raise CorruptStoreError(f"{path}: the two meta pages disagree on the page size")
        txnids = first[7], second[7]
        # commit N writes meta N % 2 with txnid N, so the two are consecutive (or both 0 in a new file)
        if txnids[0] % 2 or txnids[1] % 2 == 0 and txnids[1] or abs(txnids[0] - txnids[1]) != (1 if any(txnids) else 0):
            raise CorruptStoreError(f"{path}: the meta pages' transaction ids {txnids} are inconsistent")
        newest = first if txnids[0] > txnids[1] else second
        data = DataFile(page_size, newest[6], newest[7])
        size = os.fstat(fd).st_size  # after the meta pages: LMDB writes a commit's pages before its meta page
        if data.last_page < 1:
            raise CorruptStoreError(f"{path}: the newest meta page gives last page {data.last_page}")
        if size < data.committed_bytes:
            raise _truncated(
                path,
                size,
                data.committed_bytes,
                f"{data.last_page + 1} pages of {page_size} bytes, by its newest meta page",
            )
        for name, record in (("free", newest[4]), ("main", newest[5])):
            entries, root = DB.unpack_from(record)[6:8]
            found = 0 if root == P_INVALID else _TreeWalk(path, fd, engine, data, name).count_entries(root)
            if found != entries:
                raise CorruptStoreError(
                    f"{path}: the {name} B-tree holds {found} entries, its meta page says {entries}"
                )
    return data


def _truncated(path: Path, size: int, expected: int, what: str) -> CorruptStoreError:
    return CorruptStoreError(f"{path} is truncated: {size} bytes, expected at least {expected} ({what})")


def _meta(path: Path, page: bytes, engine: Engine, number: int) -> tuple:
    """The MDB_meta fields of meta page ``number`` (its first bytes in ``page``), checked as mdb_env_read_header
    does."""
    flags = U16.unpack_from(page, engine.header - 6)[0]
    fields = META.unpack_from(page, engine.header)
    if not flags & P_META or fields[0] != LMDB_MAGIC or fields[1] != engine.version:
        raise CorruptStoreError(
            f"{path}: meta page {number} is damaged (flags {flags:#x}, magic {fields[0]:#x}, version {fields[1]})"
        )
    return fields


class _TreeWalk:
    """One B-tree of a data file, read a level at a time into one array, every node checked at once."""

    def __init__(self, path: Path, fd: int, engine: Engine, data: DataFile, name: str) -> None:
        self.path, self.fd, self.engine, self.data, self.name = path, fd, engine, data, name

    def count_entries(self, root: int) -> int:
        """Check the tree below ``root`` and return how many values its leaves hold."""
        self._require(2 <= root <= self.data.last_page, f"has its root at page {root}, out of range")
        level, visited = np.array([root], np.int64), 0
        for _ in range(MAX_DEPTH):
            self._require(((level >= 2) & (level <= self.data.last_page)).all(), "points to a page out of range")
            visited += len(level)
            self._require(visited <= self.data.last_page, "has more pages than the file (a cycle)")
            kinds, children, entries = set(), [], 0
            for chunk in range(0, len(level), CHUNK_PAGES):
                pages = self._read(level[chunk : chunk + CHUNK_PAGES])
                flags = self._field(
                    pages.reshape(-1), np.arange(len(pages)) * self.data.page_size + self.engine.header - 6, 2
                )
                kinds.update((flags & (P_BRANCH | P_LEAF)).tolist())
                self._require(
                    len(kinds) == 1 and kinds <= {P_BRANCH, P_LEAF}, "has a level of mixed or unknown page types"
                )
                if P_LEAF in kinds:
                    entries += self._check_leaves(pages)
                else:
                    children.append(self._children(pages))
            if P_LEAF in kinds:
                return entries
            level = np.concatenate(children)
        self._require(False, f"is deeper than {MAX_DEPTH} levels")

    def _read(self, numbers: np.ndarray) -> np.ndarray:
        size = self.data.page_size
        return np.frombuffer(
            b"".join(os.pread(self.fd, size, page * size) for page in numbers.tolist()), np.uint8
        ).reshape(len(numbers), size)

    def _nodes(self, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every node of ``pages``: the flattened pages, each node's offset in them and in its page, its key size."""
        engine, size = self.engine, self.data.page_size
        flat, starts = pages.reshape(-1), np.arange(len(pages), dtype=np.int64) * size
        lower = self._field(flat, starts + engine.header - 4, 2)
        upper = self._field(flat, starts + engine.header - 2, 2)
        floor = engine.header - engine.base
        self._require(
            ((lower >= floor) & (upper <= size - engine.base) & (lower <= upper)).all(), "has a page with bad bounds"
        )
        counts = (lower - floor) >> 1
        page_of, slot = np.nonzero(np.arange(counts.max(initial=0)) < counts[:, None])
        offsets = self._field(flat, starts[page_of] + engine.header + 2 * slot, 2) + engine.base
        self._require(
            ((offsets >= upper[page_of] + engine.base) & (offsets + 8 <= size)).all(), "has a node outside its page"
        )
        nodes = starts[page_of] + offsets
        key_sizes = self._field(flat, nodes + 6, 2)
        self._require((offsets + 8 + key_sizes <= size).all(), "has a key running past its page")
        return flat, nodes, offsets, key_sizes

    def _children(self, pages: np.ndarray) -> np.ndarray:
        flat, nodes, _, _ = self._nodes(pages)
        words = [self._field(flat, nodes + 2 * word, 2) for word in range(3)]  # mn_lo, mn_hi, mn_flags
        return words[0] | words[1] << 16 | words[2] << 32  # a branch node's child page number

    def _check_leaves(self, pages: np.ndarray) -> int:
        flat, nodes, offsets, key_sizes = self._nodes(pages)
        engine, size = self.engine, self.data.page_size
        data_sizes = self._field(flat, nodes, 2) | self._field(flat, nodes + 2, 2) << 16  # mn_lo, mn_hi
        flags = self._field(flat, nodes + 4, 2)
        self._require((flags & (F_SUBDATA | F_DUPDATA) == 0).all(), "has sub-database or duplicate nodes")
        data_offsets = offsets + 8 + (key_sizes + (key_sizes & 1) if engine.even_keys else key_sizes)
        big = (flags & F_BIGDATA) != 0
        self._require((data_offsets[~big] + data_sizes[~big] <= size).all(), "has a value running past its page")
        self._require((data_offsets[big] + engine.bigdata <= size).all(), "has an overflow reference past its page")
        first = self._field(flat, nodes[big] - offsets[big] + data_offsets[big], 8)
        pages_needed = (engine.header - 1 + data_sizes[big]) // size + 1
        self._require(
            ((first >= 2) & (first + pages_needed <= self.data.last_page + 1)).all(),
            "has a value beyond the committed pages",
        )
        return len(nodes)

    @staticmethod
    def _field(flat: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
        """Unsigned integers of ``width`` bytes (2 or 8) at ``offsets`` of ``flat``, in the host's byte order, as
        int64 (a garbage 8-byte page number above 2**63 wraps negative, which the range checks refuse)."""
        offsets = np.asarray(offsets, np.int64)
        value = np.zeros(len(offsets), np.uint64)
        for byte in range(width):
            shift = 8 * (byte if sys.byteorder == "little" else width - 1 - byte)
            value |= flat[offsets + byte].astype(np.uint64) << np.uint64(shift)
        return value.view(np.int64)

    def _require(self, condition: bool, problem: str) -> None:
        if not condition:
            raise CorruptStoreError(f"{self.path} is damaged: its {self.name} B-tree {problem}")
