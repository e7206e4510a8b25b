"""Classification metrics for real (1) / bogus (0) scores: honest ones, unlike the reference study's.

Accuracy uses a real decision threshold on the sigmoid (0.5 by default), not the paper's "top third of
logits" rule (about two thirds of the samples are real, so that rule capped accuracy near 0.67-0.70
whatever the model learned). ROC AUC is threshold-free; the false-positive rate at a fixed 5% false-negative rate is the
operating point astronomers quote for real/bogus classifiers (miss at most 5% of real transients); the missed-detection
rate at a fixed 1% false-positive rate is the other one the real/bogus literature reports (a survey night's bogus
candidates outnumber its reals, so the false positives a scanner can take set the threshold).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Metrics:
    loss: float
    accuracy: float
    roc_auc: float
    precision: float
    recall: float
    f1: float
    fpr_at_5fnr: float
    threshold: float = 0.5
    mdr_at_1fpr: float = float("nan")  # NaN: not measured (a table or a record of an earlier version)
    # The operating points at a study's stated rates (`stated_rates`): NaN where none was stated, so not compared
    # (NaN is not equal to itself: two evaluations of one model would differ).
    fpr_at_fnr: float = field(default=float("nan"), compare=False)
    mdr_at_fpr: float = field(default=float("nan"), compare=False)

    def as_dict(self) -> dict[str, float]:
        out = dict(vars(self))  # flat floats: what `dataclasses.asdict` gives, without its deep copy (hot in replays)
        for name in _UNMEASURED_ABSENT:  # not measured (a table's row, a record of an earlier version): absent
            if math.isnan(out[name]):
                del out[name]
        return out


_UNMEASURED_ABSENT = ("mdr_at_1fpr", "fpr_at_fnr", "mdr_at_fpr")
# The false-negative and false-positive rates a study states for its operating-point objectives (`--objective
# fpr_at_fnr@2%`): set by the study's objective around a trial's training, read wherever metrics are computed (the
# trainer, the stacked trainer), so every epoch's validation metrics hold them. None: not stated.
_STATED_RATES: ContextVar[tuple[float | None, float | None]] = ContextVar("stated_rates", default=(None, None))


@contextmanager
def stated_rates(fnr: float | None = None, fpr: float | None = None) -> Iterator[None]:
    """Within this block, metrics also measure the FPR at `fnr` missed reals and the missed-detection rate at `fpr`
    false positives (`Metrics.fpr_at_fnr`, `Metrics.mdr_at_fpr`)."""
    token = _STATED_RATES.set((fnr, fpr))
    try:
        yield
    finally:
        _STATED_RATES.reset(token)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count one half)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over runs of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(scores)]))
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each run
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def fpr_at_fnr(labels: np.ndarray, scores: np.ndarray, fnr: float = 0.05) -> float:
    """Fraction of bogus scored at or above the highest threshold that still keeps >= (1 - fnr) of the reals."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = np.sort(scores[labels]), scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    # Missing k reals is allowed, k = floor(fnr * n_pos): threshold at the (k+1)-th lowest real score.
    k = int(np.floor(fnr * len(pos) + 1e-9))
    threshold = pos[k]
    return float((neg >= threshold).mean())


def mdr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float = 0.01) -> float:
    """Missed-detection rate (fraction of reals scored below the threshold) at the lowest threshold that lets through
    at most `fpr` of the bogus: ties count as let through, so a threshold never splits equal scores."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = scores[labels], np.sort(scores[~labels])[::-1]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    # Letting through k bogus is allowed, k = floor(fpr * n_neg): the threshold lies above the (k+1)-th highest.
    k = int(np.floor(fpr * len(neg) + 1e-9))
    threshold = np.nextafter(neg[k], np.inf)  # the smallest score above it: the (k+1)-th and its ties are rejected
    return float((pos < threshold).mean())


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, loss: float = float("nan"), threshold: float = 0.5
) -> Metrics:
    labels = np.asarray(labels).astype(bool)
    probabilities = np.nan_to_num(np.asarray(probabilities, dtype=np.float64), nan=0.5)
    predicted = probabilities >= threshold
    tp = int((predicted & labels).sum())
    fp = int((predicted & ~labels).sum())
    fn = int((~predicted & labels).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    stated_fnr, stated_fpr = _STATED_RATES.get()
    return Metrics(
        loss=float(loss),
        accuracy=float((predicted == labels).mean()) if len(labels) else float("nan"),
        roc_auc=roc_auc(labels, probabilities),
        precision=precision,
        recall=recall,
        f1=f1,
        fpr_at_5fnr=fpr_at_fnr(labels, probabilities, 0.05),
        threshold=threshold,
        mdr_at_1fpr=mdr_at_fpr(labels, probabilities, 0.01),
        fpr_at_fnr=math.nan if stated_fnr is None else fpr_at_fnr(labels, probabilities, stated_fnr),
        mdr_at_fpr=math.nan if stated_fpr is None else mdr_at_fpr(labels, probabilities, stated_fpr),
    )
