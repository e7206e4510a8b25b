"""Metrics against their definitions, computed the slow obvious way."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hpo_astro.core.metrics import classification_metrics, fpr_at_fnr, mdr_at_fpr, roc_auc


def _auc_pairwise(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_pairwise_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60) + 0.3 * labels, 1)  # rounding creates ties
    assert roc_auc(labels, scores) == pytest.approx(_auc_pairwise(labels, scores))


def test_roc_auc_extremes() -> None:
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(labels, np.full(4, 0.5)) == 0.5
    assert np.isnan(roc_auc(np.ones(3), np.arange(3.0)))


def test_fpr_at_fixed_fnr() -> None:
    # 20 reals with scores 0.05..1.0; allowing 5% misses = 1 real below the threshold -> threshold 0.10
    reals = np.linspace(0.05, 1.0, 20)
    bogus = np.array([0.01, 0.09, 0.10, 0.5, 0.95])
    labels = np.r_[np.ones(20), np.zeros(5)]
    scores = np.r_[reals, bogus]
    assert fpr_at_fnr(labels, scores, 0.05) == pytest.approx(3 / 5)  # 0.10, 0.5, 0.95 pass
    thresholds = np.unique(scores)
    # brute force: the lowest false-positive rate among thresholds that miss at most 5% of reals
    best = min((bogus >= t).mean() for t in thresholds if (reals < t).mean() <= 0.05)
    assert fpr_at_fnr(labels, scores, 0.05) == pytest.approx(best)


def test_threshold_metrics() -> None:
    labels = np.array([1, 1, 1, 0, 0, 1])
    probs = np.array([0.9, 0.6, 0.4, 0.7, 0.1, 0.5])
    m = classification_metrics(labels, probs, loss=0.3)
    # predicted positive: 0.9 0.6 0.7 0.5 -> TP 3 (0.9, 0.6, 0.5), FP 1 (0.7), FN 1 (0.4), TN 1
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.precision == pytest.approx(3 / 4) and m.recall == pytest.approx(3 / 4)
    assert m.f1 == pytest.approx(0.75) and m.loss == 0.3
    stricter = classification_metrics(labels, probs, threshold=0.8)
    assert stricter.recall == pytest.approx(1 / 4) and stricter.threshold == 0.8


def test_nan_scores_do_not_crash() -> None:
    m = classification_metrics(np.array([1, 0, 1]), np.array([np.nan, np.nan, np.nan]))
    assert m.roc_auc == 0.5 and 0 <= m.accuracy <= 1


def test_missed_detection_rate_at_a_fixed_false_positive_rate() -> None:
    """100 bogus scored 0.00 ... 0.99 and 10 reals: 1% FPR lets one bogus through (0.99), so the threshold lies just
    above 0.98 and the reals at 0.2, 0.5 and 0.97 are missed (0.981 is not)."""
    bogus = np.arange(100) / 100
    reals = np.array([0.5, 0.97, 0.985, 0.99, 0.995, 1.0, 1.0, 0.999, 0.2, 0.981])
    labels, scores = np.r_[np.zeros(100), np.ones(10)], np.r_[bogus, reals]
    assert mdr_at_fpr(labels, scores, 0.01) == pytest.approx(0.3)
    assert mdr_at_fpr(labels, scores, 0.0) == pytest.approx(0.6)  # nothing above 0.99 but 0.995, 1.0, 1.0, 0.999
    tied = np.r_[np.full(100, 0.9), reals]  # every bogus tied: letting one through lets all through, so none may be
    assert mdr_at_fpr(labels, tied, 0.01) == pytest.approx(0.2)  # only the reals at 0.2 and 0.5 are missed
    assert np.isnan(mdr_at_fpr(np.ones(5), np.linspace(0, 1, 5)))  # one class: undefined
    metrics = classification_metrics(labels, scores)
    assert metrics.mdr_at_1fpr == pytest.approx(0.3) and "mdr_at_1fpr" in metrics.as_dict()
