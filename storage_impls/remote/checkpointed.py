"""Remote reads of a checkpointed method (core/checkpointed.py): the metadata file and the journal downloaded into
the mirror at open (staged.py), then the method's own CheckpointedStore logic, with a checkpoint whose large files
are filled by range before each read (``RemoteCheckpoint``)."""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from storage_impls.core.base import Mode
from storage_impls.core.checkpointed import Checkpoint
from storage_impls.remote.client import Location
from storage_impls.remote.ranges import Span
from storage_impls.remote.staged import StagedFolder


def location_of(url: str | Location, storage_options: dict | None) -> Location:
    return url if isinstance(url, Location) else Location(url, storage_options)


class RemoteReads:
    """Mixin, first among the bases of a method's remote reader: opens the mirror, routes errors to remote names.
    The method's class sets ``STAGED`` (its top-level files, the first required)."""

    STAGED: tuple[str, ...]
    method: str
    fork_safe = False  # the client's runtime does not survive a fork (client.py): readers are spawned

    def __init__(
        self, url: str | Location, mode: Mode = "r", *, storage_options: dict | None = None, **options: object
    ) -> None:
        if mode != "r":
            raise PermissionError(f"{url} is an object store: remote stores are read-only (mode='r')")
        self.location = location_of(url, storage_options)
        self.staged = StagedFolder(self.location)
        try:
            with self.staged.naming():
                self._stage()
                super().__init__(self.staged.root, "r", **options)
        except BaseException:
            self.staged.close()
            raise

    def _stage(self) -> None:
        """Put the store's top-level files in the mirror before the method's class opens it: by default ``STAGED``,
        downloaded whole (the first must exist)."""
        self.staged.download_store_file(self.STAGED[0], self.method)
        for name in self.STAGED[1:]:
            self.staged.download(name, required=False)

    def _get(self, image_id: int) -> tuple[np.ndarray, int]:
        with self.staged.naming():
            return super()._get(image_id)

    def _read_into(self, out: np.ndarray, labels: np.ndarray) -> None:
        with self.staged.naming():
            super()._read_into(out, labels)

    def _read_batch_into(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        with self.staged.naming():
            super()._read_batch_into(ids, out, labels)

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            self.staged.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location.url!r}, mode='r')"


class RemoteCheckpointed(RemoteReads):
    """RemoteReads of a CheckpointedStore: its ``_open_checkpoint`` opens ``CHECKPOINT`` on the mirror."""

    CHECKPOINT: type[RemoteCheckpoint]
    POINTER: str
    JOURNAL: str

    def __init_subclass__(cls, **keywords: object) -> None:
        super().__init_subclass__(**keywords)
        cls.STAGED = (cls.POINTER, cls.JOURNAL)

    def _open_checkpoint(self, folder: Path, meta: dict) -> Checkpoint:
        return self.CHECKPOINT.open_remote(self.staged, folder.name, meta)


class RemoteCheckpoint(abc.ABC):
    """Mixin, first among the bases of a method's Checkpoint: its reads fill the mirror with the ranges they need."""

    staged: StagedFolder
    key: str  # the checkpoint's folder, relative to the location

    @classmethod
    def open_remote(cls, staged: StagedFolder, key: str, meta: dict, *args: object) -> Checkpoint:
        """Download the checkpoint's small files, make its large ones sparse, then open it as the local class does
        (``args``: the class's own after the folder and metadata)."""
        checkpoint = cls.__new__(cls)
        checkpoint.staged, checkpoint.key = staged, key
        checkpoint.stage(meta)
        checkpoint.__init__(staged.root / key, meta, *args)
        return checkpoint

    @abc.abstractmethod
    def stage(self, meta: dict) -> None:
        """Put the checkpoint's files in the mirror (``self.staged``, folder ``self.key``) before it opens."""

    def span(self, name: str, start: int, stop: int) -> Span:
        return Span(f"{self.key}/{name}", start, stop)
