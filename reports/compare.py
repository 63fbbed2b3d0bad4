"""`python -m reports compare BASE HEAD`: which cells got slower, with statistics fit for a CI gate.

BASE and HEAD each name one run or several (a directory or a glob). Every cell present in all runs is compared:
with one run per side through its raw per-round timings, with several through the spread between runs, which also
covers drift from one run to the next (reports.stats explains both). Exit status: 1 when any cell is slower,
0 otherwise, 2 on bad input (one line on stderr). Runs from different machines are refused unless --cross-machine,
which compares each method's time relative to a reference method measured in the same run, because ratios survive
a change of machine and absolute times do not.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reports.load import Cell, ReportInputError, Run, load_run, resolve_inputs
from reports.stats import VERDICTS, Correction, RatioEstimate, Verdict, judge_family, ratio_between_runs, ratio_of_medians

PROG = "python -m reports compare"
FINGERPRINT_FIELDS = ("cpu.brand_raw", "cpu.count", "system", "release", "storage.filesystem")
CellKey = tuple[str, str, int, tuple[int, ...]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compare BASE and HEAD (one or several benchmark runs each) cell by cell; "
                    "exit 1 when any cell is slower, 2 on bad input.",
    )
    parser.add_argument("base", help="the earlier run(s): pytest-benchmark JSON file, run id such as 0003, "
                                     "or a directory or glob naming several runs of the same code")
    parser.add_argument("head", help="the run(s) to check, same forms as BASE")
    parser.add_argument("--threshold", type=float, default=0.05,
                        help="practical change that counts, as a fraction (default: %(default)s = 5%%)")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="significance level after correcting for the number of cells (default: %(default)s)")
    parser.add_argument("--correction", choices=("bh", "holm"), default="bh",
                        help="multiple-comparison correction: Benjamini-Hochberg or Holm (default: %(default)s)")
    parser.add_argument("--min-rounds", type=int, default=5,
                        help="cells with fewer rounds in any run are inconclusive (default: %(default)s)")
    parser.add_argument("--cross-machine", action="store_true",
                        help="allow runs from different machines: compare each method relative to --reference-method")
    parser.add_argument("--reference-method", default="hdf5",
                        help="method the others are divided by with --cross-machine (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the bootstrap used with one run per side; same inputs and seed, same output")
    parser.add_argument("--out", type=Path, help="also write compare.md and compare.json into this folder")
    parser.add_argument("--benchmarks-dir", type=Path, default=Path(".benchmarks"),
                        help="where run ids are looked up (default: %(default)s)")
    return parser


@dataclass(frozen=True)
class Comparison:
    """One compared cell: its key, the compared quantity on each side (seconds or ratio to the reference; the
    geometric mean over the side's runs), and the verdict."""

    key: CellKey
    base_value: float
    head_value: float
    verdict: Verdict

    @property
    def label(self) -> str:
        return _label(self.key)


def load_sides(base_text: str, head_text: str, benchmarks_dir: Path, cross_machine: bool) -> tuple[list[Run], list[Run]]:
    """The runs BASE and HEAD name, checked: no run on both sides, one run each or at least two each, and (unless
    cross_machine) every run on the machine of the first base run."""
    paths = [resolve_inputs([text], benchmarks_dir) for text in (base_text, head_text)]
    shared = {path.resolve() for path in paths[0]} & {path.resolve() for path in paths[1]}
    if shared:
        raise ReportInputError(head_text, f"names the same run as BASE: {', '.join(sorted(map(str, shared)))}")
    if len(paths[0]) != len(paths[1]) and min(map(len, paths)) < 2:
        raise ReportInputError(head_text, f"BASE names {len(paths[0])} run(s) and HEAD {len(paths[1])}: give one run "
                                          "per side, or at least two per side so that both sides show their spread")
    base, head = ([load_run(path) for path in side] for side in paths)
    odd = next((run for run in head + base if _fingerprint(run) != _fingerprint(base[0])), None)
    if odd is not None and not cross_machine:
        raise ReportInputError(odd.path, f"not the machine of {base[0].path} ({'; '.join(fingerprint_differences([base[0], odd]))}); "
                                         f"pass --cross-machine to compare ratios to --reference-method instead")
    return base, head


def _runs_are_replicates(base: Sequence[Run]) -> bool:
    """Several runs per side (load_sides ensures both sides then have two or more): runs, not rounds, are the unit."""
    return len(base) > 1


def _field(info: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        info = info.get(part) if isinstance(info, Mapping) else None
    return info


def _fingerprint(run: Run) -> tuple[str, ...]:
    return tuple(repr(_field(run.machine_info, field)) for field in FINGERPRINT_FIELDS)


def fingerprint_differences(runs: Sequence[Run]) -> list[str]:
    """Machine fingerprint fields on which the runs disagree, as "field: value != other value"."""
    values = [list(dict.fromkeys(column)) for column in zip(*map(_fingerprint, runs))]
    return [f"{field}: {' != '.join(distinct)}" for field, distinct in zip(FINGERPRINT_FIELDS, values) if len(distinct) > 1]


def library_differences(base: Sequence[Run], head: Sequence[Run]) -> list[str]:
    """Library versions (machine_info.libraries) that differ between the sides, as "name: base -> head"."""
    def versions(runs: Sequence[Run], name: str) -> str:
        found = dict.fromkeys(str((run.machine_info.get("libraries") or {}).get(name, "missing")) for run in runs)
        return "/".join(found)

    names = sorted({name for run in [*base, *head] for name in run.machine_info.get("libraries") or {}})
    return [f"{name}: {versions(base, name)} -> {versions(head, name)}" for name in names
            if versions(base, name) != versions(head, name)]


def _untestable_reason(cells: Sequence[Cell], min_rounds: int) -> str | None:
    """Why these cells cannot be tested, or None."""
    if any(cell.data is None for cell in cells):
        return "no raw timings (stats.data) in a run"
    fewest = min(len(cell.data) for cell in cells)
    return f"only {fewest} rounds (< --min-rounds {min_rounds})" if fewest < min_rounds else None


# per run of one side: the cell, and the reference method's cell of the same run (None for absolute times)
RunCells = list[tuple[Cell, Cell | None]]


def compare_runs(base: Sequence[Run], head: Sequence[Run], *, reference_method: str | None, min_rounds: int, alpha: float,
                 threshold: float, correction: Correction, seed: int) -> tuple[list[Comparison], float, list[str]]:
    """Compared cells (sorted by key), the CI level used, and notes on cells that could not be paired.

    A cell is compared when every run of both sides has it. With one run per side the rounds are bootstrapped
    (ratio_of_medians); with more, each run counts once (ratio_between_runs). With a reference method, each cell's
    quantity is its median time over the reference method's median time for the same (operation, n_images,
    image_shape) in the same run; the reference's own cells are not compared.
    """
    sides = {"base": [{cell.key: cell for cell in run.cells} for run in base],
             "head": [{cell.key: cell for cell in run.cells} for run in head]}
    in_all = {side: set.intersection(*(set(cells) for cells in runs)) for side, runs in sides.items()}
    in_any = {side: set().union(*runs) for side, runs in sides.items()}
    notes = [f"not in every {side} run: {', '.join(_label(key) for key in sorted(keys))}"
             for side in sides if (keys := in_any[side] - in_all[side])]
    notes += [f"only in {side}: {', '.join(_label(key) for key in sorted(keys))}"
              for side, other in (("base", "head"), ("head", "base")) if (keys := in_any[side] - in_any[other])]
    common = in_all["base"] & in_all["head"]
    keys: list[CellKey] = []
    groups: list[tuple[RunCells, RunCells]] = []
    for key in sorted(common):
        operation, method, n_images, shape = key
        reference_key = None if reference_method is None else (operation, reference_method, n_images, shape)
        if method == reference_method:
            continue
        if reference_key is not None and reference_key not in common:
            notes.append(f"not compared, no {reference_method} cell in all runs: {_label(key)}")
            continue
        keys.append(key)
        groups.append(tuple([(cells[key], cells[reference_key] if reference_key else None) for cells in sides[side]]
                            for side in ("base", "head")))
    if not keys:
        raise ReportInputError(head[0].path, f"no cell to compare with {base[0].path}" + (f" ({'; '.join(notes)})" if notes else ""))
    rng = np.random.default_rng(seed)
    logs = [(_log_quantities(base_cells), _log_quantities(head_cells)) for base_cells, head_cells in groups]
    estimates = [_untestable_reason([cell for pair in base_cells + head_cells for cell in pair if cell], min_rounds)
                 or (ratio_between_runs(*cell_logs) if _runs_are_replicates(base) else _bootstrap(base_cells[0], head_cells[0], rng))
                 for (base_cells, head_cells), cell_logs in zip(groups, logs)]
    verdicts, level = judge_family(estimates, alpha=alpha, threshold=threshold, correction=correction)
    comparisons = [Comparison(key, float(np.exp(np.mean(base_logs))), float(np.exp(np.mean(head_logs))), verdict)
                   for key, (base_logs, head_logs), verdict in zip(keys, logs, verdicts)]
    return comparisons, level, notes


def _log_quantities(run_cells: RunCells) -> list[float]:
    """Per run: log of the median time, or of the median time over the reference's median time."""
    return [float(np.log(cell.stats["median"]) - (np.log(reference.stats["median"]) if reference else 0.0))
            for cell, reference in run_cells]


def _bootstrap(base: tuple[Cell, Cell | None], head: tuple[Cell, Cell | None], rng: np.random.Generator) -> RatioEstimate:
    """HEAD/BASE from one run per side, its rounds bootstrapped."""
    (base_cell, base_reference), (head_cell, head_reference) = base, head
    numerators = [head_cell] + ([base_reference] if base_reference else [])
    denominators = [base_cell] + ([head_reference] if head_reference else [])
    return ratio_of_medians([np.asarray(cell.data) for cell in numerators], [np.asarray(cell.data) for cell in denominators], rng)


def _label(key: CellKey) -> str:
    operation, method, n_images, shape = key
    return f"{operation} {method} n={n_images} {'x'.join(map(str, shape))}"


def _seconds(value: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def _rows(comparisons: Sequence[Comparison], reference_method: str | None) -> list[list[str]]:
    def quantity(value: float) -> str:
        return _seconds(value) if reference_method is None else f"{value:.3f}"

    rows = []
    for comparison in comparisons:
        verdict = comparison.verdict
        tested = verdict.estimate is not None
        rows.append([
            comparison.label,
            quantity(comparison.base_value),
            quantity(comparison.head_value),
            f"{verdict.estimate.ratio:.3f}" if tested else "-",
            f"{verdict.ci[0]:.3f}..{verdict.ci[1]:.3f}" if tested else "-",
            f"{verdict.p_adjusted:.2g}" if tested else "-",
            verdict.verdict,
            verdict.reason,
        ])
    return rows


def _headers(reference_method: str | None) -> list[str]:
    unit = "median" if reference_method is None else f"÷ {reference_method}"
    return ["cell", f"base {unit}", f"head {unit}", "ratio", "CI", "p adj", "verdict", "why"]


def _text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in [headers, *rows]) for column in range(len(headers))]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip() for row in [headers, *rows])


