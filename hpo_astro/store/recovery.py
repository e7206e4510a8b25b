"""Trials whose process died: recognised, failed and re-queued with their parameters and checkpoint.

With a heartbeat (RDB stores) Optuna sees a dead trial by its stale heartbeat; `retry_callback` re-queues it. Journal
files and the gRPC proxy have no heartbeat, so every trial records who runs it (`worker`: host and pid, and
`worker_start`: the process's start time), and `fail_dead_trials` fails a trial whose process on this machine is
gone. A process on another machine cannot be told dead without a heartbeat.
"""

from __future__ import annotations

import copy
import datetime
import functools
import os
import socket
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo_astro.store.record import (
    FAIL_REASON_ATTR,
    PARAMS_FULL_ATTR,
    SURPLUS_ATTR,
    WORKER_ATTR,
    WORKER_START_ATTR,
    retry_history,
)

MAX_RETRY = 20  # retries of one trial after its process died (a trial that kills its worker stops eventually)


class _Retry(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry, without the dead worker's identity: the queued copy would otherwise carry the dead process's
    `worker` until the next worker overwrites it, and `fail_dead_trials` would fail it again meanwhile."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.copy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in (WORKER_ATTR, WORKER_START_ATTR)}
        super().__call__(study, trial)


def retry_callback() -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """Re-queue a dead trial with its parameters, user attributes (its checkpoint) and intermediate values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _Retry(max_retry=MAX_RETRY, inherit_intermediate_values=True)


@functools.cache
def _own_token(pid: int) -> str | None:
    """This process's token, read once per pid (a forked child asks with its own pid)."""
    return process_token(pid)


def process_token(pid: int | None = None) -> str | None:
    """The start time of process `pid` (default: this one) in clock ticks since boot, from /proc/<pid>/stat
    (field 22), as a string: with the pid it identifies a process, so a pid reused by a new process is not taken
    for the worker that died. None where /proc is not available (not Linux) or the process is gone. This process's
    own token is read once per pid (it never changes; a forked child has its own pid)."""
    if pid is None:
        return _own_token(os.getpid())
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2 :].split()[19]  # fields after "(comm)" start at field 3
    except (OSError, ValueError, IndexError):
        return None


def _process_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2 :].split()[0]
    except (OSError, ValueError, IndexError):
        return None


def _local_worker_dead(worker: object, token: object, host: str) -> bool:
    """Whether `worker` ("{hostname}:{pid}") names a process of this machine that is gone: no such pid, a zombie,
    or a pid now held by a process started at another time than the recorded `token`."""
    if not isinstance(worker, str) or ":" not in worker:
        return False
    name, _, pid_text = worker.rpartition(":")
    if name != host or not pid_text.isdigit() or int(pid_text) <= 0:
        return False  # another machine's worker: only a heartbeat can tell
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    if _process_state(pid) == "Z":
        return True  # killed, not yet reaped by its parent
    current = process_token(pid)
    return isinstance(token, str) and current is not None and current != token


def fail_dead_trials(study: optuna.Study, grace_period: float) -> list[int]:
    """Fail the running trials whose process died, and re-queue those worth retrying (with their parameters and
    checkpoint, as `retry_callback` does); returns the numbers of the trials failed here.

    * With a heartbeat (RDB stores): Optuna's check of stale heartbeats.
    * Without one (journal files, the gRPC proxy, `--heartbeat 0`): a trial whose `worker` is a process of this
      machine that no longer exists (or whose pid now belongs to a younger process). Trials of other machines are
      left alone: only a heartbeat can tell that a remote process died.
    * Either way, a trial without a `worker` (killed before its objective started, e.g. while the sampler chose)
      once it is older than max(4 x grace period, 60 s); it is re-queued only if it got its full parameters.
    """
    storage = study._storage
    heartbeat = optuna.storages._heartbeat.is_heartbeat_enabled(storage)
    if heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
    limit = datetime.timedelta(seconds=max(4 * grace_period, 60))
    now, host = datetime.datetime.now(), socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if WORKER_ATTR not in attrs:
            dead = trial.datetime_start is not None and now - trial.datetime_start > limit
        else:
            dead = not heartbeat and _local_worker_dead(attrs[WORKER_ATTR], attrs.get(WORKER_START_ATTR), host)
        if not dead:
            continue
        try:
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
            continue  # another worker failed it first (and re-queues it)
        failed.append(trial.number)
        if PARAMS_FULL_ATTR in attrs:
            retry_callback()(study, storage.get_trial(trial._trial_id))
    requeue_orphans(study, grace_period)
    return failed


def requeue_orphans(study: optuna.Study, grace_period: float) -> list[int]:
    """Re-queue the trials that were failed as dead but never re-queued, because the process that failed them was
    itself killed between the two steps (Optuna fails every stale trial first, then calls the retry callback for
    each). Such a trial: failed without a `fail_reason` (an error in the objective records one; so do surplus
    trials), with its full parameters, retried fewer than MAX_RETRY times, and in no trial's retry history. Only
    once it has been failed for longer than the grace period: a live worker re-queues within milliseconds, so
    waiting keeps two workers from both re-queuing it. Returns the numbers re-queued."""
    trials = study.get_trials(deepcopy=False)
    retried = {number for t in trials for number in retry_history(t)}
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace_period)
    requeued = []
    for trial in trials:
        attrs = trial.user_attrs
        if (
            trial.state != TrialState.FAIL
            or trial.number in retried
            or PARAMS_FULL_ATTR not in attrs
            or FAIL_REASON_ATTR in attrs
            or attrs.get(SURPLUS_ATTR)
            or len(retry_history(trial)) >= MAX_RETRY
            or trial.datetime_complete is None
            or trial.datetime_complete > cutoff
        ):
            continue
        retry_callback()(study, copy.deepcopy(trial))
        requeued.append(trial.number)
    return requeued
