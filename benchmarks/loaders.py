"""What the loader cells share (benchmarks/test_loader.py): the seeded batches every loader reads, an epoch run
through any loader and its check, what a cell records, and when the cells run.

Every loader of a cell, ours or a peer's (benchmarks/peers.py), reads the same epochs: ``EpochBatches`` is a batch
sampler whose ``k``-th pass is the ``k``-th permutation drawn from PERMUTATION_SEED, cut into batches. A peer that
shuffles by itself (litdata, webdataset's pipeline) reads its own order; its samples carry their ids instead.

Timed: one epoch, iterating the loader until its last batch is in; the batches are kept, nothing else is done to
them. Untimed: everything else, the workers' start (persistent workers, started by the warm-up epoch) included.
Before each round and after the last one, the previous epoch is checked: every id exactly once, each image bit for
bit and each label what was stored.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from benchmarks.verify import verify

INSTALL_TORCH = "pip install 'image-storage-bench[torch]'"
INSTALL_PEERS = "pip install 'image-storage-bench[peers]'"
PERMUTATION_SEED = 0
OPERATIONS = ("loader", "loader_peer", "read_batches")  # ours through a DataLoader, a peer's loader, read_batch alone
LOADER_TESTS = ("test_loader", "test_loader_peer", "test_read_batches")


def require_torch():
    """The torch module, or a skip with the install hint."""
    return pytest.importorskip("torch", reason=f"torch is not installed: {INSTALL_TORCH}")


class EpochBatches:
    """A batch sampler: pass ``k`` yields the ``k``-th permutation of 0..n-1 drawn from ``seed``, cut into int64
    arrays of ``batch_size`` ids (the last shorter; lists of ints with ``lists``, as torch's own batch sampler gives
    a per-sample loader), and keeps that permutation in ``permutation``."""

    def __init__(self, n_images: int, batch_size: int, seed: int = PERMUTATION_SEED, *, lists: bool = False) -> None:
        self.n_images, self.batch_size, self.lists = n_images, batch_size, lists
        self._generator = np.random.default_rng(seed)
        self.permutation = np.arange(0)

    def __len__(self) -> int:
        return math.ceil(self.n_images / self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray | list[int]]:
        self.permutation = self._generator.permutation(self.n_images)
        for start in range(0, self.n_images, self.batch_size):
            ids = self.permutation[start : start + self.batch_size]
            yield ids.tolist() if self.lists else ids


@dataclass
class LoaderUnderTest:
    """A loader to time: ``loader`` yields batches (images, labels, ...) as a training loop sees them; ``ids`` gives
    the id of every image of an epoch's batches, in order (untimed); ``labels`` tells whether the batches' second
    field holds the stored labels (else it holds the ids)."""

    loader: Iterable
    ids: Callable[[list], np.ndarray]
    labels: bool = True


def sampled_ids(sampler: EpochBatches, index_to_id: np.ndarray | None = None) -> Callable[[list], np.ndarray]:
    """``ids`` of a loader whose order is ``sampler``'s: the last permutation (a dataset's index mapped to its id)."""
    return lambda batches: sampler.permutation if index_to_id is None else index_to_id[sampler.permutation]


class Epochs:
    """Runs epochs of one loader (``run``, the timed region) and checks each (``check``, untimed)."""

    def __init__(self, what: str, under_test: LoaderUnderTest, images: np.ndarray, labels: np.ndarray) -> None:
        self.what, self.under_test, self.images, self.labels = what, under_test, images, labels
        self.batches: list | None = None
        self.checked = 0

    def run(self) -> None:
        self.batches = list(self.under_test.loader)

    def check(self) -> tuple[tuple, dict]:
        """The previous epoch, if any: every id once, every image and label as stored; then forget its batches."""
        if self.batches is not None:
            ids = np.asarray(self.under_test.ids(self.batches), dtype=np.int64)
            counts = np.bincount(ids, minlength=len(self.images))
            if len(counts) != len(self.images) or not np.all(counts == 1):
                pytest.fail(
                    f"{self.what}: epoch {self.checked} read {int(np.count_nonzero(counts != 1))} of "
                    f"{len(self.images)} ids other than once",
                    pytrace=False,
                )
            images = np.concatenate([np.asarray(batch[0]) for batch in self.batches])
            second = np.concatenate([np.asarray(batch[1]) for batch in self.batches]).astype(np.int64)
            verify(self.what, images, second, self.images[ids], self.labels[ids] if self.under_test.labels else ids)
            self.checked += 1
        self.batches = None
        return (), {}


def run_cell(measure: Callable, benchmark, epochs: Epochs) -> None:
    """Time the epochs, checking each outside the timing, and record the load average around them."""
    before = os.getloadavg()[0]
    measure(epochs.run, epochs.check)
    epochs.check()
    benchmark.extra_info.update(
        load_average_before=before, load_average_after=os.getloadavg()[0], epochs_checked=epochs.checked
    )


def is_loader_cell(item: pytest.Item) -> bool:
    return getattr(item, "originalname", "") in LOADER_TESTS


def asked_for(config: pytest.Config) -> bool:
    """Whether this run asked for the loader cells: --loaders, a -k naming them, or benchmarks/test_loader.py named."""
    keyword = config.getoption("keyword", "") or ""
    named = any("test_loader" in str(arg) for arg in config.invocation_params.args)
    return bool(config.getoption("loaders", False)) or "loader" in keyword or "read_batches" in keyword or named


def order_loader_cells(config: pytest.Config, items: list[pytest.Item]) -> list[pytest.Item]:
    """The loader cells deselected unless asked for; otherwise run last, the loaders of each image count, batch
    size and worker count together, ours and the peers taking turns (a drift in the machine's load then touches
    both), each method's read_batch alone just before it."""
    loaders = [item for item in items if is_loader_cell(item)]
    if not loaders:
        return []
    items[:] = [item for item in items if not is_loader_cell(item)]
    if not asked_for(config):
        return loaders
    groups: dict[tuple, tuple[dict, list]] = {}
    for item in loaders:
        params = item.callspec.params
        slot = (params.get("n_images"), params.get("batch_size"), params.get("loader_workers", 0))
        ours, peers = groups.setdefault(slot, ({}, []))
        if item.originalname == "test_loader_peer":
            peers.append(item)
        else:
            ours.setdefault(params["method"], []).append(item)
    for ours, peers in groups.values():
        units = [sorted(cells, key=lambda item: item.originalname != "test_read_batches") for cells in ours.values()]
        for turn in range(max(len(units), len(peers))):
            items += [*(units[turn] if turn < len(units) else ()), *peers[turn : turn + 1]]
    return []
