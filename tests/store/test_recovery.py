"""Recovery of trials whose process died: a trial failed as dead by a process that was itself killed before it
re-queued the trial (Optuna fails every stale trial first, then re-queues each) is re-queued by the next worker; a
failed trial says why it failed and which trial retries it (its note in optuna-dashboard), the retry whom it retries
and why; the dead process's identity is not inherited, an earlier version's internal user attributes move to system
attributes."""

from __future__ import annotations

import datetime
import json
import socket
import subprocess
import types
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from hpo_astro.results.dashboard import dashboard_app
from hpo_astro.store import recovery
from hpo_astro.store.record import (
    CHECKPOINT_ATTR,
    FAIL_REASON_ATTR,
    PARAMS_FULL_ATTR,
    RETRY_OF_ATTR,
    SURPLUS_ATTR,
    WORKER_ATTR,
    WORKER_START_ATTR,
    internal_attr,
    params_full,
    set_internal,
)
from hpo_astro.store.recovery import fail_dead_trials, interrupted_reason, requeue_orphans
from hpo_astro.store.storage import open_storage

INTERNAL = {PARAMS_FULL_ATTR, WORKER_ATTR, WORKER_START_ATTR, CHECKPOINT_ATTR}


def _failed(study: optuna.Study, **attrs: object) -> int:
    trial = study.ask()
    trial.suggest_categorical("lr", [0.1, 0.01])
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    return trial.number


def _notes(study: optuna.Study) -> dict[int, str]:
    """Each trial's note, as optuna-dashboard shows it (the JSON its page reads), by trial number."""
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = f"/api/studies/{study._study_id}"
    body = b"".join(dashboard_app(study._storage, None)(environ, lambda *args: None))
    return {t["number"]: t["note"]["body"] for t in json.loads(body)["trials"]}


def test_a_trial_failed_as_dead_but_never_requeued_is_requeued_once(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage)
    # written as an earlier version wrote them: user attributes
    orphan = _failed(study, **{PARAMS_FULL_ATTR: {"lr": 0.1}, WORKER_ATTR: "gone:1"})
    errored = _failed(study, **{PARAMS_FULL_ATTR: {"lr": 0.1}, FAIL_REASON_ATTR: "ValueError: bad"})
    surplus = _failed(study, **{PARAMS_FULL_ATTR: {"lr": 0.1}, FAIL_REASON_ATTR: "x", SURPLUS_ATTR: True})
    unsampled = _failed(study)  # killed before it got its parameters: nothing to retry
    assert requeue_orphans(study, grace_period=3600) == []  # failed moments ago: its own worker may re-queue it yet
    assert requeue_orphans(study, grace_period=0) == [orphan]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].system_attrs["retry_history"] == [orphan]
    assert waiting[0].params == study.trials[orphan].params and params_full(waiting[0]) == {"lr": 0.1}
    assert not INTERNAL & waiting[0].user_attrs.keys()  # moved to system attributes; the dead worker dropped
    assert internal_attr(waiting[0], WORKER_ATTR) is None
    reason = "its worker gone:1 died, and the worker that failed it stopped before re-queuing it"
    assert waiting[0].user_attrs[RETRY_OF_ATTR] == {"trial": orphan, "reason": reason}
    assert _notes(study)[orphan] == f"**Failed**: {reason}. **Retried by trial {waiting[0].number}**."
    assert requeue_orphans(study, grace_period=0) == []  # once: it is in a retry history now
    assert fail_dead_trials(study, grace_period=0) == []  # and the recount that runs before every trial agrees
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1
    assert {errored, surplus, unsampled}.isdisjoint(waiting[0].system_attrs["retry_history"])


def _dead_pid() -> int:
    proc = subprocess.Popen(["sleep", "60"])
    proc.kill()
    proc.wait()
    return proc.pid


def test_a_dead_workers_trial_says_why_it_failed_and_which_trial_retries_it(tmp_path: Path) -> None:
    """On a journal store (no heartbeat): the trial of a local worker that is gone is failed and re-queued; its note
    says so and names its retry, which resumes from its checkpoint; the retry says whom it retries and why, and
    carries the configuration and checkpoint but not the dead worker. A retry that dies in turn is retried so."""
    study = optuna.create_study(study_name="j", storage=JournalStorage(JournalFileBackend(str(tmp_path / "j.log"))))
    host = socket.gethostname()

    def dies(trial: optuna.Trial) -> str:
        worker = f"{host}:{_dead_pid()}"
        set_internal(trial, WORKER_ATTR, worker)
        set_internal(trial, WORKER_START_ATTR, "1")
        return worker

    first = study.ask()
    first.suggest_categorical("lr", [0.1, 0.01])
    set_internal(first, PARAMS_FULL_ATTR, {"lr": first.params["lr"]})
    set_internal(first, CHECKPOINT_ATTR, {"artifact_id": "ckpt-study0-x", "epoch": 2})
    worker = dies(first)
    assert fail_dead_trials(study, grace_period=30) == [first.number]
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    reason = f"its worker {worker} is gone: killed or crashed"
    assert _notes(study)[first.number] == (
        f"**Failed**: {reason}. **Retried by trial {retry.number}**, which resumes from its checkpoint of epoch 2."
    )
    assert retry.user_attrs == {RETRY_OF_ATTR: {"trial": first.number, "reason": reason}}
    assert params_full(retry) == {"lr": first.params["lr"]} and retry.params == first.params
    assert internal_attr(retry, CHECKPOINT_ATTR) == {"artifact_id": "ckpt-study0-x", "epoch": 2}
    assert internal_attr(retry, WORKER_ATTR) is None and internal_attr(retry, WORKER_START_ATTR) is None
    assert not INTERNAL & study.trials[first.number].user_attrs.keys()

    second = study.ask()  # the retry, taken by a worker that dies too
    assert second.number == retry.number
    worker = dies(second)
    assert fail_dead_trials(study, grace_period=30) == [second.number]
    (again,) = study.get_trials(states=(TrialState.WAITING,))
    assert again.system_attrs["retry_history"] == [first.number, second.number]
    reason = f"its worker {worker} is gone: killed or crashed"
    assert again.user_attrs == {RETRY_OF_ATTR: {"trial": second.number, "reason": reason}}  # not the first's
    assert f"**Retried by trial {again.number}**" in _notes(study)[second.number]


