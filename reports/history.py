"""`python -m reports history RUNS... --out DIR`: every cell over the commits of many saved runs, with its steps.

Runs are grouped by commit (several runs of one commit are replicates) and the commits ordered by commit time.
For every cell (the identity `reports compare` uses: Cell.key) a series holds one point per commit that ran it,
in two modes: "raw" (median seconds) and "floor" (median over the cell's floor in the same run, reports.floors).
reports.changepoints finds the steps, reports.history_output writes history.json and history.md, reports.html
the pages; the report of the newest commit's runs (report.md and report.html) is written beside them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from reports.compare_output import label
from reports.floors import floor_checks
from reports.results import Cell, CellKey, ReportInputError, Run, load_run, resolve_inputs

PROG = "python -m reports history"
MODES = ("raw", "floor")  # raw median seconds; median over the cell's floor in the same run


@dataclass(frozen=True)
class Commit:
    """One commit of the history and its runs (replicates), oldest run first."""

    id: str
    time: datetime
    dirty: bool
    runs: tuple[Run, ...]

    @property
    def short(self) -> str:
        return self.id[:7] + ("+" if self.dirty else "")


@dataclass(frozen=True)
class Point:
    """One cell at one commit: the median of its runs' values (robust to one odd run of three), their min..max, and
    each run's value."""

    commit: int  # index into History.commits
    value: float
    lo: float
    hi: float
    runs: tuple[float, ...]


@dataclass(frozen=True)
class CellSeries:
    """One cell over the history; points[mode] is empty in "floor" mode when the cell has no floor."""

    key: CellKey
    label: str
    operation: str
    method: str
    n_images: int
    image_shape: tuple[int, ...]
    variant: str
    points: dict[str, tuple[Point, ...]]


@dataclass(frozen=True)
class History:
    commits: tuple[Commit, ...]
    cells: tuple[CellSeries, ...]


def group_commits(runs: Sequence[Run]) -> tuple[Commit, ...]:
    """Runs grouped by commit (id and dirty flag; a run without a commit id stands alone), ordered by commit time
    (commit_info.time, else the first run's datetime), then by first run."""
    groups: dict[tuple[str, bool], list[Run]] = {}
    for run in sorted(runs, key=lambda run: (run.started, str(run.path))):
        commit_id = str(run.commit_info.get("id") or f"unknown:{run.path}")
        groups.setdefault((commit_id, bool(run.commit_info.get("dirty"))), []).append(run)
    commits = [
        Commit(commit_id, _commit_time(group), dirty, tuple(group)) for (commit_id, dirty), group in groups.items()
    ]
    return tuple(sorted(commits, key=lambda commit: (commit.time, commit.runs[0].started)))


def _commit_time(runs: Sequence[Run]) -> datetime:
    """commit_info.time (naive times taken as UTC, as Run.started does), else the first run's start."""
    try:
        parsed = datetime.fromisoformat(str(runs[0].commit_info["time"]))
    except (KeyError, ValueError):
        return runs[0].started
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _point(commit: int, values: Sequence[float]) -> Point:
    return Point(commit, statistics.median(values), min(values), max(values), tuple(values))


def build_history(runs: Sequence[Run]) -> History:
    """Every cell's series over the commits of ``runs``, raw and over its floor."""
    commits = group_commits(runs)
    values: dict[CellKey, dict[str, dict[int, list[float]]]] = {}
    first: dict[CellKey, Cell] = {}
    for index, commit in enumerate(commits):
        for run in commit.runs:
            checks = floor_checks(run.cells)
            for cell in run.cells:
                first.setdefault(cell.key, cell)
                modes = values.setdefault(cell.key, {mode: {} for mode in MODES})
                modes["raw"].setdefault(index, []).append(cell.stats["median"])
                if cell.key in checks:
                    modes["floor"].setdefault(index, []).append(checks[cell.key].ratio)
    cells = [
        CellSeries(
            key,
            label(key),
            cell.operation,
            cell.method,
            cell.n_images,
            cell.image_shape,
            cell.variant,
            {mode: tuple(_point(index, found) for index, found in sorted(values[key][mode].items())) for mode in MODES},
        )
        for key, cell in first.items()
    ]
    cells.sort(key=lambda cell: (cell.operation, cell.method, cell.image_shape, cell.n_images, cell.variant))
    return History(commits, tuple(cells))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Every cell over the commits of many runs (several runs of one commit are replicates), the steps "
        "found in each series, and history.json, history.md, history.html plus the newest commit's report.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="RUN",
        help="pytest-benchmark JSON file, directory (all *.json in it), glob, or run id such as 0003",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("reports/history"), help="folder to write into (default: %(default)s)"
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.01,
        help="significance level of each split's permutation test; the step's CI is at 1 - alpha "
        "(default: %(default)s, at most 1 false step per 100 cell-histories, docs/ci.md)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.05,
        help="smallest step reported, as a fraction (default: %(default)s = 5%%, as compare's)",
    )
    parser.add_argument(
        "--normalise",
        choices=("none", "floor"),
        default="none",
        help="steps listed in history.md and the page's first view: raw times or times over floors",
    )
    parser.add_argument("--permutations", type=int, default=999, help="permutations per test (default: %(default)s)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the permutations; same inputs and seed, same output"
    )
    parser.add_argument(
        "--benchmarks-dir",
        type=Path,
        default=Path(".benchmarks"),
        help="where run ids are looked up (default: %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Write the history; returns 0, or 2 on bad input (one line on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from reports import changepoints, history_output, html
    except ImportError as err:
        print(f"{PROG}: error: {err.name} is missing: pip install 'image-storage-bench[history]'", file=sys.stderr)
        return 2
    from reports.cli import main as report_main

    if not 0 < args.alpha < 1 or args.threshold <= 0 or args.permutations < 19:
        parser.error("need 0 < --alpha < 1, --threshold > 0 and --permutations >= 19")
    try:
        runs = [load_run(path) for path in resolve_inputs(args.inputs, args.benchmarks_dir)]
    except ReportInputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    history = build_history(runs)
    steps = changepoints.find_steps(
        history, alpha=args.alpha, threshold=args.threshold, permutations=args.permutations, seed=args.seed
    )
    document = history_output.to_json(history, steps, vars(args))
    mode = "floor" if args.normalise == "floor" else "raw"
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        history_output.write(document, mode, args.out)
        (args.out / "history.html").write_text(html.history_page(document, mode), encoding="utf-8")
    except OSError as err:
        print(f"{PROG}: error: cannot write to {args.out}: {err.strerror or err}", file=sys.stderr)
        return 2
    newest = history.commits[-1]
    print(
        f"{len(history.commits)} commits, {len(runs)} runs, {len(history.cells)} cells; "
        f"{sum(len(found) for found in steps[mode].values())} steps ({mode}) in {args.out / 'history.md'}"
    )
    return report_main([str(run.path) for run in newest.runs] + ["--out", str(args.out)])
