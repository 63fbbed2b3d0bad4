"""The images of a benchmark session: which dataset the options name, its image shape (checked before any
cell runs), and loading or making it once."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from benchmarks.progress import ANNOUNCE_MIN_IMAGES, announce, say
from storage_impls.datasets import (
    CIFAR10_IMAGES,
    CIFAR10_SHAPE,
    MNIST_SHAPE,
    MixedSizesError,
    folder_files,
    folder_mode,
    folder_shape,
    load_cifar10,
    load_folder,
    load_mnist,
    mnist_count,
    synthetic,
)

DATASET_KEY = pytest.StashKey[dict]()  # facts about a --dataset folder:PATH (classes, skipped files), for machine_info
SHOWN_NAMES = 20  # classes and skipped files named on the terminal; machine_info keeps them all


class Dataset(NamedTuple):
    name: str
    images: np.ndarray
    labels: np.ndarray


def data_shape(config: pytest.Config) -> tuple[int, ...]:
    """The shape of the session's images (--image-shape, default 32x32x3, or the dataset's own); a UsageError for
    options the dataset cannot meet: a shape or dtype for CIFAR-10 or MNIST, more images than it holds (an image
    folder: ``_folder_shape``)."""
    cutoffs, shape, dtype = config.getoption("cutoffs"), config.getoption("image_shape"), config.getoption("dtype")
    dataset = config.getoption("dataset")
    if dataset.name == "synthetic":
        return shape or CIFAR10_SHAPE
    if dataset.name == "folder":
        return folder_data_shape(dataset.path, shape, dtype, max(cutoffs))
    own_shape, title = {"cifar10": (CIFAR10_SHAPE, "CIFAR-10"), "mnist": (MNIST_SHAPE, "MNIST")}[dataset.name]
    if shape not in (None, own_shape):
        raise pytest.UsageError(
            f"--image-shape applies to synthetic data only: {title} images are {'x'.join(map(str, own_shape))}"
        )
    if dtype != np.uint8:
        raise pytest.UsageError(f"--dtype applies to synthetic data only: {title} images are uint8")
    if dataset.name == "cifar10":
        available, what = 2 * CIFAR10_IMAGES, f"CIFAR-10 doubled ({2 * CIFAR10_IMAGES} images)"
    else:
        try:
            available = mnist_count(dataset.path)
        except (OSError, ValueError) as error:
            raise pytest.UsageError(f"--dataset mnist:{dataset.path}: {error}") from None
        what = f"the {available} MNIST images in {dataset.path}"
    if max(cutoffs) > available:
        raise pytest.UsageError(f"--cutoffs {max(cutoffs)} exceeds {what}")
    return own_shape


def folder_data_shape(path: Path, shape: tuple[int, ...] | None, dtype: np.dtype, count: int) -> tuple[int, ...]:
    """The shape of an image folder's images: --image-shape (HxW, HxWx3 or HxWx4), else the size its first
    ``count`` images share (their headers are read); a UsageError for another dtype than uint8, a folder without
    images or with fewer than ``count``, mixed sizes without --image-shape."""
    if dtype != np.uint8:
        raise pytest.UsageError("--dtype applies to synthetic data only: folder images are uint8")
    try:
        if shape is not None:
            folder_mode(shape)
        _classes, files = folder_files(path)
        if count > len(files):
            raise pytest.UsageError(f"--cutoffs {count} exceeds the {len(files)} images in {path}")
        return shape or folder_shape(files, count)
    except MixedSizesError as error:
        raise pytest.UsageError(
            f"--dataset folder:{path}: {error}: pass --image-shape (HxW, HxWx3 or HxWx4) "
            "to resize and center-crop them to one shape"
        ) from None
    except (OSError, ValueError) as error:
        raise pytest.UsageError(f"--dataset folder:{path}: {error}") from None


def load_dataset(pytestconfig: pytest.Config) -> Dataset:
    """The images every cell uses, made or loaded once: the first ``cutoff`` of them feed a cell."""
    spec, shape = pytestconfig.getoption("dataset"), pytestconfig.getoption("image_shape")
    count = max(pytestconfig.getoption("cutoffs"))
    if spec.name == "cifar10":
        with announce(pytestconfig, f"loading CIFAR-10 from {spec.path}", CIFAR10_IMAGES):
            images, labels = load_cifar10(spec.path, double=count > CIFAR10_IMAGES)
        return Dataset("cifar10", images[:count], labels[:count])
    if spec.name == "mnist":
        with announce(pytestconfig, f"loading MNIST from {spec.path}", count):
            images, labels = load_mnist(spec.path)
        return Dataset("mnist", images[:count], labels[:count])
    if spec.name == "folder":
        return load_folder_dataset(pytestconfig, spec.path, shape, count)
    dtype = pytestconfig.getoption("dtype")
    with announce(pytestconfig, f"making {count} synthetic {'x'.join(map(str, shape))} {dtype} images", count):
        images, labels = synthetic(count, shape, seed=0, dtype=dtype)
    return Dataset("synthetic", images, labels)


def load_folder_dataset(config: pytest.Config, path: Path, shape: tuple[int, ...], count: int) -> Dataset:
    """The first ``count`` readable images of an image folder at ``shape``, with a progress bar from
    ANNOUNCE_MIN_IMAGES images on. Skipped files and the class-to-label table are printed and kept for
    machine_info; too few readable images end the run as a usage error."""

    def progress(loaded: int, wanted: int) -> None:
        if wanted >= ANNOUNCE_MIN_IMAGES and loaded % (wanted // 10) == 0:
            say(config, f"{100 * loaded // wanted}% ", newline=False)

    with announce(config, f"loading {count} images from {path}", count):
        folder = load_folder(path, shape, limit=count, progress=progress)
    for file, reason in folder.skipped[:SHOWN_NAMES]:
        say(config, f"image-storage: skipped unreadable {file}: {reason}")
    if folder.skipped:
        say(config, f"image-storage: {len(folder.skipped)} unreadable files skipped in {path}")
    if len(folder.images) < count:
        pytest.exit(
            f"--cutoffs {count} exceeds the {len(folder.images)} readable images in {path}",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )
    table = dict(zip(folder.classes, range(len(folder.classes))))
    config.stash[DATASET_KEY] = {
        "name": "folder",
        "path": str(path),
        "classes": table,
        "skipped": [str(file.relative_to(path)) for file, _reason in folder.skipped],
    }
    shown = ", ".join(f"{label} {name}" for name, label in list(table.items())[:SHOWN_NAMES])
    say(
        config,
        f"image-storage: {count} images of {'x'.join(map(str, shape))} from {path}, labels of its "
        f"{len(table)} classes: {shown}{', ...' if len(table) > SHOWN_NAMES else ''}",
    )
    return Dataset("folder", folder.images, folder.labels)
