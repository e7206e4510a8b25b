"""A multi-objective trial's values and weights (`hpo_astro.study.objectives`): each objective read from the trial's
validation metrics or its measured inference cost, and the weights kept when the trial is on the study's Pareto
front as it finishes.

A trial dominated when it finishes stays dominated (the front only moves forward), so the trials that can ever be on
the front are exactly those that kept their weights: `export` finds the weights of every point of the final front.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from hpo_astro.core.cost import InferenceCost
from hpo_astro.store.record import WEIGHTS_ATTR, WEIGHTS_MIMETYPE
from hpo_astro.study.objectives import ObjectiveSpec


def objective_values(
    objectives: Sequence[ObjectiveSpec], val_metrics: Mapping[str, float], cost: InferenceCost | None
) -> list[float]:
    """The trial's value of each objective, in the study's order: the metrics from its validation metrics (the mean
    over its runs), the costs as measured. A metric that could not be measured (NaN: a diverged run) is the worst
    value there is, -inf or +inf: not a number such as 1e9 that would stretch a benchmark's hypervolume box or pass
    for a measurement; such a trial is on the front only where nothing beats it on another objective, and `--pick`
    never takes it."""
    values = []
    for spec in objectives:
        if spec.is_cost:
            assert cost is not None  # measured whenever an objective is a cost
            values.append(float(getattr(cost, spec.key)))
            continue
        raw = float(val_metrics.get(spec.key.removeprefix("val_"), math.nan))
        values.append(raw if math.isfinite(raw) else (-math.inf if spec.maximize else math.inf))
    return values


def dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    """`a` is at least as good as `b` in every objective and better in one."""
    pairs = [(x, y) if not m else (-x, -y) for x, y, m in zip(a, b, maximize, strict=True)]
    return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def on_front(values: Sequence[float], others: Sequence[Sequence[float]], maximize: Sequence[bool]) -> bool:
    """No other point dominates `values`."""
    return not any(dominates(other, values, maximize) for other in others)


def keep_if_on_front(
    trial: optuna.Trial,
    values: Sequence[float],
    weights: Mapping[str, torch.Tensor],
    store: optuna.artifacts.FileSystemArtifactStore,
) -> None:
    """Upload the trial's weights as its artifact (named by its `weights_artifact` attribute) when no finished trial
    dominates it. Two workers finishing at once may both keep theirs: the front decides later which one counts."""
    study = trial.study
    maximize = [d == optuna.study.StudyDirection.MAXIMIZE for d in study.directions]
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not on_front(values, [t.values for t in done if t.values is not None], maximize):
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"trial-{trial.number}-weights.pt"
        torch.save(dict(weights), path)
        artifact_id = optuna.artifacts.upload_artifact(
            artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype=WEIGHTS_MIMETYPE
        )
    trial.set_user_attr(WEIGHTS_ATTR, artifact_id)


def front_weights(trial: optuna.trial.FrozenTrial) -> str | None:
    """The artifact id of a multi-objective trial's kept weights (None: it was dominated when it finished)."""
    value: Any = trial.user_attrs.get(WEIGHTS_ATTR)
    return value if isinstance(value, str) and value else None
