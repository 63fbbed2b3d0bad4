"""webdataset: images in POSIX tar shards that WebDataset reads, one member per image holding its pixels
and its label, and an index of member offsets for random reads.

Layout (see checkpointed.py for the metadata file, the journal and how writes commit):
``DIR/webdataset.json`` names ``DIR/ckpt-<token>/`` holding ``shard-000000.tar``, ``shard-000001.tar``, ...,
``index.npy`` and, with ``checksum=True``, ``checksums.npy`` (uint64, xxh3_64 of each image seeded with its
label). Shard ``k`` holds images ``k*S .. (k+1)*S-1``, S (``shard_images`` in the metadata) as many as fit in
the target ``shard_size``: 100 MiB by default, ``webdataset:shard_size=1GiB`` for another (recorded by
``store_many``; a handle without the option keeps the store's). Each image is one member
``<id as 12 digits>.npy`` (bytes in webdataset_format.py): a ``.npy`` of one record ``(image, label)``, so
``wds.WebDataset(shards).decode()`` yields ``sample["npy"]["image"]`` and ``sample["npy"]["label"]``, and a
shard is byte for byte what webdataset's ``TarWriter`` writes for those samples with an integer mtime.
``index.npy`` ((N, 2) little-endian int64: shard, byte offset of the member) is written with the shards and
checked at open against the layout the metadata records; every shard must be exactly as long as its
members and the end of the archive. A truncated tar, or another tool's shard, raises CorruptStoreError
naming the file.

Why one member, label inside (measured in tests/test_methods_webdataset.py): a tar member costs a
512-byte header and pads its data to 512 bytes. At 32x32x3 uint8 (3072 bytes of pixels) this layout
takes 4096 bytes per image (+33 %), raw pixels + ``.cls`` 4608, ``.npy`` + ``.cls`` 5120 (+67 %), and
``TarWriter`` with its default float mtime 7168 (each member also gets a PAX header).

Writes: ``store_many`` assembles 4 MiB of members at a time with numpy (a header template in which only
the name and the header checksum change) and writes each shard with ``os.write`` into the checkpoint's
temporary folder, which CheckpointedStore renames into place before switching the metadata (the
commit). ``store_single`` appends to CheckpointedStore's journal (O(1), atomic; folded into new shards
past its threshold): tar shards are written whole, never edited. Readers of the shards themselves
(WebDataset, tar) see the last checkpoint, not the journal records made since.

Reads: ``read_many`` streams each shard in order, 1 MiB of whole members per ``preadv`` into a reused
buffer, and copies pixels and labels out with numpy (measured against scattering each member's pixels
straight into the caller's array, one iovec each: 1.2x faster at 32x32x3, 3x at 8x8, 13 % slower at
256x256x3). ``read_batch`` looks each id up in the index and reads its member with one ``preadv``: tar
and ``.npy`` headers into a scratch row, the pixels into the caller's array, the label after them.
Every read compares each member's first 640 bytes with what this store wrote for that id, so a damaged
header, a wrong offset or a foreign member raises CorruptStoreError naming the shard and byte; pixels
and labels are checked with ``checksum=True``. Shards are opened on first read (MAX_OPEN_SHARDS stay
open), so a reader's snapshot expires once a later commit removes its folder: reads of shards it had
not opened then raise MissingStoreError ("open it again").
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from storage_impls.base import Mode
from storage_impls.checkpointed import Checkpoint, CheckpointedStore, Source
from storage_impls.codecs import Codec
from storage_impls.errors import CorruptStoreError
from storage_impls.npy_format import load, save
from storage_impls.records import image_checksums, refuse_foreign, verify_checksums
from storage_impls.registry import byte_size, check_options
from storage_impls.webdataset_format import (
    MAX_IDS,
    MemberLayout,
    layout_index,
    member_error,
    member_limit,
    preadv_full,
    shard_bytes,
    shard_images,
    write_all,
)

DEFAULT_SHARD_SIZE = 100 << 20  # streams well and leaves several shards to a store of 10^5 small images;
# published WebDatasets often use about 1 GB (OpenImages, Hugging Face): shard_size=1GiB
MAX_OPEN_SHARDS = 256  # shard files a handle keeps open (least recently read closed first): 25 GiB at the default size
WRITE_BYTES = 4 << 20  # members assembled in memory and written at a time
STREAM_BYTES = 1 << 20  # members read_many reads at a time (measured: 1 MiB beats 256 KiB and 4 MiB)
SHARD = "shard-{index:06d}.tar"
INDEX, CHECKSUMS = "index.npy", "checksums.npy"
INDEX_DTYPE, LABEL_DTYPE, CHECKSUM_DTYPE = np.dtype("<i8"), np.dtype("<i8"), np.dtype("<u8")
POINTER = "webdataset.json"


class TarCheckpoint(Checkpoint):
    """A folder of tar shards and their index; shards opened on first read."""

    def __init__(self, folder: Path, meta: dict) -> None:
        super().__init__(folder, meta)
        try:
            if type(meta["mtime"]) is not int or not 0 <= meta["mtime"] < 8 ** 11 or self.count > MAX_IDS \
                    or type(meta["shard_size"]) is not int or meta["shard_size"] < 0:
                raise ValueError("a field is out of range")
            self.layout = MemberLayout(self.dtype, self.shape, meta["mtime"])
            self.per_shard = shard_images(meta["shard_size"], self.layout.size)
            if (meta["shard_images"], meta["shards"]) != (self.per_shard, -(-self.count // self.per_shard)):
                raise ValueError(f"{meta['shard_images']!r} images in {meta['shards']!r} shards, expected "
                                 f"{self.per_shard} in {-(-self.count // self.per_shard)}")
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptStoreError(f"{folder.parent / POINTER}: not a webdataset store's metadata ({error})") from None
        self.shards = meta["shards"]
        index = load(folder / INDEX, INDEX_DTYPE, (self.count, 2))
        if not np.array_equal(index, layout_index(self.count, self.per_shard, self.layout.size)):
            raise CorruptStoreError(f"{folder / INDEX} does not match the shards' layout ({self.per_shard} members of "
                                    f"{self.layout.size} bytes per shard): damaged, or from another store")
        self.index = index.astype(np.int64)
        self.sums = load(folder / CHECKSUMS, CHECKSUM_DTYPE, (self.count,)) if self.checksum else None
        for shard in range(self.shards):
            self._check_size(shard, os.stat(self.path(shard)).st_size)
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._buffer: np.ndarray | None = None  # read_many's block of whole members, made on first use

    def path(self, shard: int) -> Path:
        return self.folder / SHARD.format(index=shard)

    def _check_size(self, shard: int, size: int) -> None:
        members = min(self.per_shard, self.count - shard * self.per_shard)
        expected = shard_bytes(members, self.layout.size)
        if size != expected:
            raise CorruptStoreError(f"{self.path(shard)} is {size} bytes, expected {expected} ({members} members of "
                                    f"{self.layout.size} bytes and the end of the archive): cut short, or not a shard "
                                    "this store wrote")

    def _cut_short(self, shard: int) -> CorruptStoreError:
        return CorruptStoreError(f"{self.path(shard)} ends before the members its index names (cut short while open?)")

    def _fd(self, shard: int) -> int:
        """An open descriptor of ``shard`` (opened and its size checked on first use)."""
        fd = self._fds.get(shard)
        if fd is not None:
            self._fds.move_to_end(shard)
            return fd
        fd = os.open(self.path(shard), os.O_RDONLY)
        try:
            self._check_size(shard, os.fstat(fd).st_size)
        except BaseException:
            os.close(fd)
            raise
        self._fds[shard] = fd
        if len(self._fds) > MAX_OPEN_SHARDS:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def read_rows(self, start: int, out: np.ndarray, labels: np.ndarray) -> None:
        layout, stop, position = self.layout, start + len(out), start
        if self._buffer is None:
            self._buffer = np.empty((max(1, STREAM_BYTES // layout.size), layout.size), np.uint8)
        pixels = out.reshape(len(out), -1).view(np.uint8)
        while position < stop:
            shard, offset = self.index[position].tolist()
            end = min(stop, (shard + 1) * self.per_shard, position + len(self._buffer))
            members = self._buffer[:end - position]
            if not preadv_full(self._fd(shard), [memoryview(members).cast("B")], offset, members.nbytes):
                raise self._cut_short(shard)
            bad = layout.first_bad(np.arange(position, end, dtype=np.int64), members[:, :layout.head])
            if bad is not None:
                raise member_error(self.path(shard), offset + bad * layout.size, position + bad)
            window = slice(position - start, end - start)
            pixels[window] = members[:, layout.head:layout.label]
            labels[window] = members[:, layout.label:layout.label + 8].copy().view(LABEL_DTYPE)[:, 0]
            position = end
        self._verify(np.arange(start, stop), out, labels)

    def take(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        layout, row = self.layout, self.row
        heads, tails = np.empty((len(ids), layout.head), np.uint8), np.empty((len(ids), 8), np.uint8)
        head_views, tail_views, pixels = (memoryview(array).cast("B") for array in (heads, tails, out))
        where, size = self.index[ids], layout.head + row + 8
        order = np.argsort(where[:, 0], kind="stable")  # shard by shard: one descriptor lookup each
        for group in np.split(order, np.flatnonzero(np.diff(where[order, 0])) + 1):
            shard = int(where[group[0], 0])
            fd = self._fd(shard)
            for position, offset in zip(group.tolist(), where[group, 1].tolist()):
                views = [head_views[position * layout.head:(position + 1) * layout.head],
                         pixels[position * row:(position + 1) * row], tail_views[position * 8:(position + 1) * 8]]
                if os.preadv(fd, views, offset) != size and not preadv_full(fd, views, offset, size):
                    raise self._cut_short(shard)
        bad = layout.first_bad(ids, heads)
        if bad is not None:
            shard, offset = where[bad].tolist()
            raise member_error(self.path(shard), offset, int(ids[bad]))
        labels[:] = tails.view(LABEL_DTYPE)[:, 0]
        self._verify(ids, out, labels)

    def _verify(self, ids: np.ndarray, images: np.ndarray, labels: np.ndarray) -> None:
        if self.sums is not None:
            verify_checksums(ids, images, labels, self.sums[ids], self.folder)

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])


class WebDatasetStore(CheckpointedStore):
    """Images and labels in WebDataset tar shards with an index of member offsets, plus a journal."""

    method = "webdataset"
    POINTER, JOURNAL, FORMAT = POINTER, "webdataset.journal", "storage_impls.webdataset"
    OPTIONS = {"shard_size": byte_size()}

    def __init__(self, directory: str | os.PathLike, mode: Mode = "a", *, shard_size: int | str | None = None,
                 **options: object) -> None:
        # None: the store's recorded shard size (a new store: DEFAULT_SHARD_SIZE); a size: what store_many writes
        self._shard_size = check_options(self.method, self.OPTIONS, {"shard_size": shard_size}).get("shard_size")
        super().__init__(directory, mode, **options)

    def _open(self) -> None:
        if not (self.directory / self.POINTER).exists():
            refuse_foreign(self.directory, self.method)  # another method's store: say which
            foreign = sorted(self.directory.glob("*.tar"))
            if foreign:
                raise CorruptStoreError(f"{foreign[0]} is a tar shard this package did not write ({self.directory} "
                                        f"has no {self.POINTER}): a webdataset store needs a directory of its own")
        super()._open()

    def layout_limit(self, dtype: np.dtype, shape: tuple[int, ...], *, replacing: bool = False) -> str | None:
        return member_limit(np.dtype(dtype), tuple(shape))

    def _write_checkpoint(self, folder: Path, dtype: np.dtype, shape: tuple[int, ...], count: int, source: Source,
                          checksum: bool, codec: Codec) -> dict:
        if count > MAX_IDS:
            raise ValueError(f"a webdataset store holds at most {MAX_IDS} images (12-digit keys), not {count}")
        shard_size = self._shard_size if self._shard_size is not None else \
            self._meta["shard_size"] if self._meta else DEFAULT_SHARD_SIZE
        layout = MemberLayout(dtype, shape, max(0, int(time.time())))
        per_shard = shard_images(shard_size, layout.size)
        members = np.zeros((max(1, min(per_shard, WRITE_BYTES // layout.size)), layout.size), np.uint8)
        sums = np.empty(count, CHECKSUM_DTYPE) if checksum else None
        for shard, first in enumerate(range(0, count, per_shard)):
            last = min(count, first + per_shard)
            fd = os.open(folder / SHARD.format(index=shard), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                for start in range(first, last, len(members)):
                    images, labels = source(start, min(last, start + len(members)))
                    block = members[:len(images)]  # the padding after each label stays zero
                    layout.fill(block, start, images, labels)
                    write_all(fd, memoryview(block).cast("B"))
                    if sums is not None:
                        sums[start:start + len(images)] = image_checksums(images, labels)
                write_all(fd, memoryview(bytes(shard_bytes(last - first, layout.size) - (last - first) * layout.size)))
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        save(folder / INDEX, layout_index(count, per_shard, layout.size), durable=self.durable)
        if sums is not None:
            save(folder / CHECKSUMS, sums, durable=self.durable)
        return {"shard_size": shard_size, "shard_images": per_shard, "shards": -(-count // per_shard),
                "mtime": layout.mtime}

    def _open_checkpoint(self, folder: Path, meta: dict) -> Checkpoint:
        return TarCheckpoint(folder, meta)
