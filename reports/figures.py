"""Figures measured by scripts rather than pytest-benchmark runs (benchmarks/read_batch_targets.py,
benchmarks/tutorial_single.py...), saved as JSON that ``python -m reports publish`` draws like a kept run.

The format, owned here (docs/reports.md, "Published tables")::

    {"figure": "read_batch_targets",          # what the script measured
     "datetime": "2026-12-08T01:02:03+00:00",  # when it started, ISO 8601
     "machine_info": {...},                    # pytest-benchmark's, plus "command" (the exact command line),
                                               # "storage" and "load_average" (1, 5 and 15 minutes, at the start)
     "commit_info": {...},                     # pytest-benchmark's: "id", "dirty", ...
     "header": ["method", "images/s", ...],    # the table, as the script formatted it
     "rows": [["lmdb", "422 741", ...], ...]}
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from reports.results import ReportInputError, _freeze, _parse_datetime, _read_json


@dataclass(frozen=True)
class Figure:
    """One saved script figure: where it was measured and its table."""

    path: Path
    name: str
    machine_info: Mapping[str, Any]
    commit_info: Mapping[str, Any]
    datetime: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    @property
    def started(self) -> datetime:
        return _parse_datetime(self.datetime)


def is_figure(document: Any) -> bool:
    return isinstance(document, dict) and "figure" in document


def figure_document(
    name: str,
    started: datetime,
    machine_info: Mapping[str, Any],
    commit_info: Mapping[str, Any],
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
) -> dict[str, Any]:
    """The JSON object of a figure (the writer's side of the format above)."""
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"figure {name}: every row must have {len(header)} cells")
    return {
        "figure": name,
        "datetime": started.isoformat(),
        "machine_info": dict(machine_info),
        "commit_info": dict(commit_info),
        "header": list(header),
        "rows": [list(map(str, row)) for row in rows],
    }


def figure_from(path: Path, document: Any) -> Figure:
    """Check a parsed figure document and return it; anything malformed is a ReportInputError naming the field."""
    for field in ("machine_info", "commit_info"):
        if not isinstance(document.get(field), dict):
            raise ReportInputError(path, f"missing {field!r} object")
    header, rows = document.get("header"), document.get("rows")
    if not isinstance(header, list) or not all(isinstance(cell, str) for cell in header):
        raise ReportInputError(path, "'header' is not a list of strings")
    if not isinstance(rows, list) or not all(
        isinstance(row, list) and len(row) == len(header) and all(isinstance(cell, str) for cell in row) for row in rows
    ):
        raise ReportInputError(path, f"'rows' is not a list of rows of {len(header)} strings")
    try:
        _parse_datetime(document.get("datetime"))
    except (TypeError, ValueError):
        raise ReportInputError(path, f"missing or non-ISO 8601 'datetime': {document.get('datetime')!r}") from None
    return Figure(
        path=path,
        name=str(document["figure"]),
        machine_info=_freeze(document["machine_info"]),
        commit_info=_freeze(document["commit_info"]),
        datetime=document["datetime"],
        header=tuple(header),
        rows=tuple(tuple(row) for row in rows),
    )


def load_figure(path: str | os.PathLike) -> Figure:
    path = Path(path)
    document = _read_json(path)
    if not is_figure(document):
        raise ReportInputError(path, "not a saved figure (no 'figure' field)")
    return figure_from(path, document)
