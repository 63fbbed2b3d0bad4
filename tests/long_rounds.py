"""pytest plugin for tests/test_benchmarks.py: every cell counts as long (LONG_ROUND_S = 0), so the suite's
rule for long cells (at least LONG_MIN_ROUNDS rounds rather than MIN_ROUNDS) can be checked in a second."""

from __future__ import annotations

import pytest


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    import benchmarks.conftest

    benchmarks.conftest.LONG_ROUND_S = 0.0
