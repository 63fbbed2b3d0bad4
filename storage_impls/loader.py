"""A map-style dataset over any store, for training code: ``ImageDataset("lmdb", "stores/lmdb")``.

It needs no torch (and imports none), yet ``torch.utils.data.DataLoader`` takes it as it is:
``len(dataset)``, ``dataset[i] -> (image, label)``, and ``dataset.__getitems__(ids)``, which a DataLoader
with batching calls with a whole batch of indices (torch 2.0 and later) and which this class answers with one
``read_batch``. ``__getitems__`` returns a list of (image, label) pairs, what the default collate
function takes: the images are views of one batch array, which the collate copies into the batch tensor.

The dataset carries the method, the directory and the store options, never an open handle, so it
pickles into spawned workers; each process opens its own read-only handle on first use (a process
that inherited an opened dataset through a fork sees that the pid changed, closes its copy of the
inherited handle, which a read-only handle allows, and opens a fresh one: py-lmdb refuses to open a
path that is open in the process, and a forked child counts the parent's environment as its own).
A method whose library is not fork-safe (``ImageStore.fork_safe`` False: lance) refuses to run in a
forked process: give the DataLoader ``multiprocessing_context="spawn"``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
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

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        """(image, label) of id ``index``; IndexError outside 0..len-1, so that iteration stops."""
        store = self._handle()
        if not 0 <= index < len(store):
            raise IndexError(f"index {index} is out of range: {self.directory} holds ids 0..{len(store) - 1}")
        return store.read_single(index)

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[np.ndarray, int]]:
        """(image, label) of each of ``indices``, in order, read with one ``read_batch`` call."""
        images, labels = self._handle().read_batch(np.asarray(indices, dtype=np.int64))
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
