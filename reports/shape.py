"""Turn loaded runs into what the charts and tables need: series, disk stacks, ratios, gaps.

Nothing here reads files or draws; every function takes Runs (or shaped data) and returns plain
values, so the shaping can be tested with numbers alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from reports.floors import floor_checks, is_floor
from reports.results import OPERATIONS, PEER_OPERATIONS, Cell, CellKey, Run

SINGLE_OPERATIONS = ("store_single", "read_single")
MANY_OPERATIONS = ("store_many", "read_many")
SPREADS = {"iqr": ("q1", "q3"), "range": ("min", "max")}
DISK_KINDS = ("allocated", "apparent")


@dataclass(frozen=True)
class Series:
    """Median seconds per round of one operation by one method in one run, against image count."""

    run_index: int
    name: str  # the method, plus the image shape when runs mix shapes
    operation: str
    x: tuple[int, ...]
    y: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]


@dataclass(frozen=True)
class FloorSeries:
    """ours/floor of one operation by one method in one run, against image count (cells whose floor ran)."""

    run_index: int
    name: str
    operation: str
    x: tuple[int, ...]
    ratio: tuple[float, ...]


@dataclass(frozen=True)
class DiskStack:
    """Store size after store_many at each cutoff, for one method in one run."""

    run_index: int
    name: str
    cutoffs: tuple[int, ...]
    segments: tuple[int, ...]  # bytes on disk for each cutoff's store

    @property
    def tops(self) -> tuple[int, ...]:
        """Running total: where each segment ends when all are stacked."""
        return tuple(accumulate(self.segments))

    @property
    def bottoms(self) -> tuple[int, ...]:
        """Running total before each segment: where it starts."""
        return (0, *self.tops[:-1])

    @property
    def per_image(self) -> tuple[float, ...]:
        return tuple(size / cutoff for size, cutoff in zip(self.segments, self.cutoffs))


@dataclass(frozen=True)
class Shaped:
    """Everything the charts and report.md draw, computed once from the runs."""

    runs: tuple[Run, ...]
    labels: tuple[str, ...]
    names: tuple[str, ...]  # series names in colour order
    spread: str
    disk_kind: str
    series: tuple[Series, ...]
    disk: tuple[DiskStack, ...]
    missing: tuple[tuple[tuple[str, str, int], ...], ...]  # per run: (operation, method, n_images)
    floor_series: tuple[FloorSeries, ...] = ()

    def of(self, *operations: str) -> list[Series]:
        return [series for series in self.series if series.operation in operations]

    @property
    def floor_names(self) -> tuple[str, ...]:
        """Names of the ours/floor series, in colour order (variant cells have their own)."""
        return tuple(sorted({series.name for series in self.floor_series}))

    @property
    def floor_operations(self) -> list[str]:
        """Operations with at least one ours/floor ratio, in the suite's order."""
        return [
            operation for operation in OPERATIONS if any(series.operation == operation for series in self.floor_series)
        ]


def unique_labels(runs: Sequence[Run]) -> tuple[str, ...]:
    """Run labels, with " (2)", " (3)"... appended where two runs would otherwise read the same."""
    seen: dict[str, int] = defaultdict(int)
    labels = []
    for run in runs:
        seen[run.label] += 1
        labels.append(run.label if seen[run.label] == 1 else f"{run.label} ({seen[run.label]})")
    return tuple(labels)


def _series_name(cell: Cell, mixed_shapes: bool) -> str:
    """The method, plus the image shape when runs mix shapes, plus the variant (batch size, workers, cache) if any."""
    parts = [cell.method, "x".join(map(str, cell.image_shape)) if mixed_shapes else "", cell.variant]
    return " ".join(part for part in parts if part)


def method_cells(run: Run) -> list[Cell]:
    """The cells of the storage methods, without the floor cells."""
    return [cell for cell in run.cells if not is_floor(cell)]


def missing_cells(runs: Sequence[Run]) -> tuple[tuple[tuple[str, str, int], ...], ...]:
    """Per run, the (operation, method, n_images) it lacks from the full grid.

    The grid is, per operation of the tutorial's four, every method seen in any run x every image count that
    operation has in any run (store_single's is 1; the others' are the cutoffs, read_single's 1 in older runs).
    """
    methods = sorted(
        {cell.method for run in runs for cell in method_cells(run) if cell.operation not in PEER_OPERATIONS}
    )
    grid = []
    for operation in (*SINGLE_OPERATIONS, *MANY_OPERATIONS):
        counts = sorted({cell.n_images for run in runs for cell in run.cells if cell.operation == operation})
        grid += [(operation, method, count) for method in methods for count in counts]
    present = [{(cell.operation, cell.method, cell.n_images) for cell in method_cells(run)} for run in runs]
    return tuple(tuple(slot for slot in grid if slot not in cells) for cells in present)


