"""The library-alone readers (``ImageStore.library_reader``: each method's library called as its authors show it,
beside which docs/benchmarks.md sets read_batch) read exactly what the store holds, in the batch's order, and
``python -m benchmarks.library_alone`` runs end to end on a tiny store (its figures are not checked: speed is)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import library_alone
from storage_impls import get_store_class, open_store
from storage_impls.core.base import ImageStore
from storage_impls.datasets import synthetic
from storage_impls.registry import installed_methods

WITH_READER = [
    m
    for m in installed_methods()
    if get_store_class(m).library_reader.__func__ is not ImageStore.library_reader.__func__
]


def test_the_slow_cells_have_library_readers() -> None:
    assert {"lance", "parquet", "zarr"} <= set(WITH_READER) | ({"lance", "parquet", "zarr"} - set(installed_methods()))


@pytest.mark.parametrize("method", WITH_READER)
def test_library_reader_reads_the_store(method: str, tmp_path) -> None:
    images, labels = synthetic(70)
    with open_store(method, tmp_path) as store:
        store.store_many(images, labels)
    name, read = get_store_class(method).library_reader(tmp_path, images.shape[1:])
    ids = np.random.default_rng(1).permutation(70)[:33]
    out = np.zeros((len(ids), *images.shape[1:]), np.uint8)
    read(ids, out)
    assert name and np.array_equal(out, images[ids])


def test_library_alone_runs(capsys) -> None:
    methods = [m for m in ("parquet", "webdataset", "disk:codec=raw") if m.split(":")[0] in installed_methods()]
    assert (
        library_alone.main(["--methods", ",".join(methods), "--images", "40", "--batch", "16", "--repeats", "1"]) == 0
    )
    printed = capsys.readouterr().out
    assert all(method in printed for method in methods) and "gather" in printed and "files-read" in printed