def _summary(comparisons: Sequence[Comparison]) -> dict[str, int]:
    counts = Counter(comparison.verdict.verdict for comparison in comparisons)
    return {verdict: counts[verdict] for verdict in VERDICTS}


def _model(base: Sequence[Run], head: Sequence[Run]) -> str:
    """How the uncertainty was estimated, in words."""
    if not _runs_are_replicates(base):
        return ("one run per side: its rounds are bootstrapped as independent draws, so drift between runs is not "
                "covered; give several runs per side where runs drift (docs/ci.md)")
    return (f"{len(base)} base and {len(head)} head runs: each run counts once, spread between runs "
            f"(Student t, {len(base) + len(head) - 2} degrees of freedom)")


def _settings_line(args: argparse.Namespace, reference_method: str | None, level: float) -> str:
    mode = f"ratios to {reference_method} within each run (--cross-machine)" if reference_method else "absolute times"
    return (f"{mode}; threshold {args.threshold:.0%}, alpha {args.alpha:g} with {args.correction.upper()} correction, "
            f"CI level {level:.2%}, min rounds {args.min_rounds}, seed {args.seed}")


def _run_lines(name: str, runs: Sequence[Run]) -> list[str]:
    if len(runs) == 1:
        return [f"- {name}: `{runs[0].path}` ({runs[0].label})"]
    return [f"- {name}: {len(runs)} runs", *(f"  - `{run.path}` ({run.label})" for run in runs)]


