"""A pytest plugin for the real A/B check in docs/ci.md: HDF5 reads and LMDB store_many take 10 % longer.

Each wrapped call busy-waits after returning until 1.1x its own duration has passed, so the slowdown is a
real, proportional one on this machine: `pytest benchmarks -p tests.slowdown ...`.
"""

import functools
import time

from storage_impls.methods.hdf5.store import Hdf5Store
from storage_impls.methods.lmdb.store import LmdbStore

FACTOR = 1.10


def _slowed(method):
    @functools.wraps(method)
    def slowed(*args, **kwargs):
        start = time.perf_counter()
        result = method(*args, **kwargs)
        deadline = start + (time.perf_counter() - start) * FACTOR
        while time.perf_counter() < deadline:
            pass
        return result

    return slowed


def pytest_configure(config):
    Hdf5Store.read_single = _slowed(Hdf5Store.read_single)
    Hdf5Store.read_many = _slowed(Hdf5Store.read_many)
    LmdbStore.store_many = _slowed(LmdbStore.store_many)
