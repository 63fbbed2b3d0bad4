"""Each cell against its floor measured in the same run: ours/floor, and whether the cell beat the floor implausibly.

A cell names its floor in ``extra_info.floor`` (floor names joined by ``+``, e.g. ``png-files-read+png-decode``) and
the image count the floor ran at in ``extra_info.floor_n_images``; the floor cells are this run's cells of method
``floor-<name>`` at that count and image shape (and the cell's ``batch_size``, where the floor has one). The
floor's time is the sum of their medians or, where the suite also interleaved rounds of those floors with the
cell's (``extra_info.floor_interleaved``, benchmarks/interleave.py) so that a floor and its cell are timed at the
same moments, the smaller of that and the interleaved rounds' median (likewise the first quartile); it is divided
by the cell's ``workers`` (perfect scaling: a lower bound for a parallel cell). A cell is implausible (flagged) only
when it beat its floor beyond noise, by all of:

* whole distributions apart: the cell's third quartile below the floor's first (the sum of the floor cells' first
  quartiles, which is below the first quartile of the sum, or the interleaved rounds' if smaller);
* a margin: the cell's median at least FLAG_MARGIN below the floor's;
* with interleaved rounds, round by round too: in three of four pairs (the third quartile of the ratios cell round
  over the floor round just before it, times ``workers``) the cell at least FLAG_MARGIN below;
* with fewer than PAIRED_ROUNDS_ALONE such pairs (a slow cell run with ``--benchmark-min-rounds 2``), less work too:
  the cell's CPU per round (``cpu_s``, its worker processes included) at least CPU_MARGIN below its floor's, where
  the floor's is at least MIN_CPU_S. On a loaded machine two rounds cannot tell a cell from its floor by wall time: the
  same JPEG decode loop, timed A/A in adjacent rounds at load 8-11, came out 0.51x of itself, while its CPU time
  varied by about a fifth (docs/benchmarks.md, "Codecs and image sizes").

A floor timed against itself (A/A: the same floor from two runs, as cell and as floor) must not be flagged; how often
it is, at the smoke pass's round counts and the default run's, is measured in docs/ci.md ("Floor flags").

Used by the suite at the end of a run (extra_info.floor_ratio, the terminal summary, ``--strict-floors``) and by the
reports, which recompute from the cells so that a run edited by hand is judged on its numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from reports.results import FLOOR_PREFIX, Cell
from reports.units import format_seconds

FLAG_MARGIN = 0.10  # a flagged cell's median is at least this far below its floor's
PAIRED_ROUNDS_ALONE = 5  # interleaved pairs from which the round-by-round test stands without the CPU test
CPU_MARGIN = 1 / 3  # a flagged cell with fewer pairs used at most 2/3 of its floor's CPU time per round
MIN_CPU_S = 0.02  # a floor's CPU per round below this is not compared (a worker's CPU is read in 10 ms ticks)


@dataclass(frozen=True)
class FloorCheck:
    """A cell beside its floor: seconds per round of both (the cell's median and third quartile, the floor's median
    and first quartile), in the same scale."""

    floor: str
    median: float
    floor_seconds: float
    q3: float
    floor_q1: float
    paired_q3: float | None = None  # interleaved rounds: the third quartile of cell round / floor round just before it
    pairs: int = 0  # how many interleaved pairs ``paired_q3`` comes from
    cpu: float | None = None  # the cell's CPU seconds per round, its workers included
    floor_cpu: float | None = None  # the floor cells' CPU seconds per round, summed (not divided by workers)

    @property
    def ratio(self) -> float:
        """ours / floor: 1.0 is at the floor, 2.0 twice as slow as the hardware or library alone."""
        return self.median / self.floor_seconds

    @property
    def cpu_compared(self) -> bool:
        """Whether the flag also asks for less CPU work: too few interleaved pairs, and CPU measured on both sides."""
        return (
            self.pairs < PAIRED_ROUNDS_ALONE
            and self.cpu is not None
            and self.floor_cpu is not None
            and self.floor_cpu >= MIN_CPU_S
        )

    @property
    def implausible(self) -> bool:
        apart = self.q3 < self.floor_q1 and self.median < (1 - FLAG_MARGIN) * self.floor_seconds
        paired = self.paired_q3 is None or self.paired_q3 < 1 - FLAG_MARGIN
        less_work = not self.cpu_compared or self.cpu < (1 - CPU_MARGIN) * self.floor_cpu
        return apart and paired and less_work


def is_floor(cell: Cell) -> bool:
    return cell.method.startswith(FLOOR_PREFIX)


def floor_index(cells: Iterable[Cell]) -> dict[tuple, Cell]:
    """The floor cells of one run by (method, n_images, image_shape, batch_size), for floor_cells."""
    return {
        (cell.method, cell.n_images, cell.image_shape, cell.extra_info.get("batch_size")): cell
        for cell in cells
        if is_floor(cell)
    }


def floor_cells(cell: Cell, index: Mapping[tuple, Cell]) -> tuple[Cell, ...] | None:
    """The floor cells of ``cell`` in a run indexed by ``floor_index``, or None when it has no floor or one is
    missing."""
    names = cell.extra_info.get("floor")
    if not names:
        return None
    count = int(cell.extra_info.get("floor_n_images", cell.n_images))
    batch = cell.extra_info.get("batch_size")
    found = []
    for name in str(names).split("+"):
        method = FLOOR_PREFIX + name
        floor = index.get((method, count, cell.image_shape, batch)) or index.get(
            (method, count, cell.image_shape, None)
        )
        if floor is None:
            return None
        found.append(floor)
    return tuple(found)


def divisor(cell: Cell) -> int:
    """How many workers share a cell's work; its floor is divided by it."""
    return max(1, int(cell.extra_info.get("workers", 1) or 1))


