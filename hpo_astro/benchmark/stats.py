"""The benchmark's statistics: pure functions on arrays, no Optuna, no files (each one pinned by a test on a case
with a known answer in tests/benchmark/test_stats.py).

Conventions: `maximize` says which way is better; NaN means "no value" (a study without a complete trial yet at that
budget, a pair with a missing side) and is never the best; a repeat's values are paired across strategies (repeat r of
every strategy uses the same seed, see `hpo_astro.benchmark`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats

from hpo_astro.report.compare import WITHIN, trials_to_within
from hpo_astro.store import trials

ALPHA = 0.05
CONFIDENCE = 0.95
BAND = (2.5, 97.5)  # percentiles of the 95% band of the anytime curves
BOOTSTRAP_RESAMPLES = 9999


# --- anytime curves ---------------------------------------------------------------------------------------------


def running_best(values: Sequence[float | None], maximize: bool) -> np.ndarray:
    """Best value so far after each position (NaN until the first value; None/NaN entries never improve it)."""
    return np.array([math.nan if v is None else v for v in trials.running_best(values, maximize)], dtype=float)


def at_costs(cumulative: Sequence[float], best: Sequence[float], grid: Sequence[float]) -> np.ndarray:
    """The running best `best` (one entry per trial, `cumulative` its cumulative cost, non-decreasing) read on a
    grid of budgets: at budget t, the best of the trials whose cumulative cost is <= t (NaN before the first)."""
    cumulative = np.asarray(cumulative, dtype=float)
    best = np.asarray(best, dtype=float)
    idx = np.searchsorted(cumulative, np.asarray(grid, dtype=float), side="right") - 1
    out = np.full(len(idx), np.nan)
    ok = idx >= 0
    out[ok] = best[idx[ok]]
    return out


def at_trials(best: Sequence[float], budgets: int) -> np.ndarray:
    """The running best after 1..`budgets` trials; a study that stopped earlier (ablation's plan is shorter)
    keeps its last value: it used fewer trials for the same result."""
    best = np.asarray(best, dtype=float)
    out = np.full(budgets, np.nan)
    if len(best):
        n = min(len(best), budgets)
        out[:n] = best[:n]
        out[n:] = best[n - 1]
    return out


@dataclass(frozen=True)
class Band:
    median: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: np.ndarray  # repeats with a value at each budget


def band(curves: np.ndarray) -> Band:
    """Median and 95% band (2.5th and 97.5th percentiles) across repeats of curves shaped (repeats, budgets),
    ignoring NaN; NaN where no repeat has a value yet."""
    curves = np.atleast_2d(np.asarray(curves, dtype=float))
    n = np.sum(np.isfinite(curves), axis=0)
    with warnings.catch_warnings():  # all-NaN columns (no value yet at that budget) are NaN, as meant
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(curves, axis=0)
        low, high = np.nanpercentile(curves, BAND, axis=0)
    return Band(median, low, high, n)


def ranks(values: np.ndarray, maximize: bool) -> np.ndarray:
    """Rank of each strategy within each repeat, 1 = best, ties sharing their average rank; values shaped
    (..., strategies). NaN (no value yet) ranks below every value, tied with the other NaNs."""
    values = np.asarray(values, dtype=float)
    keyed = -values if maximize else values.copy()
    keyed[np.isnan(keyed)] = np.inf  # below every value, and tied with each other
    return scipy.stats.rankdata(keyed, method="average", axis=-1)


def mean_ranks(values: np.ndarray, maximize: bool) -> np.ndarray:
    """Mean rank of each strategy over the repeats: values shaped (repeats, ..., strategies) -> (..., strategies)."""
    return ranks(values, maximize).mean(axis=0)


# --- final quality ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float  # bootstrap 95% CI of the mean
    high: float
    n: int


def bootstrap_mean(values: Sequence[float], seed: int = 0, confidence: float = CONFIDENCE) -> Estimate:
    """Mean and its percentile-bootstrap confidence interval (scipy.stats.bootstrap, fixed seed: the same report
    every time). NaN are left out. One value, or all values equal: the interval is that value (nothing varies)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    if np.all(x == x[0]):
        return Estimate(float(x[0]), float(x[0]), float(x[0]), len(x))
    mean = float(x.mean())
    # The percentile method: BCa's acceleration is undefined for the small, often tied samples a benchmark gives
    # (scipy then returns NaN with a warning), and percentile intervals are what the HPO literature reports.
    result = scipy.stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
        vectorized=True,
    )
    return Estimate(mean, float(result.confidence_interval.low), float(result.confidence_interval.high), len(x))


def to_within(
    values: Sequence[float | None], costs: Sequence[float], maximize: bool, tolerance: float = WITHIN
) -> tuple[int | None, float | None]:
    """Trials and cost (cumulative, the trial's own included) until the running best first came within `tolerance`
    (relative) of the final best: `compare`'s "trials to within 1%", with its cost. None where nothing completed."""
    position = trials_to_within(values, maximize, tolerance)
    if position is None:
        return None, None
    return position, float(np.sum(np.asarray(costs[:position], dtype=float)))


# --- paired comparison ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of A and B over repeats; `difference` is oriented so that > 0 means A is better."""

    n: int  # pairs with both values
    statistic: float  # Wilcoxon's T (the smaller signed-rank sum; scipy's statistic)
    p_value: float
    rank_biserial: float  # matched-pairs rank-biserial correlation, -1..1: +1 = A better in every pair
    median_difference: float
    mean_difference: float


