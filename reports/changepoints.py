"""Steps in a cell's history: where its per-commit values shift, by how much, and with what confidence.

The method (docs/reports.md, "Change points"), on the log of each commit's value (geometric mean of its runs):

* where: binary segmentation with a least-squares cost (ruptures' Binseg, model "l2", at least MIN_SEGMENT commits
  on each side), which splits a segment where the means on either side differ most, as E-Divisive means does;
* whether: each new split is kept only if its segment passes a permutation test at ``alpha``: the largest
  standardised difference of means over all split positions, against the same for the commits shuffled (so the
  search over positions is part of the null distribution); the first split that fails stops the segmentation;
* how much: each kept split compares the runs of the segments on either side, runs as replicates, with the pooled
  Student t interval of reports.stats (ratio after/before and its CI at 1 - alpha); splits smaller than
  ``threshold`` still bound their neighbours' segments but are not reported as steps.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import ruptures

from reports.history import MODES, CellKey, CellSeries, History, Point
from reports.stats import ratio_between_runs

MIN_SEGMENT = 3  # commits on each side of a split: one or two odd commits are not a step


@dataclass(frozen=True)
class Step:
    """A shift in one cell's series, starting at commit ``commit`` (the first commit after it)."""

    key: CellKey
    label: str
    commit: int  # index into History.commits
    ratio: float  # after / before, geometric means of the runs of the neighbouring segments
    ci: tuple[float, float]
    p_value: float  # of the permutation test that accepted the split
    before: float
    after: float


def _split_statistic(values: np.ndarray) -> np.ndarray:
    """Per row, the largest |mean(left) - mean(right)| * sqrt(j (m - j) / m) over the splits j that leave
    MIN_SEGMENT values on each side."""
    m = values.shape[1]
    j = np.arange(MIN_SEGMENT, m - MIN_SEGMENT + 1)
    sums = np.cumsum(values, axis=1)
    left = sums[:, j - 1] / j
    right = (sums[:, -1:] - sums[:, j - 1]) / (m - j)
    return np.max(np.abs(left - right) * np.sqrt(j * (m - j) / m), axis=1)


def permutation_p(segment: np.ndarray, permutations: int, rng: np.random.Generator) -> float:
    """p-value of "no shift anywhere in ``segment``" (values in commit order)."""
    observed = _split_statistic(segment[None, :])[0]
    shuffled = rng.permuted(np.tile(segment, (permutations, 1)), axis=1)
    return (1 + int(np.count_nonzero(_split_statistic(shuffled) >= observed * (1 - 1e-12)))) / (permutations + 1)


def change_points(
    signal: np.ndarray, *, alpha: float, permutations: int, rng: np.random.Generator
) -> list[tuple[int, float]]:
    """Significant splits of ``signal`` (one value per commit) as (index of the first point after, p-value)."""
    n = len(signal)
    if n < 2 * MIN_SEGMENT:
        return []
    algorithm = ruptures.Binseg(model="l2", min_size=MIN_SEGMENT, jump=1).fit(signal)
    found: dict[int, float] = {}
    for count in range(1, n // MIN_SEGMENT):
        try:
            new = [bkp for bkp in algorithm.predict(n_bkps=count)[:-1] if bkp not in found]
        except ruptures.exceptions.BadSegmentationParameters:
            break
        if len(new) != 1:  # nothing left to split
            break
        start = max([0, *(bkp for bkp in found if bkp < new[0])])
        end = min([n, *(bkp for bkp in found if bkp > new[0])])
        p_value = permutation_p(signal[start:end], permutations, rng)
        if p_value >= alpha:
            break
        found[new[0]] = p_value
    return sorted(found.items())


def _logs(points: Sequence[Point]) -> list[float]:
    return [math.log(value) for point in points for value in point.runs]


def series_steps(
    series: CellSeries, mode: str, *, alpha: float, threshold: float, permutations: int, rng: np.random.Generator
) -> list[Step]:
    """The steps of one cell's series in ``mode`` at least ``threshold`` large, oldest first."""
    points = series.points[mode]
    signal = np.array([math.log(point.value) for point in points])
    splits = change_points(signal, alpha=alpha, permutations=permutations, rng=rng)
    borders = [0, *(index for index, _ in splits), len(points)]
    steps = []
    for (index, p_value), start, end in zip(splits, borders, borders[2:]):
        estimate = ratio_between_runs(_logs(points[start:index]), _logs(points[index:end]))
        if abs(math.log(estimate.ratio)) < math.log1p(threshold):
            continue
        before = math.exp(float(np.mean(_logs(points[start:index]))))
        steps.append(
            Step(
                series.key,
                series.label,
                points[index].commit,
                estimate.ratio,
                estimate.ci(1 - alpha),
                p_value,
                before,
                before * estimate.ratio,
            )
        )
    return steps


def find_steps(
    history: History, *, alpha: float = 0.01, threshold: float = 0.05, permutations: int = 999, seed: int = 0
) -> dict[str, dict[CellKey, list[Step]]]:
    """Per mode, per cell with at least one step, its steps; each cell's permutations come from the seed and its
    label, so the answer for a cell does not depend on the other cells."""
    return {
        mode: {
            series.key: found
            for series in history.cells
            if (
                found := series_steps(
                    series,
                    mode,
                    alpha=alpha,
                    threshold=threshold,
                    permutations=permutations,
                    rng=np.random.default_rng([seed, zlib.crc32(series.label.encode())]),
                )
            )
        }
        for mode in MODES
    }
