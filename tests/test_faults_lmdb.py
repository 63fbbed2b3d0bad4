"""Fault tests of the LMDB method: the shared ones (tests/faults.py) plus LMDB's own."""
from __future__ import annotations

from tests.faults import FaultTests


class TestLmdbFaults(FaultTests):
    method = "lmdb"
