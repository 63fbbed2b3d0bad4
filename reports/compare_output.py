"""What `python -m reports compare` prints and writes: the table, compare.md and compare.json.

Formatting only; reports.compare decides what is compared and how.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reports.results import CellKey, Run
from reports.stats import VERDICTS, Verdict
from reports.units import format_seconds

QUANTITIES = {  # mode -> (column heading, compare.json "quantity")
    "absolute": ("median", "median seconds"),
    "reference": ("÷ {reference}", "median time / median {reference} time in the same run"),
    "floor": ("÷ floor", "median time / the cell's floor time in the same run"),
}


def runs_are_replicates(base: Sequence[Run]) -> bool:
    """Several runs per side (load_sides ensures both sides then have two or more): runs, not rounds, are the unit."""
    return len(base) > 1


@dataclass(frozen=True)
class Comparison:
    """One compared cell: its key, the compared quantity on each side (seconds, or a ratio to the reference method
    or to the floor; the geometric mean over the side's runs), and the verdict."""

    key: CellKey
    base_value: float
    head_value: float
    verdict: Verdict

    @property
    def label(self) -> str:
        return label(self.key)


@dataclass(frozen=True)
class Mode:
    """What was compared: absolute times, ratios to a reference method (--cross-machine) or to floors (--normalise
    floor)."""

    name: str
    reference_method: str | None = None

    def heading(self) -> str:
        return QUANTITIES[self.name][0].format(reference=self.reference_method)

    def quantity(self) -> str:
        return QUANTITIES[self.name][1].format(reference=self.reference_method)

    def describe(self) -> str:
        if self.name == "reference":
            return f"ratios to {self.reference_method} within each run (--cross-machine)"
        if self.name == "floor":
            return "ratios to each cell's floor within each run (--normalise floor)"
        return "absolute times"


def label(key: CellKey) -> str:
    """ "read_many lmdb n=1000 32x32x3", plus the variant (batch size, workers, cache) if any."""
    return f"{key.operation} {key.method} n={key.n_images} {'x'.join(map(str, key.image_shape))}" + (
        f" {key.variant}" if key.variant else ""
    )


def rows(comparisons: Sequence[Comparison], mode: Mode) -> list[list[str]]:
    def quantity(value: float) -> str:
        return format_seconds(value) if mode.name == "absolute" else f"{value:.3f}"

    rows = []
    for comparison in comparisons:
        verdict = comparison.verdict
        tested = verdict.estimate is not None
        rows.append(
            [
                comparison.label,
                quantity(comparison.base_value),
                quantity(comparison.head_value),
                f"{verdict.estimate.ratio:.3f}" if tested else "-",
                f"{verdict.ci[0]:.3f}..{verdict.ci[1]:.3f}" if tested else "-",
                f"{verdict.p_adjusted:.2g}" if tested else "-",
                verdict.verdict,
                verdict.reason,
            ]
        )
    return rows


def headers(mode: Mode) -> list[str]:
    return ["cell", f"base {mode.heading()}", f"head {mode.heading()}", "ratio", "CI", "p adj", "verdict", "why"]


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in [headers, *rows]) for column in range(len(headers))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip() for row in [headers, *rows]
    )


def summary(comparisons: Sequence[Comparison]) -> dict[str, int]:
    counts = Counter(comparison.verdict.verdict for comparison in comparisons)
    return {verdict: counts[verdict] for verdict in VERDICTS}


def model(base: Sequence[Run], head: Sequence[Run]) -> str:
    """How the uncertainty was estimated, in words."""
    if not runs_are_replicates(base):
        return (
            "one run per side: its rounds are bootstrapped as independent draws, so drift between runs is not "
            "covered; give several runs per side where runs drift (docs/ci.md)"
        )
    return (
        f"{len(base)} base and {len(head)} head runs: each run counts once, spread between runs "
        f"(Student t, {len(base) + len(head) - 2} degrees of freedom)"
    )


def settings_line(args: argparse.Namespace, mode: Mode, level: float) -> str:
    return (
        f"{mode.describe()}; threshold {args.threshold:.0%}, alpha {args.alpha:g} with {args.correction.upper()} "
        f"correction, CI level {level:.2%}, min rounds {args.min_rounds}, seed {args.seed}"
    )


def _run_lines(name: str, runs: Sequence[Run]) -> list[str]:
    if len(runs) == 1:
        return [f"- {name}: `{runs[0].path}` ({runs[0].label})"]
    return [f"- {name}: {len(runs)} runs", *(f"  - `{run.path}` ({run.label})" for run in runs)]


def markdown(
    base: Sequence[Run],
    head: Sequence[Run],
    args: argparse.Namespace,
    mode: Mode,
    level: float,
    comparisons: Sequence[Comparison],
    notes: Sequence[str],
    differences: Mapping[str, Sequence[str]],
) -> str:
    heads, table = headers(mode), rows(comparisons, mode)
    lines = [
        "# Benchmark comparison",
        "",
        *_run_lines("base", base),
        *_run_lines("head", head),
        f"- {settings_line(args, mode, level)}",
        f"- {model(base, head)}",
        f"- verdicts: {', '.join(f'{count} {verdict}' for verdict, count in summary(comparisons).items())}",
        "",
        "| " + " | ".join(heads) + " |",
        "|" + "---|" * len(heads),
        *("| " + " | ".join(row) + " |" for row in table),
    ]
    for title, items in (
        ("Machine fingerprint differences", differences["fingerprint"]),
        ("Library version differences", differences["libraries"]),
        ("Not compared", notes),
    ):
        if items:
            lines += ["", f"## {title}", "", *(f"- {item}" for item in items)]
    return "\n".join(lines) + "\n"


def to_json(
    base: Sequence[Run],
    head: Sequence[Run],
    args: argparse.Namespace,
    mode: Mode,
    level: float,
    comparisons: Sequence[Comparison],
    notes: Sequence[str],
    differences: Mapping[str, Sequence[str]],
) -> dict:
    def cell(comparison: Comparison) -> dict[str, Any]:
        key, verdict = comparison.key, comparison.verdict
        return {
            "operation": key.operation,
            "method": key.method,
            "n_images": key.n_images,
            "image_shape": list(key.image_shape),
            **({"variant": key.variant} if key.variant else {}),
            "codec": key.codec,
            "dataset": key.dataset,
            "durable": key.durable,
            "launcher": key.launcher,
            "base": comparison.base_value,
            "head": comparison.head_value,
            "ratio": verdict.estimate.ratio if verdict.estimate else None,
            "ci": list(verdict.ci) if verdict.ci else None,
            "p_value": verdict.estimate.p_value if verdict.estimate else None,
            "p_adjusted": verdict.p_adjusted,
            "verdict": verdict.verdict,
            "reason": verdict.reason,
        }

    return {
        "base": [{"path": str(run.path), "label": run.label} for run in base],
        "head": [{"path": str(run.path), "label": run.label} for run in head],
        "mode": mode.name,
        "quantity": mode.quantity() + (", geometric mean over the runs" if runs_are_replicates(base) else ""),
        "uncertainty": "runs" if runs_are_replicates(base) else "rounds",
        "model": model(base, head),
        "reference_method": mode.reference_method,
        "threshold": args.threshold,
        "alpha": args.alpha,
        "correction": args.correction,
        "ci_level": level,
        "min_rounds": args.min_rounds,
        "seed": args.seed,
        "summary": summary(comparisons),
        "fingerprint_differences": list(differences["fingerprint"]),
        "library_differences": list(differences["libraries"]),
        "not_compared": list(notes),
        "cells": [cell(comparison) for comparison in comparisons],
    }
