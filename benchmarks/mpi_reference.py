"""What the MPI runner checks every read against: the dataset's images, never what the store it reads returns.

Rank 0 loads the first N images of ``--dataset`` (the suite's synthetic images, seed 0, unless it names CIFAR-10,
MNIST or an image folder, at the store's shape), turns them into what a correct store of the store's codec returns
(benchmarks/codec_reference.py: themselves, or Pillow's own encode and decode for a lossy codec), and hashes each
image (xxh3_64). Before the epochs, untimed, it reads the whole store once and compares its content digest (the
image hashes and labels, in id order) with the dataset's: a reused store, built by an earlier run or named by
``--store``, that holds other images fails there, saying how many differ and the first, rather than every epoch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import xxhash

from benchmarks.codec_reference import reference_images
from storage_impls import ImageStore
from storage_impls.datasets import CIFAR10_IMAGES, load_cifar10, load_folder, load_mnist, synthetic

if TYPE_CHECKING:
    from conftest import DatasetSpec

DATA_SEED = 0  # the seed of the suite's synthetic images
CHECK_BATCH = 1024  # ids per read_batch of the content check: bounded memory whatever the store's size


def image_hashes(images: np.ndarray) -> np.ndarray:
    """xxh3_64 of each image's bytes."""
    rows = np.ascontiguousarray(images).reshape(len(images), math.prod(images.shape[1:])).view(np.uint8)
    return np.fromiter((xxhash.xxh3_64_intdigest(row) for row in rows), np.uint64, count=len(rows))


def describe_dataset(dataset: DatasetSpec) -> str:
    if dataset.path is None:
        return "the suite's synthetic images (seed 0)"
    return f"the {dataset.name} images in {dataset.path}"


def load_dataset(
    dataset: DatasetSpec, count: int, shape: tuple[int, ...] | None, dtype: np.dtype, made: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` images and labels of ``dataset``: of the ``made`` (default ``count``) synthetic ones of
    ``shape`` and ``dtype`` (which differ with ``made``: a store of N holds the N that a run made); CIFAR-10 and
    MNIST as they are; an image folder's at ``shape`` (its own if None). ValueError when it holds fewer."""
    if dataset.name == "synthetic":
        images, labels = synthetic(made or count, shape, seed=DATA_SEED, dtype=dtype)
        return images[:count], labels[:count]
    if dataset.name == "cifar10":
        images, labels = load_cifar10(dataset.path, double=count > CIFAR10_IMAGES)
    elif dataset.name == "mnist":
        images, labels = load_mnist(dataset.path)
    else:
        images, labels = load_folder(dataset.path, shape, limit=count)[:2]
    if len(images) < count:
        raise ValueError(f"{describe_dataset(dataset)} are {len(images)}, fewer than the {count} images to read")
    return images[:count], labels[:count]


def reference(codec: str, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hash, label) of every image as a correct store of ``codec`` returns it."""
    return image_hashes(reference_images(codec, images)), np.asarray(labels, np.int64)


def content_digest(hashes: np.ndarray, labels: np.ndarray) -> str:
    """One 64-bit digest of a store's content: the image hashes and labels in id order."""
    return f"{xxhash.xxh3_64_intdigest(hashes.astype('<u8').tobytes() + labels.astype('<i8').tobytes()):#018x}"


def check_content(store: ImageStore, hashes: np.ndarray, labels: np.ndarray, what: str, hint: str) -> str:
    """Read ids 0..N-1 of ``store`` (untimed, in batches) and return its content digest; ValueError naming ``what``,
    how many images or labels differ from the reference and the first, then ``hint``, unless it is the reference's."""
    found_hashes, found_labels = np.empty_like(hashes), np.empty_like(labels)
    for start in range(0, len(hashes), CHECK_BATCH):
        ids = np.arange(start, min(start + CHECK_BATCH, len(hashes)))
        images, read_labels = store.read_batch(ids)
        found_hashes[ids], found_labels[ids] = image_hashes(images), read_labels
    digest, expected = content_digest(found_hashes, found_labels), content_digest(hashes, labels)
    if digest != expected:
        wrong = np.flatnonzero((found_hashes != hashes) | (found_labels != labels))
        raise ValueError(
            f"{what} holds other images than the dataset (content digest {digest}, the dataset's "
            f"{expected}): {len(wrong)} of {len(hashes)} images or labels differ (the first: id "
            f"{wrong[0]}); {hint}"
        )
    return digest
