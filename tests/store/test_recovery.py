"""Recovery of trials whose process died: a trial failed as dead by a process that was itself killed before it
re-queued the trial (Optuna fails every stale trial first, then re-queues each) is re-queued by the next worker."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from hpo_astro.store.record import FAIL_REASON_ATTR, PARAMS_FULL_ATTR, SURPLUS_ATTR
from hpo_astro.store.recovery import fail_dead_trials, requeue_orphans
from hpo_astro.store.storage import open_storage


def _failed(study: optuna.Study, **attrs: object) -> int:
    trial = study.ask()
    trial.suggest_categorical("lr", [0.1, 0.01])
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    return trial.number


def test_a_trial_failed_as_dead_but_never_requeued_is_requeued_once(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage)
    orphan = _failed(study, **{PARAMS_FULL_ATTR: {"lr": 0.1}})
    errored = _failed(study, **{PARAMS_FULL_ATTR: {"lr": 0.1}, FAIL_REASON_ATTR: "ValueError: bad"})
    surplus = _failed(study, **{PARAMS_FULL_ATTR: {"lr": 0.1}, FAIL_REASON_ATTR: "x", SURPLUS_ATTR: True})
    unsampled = _failed(study)  # killed before it got its parameters: nothing to retry
    assert requeue_orphans(study, grace_period=3600) == []  # failed moments ago: its own worker may re-queue it yet
    assert requeue_orphans(study, grace_period=0) == [orphan]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].system_attrs["retry_history"] == [orphan]
    assert waiting[0].params == study.trials[orphan].params and waiting[0].user_attrs[PARAMS_FULL_ATTR] == {"lr": 0.1}
    assert requeue_orphans(study, grace_period=0) == []  # once: it is in a retry history now
    assert fail_dead_trials(study, grace_period=0) == []  # and the recount that runs before every trial agrees
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1
    assert {errored, surplus, unsampled}.isdisjoint(waiting[0].system_attrs["retry_history"])
