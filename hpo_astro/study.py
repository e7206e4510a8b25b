"""Studies in an Optuna storage: create or resume a study, run it to its exact budget, crash-safely.

* Budget: a number of *finished* trials (complete + pruned). The run loop recounts the store before every trial,
  so an interrupted run resumes where it stopped; a trial that finds the budget already taken by others (a race
  between workers) ends as a failed "surplus" trial instead of overshooting.
* Crash safety: every epoch the trial's full training state is checkpointed to the artifact store. A trial whose
  process dies (kill -9, out of memory, lost node) stops its heartbeat, is failed by the next worker after the
  grace period and re-queued with the same parameters and its checkpoint; Ctrl-C and SIGTERM fail and re-queue
  it at once. The retry resumes from the last checkpointed epoch and ends as the uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from hpo_astro.config import StudyConfig
from hpo_astro.data.prepare import DataSplits, PrepConfig, load_splits
from hpo_astro.errors import UserError, write_fault
from hpo_astro.record import StudyRecord
from hpo_astro.samplers import AblationSampler
from hpo_astro.samplers.ablation import EXHAUSTED_KEY
from hpo_astro.space import DEFAULT_PARAMS
from hpo_astro.storage import (
    WORKER_ATTR,
    WORKER_START_ATTR,
    artifact_dir,
    artifact_store,
    fail_dead_trials,
    open_storage,
    process_token,
    read_store,
    retry_callback,
    store_file,
)
from hpo_astro.strategies import make_pruner, make_sampler
from hpo_astro.train import TrainState, train

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HOLDING = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
MAX_CONSECUTIVE_FAILURES = 3
POLL_SECONDS = 1.0
CHECKPOINT_ATTR = "checkpoint"  # trial user attr: {"artifact_id", "epoch"} of the last epoch checkpoint
BEST_WEIGHTS_ATTR = "best_weights"  # study user attr: {"trial", "artifact_id", "value"}

optuna.logging.set_verbosity(optuna.logging.WARNING)


class _NoInterruptTraceback(logging.Filter):
    """Ctrl-C, SIGTERM and a full disk are expected ways to stop: Optuna's failed-trial warning keeps its line (which
    trial, which parameters) but not a traceback. Real errors keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and (isinstance(error, KeyboardInterrupt) or write_fault(error) is not None):
            record.exc_info = None
        return True


logging.getLogger("optuna.study._optimize").addFilter(_NoInterruptTraceback())


class StudyFailed(Exception):
    """Several trials in a row failed: something is wrong beyond one configuration (a bug, the device)."""


class WriteFailed(StudyFailed):
    """A checkpoint, the best weights or the study store could not be written (disk full, quota, I/O error). Not the
    configuration's fault: the run stops and the trial is re-queued, so re-running the same command resumes."""


class _SurplusTrial(Exception):
    """Nothing left for this trial: the sampler's plan is exhausted or the budget is taken by other trials."""


# --- objective ----------------------------------------------------------------------------------------------


class OptunaPruning:
    """Trainer callback: report the objective metric each epoch, keep the curves in the trial, prune on request."""

    def __init__(
        self,
        trial: optuna.Trial,
        metric: str,
        on_epoch: Callable[[int, TrainState], None] | None = None,
        reported_until: int = 0,
    ) -> None:
        self.trial, self.metric, self.on_epoch = trial, metric, on_epoch
        self.reported_until = reported_until  # epochs a retried trial inherited, already reported

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch > self.reported_until:
            self.trial.report(_finite(getattr(state.last, self.metric), self.metric != "val_loss"), state.epoch)
        self.trial.set_user_attr("history", [asdict(h) for h in state.history])
        if self.on_epoch:
            self.on_epoch(self.trial.number, state)
        if self.trial.should_prune():
            state.request_stop("pruned")


