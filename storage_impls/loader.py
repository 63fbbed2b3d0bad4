"""A map-style dataset over any store, for training code: ``ImageDataset("lmdb", "stores/lmdb")``.

It needs no torch (and imports none), yet ``torch.utils.data.DataLoader`` takes it as it is, two ways:

- whole batches (the fast way, ``batch_loader``): ``dataset[ids]`` with a sequence of ids returns the batch as one
  images array and one labels array, from one ``read_batch``; a DataLoader with a batch sampler and
  ``batch_size=None`` asks exactly that and passes the arrays on as tensors without copying them. ``batch_loader``
  builds that DataLoader (importing torch only when called); in a worker process it reads each batch straight
  into shared memory, so the batch crosses to the training process without a copy either. Without workers it
  returns ``InProcessBatches``, the same batches without a DataLoader's fixed cost per batch.
- per sample (the protocol of any map-style dataset): ``len(dataset)``, ``dataset[i] -> (image, label)``, and
  ``dataset.__getitems__(ids)``, which a DataLoader with ``batch_size`` calls with a whole batch of indices
  (torch 2.0 and later) and which this class answers with one ``read_batch``, as a list of (image, label)
  pairs: what the default collate function takes, which then copies the images into a new batch tensor.

The dataset carries the method, the directory and the store options, never an open handle, so it
pickles into spawned workers; each process opens its own read-only handle on first use (a process
that inherited an opened dataset through a fork sees that the pid changed, closes its copy of the
inherited handle, which a read-only handle allows, and opens a fresh one: py-lmdb refuses to open a
path that is open in the process, and a forked child counts the parent's environment as its own).
A method whose library is not fork-safe (``ImageStore.fork_safe`` False: lance) refuses to run in a
forked process: give the DataLoader ``multiprocessing_context="spawn"``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from storage_impls.core.base import ImageStore
from storage_impls.registry import open_store


class ImageDataset:
    """Images and labels of the store of ``method`` in ``directory``, by id; ``store_options`` as for ``open_store``."""

    def __init__(self, method: str, directory: str | os.PathLike, **store_options: object) -> None:
        self.method = method
        # an object-store URL stays as given (store_options then carry storage_options: docs/remote.md)
        remote = isinstance(directory, str) and "://" in directory
        self.directory = directory if remote else Path(os.path.abspath(directory))
        self.store_options = store_options
        self._store: ImageStore | None = None
        self._pid: int | None = None

    def _handle(self) -> ImageStore:
        """This process's read-only handle, opened on first use in each process."""
        if self._store is None or self._pid != os.getpid():
            self.close()  # a handle inherited through a fork: release this process's copy of it first
            self._store = open_store(self.method, self.directory, "r", **self.store_options)
            self._pid = os.getpid()
        return self._store

    def __len__(self) -> int:
        return len(self._handle())

    def __getitem__(self, index: int | Sequence[int]) -> tuple[np.ndarray, int] | tuple[np.ndarray, np.ndarray]:
        """(image, label) of id ``index``, IndexError outside 0..len-1 (so that iteration stops); for a sequence of
        ids, the whole batch: (images, labels) arrays from one ``read_batch``."""
        if not isinstance(index, (int, np.integer)):
            return self.read_batch(index)
        store = self._handle()
        if not 0 <= index < len(store):
            raise IndexError(f"index {index} is out of range: {self.directory} holds ids 0..{len(store) - 1}")
        return store.read_single(index)

    def read_batch(self, ids: Sequence[int], out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of ``ids``, in order, as ``ImageStore.read_batch`` (``out``: where to put the images)."""
        return self._handle().read_batch(np.asarray(ids, dtype=np.int64), out=out)

    def batch_shape(self, count: int) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of the images array of a batch of ``count`` ids."""
        store = self._handle()
        return (count, *store.image_shape), store.image_dtype

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[np.ndarray, int]]:
        """(image, label) of each of ``indices``, in order, read with one ``read_batch`` call."""
        images, labels = self.read_batch(indices)
        return list(zip(images, labels.tolist()))

    def close(self) -> None:
        """Close this process's handle (the dataset opens a new one if used again)."""
        if self._store is not None:
            self._store.close()
        self._store = self._pid = None

    def __enter__(self) -> ImageDataset:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        """What a worker needs to open the store itself: never the handle."""
        return {"method": self.method, "directory": self.directory, "store_options": self.store_options}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _store=None, _pid=None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.method!r}, {str(self.directory)!r})"


