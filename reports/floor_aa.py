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
import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from reports.floors import FloorCheck, is_floor
from reports.results import Cell, Run, load_run


def pair(cell: Cell, floor: Cell) -> FloorCheck:
    """``cell`` judged against ``floor`` as the suite judges a cell against its floor."""
    return FloorCheck(
        floor=floor.method,
        median=cell.stats["median"],
        floor_seconds=floor.stats["median"],
        q3=cell.stats["q3"],
        floor_q1=floor.stats["q1"],
    )


def earlier_rule(cell: Cell, floor: Cell) -> bool:
    """The rule before issue 23: median below the floor's by more than the floor's interquartile range."""
    return floor.stats["median"] - cell.stats["median"] > floor.stats["q3"] - floor.stats["q1"]


def halves(path: str) -> list[Run] | None:
    """The two timings of a run made with ``-p tests.floor_twice`` as two runs (ids ``...-a]`` and ``...-b]``), or
    None for a run that timed each floor once."""
    document = json.loads(Path(path).read_text())
    parts = {
        suffix: [bench for bench in document["benchmarks"] if bench["name"].endswith(f"-{suffix}]")] for suffix in "ab"
    }
    if not parts["b"]:
        return None
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for suffix, benches in parts.items():
            half = Path(folder) / f"{suffix}.json"
            half.write_text(json.dumps({**document, "benchmarks": benches}))
            runs.append(load_run(half))
    return runs


def pairs(paths: Sequence[str]) -> Iterator[tuple[str, Cell, Cell]]:
    """(where, cell, floor) of every A/A pair: the two timings of a floor cell within one run (``-p
    tests.floor_twice``), both ways; with one timing per run, every ordered pair of runs."""
    split = [halves(path) for path in paths]
    groups = [(f"run {index}", runs) for index, runs in enumerate(split) if runs]
    if not groups:
        groups = [("runs", [load_run(path) for path in paths])]
    for where, runs in groups:
        cells = [{cell.key: cell for cell in run.cells if is_floor(cell)} for run in runs]
        for (first, a), (second, b) in itertools.permutations(enumerate(cells), 2):
            for key in a.keys() & b.keys():
                yield f"{where} {first}/{second}", a[key], b[key]


def judge(pairs_: Iterator[tuple[str, Cell, Cell]], interleaved: bool) -> tuple[int, int, list[str]]:
    """(tries, flags by the earlier rule, the rule's flags described) over ``pairs_``; ``interleaved``: judge each
    cell against the rounds of its twin interleaved with its own (extra_info.floor_interleaved) instead."""
    tries = earlier = 0
    flagged: list[str] = []
    for where, cell, floor in pairs_:
        inter = cell.extra_info.get("floor_interleaved")
        if interleaved and not inter:
            continue
        tries += 1
        earlier += earlier_rule(cell, floor)
        check = (
            FloorCheck(
                cell.method, cell.stats["median"], inter["median"], cell.stats["q3"], inter["q1"], inter.get("ratio_q3")
            )
            if interleaved
            else pair(cell, floor)
        )
        if check.implausible:
            flagged.append(
                f"{cell.method} n={cell.n_images} ({where}): {check.median:.3g} s (q3 {check.q3:.3g}) "
                f"against {check.floor_seconds:.3g} s (q1 {check.floor_q1:.3g})"
            )
    return tries, earlier, flagged


def main(argv: Sequence[str] | None = None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: python -m reports.floor_aa RUN [RUN ...]", file=sys.stderr)
        return 2
    failed = False
    twice = any(halves(path) for path in paths)
    for title, interleaved in (("timed apart", False), *((("interleaved", True),) if twice else ())):
        tries, earlier, flagged = judge(pairs(paths), interleaved)
        if not tries:
            continue
        print(
            f"{title}: {tries} A/A pairs from {len(paths)} runs: {len(flagged)} flagged by the rule"
            + (
                ""
                if interleaved
                else f", {earlier} by the earlier rule (median below the floor's by more than its IQR)"
            )
        )
        for line in flagged:
            print("  " + line)
        failed = failed or bool(flagged)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
