"""A study's search statistics, for `compare` and the benchmark: its trials by state, its total and spanned wall time,
and how many finished trials it needed to come within 1% of its final best (the definitions are `compare`'s).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from hpo_astro.store.trials import FINISHED, is_multi_objective

WITHIN = 0.01  # "trials to within 1% of the final best"


@dataclass(frozen=True)
class SearchStats:
    n_finished: int  # complete + pruned: the budget's unit
    n_complete: int
    n_pruned: int
    n_failed: int
    wall_time_sum_s: float  # sum of the durations of every ended trial
    wall_time_span_s: float  # first trial start to last trial end
    trials_to_within: int | None  # finished trials needed to come within WITHIN of the final best


def trials_to_within(values: Sequence[float | None], maximize: bool, tolerance: float = WITHIN) -> int | None:
    """1-based position of the first value within `tolerance` (relative) of the best; None marks trials without
    a value (pruned), which still count. The running best crosses the bound exactly when one value does."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    best = max(finite) if maximize else min(finite)
    bound = best - tolerance * abs(best) if maximize else best + tolerance * abs(best)
    for position, value in enumerate(values, start=1):
        if value is not None and math.isfinite(value) and (value >= bound if maximize else value <= bound):
            return position
    return None  # pragma: no cover - the best value itself is within the bound


def search_stats(study: optuna.Study) -> SearchStats:
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    finished = [t for t in trials if t.state in FINISHED]
    ended = [t for t in trials if t.datetime_start is not None and t.datetime_complete is not None]
    span = (max(t.datetime_complete for t in ended) - min(t.datetime_start for t in ended)) if ended else None
    multi = is_multi_objective(study)  # no best value: no "trials to within 1% of the best"
    values = [t.value if t.state == TrialState.COMPLETE and not multi else None for t in finished]
    return SearchStats(
        n_finished=len(finished),
        n_complete=sum(t.state == TrialState.COMPLETE for t in trials),
        n_pruned=sum(t.state == TrialState.PRUNED for t in trials),
        n_failed=sum(t.state == TrialState.FAIL for t in trials),
        wall_time_sum_s=sum(t.duration.total_seconds() for t in ended if t.duration is not None),
        wall_time_span_s=span.total_seconds() if span is not None else 0.0,
        trials_to_within=trials_to_within(values, study.directions[0] == optuna.study.StudyDirection.MAXIMIZE),
    )
