"""Floors: the least work any correct implementation could do for the same result, timed in the same run as the cells.

Each floor is a cell of method ``floor-<name>`` and operation ``floor`` at one image count (``cutoff``), with the
suite's rules: its inputs are prepared untimed (files written, images encoded, handles opened once), each round
writes to a new file or folder (``file-append``: appends to one open file) or reads into a page-aligned buffer zeroed
before it, and what it wrote or read is checked against the images after the rounds. Files are written and read with
``os`` calls on open descriptors, the cheapest way Python has. The I/O floors move a :class:`Payload`: the raw pixels
(``codec`` raw, test ids ``[raw-<images>]``) or, for each codec spec the ``--methods`` use (png always), the images'
encoded bytes, as a store of that codec holds them. The codec floors (``test_floor_encode``, ``test_floor_decode``)
run once per such spec, each through ``codecs.get_codec(spec)``, the code the stores run. Which floor bounds which
cell: benchmarks/floors.py. Only the floors a selected cell needs run, each just before the first cell that needs it
(benchmarks/conftest.py); ``pytest benchmarks/test_floors.py`` runs them all.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks import cache as page_cache
from benchmarks.buffers import page_aligned_empty
from benchmarks.floor_inputs import FloorInputs, Payload, decode_all, encode_all, mapped, read_into, write_all
from benchmarks.floors import CODEC_STEPS, FLOOR_PREFIX, floor_codecs, floor_of_test
from benchmarks.verify import verify_images
from storage_impls.core.codecs import RAW, Codec, get_codec

GATHER_SEED = 0  # the permutation the gather floor reads its batches in
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The codec floors over the codec specs of ``--methods`` (benchmarks.floors.floor_codecs), not over every spec."""
    if "codec" in metafunc.fixturenames:
        specs = floor_codecs(metafunc.config.getoption("methods"))
        io = floor_of_test(metafunc.definition.originalname, {}) not in CODEC_STEPS.values()
        metafunc.parametrize("codec", (RAW.spec, *specs) if io else specs)


@pytest.fixture
def operation() -> str:
    return "floor"


@pytest.fixture
def method(request: pytest.FixtureRequest) -> str:
    """``test_floor_file_write`` is the cell of method ``floor-file-write``, ``test_floor_encode[jpeg-90-10]`` of
    ``floor-jpeg-90-encode``."""
    return FLOOR_PREFIX + floor_of_test(request.node.originalname, request.node.callspec.params)


@pytest.fixture(scope="session")
def floor_inputs(pytestconfig: pytest.Config, storage_root: Path, dataset) -> FloorInputs:
    return FloorInputs(pytestconfig, storage_root / "floor-inputs", dataset.images)


@pytest.fixture
def cell_dir(storage_root: Path, request: pytest.FixtureRequest) -> Path:
    """The cell's own folder for what its rounds write. It stays until the run folder is removed at the end: floors
    run just before the cells they bound, and deleting many files right before a cell slows its file creation."""
    folder = storage_root / "floors" / request.node.name
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def source(dataset, cutoff: int) -> np.ndarray:
    return dataset.images[:cutoff]


