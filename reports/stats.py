"""Statistics of the regression compare: ratio of medians with a CI, multiplicity correction, verdicts.

Pure functions on arrays, no I/O. The method (see docs/ci.md):

* estimate: a ratio of medians (HEAD/BASE, or a ratio of such ratios against a reference method), on the log scale;
* uncertainty, one run per side (`ratio_of_medians`): a percentile bootstrap of the log-ratio, each sample of rounds
  resampled independently. The bootstrap median of a sample is drawn exactly without resampling all rounds (order
  statistics of uniforms are Beta), so the cost does not grow with the number of rounds. This trusts the rounds of
  one run to show all the noise, which is false where whole runs drift;
* uncertainty, several runs per side (`ratio_between_runs`): the runs are the replicates. Each run is reduced to its
  log median, and the difference of the sides' means gets the pooled two-sample Student t test and interval
  (computed exactly, in closed form), so drift between runs is in the spread rather than mistaken for a change;
* test of "no change": the two-sided p-value (bootstrap or t), adjusted over all compared cells with
  Benjamini-Hochberg (default) or Holm;
* verdict: a cell is slower/faster when its adjusted p-value is below alpha AND its ratio is beyond the practical
  threshold, unchanged when its CI at the corrected level lies inside [1/(1+t), 1+t], inconclusive otherwise.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Correction = Literal["bh", "holm"]
VERDICTS = ("slower", "faster", "unchanged", "inconclusive")
DEFAULT_DRAWS = 10_000


def bootstrap_medians(sample: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """`draws` bootstrap replicates of the median of `sample`, exact in distribution, in O(draws) time.

    A resample's k-th smallest value is sorted[floor(n * U_(k))], where U_(k) ~ Beta(k, n + 1 - k) is the k-th
    order statistic of n uniforms; for even n the next one is U_(k) + (1 - U_(k)) * Beta(1, n - k).
    """
    ordered = np.sort(np.asarray(sample, dtype=float))
    n = ordered.size
    k = (n + 1) // 2
    lower = rng.beta(k, n + 1 - k, draws)
    lower_values = ordered[np.minimum((n * lower).astype(int), n - 1)]
    if n % 2:
        return lower_values
    upper = lower + (1.0 - lower) * rng.beta(1, n - k, draws)
    return (lower_values + ordered[np.minimum((n * upper).astype(int), n - 1)]) / 2


@dataclass(frozen=True)
class RatioEstimate(ABC):
    """A ratio of medians and the two-sided p-value of "ratio == 1"; subclasses give its confidence intervals."""

    ratio: float
    p_value: float

    @abstractmethod
    def ci(self, level: float) -> tuple[float, float]:
        """Confidence interval of the ratio at `level` (e.g. 0.95)."""


@dataclass(frozen=True)
class BootstrapRatio(RatioEstimate):
    """A ratio with bootstrap replicates of its log: percentile intervals."""

    log_replicates: np.ndarray

    def ci(self, level: float) -> tuple[float, float]:
        tail = (1.0 - level) / 2
        low, high = np.quantile(self.log_replicates, [tail, 1.0 - tail])
        return float(np.exp(low)), float(np.exp(high))


@dataclass(frozen=True)
class StudentRatio(RatioEstimate):
    """A ratio whose log is Student t distributed around log(ratio): exact t intervals."""

    standard_error: float
    dof: int

    def ci(self, level: float) -> tuple[float, float]:
        half_width = student_t_critical(level, self.dof) * self.standard_error
        return float(self.ratio * np.exp(-half_width)), float(self.ratio * np.exp(half_width))


def _central_probability(theta: float, dof: int) -> float:
    """P(|T| <= sqrt(dof) * tan(theta)) for Student's T with an integer dof: the closed form of Abramowitz and
    Stegun 26.7.3 (odd dof) and 26.7.4 (even dof)."""
    cos2, term, total = math.cos(theta) ** 2, 1.0, 1.0
    if dof % 2 == 0:
        for k in range(1, dof // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            total += term
        return math.sin(theta) * total
    for k in range(1, (dof - 1) // 2):
        term *= cos2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * total if dof > 1 else 0.0))


def student_t_two_sided_p(t: float, dof: int) -> float:
    """P(|T| >= |t|) for Student's T with `dof` (a positive integer) degrees of freedom."""
    return max(0.0, 1.0 - _central_probability(math.atan(abs(t) / math.sqrt(dof)), dof))


def student_t_critical(level: float, dof: int) -> float:
    """The t with P(|T| <= t) = level, the two-sided critical value (bisection on the angle, to float precision)."""
    low, high = 0.0, math.pi / 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if _central_probability(middle, dof) < level else (low, middle)
    return math.sqrt(dof) * math.tan((low + high) / 2)


def ratio_of_medians(
    numerators: Sequence[np.ndarray | Sequence[np.ndarray]],
    denominators: Sequence[np.ndarray | Sequence[np.ndarray]],
    rng: np.random.Generator,
    draws: int = DEFAULT_DRAWS,
) -> BootstrapRatio:
    """prod(median(numerators)) / prod(median(denominators)) with its bootstrap distribution.

    One numerator and one denominator give HEAD/BASE; [head_method, base_reference] over
    [head_reference, base_method] gives the change of method/reference between runs. A term given as a list of
    samples stands for the sum of their medians (a floor made of two floor cells). Samples are independent
    timings (rounds of different benchmarks are not interleaved, so pairing them by index would be arbitrary).
    """
    point = 0.0
    replicates = np.zeros(draws)
    for sign, terms in ((1.0, numerators), (-1.0, denominators)):
        for term in terms:
            samples = [term] if isinstance(term, np.ndarray) else list(term)
            point += sign * np.log(sum(np.median(sample) for sample in samples))
            replicates += sign * np.log(sum(bootstrap_medians(sample, draws, rng) for sample in samples))
    below = (1 + np.count_nonzero(replicates <= 0)) / (draws + 1)
    above = (1 + np.count_nonzero(replicates >= 0)) / (draws + 1)
    return BootstrapRatio(
        ratio=float(np.exp(point)), p_value=min(1.0, 2 * min(below, above)), log_replicates=replicates
    )


