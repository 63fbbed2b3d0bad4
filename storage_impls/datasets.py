"""Image data to store: a synthetic, natural-looking set made on the spot, and CIFAR-10.

Both return ``(images, labels)``: a C-contiguous uint8 array (N, H, W[, C]) and an int64 array (N,).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

CIFAR10_BATCHES = tuple(f"data_batch_{number}" for number in range(1, 6))
CIFAR10_SHAPE = (32, 32, 3)
CIFAR10_IMAGES = 50_000  # in the five training batches
SYNTHETIC_NOISE = 16  # uniform pixel noise 0..15 over smooth content: ~2.2 KB PNG per 32x32x3 image
SYNTHETIC_CONTROL_POINTS = 6  # control grid per 32 pixels: the scale of the smooth content
SYNTHETIC_BLOCK_BYTES = 16 << 20  # images made per step, to keep float intermediates small


def synthetic(n: int, shape: tuple[int, ...] = CIFAR10_SHAPE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` deterministic images that compress like photographs, with labels 0..9.

    Each image is a random coarse grid of colours, bilinearly upsampled (smooth regions and
    edges of varied contrast), plus fine uniform noise (texture and sensor noise). At 32x32x3
    Pillow's default PNG takes ~2.2 KB per image, as CIFAR-10 does (~2 KB); pure noise
    (~3.1 KB) would flatter no method.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    from storage_impls.base import check_image_shape

    shape = tuple(shape)
    check_image_shape(shape, "shape")
    rng = np.random.default_rng(seed)
    height, width = shape[:2]
    channels = shape[2] if len(shape) == 3 else 1
    rows = _bilinear_matrix(height, max(2, round(height * SYNTHETIC_CONTROL_POINTS / 32)))
    cols = _bilinear_matrix(width, max(2, round(width * SYNTHETIC_CONTROL_POINTS / 32))).T.copy()
    images = np.empty((n, height, width, channels), np.uint8)
    block = max(1, SYNTHETIC_BLOCK_BYTES // images[0].nbytes)
    for start in range(0, n, block):
        count = min(n, start + block) - start
        grid = rng.integers(0, 256 - SYNTHETIC_NOISE, size=(count, channels, rows.shape[1], cols.shape[0]), dtype=np.uint8)
        smooth = rows @ grid.astype(np.float32) @ cols  # (count, channels, height, width)
        smooth += rng.integers(0, SYNTHETIC_NOISE, size=smooth.shape, dtype=np.uint8)
        images[start:start + count] = smooth.transpose(0, 2, 3, 1)
    labels = rng.integers(0, 10, size=n, dtype=np.int64)
    return images.reshape((n, *shape)), labels


def _bilinear_matrix(size: int, points: int) -> np.ndarray:
    """(size, points) matrix that linearly interpolates ``points`` values onto ``size`` pixels."""
    position = np.linspace(0, points - 1, size)
    left = np.minimum(position.astype(int), points - 2)
    weight = (position - left).astype(np.float32)
    matrix = np.zeros((size, points), np.float32)
    matrix[np.arange(size), left] = 1 - weight
    matrix[np.arange(size), left + 1] = weight
    return matrix


class _CifarUnpickler(pickle.Unpickler):
    """Loads the CIFAR-10 batch dicts and refuses any other object a tampered file may name."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),  # protocol-2 bytes under Python 3
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
        raise ValueError(f"{path}: b'data' must be uint8 (N, 3072) with one label per row, "
                         f"got {data.dtype} {data.shape} and {len(labels)} labels")
    return data, labels