def zeroed(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A read buffer: page-aligned, as the cells' (buffers.py), zeroed."""
    buffer = page_aligned_empty(shape, dtype)
    buffer.fill(0)
    return buffer


@pytest.fixture
def out(source: np.ndarray) -> np.ndarray:
    return zeroed(source.shape, source.dtype)


@pytest.fixture
def payload(codec: str, source: np.ndarray, floor_inputs: FloorInputs, benchmark) -> Payload:
    """The bytes the I/O floor moves: the raw pixels, or the images encoded as a store of ``codec`` holds them
    (recorded as ``payload_bytes``)."""
    if codec != RAW.spec:
        holding(codec, source)
    result = floor_inputs.payload(codec, len(source))
    benchmark.extra_info["payload_bytes"] = int(result.whole.nbytes)
    return result


@pytest.fixture
def out_bytes(payload: Payload) -> np.ndarray:
    return zeroed(payload.whole.shape, np.uint8)


@pytest.fixture(scope="session")
def held() -> Iterator[contextlib.ExitStack]:
    """What a floor keeps open (descriptors) until the session ends: later cells interleave its rounds with theirs
    (benchmarks/interleave.py)."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture
def durable(pytestconfig: pytest.Config) -> bool:
    return pytestconfig.getoption("durable")


def zeroing(out: np.ndarray, then: Callable[[], object] = lambda: None) -> Callable[[], tuple[tuple, dict]]:
    """A round's setup: zero the output (so only this round's reads can fill it), then ``then``."""

    def setup() -> tuple[tuple, dict]:
        out.fill(0)
        then()
        return (), {}

    return setup


def sync_folder(folder: Path | int) -> None:
    fd = os.open(folder, os.O_RDONLY) if isinstance(folder, Path) else folder
    os.fsync(fd)
    if isinstance(folder, Path):
        os.close(fd)


def test_floor_memcpy(measure, record, source, out):
    """Timed: a copy of the images' bytes from a page-aligned array (made untimed) into the zeroed, page-aligned
    buffer, both seen as flat bytes (numpy sets up a copy of (N, H, W, C) arrays in about 0.6 us more here)."""
    aligned = zeroed(source.shape, source.dtype)
    np.copyto(aligned, source)
    flat_in, flat_out = aligned.reshape(-1).view(np.uint8), out.reshape(-1).view(np.uint8)
    record(len(source))
    measure(lambda: np.copyto(flat_out, flat_in), zeroing(out))
    verify_images("floor memcpy", out, source)


def test_floor_file_write(measure, record, payload, cell_dir, durable, held):
    """A new, empty file opened per round, the previous one removed (untimed); timed: writing the payload to it
    (and fsync when durable)."""
    paths: list[Path] = []
    descriptors: list[int] = []

    def open_next() -> tuple[tuple, dict]:
        if descriptors:
            os.close(descriptors.pop())
        page_cache.start_write_round(paths[-1] if paths else None, len(payload.images), file_per_image=False)
        paths.append(cell_dir / f"round-{len(paths)}.raw")
        descriptors.append(os.open(paths[-1], NEW_FILE, 0o644))
        return (descriptors[-1],), {}

    def write(fd: int) -> None:
        write_all(fd, payload.whole)
        if durable:
            os.fsync(fd)
            sync_folder(cell_dir)

    held.callback(lambda: [os.close(fd) for fd in descriptors])
    record(len(payload.images))
    measure(write, open_next)
    payload.check("floor file-write", np.fromfile(paths[-1], np.uint8))


def test_floor_file_append(measure, record, payload, cell_dir, durable, held):
    """One file opened once (untimed); timed: each image's bytes appended to it with a write of its own, as single
    writes into a filled store append their records (an fdatasync after each when durable). Rounds start as the
    cells' do, with nothing but the ids drawn."""
    fd = os.open(cell_dir / "appended.raw", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
    blobs = payload.blobs()

    def append() -> None:
        for blob in blobs:
            write_all(fd, blob)
            if durable:
                os.fdatasync(fd)

    held.callback(os.close, fd)
    record(len(payload.images))
    measure(append, lambda: ((), {}))
    size = os.fstat(fd).st_size
    last = os.pread(fd, payload.whole.nbytes, size - payload.whole.nbytes)
    payload.check("floor file-append", np.frombuffer(last, np.uint8))


def test_floor_file_read(measure, record, payload, out_bytes, floor_inputs, held):
    """Timed: one pread of the payload from an open file into a zeroed, page-aligned buffer."""
    fd = os.open(floor_inputs.file(payload), os.O_RDONLY)
    held.callback(os.close, fd)
    record(len(payload.images))
    measure(lambda: read_into(fd, out_bytes), zeroing(out_bytes))
    payload.check("floor file-read", out_bytes)


def test_floor_mapped_copy(measure, record, payload, out_bytes, floor_inputs):
    """The file mapped once, as a store keeps its map (untimed); timed: a copy of its pages into the zeroed buffer."""
    pages = mapped(floor_inputs.file(payload))
    record(len(payload.images))
    measure(lambda: np.copyto(out_bytes, pages), zeroing(out_bytes))
    payload.check("floor mapped-copy", out_bytes)


def test_floor_file_read_cold(measure, record, benchmark, payload, out_bytes, floor_inputs, held):
    """file-read after dropping the file from the page cache before each round (untimed, residency checked)."""
    if reason := page_cache.supported():
        pytest.skip(reason)
    path = floor_inputs.file(payload, "-cold")
    resident: list[float] = []

    def drop() -> None:
        resident.append(page_cache.evict(path))

    fd = os.open(path, os.O_RDONLY)
    held.callback(os.close, fd)
    record(len(payload.images))
    measure(lambda: read_into(fd, out_bytes), zeroing(out_bytes, drop))
    payload.check("floor file-read-cold", out_bytes)
    benchmark.extra_info["resident_fraction_before"] = max(resident)
    if max(resident) > page_cache.MAX_RESIDENT_FRACTION:
        pytest.fail(
            f"floor file-read-cold: {max(resident):.1%} of the file stayed in the page cache after dropping it "
            f"(at most {page_cache.MAX_RESIDENT_FRACTION:.0%} allowed)",
            pytrace=False,
        )


def test_floor_files_write(measure, record, payload, cell_dir, durable):
    """A new folder per round, the previous one removed unless it holds many files (untimed); timed: one new file
    per image, written and closed (fsynced when durable)."""
    folders: list[Path] = []
    blobs = payload.blobs()
    names = [str(image_id) for image_id in range(len(blobs))]

    def open_next() -> tuple[tuple, dict]:
        page_cache.start_write_round(folders[-1] if folders else None, len(blobs), file_per_image=True)
        folders.append(cell_dir / f"round-{len(folders)}")
        folders[-1].mkdir()
        return (os.open(folders[-1], os.O_RDONLY),), {}

    def write(folder: int) -> None:
        try:
            for name, blob in zip(names, blobs):
                fd = os.open(name, NEW_FILE, 0o644, dir_fd=folder)
                write_all(fd, blob)
                if durable:
                    os.fsync(fd)
                os.close(fd)
            if durable:
                sync_folder(folder)
        finally:
            os.close(folder)

    record(len(blobs))
    measure(write, open_next)
    payload.check("floor files-write", np.concatenate([np.fromfile(folders[-1] / name, np.uint8) for name in names]))


def test_floor_files_read(measure, record, payload, out_bytes, floor_inputs, held):
    """Timed: open, read into its slot and close each image's file."""
    folder = os.open(floor_inputs.files(payload), os.O_RDONLY)
    slots = list(
        zip(
            (str(image_id) for image_id in range(len(payload.images))),
            (out_bytes[start:stop] for start, stop in zip(payload.offsets[:-1], payload.offsets[1:])),
        )
    )

    def read() -> None:
        for name, target in slots:
            fd = os.open(name, os.O_RDONLY, dir_fd=folder)
            read_into(fd, target)
            os.close(fd)

    held.callback(os.close, folder)
    record(len(payload.images))
    measure(read, zeroing(out_bytes))
    payload.check("floor files-read", out_bytes)


def holding(spec: str, images: np.ndarray) -> Codec:
    """The codec ``spec``; the floor is skipped, saying why, when it cannot hold the images (as its cells are)."""
    codec = get_codec(spec)
    if limit := codec.limit(images.dtype, images.shape[1:]):
        pytest.skip(f"{spec} cannot hold these images: {limit}")
    return codec


def test_floor_encode(measure, record, source, codec, references):
    """Timed: ``codec`` (png, jpeg-90...) encoding every image. The last round's bytes must decode to what a cell
    of that codec reads back: the images, or for a lossy codec what Pillow alone gives, within the codec's PSNR
    floor (benchmarks/codec_reference.py)."""
    encoder = holding(codec, source)
    record(len(source))
    blobs = measure(lambda: encode_all(encoder, source), lambda: ((), {}))
    back = np.zeros_like(source)
    decode_all(encoder, blobs, back)
    references(codec).check(f"floor {codec}-encode", back, None, slice(0, len(source)))


def test_floor_decode(measure, record, source, out, codec, references, floor_inputs):
    """Timed: ``codec`` decoding every image into its slot, from bytes in memory (encoded once per session)."""
    decoder = holding(codec, source)
    blobs = floor_inputs.encoded(codec, len(source))
    record(len(source))
    measure(lambda: decode_all(decoder, blobs, out), zeroing(out))
    references(codec).check(f"floor {codec}-decode", out, None, slice(0, len(source)))


def test_floor_gather(measure, record, benchmark, payload, out_bytes, floor_inputs, batch):
    """Timed: shuffled batches of a seeded permutation gathered from a mapped file into their slots (raw pixels:
    ``np.take`` per batch; encoded bytes: a copy per image)."""
    count = len(payload.images)
    order = np.random.default_rng(GATHER_SEED).permutation(count)
    batches = [order[start : start + batch] for start in range(0, count, batch)]
    pages = mapped(floor_inputs.file(payload))
    if payload.codec == RAW.spec:
        rows, out_rows = pages.reshape(count, -1), out_bytes.reshape(count, -1)
        starts = range(0, count, batch)

        def gather() -> None:
            for start, ids in zip(starts, batches):
                np.take(
                    rows, ids, axis=0, out=out_rows[start : start + len(ids)], mode="clip"
                )  # "clip": out unbuffered
    else:
        sizes = np.diff(payload.offsets)[order]
        targets = np.concatenate([[0], np.cumsum(sizes)])
        offsets = payload.offsets
        copies = [
            (out_bytes[targets[slot] : targets[slot + 1]], pages[offsets[image_id] : offsets[image_id + 1]])
            for slot, image_id in enumerate(order.tolist())
        ]

        def gather() -> None:
            for target, blob in copies:
                target[:] = blob

    record(count)
    benchmark.group = f"floor {count} b{batch}"
    benchmark.extra_info.update(batch_size=batch, permutation_seed=GATHER_SEED)
    measure(gather, zeroing(out_bytes))
    payload.check("floor gather", out_bytes, order)
