"""A raw py-lmdb reader of an lmdb store, as an expert would write it without this package: one read
transaction per batch, ``txn.get`` per id, ``frombuffer`` into the batch (benchmarks compare read_batch
with it). Raw uint8 values only: a fixed header, then the pixels."""

from __future__ import annotations

from pathlib import Path

import lmdb
import numpy as np

from storage_impls.core.base import BatchReader
from storage_impls.core.records import KEY


def raw_reader(directory: Path, shape: tuple[int, ...]) -> BatchReader:
    env = lmdb.open(str(directory), readonly=True, lock=False, readahead=False, subdir=True, max_dbs=0)
    pixels = int(np.prod(shape))

    def read(ids: np.ndarray, out: np.ndarray) -> None:
        with env.begin(buffers=True) as txn:
            for slot, image_id in enumerate(ids.tolist()):
                value = txn.get(KEY.pack(image_id))
                out[slot] = np.frombuffer(value, np.uint8, pixels, len(value) - pixels).reshape(shape)

    return read
