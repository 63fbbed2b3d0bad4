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

With a codec (``webdataset:codec=jpeg-90``, ``png``, ``webp-80``, ``webp-lossless``; codecs.py; ``raw``, the
default, is the layout above byte for byte) each image is WebDataset's usual sample of two members, as
``TarWriter`` writes ``{"__key__": key, "jpg": encoded bytes, "cls": label}``: ``<key>.cls`` (the label as
decimal text), then ``<key>.jpg`` (``.png``, ``.webp``: the codec's extension) holding the encoded file, so
``wds.WebDataset(shards).decode("rgb8").to_tuple("jpg", "cls")`` reads them (tested byte for byte against
``TarWriter``). Samples differ in size: a shard takes samples while they fit in ``shard_size`` (at least one),
``index.npy`` is (N, 3) (shard, offset of the sample's ``.cls`` member, length of the encoded file), checked at
open to describe samples that follow one another from each shard's start and each shard's exact size, and the
metadata records ``shards`` and ``codec`` (no ``shard_images``). WebDataset's shards carry no description of
their own beyond the member extensions, so the quality is in ``webdataset.json`` only. Labels come from the
``.cls`` members, as raw labels come from the members, not from the index. ``checksums.npy`` holds the xxh3_64
of each encoded file seeded with its label.

Why one member, label inside (measured in tests/test_methods_webdataset.py): a tar member costs a
512-byte header and pads its data to 512 bytes. At 32x32x3 uint8 (3072 bytes of pixels) this layout
takes 4096 bytes per image (+33 %), raw pixels + ``.cls`` 4608, ``.npy`` + ``.cls`` 5120 (+67 %), and
``TarWriter`` with its default float mtime 7168 (each member also gets a PAX header). An encoded sample
takes 1536 bytes (two headers, the label's block) plus its file padded to 512: at 32x32x3 the synthetic
images' JPEGs at quality 90 (about 1 KB) take 2560 or 3072 bytes per image, 2662 on average, 35 % less than raw.

Writes: ``store_many`` assembles 4 MiB of members at a time with numpy (a header template in which only
the name and the header checksum change) and writes each shard with ``os.write`` into the checkpoint's
temporary folder, which CheckpointedStore renames into place before switching the metadata (the
commit); with a codec, 4 MiB of pixels are encoded at a time and their samples joined (headers made with
numpy). ``store_single`` appends to CheckpointedStore's journal (O(1), atomic; with a codec the record holds
the encoded file, which folding copies: an image is encoded once; folded into new shards past its
threshold): tar shards are written whole, never edited. Readers of the shards themselves
(WebDataset, tar) see the last checkpoint, not the journal records made since.

Reads: ``read_many`` streams each shard in order, 1 MiB of whole members per ``preadv`` into a reused
buffer, and copies pixels and labels out with numpy (measured against scattering each member's pixels
straight into the caller's array, one iovec each: 1.2x faster at 32x32x3, 3x at 8x8, 13 % slower at
256x256x3). ``read_batch`` gathers its members from read-only maps of the shards (mapped on first read), shard by
shard with numpy: pixels, headers and labels one copy each per batch (a ``preadv`` per member cost three times
a gather's whole time, issue 24). Each shard's size is checked before every gather, so a shard cut short while
open raises CorruptStoreError; one cut at the same moment as the gather can still kill the process with SIGBUS,
as with any memory map (npy-memmap, hdf5, lmdb).
Every read compares each member's first 640 bytes with what this store wrote for that id, so a damaged
header, a wrong offset or a foreign member raises CorruptStoreError naming the shard and byte; pixels
and labels are checked with ``checksum=True``. Encoded samples (``payloads``): consecutive ids of a shard are
read with one ``preadv`` (a shuffled batch: one per id) from the ``.cls`` header to the end of the encoded
file, whose first 1536 bytes (both headers, the label's text block) are compared with what this store writes
for that id, label and length; the label's text must be an int64 written as ``str`` writes it; the encoded bytes
(checked against ``checksums.npy`` first) are decoded by CheckpointedStore into the caller's array. Shards
are opened on first read (MAX_OPEN_SHARDS stay open), so a reader's snapshot expires once a later commit
removes its folder: reads of shards it had not opened then raise MissingStoreError ("open it again").
"""

from __future__ import annotations

import mmap
import os
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from storage_impls.core.base import ImageStore, Mode
from storage_impls.core.checkpointed import Checkpoint, EncodedCheckpointedStore, Source
from storage_impls.core.codecs import RAW, Codec
from storage_impls.core.errors import CorruptStoreError
from storage_impls.core.fileio import READ_FLAGS
from storage_impls.core.options import byte_size, check_options
from storage_impls.core.records import image_checksums, refuse_foreign, verify_checksums
from storage_impls.formats.npy import load, save
from storage_impls.methods.webdataset.format import (
    MAX_IDS,
    MAX_TAR_SIZE,
    MemberLayout,
    SampleLayout,
    archive_bytes,
    encoded_shard_sizes,
    layout_index,
    member_error,
    member_limit,
    preadv_full,
    sample_bytes,
    shard_bytes,
    shard_capacity,
    shard_images,
    write_all,
)

DEFAULT_SHARD_SIZE = 100 << 20  # streams well and leaves several shards to a store of 10^5 small images;
# published WebDatasets often use about 1 GB (OpenImages, Hugging Face): shard_size=1GiB
MAX_OPEN_SHARDS = 256  # shard files a handle keeps open (least recently read closed first): 25 GiB at the default size
WRITE_BYTES = 4 << 20  # members assembled in memory and written at a time
GATHER_BYTES = 1 << 20  # members read_batch gathers from a shard's map at a time
STREAM_BYTES = 1 << 20  # members read_many reads at a time (measured: 1 MiB beats 256 KiB and 4 MiB)
SHARD = "shard-{index:06d}.tar"
INDEX, CHECKSUMS = "index.npy", "checksums.npy"
INDEX_DTYPE, LABEL_DTYPE, CHECKSUM_DTYPE = np.dtype("<i8"), np.dtype("<i8"), np.dtype("<u8")
POINTER = "webdataset.json"
OPTIONS = {"shard_size": byte_size()}


class TarCheckpoint(Checkpoint):
    """A folder of tar shards and their index; shards opened on first read."""

    def __init__(self, folder: Path, meta: dict) -> None:
        super().__init__(folder, meta)
        try:
            if (
                type(meta["mtime"]) is not int
                or not 0 <= meta["mtime"] <= MAX_TAR_SIZE
                or self.count > MAX_IDS
                or type(meta["shard_size"]) is not int
                or meta["shard_size"] < 0
                or type(meta["shards"]) is not int
            ):
                raise ValueError("a field is out of range")
            expected = self._raw_layout(meta) if self.codec is RAW else (None, meta["shards"])  # encoded: in the index
            if (meta.get("shard_images"), meta["shards"]) != expected:
                raise ValueError(
                    f"{meta.get('shard_images')!r} images in {meta['shards']!r} shards, expected "
                    f"{expected[0]} in {expected[1]}"
                )
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptStoreError(f"{folder.parent / POINTER}: not a webdataset store's metadata ({error})") from None
        self.shards = meta["shards"]
        self.index, self.shard_sizes = self._raw_index() if self.codec is RAW else self._encoded_index(meta["mtime"])
        self.sums = load(folder / CHECKSUMS, CHECKSUM_DTYPE, (self.count,)) if self.checksum else None
        for shard in range(self.shards):
            self._check_size(shard, os.stat(self.path(shard)).st_size)
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._maps: dict[int, np.ndarray] = {}  # raw shards' members over their maps (take), mapped on first use
        self._buffer: np.ndarray | None = None  # read_many's block of whole members, made on first use

    def _raw_layout(self, meta: dict) -> tuple[int, int]:
        """Raw pixels: the member layout; images per shard and shards as the metadata must record them."""
        self.layout = MemberLayout(self.dtype, self.shape, meta["mtime"])
        self.per_shard = shard_images(meta["shard_size"], self.layout.size)
        return self.per_shard, -(-self.count // self.per_shard)

    def _raw_index(self) -> tuple[np.ndarray, list[int]]:
        """Raw pixels: the index, which must be the layout's, and each shard's size."""
        index = load(self.folder / INDEX, INDEX_DTYPE, (self.count, 2))
        if not np.array_equal(index, layout_index(self.count, self.per_shard, self.layout.size)):
            raise CorruptStoreError(
                f"{self.folder / INDEX} does not match the shards' layout ({self.per_shard} members of "
                f"{self.layout.size} bytes per shard): damaged, or from another store"
            )
        members = [min(self.per_shard, self.count - shard * self.per_shard) for shard in range(self.shards)]
        return index.astype(np.int64), [shard_bytes(images, self.layout.size) for images in members]

    def _encoded_index(self, mtime: int) -> tuple[np.ndarray, list[int]]:
        """Encoded samples: the index (shard, offset, encoded length), which must describe whole shards, and their
        sizes."""
        self.samples = SampleLayout(self.codec.extension, mtime)
        index = load(self.folder / INDEX, INDEX_DTYPE, (self.count, 3)).astype(np.int64)
        try:
            return index, encoded_shard_sizes(index, self.shards).tolist()
        except ValueError as error:
            raise CorruptStoreError(
                f"{self.folder / INDEX} does not describe {self.shards} shards of whole samples "
                f"({error}): damaged, or from another store"
            ) from None

    def path(self, shard: int) -> Path:
        return self.folder / SHARD.format(index=shard)

    def _check_size(self, shard: int, size: int) -> None:
        if size != self.shard_sizes[shard]:
            raise CorruptStoreError(
                f"{self.path(shard)} is {size} bytes, expected {self.shard_sizes[shard]} (the members "
                "its index names and the end of the archive): cut short, or not a shard this store wrote"
            )

    def _cut_short(self, shard: int) -> CorruptStoreError:
        return CorruptStoreError(f"{self.path(shard)} ends before the members its index names (cut short while open?)")

    def _fd(self, shard: int) -> int:
        """An open descriptor of ``shard`` (opened and its size checked on first use)."""
        fd = self._fds.get(shard)
        if fd is not None:
            self._fds.move_to_end(shard)
            return fd
        fd = os.open(self.path(shard), READ_FLAGS)
        try:
            self._check_size(shard, os.fstat(fd).st_size)
        except BaseException:
            os.close(fd)
            raise
        self._fds[shard] = fd
        if len(self._fds) > MAX_OPEN_SHARDS:
            evicted, old = self._fds.popitem(last=False)
            self._maps.pop(evicted, None)
            os.close(old)
        return fd

    def read_rows(self, start: int, out: np.ndarray, labels: np.ndarray) -> None:
        layout, stop, position = self.layout, start + len(out), start
        if self._buffer is None:
            self._buffer = np.empty((max(1, STREAM_BYTES // layout.size), layout.size), np.uint8)
        pixels = out.reshape(len(out), -1).view(np.uint8)
        while position < stop:
            shard, offset = self.index[position].tolist()
            end = min(stop, (shard + 1) * self.per_shard, position + len(self._buffer))
            members = self._buffer[: end - position]
            if not preadv_full(self._fd(shard), [memoryview(members).cast("B")], offset, members.nbytes):
                raise self._cut_short(shard)
            bad = layout.first_bad(np.arange(position, end, dtype=np.int64), members[:, : layout.head])
            if bad is not None:
                raise member_error(self.path(shard), offset + bad * layout.size, position + bad)
            window = slice(position - start, end - start)
            pixels[window] = members[:, layout.head : layout.label]
            labels[window] = members[:, layout.label : layout.label + 8].copy().view(LABEL_DTYPE)[:, 0]
            position = end
        self._verify(np.arange(start, stop), out, labels)

    def _members(self, shard: int) -> np.ndarray:
        """The members of raw ``shard`` as a (members, size) uint8 array over a read-only map of the file, mapped on
        first use; CorruptStoreError if the file is shorter than they are now (cut short while open: checked on
        every call, so that a read raises instead of the map's SIGBUS, except for a cut racing the read itself)."""
        fd = self._fd(shard)
        members = min(self.per_shard, self.count - shard * self.per_shard)
        if os.fstat(fd).st_size < members * self.layout.size:
            raise self._cut_short(shard)
        rows = self._maps.get(shard)
        if rows is None:
            pages = mmap.mmap(fd, members * self.layout.size, access=mmap.ACCESS_READ)
            rows = self._maps[shard] = np.frombuffer(pages, np.uint8).reshape(members, self.layout.size)
        return rows

    def take(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        """Gathered from the shards' maps, shard by shard, no system call per image (issue 24: with a ``preadv`` per
        member a batch took 7.9x the CPU time of the gather floor, gathered from the maps 3.4x)."""
        layout = self.layout
        where = self.index[ids]
        shards, members = where[:, 0], where[:, 1] // layout.size
        heads, tails = np.empty((len(ids), layout.head), np.uint8), np.empty((len(ids), 8), np.uint8)
        pixels = out.reshape(len(ids), -1).view(np.uint8)
        order = np.arange(len(ids)) if shards.min() == shards.max() else np.argsort(shards, kind="stable")
        step = GATHER_BYTES // layout.size  # numpy gathers into a temporary first: keep it small
        for group in np.split(order, np.flatnonzero(np.diff(shards[order])) + 1):
            rows = self._members(int(shards[group[0]]))
            # large images one at a time: an int index copies straight from the map, a gather would copy twice
            spans = (
                zip(group.tolist(), members[group].tolist())
                if step < 16
                else ((at, members[at]) for at in (group[start : start + step] for start in range(0, len(group), step)))
            )
            for at, rank in spans:
                pixels[at] = rows[rank, layout.head : layout.label]
                heads[at] = rows[rank, : layout.head]
                tails[at] = rows[rank, layout.label : layout.label + 8]
        bad = layout.first_bad(ids, heads)
        if bad is not None:
            shard, offset = where[bad].tolist()
            raise member_error(self.path(shard), offset, int(ids[bad]))
        labels[:] = tails.view(LABEL_DTYPE)[:, 0]
        self._verify(ids, out, labels)

    def payloads(self, ids: np.ndarray) -> tuple[list[memoryview], np.ndarray]:
        """Each run of consecutive ids in one shard read with one preadv (a random id alone) into one buffer; the heads
        compared with what this store writes, the labels parsed from them; memoryviews of the encoded bytes."""
        unique, inverse = np.unique(ids, return_inverse=True)
        shard, offset, length = self.index[unique].T
        ends = offset + SampleLayout.HEAD + length  # the padding after the last sample of a run is not read
        first = (np.diff(unique, prepend=-2) != 1) | (np.diff(shard, prepend=-1) != 0)  # a sample that starts a run
        runs = np.flatnonzero(first)
        run = np.cumsum(first) - 1  # each sample's run
        run_bytes = ends[np.append(runs[1:], len(unique)) - 1] - offset[runs]
        run_at = np.cumsum(run_bytes) - run_bytes  # where each run starts in the buffer
        buffer = np.empty(int(run_bytes.sum()), np.uint8)
        where = run_at[run] + offset - offset[runs][run]  # each sample's position in the buffer
        view = memoryview(buffer)
        for run_shard, start, size, at in zip(
            shard[runs].tolist(), offset[runs].tolist(), run_bytes.tolist(), run_at.tolist()
        ):
            if not preadv_full(self._fd(run_shard), [view[at : at + size]], start, size):
                raise self._cut_short(run_shard)
        heads = np.lib.stride_tricks.sliding_window_view(buffer, SampleLayout.HEAD)[where]  # (n, HEAD) copied
        labels, bad = self.samples.labels(unique, heads, length)
        if bad is not None:
            raise CorruptStoreError(
                f"{self.path(int(shard[bad]))}: the sample at byte {offset[bad]} is not "
                f"{unique[bad]:012d}.cls and .{self.codec.extension} as this store writes them (a "
                "damaged header or label, or a shard from another tool)"
            )
        payloads = [
            view[begin : begin + size] for begin, size in zip((where + SampleLayout.HEAD).tolist(), length.tolist())
        ]
        if self.sums is not None:
            verify_checksums(unique, payloads, labels, self.sums[unique], self.folder)
        return [payloads[position] for position in inverse.reshape(-1).tolist()], labels[inverse.reshape(-1)]

    def _verify(self, ids: np.ndarray, images: np.ndarray, labels: np.ndarray) -> None:
        if self.sums is not None:
            verify_checksums(ids, images, labels, self.sums[ids], self.folder)

    def close(self) -> None:
        self._maps.clear()  # each map closes with the last array over it
        while self._fds:
            os.close(self._fds.popitem()[1])


class WebDatasetStore(EncodedCheckpointedStore):
    """Images and labels in WebDataset tar shards with an index of member offsets, plus a journal."""

    method = "webdataset"
    POINTER, JOURNAL, FORMAT = POINTER, "webdataset.journal", "storage_impls.webdataset"
    OPTIONS = {**EncodedCheckpointedStore.OPTIONS, **OPTIONS}

    def __init__(
        self, directory: str | os.PathLike, mode: Mode = "a", *, shard_size: int | str | None = None, **options: object
    ) -> None:
        # None: the store's recorded shard size (a new store: DEFAULT_SHARD_SIZE); a size: what store_many writes
        self._shard_size = check_options(self.method, OPTIONS, {"shard_size": shard_size}).get("shard_size")
        super().__init__(directory, mode, **options)

    def _open(self) -> None:
        if not (self.directory / self.POINTER).exists():
            refuse_foreign(self.directory, self.method)  # another method's store: say which
            foreign = sorted(self.directory.glob("*.tar"))
            if foreign:
                raise CorruptStoreError(
                    f"{foreign[0]} is a tar shard this package did not write ({self.directory} "
                    f"has no {self.POINTER}): a webdataset store needs a directory of its own"
                )
        super()._open()

    def layout_limit(self, dtype: np.dtype, shape: tuple[int, ...], *, replacing: bool = False) -> str | None:
        codec = self.writing_codec(replacing)
        return member_limit(np.dtype(dtype), tuple(shape)) if codec is RAW else codec.limit(dtype, shape)

    def _write_checkpoint(
        self,
        folder: Path,
        dtype: np.dtype,
        shape: tuple[int, ...],
        count: int,
        source: Source,
        checksum: bool,
        codec: Codec,
    ) -> dict:
        if count > MAX_IDS:
            raise ValueError(f"a webdataset store holds at most {MAX_IDS} images (12-digit keys), not {count}")
        shard_size = (
            self._shard_size
            if self._shard_size is not None
            else self._meta["shard_size"]
            if self._meta
            else DEFAULT_SHARD_SIZE
        )
        mtime = max(0, int(time.time()))
        sums = np.empty(count, CHECKSUM_DTYPE) if checksum else None
        if codec is RAW:
            index, added = self._write_members(
                folder, MemberLayout(dtype, shape, mtime), count, source, sums, shard_size
            )
        else:
            step = max(1, WRITE_BYTES // (int(np.prod(shape)) * dtype.itemsize))  # images encoded at a time
            index, added = self._write_samples(
                folder, SampleLayout(codec.extension, mtime), count, source, sums, shard_size, step
            )
        save(folder / INDEX, index, durable=self.durable)
        if sums is not None:
            save(folder / CHECKSUMS, sums, durable=self.durable)
        return {"shard_size": shard_size, "mtime": mtime, **added}

    def _write_members(
        self, folder: Path, layout: MemberLayout, count: int, source: Source, sums: np.ndarray | None, shard_size: int
    ) -> tuple[np.ndarray, dict]:
        """Raw pixels: members of one size, assembled a block at a time; the index and what the metadata adds."""
        per_shard = shard_images(shard_size, layout.size)
        members = np.zeros((max(1, min(per_shard, WRITE_BYTES // layout.size)), layout.size), np.uint8)
        for shard, first in enumerate(range(0, count, per_shard)):
            last = min(count, first + per_shard)
            fd = self._create_shard(folder, shard)
            try:
                for start in range(first, last, len(members)):
                    images, labels = source(start, min(last, start + len(members)))
                    block = members[: len(images)]  # the padding after each label stays zero
                    layout.fill(block, start, images, labels)
                    write_all(fd, memoryview(block).cast("B"))
                    if sums is not None:
                        sums[start : start + len(images)] = image_checksums(images, labels)
                self._end_shard(fd, (last - first) * layout.size)
            finally:
                os.close(fd)
        return layout_index(count, per_shard, layout.size), {
            "shard_images": per_shard,
            "shards": -(-count // per_shard),
        }

    def _write_samples(
        self,
        folder: Path,
        layout: SampleLayout,
        count: int,
        source: Source,
        sums: np.ndarray | None,
        shard_size: int,
        step: int,
    ) -> tuple[np.ndarray, dict]:
        """Encoded images: samples (two members each) in shards of at most ``shard_size`` bytes (at least one
        sample each), ``step`` images at a time; the index and what the metadata adds."""
        index, capacity = np.empty((count, 3), INDEX_DTYPE), shard_capacity(shard_size)
        shard, used, fd = 0, 0, self._create_shard(folder, 0)
        try:
            for start in range(0, count, step):
                payloads, labels = source(start, min(count, start + step))
                lengths = np.array([len(payload) for payload in payloads], np.int64)
                if lengths.max() > MAX_TAR_SIZE:
                    raise ValueError(f"an encoded image of {lengths.max()} bytes does not fit in a tar member")
                heads, first = layout.heads(np.arange(start, start + len(payloads)), labels, lengths), 0
                for position, size in enumerate(sample_bytes(lengths).tolist()):
                    if used and used + size > capacity:  # this sample starts the next shard
                        write_all(
                            fd, memoryview(b"".join(layout.members(heads[first:position], payloads[first:position])))
                        )
                        self._end_shard(fd, used)
                        closing, fd = fd, None
                        os.close(closing)
                        shard, used, first = shard + 1, 0, position
                        fd = self._create_shard(folder, shard)
                    index[start + position] = shard, used, lengths[position]
                    used += size
                write_all(fd, memoryview(b"".join(layout.members(heads[first:], payloads[first:]))))
                if sums is not None:
                    sums[start : start + len(payloads)] = image_checksums(payloads, labels)
            self._end_shard(fd, used)
        finally:
            if fd is not None:
                os.close(fd)
        return index, {"shards": shard + 1}

    @staticmethod
    def _create_shard(folder: Path, shard: int) -> int:
        return os.open(folder / SHARD.format(index=shard), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def _end_shard(self, fd: int, members: int) -> None:
        """Write the end of the archive after ``members`` bytes of members (padding to a whole record); fsync if
        durable."""
        write_all(fd, memoryview(bytes(archive_bytes(members) - members)))
        if self.durable:
            os.fsync(fd)

    def _open_checkpoint(self, folder: Path, meta: dict) -> Checkpoint:
        return TarCheckpoint(folder, meta)

    @classmethod
    def remote_reader(cls) -> type[ImageStore]:
        from storage_impls.methods.webdataset.remote import RemoteWebDatasetStore  # it imports this module

        return RemoteWebDatasetStore
