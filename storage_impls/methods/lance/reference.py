"""pylance alone on a lance store's dataset, as its documentation shows random access (``LanceDataset.take`` of the
rows, the image column only), the fixed-size-binary buffer then copied into the batch: benchmarks compare
read_batch with it. Raw uint8 images of a store written by store_many (rows in id order) only."""

from __future__ import annotations

from pathlib import Path

import lance
import numpy as np

from storage_impls.core.base import BatchReader


def take_reader(folder: Path) -> BatchReader:
    dataset = lance.dataset(str(folder))

    def read(ids: np.ndarray, out: np.ndarray) -> None:
        column = dataset.take(ids, columns=["image"]).column("image").combine_chunks()
        rows = np.frombuffer(column.buffers()[1], np.uint8, out.nbytes, column.offset * (out.nbytes // len(out)))
        out.reshape(len(out), -1)[:] = rows.reshape(len(out), -1)

    return read
