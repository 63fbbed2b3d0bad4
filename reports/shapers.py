"""Every published table by the name its markers use (``<!-- table: NAME run=... -->``): the one registry
``python -m reports publish`` reads. A shaper takes what the block's runs hold (suite runs, or for ``figure`` the
saved figures of scripts: reports.figures) and returns a reports.tables.Table."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from reports import tables, tables_suite

SHAPERS: dict[str, Callable[[Sequence[Any]], tables.Table]] = {
    "results": tables.results,
    "workloads": tables.workloads,
    "codecs": tables.codecs,
    "tutorial": tables_suite.tutorial,
    "single-writes": tables_suite.single_writes,
    "shuffled": tables_suite.shuffled,
    "readahead": tables_suite.readahead,
    "methods": tables_suite.methods,
    "loaders": tables_suite.loaders,
    "remote": tables_suite.remote,
    "figure": tables_suite.figure,
    "costs": tables_suite.costs,
}
FIGURE_SHAPERS = frozenset({"figure"})  # shapers of script figures; every other one reads suite runs
