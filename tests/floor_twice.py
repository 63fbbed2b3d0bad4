"""A pytest plugin for the A/A check of the floor flag (docs/ci.md, "Floor flags"): every floor cell runs twice in a
row (ids ``...-a`` and ``...-b``), as a floor and a cell it bounds run one after the other, so that
``python -m reports.floor_aa`` can judge each against the other. Use: ``pytest benchmarks/test_floors.py -p
tests.floor_twice``."""
import pytest


@pytest.fixture(autouse=True)
def aa() -> str:
    return ""


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