def paired_wilcoxon(a: Sequence[float], b: Sequence[float], maximize: bool) -> PairedTest:
    """Wilcoxon signed-rank test (two-sided, zero differences dropped as Wilcoxon did) of the paired values `a[i]`,
    `b[i]`, with the matched-pairs rank-biserial correlation as effect size: T from scipy.stats.wilcoxon, the p-value
    exact (`signed_rank_exact_p`) up to `EXACT_LIMIT` pairs. Pairs where either side is NaN are left out. No pair, or
    every difference zero (identical strategies): p = 1, effect 0."""
    a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_.shape != b_.shape:
        raise ValueError(f"paired samples of different lengths: {a_.shape} and {b_.shape}")
    keep = np.isfinite(a_) & np.isfinite(b_)
    d = snap((a_ - b_)[keep] if maximize else (b_ - a_)[keep])
    n = len(d)
    if n == 0:
        return PairedTest(0, math.nan, 1.0, 0.0, math.nan, math.nan)
    median, mean = float(np.median(d)), float(np.mean(d))
    nonzero = d[d != 0]
    if len(nonzero) == 0:
        return PairedTest(n, 0.0, 1.0, 0.0, median, mean)
    statistic = float(scipy.stats.wilcoxon(nonzero, zero_method="wilcox", method="asymptotic").statistic)
    if len(nonzero) <= EXACT_LIMIT:
        p = signed_rank_exact_p(nonzero)
    else:  # the normal approximation, as scipy's "auto" uses beyond 50 pairs
        p = float(scipy.stats.wilcoxon(nonzero, zero_method="wilcox", method="asymptotic").pvalue)
    return PairedTest(n, statistic, p, rank_biserial(nonzero), median, mean)


SNAP_TOLERANCE = 1e-9  # relative (absolute below 1): far below any metric's resolution, far above float rounding


def snap(differences: Sequence[float], tolerance: float = SNAP_TOLERANCE) -> np.ndarray:
    """Paired differences with float rounding taken out before they are ranked: magnitudes closer than `tolerance`
    (relative to the magnitude, absolute below 1) become equal (each takes the smallest of its cluster, so clusters
    do not chain), and a magnitude below `tolerance` becomes 0. Accuracies are counts over a split (k/150): two
    differences of the same number of cutouts are then the same float, tie, and share their rank, as the counts
    would; without this, 0.9 - 0.8933 and 0.8067 - 0.8 ranked apart and moved exact p-values by up to 11x."""
    d = np.asarray(differences, dtype=float)
    magnitude = np.abs(d)
    magnitude[magnitude < tolerance] = 0.0
    order = np.argsort(magnitude, kind="stable")
    ordered = magnitude[order]
    for i in range(1, len(ordered)):
        if ordered[i] - ordered[i - 1] <= tolerance * max(1.0, ordered[i]):
            ordered[i] = ordered[i - 1]
    magnitude[order] = ordered
    return np.where(np.isnan(d), np.nan, np.sign(d) * magnitude)


EXACT_LIMIT = 300  # pairs up to which the p-value is exact (a few milliseconds); the normal approximation beyond


def signed_rank_exact_p(differences: Sequence[float]) -> float:
    """Exact two-sided p-value of the signed-rank statistic given the observed ranks (average ranks for tied
    |differences|): the null distribution of the positive rank sum over all 2**n sign flips, by dynamic programming
    over the sums of doubled ranks. Without ties this is scipy's exact test; with ties it is what scipy computes by
    enumerating the sign flips (`PermutationMethod`, which its "auto" method does below 14 pairs), but takes
    milliseconds rather than a second per test (tests/benchmark/test_stats.py checks both equalities)."""
    d = snap(differences)
    d = d[d != 0]
    if len(d) == 0:
        return 1.0
    doubled = np.rint(2 * scipy.stats.rankdata(np.abs(d))).astype(int)  # average ranks are multiples of 1/2
    probability = np.zeros(int(doubled.sum()) + 1)
    probability[0] = 1.0
    for rank in doubled:  # each rank joins the positive sum or not, with probability 1/2
        shifted = np.zeros_like(probability)
        shifted[rank:] = probability[:-rank]
        probability = 0.5 * (probability + shifted)
    observed = int(doubled[d > 0].sum())
    cdf = np.cumsum(probability)
    below = cdf[observed]
    above = 1.0 - (cdf[observed - 1] if observed > 0 else 0.0)
    return float(min(1.0, 2.0 * min(below, above)))


def rank_biserial(differences: Sequence[float]) -> float:
    """Matched-pairs rank-biserial correlation: (R+ - R-) / (R+ + R-), with R+ and R- the sums of the ranks of the
    absolute non-zero differences (average ranks for ties) that are positive and negative."""
    d = snap(differences)
    d = d[d != 0]
    if len(d) == 0:
        return 0.0
    r = scipy.stats.rankdata(np.abs(d))
    plus, minus = r[d > 0].sum(), r[d < 0].sum()
    return float((plus - minus) / (plus + minus))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control): the i-th smallest of m p-values is multiplied
    by m - i + 1 (i from 1), made non-decreasing in that order, capped at 1. NaN stays NaN and is not counted in m."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out[order] = np.minimum(adjusted, 1.0)
    return out


def min_p_value(n: int) -> float:
    """The smallest two-sided p-value the exact Wilcoxon test can give with n pairs (every difference of one sign):
    2 / 2**n. With n <= 5 it is >= 0.0625: no difference can be significant at 0.05, however large."""
    return min(1.0, 2.0 / 2.0**n) if n > 0 else 1.0
