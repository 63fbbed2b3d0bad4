"""webdataset from an object store: ``index.npy`` (and ``checksums.npy``) downloaded at open, each shard read by
ranged GETs of exactly the members a read needs (a shuffled batch: one request per member, all in flight at once;
neighbours in a shard coalesce into one request; ``read_many``: one request per shard and block of
BLOCK_BYTES), then parsed and checked by the local reader (remote/staged.py)."""

from __future__ import annotations

import numpy as np

from storage_impls.core.codecs import RAW
from storage_impls.methods.webdataset.format import sample_bytes
from storage_impls.methods.webdataset.store import CHECKSUMS, INDEX, SHARD, TarCheckpoint, WebDatasetStore
from storage_impls.remote.checkpointed import RemoteCheckpoint, RemoteCheckpointed
from storage_impls.remote.ranges import Span

BLOCK_BYTES = 64 << 20  # read_many fetches and parses this much at a time


class RemoteTarCheckpoint(RemoteCheckpoint, TarCheckpoint):
    """A TarCheckpoint whose shards are filled by range before each read."""

    def stage(self, meta: dict) -> None:
        self.staged.download(f"{self.key}/{INDEX}")
        if meta.get("checksum"):
            self.staged.download(f"{self.key}/{CHECKSUMS}")
        self.staged.sparse(self.key, [SHARD.format(index=shard) for shard in range(int(meta["shards"]))])

    def _spans(self, ids: np.ndarray) -> list[Span]:
        """The bytes of each of ``ids``' member (raw) or sample (encoded: both members, padding included, so that
        neighbours touch and coalesce)."""
        where = self.index[ids]
        sizes = sample_bytes(where[:, 2]) if self.codec is not RAW else np.full(len(ids), self.layout.size)
        return [
            self.span(SHARD.format(index=shard), offset, offset + size)
            for (shard, offset), size in zip(where[:, :2].tolist(), sizes.tolist())
        ]

    def take(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        with self.staged.filled(self._spans(ids)):
            super().take(ids, out, labels)

    def payloads(self, ids: np.ndarray) -> tuple[list[memoryview], np.ndarray]:
        with self.staged.filled(self._spans(np.unique(ids))):
            return super().payloads(ids)

    def read_rows(self, start: int, out: np.ndarray, labels: np.ndarray) -> None:
        step = max(1, BLOCK_BYTES // self.layout.size)
        for first in range(0, len(out), step):
            block = slice(first, first + step)
            ids = np.arange(start + first, start + min(len(out), first + step))
            with self.staged.filled(self._spans(ids)):
                super().read_rows(start + first, out[block], labels[block])


class RemoteWebDatasetStore(RemoteCheckpointed, WebDatasetStore):
    """A webdataset store read from an object store (read-only)."""

    CHECKPOINT = RemoteTarCheckpoint