def test_a_trial_killed_before_its_configuration_says_why_it_was_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = optuna.create_study(study_name="s", storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    bare = study.ask()  # no worker, no configuration: killed while the sampler chose

    class Later(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> datetime.datetime:  # type: ignore[override]
            return datetime.datetime.now(tz) + datetime.timedelta(seconds=61)

    monkeypatch.setattr(recovery, "datetime", types.SimpleNamespace(datetime=Later, timedelta=datetime.timedelta))
    assert fail_dead_trials(study, grace_period=1) == [bare.number]
    assert not study.get_trials(states=(TrialState.WAITING,))
    assert _notes(study)[bare.number] == (
        "**Failed**: its process died before its objective started (no worker after 60 s). Not retried: it had no "
        "configuration yet."
    )


def test_optunas_heartbeat_check_retries_with_the_reason_and_at_most_max_retry_times(tmp_path: Path) -> None:
    """The callback Optuna calls for a trial whose heartbeat went stale (RDB stores) says so; a trial retried
    MAX_RETRY times is not retried again, and its note says why."""
    study = optuna.create_study(study_name="s", storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    trial = study.ask()
    set_internal(trial, PARAMS_FULL_ATTR, {"lr": 0.1})
    set_internal(trial, WORKER_ATTR, "node7:4242")
    study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    recovery.retry_callback()(study, study.trials[trial.number])
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    reason = "its worker node7:4242 stopped sending heartbeats: killed, crashed or cut off"
    assert retry.user_attrs[RETRY_OF_ATTR] == {"trial": trial.number, "reason": reason}
    assert _notes(study)[trial.number] == f"**Failed**: {reason}. **Retried by trial {retry.number}**."

    worn = study.ask()  # the retry, which already has a long history
    study._storage.set_trial_system_attr(worn._trial_id, "retry_history", list(range(recovery.MAX_RETRY)))
    study._storage.set_trial_state_values(worn._trial_id, state=TrialState.FAIL)
    recovery.retry_callback("interrupted by SIGTERM")(study, study.trials[worn.number])
    assert not study.get_trials(states=(TrialState.WAITING,))
    assert _notes(study)[worn.number] == (
        f"**Failed**: interrupted by SIGTERM. Not retried: it was retried {recovery.MAX_RETRY} times."
    )


def test_an_interruption_is_named_by_its_signal() -> None:
    assert interrupted_reason(KeyboardInterrupt("signal 15")) == "interrupted by SIGTERM"
    assert interrupted_reason(KeyboardInterrupt("signal 2")) == "interrupted by SIGINT"
    assert interrupted_reason(KeyboardInterrupt()) == "interrupted (Ctrl-C)"
    assert interrupted_reason(KeyboardInterrupt("signal 999")) == "interrupted (Ctrl-C)"


def test_a_note_that_cannot_be_written_does_not_stop_the_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The retry note goes through optuna-dashboard's `save_note` (its internals, on a stand-in trial): if it
    fails, the dead trial is still re-queued, its retry still says whom it retries, and the failure is logged."""
    import optuna_dashboard

    def broken(*args: object) -> None:
        raise AttributeError("'SimpleNamespace' object has no attribute 'storage'")

    monkeypatch.setattr(optuna_dashboard, "save_note", broken)
    study = optuna.create_study(study_name="j", storage=JournalStorage(JournalFileBackend(str(tmp_path / "j.log"))))
    trial = study.ask()
    trial.suggest_categorical("lr", [0.1, 0.01])
    set_internal(trial, PARAMS_FULL_ATTR, {"lr": trial.params["lr"]})
    set_internal(trial, WORKER_ATTR, f"{socket.gethostname()}:{_dead_pid()}")
    set_internal(trial, WORKER_START_ATTR, "1")
    with caplog.at_level("WARNING", logger="hpo_astro.store.recovery"):
        assert fail_dead_trials(study, grace_period=30) == [trial.number]
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.user_attrs[RETRY_OF_ATTR]["trial"] == trial.number and retry.params == trial.params
    assert f"could not write trial {trial._trial_id}'s note" in caplog.text
