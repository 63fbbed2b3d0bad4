"""What `python -m reports history` writes besides the page: history.json (docs/reports.md has its schema) and
history.md (the steps, newest commit first, the cells that moved together at each commit in one table).

Formatting only: reports.history builds the series, reports.changepoints finds the steps.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reports.changepoints import MIN_SEGMENT, Step
from reports.history import MODES, CellKey, History
from reports.markdown import markdown_table
from reports.units import format_seconds

SCHEMA = "image-storage-bench/history/1"
MODE_TITLES = {"raw": "median time per round", "floor": "median time over the floor's, same run"}
SETTINGS = ("alpha", "threshold", "permutations", "seed", "normalise")


def _step_groups(history: History, steps: Mapping[CellKey, list[Step]]) -> list[dict[str, Any]]:
    """The steps of one mode grouped by commit, newest commit first, cells by label."""
    by_commit: dict[int, list[Step]] = {}
    for found in steps.values():
        for step in found:
            by_commit.setdefault(step.commit, []).append(step)
    return [
        {
            "commit": index,
            "commit_id": history.commits[index].id,
            "cells": [
                {
                    "cell": step.label,
                    "ratio": step.ratio,
                    "ci": list(step.ci),
                    "p_value": step.p_value,
                    "before": step.before,
                    "after": step.after,
                }
                for step in sorted(by_commit[index], key=lambda step: step.label)
            ],
        }
        for index in sorted(by_commit, reverse=True)
    ]


def to_json(
    history: History, steps: Mapping[str, Mapping[CellKey, list[Step]]], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """The whole history as plain JSON values."""
    return {
        "schema": SCHEMA,
        "settings": {**{name: settings[name] for name in SETTINGS}, "min_segment": MIN_SEGMENT},
        "commits": [
            {
                "id": commit.id,
                "short": commit.short,
                "time": commit.time.isoformat(),
                "dirty": commit.dirty,
                "runs": [{"path": str(run.path), "datetime": run.datetime, "label": run.label} for run in commit.runs],
            }
            for commit in history.commits
        ],
        "cells": [
            {
                "id": cell.label,
                "operation": cell.operation,
                "method": cell.method,
                "n_images": cell.n_images,
                "image_shape": list(cell.image_shape),
                "variant": cell.variant,
                "series": {
                    mode: [
                        {
                            "commit": point.commit,
                            "value": point.value,
                            "lo": point.lo,
                            "hi": point.hi,
                            "runs": list(point.runs),
                        }
                        for point in cell.points[mode]
                    ]
                    for mode in MODES
                },
            }
            for cell in history.cells
        ],
        "steps": {mode: _step_groups(history, steps[mode]) for mode in MODES},
    }


def _value(mode: str, value: float) -> str:
    return format_seconds(value) if mode == "raw" else f"{value:.3f}×"


def _steps_section(document: Mapping[str, Any], mode: str) -> list[str]:
    groups = document["steps"][mode]
    lines = [f"## Steps in the {MODE_TITLES[mode]}", ""]
    if not groups:
        return lines + ["No step found.", ""]
    for group in groups:
        commit = document["commits"][group["commit"]]
        lines += [
            f"### Commit {commit['short']} ({commit['time']}, commit {group['commit'] + 1} of "
            f"{len(document['commits'])}): {len(group['cells'])} cell{'s' * (len(group['cells']) > 1)}",
            "",
            markdown_table(
                ("cell", "before", "after", "after / before", "CI", "p"),
                (
                    (
                        f"`{cell['cell']}`",
                        _value(mode, cell["before"]),
                        _value(mode, cell["after"]),
                        f"{cell['ratio']:.3f}",
                        f"{cell['ci'][0]:.3f}..{cell['ci'][1]:.3f}",
                        f"{cell['p_value']:.3g}",
                    )
                    for cell in group["cells"]
                ),
            ),
            "",
        ]
    return lines


def markdown(document: Mapping[str, Any], mode: str) -> str:
    """history.md: the settings, then the steps of ``mode`` and of the other mode, newest commit first."""
    settings, commits = document["settings"], document["commits"]
    runs = sum(len(commit["runs"]) for commit in commits)
    lines = [
        "# Benchmark history",
        "",
        f"{len(commits)} commits ({commits[0]['short']} .. {commits[-1]['short']}), {runs} runs, "
        f"{len(document['cells'])} cells. A step is a split of a cell's series (one point per commit: the median "
        f"of its runs) that passed a permutation test at alpha {settings['alpha']:g} with at least "
        f"{settings['min_segment']} commits on each side, and moved the cell by at least "
        f"{settings['threshold']:.0%}; "
        f"after / before compares the runs of the segments on either side, with a {1 - settings['alpha']:.0%} "
        "Student t interval (runs as replicates). Charts: history.html.",
        "",
    ]
    for shown in (mode, *(other for other in MODES if other != mode)):
        lines += _steps_section(document, shown)
    return "\n".join(lines)


def write(document: Mapping[str, Any], mode: str, out: Path) -> None:
    (out / "history.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    (out / "history.md").write_text(markdown(document, mode), encoding="utf-8")