def _markdown(base: Sequence[Run], head: Sequence[Run], args: argparse.Namespace, reference_method: str | None,
              level: float, comparisons: Sequence[Comparison], notes: Sequence[str],
              differences: Mapping[str, Sequence[str]]) -> str:
    headers, rows = _headers(reference_method), _rows(comparisons, reference_method)
    lines = [
        "# Benchmark comparison",
        "",
        *_run_lines("base", base),
        *_run_lines("head", head),
        f"- {_settings_line(args, reference_method, level)}",
        f"- {_model(base, head)}",
        f"- verdicts: {', '.join(f'{count} {verdict}' for verdict, count in _summary(comparisons).items())}",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    for title, items in (("Machine fingerprint differences", differences["fingerprint"]),
                         ("Library version differences", differences["libraries"]), ("Not compared", notes)):
        if items:
            lines += ["", f"## {title}", "", *(f"- {item}" for item in items)]
    return "\n".join(lines) + "\n"


def _json(base: Sequence[Run], head: Sequence[Run], args: argparse.Namespace, reference_method: str | None, level: float,
          comparisons: Sequence[Comparison], notes: Sequence[str], differences: Mapping[str, Sequence[str]]) -> dict:
    def cell(comparison: Comparison) -> dict[str, Any]:
        operation, method, n_images, shape = comparison.key
        verdict = comparison.verdict
        return {
            "operation": operation, "method": method, "n_images": n_images, "image_shape": list(shape),
            "base": comparison.base_value, "head": comparison.head_value,
            "ratio": verdict.estimate.ratio if verdict.estimate else None,
            "ci": list(verdict.ci) if verdict.ci else None,
            "p_value": verdict.estimate.p_value if verdict.estimate else None,
            "p_adjusted": verdict.p_adjusted,
            "verdict": verdict.verdict, "reason": verdict.reason,
        }

    return {
        "base": [{"path": str(run.path), "label": run.label} for run in base],
        "head": [{"path": str(run.path), "label": run.label} for run in head],
        "mode": "reference" if reference_method else "absolute",
        "quantity": (f"median time / median {reference_method} time in the same run" if reference_method else "median seconds")
                    + (", geometric mean over the runs" if _runs_are_replicates(base) else ""),
        "uncertainty": "runs" if _runs_are_replicates(base) else "rounds",
        "model": _model(base, head),
        "reference_method": reference_method,
        "threshold": args.threshold, "alpha": args.alpha, "correction": args.correction, "ci_level": level,
        "min_rounds": args.min_rounds, "seed": args.seed,
        "summary": _summary(comparisons),
        "fingerprint_differences": list(differences["fingerprint"]),
        "library_differences": list(differences["libraries"]),
        "not_compared": list(notes),
        "cells": [cell(comparison) for comparison in comparisons],
    }


def _check_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 < args.alpha < 1:
        parser.error("--alpha must be between 0 and 1")
    if args.threshold <= 0:
        parser.error("--threshold must be positive")
    if args.min_rounds < 2:
        parser.error("--min-rounds must be at least 2")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; returns 1 when any cell is slower, 0 otherwise, 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_settings(parser, args)
    try:
        base, head = load_sides(args.base, args.head, args.benchmarks_dir, args.cross_machine)
        differences = {"fingerprint": fingerprint_differences([*base, *head]), "libraries": library_differences(base, head)}
        reference_method = args.reference_method if args.cross_machine else None
        comparisons, level, notes = compare_runs(base, head, reference_method=reference_method, min_rounds=args.min_rounds,
                                                 alpha=args.alpha, threshold=args.threshold, correction=args.correction,
                                                 seed=args.seed)
    except ReportInputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    for name, runs in (("base", base), ("head", head)):
        print(f"{name} {runs[0].label}" + (f" and {len(runs) - 1} more runs" if len(runs) > 1 else ""))
    print(f"{_settings_line(args, reference_method, level)}\n{_model(base, head)}\n")
    print(_text_table(_headers(reference_method), _rows(comparisons, reference_method)))
    for title, items in (("machine fingerprint differs", differences["fingerprint"]),
                         ("library versions differ", differences["libraries"]), ("not compared", notes)):
        if items:
            print(f"\n{title}:\n" + "\n".join(f"  {item}" for item in items))
    summary = _summary(comparisons)
    print("\n" + ", ".join(f"{count} {verdict}" for verdict, count in summary.items()))
    if args.out:
        report = (base, head, args, reference_method, level, comparisons, notes, differences)
        try:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "compare.md").write_text(_markdown(*report), encoding="utf-8")
            (args.out / "compare.json").write_text(json.dumps(_json(*report), indent=2) + "\n", encoding="utf-8")
        except OSError as err:
            print(f"{PROG}: error: cannot write to {args.out}: {err.strerror or err}", file=sys.stderr)
            return 2
    return 1 if summary["slower"] else 0
