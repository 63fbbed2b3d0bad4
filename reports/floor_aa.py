"""A/A check of the floor flag: the same floor cells from several runs, each pair judged as cell against floor.

``python -m reports.floor_aa RUN [RUN ...]`` (runs of ``pytest benchmarks/test_floors.py``, the same options each):
each floor cell timed twice in a row (``-p tests.floor_twice``) is checked against its other timing as if it were its
floor, both ways, by the flag's rule (reports.floors.FloorCheck.implausible); runs with one timing of each are paired
run against run instead. Any flag is a false
alarm: nothing differs but the moment. It prints the tries, the flags (each named) and, for comparison, how many the
earlier rule (median below the floor's by more than the floor's interquartile range) would have raised. Exit status
1 when the rule flagged any pair.
"""
from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator, Sequence

from reports.floors import FloorCheck, is_floor
from reports.load import Cell, load_run


def pair(cell: Cell, floor: Cell) -> FloorCheck:
    """``cell`` judged against ``floor`` as the suite judges a cell against its floor."""
    return FloorCheck(floor=floor.method, median=cell.stats["median"], floor_seconds=floor.stats["median"],
                      q3=cell.stats["q3"], floor_q1=floor.stats["q1"])


def earlier_rule(cell: Cell, floor: Cell) -> bool:
    """The rule before issue 23: median below the floor's by more than the floor's interquartile range."""
    return floor.stats["median"] - cell.stats["median"] > floor.stats["q3"] - floor.stats["q1"]


def pairs(runs: Sequence[list[Cell]]) -> Iterator[tuple[str, Cell, Cell]]:
    """(where, cell, floor) of every A/A pair: the two timings of a floor cell within one run (``-p
    tests.floor_twice``), both ways; with one timing per run, every ordered pair of runs."""
    twice = any(len(group) > 1 for cells in runs for group in _by_key(cells).values())
    if twice:
        for index, cells in enumerate(runs):
            for group in _by_key(cells).values():
                for cell, floor in itertools.permutations(group[:2], 2):
                    yield f"run {index}", cell, floor
        return
    for (first, a), (second, b) in itertools.permutations(enumerate(map(_by_key, runs)), 2):
        for key in a.keys() & b.keys():
            yield f"runs {first}/{second}", a[key][0], b[key][0]


def _by_key(cells: list[Cell]) -> dict[tuple, list[Cell]]:
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        if is_floor(cell):
            groups.setdefault(cell.key, []).append(cell)
    return groups


def main(argv: Sequence[str] | None = None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: python -m reports.floor_aa RUN [RUN ...]", file=sys.stderr)
        return 2
    tries = earlier = 0
    flagged: list[str] = []
    for where, cell, floor in pairs([list(load_run(path).cells) for path in paths]):
        tries += 1
        earlier += earlier_rule(cell, floor)
        check = pair(cell, floor)
        if check.implausible:
            flagged.append(f"{cell.method} n={cell.n_images} ({where}): {check.median:.3g} s (q3 {check.q3:.3g}) against "
                           f"{check.floor_seconds:.3g} s (q1 {check.floor_q1:.3g})")
    print(f"{len(paths)} runs, {tries} A/A pairs: {len(flagged)} flagged by the rule, {earlier} by the earlier rule "
          "(median below the floor's by more than its IQR)")
    for line in flagged:
        print("  " + line)
    return 1 if flagged else 0


if __name__ == "__main__":
    raise SystemExit(main())
