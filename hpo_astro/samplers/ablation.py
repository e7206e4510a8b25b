"""AblationSampler: one hyperparameter at a time, from a baseline (the paper's "ablation-style search").

The module (with `ablation_plan`, the plan's keys and rules) depends on Optuna and NumPy only, so that it can be
published on its own; its contract is the docstring of `AblationSampler`.
"""

from __future__ import annotations

import contextlib
import datetime
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from hpo_astro.samplers.ablation_plan import (
    CONFIG_KEY,
    EXHAUSTED_KEY,
    FINISHED,
    HOLDING,
    PLAN_KEY,
    SLOT_KEY,
    Choice,
    all_running_since,
    by_state,
    check_directions,
    finished_slots,
    plan_value,
    same,
    trial_numbers,
    value_in,
)
from hpo_astro.samplers.slots import OnWait, SlotWait, still_running


class AblationSampler(BaseSampler):
    """Vary each hyperparameter over all its values while the others stay at the baseline.

    The plan is a list of *slots*, one per (hyperparameter, value) pair in the order of `search_space`:
    4+3+5+...+3 = 47 for the paper's twelve hyperparameters, the baseline's own values included (the paper ran
    those repeats too). Slot ``s`` evaluates the baseline with one hyperparameter changed. In greedy mode each
    hyperparameter's best value is adopted into the baseline once its sweep has finished (coordinate descent), so a
    sweep's configurations depend on the sweeps before it.

    Example:

        .. code-block:: python

            sampler = AblationSampler({"lr": [1e-3, 1e-2], "layers": [1, 2, 3]}, baseline={"lr": 1e-3, "layers": 2})
            study = optuna.create_study(sampler=sampler)
            study.optimize(objective)  # 5 trials, then the study stops by itself

    **State in the store.** As Optuna's GridSampler, the sampler keeps its state in trial system attributes
    (`SLOT_KEY`, `CONFIG_KEY`, `PLAN_KEY`, `EXHAUSTED_KEY`), so a resumed study, or several processes or threads
    sharing one, continue the same plan. A slot is *held* by a trial of the same plan (same names, values, baseline
    and mode) that is complete, pruned, running or waiting (a queued retry, e.g. by `RetryFailedTrialCallback`,
    inherits its slot, or its lack of one, through the copied attributes); a failed trial releases its slot. A slot
    is *finished* when a complete or pruned trial holds it; the plan is finished (`is_exhausted`) when every slot
    is.

    **Choosing a slot.** A new trial takes the lowest free slot in `before_trial` (or at its first suggestion when
    `before_trial` was not called, e.g. for a trial created directly in the storage). Before choosing, it waits until
    every lower-numbered running trial has recorded its own choice: trial numbers are unique in the store, so two
    concurrent trials never take the same slot, and none is skipped. It waits at most `wait_timeout` seconds for a
    trial that never records its choice (a process that died in between); each sampler object waits once for a
    given trial. Enqueued trials take no slot and nobody waits for them.

    **Greedy mode** needs every slot of the earlier sweeps finished before a sweep starts: a trial that would start
    the next sweep waits for the running (or waiting) trials of the earlier sweeps, at most `wait_timeout` seconds;
    then it gives up and gets no slot (with a warning). With several workers, give `wait_timeout` above a trial's
    duration, or the idle workers stop at a sweep boundary while the others carry on. Greedy mode needs a
    single-objective study: the first suggestion of a trial in a multi-objective study raises `ValueError` (nothing
    is evaluated); without greedy, multi-objective studies run the plan unchanged.

    **Trials that never finish.** A running trial holds its slot until it finishes or fails. With a heartbeat
    (`RDBStorage(heartbeat_interval=...)`) Optuna fails the trials whose process died; the sampler runs that check
    while it waits, so their slots are freed and taken again. Without a heartbeat a lost trial (a killed process, an
    `ask` never told) cannot be told from a slow one: give `lost_after` to presume lost a trial that has been
    running that long, and its slot is evaluated again by a new trial that finds nothing else to do (as GridSampler
    re-evaluates unfinished points; a warning says so). Without `lost_after` such a trial holds its slot: the plan
    cannot finish, and a new trial that finds nothing else gets no slot, with a warning naming the trial.

    **No slot.** A trial that gets no slot (the plan is finished, every remaining slot is held by another running
    trial, or a greedy wait gave up) is marked with `EXHAUSTED_KEY`, evaluates nothing, and stops
    `study.optimize`: its first suggestion raises `optuna.TrialPruned`, so it ends pruned, without parameters or a
    value, never as a duplicate evaluation. `study.optimize` also stops once the last slot finishes, so
    `study.optimize(objective)` runs the plan and returns; running it again on a finished plan adds one such
    pruned trial. With ask and tell, check `is_exhausted(study)` before `ask`, or handle `optuna.TrialPruned` from
    the suggestions (tell the trial as pruned; `ask(fixed_distributions)` suggests inside `ask`, so check first
    there); the last `tell` does not raise. An objective that checks `EXHAUSTED_KEY` in the trial's system
    attributes before suggesting can end such trials its own way.

    **Suggestions.** The objective suggests the plan's hyperparameters with any distribution that contains the
    planned values (a categorical one listing them, or a range), and gets each value in that distribution's type
    (`suggest_float` gives a float for a planned 1). A planned value the distribution does not contain is refused
    with `ValueError` (the trial fails; nothing is evaluated with a value the objective did not ask for), and so is
    a name that is not in the plan. Suggesting only some of the names is fine: the plan is what the trial records in
    `CONFIG_KEY`. An enqueued trial (`study.enqueue_trial`) takes no slot: the values it does not fix come from the
    current baseline (in greedy mode, with the best values of the finished sweeps adopted). Plan values are
    ``None``, bool, int, float or str (NumPy scalars are converted), as a JSON store gives them back; NaN is a value
    like any other.

    Args:
        search_space: ordered mapping name -> candidate values (the sweep order is this order).
        baseline: the starting configuration; missing names are drawn at random with `seed`.
        greedy: adopt each hyperparameter's best value after its sweep (coordinate descent).
        seed: seeds the baseline draw (only used for names missing from `baseline`).
        wait_timeout: the longest a new trial waits, in seconds: for a lower-numbered trial to record its choice,
            and in greedy mode for the earlier sweeps to finish.
        poll_interval: seconds between looks at the store while waiting.
        lost_after: seconds after which a running trial is presumed lost, so that its slot may be evaluated again;
            None (default): never (only a failure, e.g. through a heartbeat, frees a running trial's slot).
        on_wait: called as `on_wait(study, trial_id)` when a trial starts choosing and at every look at the store
            while it waits (`hpo_astro.samplers.slots`), e.g. to mark it alive and fail the trials of dead processes.
    """

    def __init__(
        self,
        search_space: Mapping[str, Sequence[Any]],
        baseline: Mapping[str, Any] | None = None,
        greedy: bool = False,
        seed: int | None = None,
        wait_timeout: float = 60.0,
        poll_interval: float = 0.2,
        lost_after: float | None = None,
        on_wait: OnWait | None = None,
    ) -> None:
        self._names = list(search_space)
        self._values = {name: [plan_value(name, v) for v in values] for name, values in search_space.items()}
        for name, values in self._values.items():
            if not values:
                raise ValueError(f"hyperparameter {name!r} has no values")
        baseline = {name: plan_value(name, v) for name, v in (baseline or {}).items()}
        unknown = set(baseline) - set(self._names)
        if unknown:
            raise ValueError(f"baseline names not in the search space: {sorted(unknown)}")
        rng = np.random.RandomState(seed)
        for name in self._names:  # draw in space order so the same seed gives the same baseline
            drawn = self._values[name][rng.randint(len(self._values[name]))]
            if name not in baseline:
                baseline[name] = drawn
            elif not any(same(baseline[name], v) for v in self._values[name]):
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
        self._lost_after = lost_after
        # The waits (`hpo_astro.samplers.slots`): for trials still choosing, each once per object, and the pauses.
        self._slot_wait = SlotWait(PLAN_KEY, (EXHAUSTED_KEY,), poll_interval, on_wait)

    @property
    def n_slots(self) -> int:
        """How many trials the plan has (47 for the paper's space)."""
        return len(self._slots)

    def slot_config(
        self, slot: int, trials: Sequence[FrozenTrial] = (), direction: optuna.study.StudyDirection | None = None
    ) -> dict[str, Any]:
        """The configuration of `slot`; in greedy mode the baseline adopts the best values of the earlier sweeps."""
        sweep, value_index = self._slots[slot]
        config = self._adopted(sweep, trials, direction)
        name = self._names[sweep]
        config[name] = self._values[name][value_index]
        return config

    def is_exhausted(self, study: optuna.Study) -> bool:
        """True when every slot is held by a finished (complete or pruned) trial."""
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        return len(finished_slots(trials, self._plan_id)) == self.n_slots

    # --- BaseSampler -------------------------------------------------------------------------------------------

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}  # define-by-run: the distributions come with the suggestions (sample_independent)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self._check_directions(study)
        names = [name for name in search_space if name in self._values]
        if not names:
            return {}
        attrs = self._trial_attrs(study, trial)
        if attrs.get(EXHAUSTED_KEY):
            return {}  # sample_independent says why
        return {name: value_in(name, attrs[CONFIG_KEY][name], search_space[name]) for name in names}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if SLOT_KEY in trial.system_attrs or trial.system_attrs.get(EXHAUSTED_KEY):
            # A queued retry keeps its slot, or its lack of one: choosing again would race with the other trials,
            # which take its copied PLAN_KEY for a choice already made.
            return
        if self.greedy and len(study.directions) > 1:
            return  # refused at the first suggestion: raising here would leave the trial running
        storage = study._storage
        if "fixed_params" in trial.system_attrs:
            # Enqueued: no slot. The values it does not fix come from the current baseline.
            trials = storage.get_all_trials(study._study_id, deepcopy=False)
            center = self._adopted(len(self._names), trials, study.direction if self.greedy else None)
            storage.set_trial_system_attr(trial._trial_id, CONFIG_KEY, center)
            storage.set_trial_system_attr(trial._trial_id, PLAN_KEY, self._plan_id)
            return
        self._slot_wait.alive(study, trial._trial_id)
        choice, trials = self._wait_for_slot(study, trial)
        if not still_running(study, trial._trial_id):
            return  # failed by another process while it waited (presumed dead): nothing may be written
        # PLAN_KEY is written last: it tells the other trials that this one has finished choosing.
        if choice.slot is None:
            storage.set_trial_system_attr(trial._trial_id, EXHAUSTED_KEY, True)
        else:
            direction = study.direction if self.greedy else None
            storage.set_trial_system_attr(trial._trial_id, SLOT_KEY, choice.slot)
            storage.set_trial_system_attr(trial._trial_id, CONFIG_KEY, self.slot_config(choice.slot, trials, direction))
        storage.set_trial_system_attr(trial._trial_id, PLAN_KEY, self._plan_id)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if param_name not in self._values:
            raise ValueError(f"AblationSampler: {param_name!r} is not in the plan (its names: {self._names})")
        attrs = self._trial_attrs(study, trial)
        if attrs.get(EXHAUSTED_KEY):
            raise optuna.TrialPruned(
                "AblationSampler: the plan has no slot left for this trial (it is finished, or its remaining slots "
                "are held by other trials); nothing is evaluated"
            )
        return value_in(param_name, attrs[CONFIG_KEY][param_name], param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        # Called before the trial's own state is written, so count its slot here when it finished.
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        finished = finished_slots(trials, self._plan_id)
        if state in FINISHED and SLOT_KEY in trial.system_attrs and self._mine(trial):
            finished.add(trial.system_attrs[SLOT_KEY])
        if len(finished) == self.n_slots or trial.system_attrs.get(EXHAUSTED_KEY):
            # Outside study.optimize (ask and tell) there is no loop to stop, and stop() raises: the caller checks
            # is_exhausted instead.
            with contextlib.suppress(RuntimeError):
                study.stop()

    # --- choosing a slot ----------------------------------------------------------------------------------------

    def _check_directions(self, study: optuna.Study) -> None:
        check_directions(self.greedy, len(study.directions))

    def _trial_attrs(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        """The trial's system attributes, read from the store (a FrozenTrial given by a caller may predate them)."""
        attrs = study._storage.get_trial_system_attrs(trial._trial_id)
        if PLAN_KEY not in attrs and SLOT_KEY not in attrs:
            # Refused (before_trial left it alone), or before_trial never ran for this trial (created directly in
            # the storage, or a wrapping sampler that does not forward it): choose now.
            self._check_directions(study)
            self.before_trial(study, study._storage.get_trial(trial._trial_id))
            attrs = study._storage.get_trial_system_attrs(trial._trial_id)
        return attrs

    def _wait_for_slot(self, study: optuna.Study, trial: FrozenTrial) -> tuple[Choice, list[FrozenTrial]]:
        storage = study._storage
        started = time.monotonic()
        while True:
            trials = storage.get_all_trials(study._study_id, deepcopy=False)
            expired = time.monotonic() - started >= self._wait_timeout
            choosing = self._slot_wait.choosing(trials, trial.number)
            if choosing and not expired:
                self._slot_wait.pause(study, trial._trial_id)
                continue
            self._slot_wait.given_up.update(t._trial_id for t in choosing)  # presumed dead before recording a choice
            choice = self._choose(trials, trial.number)
            if choice.slot is None and choice.can_wait and not expired:
                self._slot_wait.pause(study, trial._trial_id)
                continue
            break
        if choice.lost:
            held = [t for t in trials if t.number != trial.number and self._holds(t, choice.slot)]
            warnings.warn(
                f"AblationSampler: trial {trial.number} evaluates slot {choice.slot} again: its trials "
                f"{trial_numbers(held)} have been running longer than lost_after={self._lost_after:g} s and are "
                "presumed lost",
                stacklevel=2,
            )
        elif choice.blockers:
            if choice.can_wait:
                reason = (
                    f"waited {self._wait_timeout:g} s for the earlier sweeps to finish ({by_state(choice.blockers)}) "
                    "and gets no slot; with several workers give wait_timeout above a trial's duration"
                )
            else:
                held = "; ".join(
                    f"slot {s} is held by {by_state([t for t in choice.blockers if t.system_attrs[SLOT_KEY] == s])}"
                    for s in sorted({t.system_attrs[SLOT_KEY] for t in choice.blockers})
                )
                reason = f"finds no free slot: {held}; the plan finishes when they finish or fail"
            warnings.warn(
                f"AblationSampler: trial {trial.number} {reason} (lost_after re-evaluates the slots of trials "
                "presumed lost)",
                stacklevel=2,
            )
        return choice, trials

    def _choose(self, trials: Sequence[FrozenTrial], number: int) -> Choice:
        holders: dict[int, list[FrozenTrial]] = {}
        for t in trials:
            if t.number != number and t.state in HOLDING and SLOT_KEY in t.system_attrs and self._mine(t):
                holders.setdefault(t.system_attrs[SLOT_KEY], []).append(t)
        unfinished = sorted(s for s, held in holders.items() if not any(t.state in FINISHED for t in held))
        free = [s for s in range(self.n_slots) if s not in holders]
        if free:
            sweep = self._slots[free[0]][0]
            blocking = [s for s in unfinished if self.greedy and self._slots[s][0] < sweep]
            if not blocking:
                return Choice(free[0], False, [], False)
        else:
            blocking = unfinished
        now = datetime.datetime.now()  # the clock Optuna's storages give datetime_start with
        lost = [s for s in blocking if self._is_lost(holders[s], now)]
        if lost:
            # The slot left unattended longest, so that successive trials spread over the lost slots.
            slot = min(lost, key=lambda s: (max(t.datetime_start for t in holders[s]), s))
            return Choice(slot, True, [], False)
        return Choice(None, False, [t for s in blocking for t in holders[s]], bool(free))

    def _is_lost(self, held: Sequence[FrozenTrial], now: datetime.datetime) -> bool:
        return self._lost_after is not None and all_running_since(held, now, self._lost_after)

    def _mine(self, t: FrozenTrial) -> bool:
        return same(t.system_attrs.get(PLAN_KEY), self._plan_id)

    def _holds(self, t: FrozenTrial, slot: int | None) -> bool:
        return t.state in HOLDING and t.system_attrs.get(SLOT_KEY) == slot and self._mine(t)

    def _adopted(
        self, sweeps: int, trials: Sequence[FrozenTrial], direction: optuna.study.StudyDirection | None
    ) -> dict[str, Any]:
        """The baseline, in greedy mode with the best values of the first `sweeps` sweeps adopted, as far as they
        have finished in order (a slot's earlier sweeps always have: `_choose` waits for them)."""
        config = dict(self.baseline)
        if not self.greedy:
            return config
        finished = finished_slots(trials, self._plan_id)
        for sweep in range(sweeps):
            if not set(self._sweep_slots[sweep]) <= finished:
                break
            best = self._best_in_sweep(sweep, trials, direction)
            if best is not None:
                config.update(best)
        return config

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
                t.state == TrialState.COMPLETE
                and t.system_attrs.get(SLOT_KEY) in self._sweep_slots[sweep]
                and self._mine(t)
            ):
                continue
            score = -t.value if maximize else t.value
            key = (score, t.system_attrs[SLOT_KEY])
            if best is None or key < best:
                best, best_value = key, t.system_attrs[CONFIG_KEY][name]
        return None if best is None else {name: best_value}
