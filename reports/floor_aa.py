"""A/A check of the floor flag: the same floor cells from several runs, each pair judged as cell against floor.

``python -m reports.floor_aa RUN RUN [RUN ...]`` (runs of ``pytest benchmarks/test_floors.py``, the same options each):
for every ordered pair of different runs and every floor cell both hold, the first run's cell is checked against the
second's as if it were its floor, by the flag's rule (reports.floors.FloorCheck.implausible). Any flag is a false
alarm: nothing differs but the moment. It prints the tries, the flags (each named) and, for comparison, how many the
earlier rule (median below the floor's by more than the floor's interquartile range) would have raised. Exit status
1 when the rule flagged any pair.
"""
from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence

from reports.floors import FloorCheck, is_floor
from reports.load import Cell, load_run


def pair(cell: Cell, floor: Cell) -> FloorCheck:
    """``cell`` judged against ``floor`` as the suite judges a cell against its floor."""
    return FloorCheck(floor=floor.method, median=cell.stats["median"], floor_seconds=floor.stats["median"],
                      q3=cell.stats["q3"], floor_q1=floor.stats["q1"])


def earlier_rule(cell: Cell, floor: Cell) -> bool:
    """The rule before issue 23: median below the floor's by more than the floor's interquartile range."""
    return floor.stats["median"] - cell.stats["median"] > floor.stats["q3"] - floor.stats["q1"]


def main(argv: Sequence[str] | None = None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    if len(paths) < 2:
        print("usage: python -m reports.floor_aa RUN RUN [RUN ...]", file=sys.stderr)
        return 2
    runs = [{cell.key: cell for cell in load_run(path).cells if is_floor(cell)} for path in paths]
    tries = earlier = 0
    flagged: list[str] = []
    for (first, a), (second, b) in itertools.permutations(enumerate(runs), 2):
        for key in a.keys() & b.keys():
            tries += 1
            earlier += earlier_rule(a[key], b[key])
            check = pair(a[key], b[key])
            if check.implausible:
                flagged.append(f"{key[1]} n={key[2]}: run {first} {check.median:.3g} s (q3 {check.q3:.3g}) against run "
                               f"{second} {check.floor_seconds:.3g} s (q1 {check.floor_q1:.3g})")
    print(f"{len(paths)} runs, {tries} A/A pairs: {len(flagged)} flagged by the rule, {earlier} by the earlier rule "
          "(median below the floor's by more than its IQR)")
    for line in flagged:
        print("  " + line)
    return 1 if flagged else 0


if __name__ == "__main__":
    raise SystemExit(main())