class ArtifactCheckpoint:
    """Trainer callback: after each epoch, save the whole training state to the artifact store and point the
    trial's `checkpoint` user attribute at it; the previous checkpoint is removed once the new one is in place."""

    def __init__(self, trial: optuna.Trial, store: optuna.artifacts.FileSystemArtifactStore, previous: str | None):
        self.trial, self.store, self.current = trial, store, previous

    def on_epoch_end(self, state: TrainState) -> None:
        artifact_id = f"{_checkpoint_prefix(self.trial.study)}{uuid.uuid4()}"
        with _interrupts.deferred(), tempfile.TemporaryFile() as fh:
            torch.save(state.checkpoint(), fh)
            fh.seek(0)
            self.store.write(artifact_id, fh)
            self.trial.set_user_attr(CHECKPOINT_ATTR, {"artifact_id": artifact_id, "epoch": state.epoch})
            self.remove()
            self.current = artifact_id

    def remove(self) -> None:
        if self.current:
            with contextlib.suppress(optuna.artifacts.exceptions.ArtifactNotFound):
                self.store.remove(self.current)
            self.current = None


def _finite(value: float, maximize: bool) -> float:
    """A NaN/inf metric (a diverged run, a one-class split) becomes the worst value, never the best."""
    if math.isfinite(value):
        return value
    return 0.0 if maximize else 1e9  # accuracy and ROC AUC are >= 0; losses are finite and small when sane


@dataclass
class Objective:
    cfg: StudyConfig
    data: DataSplits
    target: int
    store: optuna.artifacts.FileSystemArtifactStore
    on_epoch: Callable[[int, TrainState], None] | None = None
    current_trial_id: int | None = field(default=None, init=False)
    write_failure: str | None = field(default=None, init=False)  # set when a trial failed for want of disk

    def __call__(self, trial: optuna.Trial) -> float:
        self.current_trial_id = trial._trial_id
        checkpoint = None
        try:
            value, checkpoint = self._run(trial)
            return value
        except KeyboardInterrupt:
            raise  # Ctrl-C / SIGTERM: the checkpoint stays for the retry
        except optuna.TrialPruned:
            self._drop(trial)
            raise
        except Exception as exc:  # recorded on the trial, which Optuna then marks failed
            self.write_failure = write_fault(exc)
            if self.write_failure is not None:
                raise  # the disk's fault: the checkpoint stays for the retry (see run_study)
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            self._drop(trial)
            raise
        finally:
            if checkpoint is not None:
                checkpoint.remove()

    def _drop(self, trial: optuna.Trial) -> None:
        """Remove the trial's checkpoint: it has finished and will not be retried."""
        pointer = trial.user_attrs.get(CHECKPOINT_ATTR)
        if pointer:
            with contextlib.suppress(optuna.artifacts.exceptions.ArtifactNotFound):
                self.store.remove(pointer["artifact_id"])

    def _run(self, trial: optuna.Trial) -> tuple[float, ArtifactCheckpoint]:
        storage = trial.study._storage
        # Who runs the trial, first: on a store without heartbeat (journal) this is how a dead process is recognised.
        trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr(WORKER_START_ATTR, process_token())
        if storage.get_trial_system_attrs(trial._trial_id).get(EXHAUSTED_KEY):
            raise _SurplusTrial("the sampler's plan is exhausted")
        ahead = [
            t
            for t in storage.get_all_trials(trial.study._study_id, deepcopy=False)
            if t.number < trial.number and t.state in HOLDING
        ]
        if len(ahead) >= self.target:
            raise _SurplusTrial(f"the budget of {self.target} trials is already taken by other trials")
        sampled = {name: trial.suggest_categorical(name, list(values)) for name, values in self.cfg.space.items()}
        params = {**DEFAULT_PARAMS, **(self.cfg.baseline or {}), **sampled}
        trial.set_user_attr("params_full", params)
        resume, inherited = self._inherited_checkpoint(trial, params)
        checkpoint = ArtifactCheckpoint(trial, self.store, inherited)
        reported = storage.get_trial(trial._trial_id).intermediate_values  # a retry inherits its curve
        callbacks = [OptunaPruning(trial, self.cfg.metric, self.on_epoch, max(reported, default=0)), checkpoint]
        with _interrupts.allowed():
            result = train(
                params,
                self.data,
                callbacks=callbacks,
                max_epochs=self.cfg.max_epochs,
                seed=self.cfg.seed,
                resume=resume,
            )
        for key, value in {
            "best_epoch": result.best_epoch,
            "stop_reason": result.stop_reason,
            "wall_time": result.wall_time,
            "n_params": result.n_params,
            "device": result.device,
            "train_seed": result.seed,
            "val_metrics": result.val_metrics.as_dict(),
            "train_metrics": result.train_metrics.as_dict(),
        }.items():
            trial.set_user_attr(key, value)
        if result.stop_reason == "pruned":
            checkpoint.remove()
            raise optuna.TrialPruned(f"pruned at epoch {len(result.history)}")
        value = _finite(
            getattr(result.val_metrics, self.cfg.metric.removeprefix("val_")), self.cfg.direction == "maximize"
        )
        self._keep_if_best(trial, value, result.model)
        return value, checkpoint

    def _inherited_checkpoint(self, trial: optuna.Trial, params: dict) -> tuple[dict | None, str | None]:
        """The checkpoint a retried trial inherited from the trial it retries (None for a fresh trial)."""
        pointer = trial.user_attrs.get(CHECKPOINT_ATTR)
        if not pointer:
            return None, None
        try:
            with self.store.open_reader(pointer["artifact_id"]) as fh:
                checkpoint = torch.load(fh, map_location="cpu", weights_only=True)
        except Exception:  # missing or unreadable (e.g. killed while writing): start from epoch 0
            return None, None
        if dict(checkpoint.get("params", {})) != params:
            return None, pointer["artifact_id"]
        trial.set_user_attr("resumed_from_epoch", int(pointer["epoch"]))
        return checkpoint, pointer["artifact_id"]

    def _keep_if_best(self, trial: optuna.Trial, value: float, model: torch.nn.Module) -> None:
        """Keep this trial's weights if it is the best so far; drop the previous best's."""
        study = trial.study
        best = study.user_attrs.get(BEST_WEIGHTS_ATTR)
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        if best is not None and not (value > best["value"] if maximize else value < best["value"]):
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial-{trial.number}-weights.pt"
            torch.save(model.state_dict(), path)
            artifact_id = optuna.artifacts.upload_artifact(
                artifact_store=self.store, file_path=str(path), study_or_trial=trial
            )
        study.set_user_attr(BEST_WEIGHTS_ATTR, {"trial": trial.number, "artifact_id": artifact_id, "value": value})
        if best is not None:
            with contextlib.suppress(optuna.artifacts.exceptions.ArtifactNotFound):
                self.store.remove(best["artifact_id"])


