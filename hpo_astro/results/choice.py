"""Which trial a reader takes as a study's best (`compare`, `report`, `export`): the best value of the search, or,
once the study has a confirmation (`hpo-astro confirm`, `hpo_astro.study.confirm`), the finalist with the best
confirmed mean; `Choice.describe` says which, in words the outputs print."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo_astro.results.evaluate import NoCompletedTrial, state_counts
from hpo_astro.store.record import CONFIRMATION_ATTR

if TYPE_CHECKING:
    from hpo_astro.study.confirm import Confirmation


@dataclass(frozen=True)
class Choice:
    """The trial whose configuration a reader takes as the study's best, and why: the best value the search measured,
    or, once the study has a confirmation (`hpo-astro confirm`), the best confirmed mean."""

    trial: FrozenTrial
    confirmation: Confirmation | None = None
    picked: str | None = None  # how a pick rule chose it (`hpo_astro.results.pick`)

    def describe(self) -> str:
        if self.picked is not None:
            return self.picked
        best = self.confirmation.best if self.confirmation is not None else None
        if self.confirmation is None or best is None:
            return "the best value of the search"
        low, high = best.ci
        return (
            f"the best confirmed mean, {best.mean:.4f} (95% CI {low:.4f} to {high:.4f}) over {len(best.values)} fresh "
            f"seeds in study {self.confirmation.study!r} (its search value: {best.search_value:.4f})"
        )


def choose_trial(study: optuna.Study, pick: str | None = None) -> Choice:
    """The study's best configuration: the trial the rule `pick` takes (`hpo_astro.results.pick`) when one is given;
    else its confirmation's best confirmed mean when it has a confirmation with a confirmed finalist, else Optuna's
    best complete trial; a multi-objective study without a rule: its front's best value of its first objective. A
    study without a complete trial is a NoCompletedTrial error that says what it holds."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        counts = state_counts(study)
        held = ", ".join(f"{n} {state}" for state, n in counts.items()) or "no trials"
        raise NoCompletedTrial(f"study {study.study_name!r} has no completed trial ({held}): it has no best model")
    if pick is not None or len(study.directions) > 1:
        from hpo_astro.results.front import objective_names
        from hpo_astro.results.pick import parse_pick, pick_trial

        names = objective_names(study)
        rule = parse_pick(pick if pick is not None else f"best:{names[0]}", names)
        trial, how = pick_trial(study, rule, names)
        if pick is None:
            how += " (a multi-objective study's default; choose another point with --pick)"
        return Choice(trial, picked=how)
    name = study.user_attrs.get(CONFIRMATION_ATTR)
    if isinstance(name, str):
        from hpo_astro.study.confirm import summarise

        try:
            confirmation = summarise(study, optuna.load_study(study_name=name, storage=study._storage))
        except KeyError:  # the confirmation study was deleted: the search's choice stands
            confirmation = None
        best = confirmation.best if confirmation is not None else None
        chosen = [t for t in complete if best is not None and t.number == best.trial]
        if chosen:
            return Choice(chosen[0], confirmation)
    return Choice(study.best_trial)


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The trial of the study's best configuration (`choose_trial`)."""
    return choose_trial(study).trial
