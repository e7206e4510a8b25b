"""A trial that waits inside its sampler (PBT's wait for the previous generation, ablation's greedy wait) has not
reached its objective, which records who runs it: `waiting_hook` records it there instead, so that
`hpo_astro.store.recovery.fail_dead_trials` (which fails a running trial without a worker after a minute) takes it
for the live trial it is, and a waiting trial whose process died is recognised as dead. The hook also runs that check
while the trial waits, so that it does not wait for a trial whose process died (`hpo_astro.samplers.slots`)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import optuna

from hpo_astro.store.record import SYSTEM_PREFIX, WORKER_ATTR, WORKER_START_ATTR
from hpo_astro.store.recovery import fail_dead_trials, process_token


def waiting_hook(grace_period: float) -> Callable[[optuna.Study, int], None]:
    """`on_wait(study, trial_id)` for the samplers that wait: the trial's `worker` and `worker_start` (as
    `Objective` writes them; once), then the trials of dead processes failed and re-queued. An in-memory store is
    this process's alone: nothing to record, none died."""

    def on_wait(study: optuna.Study, trial_id: int) -> None:
        storage = study._storage
        if isinstance(storage, optuna.storages.InMemoryStorage):
            return
        trial = storage.get_trial(trial_id)
        if trial.state == optuna.trial.TrialState.RUNNING and SYSTEM_PREFIX + WORKER_ATTR not in trial.system_attrs:
            storage.set_trial_system_attr(trial_id, SYSTEM_PREFIX + WORKER_START_ATTR, process_token())
            # worker last: a trial with a worker has its token (fail_dead_trials reads both)
            storage.set_trial_system_attr(
                trial_id, SYSTEM_PREFIX + WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}"
            )
        fail_dead_trials(study, grace_period)

    return on_wait
