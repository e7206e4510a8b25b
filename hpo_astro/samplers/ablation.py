"""AblationSampler: one hyperparameter at a time, from a baseline (the paper's "ablation-style search").

The plan is a list of slots, one per (hyperparameter, value) pair in space order: 4+3+5+...+3 = 47 for the
paper's space, the baseline's own values included (the paper ran those repeats too). In `greedy` mode each
hyperparameter's best value is adopted into the baseline once its sweep has finished (coordinate descent), so
a sweep's configurations depend on the sweeps before it.

Like Optuna's GridSampler, the sampler keeps its state in the study store: each trial records its slot in a
trial system attribute, so a resumed study, or several processes sharing one, continue the same plan. A slot
is *held* by a trial that is complete, pruned, running or waiting (a queued retry inherits its slot through
the copied system attributes); a failed trial releases its slot. A new trial takes the lowest free slot, and
before choosing it waits until every lower-numbered running trial has recorded its own slot: trial numbers are
unique in the store, so two concurrent trials never choose the same slot, and none is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

SLOT_KEY = "ablation:slot"
PLAN_KEY = "ablation:plan"  # (hyperparameter names, values, baseline, greedy): identifies the plan
CONFIG_KEY = "ablation:config"
EXHAUSTED_KEY = "ablation:exhausted"
_HOLDING = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


class AblationSampler(BaseSampler):
    """Vary each hyperparameter over all its values while the others stay at the baseline.

    Args:
        search_space: ordered mapping name -> candidate values (the sweep order is this order).
        baseline: the starting configuration; missing names are drawn at random with `seed`.
        greedy: adopt each hyperparameter's best value after its sweep (coordinate descent).
        seed: seeds the baseline draw (only used for names missing from `baseline`).
        wait_timeout: seconds to wait for a lower-numbered running trial to record its slot (a process that
            died in between would otherwise block the others forever).
        poll_interval: seconds between looks at the store while waiting.
    """

    def __init__(
        self,
        search_space: Mapping[str, Sequence[Any]],
        baseline: Mapping[str, Any] | None = None,
        greedy: bool = False,
        seed: int | None = None,
        wait_timeout: float = 60.0,
        poll_interval: float = 0.2,
    ) -> None:
        self._names = list(search_space)
        self._values = {name: list(values) for name, values in search_space.items()}
        for name, values in self._values.items():
            if not values:
                raise ValueError(f"hyperparameter {name!r} has no values")
        baseline = dict(baseline or {})
        unknown = set(baseline) - set(self._names)
        if unknown:
            raise ValueError(f"baseline names not in the search space: {sorted(unknown)}")
        rng = np.random.RandomState(seed)
        for name in self._names:  # draw in space order so the same seed gives the same baseline
            drawn = self._values[name][rng.randint(len(self._values[name]))]
            if name not in baseline:
                baseline[name] = drawn
            elif baseline[name] not in self._values[name]:
                raise ValueError(f"baseline {name}={baseline[name]!r} is not among its values")
        self.baseline = {name: baseline[name] for name in self._names}
        self.greedy = greedy
        # slot -> (sweep index, value index)
        self._slots = [(k, j) for k, name in enumerate(self._names) for j in range(len(self._values[name]))]
        self._sweep_slots = [
            [s for s, (k, _) in enumerate(self._slots) if k == sweep] for sweep in range(len(self._names))
        ]
        self._plan_id = [
            self._names,
            [self._values[n] for n in self._names],
            [self.baseline[n] for n in self._names],
            greedy,
        ]
        self._wait_timeout = wait_timeout
        self._poll_interval = poll_interval

    @property
    def n_slots(self) -> int:
        """How many trials the plan has (47 for the paper's space)."""
        return len(self._slots)

    def slot_config(
        self, slot: int, trials: Sequence[FrozenTrial] = (), direction: optuna.study.StudyDirection | None = None
    ) -> dict[str, Any]:
        """The configuration of `slot`; in greedy mode the baseline adopts the best values of finished sweeps."""
        sweep, value_index = self._slots[slot]
        config = dict(self.baseline)
        if self.greedy:
            for earlier in range(sweep):
                best = self._best_in_sweep(earlier, trials, direction)
                if best is not None:
                    config = {**config, **best}
        name = self._names[sweep]
        config[name] = self._values[name][value_index]
        return config

    # --- BaseSampler -------------------------------------------------------------------------------------------

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if SLOT_KEY in trial.system_attrs or "fixed_params" in trial.system_attrs:
            return  # a queued retry keeps its slot; an enqueued trial brings its own parameters
        storage = study._storage
        deadline = time.monotonic() + self._wait_timeout
        while True:
            trials = storage.get_all_trials(study._study_id, deepcopy=False)
            if self._earlier_trial_is_choosing(trials, trial.number) and time.monotonic() < deadline:
                time.sleep(self._poll_interval)
                continue
            slot, blocked_by = self._choose_slot(trials, trial.number)
            # Greedy: the next sweep needs every slot of the current one finished. Wait for running trials
            # (other workers'); a queued retry nobody picks up only for `wait_timeout`.
            if blocked_by == TrialState.RUNNING or (blocked_by is not None and time.monotonic() < deadline):
                time.sleep(self._poll_interval)
                continue
            break
        # PLAN_KEY is written last: it tells the other workers that this trial has finished choosing.
        if slot is None:
            # Nothing left: the plan is exhausted (a race between workers or a re-run of a finished study).
            storage.set_trial_system_attr(trial._trial_id, EXHAUSTED_KEY, True)
            storage.set_trial_system_attr(trial._trial_id, CONFIG_KEY, self.baseline)
        else:
            storage.set_trial_system_attr(trial._trial_id, SLOT_KEY, slot)
            storage.set_trial_system_attr(trial._trial_id, CONFIG_KEY, self.slot_config(slot, trials, study.direction))
        storage.set_trial_system_attr(trial._trial_id, PLAN_KEY, self._plan_id)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        config = trial.system_attrs.get(CONFIG_KEY)
        if config is None or param_name not in config:
            raise ValueError(f"AblationSampler has no value for {param_name!r}; it is not in its search space")
        return config[param_name]

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        # Called before the trial's own state is written, so count its slot here when it finished.
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        finished = self._finished_slots(trials)
        if state in (TrialState.COMPLETE, TrialState.PRUNED) and SLOT_KEY in trial.system_attrs:
            finished.add(trial.system_attrs[SLOT_KEY])
        if len(finished) == self.n_slots or trial.system_attrs.get(EXHAUSTED_KEY):
            study.stop()

    # --- state in the store -------------------------------------------------------------------------------------

    def is_exhausted(self, study: optuna.Study) -> bool:
        """True when every slot is held by a finished (complete or pruned) trial."""
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        return len(self._finished_slots(trials)) == self.n_slots

    def _mine(self, t: FrozenTrial) -> bool:
        return t.system_attrs.get(PLAN_KEY) == self._plan_id

    def _finished_slots(self, trials: Sequence[FrozenTrial]) -> set[int]:
        return {
            t.system_attrs[SLOT_KEY]
            for t in trials
            if self._mine(t) and SLOT_KEY in t.system_attrs and t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        }

    def _earlier_trial_is_choosing(self, trials: Sequence[FrozenTrial], number: int) -> bool:
        return any(
            t.number < number and t.state == TrialState.RUNNING and PLAN_KEY not in t.system_attrs for t in trials
        )

    def _choose_slot(self, trials: Sequence[FrozenTrial], number: int) -> tuple[int | None, TrialState | None]:
        """The lowest free slot (None when all are held), and in greedy mode, when that slot's sweep cannot
        start yet, the state (RUNNING or WAITING) of the trials of earlier sweeps that block it."""
        holders = {
            t.system_attrs[SLOT_KEY]: t.state
            for t in trials
            if t.number != number and self._mine(t) and SLOT_KEY in t.system_attrs and t.state in _HOLDING
        }
        free = [s for s in range(self.n_slots) if s not in holders]
        if not free:
            return None, None
        slot = free[0]
        if self.greedy:
            earlier = [s for k in range(self._slots[slot][0]) for s in self._sweep_slots[k]]
            blocking = {holders[s] for s in earlier if holders.get(s) in (TrialState.RUNNING, TrialState.WAITING)}
            if blocking:
                return None, TrialState.RUNNING if TrialState.RUNNING in blocking else TrialState.WAITING
        return slot, None

    def _best_in_sweep(
        self, sweep: int, trials: Sequence[FrozenTrial], direction: optuna.study.StudyDirection | None
    ) -> dict[str, Any] | None:
        """The best (complete) value of the sweep's hyperparameter; ties go to the earlier slot."""
        name = self._names[sweep]
        maximize = direction == optuna.study.StudyDirection.MAXIMIZE
        best: tuple[float, int] | None = None
        best_value = None
        for t in trials:
            if not (
                self._mine(t)
                and t.state == TrialState.COMPLETE
                and t.system_attrs.get(SLOT_KEY) in self._sweep_slots[sweep]
            ):
                continue
            score = -t.value if maximize else t.value
            key = (score, t.system_attrs[SLOT_KEY])
            if best is None or key < best:
                best, best_value = key, t.system_attrs[CONFIG_KEY][name]
        return None if best is None else {name: best_value}
