"""A multi-objective study's result as the readers show it (`status`, `compare`, `report`): its Pareto front
(Optuna's `study.best_trials`: the complete trials no other complete trial beats in every objective), in a stable
order, its objectives by name, and the front trials' evaluations, cached in the store as a single best trial's are.

The evaluation cache (`hpo_astro.results.evaluate`) keeps the entries of one trial, the best; a front has several,
so once its trials are evaluated the cache is set to hold exactly the front's entries (when it does not already), and
a second `compare` or `report` is instant too.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from hpo_astro.results.evaluate import (
    Evaluation,
    Events,
    NoCompletedTrial,
    best_evaluation,
    state_counts,
)
from hpo_astro.store.record import OBJECTIVE_KEY


def objective_names(study: optuna.Study) -> list[str]:
    """The study's objectives by name, one per direction: those of its `objective` attribute ("accuracy,latency"),
    else Optuna's metric names, else "objective 1", "objective 2"... (a study another program made)."""
    n = len(study.directions)
    recorded = study.user_attrs.get(OBJECTIVE_KEY)
    names = recorded.split(",") if isinstance(recorded, str) else []
    if len(names) == n and all(names):
        return names
    metrics = study.metric_names
    if metrics is not None and len(metrics) == n:
        return list(metrics)
    return ["objective"] if n == 1 else [f"objective {i}" for i in range(1, n + 1)]


def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto front, best first in the first objective (ties: the earlier trial first)."""
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return sorted(study.best_trials, key=lambda t: (sign * float(t.values[0]), t.number))


def value_text(value: float) -> str:
    """An objective's value as tables show it: a count (parameters, MACs) whole, a latency in microseconds to 0.1,
    a metric to 4 decimals."""
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value.is_integer() and abs(value) >= 1:
        return str(int(value))
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4f}"


def front_evaluations(
    study: optuna.Study,
    data: Path | None = None,
    events: Events | None = None,
    memo: dict | None = None,
    url: str | None = None,
) -> list[tuple[FrozenTrial, Evaluation]]:
    """Each front trial (`front_trials` order) with its evaluation on train, val and test (`best_evaluation`: cached,
    else rebuilt from its kept weights or retrained; the cache keeps every front trial's entry). A study
    without a complete trial is a NoCompletedTrial error that says what it holds."""
    trials = front_trials(study)
    if not trials:
        held = ", ".join(f"{n} {state}" for state, n in state_counts(study).items()) or "no trials"
        raise NoCompletedTrial(f"study {study.study_name!r} has no completed trial ({held}): it has no Pareto front")
    return [(trial, best_evaluation(study, trial, data, events, memo, url)) for trial in trials]
