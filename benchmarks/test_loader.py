"""Loader cells: an epoch through ``torch.utils.data.DataLoader``, ours beside the loaders people use (run when asked:
``--loaders``, or ``-k loader``; they need the [torch] extra, the peers the [peers] extra, and skip without them).

- ``test_loader[hdf5-10000-b256-w2]``: ImageDataset handing whole batches over (what
  ``storage_impls.loader.batch_loader`` returns, following the cell's batches: a DataLoader with workers,
  ``InProcessBatches`` without), ``num_workers`` from --loader-workers (default 0 and 2).
- ``test_read_batches[hdf5-10000-b256]``: the same batches by ``read_batch`` alone, in this process: what the
  loader at ``num_workers=0`` costs over it is the loader's own.
- ``test_loader_peer[litdata-10000-b256-w2]``: a peer's loader over its own files (benchmarks/peers.py).

Every loader reads the largest cutoff's images in batches of --batch-sizes, the same seeded epochs
(benchmarks/loaders.py); each epoch is checked afterwards, untimed: every id once, every image bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks import peers
from benchmarks.loaders import (
    PERMUTATION_SEED,
    EpochBatches,
    Epochs,
    LoaderUnderTest,
    require_torch,
    run_cell,
    sampled_ids,
)
from storage_impls import ImageStore
from storage_impls.loader import ImageDataset, batch_loader


@pytest.fixture
def image_dataset(
    store_class: type[ImageStore], filled_store_dirs: Callable[[str, int], Path], method: str, n_images: int
) -> Iterator[ImageDataset]:
    """(``store_class`` skips the cell when the method's package is missing.)"""
    with ImageDataset(method, filled_store_dirs(method, n_images)) as dataset:
        yield dataset


@pytest.fixture(scope="session")
def peer_files(storage_root: Path, dataset) -> Callable[[str, int], peers.Prepared]:
    """``get(peer, n)``: the peer's files for the first ``n`` images, written once (untimed)."""
    made: dict[tuple[str, int], peers.Prepared] = {}

    def get(peer: str, count: int) -> peers.Prepared:
        if (peer, count) not in made:
            directory = storage_root / "peers" / f"{peer}-{count}"
            made[peer, count] = peers.prepare(peer, dataset.images[:count], dataset.labels[:count], directory)
        return made[peer, count]

    return get


def _describe(benchmark, record, n_images: int, batch_size: int, workers: int | None = None) -> None:
    record(n_images)
    benchmark.group = f"loader {n_images} b{batch_size}" + ("" if workers is None else f" w{workers}")
    benchmark.extra_info.update(
        batch_size=batch_size, permutation_seed=PERMUTATION_SEED, **({} if workers is None else {"workers": workers})
    )


class _ReadBatches:
    """An epoch of the sampler's batches by ``read_batch`` alone."""

    def __init__(self, dataset: ImageDataset, sampler: EpochBatches) -> None:
        self.dataset, self.sampler = dataset, sampler

    def __iter__(self):
        return (self.dataset.read_batch(ids) for ids in self.sampler)


def test_read_batches(measure, record, benchmark, image_dataset, expected, method, n_images, batch_size):
    sampler = EpochBatches(n_images, batch_size)
    _describe(benchmark, record, n_images, batch_size)
    under_test = LoaderUnderTest(_ReadBatches(image_dataset, sampler), sampled_ids(sampler))
    run_cell(
        measure,
        benchmark,
        Epochs(f"{method} read_batches", under_test, expected.images[:n_images], expected.labels[:n_images]),
    )


def test_loader(
    measure, record, benchmark, image_dataset, store_class, expected, method, n_images, batch_size, loader_workers
):
    require_torch()
    sampler = EpochBatches(n_images, batch_size)
    _describe(benchmark, record, n_images, batch_size, loader_workers)
    context = "spawn" if loader_workers and not store_class.fork_safe else None
    loader = batch_loader(
        image_dataset,
        batch_size,
        batches=sampler,
        num_workers=loader_workers,
        persistent_workers=loader_workers > 0,
        multiprocessing_context=context,
    )
    run_cell(
        measure,
        benchmark,
        Epochs(
            f"{method} loader",
            LoaderUnderTest(loader, sampled_ids(sampler)),
            expected.images[:n_images],
            expected.labels[:n_images],
        ),
    )


class TestPeers:
    """The peers' cells (a class, so that its ``method`` fixture names the peer for ``record``)."""

    @pytest.fixture
    def method(self, peer: str) -> str:
        return peer

    @pytest.mark.parametrize("peer", peers.PEERS)
    def test_loader_peer(
        self, measure, record, benchmark, peer_files, dataset, peer, n_images, batch_size, loader_workers
    ):
        require_torch()
        if reason := peers.supports(peer, dataset.images):
            pytest.skip(reason)
        prepared = peer_files(peer, n_images)
        images, labels = dataset.images[:n_images], dataset.labels[:n_images]
        _describe(benchmark, record, n_images, batch_size, loader_workers)
        under_test = peers.loader(peer, prepared, images, labels, batch_size, loader_workers)
        run_cell(measure, benchmark, Epochs(f"{peer} loader", under_test, prepared.images, labels))
