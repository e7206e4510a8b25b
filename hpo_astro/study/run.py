"""Running a study to its exact budget, crash-safely.

* Budget: a number of *finished* trials (complete + pruned). The run loop recounts the store before every trial,
  so an interrupted run resumes where it stopped; a trial that finds the budget already taken by others (a race
  between workers) ends as a failed "surplus" trial instead of overshooting.
* Time budget: a `deadline` (Optuna's `timeout`) stops the loop before a trial starts past it; the running trial
  finishes. The budget is still the number of finished trials: the same call again goes on towards it.
* Crash safety: every epoch the trial's full training state is checkpointed to the artifact store. A trial whose
  process dies (kill -9, out of memory, lost node) stops its heartbeat, is failed by the next worker after the
  grace period and re-queued with the same parameters and its checkpoint; Ctrl-C and SIGTERM fail and re-queue
  it at once. The retry resumes from the last checkpointed epoch and ends as the uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo_astro.core.epochs import OPERATING_POINT_FIELDS
from hpo_astro.core.train import TrainFn, TrainState
from hpo_astro.core.train import train as train_configuration
from hpo_astro.data.prepare import DataSplits, PrepConfig, load_splits
from hpo_astro.errors import StudyFailed, UserError, WriteFailed, write_fault
from hpo_astro.samplers import AblationSampler
from hpo_astro.samplers.ablation import EXHAUSTED_KEY
from hpo_astro.store.record import (
    ARTIFACTS_KEY,
    CHECKPOINT_ATTR,
    FAIL_REASON_ATTR,
    PARAMS_FULL_ATTR,
    TRAINED,
    StudyRecord,
    fail_reason,
    internal_attr,
    is_surplus,
)
from hpo_astro.store.recovery import fail_dead_trials, interrupted_reason, retry_callback
from hpo_astro.store.storage import artifact_store, open_storage
from hpo_astro.store.trials import FINISHED
from hpo_astro.study.config import StudyConfig
from hpo_astro.study.create import create_or_resume, study_record
from hpo_astro.study.evaluation import check_folds
from hpo_astro.study.interrupts import configure_logging, process_interrupts
from hpo_astro.study.objective import Objective
from hpo_astro.study.pbt import PbtObjective, record_settings, settle_pbt
from hpo_astro.study.pbt_plan import PBT, check_trainer
from hpo_astro.study.strategies import make_pruner, make_sampler
from hpo_astro.study.trial_callbacks import checkpoint_prefix

MAX_CONSECUTIVE_FAILURES = 3
POLL_SECONDS = 1.0
clock = time.time  # the wall clock a `deadline` is read on (shared by worker processes; tests replace it)


def deadline_after(timeout: float | None) -> float | None:
    """The `deadline` of `run_study` for a time budget of `timeout` seconds from now (None: no time budget)."""
    return None if timeout is None else clock() + timeout


@dataclass
class RunEvents:
    """Hooks for a live display; all optional."""

    on_start: Callable[[optuna.Study, int, int], None] | None = None  # study, finished, target
    on_epoch: Callable[[int, TrainState], None] | None = None  # trial number, trainer state
    on_trial_end: Callable[[optuna.Study, FrozenTrial, int], None] | None = None  # ..., finished so far
    on_wait: Callable[[int], None] | None = None  # number of running trials (other workers' or dead ones)
    on_trial_start: Callable[[int], None] | None = None  # trial number, before its first epoch


class Interrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM stopped the run while this process ran trial `trial`. `requeued`: whether it was re-queued
    (False: the signal, deferred past training, came once the trial had ended as `state`); `checkpoint_epoch`: the
    epoch its checkpoint holds, from which the retry resumes (None: no checkpoint was written, it starts over)."""

    def __init__(self, trial: int, checkpoint_epoch: int | None, requeued: bool = True, state: str = "") -> None:
        super().__init__(f"trial {trial} interrupted")
        self.trial, self.checkpoint_epoch, self.requeued, self.state = trial, checkpoint_epoch, requeued, state


