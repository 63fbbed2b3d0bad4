"""reports.stats on synthetic, seeded timing samples: error rates, power, correction, verdict rule."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from reports.stats import (
    BootstrapRatio,
    benjamini_hochberg,
    bootstrap_medians,
    classify,
    corrected_ci_level,
    holm,
    judge_family,
    ratio_between_runs,
    ratio_of_medians,
    student_t_critical,
    student_t_two_sided_p,
)

CELLS = 15
TRIALS = 200
FLAGGED = ("slower", "faster")


def timings(rng: np.random.Generator, rounds: int, factor: float = 1.0, outlier_rate: float = 0.0) -> np.ndarray:
    """Seconds per round: lognormal with CV ~3 %; outliers are rounds 1.2-2x slower (interference only slows)."""
    seconds = factor * 0.01 * rng.lognormal(0.0, 0.03, rounds)
    outliers = rng.random(rounds) < outlier_rate
    seconds[outliers] *= rng.uniform(1.2, 2.0, outliers.sum())
    return seconds


def simulate(
    rounds: int,
    factors: list[float],
    *,
    outlier_rate: float = 0.0,
    trials: int = TRIALS,
    seed: int = 0,
    correction: str = "bh",
) -> np.ndarray:
    """Verdicts, shape (trials, cells): each trial compares one BASE run with one HEAD run whose cell i is factors[i]
    slower."""
    rng = np.random.default_rng(seed)
    verdicts = []
    for _ in range(trials):
        estimates = [
            ratio_of_medians(
                [timings(rng, rounds, factor, outlier_rate)], [timings(rng, rounds, 1.0, outlier_rate)], rng
            )
            for factor in factors
        ]
        verdicts.append([verdict.verdict for verdict in judge_family(estimates, correction=correction)[0]])
    return np.array(verdicts)


def simulate_runs(
    runs: int, factors: list[float], *, drift: float, rounds: int = 10, trials: int = TRIALS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Verdicts (trials, cells) from several runs per side, and from the first run of each side alone.

    Every run of a cell is off by its own lognormal factor with sigma `drift` (whole-run drift: the rounds within
    one run do not show it), on top of the rounds' CV of 3 %.
    """
    rng = np.random.default_rng(seed)
    between, single = [], []
    for _ in range(trials):
        samples = [
            [
                [timings(rng, rounds, factor * rng.lognormal(0.0, drift)) for _ in range(runs)]
                for factor in (1.0, head_factor)
            ]
            for head_factor in factors
        ]
        log_medians = [[np.log(np.median(side, axis=1)) for side in cell] for cell in samples]
        between.append(judge_family([ratio_between_runs(base, head) for base, head in log_medians])[0])
        single.append(judge_family([ratio_of_medians([head[0]], [base[0]], rng) for base, head in samples])[0])
    return tuple(
        np.array([[verdict.verdict for verdict in trial] for trial in verdicts]) for verdicts in (between, single)
    )


def test_drift_between_runs_fools_one_run_per_side_but_not_several():
    """A/A where whole runs drift by 8 %: rounds alone call many cells changed, five runs per side almost none."""
    between, single = simulate_runs(5, [1.0] * CELLS, drift=0.08, trials=100, seed=11)
    assert np.isin(between, FLAGGED).mean() <= 0.01
    assert np.isin(single, FLAGGED).mean() >= 0.3


def test_ten_percent_slowdown_of_every_cell_is_found_from_five_runs_per_side():
    between, _ = simulate_runs(5, [1.10] * CELLS, drift=0.02, seed=12)
    assert (between == "slower").mean() >= 0.95


def test_two_runs_per_side_under_heavy_drift_are_inconclusive_not_a_verdict():
    between, _ = simulate_runs(2, [1.10] * CELLS, drift=0.08, trials=50, seed=13)
    assert (between == "inconclusive").mean() >= 0.8 and np.isin(between, ("faster", "unchanged")).mean() <= 0.01


