"""`python -m reports compare BASE HEAD`: which cells got slower, with statistics fit for a CI gate.

BASE and HEAD each name one run or several (a directory or a glob). Every cell present in all runs is compared:
with one run per side through its raw per-round timings, with several through the spread between runs, which also
covers drift from one run to the next (reports.stats explains both). Exit status: 1 when any cell is slower,
0 otherwise, 2 on bad input (one line on stderr). Runs from different machines are refused unless --cross-machine,
which compares each method's time relative to a reference method measured in the same run, because ratios survive
a change of machine and absolute times do not. --normalise floor compares each cell's time over its floor's time
in the same run (reports.floors), so that drift of the whole machine between runs cancels.

Cells pair only when their identity (reports.results.cell_identity: operation, method, image count, shape, dtype,
dataset, durable, launcher, codec, cache, batch size, workers) is the same; a cell whose counterpart on the other
side differs in any of them is not compared, and the notes list the difference ("durable: False != True").
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reports import compare_output as output
from reports.compare_output import Comparison, Mode, label, runs_are_replicates
from reports.floors import divisor, floor_cells, floor_index, is_floor
from reports.results import (
    Cell,
    CellKey,
    ReportInputError,
    Run,
    cell_identity,  # noqa: F401  (the one identity of a cell, also imported from here)
    identity_differences,
    load_run,
    resolve_inputs,
)
from reports.stats import Correction, RatioEstimate, judge_family, ratio_between_runs, ratio_of_medians
from storage_impls.registry import REFERENCE_METHOD

PROG = "python -m reports compare"
FINGERPRINT_FIELDS = ("cpu.brand_raw", "cpu.count", "system", "release", "storage.filesystem")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compare BASE and HEAD (one or several benchmark runs each) cell by cell; "
        "exit 1 when any cell is slower, 2 on bad input.",
    )
    parser.add_argument(
        "base",
        help="the earlier run(s): pytest-benchmark JSON file, run id such as 0003, "
        "or a directory or glob naming several runs of the same code",
    )
    parser.add_argument("head", help="the run(s) to check, same forms as BASE")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.05,
        help="practical change that counts, as a fraction (default: %(default)s = 5%%)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        help="significance level after correcting for the number of cells (default: %(default)s)",
    )
    parser.add_argument(
        "--correction",
        choices=("bh", "holm"),
        default="bh",
        help="multiple-comparison correction: Benjamini-Hochberg or Holm (default: %(default)s)",
    )
    parser.add_argument(
        "--min-rounds",
        type=int,
        default=5,
        help="cells with fewer rounds in any run are inconclusive (default: %(default)s)",
    )
    parser.add_argument(
        "--normalise",
        choices=("none", "floor"),
        default="none",
        help="floor: compare each cell's time over its floor's time in the same run, so that drift of "
        "the whole machine cancels (floor cells themselves are not compared); default: %(default)s",
    )
    parser.add_argument(
        "--cross-machine",
        action="store_true",
        help="allow runs from different machines: compare each method relative to --reference-method "
        "(or to its floor with --normalise floor)",
    )
    parser.add_argument(
        "--reference-method",
        default=REFERENCE_METHOD,
        help="method the others are divided by with --cross-machine (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the bootstrap used with one run per side; same inputs and seed, same output",
    )
    parser.add_argument("--out", type=Path, help="also write compare.md and compare.json into this folder")
    parser.add_argument(
        "--benchmarks-dir",
        type=Path,
        default=Path(".benchmarks"),
        help="where run ids are looked up (default: %(default)s)",
    )
    return parser


def load_sides(
    base_text: str, head_text: str, benchmarks_dir: Path, cross_machine: bool
) -> tuple[list[Run], list[Run]]:
    """The runs BASE and HEAD name, checked: no run on both sides, one run each or at least two each, and (unless
    cross_machine) every run on the machine of the first base run."""
    paths = [resolve_inputs([text], benchmarks_dir) for text in (base_text, head_text)]
    shared = {path.resolve() for path in paths[0]} & {path.resolve() for path in paths[1]}
    if shared:
        raise ReportInputError(head_text, f"names the same run as BASE: {', '.join(sorted(map(str, shared)))}")
    if len(paths[0]) != len(paths[1]) and min(map(len, paths)) < 2:
        raise ReportInputError(
            head_text,
            f"BASE names {len(paths[0])} run(s) and HEAD {len(paths[1])}: give one run "
            "per side, or at least two per side so that both sides show their spread",
        )
    base, head = ([load_run(path) for path in side] for side in paths)
    odd = next((run for run in head + base if _fingerprint(run) != _fingerprint(base[0])), None)
    if odd is not None and not cross_machine:
        raise ReportInputError(
            odd.path,
            f"not the machine of {base[0].path} ({'; '.join(fingerprint_differences([base[0], odd]))}); "
            f"pass --cross-machine to compare ratios to --reference-method instead",
        )
    return base, head


def _field(info: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        info = info.get(part) if isinstance(info, Mapping) else None
    return info


def _fingerprint(run: Run) -> tuple[str, ...]:
    return tuple(repr(_field(run.machine_info, field)) for field in FINGERPRINT_FIELDS)


def fingerprint_differences(runs: Sequence[Run]) -> list[str]:
    """Machine fingerprint fields on which the runs disagree, as "field: value != other value"."""
    values = [list(dict.fromkeys(column)) for column in zip(*map(_fingerprint, runs))]
    return [
        f"{field}: {' != '.join(distinct)}" for field, distinct in zip(FINGERPRINT_FIELDS, values) if len(distinct) > 1
    ]


def library_differences(base: Sequence[Run], head: Sequence[Run]) -> list[str]:
    """Library versions (machine_info.libraries) that differ between the sides, as "name: base -> head"."""

    def versions(runs: Sequence[Run], name: str) -> str:
        found = dict.fromkeys(str((run.machine_info.get("libraries") or {}).get(name, "missing")) for run in runs)
        return "/".join(found)

    names = sorted({name for run in [*base, *head] for name in run.machine_info.get("libraries") or {}})
    return [
        f"{name}: {versions(base, name)} -> {versions(head, name)}"
        for name in names
        if versions(base, name) != versions(head, name)
    ]


def _untestable_reason(cells: Sequence[Cell], min_rounds: int) -> str | None:
    """Why these cells cannot be tested, or None."""
    if any(cell.data is None for cell in cells):
        return "no raw timings (stats.data) in a run"
    fewest = min(len(cell.data) for cell in cells)
    return f"only {fewest} rounds (< --min-rounds {min_rounds})" if fewest < min_rounds else None


# per run of one side: the cell, the cells its time is divided by (their medians summed; none for absolute times),
# and how many workers share the divisor (floors only)
RunCells = list[tuple[Cell, tuple[Cell, ...], int]]


def _divisors(
    cell: Cell, run_cells: Mapping[CellKey, Cell], index: Mapping[tuple, Cell], mode: Mode
) -> tuple[tuple[Cell, ...], int] | None:
    """What ``cell`` is divided by in its run under ``mode``, or None when that run lacks it."""
    if mode.name == "floor":
        floors = floor_cells(cell, index)
        return (floors, divisor(cell)) if floors else None
    if mode.name == "reference":
        slot = cell.key._replace(method=mode.reference_method, codec="")
        reference = next((other for key, other in run_cells.items() if key._replace(codec="") == slot), None)
        return ((reference,), 1) if reference else None
    return (), 1


def compare_runs(
    base: Sequence[Run],
    head: Sequence[Run],
    *,
    mode: Mode,
    min_rounds: int,
    alpha: float,
    threshold: float,
    correction: Correction,
    seed: int,
) -> tuple[list[Comparison], float, list[str]]:
    """Compared cells (sorted by key), the CI level used, and notes on cells that could not be paired.

    A cell is compared when every run of both sides has it (and, unless times are absolute, what it is divided
    by). With one run per side the rounds are bootstrapped (ratio_of_medians); with more, each run counts once
    (ratio_between_runs). With a reference method, each cell's quantity is its median time over the reference
    method's median time for the same (operation, n_images, image_shape, variant) in the same run, and the
    reference's own cells are not compared; with floors, its median time over its floor's, and floor cells are
    not compared.
    """
    runs = {"base": base, "head": head}
    sides = {side: [{cell.key: cell for cell in run.cells} for run in side_runs] for side, side_runs in runs.items()}
    indexes = {side: [floor_index(run.cells) for run in side_runs] for side, side_runs in runs.items()}
    in_all = {side: set.intersection(*(set(cells) for cells in side_cells)) for side, side_cells in sides.items()}
    in_any = {side: set().union(*side_cells) for side, side_cells in sides.items()}
    notes = [
        f"not in every {side} run: {', '.join(label(key) for key in sorted(keys))}"
        for side in sides
        if (keys := in_any[side] - in_all[side])
    ]
    notes += _unpaired_notes(
        {key: _any(sides["base"], key) for key in in_any["base"] - in_any["head"]},
        {key: _any(sides["head"], key) for key in in_any["head"] - in_any["base"]},
    )
    missing = "floor" if mode.name == "floor" else f"{mode.reference_method} cell"
    keys: list[CellKey] = []
    groups: list[tuple[RunCells, RunCells]] = []
    for key in sorted(in_all["base"] & in_all["head"]):
        cell = sides["base"][0][key]
        if key.method == mode.reference_method or (mode.name == "floor" and is_floor(cell)):
            continue
        pair = tuple(
            [
                (cells[key], *divisors)
                for cells, index in zip(sides[side], indexes[side])
                if (divisors := _divisors(cells[key], cells, index, mode)) is not None
            ]
            for side in runs
        )
        if any(len(run_cells) != len(runs[side]) for run_cells, side in zip(pair, runs)):
            notes.append(f"not compared, no {missing} in all runs: {label(key)}")
            continue
        keys.append(key)
        groups.append(pair)
    if not keys:
        raise ReportInputError(
            head[0].path, f"no cell to compare with {base[0].path}" + (f" ({'; '.join(notes)})" if notes else "")
        )
    rng = np.random.default_rng(seed)
    logs = [(_log_quantities(base_cells), _log_quantities(head_cells)) for base_cells, head_cells in groups]
    estimates = [
        _untestable_reason(
            [cell for cell, divisors, _ in base_cells + head_cells for cell in (cell, *divisors)], min_rounds
        )
        or (
            ratio_between_runs(*cell_logs)
            if runs_are_replicates(base)
            else _bootstrap(base_cells[0], head_cells[0], rng)
        )
        for (base_cells, head_cells), cell_logs in zip(groups, logs)
    ]
    verdicts, level = judge_family(estimates, alpha=alpha, threshold=threshold, correction=correction)
    comparisons = [
        Comparison(key, float(np.exp(np.mean(base_logs))), float(np.exp(np.mean(head_logs))), verdict)
        for key, (base_logs, head_logs), verdict in zip(keys, logs, verdicts)
    ]
    return comparisons, level, notes


def _any(side_cells: Sequence[Mapping[CellKey, Cell]], key: CellKey) -> Cell:
    return next(cells[key] for cells in side_cells if key in cells)


def _unpaired_notes(base_only: Mapping[CellKey, Cell], head_only: Mapping[CellKey, Cell]) -> list[str]:
    """Notes on cells of one side only: each paired, where it can be, with the cell of the other side of the same
    operation, method and image count that differs from it in the fewest identity fields, and listed under those
    differences ("not comparable (durable: False != True): ..."); the rest as "only in base" or "only in head"."""
    refused: dict[str, list[CellKey]] = {}
    unmatched = dict(head_only)
    alone: list[CellKey] = []
    for key in sorted(base_only):
        candidates = [
            (len(identity_differences(base_only[key], cell)), other)
            for other, cell in unmatched.items()
            if (other.operation, other.method, other.n_images) == (key.operation, key.method, key.n_images)
        ]
        if not candidates:
            alone.append(key)
            continue
        _, other = min(candidates)
        refused.setdefault("; ".join(identity_differences(base_only[key], unmatched.pop(other))), []).append(key)
    notes = [
        f"not comparable ({differences}, base != head): {', '.join(label(key) for key in keys)}"
        for differences, keys in refused.items()
    ]
    return notes + [
        f"only in {side}: {', '.join(label(key) for key in sorted(keys))}"
        for side, keys in (("base", alone), ("head", list(unmatched)))
        if keys
    ]


def _log_quantities(run_cells: RunCells) -> list[float]:
    """Per run: log of the median time, or of the median time over what it is divided by."""
    return [
        float(
            np.log(cell.stats["median"])
            - (np.log(sum(d.stats["median"] for d in divisors) / scale) if divisors else 0.0)
        )
        for cell, divisors, scale in run_cells
    ]


def _bootstrap(
    base: tuple[Cell, tuple[Cell, ...], int], head: tuple[Cell, tuple[Cell, ...], int], rng: np.random.Generator
) -> RatioEstimate:
    """HEAD/BASE from one run per side, its rounds bootstrapped (the workers' scale cancels between the sides)."""
    (base_cell, base_divisors, _), (head_cell, head_divisors, _) = base, head

    def samples(cells: tuple[Cell, ...]) -> list[np.ndarray]:
        return [np.asarray(cell.data) for cell in cells]

    numerators = [samples((head_cell,))] + ([samples(base_divisors)] if base_divisors else [])
    denominators = [samples((base_cell,))] + ([samples(head_divisors)] if head_divisors else [])
    return ratio_of_medians(numerators, denominators, rng)


def _check_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 < args.alpha < 1:
        parser.error("--alpha must be between 0 and 1")
    if args.threshold <= 0:
        parser.error("--threshold must be positive")
    if args.min_rounds < 2:
        parser.error("--min-rounds must be at least 2")


def _mode(args: argparse.Namespace) -> Mode:
    if args.normalise == "floor":
        return Mode("floor")
    return Mode("reference", args.reference_method) if args.cross_machine else Mode("absolute")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; returns 1 when any cell is slower, 0 otherwise, 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_settings(parser, args)
    mode = _mode(args)
    try:
        base, head = load_sides(args.base, args.head, args.benchmarks_dir, args.cross_machine)
        differences = {
            "fingerprint": fingerprint_differences([*base, *head]),
            "libraries": library_differences(base, head),
        }
        comparisons, level, notes = compare_runs(
            base,
            head,
            mode=mode,
            min_rounds=args.min_rounds,
            alpha=args.alpha,
            threshold=args.threshold,
            correction=args.correction,
            seed=args.seed,
        )
    except ReportInputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    for name, runs in (("base", base), ("head", head)):
        print(f"{name} {runs[0].label}" + (f" and {len(runs) - 1} more runs" if len(runs) > 1 else ""))
    print(f"{output.settings_line(args, mode, level)}\n{output.model(base, head)}\n")
    print(output.text_table(output.headers(mode), output.rows(comparisons, mode)))
    for title, items in (
        ("machine fingerprint differs", differences["fingerprint"]),
        ("library versions differ", differences["libraries"]),
        ("not compared", notes),
    ):
        if items:
            print(f"\n{title}:\n" + "\n".join(f"  {item}" for item in items))
    summary = output.summary(comparisons)
    print("\n" + ", ".join(f"{count} {verdict}" for verdict, count in summary.items()))
    if args.out:
        report = (base, head, args, mode, level, comparisons, notes, differences)
        try:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "compare.md").write_text(output.markdown(*report), encoding="utf-8")
            (args.out / "compare.json").write_text(
                json.dumps(output.to_json(*report), indent=2) + "\n", encoding="utf-8"
            )
        except OSError as err:
            print(f"{PROG}: error: cannot write to {args.out}: {err.strerror or err}", file=sys.stderr)
            return 2
    return 1 if summary["slower"] else 0
