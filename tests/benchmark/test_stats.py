"""The benchmark's statistics (hpo_astro/benchmark/stats.py), each on a case whose answer is known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hpo_astro.benchmark import stats


def test_holm_textbook_example() -> None:
    # m = 4: sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> raised to 0.06 (monotone)
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    # where Holm rejects more than Bonferroni (0.03, 0.06, 0.075: only the first): all three at 0.05
    np.testing.assert_allclose(stats.holm([0.01, 0.02, 0.025]), [0.03, 0.04, 0.04])


def test_holm_caps_at_one_and_leaves_nan_out_of_the_count() -> None:
    np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])
    adjusted = stats.holm([0.01, math.nan, 0.02])
    assert math.isnan(adjusted[1])
    np.testing.assert_allclose(adjusted[[0, 2]], [0.02, 0.02])  # m = 2, not 3
    assert np.all(np.isnan(stats.holm([math.nan])))
    assert stats.holm([]).shape == (0,)


def test_wilcoxon_identical_samples_are_not_different() -> None:
    a = [0.9, 0.8, 0.85, 0.7, 0.95, 0.6, 0.75, 0.9]
    test = stats.paired_wilcoxon(a, list(a), maximize=True)
    assert test.p_value == 1.0 and test.rank_biserial == 0.0 and test.median_difference == 0.0
    assert test.n == 8


def test_wilcoxon_clearly_better_is_significant_with_the_exact_p_value() -> None:
    b = np.linspace(0.6, 0.9, 8)
    a = b + 0.02  # A better in each of 8 pairs: exact two-sided p = 2 / 2**8
    test = stats.paired_wilcoxon(a, b, maximize=True)
    assert test.p_value == pytest.approx(2 / 256)
    assert test.rank_biserial == 1.0 and test.median_difference == pytest.approx(0.02)
    # the same numbers as a loss (minimised): A is now worse in every pair
    worse = stats.paired_wilcoxon(a, b, maximize=False)
    assert worse.p_value == pytest.approx(2 / 256) and worse.rank_biserial == -1.0
    assert worse.median_difference == pytest.approx(-0.02)


def test_wilcoxon_statistic_p_value_and_effect_size_by_hand() -> None:
    # differences 1..5 and -6: R+ = 15, R- = 6, T = 6; subsets of {1..6} with rank sum <= 6: 14 of 64 -> p = 28/64
    d = np.array([1, 2, 3, 4, 5, -6], dtype=float)
    test = stats.paired_wilcoxon(d, np.zeros(6), maximize=True)
    assert test.statistic == 6.0
    assert test.p_value == pytest.approx(28 / 64)
    assert test.rank_biserial == pytest.approx((15 - 6) / 21)


def test_wilcoxon_drops_zero_differences_and_missing_pairs() -> None:
    a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, math.nan]
    b = [1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]  # first pair tied, last pair missing
    test = stats.paired_wilcoxon(a, b, maximize=True)
    assert test.n == 7  # pairs with both values
    assert test.p_value == pytest.approx(2 / 2**6)  # six non-zero differences, all positive
    assert stats.paired_wilcoxon([math.nan], [1.0], maximize=True).p_value == 1.0
    with pytest.raises(ValueError):
        stats.paired_wilcoxon([1.0], [1.0, 2.0], maximize=True)


def test_min_p_value_says_when_significance_is_possible() -> None:
    assert stats.min_p_value(5) == 0.0625  # five repeats: never significant at 0.05
    assert stats.min_p_value(6) == 0.03125
    assert stats.min_p_value(0) == 1.0


def test_bootstrap_ci_covers_the_mean_of_a_known_distribution() -> None:
    rng = np.random.default_rng(0)
    estimate = stats.bootstrap_mean(rng.normal(3.0, 1.0, size=200))
    assert estimate.low < 3.0 < estimate.high
    assert estimate.high - estimate.low == pytest.approx(2 * 1.96 / math.sqrt(200), rel=0.2)  # normal theory
    # coverage over repeated samples of a skewed distribution (exponential, mean 1) is near the nominal 95%
    covered = [
        (e := stats.bootstrap_mean(rng.exponential(1.0, size=40), seed=i)).low <= 1.0 <= e.high for i in range(200)
    ]
    assert 0.88 <= np.mean(covered) <= 0.99


def test_bootstrap_ci_of_degenerate_samples() -> None:
    assert stats.bootstrap_mean([0.7, 0.7, 0.7]) == stats.Estimate(0.7, 0.7, 0.7, 3)
    assert stats.bootstrap_mean([0.5]) == stats.Estimate(0.5, 0.5, 0.5, 1)
    empty = stats.bootstrap_mean([math.nan])
    assert empty.n == 0 and math.isnan(empty.mean)
    assert stats.bootstrap_mean([1.0, 2.0, 3.0, math.nan], seed=1) == stats.bootstrap_mean([1.0, 2.0, 3.0], seed=1)


def test_ranks_with_ties_and_missing_values() -> None:
    values = np.array([[0.9, 0.8, 0.9], [0.7, math.nan, 0.6], [math.nan, math.nan, 0.5]])
    np.testing.assert_allclose(stats.ranks(values, maximize=True), [[1.5, 3, 1.5], [1, 3, 2], [2.5, 2.5, 1]])
    np.testing.assert_allclose(stats.ranks(values, maximize=False), [[2.5, 1, 2.5], [2, 3, 1], [2.5, 2.5, 1]])
    np.testing.assert_allclose(stats.mean_ranks(values, maximize=True), [5 / 3, 8.5 / 3, 4.5 / 3])
    # identical strategies tie at every repeat: each gets the average rank
    same = np.tile([[0.8, 0.8]], (4, 1))
    np.testing.assert_allclose(stats.mean_ranks(same, maximize=True), [1.5, 1.5])
    # (repeats, budgets, strategies) -> (budgets, strategies)
    assert stats.mean_ranks(np.zeros((5, 7, 3)), maximize=True).shape == (7, 3)


def test_running_best_and_budgets() -> None:
    best = stats.running_best([None, 0.5, 0.4, math.nan, 0.8, 0.7], maximize=True)
    np.testing.assert_allclose(best, [math.nan, 0.5, 0.5, 0.5, 0.8, 0.8])
    np.testing.assert_allclose(stats.running_best([0.5, 0.4, 0.6], maximize=False), [0.5, 0.4, 0.4])
    # trial budgets: a study that stopped after 3 trials keeps its last value
    np.testing.assert_allclose(stats.at_trials([math.nan, 0.5, 0.7], 5), [math.nan, 0.5, 0.7, 0.7, 0.7])
    np.testing.assert_allclose(stats.at_trials([0.1, 0.2, 0.3], 2), [0.1, 0.2])
    assert np.all(np.isnan(stats.at_trials([], 3)))
    # cost budgets: trials end at cumulative costs 2, 5, 9; the best after each is 0.5, 0.6, 0.9
    np.testing.assert_allclose(
        stats.at_costs([2, 5, 9], [0.5, 0.6, 0.9], [0, 1.9, 2, 4.99, 5, 8, 9, 100]),
        [math.nan, math.nan, 0.5, 0.5, 0.6, 0.6, 0.9, 0.9],
    )


def test_band_is_median_and_central_95_percent() -> None:
    curves = np.array([[float(r), math.nan] for r in range(101)])  # 0..100 at the first budget, nothing at the second
    band = stats.band(curves)
    assert band.median[0] == 50 and band.low[0] == pytest.approx(2.5) and band.high[0] == pytest.approx(97.5)
    assert math.isnan(band.median[1]) and band.n.tolist() == [101, 0]


def test_time_and_trials_to_within_one_percent() -> None:
    # maximised, final best 1.0, bound 0.99: first reached by the 5th trial (the pruned 2nd still counts)
    values = [0.5, None, 0.9, 0.95, 1.0]
    assert stats.to_within(values, [1, 2, 3, 4, 5], maximize=True) == (5, 15.0)
    assert stats.to_within([0.5, 0.995, 1.0], [1, 2, 3], maximize=True) == (2, 3.0)
    # minimised, final best 0.2, bound 0.202
    assert stats.to_within([0.5, 0.201, 0.2], [10, 20, 30], maximize=False) == (2, 30.0)
    assert stats.to_within([None, None], [1, 1], maximize=True) == (None, None)


@pytest.mark.parametrize(
    "d",
    [
        [0.01, 0.01, 0.02, -0.01, 0.03, 0.02, 0.01, 0.04, 0.01, -0.02, 0.03, 0.01, 0.02],  # ties
        [0.02, -0.01, 0.02, 0.02, -0.02, 0.01],
        [1.0, 2.0, 3.0, 4.0, 5.0, -6.0, 7.0, 8.0],  # no ties
        [0.5, -1.5, 2.5],
    ],
)
def test_exact_p_value_equals_scipys_exact_and_permutation_tests(d: list[float]) -> None:
    import scipy.stats

    exhaustive = scipy.stats.wilcoxon(d, method=scipy.stats.PermutationMethod(n_resamples=np.inf)).pvalue
    assert stats.signed_rank_exact_p(d) == pytest.approx(exhaustive, abs=1e-12)
    if len(set(np.abs(d))) == len(d):
        assert stats.signed_rank_exact_p(d) == pytest.approx(scipy.stats.wilcoxon(d, method="exact").pvalue)


def test_many_pairs_use_the_normal_approximation() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(0.1, 1.0, size=stats.EXACT_LIMIT + 50)
    import scipy.stats

    expected = scipy.stats.wilcoxon(a, method="asymptotic").pvalue
    assert stats.paired_wilcoxon(a, np.zeros_like(a), maximize=True).p_value == pytest.approx(expected)


def test_differences_of_k_over_n_accuracies_rank_as_the_counts_do() -> None:
    """Accuracies are counts over a split (k/150): the Wilcoxon test of the accuracies must be the test of the
    counts. Differences of the same number of cutouts are not always the same float (0.9 - 0.8933 vs 0.8067 - 0.8);
    ranked unsnapped, they broke ties the counts have and moved the exact p-value."""
    rng = np.random.default_rng(3)
    a_counts = rng.integers(120, 140, size=24)
    b_counts = a_counts - rng.choice([-3, -2, -1, 0, 1, 2, 3, 4, 5], size=24)
    a, b = a_counts / 150, b_counts / 150
    raw = np.abs(a - b)[a != b]
    assert len(np.unique(raw)) > len(np.unique(np.abs(a_counts - b_counts)[a_counts != b_counts]))  # floats split ties
    for maximize in (True, False):
        floats, counts = stats.paired_wilcoxon(a, b, maximize), stats.paired_wilcoxon(a_counts, b_counts, maximize)
        assert floats.p_value == pytest.approx(counts.p_value, rel=1e-12)
        assert floats.statistic == pytest.approx(counts.statistic)
        assert floats.rank_biserial == pytest.approx(counts.rank_biserial, rel=1e-12)
    assert stats.signed_rank_exact_p(a - b) == pytest.approx(stats.signed_rank_exact_p(a_counts - b_counts), rel=1e-12)


def test_snap_joins_only_what_float_rounding_split() -> None:
    assert stats.snap([0.1 + 0.2, 0.3, -0.3, 1e-12, 0.30001]).tolist() == [0.3, 0.3, -0.3, 0.0, 0.30001]
    assert stats.snap([1.0, 1.0 + 5e-10, 1.0 + 1e-9 + 1e-12]).tolist()[:2] == [1.0, 1.0]
    assert np.isnan(stats.snap([np.nan, 1.0])[0])
