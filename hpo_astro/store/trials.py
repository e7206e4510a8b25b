"""Trials as every reader of a store counts them: which states are finished (they count towards a budget) or hold a
place in it, whether a study maximises, the better of two values, and the running best over a sequence of trials.

(`hpo_astro.samplers.ablation` keeps its own copies: it depends on Optuna and NumPy only, to be publishable alone.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import optuna
from optuna.trial import TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # a trial that counts towards the budget
HOLDING = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)  # one that holds a place in it


def maximizes(study: optuna.Study) -> bool:
    """Whether a study maximises its objective (a multi-objective study: its first objective)."""
    return study.directions[0] == optuna.study.StudyDirection.MAXIMIZE


def is_multi_objective(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def directions_text(study: optuna.Study, objective: str | None = None) -> str:
    """ "maximized"; for a multi-objective study, each objective's direction ("maximized, minimized"), named when
    the study's `objective` ("accuracy,latency") is given ("accuracy maximized, latency minimized")."""
    words = [f"{direction.name.lower()}d" for direction in study.directions]
    names = objective.split(",") if objective else []
    if len(names) == len(words) > 1:
        return ", ".join(f"{name} {word}" for name, word in zip(names, words, strict=True))
    return ", ".join(words)


def better(value: float, than: float | None, maximize: bool) -> bool:
    """Strictly better than the best so far (`None`: there is none): a later tie never displaces the first best."""
    return than is None or (value > than if maximize else value < than)


def running_best(values: Iterable[float | None], maximize: bool) -> list[float | None]:
    """The best value so far after each position: None until the first finite value; None and non-finite values
    (a pruned trial, a diverged run) never improve it."""
    out: list[float | None] = []
    best: float | None = None
    for value in values:
        if value is not None and math.isfinite(value) and better(float(value), best, maximize):
            best = float(value)
        out.append(best)
    return out