def test_ratio_between_runs_is_the_pooled_t_test_on_log_medians():
    rng = np.random.default_rng(14)
    base, head = rng.normal(0.0, 0.05, 5), rng.normal(0.08, 0.05, 4)
    estimate = ratio_between_runs(base, head)
    expected = scipy_stats.ttest_ind(head, base, equal_var=True)
    assert estimate.ratio == pytest.approx(np.exp(head.mean() - base.mean())) and estimate.dof == 7
    assert estimate.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    for level in (0.95, 0.9979):
        np.testing.assert_allclose(np.log(estimate.ci(level)), expected.confidence_interval(level), rtol=1e-9)
    identical = ratio_between_runs([0.1, 0.1], [0.1, 0.1])
    assert identical.p_value == 1.0 and identical.ci(0.95) == (1.0, 1.0)
    with pytest.raises(ValueError, match="at least two runs per side"):
        ratio_between_runs([0.1], [0.2, 0.3])


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 7, 8, 18, 101])
def test_student_t_matches_scipy(dof):
    for t in (0.0, 0.3, 1.0, 2.5, 4.47, 12.0):
        assert student_t_two_sided_p(t, dof) == pytest.approx(2 * scipy_stats.t.sf(t, dof), rel=1e-9, abs=1e-14)
    for level in (0.5, 0.95, 0.9979, 0.99999):
        assert student_t_critical(level, dof) == pytest.approx(scipy_stats.t.ppf(0.5 + level / 2, dof), rel=1e-9)


@pytest.mark.parametrize("rounds", [5, 10])
def test_identical_runs_flag_almost_nothing(rounds):
    """A/A: 200 trials x 15 cells with 3 % outlying rounds; at most 1 % of cells may be called slower or faster."""
    verdicts = simulate(rounds, [1.0] * CELLS, outlier_rate=0.03, seed=rounds)
    assert np.isin(verdicts, FLAGGED).mean() <= 0.01


def test_ten_percent_slowdown_of_every_cell_is_found_with_five_rounds():
    verdicts = simulate(5, [1.10] * CELLS, seed=1)
    assert (verdicts == "slower").mean() >= 0.95


def test_ten_percent_slowdown_of_one_cell_among_fifteen_is_found_with_ten_rounds():
    verdicts = simulate(10, [1.10] + [1.0] * (CELLS - 1), seed=2)
    assert (verdicts[:, 0] == "slower").mean() >= 0.95
    assert np.isin(verdicts[:, 1:], FLAGGED).mean() <= 0.01


def test_speedup_is_faster_and_many_rounds_prove_unchanged():
    verdicts = simulate(30, [1 / 1.10, 1.0], trials=50, seed=3)
    assert (verdicts[:, 0] == "faster").mean() >= 0.95
    assert (verdicts[:, 1] == "unchanged").mean() >= 0.8


def test_bootstrap_medians_match_resampling():
    """The order-statistic shortcut has the distribution of the median of a real resample, odd and even n."""
    rng = np.random.default_rng(4)
    for rounds in (5, 6):
        sample = rng.lognormal(0, 0.1, rounds)
        shortcut = bootstrap_medians(sample, 100_000, rng)
        resampled = np.median(rng.choice(sample, (100_000, rounds)), axis=1)
        assert scipy_stats.ks_2samp(shortcut, resampled).statistic < 0.01
        assert set(np.round(shortcut, 12)) <= set(np.round(resampled, 12)) | set(
            np.round(np.add.outer(sample, sample).ravel() / 2, 12)
        )


def test_ratio_of_medians_is_deterministic_and_brackets_the_truth():
    rng = np.random.default_rng(5)
    base, head = timings(rng, 20), timings(rng, 20, 1.2)
    first = ratio_of_medians([head], [base], np.random.default_rng(0))
    again = ratio_of_medians([head], [base], np.random.default_rng(0))
    assert first.ratio == pytest.approx(np.median(head) / np.median(base))
    assert first.p_value == again.p_value and first.ci(0.95) == again.ci(0.95)
    low, high = first.ci(0.95)
    assert low < first.ratio < high and low > 1.1 and first.p_value < 0.001


def test_reference_ratio_cancels_a_machine_wide_factor():
    """(head_m / head_ref) / (base_m / base_ref): a head machine 2x slower on everything changes nothing."""
    rng = np.random.default_rng(6)
    base_method, base_reference = timings(rng, 20), timings(rng, 20, 0.5)
    head_method, head_reference = 2 * timings(rng, 20), 2 * timings(rng, 20, 0.5)
    estimate = ratio_of_medians([head_method, base_reference], [head_reference, base_method], rng)
    low, high = estimate.ci(0.99)
    assert estimate.ratio == pytest.approx(1.0, abs=0.05) and low < 1.0 < high


