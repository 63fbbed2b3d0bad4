"""Settings for the tests when pytest-xdist runs them (`pytest -n auto --dist loadgroup`, README)."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Keep xdist's worker variables from the processes the tests start: pytest-benchmark turns its timing off
    wherever PYTEST_XDIST_WORKER is set, so every `pytest benchmarks` a test runs would time nothing."""
    if hasattr(config, "workerinput"):
        for name in [name for name in os.environ if name.startswith("PYTEST_XDIST_")]:
            del os.environ[name]