class TensorBatches:
    """``dataset``'s batches as torch tensors: ``batches[ids] -> (images, labels)``, read in a DataLoader worker
    straight into shared memory (which then crosses to the training process without a copy), in the training
    process by ``read_batch`` alone, its arrays handed over as tensors (``torch.from_numpy``: no copy). Imports
    torch on first use."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, ids: Sequence[int]):  # -> tuple[torch.Tensor, torch.Tensor]
        import torch  # only here: the package never imports torch at import

        if torch.utils.data.get_worker_info() is None:
            images, labels = self.dataset.read_batch(ids)
            return torch.from_numpy(images), torch.from_numpy(labels)
        # a worker: shared memory, as the default collate allocates its batch there
        shape, dtype = self.dataset.batch_shape(len(ids))
        empty = torch.from_numpy(np.empty(0, dtype))
        images = empty.new(empty._typed_storage()._new_shared(math.prod(shape))).view(shape)
        labels = self.dataset.read_batch(ids, out=images.numpy())[1]
        return images, torch.from_numpy(labels)


class ShuffledBatches:
    """A batch sampler without per-id Python work: each pass cuts one permutation of 0..count-1 (drawn with torch's
    ``randperm`` from ``generator``, or the ids in order without ``shuffle``) into int64 arrays of ``batch_size``
    ids, the last shorter unless ``drop_last``."""

    def __init__(
        self, count: int, batch_size: int, *, shuffle: bool = True, drop_last: bool = False, generator=None
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.count, self.batch_size, self.shuffle, self.drop_last = count, batch_size, shuffle, drop_last
        self.generator = generator

    def __len__(self) -> int:
        return self.count // self.batch_size if self.drop_last else math.ceil(self.count / self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.shuffle:
            import torch

            order = torch.randperm(self.count, generator=self.generator).numpy()
        else:
            order = np.arange(self.count, dtype=np.int64)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start : start + self.batch_size]


def as_is(batch: object) -> object:
    """A DataLoader's ``collate_fn`` for batches that come as tensors already: passes them on untouched."""
    return batch


class InProcessBatches:
    """``batches``' batches of ``tensor_batches`` read in the calling process, one ``read_batch`` each: what a
    DataLoader at ``num_workers=0`` yields, without the DataLoader's fixed cost per batch (its iterator opens a
    ``record_function`` profiler scope around every batch, as long as reading 256 small images from a memory map:
    docs/benchmarks.md, "The loader"). Iterable any number of times; ``len`` is the number of batches."""

    def __init__(self, tensor_batches: TensorBatches, batches: Iterable[Sequence[int]]) -> None:
        self.tensor_batches, self.batches = tensor_batches, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:  # of (images, labels) tensors
        read = self.tensor_batches.__getitem__
        for ids in self.batches:
            yield read(ids)


# DataLoader options that do nothing without worker processes: at their defaults, the loop needs no DataLoader
_WORKER_ONLY_OPTIONS = ("num_workers", "persistent_workers", "multiprocessing_context")


def batch_loader(
    dataset: ImageDataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
    generator=None,
    batches: Iterable[Sequence[int]] | None = None,
    **loader_options,
):  # -> torch.utils.data.DataLoader | InProcessBatches
    """The loader that hands ``dataset``'s batches over whole: ``for images, labels in batch_loader(dataset, 256,
    num_workers=2)``, images a uint8 (N, H, W, C) tensor as the default collate would give, each batch read with one
    ``read_batch`` and never copied again. ``batches``: a batch sampler to follow (lists or arrays of ids) in place
    of ``ShuffledBatches(len(dataset), batch_size, shuffle=, drop_last=, generator=)``. ``loader_options`` go to the
    DataLoader (``num_workers``, ``pin_memory``, ``multiprocessing_context``, ...). Without workers and without any
    other DataLoader option (``num_workers=0``, the default) the same batches come from an ``InProcessBatches``, not
    a DataLoader: nothing to manage without processes, and it spares the DataLoader's fixed cost per batch."""
    if batches is None:
        batches = ShuffledBatches(len(dataset), batch_size, shuffle=shuffle, drop_last=drop_last, generator=generator)
    if all(name in _WORKER_ONLY_OPTIONS and not value for name, value in loader_options.items()):
        return InProcessBatches(TensorBatches(dataset), batches)
    from torch.utils.data import DataLoader

    loader_options.setdefault("collate_fn", as_is)
    return DataLoader(TensorBatches(dataset), sampler=batches, batch_size=None, **loader_options)
