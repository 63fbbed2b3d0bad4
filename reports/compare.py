"""`python -m reports compare BASE HEAD`: which cells got slower, with statistics fit for a CI gate.

Every cell present in both runs is compared through its raw per-round timings (reports.stats explains the method).
Exit status: 1 when any cell is slower, 0 otherwise, 2 on bad input (one line on stderr). Runs from different
machines are refused unless --cross-machine, which compares each method's time relative to a reference method
measured in the same run, because ratios survive a change of machine and absolute times do not.
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
from reports.stats import VERDICTS, Correction, RatioEstimate, Verdict, judge_family, ratio_of_medians

PROG = "python -m reports compare"
FINGERPRINT_FIELDS = ("cpu.brand_raw", "cpu.count", "system", "release", "storage.filesystem")
CellKey = tuple[str, str, int, tuple[int, ...]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compare two benchmark runs cell by cell; exit 1 when any cell is slower, 2 on bad input.",
    )
    parser.add_argument("base", help="the earlier run: pytest-benchmark JSON file or run id such as 0003")
    parser.add_argument("head", help="the run to check, same forms as BASE")
    parser.add_argument("--threshold", type=float, default=0.05,
                        help="practical change that counts, as a fraction (default: %(default)s = 5%%)")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="significance level after correcting for the number of cells (default: %(default)s)")
    parser.add_argument("--correction", choices=("bh", "holm"), default="bh",
                        help="multiple-comparison correction: Benjamini-Hochberg or Holm (default: %(default)s)")
    parser.add_argument("--min-rounds", type=int, default=5,
                        help="cells with fewer rounds in either run are inconclusive (default: %(default)s)")
    parser.add_argument("--cross-machine", action="store_true",
                        help="allow runs from different machines: compare each method relative to --reference-method")
    parser.add_argument("--reference-method", default="hdf5",
                        help="method the others are divided by with --cross-machine (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed; same inputs and seed, same output")
    parser.add_argument("--out", type=Path, help="also write compare.md and compare.json into this folder")
    parser.add_argument("--benchmarks-dir", type=Path, default=Path(".benchmarks"),
                        help="where run ids are looked up (default: %(default)s)")
    return parser


@dataclass(frozen=True)
class Comparison:
    """One compared cell: its key, the compared quantity in each run (seconds or ratio to the reference), verdict."""

    key: CellKey
    base_value: float
    head_value: float
    verdict: Verdict

    @property
    def label(self) -> str:
        return _label(self.key)


def _one_run(text: str, benchmarks_dir: Path) -> Run:
    paths = resolve_inputs([text], benchmarks_dir)
    if len(paths) != 1:
        raise ReportInputError(text, f"names {len(paths)} runs, expected one")
    return load_run(paths[0])


def _field(info: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        info = info.get(part) if isinstance(info, Mapping) else None
    return info


def fingerprint_differences(base: Run, head: Run) -> list[str]:
    """Machine fingerprint fields that differ, as "field: base != head"."""
    return [f"{field}: {_field(base.machine_info, field)!r} != {_field(head.machine_info, field)!r}"
            for field in FINGERPRINT_FIELDS if _field(base.machine_info, field) != _field(head.machine_info, field)]


def library_differences(base: Run, head: Run) -> list[str]:
    """Library versions (machine_info.libraries) that differ, as "name: base -> head"."""
    base_libs, head_libs = base.machine_info.get("libraries") or {}, head.machine_info.get("libraries") or {}
    return [f"{name}: {base_libs.get(name, 'missing')} -> {head_libs.get(name, 'missing')}"
            for name in sorted(set(base_libs) | set(head_libs)) if base_libs.get(name) != head_libs.get(name)]


def _untestable_reason(cells: Sequence[Cell], min_rounds: int) -> str | None:
    """Why these cells cannot be tested, or None."""
    if any(cell.data is None for cell in cells):
        return "no raw timings (stats.data) in a run"
    fewest = min(len(cell.data) for cell in cells)
    return f"only {fewest} rounds (< --min-rounds {min_rounds})" if fewest < min_rounds else None


def compare_runs(base: Run, head: Run, *, reference_method: str | None, min_rounds: int, alpha: float, threshold: float,
                 correction: Correction, seed: int) -> tuple[list[Comparison], float, list[str]]:
    """Compared cells (sorted by key), the CI level used, and notes on cells that could not be paired.

    With a reference method, each cell's quantity is its median time over the reference method's median time for
    the same (operation, n_images, image_shape) in the same run; the reference's own cells are not compared.
    """
    base_cells = {cell.key: cell for cell in base.cells}
    head_cells = {cell.key: cell for cell in head.cells}
    notes = [f"only in {side}: {', '.join(_label(key) for key in sorted(keys))}"
             for side, keys in (("base", base_cells.keys() - head_cells.keys()), ("head", head_cells.keys() - base_cells.keys()))
             if keys]
    keys, groups = [], []
    for key in sorted(base_cells.keys() & head_cells.keys()):
        if reference_method is None:
            groups.append(([head_cells[key]], [base_cells[key]]))
            keys.append(key)
            continue
        operation, method, n_images, shape = key
        reference_key = (operation, reference_method, n_images, shape)
        if method == reference_method:
            continue
        if reference_key not in base_cells or reference_key not in head_cells:
            notes.append(f"not compared, no {reference_method} cell in both runs: {_label(key)}")
            continue
        groups.append(([head_cells[key], base_cells[reference_key]], [head_cells[reference_key], base_cells[key]]))
        keys.append(key)
    if not keys:
        raise ReportInputError(head.path, f"no cell to compare with {base.path}" + (f" ({'; '.join(notes)})" if notes else ""))
    rng = np.random.default_rng(seed)
    estimates: list[RatioEstimate | str] = [
        _untestable_reason(numerators + denominators, min_rounds)
        or ratio_of_medians([np.asarray(cell.data) for cell in numerators], [np.asarray(cell.data) for cell in denominators], rng)
        for numerators, denominators in groups
    ]
    verdicts, level = judge_family(estimates, alpha=alpha, threshold=threshold, correction=correction)
    comparisons = [
        Comparison(key, _quantity(base_cells, key, reference_method), _quantity(head_cells, key, reference_method), verdict)
        for key, verdict in zip(keys, verdicts)
    ]
    return comparisons, level, notes


def _quantity(cells: Mapping[CellKey, Cell], key: CellKey, reference_method: str | None) -> float:
    median = cells[key].stats["median"]
    if reference_method is None:
        return median
    operation, _, n_images, shape = key
    return median / cells[(operation, reference_method, n_images, shape)].stats["median"]


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


def _settings_line(args: argparse.Namespace, reference_method: str | None, level: float) -> str:
    mode = f"ratios to {reference_method} within each run (--cross-machine)" if reference_method else "absolute times"
    return (f"{mode}; threshold {args.threshold:.0%}, alpha {args.alpha:g} with {args.correction.upper()} correction, "
            f"CI level {level:.2%}, min rounds {args.min_rounds}, bootstrap seed {args.seed}")


def _markdown(base: Run, head: Run, args: argparse.Namespace, reference_method: str | None, level: float,
              comparisons: Sequence[Comparison], notes: Sequence[str], differences: Mapping[str, Sequence[str]]) -> str:
    headers, rows = _headers(reference_method), _rows(comparisons, reference_method)
    lines = [
        "# Benchmark comparison",
        "",
        f"- base: `{base.path}` ({base.label})",
        f"- head: `{head.path}` ({head.label})",
        f"- {_settings_line(args, reference_method, level)}",
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


def _json(base: Run, head: Run, args: argparse.Namespace, reference_method: str | None, level: float,
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
        "base": {"path": str(base.path), "label": base.label},
        "head": {"path": str(head.path), "label": head.label},
        "mode": "reference" if reference_method else "absolute",
        "quantity": f"median time / median {reference_method} time in the same run" if reference_method else "median seconds",
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
        base, head = _one_run(args.base, args.benchmarks_dir), _one_run(args.head, args.benchmarks_dir)
        differences = {"fingerprint": fingerprint_differences(base, head), "libraries": library_differences(base, head)}
        if differences["fingerprint"] and not args.cross_machine:
            raise ReportInputError(head.path, f"not the machine of {base.path} ({'; '.join(differences['fingerprint'])}); "
                                              f"pass --cross-machine to compare ratios to --reference-method instead")
        reference_method = args.reference_method if args.cross_machine else None
        comparisons, level, notes = compare_runs(base, head, reference_method=reference_method, min_rounds=args.min_rounds,
                                                 alpha=args.alpha, threshold=args.threshold, correction=args.correction,
                                                 seed=args.seed)
    except ReportInputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"base {base.label}\nhead {head.label}\n{_settings_line(args, reference_method, level)}\n")
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
