"""TrialSeededSampler: a stochastic Optuna sampler whose randomness is tied to the study's progress, not the process.

A sampler seeded once per process repeats itself whenever a process starts again on the same study: re-running an
interrupted random study (or extending it with a larger budget) draws the very configurations it drew before, and
two processes started together on one study propose the same ones. This wrapper builds a fresh inner sampler for
every trial, seeded from `(seed, k)` where k is the number of *sampled* trials before it in the study (trials
created by `enqueue_trial`, such as the re-queued copies of interrupted trials, carry fixed parameters and are not
counted, nor are the copies that re-queue a failed or dead trial). So:

* a resumed or extended study continues the sequence where it stopped, whatever process runs it;
* concurrent processes get different trial numbers, hence different k, hence different draws;
* for the random strategy the k-th sampled configuration is a function of `(seed, k)` alone: the same however the
  study was interrupted and however many workers ran it. Model-based samplers (TPE, GP, NSGA-II) also condition on
  the finished trials, so they repeat exactly for one worker (interruptions included: a re-queued trial keeps its
  parameters) but not when parallel workers finish trials in a timing-dependent order.

The inner samplers keep no state of their own between trials (TPE, GP and NSGA-II rebuild their models and
populations from the study store; CMA-ES restores its optimizer, random state included, from the `cma:*` system
attributes of the study's trials), so nothing is lost by building one per trial; GP merely loses its warm start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

# Optuna's system attributes of trials whose parameters did not come from the sampler: `enqueue_trial`'s, and the
# copies that the retry callbacks add for a failed or dead trial.
NOT_SAMPLED_KEYS = ("fixed_params", "failed_trial")


def derive_seed(seed: int, index: int) -> int:
    """A 32-bit seed for the `index`-th sampled trial of a study seeded with `seed` (independent streams)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


# Where Optuna's samplers keep their `IntersectionSearchSpace` (private attributes of Optuna 4 and 5).
_SEARCH_SPACE_ATTRS = ("_search_space", "_intersection_search_space")


def _carry_search_space(previous: BaseSampler, new: BaseSampler) -> None:
    """Hand the previous inner sampler's intersection search space to its successor. It is a cache that Optuna's
    samplers keep incrementally (a function of the study's finished trials, not of the seed); rebuilt from nothing
    for every trial it made a 40-trial TPE study spend a third of its time comparing distributions
    (`scripts/bench_replay.py`)."""
    if type(previous) is not type(new):
        return
    for name in _SEARCH_SPACE_ATTRS:
        cache = getattr(previous, name, None)
        if isinstance(cache, IntersectionSearchSpace) and isinstance(getattr(new, name, None), IntersectionSearchSpace):
            setattr(new, name, cache)


class TrialSeededSampler(BaseSampler):
    """Delegates to `factory(derive_seed(seed, k))`, rebuilt before each trial (k: sampled trials before it)."""

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int) -> None:
        self._factory = factory
        self._seed = seed
        self.inner: BaseSampler = factory(derive_seed(seed, 0))
        # (storage, study id, trial number n, sampled trials before n): whether a trial was sampled is fixed when
        # it is created (enqueued trials carry their keys from the start), so the count goes on from there.
        self._counted: tuple[int, int, int, int] = (0, -1, 0, 0)

    def __str__(self) -> str:
        return f"TrialSeeded({self.inner.__class__.__name__})"

    def sample_index(self, study: Study, trial: FrozenTrial) -> int:
        """How many trials before `trial` drew their parameters from the sampler."""
        storage, study_id, upto, count = self._counted
        if (storage, study_id) != (id(study._storage), study._study_id) or trial.number < upto:
            upto, count = 0, 0
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        count += sum(
            1
            for t in trials[upto:]
            if t.number < trial.number and not any(k in t.system_attrs for k in NOT_SAMPLED_KEYS)
        )
        self._counted = (id(study._storage), study._study_id, trial.number, count)
        return count

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        previous = self.inner
        self.inner = self._factory(derive_seed(self._seed, self.sample_index(study, trial)))
        _carry_search_space(previous, self.inner)
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
