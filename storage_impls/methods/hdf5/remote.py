"""hdf5 from an object store: the checkpoint's structure found through h5py over ranged GETs (remote/files.py), then
everything but the images' bytes (metadata, labels, checksums, offsets) fetched at open; each read fetches exactly
its images' rows (raw) or encoded bytes, one range per image (neighbours coalesce), all in flight at once; the local
reader (its map and checks) runs on the mirror. The chunked layout (``hdf5:chunks=``, compression) reads local
files only (its chunks' places are HDF5's B-tree's): stage it."""

from __future__ import annotations

import h5py
import numpy as np

from storage_impls.core.codecs import RAW
from storage_impls.core.errors import CorruptStoreError, LocalOnlyError, StoreError
from storage_impls.methods.hdf5.format import Checkpoint
from storage_impls.methods.hdf5.store import FILE_NAME, JOURNAL_NAME, Hdf5Store
from storage_impls.remote.checkpointed import RemoteReads
from storage_impls.remote.files import open_object
from storage_impls.remote.ranges import Span
from storage_impls.remote.staged import StagedFolder

BLOCK_BYTES = 64 << 20  # read_many fetches and reads this much at a time


def images_extent(staged: StagedFolder, size: int) -> tuple[int, int]:
    """Where the images' bytes lie in the remote checkpoint (offset, bytes), found by h5py through ranged GETs."""
    name = staged.location.name(FILE_NAME)
    try:
        with h5py.File(open_object(staged.location, FILE_NAME, size), "r") as file:
            dataset = file["encoded" if "codec" in file.attrs else "images"]
            offset, nbytes = dataset.id.get_offset(), dataset.id.get_storage_size()
    except StoreError:
        raise
    except Exception as error:  # noqa: BLE001  (h5py reports damaged metadata with many exception types)
        raise CorruptStoreError(f"{name} is not a readable HDF5 checkpoint ({type(error).__name__}: {error})") from None
    if offset is None:
        raise LocalOnlyError(
            f"{name} holds chunked images, which hdf5 reads from local files only: stage the store "
            "(storage_impls.remote.stage), then open the folder"
        )
    return offset, nbytes


class RemoteHdf5Checkpoint(Checkpoint):
    """A Checkpoint on the mirror of ``images.h5`` whose reads first fetch their images' bytes."""

    @classmethod
    def open_remote(cls, staged: StagedFolder) -> RemoteHdf5Checkpoint:
        size = staged.size(FILE_NAME)
        offset, nbytes = images_extent(staged, size)
        staged.fill([Span(FILE_NAME, 0, offset), Span(FILE_NAME, offset + nbytes, size)])
        checkpoint = cls(staged.root / FILE_NAME)
        checkpoint.staged = staged
        return checkpoint

    def _spans(self, ids: np.ndarray) -> list[Span]:
        if self.codec is RAW:
            starts = self._offset + ids * self.row
            return [Span(FILE_NAME, start, start + self.row) for start in starts.tolist()]
        starts, stops = self._offset + self.offsets[ids], self._offset + self.offsets[ids + 1]
        return [Span(FILE_NAME, start, stop) for start, stop in zip(starts.tolist(), stops.tolist())]

    def read_rows(self, start: int, out: np.ndarray, labels: np.ndarray) -> None:
        step = max(1, BLOCK_BYTES // self.row)
        for first in range(0, len(out), step):
            block = slice(first, first + step)
            with self.staged.filled(self._spans(np.arange(start + first, start + min(len(out), first + step)))):
                super().read_rows(start + first, out[block], labels[block])

    def image(self, image_id: int) -> tuple[np.ndarray, int]:
        with self.staged.filled(self._spans(np.array([image_id]))):
            return super().image(image_id)

    def take(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray) -> None:
        with self.staged.filled(self._spans(np.unique(ids))):
            super().take(ids, out, labels)


class RemoteHdf5Store(RemoteReads, Hdf5Store):
    """An hdf5 store read from an object store (read-only)."""

    STAGED = (FILE_NAME, JOURNAL_NAME)

    def _stage(self) -> None:
        listed = self.location.list()
        if FILE_NAME not in listed and JOURNAL_NAME not in listed:
            raise self.staged.not_a_store(self.method, FILE_NAME, listed)
        if FILE_NAME in listed:
            self.staged.sparse("", [FILE_NAME], listed)
        if JOURNAL_NAME in listed:
            self.staged.download(JOURNAL_NAME)

    def _open_current(self) -> Checkpoint | None:
        return RemoteHdf5Checkpoint.open_remote(self.staged) if self._pointer.exists() else None
