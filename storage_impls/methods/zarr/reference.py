"""zarr-python alone on a zarr store's group, as its documentation shows a selection of rows (``oindex``, here with
``out=`` so that nothing is copied twice): benchmarks compare read_batch with it. Raw uint8 images only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from zarr.core.buffer.cpu import NDBuffer

from storage_impls.core.base import BatchReader


def orthogonal_reader(group: Path) -> BatchReader:
    images = zarr.open_array(group / "images", mode="r")

    def read(ids: np.ndarray, out: np.ndarray) -> None:
        images.get_orthogonal_selection((ids,), out=NDBuffer.from_numpy_array(out))

    return read
