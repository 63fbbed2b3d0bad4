"""Floors: what the hardware or a library does alone with the same images, timed in the same run as the cells.

Each floor is a cell of method ``floor-<name>`` and operation ``floor`` at one image count (``cutoff``), with the
suite's rules: its inputs are prepared untimed (files written, images encoded, handles opened once), each round
writes to a new file or folder or reads into a buffer zeroed before it, and what it wrote or read is checked
against the images after the rounds. Files are written and read with ``os`` calls on open descriptors, the
cheapest way Python has. The codec floors (``test_floor_encode``, ``test_floor_decode``) run once per codec spec
the ``--methods`` use, png always (``pytest_generate_tests`` here), each through ``codecs.get_codec(spec)``, the
code the stores run. Which floor bounds which cell: benchmarks/floors.py. Only the floors a selected cell needs
run, each just before the first cell that needs it (benchmarks/conftest.py); ``pytest benchmarks/test_floors.py``
runs them all.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from benchmarks import cache as page_cache
from benchmarks.buffers import page_aligned_empty
from benchmarks.floors import FLOOR_PREFIX, floor_codecs, floor_of_test
from benchmarks.progress import announce
from benchmarks.verify import verify_images
from storage_impls.core.codecs import Codec, get_codec

GATHER_SEED = 0  # the permutation the gather floor reads its batches in
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The codec floors over the codec specs of ``--methods`` (benchmarks.floors.floor_codecs), not over every spec."""
    if "codec" in metafunc.fixturenames:
        metafunc.parametrize("codec", floor_codecs(metafunc.config.getoption("methods")))


@pytest.fixture
def operation() -> str:
    return "floor"


@pytest.fixture
def method(request: pytest.FixtureRequest) -> str:
    """``test_floor_file_write`` is the cell of method ``floor-file-write``, ``test_floor_encode[jpeg-90-10]`` of
    ``floor-jpeg-90-encode``."""
    return FLOOR_PREFIX + floor_of_test(request.node.originalname, request.node.callspec.params)


def write_all(fd: int, data: np.ndarray) -> None:
    """Write the whole array at the descriptor's position (os.write may write less than asked)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def read_into(fd: int, out: np.ndarray, offset: int = 0) -> None:
    """Fill ``out`` from the descriptor at ``offset`` (os.preadv may read less than asked)."""
    view = memoryview(out).cast("B")
    while view:
        done = os.preadv(fd, [view], offset)
        if done == 0:
            raise EOFError(f"file ended {len(view)} bytes early")
        view, offset = view[done:], offset + done


def encode_all(codec: Codec, images: np.ndarray) -> list[bytes]:
    """The bytes of each image, as a store of that codec encodes them."""
    return [codec.encode(image) for image in images]


def decode_all(codec: Codec, blobs: list[bytes], out: np.ndarray) -> None:
    for blob, target in zip(blobs, out):
        codec.decode_into(blob, target)


class FloorInputs:
    """What the read and decode floors read, made once per session, untimed, in the run's folder."""

    def __init__(self, config: pytest.Config, root: Path, images: np.ndarray) -> None:
        self.config, self.root, self.images = config, root, images
        self.made: dict[tuple, object] = {}

    def _once(self, key: tuple, what: str, count: int, make: Callable[[], object]) -> object:
        if key not in self.made:
            with announce(self.config, f"preparing the {what} floor's input ({count} images)", count):
                self.made[key] = make()
        return self.made[key]

    def npy(self, name: str = "images") -> Path:
        """All the session's images as one .npy file (fsynced, so that the cold floor can drop it)."""
        def make() -> Path:
            path = self.root / f"{name}.npy"
            self.root.mkdir(parents=True, exist_ok=True)
            np.save(path, self.images)
            return path

        return self._once(("npy", name), "file-read" if name == "images" else "cold file-read", len(self.images), make)

    def files(self, count: int) -> Path:
        """A folder of ``count`` raw files, one per image, named by id."""
        def make() -> Path:
            folder = self.root / f"files-{count}"
            folder.mkdir(parents=True)
            for image_id, image in enumerate(self.images[:count]):
                (folder / str(image_id)).write_bytes(image.tobytes())
            return folder

        return self._once(("files", count), "files-read", count, make)

    def encoded(self, spec: str, count: int) -> list[bytes]:
        """The first ``count`` images in codec ``spec`` (encoded once for the largest count asked)."""
        largest = max([count, *(key[2] for key in self.made if key[:2] == ("encoded", spec))])
        blobs = self._once(("encoded", spec, largest), f"{spec}-decode", largest,
                           lambda: encode_all(get_codec(spec), self.images[:largest]))
        return blobs[:count]


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


@pytest.fixture
def out(source: np.ndarray) -> np.ndarray:
    """The floors' read buffer: page-aligned, as the cells' (buffers.py)."""
    buffer = page_aligned_empty(source.shape, source.dtype)
    buffer.fill(0)
    return buffer


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


def test_floor_memcpy(measure, record, source, out):
    record(len(source))
    measure(lambda: np.copyto(out, source), zeroing(out))
    verify_images("floor memcpy", out, source)