def check(cell: Cell, floors: Sequence[Cell]) -> FloorCheck:
    """The cell beside its floor: the floor cells' own rounds and, where the cell has them, the floor rounds
    interleaved with its own (extra_info.floor_interleaved); of the two timings of the floor, the faster (a floor
    is the least work: what slowed one timing of it was not the floor), so a flag needs the cell below both."""
    scale = divisor(cell)
    median, q1 = (sum(floor.stats[name] for floor in floors) for name in ("median", "q1"))
    interleaved = cell.extra_info.get("floor_interleaved")
    if interleaved:
        median, q1 = min(median, interleaved["median"]), min(q1, interleaved["q1"])
    paired = interleaved.get("ratio_q3") if interleaved else None
    cpus = [floor.extra_info.get("cpu_s") for floor in floors]
    return FloorCheck(
        floor=str(cell.extra_info["floor"]),
        median=cell.stats["median"],
        floor_seconds=median / scale,
        q3=cell.stats["q3"],
        floor_q1=q1 / scale,
        paired_q3=None if paired is None else paired * scale,
        pairs=int(interleaved.get("rounds", 0)) if interleaved else 0,
        cpu=cell.extra_info.get("cpu_s"),
        floor_cpu=None if None in cpus else sum(cpus),
    )


def floor_checks(cells: Sequence[Cell]) -> dict[tuple, FloorCheck]:
    """Per cell key, the cell beside its floor, for every cell whose floor ran in the same run."""
    index = floor_index(cells)
    checks = {}
    for cell in cells:
        floors = floor_cells(cell, index)
        if floors:
            checks[cell.key] = check(cell, floors)
    return checks


def describe_implausible(cell: Cell, result: FloorCheck) -> str:
    """One line naming an implausible cell, its time, its floor and how far apart their distributions are."""
    return (
        f"{cell.operation} {cell.method} n={cell.n_images}{' ' + cell.variant if cell.variant else ''}: "
        f"{format_seconds(cell.stats['median'])} is {1 / result.ratio:.3g}x faster than its floor {result.floor} "
        f"({format_seconds(result.floor_seconds)}; the cell's q3 {format_seconds(result.q3)} is below the floor's "
        f"q1 {format_seconds(result.floor_q1)}"
        + (
            f"; its CPU {format_seconds(result.cpu)} a round against the floor's {format_seconds(result.floor_cpu)})"
            if result.cpu_compared
            else ")"
        )
    )
