"""The floor checks at the end of a run (reports.floors): each cell's ``floor_ratio``, the flagged cells named in the
terminal summary, and with ``--strict-floors`` a flagged cell failing the run."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from reports.floors import FloorCheck, describe_implausible, floor_checks
from reports.results import Cell


def as_cell(metadata) -> Cell:
    """A timed cell as reports.results reads it from the JSON, for reports.floors."""
    info, stats = metadata.extra_info, metadata.stats
    return Cell(
        operation=info["operation"],
        method=info["method"],
        n_images=info["n_images"],
        image_shape=tuple(info["image_shape"]),
        stats={name: getattr(stats, name) for name in ("median", "q1", "q3")},
        data=None,
        extra_info=info,
    )


def checked_cells(timed: Sequence) -> list[tuple[Cell, FloorCheck]]:
    """(cell, its FloorCheck) of every timed cell whose floor ran in this session."""
    cells = [as_cell(metadata) for metadata in timed]
    checks = floor_checks(cells)
    return [(cell, checks[cell.key]) for cell in cells if cell.key in checks]


def finish(session: pytest.Session, timed: Sequence) -> None:
    """Before pytest-benchmark saves the run: each cell whose floor ran gets ``floor_ratio`` (ours/floor); with
    --strict-floors a flagged cell fails the run (exit status 1; the terminal summary names it)."""
    checked = checked_cells(timed)
    for cell, check in checked:
        cell.extra_info["floor_ratio"] = check.ratio  # the Metadata's own extra_info dict, saved as is
    if (
        session.config.getoption("strict_floors")
        and any(check.implausible for _, check in checked)
        and session.exitstatus == pytest.ExitCode.OK
    ):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def summary(terminalreporter, config: pytest.Config, timed: Sequence) -> None:
    """Name every cell that beat its floor beyond noise: a bug until explained."""
    flagged = [describe_implausible(cell, check) for cell, check in checked_cells(timed) if check.implausible]
    if flagged:
        strict = config.getoption("strict_floors")
        title = "FAILED (--strict-floors): " if strict else ""
        terminalreporter.section(
            f"image-storage: {title}implausible cells (faster than their floor)", sep="-", red=True, bold=True
        )
        for line in flagged:
            terminalreporter.write_line(("FAILED " if strict else "") + line)
        terminalreporter.write_line(
            "a cell below its floor did not do the work, or the floor is wrong: a bug until explained"
        )