def test_floor_file_write(measure, record, source, cell_dir, durable):
    """A new, empty file opened per round, the previous one removed (untimed); timed: writing the images to it (and
    fsync when durable)."""
    paths: list[Path] = []
    descriptors: list[int] = []

    def open_next() -> tuple[tuple, dict]:
        if descriptors:
            os.close(descriptors.pop())
        page_cache.start_write_round(paths[-1] if paths else None)  # as the cells' rounds start (conftest.FreshStores)
        paths.append(cell_dir / f"round-{len(paths)}.raw")
        descriptors.append(os.open(paths[-1], NEW_FILE, 0o644))
        return (descriptors[-1],), {}

    def write(fd: int) -> None:
        write_all(fd, source)
        if durable:
            os.fsync(fd)
            folder = os.open(cell_dir, os.O_RDONLY)
            os.fsync(folder)
            os.close(folder)

    record(len(source))
    try:
        measure(write, open_next)
    finally:
        for fd in descriptors:
            os.close(fd)
    verify_images("floor file-write", np.fromfile(paths[-1], source.dtype).reshape(source.shape), source)


def test_floor_file_read(measure, record, source, out, floor_inputs):
    """Timed: one pread of the images from an open .npy file into a zeroed array."""
    path = floor_inputs.npy()
    offset = np.load(path, mmap_mode="r").offset
    fd = os.open(path, os.O_RDONLY)
    record(len(source))
    try:
        measure(lambda: read_into(fd, out, offset), zeroing(out))
    finally:
        os.close(fd)
    verify_images("floor file-read", out, source)


def test_floor_file_read_cold(measure, record, benchmark, source, out, floor_inputs):
    """file-read after dropping the file from the page cache before each round (untimed, residency checked)."""
    if reason := page_cache.supported():
        pytest.skip(reason)
    path = floor_inputs.npy("cold")
    offset = np.load(path, mmap_mode="r").offset
    resident: list[float] = []

    def drop() -> None:
        resident.append(page_cache.evict(path))

    fd = os.open(path, os.O_RDONLY)
    record(len(source))
    try:
        measure(lambda: read_into(fd, out, offset), zeroing(out, drop))
    finally:
        os.close(fd)
    verify_images("floor file-read-cold", out, source)
    benchmark.extra_info["resident_fraction_before"] = max(resident)
    if max(resident) > page_cache.MAX_RESIDENT_FRACTION:
        pytest.fail(f"floor file-read-cold: {max(resident):.1%} of the file stayed in the page cache after dropping it "
                    f"(at most {page_cache.MAX_RESIDENT_FRACTION:.0%} allowed)", pytrace=False)


def test_floor_files_write(measure, record, source, cell_dir, durable):
    """A new folder per round, the previous one removed (untimed); timed: one new file per image, written and closed
    (fsynced when durable)."""
    folders: list[Path] = []
    names = [str(image_id) for image_id in range(len(source))]

    def open_next() -> tuple[tuple, dict]:
        page_cache.start_write_round(folders[-1] if folders else None)
        folders.append(cell_dir / f"round-{len(folders)}")
        folders[-1].mkdir()
        return (os.open(folders[-1], os.O_RDONLY),), {}

    def write(folder: int) -> None:
        try:
            for name, image in zip(names, source):
                fd = os.open(name, NEW_FILE, 0o644, dir_fd=folder)
                write_all(fd, image)
                if durable:
                    os.fsync(fd)
                os.close(fd)
            if durable:
                os.fsync(folder)
        finally:
            os.close(folder)

    record(len(source))
    measure(write, open_next)
    written = np.stack([np.fromfile(folders[-1] / name, source.dtype).reshape(source.shape[1:]) for name in names])
    verify_images("floor files-write", written, source)


def test_floor_files_read(measure, record, source, out, floor_inputs):
    """Timed: open, read into its slot and close each image's file."""
    folder = os.open(floor_inputs.files(len(source)), os.O_RDONLY)
    names = [str(image_id) for image_id in range(len(source))]

    def read() -> None:
        for name, target in zip(names, out):
            fd = os.open(name, os.O_RDONLY, dir_fd=folder)
            read_into(fd, target)
            os.close(fd)

    record(len(source))
    try:
        measure(read, zeroing(out))
    finally:
        os.close(folder)
    verify_images("floor files-read", out, source)


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


def test_floor_gather(measure, record, benchmark, source, out, floor_inputs, batch):
    """Timed: shuffled batches of a seeded permutation gathered from a memory-mapped .npy into their slots."""
    images = np.load(floor_inputs.npy(), mmap_mode="r")
    order = np.random.default_rng(GATHER_SEED).permutation(len(source))
    batches = [(start, order[start:start + batch]) for start in range(0, len(order), batch)]

    def gather() -> None:
        for start, ids in batches:
            np.take(images, ids, axis=0, out=out[start:start + len(ids)], mode="clip")  # "clip": out unbuffered

    record(len(source))
    benchmark.group = f"floor {len(source)} b{batch}"
    benchmark.extra_info.update(batch_size=batch, permutation_seed=GATHER_SEED)
    measure(gather, zeroing(out))
    verify_images("floor gather", out, source[order])
