"""A pytest plugin for the A/A check of the floor flag (docs/ci.md, "Floor flags"): every floor cell runs twice in a
row (ids ``...-a]`` and ``...-b]``), and the second's rounds are interleaved with rounds of the first, as a cell's
rounds are with its floor's (benchmarks/interleave.py), so that ``python -m reports.floor_aa`` can judge the floor
against itself both ways: timed back to back, and interleaved. Use: ``pytest benchmarks/test_floors.py -p
tests.floor_twice``."""

import pytest

from benchmarks import conftest as suite


@pytest.fixture(autouse=True)
def aa() -> str:
    return ""


def pytest_configure(config: pytest.Config) -> None:
    keys = suite._floor_keys

    def self_first(item: pytest.Item) -> tuple:
        """The second timing interleaves with the first (registered under the same floor cell); the first with none."""
        if item.name.endswith("-b]"):
            return (suite._floor_cell(item),)
        return () if item.name.endswith("-a]") else keys(item)

    suite._floor_keys = self_first


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.originalname.startswith("test_floor_"):
        metafunc.parametrize("aa", ["a", "b"])


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each a right before its b."""
    order: dict[str, list[pytest.Item]] = {}
    for item in items:
        order.setdefault(item.name.replace("-a]", "]").replace("-b]", "]"), []).append(item)
    items[:] = [item for pair in order.values() for item in pair]
