"""The stand-in objective of the ablation tests, in a module that imports neither torch nor the test helpers: the
process-sharing test starts its workers with `spawn`, and each would otherwise import torch (seconds) for nothing."""

from __future__ import annotations

import os
import time

import optuna

from hpo_astro.core.hyperparameters import DEFAULT_PARAMS, PAPER_SPACE
from hpo_astro.samplers import AblationSampler
from hpo_astro.samplers.ablation import EXHAUSTED_KEY


def score(params: dict) -> float:
    """A deterministic stand-in for validation accuracy: prefers the *last* value of every hyperparameter."""
    return sum(PAPER_SPACE[n].index(v) / len(PAPER_SPACE[n]) for n, v in params.items())


def objective(trial: optuna.Trial) -> float:
    if trial.study._storage.get_trial_system_attrs(trial._trial_id).get(EXHAUSTED_KEY):
        raise RuntimeError("surplus")  # what hpo_astro's objective does: nothing left to evaluate
    return score({n: trial.suggest_categorical(n, list(v)) for n, v in PAPER_SPACE.items()})


def worker(storage: str, n_trials: int) -> None:
    """One process of the sharing test: `n_trials` trials of the ablation plan of the study `s`."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def slow(trial: optuna.Trial) -> float:
        trial.set_user_attr("pid", os.getpid())
        value = objective(trial)
        time.sleep(0.02)
        return value

    study = optuna.load_study(
        study_name="s", storage=storage, sampler=AblationSampler(PAPER_SPACE, baseline=DEFAULT_PARAMS)
    )
    study.optimize(slow, n_trials=n_trials, catch=(RuntimeError,))
