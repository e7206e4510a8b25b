"""Trials whose process died: recognised, failed and re-queued with their parameters and checkpoint.

With a heartbeat (RDB stores) Optuna sees a dead trial by its stale heartbeat; `retry_callback` re-queues it. Journal
files and the gRPC proxy have no heartbeat, so every trial records who runs it (`worker`: host and pid, and
`worker_start`: the process's start time), and `fail_dead_trials` fails a trial whose process on this machine is
gone. A process on another machine cannot be told dead without a heartbeat.

A failed trial says why it failed and which trial retries it in its note in optuna-dashboard (Optuna writes no
attribute of a finished trial; the notes are the study's), and the retry says whom it retries and why (`retry_of`).
"""

from __future__ import annotations

import copy
import datetime
import functools
import logging
import os
import signal
import socket
import types
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo_astro.errors import described
from hpo_astro.store.record import (
    CHECKPOINT_ATTR,
    FAIL_REASON_ATTR,
    PARAMS_FULL_ATTR,
    RETRY_HISTORY_KEY,
    RETRY_OF_ATTR,
    SURPLUS_ATTR,
    SYSTEM_PREFIX,
    WORKER_ATTR,
    WORKER_START_ATTR,
    internal_attr,
    retry_history,
)

MAX_RETRY = 20  # retries of one trial after its process died (a trial that kills its worker stops eventually)
_WORKER_KEYS = (WORKER_ATTR, WORKER_START_ATTR)  # the dead process's identity: never inherited

_logger = logging.getLogger(__name__)


class _Retry(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry (a queued copy with the trial's parameters, attributes and intermediate values; Optuna calls it
    for each trial whose heartbeat went stale), written out here so that the copy's number is known:
    * without the dead worker's identity: the copy would otherwise carry the dead process's `worker` until the next
      worker overwrites it, and `fail_dead_trials` would fail it again meanwhile;
    * with an earlier version's internal user attributes (configuration, checkpoint) moved to system attributes;
    * saying why: the failed trial's note names the reason and its retry, the retry's `retry_of` user attribute the
      trial it retries and the reason (`reason`, else a lost heartbeat)."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(max_retry=MAX_RETRY, inherit_intermediate_values=True)
        self.reason = reason

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reason = self.reason or _heartbeat_reason(trial)
        history = [*retry_history(trial), trial.number]
        if len(history) > MAX_RETRY:
            _note(study, trial._trial_id, f"**Failed**: {reason}. Not retried: it was retried {MAX_RETRY} times.")
            return
        dropped = {*_WORKER_KEYS, RETRY_OF_ATTR, FAIL_REASON_ATTR}
        user = {k: v for k, v in trial.user_attrs.items() if k not in dropped}
        system = {"failed_trial": trial.number, **trial.system_attrs, RETRY_HISTORY_KEY: history}
        for name in _WORKER_KEYS:
            system.pop(SYSTEM_PREFIX + name, None)
        for name in (PARAMS_FULL_ATTR, CHECKPOINT_ATTR):  # an earlier version's user attributes
            if name in user:
                system.setdefault(SYSTEM_PREFIX + name, user.pop(name))
        user[RETRY_OF_ATTR] = {"trial": trial.number, "reason": reason}
        retry = optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=user,
            system_attrs=system,
            intermediate_values=trial.intermediate_values,
        )
        storage = study._storage
        number = storage.get_trial_number_from_id(storage.create_new_trial(study._study_id, template_trial=retry))
        pointer = internal_attr(trial, CHECKPOINT_ATTR)
        epoch = pointer.get("epoch") if isinstance(pointer, dict) and "artifact_id" in pointer else None
        resumes = f", which resumes from its checkpoint of epoch {epoch}" if isinstance(epoch, int) else ""
        _note(study, trial._trial_id, f"**Failed**: {reason}. **Retried by trial {number}**{resumes}.")


def retry_callback(reason: str | None = None) -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """Re-queue a dead trial with its parameters, attributes (its checkpoint) and intermediate values, recording
    why it failed: `reason`, else (Optuna's heartbeat check calls it) that its heartbeat stopped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _Retry(reason)


def _heartbeat_reason(trial: FrozenTrial) -> str:
    worker = internal_attr(trial, WORKER_ATTR)
    who = f"its worker {worker}" if isinstance(worker, str) else "its process (before its objective started)"
    return f"{who} stopped sending heartbeats: killed, crashed or cut off"


def interrupted_reason(exc: BaseException) -> str:
    """Why a trial stopped on KeyboardInterrupt: the signal `hpo_astro.study.interrupts` raised it for, else Ctrl-C."""
    number = str(exc).removeprefix("signal ")
    try:
        return f"interrupted by {signal.Signals(int(number)).name}"
    except ValueError:  # a plain KeyboardInterrupt (no handler installed), or a number that is no signal
        return "interrupted (Ctrl-C)"


def _note(study: optuna.Study, trial_id: int, line: str) -> None:
    """Add `line` to the trial's note in optuna-dashboard (its public `save_note`, on a stand-in for the trial: a
    finished trial cannot be opened as an `optuna.Trial`), after what the note already says."""
    import optuna_dashboard

    trial = types.SimpleNamespace(storage=study._storage, study=study, _trial_id=trial_id)
    try:  # the note is for people reading the dashboard: the retry (and its `retry_of`) stands without it
        before = optuna_dashboard.get_note(trial)  # type: ignore[arg-type]
        optuna_dashboard.save_note(trial, f"{before}\n\n{line}" if before else line)  # type: ignore[arg-type]
    except Exception as exc:  # another optuna-dashboard's internals, or a store that takes no more writes
        _logger.warning("could not write trial %d's note (%s): %s", trial_id, line, described(exc))


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
        worker = internal_attr(trial, WORKER_ATTR)
        if worker is None:
            dead = trial.datetime_start is not None and now - trial.datetime_start > limit
            reason = f"its process died before its objective started (no worker after {limit.total_seconds():g} s)"
        else:
            dead = not heartbeat and _local_worker_dead(worker, internal_attr(trial, WORKER_START_ATTR), host)
            reason = f"its worker {worker} is gone: killed or crashed"
        if not dead:
            continue
        try:
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
            continue  # another worker failed it first (and re-queues it)
        failed.append(trial.number)
        if internal_attr(trial, PARAMS_FULL_ATTR) is not None:
            retry_callback(reason)(study, storage.get_trial(trial._trial_id))
        else:
            _note(study, trial._trial_id, f"**Failed**: {reason}. Not retried: it had no configuration yet.")
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
            or internal_attr(trial, PARAMS_FULL_ATTR) is None
            or FAIL_REASON_ATTR in attrs
            or attrs.get(SURPLUS_ATTR)
            or len(retry_history(trial)) >= MAX_RETRY
            or trial.datetime_complete is None
            or trial.datetime_complete > cutoff
        ):
            continue
        worker = internal_attr(trial, WORKER_ATTR)
        who = f"its worker {worker}" if isinstance(worker, str) else "its process"
        reason = f"{who} died, and the worker that failed it stopped before re-queuing it"
        retry_callback(reason)(study, copy.deepcopy(trial))
        requeued.append(trial.number)
    return requeued
