"""What `status` shows of each study in a store: its strategy, budget, trial counts by state (running and waiting,
i.e. re-queued, apart), best trial and, when asked, its top trials; for a multi-objective study, each objective's
direction and the Pareto front in place of one best trial. Read-only: a missing store is no studies, and a
study another program wrote (attributes of other types) is shown, never fatal. Also how a trial's parameters are
shown wherever trials are listed: only those that vary in the space (`varying_params`)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo_astro.errors import UserError
from hpo_astro.results.front import front_trials, objective_names
from hpo_astro.store.record import N_TRIALS_KEY, STRATEGY_KEY
from hpo_astro.store.storage import read_store, store_file
from hpo_astro.store.trials import is_multi_objective
from hpo_astro.study.pbt_lineage import budget_line

# The trial states `status` counts, in its columns' order: WAITING is a trial queued to run (a re-queued one whose
# process died or was interrupted, or an enqueued configuration), not one running.
COUNTED_STATES = ("complete", "pruned", "fail", "running", "waiting")


@dataclass
class TopTrial:
    number: int
    value: float
    seconds: float | None  # its duration, when it has both ends
    params: dict[str, Any]  # those that vary in the space


@dataclass
class FrontTrial:
    """A trial of a multi-objective study's Pareto front."""

    number: int
    values: list[float]  # one per objective, in the study's order
    seconds: float | None
    params: dict[str, Any]  # those that vary in the space


@dataclass
class StudyStatus:
    name: str
    strategy: str
    direction: str  # a multi-objective study: its directions joined by commas ("maximize,minimize")
    target: int | None
    counts: dict[str, int]
    best_value: float | None  # a multi-objective study has no best trial: None, its `front` instead
    best_params: dict[str, Any] | None
    best_trial: int | None
    top: list[TopTrial] | list[FrontTrial] = field(default_factory=list)  # multi-objective: the front's first N
    # Only for a multi-objective study: its objectives' names and directions, and its Pareto front (`front_trials`)
    objectives: list[str] | None = None
    directions: list[str] | None = None
    front: list[FrontTrial] | None = None
    budget: str | None = None  # a PBT study: its budget in member-epochs (`hpo_astro.study.pbt_lineage.budget_line`)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data (`status --format json`): every counted state (0 included), the top trials when asked;
        for a multi-objective study also `objectives`, `directions` and `front`."""
        data = asdict(self)
        data["counts"] = {state: self.counts.get(state, 0) for state in COUNTED_STATES}
        if self.front is None:
            for key in ("objectives", "directions", "front"):
                del data[key]
        if self.budget is None:
            del data["budget"]
        return data


def varying_params(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's parameters whose distribution holds more than one value: those the search chose (a dimension
    fixed to one value is the same in every trial, and only lengthens a line)."""
    return {name: value for name, value in trial.params.items() if not trial.distributions[name].single()}


def trial_seconds(trial: FrozenTrial) -> float | None:
    duration = trial.duration
    return None if duration is None else duration.total_seconds()


def top_trials(study: optuna.Study, n: int) -> list[TopTrial]:
    """The study's `n` best complete trials, best first (ties: the earlier trial first)."""
    scored = [
        (float(t.value), t)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    scored.sort(key=lambda pair: (sign * pair[0], pair[1].number))
    return [TopTrial(t.number, value, trial_seconds(t), varying_params(t)) for value, t in scored[:n]]


def pareto_front(study: optuna.Study) -> list[FrontTrial]:
    """A multi-objective study's Pareto front, best first in its first objective (ties: the earlier trial first)."""
    return [
        FrontTrial(t.number, [float(v) for v in t.values], trial_seconds(t), varying_params(t))
        for t in front_trials(study)
    ]


def study_status(storage_url: str, name: str | None = None, top: int = 0) -> list[StudyStatus]:
    """Every study of the store (or only `name`), with its `top` best complete trials (0: none)."""
    file = store_file(storage_url)
    missing = file is not None and not file.exists()  # no store, no studies: a status query never creates one
    with contextlib.nullcontext() if missing else read_store(storage_url) as storage:  # read-only: never writes
        summaries = [] if storage is None else optuna.get_all_study_summaries(storage, include_best_trial=False)
        names = [s.study_name for s in summaries]
        if name is not None:
            if name not in names:
                raise UserError(
                    f"no study named {name!r} in {storage_url}" + (f"; studies: {', '.join(names)}" if names else "")
                )
            names = [name]
        out = []
        for study_name in names:
            study = optuna.load_study(study_name=study_name, storage=storage)
            trials = study.get_trials(deepcopy=False)
            counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
            if is_multi_objective(study):
                out.append(_multi_status(study, counts, top))
                continue
            try:
                best = study.best_trial
            except ValueError:
                best = None
            out.append(
                StudyStatus(
                    name=study_name,
                    strategy=_shown(study.user_attrs.get(STRATEGY_KEY), str, "?"),
                    direction=study.direction.name.lower(),
                    target=_shown(study.user_attrs.get(N_TRIALS_KEY), int, None),
                    counts={k: v for k, v in counts.items() if v},
                    best_value=best.value if best else None,
                    best_params=best.params if best else None,
                    best_trial=best.number if best else None,
                    top=top_trials(study, top) if top else [],
                    budget=budget_line(study),
                )
            )
    return out


def _multi_status(study: optuna.Study, counts: dict[str, int], top: int) -> StudyStatus:
    """A multi-objective study's status: its directions and Pareto front, no best trial."""
    directions = [d.name.lower() for d in study.directions]
    front = pareto_front(study)
    return StudyStatus(
        name=study.study_name,
        strategy=_shown(study.user_attrs.get(STRATEGY_KEY), str, "?"),
        direction=",".join(directions),
        target=_shown(study.user_attrs.get(N_TRIALS_KEY), int, None),
        counts={k: v for k, v in counts.items() if v},
        best_value=None,
        best_params=None,
        best_trial=None,
        top=front[:top],
        objectives=objective_names(study),
        directions=directions,
        front=front,
    )


def _shown(value: object, kind: type, missing: Any) -> Any:
    """A stored attribute as `status` shows it: of the expected type, else `missing` (status lists every study, those
    another program wrote with attributes of other types included, and never fails on one)."""
    return value if isinstance(value, kind) and not isinstance(value, bool) else missing
