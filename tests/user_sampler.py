"""Samplers a user could write, for the import-path strategy (`--strategy user_sampler:CyclingSampler`; tests/ is on
sys.path). Each records its instances in `INSTANCES`, so a test can see how it was built and how often."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial

INSTANCES: list[Any] = []


class CyclingSampler(BaseSampler):
    """Deterministic: the n-th trial it samples takes, for its k-th hyperparameter, the value at index
    ((n + seed) >> k) mod (number of values), so its first 16 draws in a space of four two-valued hyperparameters
    are the 16 configurations. n is counted in the study store (enqueued trials and the re-queued copies of failed
    or interrupted ones have their parameters already: not its draws), so a resumed study continues where it
    stopped; `draws` counts the trials this instance sampled, which shows whether it was rebuilt between trials."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed or 0
        self.draws = 0
        self._last_trial: int | None = None
        INSTANCES.append(self)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        assert isinstance(param_distribution, CategoricalDistribution)
        if trial.number != self._last_trial:
            self._last_trial = trial.number
            self.draws += 1
        n = sum(
            1
            for t in study.get_trials(deepcopy=False)
            if t.number < trial.number and not {"fixed_params", "failed_trial"} & t.system_attrs.keys()
        )
        choices = param_distribution.choices
        return choices[((n + self.seed) >> len(trial.params)) % len(choices)]


class NoSeedSampler(optuna.samplers.RandomSampler):
    """A constructor without a seed: built with no arguments."""

    def __init__(self) -> None:
        super().__init__(seed=123)
        INSTANCES.append(self)


class KwargsSampler(optuna.samplers.TPESampler):
    """A constructor that passes its keyword arguments on: it is given the seed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(n_startup_trials=2, **kwargs)
        self.kwargs = kwargs
        INSTANCES.append(self)


class FailingSampler(optuna.samplers.RandomSampler):
    """A constructor that refuses to build."""

    def __init__(self, seed: int | None = None) -> None:
        raise ValueError("needs a config file that is not there")


class UnfinishedSampler(BaseSampler):
    """A sampler without its sampling methods: Python refuses to build an abstract class."""


class NotASampler:
    """A class, but not an Optuna sampler."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed


def not_a_class(seed: int | None = None) -> BaseSampler:
    """A factory function: the strategy must name a class."""
    return optuna.samplers.RandomSampler(seed=seed)