@dataclass
class RunResult:
    study: optuna.Study
    target: int
    finished: int
    ran: int  # trials run by this call
    timed_out: bool = False  # stopped by the deadline before the budget was reached


def prepare_run(
    cfg: StudyConfig, data: DataSplits | None = None
) -> tuple[DataSplits, optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    """Everything that can refuse bad input, done before the store is touched. `data`: splits the caller has
    already loaded (or, for a trainer that does not read them, a stand-in carrying the data's fingerprint)."""
    cfg.validate()
    sampler = make_sampler(cfg)
    pruner = make_pruner(cfg)
    if data is None:
        data = load_splits(cfg.data, PrepConfig(channels=cfg.channels, fractions=cfg.split))
    return data, sampler, pruner


def sampled_fixed_before(study: optuna.Study) -> bool:
    """Whether the study was made by an earlier version, which sampled one-value hyperparameters as Optuna
    parameters (its record has no `fixed_params`)."""
    record = StudyRecord.from_attrs(study.user_attrs)
    return record is not None and record.fixed_params is None


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def target_trials(cfg: StudyConfig, sampler: optuna.samplers.BaseSampler) -> int:
    """The budget: `n_trials`, or fewer for a sampler whose plan is shorter (ablation: 47 for the paper)."""
    if isinstance(sampler, AblationSampler):
        return min(cfg.n_trials, sampler.n_slots)
    if isinstance(sampler, optuna.samplers.GridSampler):
        return min(cfg.n_trials, cfg.space.n_combinations())
    return cfg.n_trials


def run_study(
    cfg: StudyConfig,
    events: RunEvents | None = None,
    train: TrainFn | None = None,
    data: DataSplits | None = None,
    storage: optuna.storages.BaseStorage | None = None,
    before: Callable[[optuna.Study], None] | None = None,
    deadline: float | None = None,
) -> RunResult:
    """Create or resume the study and run trials until it holds `target` finished trials. `train` replaces the
    trainer (default `hpo_astro.core.train.train`), e.g. by a fast stand-in or a table's answers; `data` is splits
    loaded once for many studies (default: `cfg.data` is loaded); `storage` an open store to use instead of opening
    `cfg.storage` (which still names the artifact folder), e.g. an in-memory one (`hpo_astro.benchmark`); `before`
    is called with the study once it is created or resumed, before any trial (`hpo_astro.study.confirm` enqueues its
    trials there); `deadline`: a time on `clock` after which no trial starts (the running one finishes)."""
    configure_logging()
    events = events or RunEvents()
    study, target, objective = _open(cfg, events.on_epoch, train, data, storage)
    if before:
        before(study)
    if events.on_start:
        events.on_start(study, count_finished(study), target)
    ran = failures = 0
    timed_out = False
    with process_interrupts.installed():
        while True:
            counts = _recount(study, cfg.grace_period)
            finished = counts.finished
            if finished >= target:
                break
            if deadline is not None and clock() >= deadline:
                timed_out = True
                break
            if counts.waiting == 0 and finished + counts.running >= target:
                # The last trials run elsewhere, or in a dead process until the heartbeat grace period ends.
                if events.on_wait:
                    events.on_wait(counts.running)
                time.sleep(POLL_SECONDS)
                continue
            trial = _run_one_trial(study, objective, events.on_trial_start)
            if trial is None:
                if len(study.get_trials(deepcopy=False)) == counts.total:
                    break  # the sampler stopped the study before creating a trial
                continue
            ran += 1
            finished = count_finished(study)
            if events.on_trial_end:
                events.on_trial_end(study, trial, finished)
            if trial.system_attrs.get(EXHAUSTED_KEY):
                break  # the sampler's plan is done
            failures = _failures_in_a_row(trial, failures)
    _remove_orphan_checkpoints(study)
    return RunResult(study, target, finished, ran, timed_out)


def _open(
    cfg: StudyConfig,
    on_epoch: Callable[[int, TrainState], None] | None,
    train: TrainFn | None,
    data: DataSplits | None = None,
    storage: optuna.storages.BaseStorage | None = None,
) -> tuple[optuna.Study, int, Objective]:
    """Check the input, then open the store and create or resume the study: the study, its budget, its objective."""
    trial_kind = getattr(train, "trial_kind", TRAINED)  # a table's trainer says what its trials are
    if cfg.folds > 1 and trial_kind != TRAINED:
        raise UserError("--folds needs training on the data: a table's rows were trained on one fixed split")
    if any(spec.key in OPERATING_POINT_FIELDS for spec in cfg.objectives) and trial_kind != TRAINED:
        raise UserError(
            f"--objective {cfg.objective} needs training: a table records no operating point per epoch (use "
            "accuracy, loss or roc_auc)"
        )
    check_trainer(cfg, trial_kind)  # pbt continues checkpoints: a table's replay has none
    data, sampler, pruner = prepare_run(cfg, data)
    if cfg.folds > 1:
        check_folds(data, cfg.folds)
    if storage is None:
        storage = open_storage(cfg.storage, cfg.heartbeat_interval, cfg.grace_period)
    cfg, sampler = settle_pbt(storage, cfg, sampler)  # a PBT study's settings: the stored ones, or refused
    study = create_or_resume(cfg, storage, study_record(cfg, data, trial_kind), sampler, pruner)
    record_settings(study, cfg)  # before any trial: every worker trains with the same settings
    if sampled_fixed_before(study) and cfg.space.fixed():  # resumed as that version ran it: see `SearchSpace`
        cfg.space = dataclasses.replace(cfg.space, fixed_sampled=True)
        study.sampler = sampler = make_sampler(cfg)
    target = target_trials(cfg, sampler)
    store = artifact_store(Path(study.user_attrs[ARTIFACTS_KEY]))
    objective = PbtObjective if cfg.strategy == PBT else Objective
    return study, target, objective(cfg, data, target, store, on_epoch, train or train_configuration)


class _Counts(NamedTuple):
    finished: int
    running: int
    waiting: int
    total: int


def _recount(study: optuna.Study, grace_period: float) -> _Counts:
    """The study's trials by state, every worker's, once the trials whose process died are failed and re-queued
    (see `hpo_astro.store.recovery.fail_dead_trials`). An in-memory store is this process's alone: none died."""
    if not isinstance(study._storage, optuna.storages.InMemoryStorage):
        fail_dead_trials(study, grace_period)
    trials = study.get_trials(deepcopy=False)
    return _Counts(
        finished=sum(t.state in FINISHED for t in trials),
        running=sum(t.state == TrialState.RUNNING for t in trials),
        waiting=sum(t.state == TrialState.WAITING for t in trials),
        total=len(trials),
    )


def _run_one_trial(
    study: optuna.Study, objective: Objective, on_trial_start: Callable[[int], None] | None = None
) -> FrozenTrial | None:
    """Let Optuna run one trial here; the trial as stored, or None when the objective never ran (the sampler stopped
    the study or failed first). Ctrl-C / SIGTERM and a failed write re-queue the trial, then stop the run (an
    interrupted trial: `Interrupted`)."""
    objective.current_trial_id = objective.write_failure = None

    def started(trial: optuna.Trial) -> float:
        if on_trial_start:
            on_trial_start(trial.number)
        return objective(trial)

    try:
        with process_interrupts.deferred():  # signals act inside training only (see Interrupts)
            study.optimize(started, n_trials=1, catch=(Exception,), gc_after_trial=False)
    except KeyboardInterrupt as exc:
        requeued = _requeue(study, objective.current_trial_id, interrupted_reason(exc))
        if objective.current_trial_id is None:
            raise
        trial = study._storage.get_trial(objective.current_trial_id)
        epoch = _checkpoint_epoch(trial) if requeued else None
        raise Interrupted(trial.number, epoch, requeued, trial.state.name.lower()) from None
    except Exception as exc:  # the store itself failed while Optuna recorded the trial
        if _ended_elsewhere(study, objective.current_trial_id, exc):
            return study._storage.get_trial(objective.current_trial_id)  # type: ignore[arg-type]
        reason = write_fault(exc)
        if reason is None:
            raise
        raise WriteFailed(f"cannot write the study store: {reason}; {_RESUME_HINT}") from None
    if objective.write_failure is not None:
        try:
            _requeue(study, objective.current_trial_id, f"cannot write: {objective.write_failure}")
        except Exception as exc:  # the store may be full too: the heartbeat (or the next run) re-queues it later
            if write_fault(exc) is None:
                raise
        raise WriteFailed(f"cannot write: {objective.write_failure}; {_RESUME_HINT}")
    store_error = getattr(objective, "store_error", None)  # a tampered store, met inside the trial (pbt)
    if store_error is not None:
        raise store_error
    if objective.current_trial_id is None:
        return None
    return study._storage.get_trial(objective.current_trial_id)


def _ended_elsewhere(study: optuna.Study, trial_id: int | None, exc: Exception) -> bool:
    """Whether Optuna could not record the trial's end because another process had already ended it (e.g. failed
    it, presumed dead, while it waited in its sampler): the trial stands as that process left it."""
    if trial_id is None or not isinstance(exc, ValueError | optuna.exceptions.UpdateFinishedTrialError):
        return False
    return study._storage.get_trial(trial_id).state.is_finished()


_RESUME_HINT = "the trial was re-queued; free some space and re-run the same command to resume"


def _requeue(study: optuna.Study, trial_id: int | None, reason: str) -> bool:
    """After Ctrl-C / SIGTERM: fail the interrupted trial if Optuna has not, and re-queue it with its parameters
    and checkpoint (what the heartbeat does for a dead process). Signals are deferred until training starts (see
    `hpo_astro.study.interrupts`), so an interrupted trial always has its id and its full parameters."""
    if trial_id is None:
        return False
    storage = study._storage
    trial = storage.get_trial(trial_id)
    if trial.state == TrialState.RUNNING:
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        trial = storage.get_trial(trial_id)
    interrupted = FAIL_REASON_ATTR not in trial.user_attrs  # an ordinary error records its reason
    if trial.state == TrialState.FAIL and internal_attr(trial, PARAMS_FULL_ATTR) is not None and interrupted:
        retry_callback(reason)(study, trial)
        return True
    return False


def _checkpoint_epoch(trial: FrozenTrial) -> int | None:
    """The epoch of the checkpoint `trial` names (one written by it, or inherited), None when it names none."""
    pointer = internal_attr(trial, CHECKPOINT_ATTR)
    if not isinstance(pointer, dict) or "artifact_id" not in pointer:
        return None
    epoch = pointer.get("epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def _failures_in_a_row(trial: FrozenTrial, before: int) -> int:
    """Failed trials in a row, counting this one; any other outcome, or a surplus trial (nothing was left for it),
    starts again from 0. Too many stop the run: something is wrong beyond one configuration."""
    surplus = is_surplus(trial)
    failures = before + 1 if trial.state == TrialState.FAIL and not surplus else 0
    if failures >= MAX_CONSECUTIVE_FAILURES:
        reason = fail_reason(trial, "unknown error")
        raise StudyFailed(f"{failures} trials in a row failed; last error: {reason}")
    return failures


def _remove_orphan_checkpoints(study: optuna.Study) -> None:
    """Delete this study's leftover checkpoint files (a process killed between writing a new checkpoint and
    removing the old one leaves one behind). Only when no trial of the study is running or queued."""
    if study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        return
    for path in Path(study.user_attrs[ARTIFACTS_KEY]).glob(f"{checkpoint_prefix(study)}*"):
        path.unlink(missing_ok=True)
