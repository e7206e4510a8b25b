"""The slot-claim protocol the AblationSampler and the PbtSampler share (Optuna and NumPy only, like them).

A plan's trials take numbered *slots*, recorded in trial system attributes; a trial records its choice with the
plan key written last. Before choosing, a new trial waits until every lower-numbered running trial has recorded its
own choice (trial numbers are unique in the store, so two concurrent trials never take the same slot, and none is
skipped). Enqueued trials (`fixed_params`) take no slot and nobody waits for them.

A trial that waits inside its sampler (for a chooser, for an earlier sweep, for a generation) has not yet reached
its objective, so nothing else marks it alive: `SlotWait.pause` records its heartbeat where the store has one and
calls the caller's `on_wait(study, trial_id)` hook (hpo-astro's records the trial's worker there and fails the trials
of dead processes), at the start of the wait and at every look at the store. A waiting trial that another process
failed meanwhile (presumed dead) is no longer running: `still_running` says so before every write."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo_astro.samplers.ablation_plan import fail_stale_trials

OnWait = Callable[[optuna.Study, int], None]  # (study, the waiting trial's id)


class SlotWait:
    """The waits of one sampler object: for lower-numbered trials still choosing (each such trial is waited for
    once per object: a trial that never records its choice is presumed dead after `timeout`), and the pause between
    two looks at the store."""

    def __init__(
        self, plan_key: str, no_slot_keys: Sequence[str], poll_interval: float, on_wait: OnWait | None = None
    ) -> None:
        self.plan_key, self.no_slot_keys = plan_key, tuple(no_slot_keys)
        self.poll_interval, self.on_wait = poll_interval, on_wait
        self.given_up: set[int] = set()  # trials this object stopped waiting for while they chose a slot

    def choosing(self, trials: Sequence[FrozenTrial], number: int) -> list[FrozenTrial]:
        """The lower-numbered running trials that may still be choosing a slot."""
        return [
            t
            for t in trials
            if t.number < number
            and t.state == TrialState.RUNNING
            and self.plan_key not in t.system_attrs  # written last: a recorded slot alone may not be visible yet
            and not any(key in t.system_attrs for key in self.no_slot_keys)
            and "fixed_params" not in t.system_attrs  # enqueued: never takes a slot
            and t._trial_id not in self.given_up
        ]

    def alive(self, study: optuna.Study, trial_id: int) -> None:
        """Mark the waiting trial alive: its heartbeat (a store with one), and the caller's hook."""
        storage = study._storage
        if optuna.storages._heartbeat.is_heartbeat_enabled(storage) and still_running(study, trial_id):
            storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
        if self.on_wait is not None:
            self.on_wait(study, trial_id)

    def pause(self, study: optuna.Study, trial_id: int) -> None:
        time.sleep(self.poll_interval)
        # Optuna fails the trials whose heartbeat stopped before each trial of study.optimize; while a trial waits
        # here, that check is this loop's job, or a dead trial would keep the waiting one waiting.
        fail_stale_trials(study)
        self.alive(study, trial_id)

    def wait_for_choosers(
        self, study: optuna.Study, trial: FrozenTrial, timeout: float
    ) -> tuple[list[FrozenTrial], bool]:
        """Wait until no lower-numbered trial is choosing, at most `timeout` seconds (then they are presumed dead).
        Returns the study's trials as last read, and whether `trial` is still running."""
        started = time.monotonic()
        while True:
            trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
            choosing = self.choosing(trials, trial.number)
            if not choosing or time.monotonic() - started >= timeout:
                break
            self.pause(study, trial._trial_id)
        self.given_up.update(t._trial_id for t in choosing)
        mine = next((t for t in trials if t._trial_id == trial._trial_id), None)
        return trials, mine is None or mine.state == TrialState.RUNNING


def still_running(study: optuna.Study, trial_id: int) -> bool:
    """Whether the trial is still running: another process may have failed a trial that waited (presumed dead)."""
    return study._storage.get_trial(trial_id).state == TrialState.RUNNING
