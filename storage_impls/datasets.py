"""Image data to store: a synthetic, natural-looking set made on the spot, CIFAR-10, MNIST and a folder of
your own images.

Each returns ``(images, labels)`` (a folder also its classes and skipped files): a C-contiguous array (N, ...)
of images (CIFAR-10, MNIST and folders: uint8; synthetic: any dtype a store holds) and an int64 array (N,).
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import DTypeLike
from PIL import Image

CIFAR10_BATCHES = tuple(f"data_batch_{number}" for number in range(1, 6))
CIFAR10_SHAPE = (32, 32, 3)
CIFAR10_IMAGES = 50_000  # in the five training batches
MNIST_SHAPE = (28, 28)
#: MNIST's idx files, (images, labels) of the training set, then of the test set ("t10k", optional)
MNIST_PARTS = (
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)
IDX_IMAGES, IDX_LABELS = 0x00000803, 0x00000801  # magic numbers: unsigned bytes (0x08) in 3 or 1 dimensions
SYNTHETIC_NOISE = 16  # uniform pixel noise 0..15 over smooth content: ~2.2 KB PNG per 32x32x3 image
SYNTHETIC_CONTROL_POINTS = 6  # control grid per 32 pixels: the scale of the smooth content
SYNTHETIC_BLOCK_BYTES = 16 << 20  # 8-bit pixels made per step (and widened per step), to keep intermediates small
FOLDER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")  # any case
FOLDER_MODES = {(): "L", (3,): "RGB", (4,): "RGBA"}  # channel axis of a folder's image shape -> Pillow mode
FOLDER_RESAMPLE = Image.Resampling.LANCZOS  # the sharpest of Pillow's antialiased filters: photos stay photo-like
FOLDER_REDUCING_GAP = (
    3.0  # box-reduce first to 3x the target: 4x faster from 12 MP, ~0.6 grey levels RMS from pure LANCZOS
)
#: what decoding a bad file raises: Pillow's open/load errors, truncation, a decompression bomb
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def synthetic(
    n: int, shape: tuple[int, ...] = CIFAR10_SHAPE, seed: int = 0, dtype: DTypeLike = np.uint8
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` deterministic images of ``dtype`` that compress like photographs, with labels 0..9.

    Each image is a random coarse grid of colours, bilinearly upsampled (smooth regions and
    edges of varied contrast), plus fine uniform noise (texture and sensor noise). At 32x32x3
    Pillow's default PNG takes ~2.2 KB per image, as CIFAR-10 does (~2 KB); pure noise
    (~3.1 KB) would flatter no method. A 3-D ``shape`` is taken as (H, W, bands), also when
    meant as channel-first: (3, 128, 128) gives 3x128 images of 128 bands, which is as good.

    Every dtype holds the same 8-bit pictures ``v`` and labels (uint8 gives them as made), widened
    with fine noise from a second generator: an integer dtype of ``b`` bits holds ``v`` (``v - 128``
    if signed) times 2**(b-8) plus uniform noise below that (uint16 spans 0..65535, int16
    -32768..32767); a float dtype holds (v + u) / 256 with u uniform in [0, 1), a reflectance-like
    value in [0, 1).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    from storage_impls.core.base import check_dtype, check_image_shape

    shape = tuple(shape)
    check_image_shape(shape, "shape")
    dtype = check_dtype(dtype, "dtype")
    rng = np.random.default_rng(seed)
    height, width = shape[:2]
    channels = shape[2] if len(shape) == 3 else 1
    rows, row_scale = _bilinear_matrix(height, max(2, round(height * SYNTHETIC_CONTROL_POINTS / 32)))
    cols, col_scale = _bilinear_matrix(width, max(2, round(width * SYNTHETIC_CONTROL_POINTS / 32)))
    cols, scale = cols.T.copy(), float(row_scale * col_scale)
    images = np.empty((n, height, width, channels), dtype)
    block = max(1, SYNTHETIC_BLOCK_BYTES // math.prod(images.shape[1:]))  # 8-bit bytes: the same draws for every dtype
    fine = np.random.default_rng([seed, 1])
    step = max(1, block // 8)
    for start in range(0, n, block):
        count = min(n, start + block) - start
        grid = rng.integers(
            0, 256 - SYNTHETIC_NOISE, size=(count, channels, rows.shape[1], cols.shape[0]), dtype=np.uint8
        )
        smooth = np.empty((count, channels, height, width), np.uint8)
        for first in range(0, count, step):  # float64 a few images at a time: 8 bytes a pixel
            exact = rows @ grid[first : first + step].astype(np.float64) @ cols  # times scale, exact integers
            smooth[first : first + step] = np.floor(np.divide(exact, scale, out=exact), out=exact)  # exact: IEEE
        smooth += rng.integers(0, SYNTHETIC_NOISE, size=smooth.shape, dtype=np.uint8)  # at most 239 + 15
        if dtype == np.uint8:
            images[start : start + count] = smooth.transpose(0, 2, 3, 1)
        else:
            _widen(smooth.transpose(0, 2, 3, 1), images[start : start + count], fine)
    labels = rng.integers(0, 10, size=n, dtype=np.int64)
    return images.reshape((n, *shape)), labels


def _widen(content: np.ndarray, out: np.ndarray, rng: np.random.Generator) -> None:
    """Write the 8-bit ``content`` into ``out`` of another dtype as ``synthetic`` describes, a few images at a
    time so that no temporary (8 bytes a pixel at most) outgrows SYNTHETIC_BLOCK_BYTES."""
    step = max(1, SYNTHETIC_BLOCK_BYTES // (8 * content[0].size))
    kind, shift = out.dtype.kind, 8 * out.dtype.itemsize - 8
    for start in range(0, len(out), step):
        values, part = content[start : start + step], out[start : start + step]
        if kind == "f":
            part[...] = (values + rng.random(values.shape)) / 256
            np.minimum(part, np.nextafter(out.dtype.type(1), out.dtype.type(0)), out=part)  # rounding may reach 1
            continue
        part[...] = values.astype(np.int16) - 128 if kind == "i" else values
        if shift:
            part *= 1 << shift
            part += rng.integers(0, 1 << shift, size=part.shape, dtype=out.dtype)


def _bilinear_matrix(size: int, points: int) -> tuple[np.ndarray, int]:
    """(size, points) matrix that linearly interpolates ``points`` values onto ``size`` pixels, times its
    denominator: pixel i sits at i * (points - 1) / (size - 1), so every weight is an integer over size - 1.
    Integer weights keep every sum of products an integer below 2**53, which float64 holds exactly in any
    order, so the images are bit-identical on every CPU (a float matmul's rounding depends on the BLAS kernel)."""
    denominator = max(1, size - 1)
    position = np.arange(size) * (points - 1)
    left = np.minimum(position // denominator, points - 2)
    weight = position - left * denominator
    matrix = np.zeros((size, points), np.float64)
    matrix[np.arange(size), left] = denominator - weight
    matrix[np.arange(size), left + 1] = weight
    return matrix, denominator


class _CifarUnpickler(pickle.Unpickler):
    """Loads the CIFAR-10 batch dicts and refuses any other object a tampered file may name."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol-2 bytes under Python 3
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR-10 batch")
        return super().find_class(module, name)


def load_cifar10(directory: str | os.PathLike, double: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR-10's "python version" training batches ``data_batch_1..5`` from ``directory``.

    Images come back as (N, 32, 32, 3) in batch order 1..5. ``double=True`` concatenates the
    set with itself (100 000 images), as the tutorial does to reach its largest cutoff.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"CIFAR-10 directory {directory} does not exist (expected cifar-10-batches-py)")
    missing = [name for name in CIFAR10_BATCHES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 directory {directory} lacks {', '.join(missing)}")
    batches = [_load_batch(directory / name) for name in CIFAR10_BATCHES]
    rows = np.concatenate([data for data, _ in batches])
    labels = np.concatenate([batch_labels for _, batch_labels in batches])
    # each row holds the R, G and B planes of one image one after another
    images = np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    if double:
        images, labels = np.concatenate([images, images]), np.concatenate([labels, labels])
    return images, labels


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The ``b"data"`` rows and ``b"labels"`` of one batch file, checked."""
    try:
        with open(path, "rb") as file:
            batch = _CifarUnpickler(file, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as error:
        raise ValueError(f"{path} is not a CIFAR-10 python batch: {error or type(error).__name__}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 python batch: expected a dict with b'data' and b'labels'")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(
            f"{path}: b'data' must be uint8 (N, 3072) with one label per row, "
            f"got {data.dtype} {data.shape} and {len(labels)} labels"
        )
    return data, labels


def load_mnist(directory: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read MNIST's idx files from ``directory``: the training set, then the test set when its two
    ``t10k-*`` files are there (70 000 images, the set the RocksDB write-up stores), each file plain or
    gzipped (``.gz``, as distributed). Images come back as (N, 28, 28) uint8.

    Every file is checked strictly (magic number, dimensions, size to the byte, as many labels as
    images): FileNotFoundError or ValueError names the file and the problem.
    """
    images, labels = [], []
    for images_path, labels_path in _mnist_files(directory):
        part_images = _read_idx(images_path, IDX_IMAGES)
        part_labels = _read_idx(labels_path, IDX_LABELS)
        if len(part_images) != len(part_labels):
            raise ValueError(
                f"{images_path} holds {len(part_images)} images but {labels_path} {len(part_labels)} labels"
            )
        images.append(part_images)
        labels.append(part_labels)
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def mnist_count(directory: str | os.PathLike) -> int:
    """How many images ``load_mnist(directory)`` returns, from the files' headers alone (a quick check
    before a run; load_mnist checks the rest)."""
    count = 0
    for images_path, _labels_path in _mnist_files(directory):
        count += _idx_dims(images_path, _read_bytes(images_path, 4 + 4 * 3), IDX_IMAGES)[0]
    return count


def _mnist_files(directory: str | os.PathLike) -> list[tuple[Path, Path]]:
    """The (images, labels) paths of the training set and, if there, the test set; plain files win over ``.gz``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"MNIST directory {directory} does not exist")
    parts = []
    for number, names in enumerate(MNIST_PARTS):
        found = [
            next((path for path in (directory / name, directory / f"{name}.gz") if path.is_file()), None)
            for name in names
        ]
        if number and found == [None, None]:
            continue  # no test set: the training set alone
        missing = [name for name, path in zip(names, found) if path is None]
        if missing:
            raise FileNotFoundError(f"MNIST directory {directory} lacks {' and '.join(missing)} (plain or .gz)")
        parts.append(tuple(found))
    return parts


def _read_bytes(path: Path, size: int = -1) -> bytes:
    """The bytes (the first ``size``) of a plain or gzipped file; ValueError if its gzip stream is broken."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as file:
            return file.read(size)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(f"{path} is not a readable gzip file: {error}") from None


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """The array an idx file of unsigned bytes holds: (N, 28, 28) images or (N,) labels, checked."""
    data = _read_bytes(path)
    dims = _idx_dims(path, data, magic)
    header = 4 + 4 * len(dims)
    if len(data) != header + math.prod(dims):
        content = f"{dims[0]} images of {dims[1]}x{dims[2]}" if magic == IDX_IMAGES else f"{dims[0]} labels"
        raise ValueError(f"{path}: {len(data)} bytes, but its header ({content}) needs {header + math.prod(dims)}")
    if magic == IDX_IMAGES and dims[1:] != MNIST_SHAPE:
        raise ValueError(f"{path}: images of {dims[1]}x{dims[2]} pixels, MNIST's are 28x28")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _idx_dims(path: Path, data: bytes, magic: int) -> tuple[int, ...]:
    """The dimensions in the idx header at the start of ``data``, which must carry ``magic``."""
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    what = "images" if magic == IDX_IMAGES else "labels"
    if len(data) < header:
        raise ValueError(f"{path}: {len(data)} bytes, shorter than the {header}-byte header of idx {what}")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: magic number 0x{found:08x}, expected 0x{magic:08x} (idx {what} of unsigned bytes)")
    return tuple(int.from_bytes(data[4 + 4 * axis : 8 + 4 * axis], "big") for axis in range(ndim))


class FolderImages(NamedTuple):
    """What ``load_folder`` returns."""

    images: np.ndarray  # (N, H, W) or (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64: label i is classes[i]
    classes: list[str]  # the class sub-folders' names, sorted
    skipped: list[tuple[Path, str]]  # (file, why) of every unreadable file met, in load order


class MixedSizesError(ValueError):
    """A folder's images differ in size and no shape was given to resize them to."""


def folder_mode(shape: Sequence[int]) -> str:
    """The Pillow mode images of ``shape`` are converted to: HxW "L", HxWx3 "RGB", HxWx4 "RGBA"; ValueError
    otherwise."""
    mode = FOLDER_MODES.get(tuple(shape[2:])) if len(shape) in (2, 3) else None
    if mode is None:
        raise ValueError(
            f"images from a folder are HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA), not {'x'.join(map(str, shape))}"
        )
    return mode


def folder_files(directory: str | os.PathLike) -> tuple[list[str], list[tuple[Path, int]]]:
    """The classes of an image folder in torchvision's ImageFolder convention and its image files with their
    labels, in load order.

    Classes are the sub-folders' names, sorted (label i is the i-th); files are those under a class
    sub-folder (at any depth) whose extension is in FOLDER_EXTENSIONS, in any case, class by class and
    sorted by path within a class. Hidden files and folders (".name") are ignored, as are files outside
    the class sub-folders. FileNotFoundError if ``directory`` is missing, ValueError if it holds no image.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"image folder {directory} does not exist")
    classes = sorted(entry.name for entry in directory.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    files = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted(
            path
            for path in (directory / name).rglob("*")
            if path.suffix.lower() in FOLDER_EXTENSIONS
            and path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(directory).parts)
        )
    ]
    if not files:
        raise ValueError(
            f"no images in {directory}: expected one sub-folder per class holding {' '.join(FOLDER_EXTENSIONS)} files"
        )
    return classes, files


def folder_shape(files: Sequence[tuple[Path, int]], limit: int | None = None) -> tuple[int, ...]:
    """The shape the first ``limit`` readable ``files`` share, from their headers alone: their common size and
    the most channels any has (grey 1: HxW, colour 3: HxWx3, with transparency 4: HxWx4), so that a grey image
    in a colour set is converted rather than refused. Unreadable files are passed over (``load_folder``
    reports them); MixedSizesError names two files of different sizes, ValueError says if none is readable."""
    first: tuple[Path, tuple[int, int]] | None = None
    channels, seen = 1, 0
    for path, _label in files:
        if seen == limit:
            break
        try:
            with Image.open(path) as image:
                size = image.size
                alpha = "A" in image.mode or "transparency" in image.info
                channels = max(channels, 4 if alpha else 1 if Image.getmodebase(image.mode) == "L" else 3)
        except UNREADABLE:
            continue
        seen += 1
        if first is None:
            first = path, size
        elif size != first[1]:
            (width, height), (other_width, other_height) = first[1], size
            raise MixedSizesError(
                f"images of different sizes: {first[0]} is {height}x{width}, {path} is {other_height}x{other_width}"
            )
    if first is None:
        raise ValueError(f"none of the images is readable ({len(files)} files, e.g. {files[0][0]})")
    width, height = first[1]
    return (height, width) if channels == 1 else (height, width, channels)


def load_folder(
    directory: str | os.PathLike,
    shape: Sequence[int] | None = None,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FolderImages:
    """Decode the images of an image folder (see ``folder_files``) with Pillow: the first ``limit`` readable
    ones, or all, as uint8 of ``shape``.

    Each image is converted to the mode ``shape`` implies (``folder_mode``; grey to RGB repeats the grey,
    RGBA to RGB drops the alpha) and, unless it already has that size, scaled so that it covers HxW (FOLDER_RESAMPLE
    with FOLDER_REDUCING_GAP), then center-cropped. ``shape=None``: the images' own shape (``folder_shape``),
    nothing resized. An unreadable file is skipped, named in ``skipped`` with the reason, and the next one
    taken. ``progress(loaded, wanted)`` is called after each image.
    """
    classes, files = folder_files(directory)
    shape = tuple(shape) if shape is not None else folder_shape(files, limit)
    mode = folder_mode(shape)
    wanted = len(files) if limit is None else min(limit, len(files))
    images, labels = np.empty((wanted, *shape), np.uint8), np.empty(wanted, np.int64)
    skipped: list[tuple[Path, str]] = []
    loaded = 0
    for path, label in files:
        if loaded == wanted:
            break
        try:
            images[loaded] = _decode(path, mode, shape[0], shape[1])
        except UNREADABLE as error:
            skipped.append((path, str(error) or type(error).__name__))
            continue
        labels[loaded] = label
        loaded += 1
        if progress is not None:
            progress(loaded, wanted)
    return FolderImages(images[:loaded], labels[:loaded], classes, skipped)


def _decode(path: Path, mode: str, height: int, width: int) -> np.ndarray:
    """One image file as a (height, width[, channels]) array of ``mode``: converted, scaled to cover, center-cropped."""
    with Image.open(path) as image:
        image = image.convert(mode) if image.mode != mode else image
        if image.size != (width, height):
            scale = max(width / image.width, height / image.height)
            left, top = (image.width - width / scale) / 2, (image.height - height / scale) / 2
            image = image.resize(
                (width, height),
                FOLDER_RESAMPLE,
                box=(left, top, image.width - left, image.height - top),
                reducing_gap=FOLDER_REDUCING_GAP,
            )
        return np.asarray(image)
