"""Stores written by an earlier version of this package open and read exactly: the on-disk formats are
a promise, whatever the code's layout. ``tests/data/legacy_stores/<variant>/`` holds one small store per
method variant, written by the code of commit 2125315 (before the move into core/formats/methods) with
``python -m tests.test_legacy_stores DIR`` (``write_fixtures``): five images by ``store_many``, then one
replaced and one appended by ``store_single``, so that checkpoints and journals are both read."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from storage_impls import open_store
from storage_impls.registry import installed_methods, parse_spec

FIXTURES = Path(__file__).parent / "data" / "legacy_stores"
#: each method as written by default, the byte-storing ones also with a lossless codec, and one layout more
VARIANTS = (
    "disk",
    "lmdb",
    "hdf5",
    "rocksdb",
    "npy-files",
    "npz",
    "npy-memmap",
    "webdataset",
    "parquet",
    "lance",
    "zarr",
    "lmdb:codec=png",
    "hdf5:codec=png",
    "rocksdb:codec=png",
    "webdataset:codec=png",
    "parquet:codec=png",
    "lance:codec=png",
    "zarr:codec=png",
    "hdf5:compression=gzip,chunks=2",
)
WIDE = ("lmdb", "hdf5", "npy-memmap")  # also as float32, a dtype with its own value prefix in lmdb


def source(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Seven images and labels, made here (not read from any store)."""
    rng = np.random.default_rng(22)
    return rng.integers(0, 256, (7, 6, 7, 3)).astype(dtype), rng.integers(-5, 10**12, 7)


def expected(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """What a fixture holds after its writes: images 0..5 with id 1 replaced by the seventh."""
    images, labels = source(dtype)
    final_images, final_labels = images[:6].copy(), labels[:6].copy()
    final_images[1], final_labels[1] = images[6], labels[6]
    return final_images, final_labels


def fixture_name(variant: str, dtype: str) -> str:
    name = variant.replace(":", "_").replace(",", "_").replace("=", "-")
    return name if dtype == "uint8" else f"{name}-{dtype}"


CASES = [(variant, "uint8") for variant in VARIANTS] + [(variant, "float32") for variant in WIDE]


def write_fixtures(root: Path) -> None:
    """Write every fixture store below ``root`` with the code installed now."""
    for variant, dtype in CASES:
        images, labels = source(dtype)
        directory = root / fixture_name(variant, dtype)
        shutil.rmtree(directory, ignore_errors=True)
        with open_store(variant, directory) as store:
            store.store_many(images[:5], labels[:5])
            store.store_single(images[6], 1, int(labels[6]))
            store.store_single(images[5], 5, int(labels[5]))


@pytest.mark.parametrize(("variant", "dtype"), CASES, ids=[fixture_name(*case) for case in CASES])
def test_legacy_store_reads_exactly(variant: str, dtype: str, tmp_path: Path) -> None:
    method = parse_spec(variant)[0]
    if method not in installed_methods():
        pytest.skip(f"{method} is not installed")
    directory = tmp_path / "store"
    shutil.copytree(FIXTURES / fixture_name(variant, dtype), directory, symlinks=True)
    images, labels = expected(dtype)
    with open_store(method, directory, "r") as store:
        read, read_labels = store.read_many(len(store))
        assert np.array_equal(read, images) and np.array_equal(read_labels, labels)
        order = np.array([5, 0, 3, 1])
        batch, batch_labels = store.read_batch(order)
        assert np.array_equal(batch, images[order]) and np.array_equal(batch_labels, labels[order])
    with open_store(method, directory) as store:  # and a writer carries on where the old code stopped
        store.store_single(images[0], 6, 7)
        assert np.array_equal(store.read_single(6)[0], images[0]) and len(store) == 7


if __name__ == "__main__":
    write_fixtures(Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURES)