def ratio_between_runs(base: Sequence[float], head: Sequence[float]) -> StudentRatio:
    """HEAD/BASE ratio of the geometric means of per-run values, with runs as the unit of replication.

    `base` and `head` hold one log value per run (log median time, or log of median time over the reference
    method's median time in that run), at least two each. Their mean difference gets the pooled two-sample
    Student t test, with n_base + n_head - 2 degrees of freedom.
    """
    sides = [np.asarray(values, dtype=float) for values in (base, head)]
    if min(side.size for side in sides) < 2:
        raise ValueError(f"need at least two runs per side, got {sides[0].size} and {sides[1].size}")
    dof = sum(side.size - 1 for side in sides)
    pooled_variance = sum(float(np.sum((side - side.mean()) ** 2)) for side in sides) / dof
    point = float(sides[1].mean() - sides[0].mean())
    standard_error = math.sqrt(pooled_variance * sum(1.0 / side.size for side in sides))
    t = point / standard_error if standard_error else (math.inf if point else 0.0)
    return StudentRatio(
        ratio=math.exp(point), p_value=student_t_two_sided_p(t, dof), standard_error=standard_error, dof=dof
    )


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (controls the family-wise error rate)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    stepped = np.maximum.accumulate(p[order] * (p.size - np.arange(p.size)))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values (controls the false discovery rate)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    scaled = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return adjusted


CORRECTIONS = {"bh": benjamini_hochberg, "holm": holm}


def corrected_ci_level(alpha: float, n_tested: int, n_rejected: int, correction: Correction) -> float:
    """Confidence level matching the correction: Bonferroni 1 - alpha/m for Holm; for BH the false-coverage-rate
    level 1 - alpha*R/m of Benjamini & Yekutieli (2005), with R = max(rejections, 1)."""
    if n_tested == 0:
        return 1.0 - alpha
    selected = max(n_rejected, 1) if correction == "bh" else 1
    return 1.0 - alpha * selected / n_tested


def classify(ratio: float, ci: tuple[float, float], p_adjusted: float, alpha: float, threshold: float) -> str:
    """Verdict of one tested cell; `threshold` is the practical change, e.g. 0.05 for 5 %."""
    slower_at, faster_at = 1.0 + threshold, 1.0 / (1.0 + threshold)
    if p_adjusted < alpha and ratio > slower_at:
        return "slower"
    if p_adjusted < alpha and ratio < faster_at:
        return "faster"
    if faster_at <= ci[0] and ci[1] <= slower_at:
        return "unchanged"
    return "inconclusive"


@dataclass(frozen=True)
class Verdict:
    """Outcome for one cell of a family; estimate is None when the cell was not tested (reason says why)."""

    verdict: str
    reason: str
    estimate: RatioEstimate | None = None
    p_adjusted: float | None = None
    ci: tuple[float, float] | None = None


def judge_family(
    estimates: Sequence[RatioEstimate | str],
    alpha: float = 0.05,
    threshold: float = 0.05,
    correction: Correction = "bh",
) -> tuple[list[Verdict], float]:
    """Verdicts for all cells compared at once, and the CI level used.

    Each entry is a RatioEstimate, or a string saying why the cell cannot be tested (verdict inconclusive).
    The p-values of the tested cells are adjusted together; CIs are reported at the corrected level.
    """
    tested = [estimate for estimate in estimates if isinstance(estimate, RatioEstimate)]
    adjusted = iter(CORRECTIONS[correction]([estimate.p_value for estimate in tested]))
    p_adjusted = [next(adjusted) if isinstance(estimate, RatioEstimate) else None for estimate in estimates]
    rejected = sum(1 for p in p_adjusted if p is not None and p < alpha)
    level = corrected_ci_level(alpha, len(tested), rejected, correction)
    verdicts = []
    for estimate, p in zip(estimates, p_adjusted):
        if not isinstance(estimate, RatioEstimate):
            verdicts.append(Verdict("inconclusive", estimate))
            continue
        ci = estimate.ci(level)
        verdict = classify(estimate.ratio, ci, p, alpha, threshold)
        verdicts.append(
            Verdict(verdict, _reason(verdict, estimate.ratio, ci, p, alpha, threshold), estimate, float(p), ci)
        )
    return verdicts, level


def _reason(
    verdict: str, ratio: float, ci: tuple[float, float], p_adjusted: float, alpha: float, threshold: float
) -> str:
    if verdict in ("slower", "faster"):
        return f"adjusted p {p_adjusted:.2g} < {alpha:g} and ratio beyond ±{threshold:.0%}"
    if verdict == "unchanged":
        return f"CI inside ±{threshold:.0%}"
    if p_adjusted < alpha:
        return f"significant, but ratio {ratio:.3f} is within ±{threshold:.0%} and the CI is not"
    return f"CI {ci[0]:.3f}..{ci[1]:.3f} too wide to tell (noisy, few rounds or few runs)"