def describe_missing(missing: Sequence[tuple[str, str, int]]) -> str:
    """One line such as "store_many lmdb at 10000, 100000 images; read_single hdf5 at 1 image"."""
    grouped: dict[tuple[str, str], list[int]] = defaultdict(list)
    for operation, method, count in missing:
        grouped[operation, method].append(count)
    return "; ".join(
        f"{operation} {method} at {', '.join(map(str, counts))} image{'s' if counts != [1] else ''}"
        for (operation, method), counts in grouped.items()
    )


def shape(runs: Sequence[Run], spread: str = "iqr", disk_kind: str = "allocated") -> Shaped:
    """Series of every (run, method, operation), disk stacks of every (run, method) and ours/floor ratios.

    Floor cells are left out of the series: they appear through the ratios of the cells they bound.
    """
    low_stat, high_stat = SPREADS[spread]
    mixed_shapes = len({cell.image_shape for run in runs for cell in run.cells}) > 1
    groups: dict[tuple[int, str, str], list[Cell]] = defaultdict(list)
    for run_index, run in enumerate(runs):
        for cell in method_cells(run):
            groups[run_index, _series_name(cell, mixed_shapes), cell.operation].append(cell)
    checks = [floor_checks(run.cells) for run in runs]
    series, disk, floor_series = [], [], []
    for (run_index, name, operation), cells in sorted(
        groups.items(), key=lambda item: (item[0][0], item[0][1], OPERATIONS.index(item[0][2]))
    ):
        cells.sort(key=lambda cell: cell.n_images)
        checked = [
            (cell.n_images, checks[run_index][cell.key].ratio) for cell in cells if cell.key in checks[run_index]
        ]
        if checked:
            floor_series.append(FloorSeries(run_index, name, operation, *map(tuple, zip(*checked))))
        if cells[0].variant:  # read_random and the like: charted by reports.training, not against image count here
            continue
        series.append(
            Series(
                run_index=run_index,
                name=name,
                operation=operation,
                x=tuple(cell.n_images for cell in cells),
                y=tuple(cell.stats["median"] for cell in cells),
                lo=tuple(cell.stats[low_stat] for cell in cells),
                hi=tuple(cell.stats[high_stat] for cell in cells),
            )
        )
        measured = [cell for cell in cells if f"{disk_kind}_bytes" in cell.extra_info.get("disk_usage", {})]
        if operation == "store_many" and measured:
            disk.append(
                DiskStack(
                    run_index=run_index,
                    name=name,
                    cutoffs=tuple(cell.n_images for cell in measured),
                    segments=tuple(int(cell.extra_info["disk_usage"][f"{disk_kind}_bytes"]) for cell in measured),
                )
            )
    return Shaped(
        runs=tuple(runs),
        labels=unique_labels(runs),
        names=tuple(sorted({series.name for series in series})),
        spread=spread,
        disk_kind=disk_kind,
        series=tuple(series),
        disk=tuple(disk),
        missing=missing_cells(runs),
        floor_series=tuple(floor_series),
    )


def cells_by_key(run: Run) -> dict[CellKey, Cell]:
    return {cell.key: cell for cell in run.cells}


def speedups(run: Run) -> dict[CellKey, float]:
    """Per method cell, how many times faster it is than the slowest method at the same operation, size and variant."""
    slowest: dict[tuple, float] = defaultdict(float)
    cells = method_cells(run)
    for cell in cells:
        slot = (cell.operation, cell.n_images, cell.image_shape, cell.variant)
        slowest[slot] = max(slowest[slot], cell.stats["median"])
    return {
        cell.key: slowest[cell.operation, cell.n_images, cell.image_shape, cell.variant] / cell.stats["median"]
        for cell in cells
    }


def ratios(base: Run, other: Run) -> dict[CellKey, float]:
    """Per cell the two runs share: other's median / base's median (above 1 means other is slower)."""
    base_cells = cells_by_key(base)
    return {
        key: cell.stats["median"] / base_cells[key].stats["median"]
        for key, cell in cells_by_key(other).items()
        if key in base_cells
    }
