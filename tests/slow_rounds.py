"""A pytest plugin for tests/test_benchmarks.py: HDF5 read_many takes 0.1 s longer, and progress is reported from
cells of half a second on, so that a tiny run shows the progress lines of a long cell and the remaining time."""

import functools
import time

from benchmarks import progress
from storage_impls.methods.hdf5.store import Hdf5Store


def pytest_configure(config):
    progress.LONG_CELL_S, progress.ROUND_EVERY_S = 0.5, 0.0
    progress.ESTIMATE_AFTER_CELLS, progress.ESTIMATE_EVERY_S = 1, 0.0
    read_many = Hdf5Store.read_many

    @functools.wraps(read_many)
    def slow_read_many(*args, **kwargs):
        time.sleep(0.1)
        return read_many(*args, **kwargs)

    Hdf5Store.read_many = slow_read_many
