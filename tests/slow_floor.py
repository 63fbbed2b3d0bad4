"""A pytest plugin for tests/test_benchmarks.py: the file-read floor sleeps 50 ms per read, so the cells it bounds
beat it by far more than its spread, as a cell that skipped its work would: the run must flag them."""

import time

from benchmarks import test_floors


def pytest_configure(config):
    read_into = test_floors.read_into

    def slow_read_into(*args, **kwargs):
        time.sleep(0.05)
        return read_into(*args, **kwargs)

    test_floors.read_into = slow_read_into