# --- create / resume ----------------------------------------------------------------------------------------


def study_record(cfg: StudyConfig, data: DataSplits) -> StudyRecord:
    return StudyRecord.from_run(
        cfg, data.fingerprint, data.channels, data.source, artifact_dir(cfg.storage, cfg.artifacts)
    )


def create_or_resume(
    cfg: StudyConfig,
    storage: optuna.storages.BaseStorage,
    record: StudyRecord,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Load the study named `cfg.study_name`, or create it; refuse one whose identity differs.

    The record is written attribute by attribute with its version last (see `hpo_astro.record`), so a study whose
    creation was interrupted (Ctrl-C, kill -9) has no whole record: it is completed here, not compared, and the same
    command resumes it."""
    study = optuna.create_study(  # load_if_exists: also when another worker creates it at the same moment
        study_name=cfg.study_name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction=cfg.direction,
        load_if_exists=True,
    )
    current = study.user_attrs
    stored = StudyRecord.from_attrs(current)
    if stored is None and study.get_trials(deepcopy=False):
        raise UserError(
            f"study {cfg.study_name!r} in the store has trials but no hpo-astro configuration (made by another "
            "program?); use another --study name"
        )
    if stored is not None and (differences := stored.differences(record)):
        key = differences[0]
        raise UserError(
            f"study {cfg.study_name!r} in the store was made with a different {key.replace('_', ' ')} "
            f"({_short(getattr(stored, key))} vs {_short(getattr(record, key))}); use another --study name"
        )
    for key, value in record.to_attrs().items():
        if current.get(key) != value:
            study.set_user_attr(key, value)
    return study


def _short(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- run ----------------------------------------------------------------------------------------------------


@dataclass
class RunEvents:
    """Hooks for a live display; all optional."""

    on_start: Callable[[optuna.Study, int, int], None] | None = None  # study, finished, target
    on_epoch: Callable[[int, TrainState], None] | None = None  # trial number, trainer state
    on_trial_end: Callable[[optuna.Study, FrozenTrial, int], None] | None = None  # ..., finished so far
    on_wait: Callable[[int], None] | None = None  # number of running trials (other workers' or dead ones)


@dataclass
class RunResult:
    study: optuna.Study
    target: int
    finished: int
    ran: int  # trials run by this call


def prepare_run(cfg: StudyConfig) -> tuple[DataSplits, optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    """Everything that can refuse bad input, done before the store is touched."""
    cfg.validate()
    sampler = make_sampler(cfg)
    pruner = make_pruner(cfg)
    data = load_splits(cfg.data, PrepConfig(channels=cfg.channels))
    return data, sampler, pruner


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def target_trials(cfg: StudyConfig, sampler: optuna.samplers.BaseSampler) -> int:
    """The budget: `n_trials`, or fewer for a sampler whose plan is shorter (ablation: 47 for the paper)."""
    if isinstance(sampler, AblationSampler):
        return min(cfg.n_trials, sampler.n_slots)
    if isinstance(sampler, optuna.samplers.GridSampler):
        return min(cfg.n_trials, cfg.space.n_combinations())
    return cfg.n_trials


class _Interrupts:
    """Ctrl-C and SIGTERM as KeyboardInterrupt, raised only where stopping is safe.

    Raised at an arbitrary point, an interrupt can do harm: inside `torch.save` it comes out of the zip writer as a
    RuntimeError (an ordinary failed trial, and the run carries on: the signal is lost); between Optuna starting a
    trial's heartbeat thread and entering its `with` block it leaves that thread running forever (the process never
    exits). So during a trial signals are deferred (`deferred()`: remembered, raised when the block ends) except
    inside training (`allowed()`), and inside training again while an epoch's checkpoint is written. (The best
    weights are saved after training, where signals are already deferred.)
    """

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None

    def handler(self, signum: int, frame: object) -> None:
        if self.depth:
            self.pending = signum
            return
        raise KeyboardInterrupt(f"signal {signum}")

    def raise_pending(self) -> None:
        if self.pending is not None:
            signum, self.pending = self.pending, None
            raise KeyboardInterrupt(f"signal {signum}")

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0:
                self.raise_pending()

    @contextlib.contextmanager
    def allowed(self) -> Iterator[None]:
        """Signals act at once inside (a signal deferred until now is raised on entry)."""
        saved, self.depth = self.depth, 0
        try:
            self.raise_pending()
            yield
        finally:
            self.depth = saved

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Route SIGINT and SIGTERM (preemption, `kill`) here: the Ctrl-C path keeps the checkpoint, fails the trial
        and re-queues it. Outside the main thread signals are left alone."""
        try:
            previous = {sig: signal.signal(sig, self.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread
            yield
            return
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            self.depth, self.pending = 0, None


_interrupts = _Interrupts()


def _fail_stale(study: optuna.Study, grace_period: float) -> None:
    """Fail and re-queue trials whose process died (heartbeat, or a dead local process on stores without one):
    see `hpo_astro.storage.fail_dead_trials`."""
    fail_dead_trials(study, grace_period)


def _requeue(study: optuna.Study, trial_id: int | None) -> None:
    """After Ctrl-C / SIGTERM: fail the interrupted trial if Optuna has not, and re-queue it with its parameters
    and checkpoint (what the heartbeat does for a dead process). Signals are deferred until training starts (see
    `_Interrupts`), so an interrupted trial always has its id and its full parameters."""
    if trial_id is None:
        return
    storage = study._storage
    trial = storage.get_trial(trial_id)
    if trial.state == TrialState.RUNNING:
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        trial = storage.get_trial(trial_id)
    interrupted = "fail_reason" not in trial.user_attrs  # an ordinary error records its reason
    if trial.state == TrialState.FAIL and "params_full" in trial.user_attrs and interrupted:
        retry_callback()(study, trial)


def run_study(cfg: StudyConfig, events: RunEvents | None = None) -> RunResult:
    """Create or resume the study and run trials until it holds `target` finished trials."""
    events = events or RunEvents()
    data, sampler, pruner = prepare_run(cfg)
    storage = open_storage(cfg.storage, cfg.heartbeat_interval, cfg.grace_period)
    study = create_or_resume(cfg, storage, study_record(cfg, data), sampler, pruner)
    target = target_trials(cfg, sampler)
    store = artifact_store(Path(study.user_attrs["artifacts"]))
    objective = Objective(cfg, data, target, store, events.on_epoch)
    finished = count_finished(study)
    if events.on_start:
        events.on_start(study, finished, target)
    ran = failures = 0
    with _interrupts.installed():
        while True:
            _fail_stale(study, cfg.grace_period)
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            if finished >= target:
                break
            if waiting == 0 and finished + running >= target:
                # The last trials run elsewhere, or in a dead process until the heartbeat grace period ends.
                if events.on_wait:
                    events.on_wait(running)
                time.sleep(POLL_SECONDS)
                continue
            before = len(trials)
            objective.current_trial_id = objective.write_failure = None
            try:
                with _interrupts.deferred():  # signals act inside training only (see _Interrupts)
                    study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
            except KeyboardInterrupt:
                _requeue(study, objective.current_trial_id)
                raise
            except Exception as exc:  # the store itself failed while Optuna recorded the trial
                reason = write_fault(exc)
                if reason is None:
                    raise
                raise WriteFailed(f"cannot write the study store: {reason}; {_RESUME_HINT}") from None
            if objective.write_failure is not None:
                with contextlib.suppress(Exception):  # the store may be full too: the heartbeat re-queues it later
                    _requeue(study, objective.current_trial_id)
                raise WriteFailed(f"cannot write: {objective.write_failure}; {_RESUME_HINT}")
            trials = study.get_trials(deepcopy=False)
            mine = [t for t in trials if t._trial_id == objective.current_trial_id]
            if not mine:
                if len(trials) == before:
                    break  # the sampler stopped the study before creating a trial
                continue
            last = mine[0]
            finished = count_finished(study)
            ran += 1
            if events.on_trial_end:
                events.on_trial_end(study, last, finished)
            if last.system_attrs.get(EXHAUSTED_KEY):
                break
            surplus = "_SurplusTrial" in last.user_attrs.get("fail_reason", "")
            failures = failures + 1 if last.state == TrialState.FAIL and not surplus else 0
            if failures >= MAX_CONSECUTIVE_FAILURES:
                reason = last.user_attrs.get("fail_reason", "unknown error")
                raise StudyFailed(f"{failures} trials in a row failed; last error: {reason}")
    _remove_orphan_checkpoints(study, Path(study.user_attrs["artifacts"]))
    return RunResult(study, target, finished, ran)


_RESUME_HINT = "the trial was re-queued; free some space and re-run the same command to resume"


def _remove_orphan_checkpoints(study: optuna.Study, directory: Path) -> None:
    """Delete this study's leftover checkpoint files (a process killed between writing a new checkpoint and
    removing the old one leaves one behind). Only when no trial of the study is running or queued."""
    if study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        return
    for path in directory.glob(f"{_checkpoint_prefix(study)}*"):
        path.unlink(missing_ok=True)


def _checkpoint_prefix(study: optuna.Study) -> str:
    return f"ckpt-study{study._study_id}-"


# --- status -------------------------------------------------------------------------------------------------


@dataclass
class StudyStatus:
    name: str
    strategy: str
    direction: str
    target: int | None
    counts: dict[str, int]
    best_value: float | None
    best_params: dict[str, Any] | None
    best_trial: int | None


def study_status(storage_url: str, name: str | None = None) -> list[StudyStatus]:
    file = store_file(storage_url)
    missing = file is not None and not file.exists()  # no store, no studies: a status query never creates one
    with contextlib.nullcontext() if missing else read_store(storage_url) as storage:  # read-only: never writes
        summaries = [] if storage is None else optuna.get_all_study_summaries(storage, include_best_trial=False)
        names = [s.study_name for s in summaries]
        if name is not None:
            if name not in names:
                raise UserError(
                    f"no study named {name!r} in {storage_url}" + (f"; studies: {', '.join(names)}" if names else "")
                )
            names = [name]
        out = []
        for study_name in names:
            study = optuna.load_study(study_name=study_name, storage=storage)
            trials = study.get_trials(deepcopy=False)
            counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
            try:
                best = study.best_trial
            except ValueError:
                best = None
            out.append(
                StudyStatus(
                    name=study_name,
                    strategy=study.user_attrs.get("strategy", "?"),
                    direction=study.direction.name.lower(),
                    target=study.user_attrs.get("n_trials"),
                    counts={k: v for k, v in counts.items() if v},
                    best_value=best.value if best else None,
                    best_params=best.params if best else None,
                    best_trial=best.number if best else None,
                )
            )
    return out
