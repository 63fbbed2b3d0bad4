"""zarr from an object store: the group's metadata and labels downloaded at open, and the index at the end of every
image shard (one range each, all in flight at once); then each read fetches exactly its images' chunks by the
index (one range per image, neighbours coalesced, all in flight at once) and the reader the handle names
(``reader=zarr``: zarr-python; ``pread``) reads them from the mirror as from a local group, with the same checks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from storage_impls.methods.zarr.format import CRC
from storage_impls.methods.zarr.store import ZarrCheckpoint, ZarrStore
from storage_impls.remote.checkpointed import RemoteCheckpoint, RemoteCheckpointed
from storage_impls.remote.ranges import Span

BLOCK_IMAGES = 4096  # read_many fetches and reads this many images at a time


class RemoteZarrCheckpoint(RemoteCheckpoint, ZarrCheckpoint):
    """A ZarrCheckpoint whose image chunks are fetched by range before each read."""

    def stage(self, meta: dict) -> None:
        listed = self.staged.location.list(self.key)
        prefix = f"{self.key}/images/c/"
        shards = sorted(key for key in listed if key.startswith(prefix))
        self.staged.download_many([key for key in listed if not key.startswith(prefix)])
        self.staged.sparse(self.key, [key[len(self.key) + 1 :] for key in shards], listed)
        index = 16 * int(meta["shard_images"]) + CRC
        self.staged.fill([Span(key, max(0, listed[key] - index), listed[key]) for key in shards])

    def __init__(self, folder: Path, meta: dict, reader: str) -> None:
        super().__init__(folder, meta, reader)
        if not self.fds:  # the zarr reader keeps none open: the plan of each read needs the shard indexes
            try:
                self.fds.extend(os.open(path, os.O_RDONLY) for path in self.paths)
            except BaseException:
                self.close()
                raise

    def _spans(self, ids: np.ndarray) -> list[Span]:
        ids = np.unique(ids)
        shards = ids // self.per_shard
        self._load_indexes(shards)
        keys = [Path(path).relative_to(self.staged.root).as_posix() for path in self.paths]
        return [
            Span(keys[shard], offset, offset + length)
            for shard, offset, length in zip(shards.tolist(), self.offsets[ids].tolist(), self.lengths[ids].tolist())
        ]

    def read_rows(self, start: int, out: np.ndarray, labels: np.ndarray) -> None:
        for first in range(0, len(out), BLOCK_IMAGES):
            block = slice(first, first + BLOCK_IMAGES)
            with self.staged.filled(self._spans(np.arange(start + first, start + min(len(out), first + BLOCK_IMAGES)))):
                super().read_rows(start + first, out[block], labels[block])

    def take(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        with self.staged.filled(self._spans(ids)):
            super().take(ids, out, labels)

    def payloads(self, ids: np.ndarray) -> tuple[list[bytes | memoryview], np.ndarray]:
        with self.staged.filled(self._spans(ids)):
            return super().payloads(ids)


class RemoteZarrStore(RemoteCheckpointed, ZarrStore):
    """A zarr store read from an object store (read-only)."""

    CHECKPOINT = RemoteZarrCheckpoint

    def _open_checkpoint(self, folder: Path, meta: dict) -> ZarrCheckpoint:
        return RemoteZarrCheckpoint.open_remote(self.staged, folder.name, meta, self.settings.get("reader", "zarr"))
