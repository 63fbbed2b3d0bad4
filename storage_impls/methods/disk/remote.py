"""disk from an object store: ``CURRENT``, the journal, the generation's ``meta.json`` and ``labels.csv`` downloaded
at open, then one GET per image file (a batch's all in flight at once; ``read_many`` FILES_AT_ONCE at a time): the
classic file-per-image pattern, measured. The local reader checks and decodes each file as it does on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from storage_impls.methods.disk.format import JOURNAL, LABELS, META, POINTER, read_pointer
from storage_impls.methods.disk.store import DiskStore
from storage_impls.remote.checkpointed import RemoteReads

FILES_AT_ONCE = 256  # image files read_many fetches (and holds) at a time


class RemoteDiskStore(RemoteReads, DiskStore):
    """A disk store read from an object store (read-only)."""

    STAGED = (POINTER, JOURNAL)

    def _stage(self) -> None:
        super()._stage()
        name = read_pointer(self.staged.root)
        if name:
            for part in (META, LABELS):
                self.staged.download(f"{name}/{part}")

    def _files(self, ids: np.ndarray) -> list[str]:
        """The objects of ``ids``' image files (those the journal does not hold)."""
        generation, journal = self._checkpoint, self._journal.entries
        return [
            Path(generation.file(image_id)).relative_to(self.staged.root).as_posix()
            for image_id in np.unique(ids).tolist()
            if image_id not in journal
        ]

    def _get(self, image_id: int) -> tuple[np.ndarray, int]:
        with self.staged.naming(), self.staged.downloaded(self._files(np.array([image_id]))):
            return super()._get(image_id)

    def _read_batch_into(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        with self.staged.naming(), self.staged.downloaded(self._files(ids)):
            super()._read_batch_into(ids, out, labels)

    def _read_into(self, out: np.ndarray, labels: np.ndarray) -> None:
        for first in range(0, len(out), FILES_AT_ONCE):
            ids = np.arange(first, min(len(out), first + FILES_AT_ONCE))
            self._read_batch_into(ids, out[first : first + len(ids)], labels[first : first + len(ids)])
