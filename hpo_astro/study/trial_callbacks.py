"""The trainer callbacks that talk to Optuna during a trial (`hpo_astro.study.objective` hands them to the trainer).

* `OptunaPruning`: reports the objective metric every epoch (the trial's intermediate values, which
  optuna-dashboard draws) and stops training when the pruner says so.
* `ArtifactCheckpoint`: saves the whole training state to the artifact store, so a trial whose process dies or is
  interrupted is retried from its last checkpoint, and records the per-epoch curves up to it on the trial.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import optuna
import torch

from hpo_astro.core.train import TrainState
from hpo_astro.store.record import CHECKPOINT_ATTR, HISTORY_SYSTEM_ATTR, curve_attrs, set_internal
from hpo_astro.study.evaluation import EvalProgress
from hpo_astro.study.interrupts import process_interrupts

MAXIMIZED_PER_EPOCH = ("val_accuracy", "val_roc_auc")  # the others (a loss, an error rate) are minimised


class OptunaPruning:
    """Trainer callback: report the objective metric each epoch, prune on request. Epoch e is reported as step
    `step_offset + e`: a trial of several runs reports them as one series (`hpo_astro.study.evaluation`)."""

    def __init__(
        self,
        trial: optuna.Trial,
        metric: str,
        on_epoch: Callable[[int, TrainState], None] | None = None,
        reported_until: int = 0,
        step_offset: int = 0,
    ) -> None:
        self.trial, self.metric, self.on_epoch = trial, metric, on_epoch
        self.reported_until = reported_until  # steps a retried trial inherited, already reported
        self.step_offset = step_offset
        # Optuna neither takes reports from nor prunes a multi-objective trial: its curves are the trial's
        # `curve_*` attributes (`record_curves`), and it ends at its epoch cap or by early stopping.
        self.single_objective = len(trial.study.directions) == 1

    def on_epoch_end(self, state: TrainState) -> None:
        step = self.step_offset + state.epoch
        if self.single_objective and step > self.reported_until:
            value = finite_metric(getattr(state.last, self.metric), self.metric in MAXIMIZED_PER_EPOCH)
            self.trial.report(value, step)
        if self.on_epoch:
            self.on_epoch(self.trial.number, state)
        if self.single_objective and self.trial.should_prune():
            state.request_stop("pruned")


class ArtifactCheckpoint:
    """Trainer callback: save the whole training state to the artifact store and point the trial's `checkpoint`
    (system) attribute at it; the previous checkpoint is removed once the new one is in place. The trial's per-epoch
    curves (`curve_*` attributes) are written with it: a retry that resumes from the checkpoint inherits curves that
    end where it does, and a fast epoch does not pay for a store write per metric.

    It writes after the first epoch, then after the first epoch that ends `interval` seconds or more after the last
    write (0: every epoch). Writing costs tens of milliseconds, which is a large share of a fast GPU epoch; a killed
    trial resumes from its last whole checkpoint either way, and ends exactly as it would have."""

    def __init__(
        self,
        trial: optuna.Trial,
        store: optuna.artifacts.FileSystemArtifactStore,
        previous: str | None,
        interval: float = 0.0,
        progress: EvalProgress | None = None,
    ):
        self.trial, self.store, self.current, self.interval = trial, store, previous, interval
        self.progress = progress or EvalProgress()  # a trial of several runs: the runs it has finished
        self.last_write: float | None = None
        self.run = 0
        self.pointed = previous is not None  # the trial's checkpoint attribute names (or named) a file

    def start_run(self, index: int) -> None:
        """A trial's run `index` begins (`hpo_astro.study.evaluation`): its first epoch is checkpointed, and only the
        first run's curves are the trial's."""
        self.run, self.last_write = index, None

    def on_epoch_end(self, state: TrainState) -> None:
        if self.last_write is not None and time.monotonic() - self.last_write < self.interval:
            return
        self.write(state)
        self.last_write = time.monotonic()

    def write(self, state: TrainState) -> None:
        artifact_id = f"{checkpoint_prefix(self.trial.study)}{uuid.uuid4()}"
        with process_interrupts.deferred(), tempfile.TemporaryFile() as fh:
            saved = state.checkpoint()
            if self.progress.done or self.run:
                saved |= self.progress.to_checkpoint()
            torch.save(saved, fh)
            fh.seek(0)
            self.store.write(artifact_id, fh)
            if self.run == 0:
                record_curves(self.trial, state.history)
            set_internal(self.trial, CHECKPOINT_ATTR, {"artifact_id": artifact_id, "epoch": state.epoch})
            self.pointed = True
            self.remove()
            self.current = artifact_id

    def remove(self) -> None:
        if self.current:
            with contextlib.suppress(optuna.artifacts.exceptions.ArtifactNotFound):
                self.store.remove(self.current)
            self.current = None


def record_curves(trial: optuna.Trial, history: Iterable[Any]) -> None:
    """Write a trial's per-epoch metrics (`EpochMetrics`): exactly, for `record.trial_history`, and as the rounded
    `curve_*` user attributes that optuna-dashboard shows (see `hpo_astro.store.record`)."""
    rows = [h.as_dict() for h in history]
    trial.storage.set_trial_system_attr(trial._trial_id, HISTORY_SYSTEM_ATTR, rows)
    for key, values in curve_attrs(rows).items():
        trial.set_user_attr(key, values)


def checkpoint_prefix(study: optuna.Study) -> str:
    """The start of every checkpoint file name of this study in the artifact folder."""
    return f"ckpt-study{study._study_id}-"


def finite_metric(value: float, maximize: bool) -> float:
    """A NaN/inf metric (a diverged run, a one-class split) becomes the worst value, never the best."""
    if math.isfinite(value):
        return value
    return 0.0 if maximize else 1e9  # accuracy and ROC AUC are >= 0; losses are finite and small when sane