def test_a_term_of_several_samples_is_the_sum_of_their_medians():
    """A floor made of two floor cells: cell / (floor_a + floor_b), each run's rounds bootstrapped."""
    rng = np.random.default_rng(9)
    base, head = timings(rng, 20), timings(rng, 20, 1.3)
    base_floor, head_floor = (
        [timings(rng, 20, 0.3), timings(rng, 20, 0.5)],
        [timings(rng, 20, 0.3), timings(rng, 20, 0.5)],
    )
    estimate = ratio_of_medians([head, base_floor], [base, head_floor], rng)
    expected = (np.median(head) / sum(map(np.median, head_floor))) / (np.median(base) / sum(map(np.median, base_floor)))
    assert estimate.ratio == pytest.approx(expected)
    low, high = estimate.ci(0.95)
    assert 1.1 < low < estimate.ratio < high


def test_small_slowdown_with_five_rounds_is_inconclusive():
    """2 % slower with 5 rounds: nothing provable either way, so inconclusive rather than a verdict."""
    verdicts = simulate(5, [1.02] * CELLS, trials=20, seed=7)
    assert (verdicts == "inconclusive").mean() >= 0.9


def test_untestable_cells_are_inconclusive_and_leave_the_family():
    rng = np.random.default_rng(8)
    estimate = ratio_of_medians([timings(rng, 10, 1.3)], [timings(rng, 10)], rng)
    verdicts, level = judge_family([estimate, "only 3 rounds"], correction="holm")
    assert [verdict.verdict for verdict in verdicts] == ["slower", "inconclusive"]
    assert verdicts[1].reason == "only 3 rounds" and verdicts[1].estimate is None
    assert verdicts[0].p_adjusted == estimate.p_value  # one tested cell: no correction
    assert level == pytest.approx(0.95)


def test_holm_matches_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])


def test_benjamini_hochberg_matches_scipy():
    rng = np.random.default_rng(9)
    for size in (1, 2, 15, 40):
        p = rng.random(size) ** 3
        np.testing.assert_allclose(benjamini_hochberg(p), scipy_stats.false_discovery_control(p, method="bh"))
    np.testing.assert_allclose(benjamini_hochberg([0.01, 0.02, 0.03]), [0.03, 0.03, 0.03])


def test_bh_finds_more_than_holm_when_many_cells_change():
    p = [0.02] * 10
    assert (benjamini_hochberg(p) < 0.05).all() and not (holm(p) < 0.05).any()


def test_ci_level_follows_the_correction():
    assert corrected_ci_level(0.05, 10, 0, "holm") == pytest.approx(0.995)
    assert corrected_ci_level(0.05, 10, 4, "holm") == pytest.approx(0.995)
    assert corrected_ci_level(0.05, 10, 4, "bh") == pytest.approx(0.98)
    assert corrected_ci_level(0.05, 10, 0, "bh") == pytest.approx(0.995)


@pytest.mark.parametrize(
    ("ratio", "ci", "p_adjusted", "expected"),
    [
        (1.10, (1.02, 1.20), 0.01, "slower"),  # significant and beyond 5 %, CI need not clear 1.05
        (0.90, (0.85, 0.97), 0.01, "faster"),
        (1.10, (0.98, 1.25), 0.20, "inconclusive"),  # large but not significant
        (1.03, (1.02, 1.04), 0.001, "unchanged"),  # significant but small: proven within 5 %
        (1.03, (1.01, 1.07), 0.01, "inconclusive"),  # significant, small, could still be 7 %
        (1.00, (0.96, 1.04), 0.90, "unchanged"),
    ],
)
def test_classify(ratio, ci, p_adjusted, expected):
    assert classify(ratio, ci, p_adjusted, alpha=0.05, threshold=0.05) == expected


def test_estimate_ci_is_a_percentile_interval():
    estimate = BootstrapRatio(ratio=1.0, p_value=1.0, log_replicates=np.log(np.linspace(0.9, 1.1, 1001)))
    low, high = estimate.ci(0.9)
    assert low == pytest.approx(0.91) and high == pytest.approx(1.09)
