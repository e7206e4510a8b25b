"""The objective Optuna calls for each trial: it checks that the trial is not surplus, completes its parameters,
resumes a retried trial from the checkpoint it inherited, trains (its runs one after another, or stacked:
`hpo_astro.study.stacked_runs`), records the results on the trial and keeps the best weights of the study. The
callbacks it hands the trainer are in `hpo_astro.study.trial_callbacks`."""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import socket
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from hpo_astro.core.cost import InferenceCost, measure_cost
from hpo_astro.core.epochs import EpochMetrics
from hpo_astro.core.hyperparameters import DEFAULT_PARAMS
from hpo_astro.core.metrics import stated_rates
from hpo_astro.core.space import SearchSpace
from hpo_astro.core.stacked import stacking_refusal
from hpo_astro.core.train import TrainFn, TrainResult, TrainState, resolve_device
from hpo_astro.core.train import train as train_configuration
from hpo_astro.data.prepare import DataSplits
from hpo_astro.errors import described, write_fault
from hpo_astro.samplers.ablation import EXHAUSTED_KEY
from hpo_astro.store.record import (
    BEST_EPOCH_ATTR,
    BEST_WEIGHTS_ATTR,
    CHECKPOINT_ATTR,
    COST_ATTR,
    DEVICE_ATTR,
    EVAL_RUNS_ATTR,
    EVAL_SEM_ATTR,
    EVAL_STACKING_ATTR,
    EVAL_STD_ATTR,
    EVAL_VALUES_ATTR,
    FAIL_REASON_ATTR,
    N_PARAMS_ATTR,
    PARAMS_FULL_ATTR,
    RESUMED_FROM_EPOCH_ATTR,
    RUNS_SYSTEM_ATTR,
    STOP_REASON_ATTR,
    SURPLUS_ATTR,
    TRAIN_SEED_ATTR,
    VAL_METRICS_ATTR,
    WALL_TIME_ATTR,
    WEIGHTS_MIMETYPE,
    WORKER_ATTR,
    WORKER_START_ATTR,
    internal_attr,
    set_internal,
)
from hpo_astro.store.recovery import process_token
from hpo_astro.store.trials import HOLDING, better, maximizes
from hpo_astro.study.config import StudyConfig
from hpo_astro.study.evaluation import (
    RECORDED_RUN_FIELDS,
    EvalPlan,
    EvalProgress,
    EvalRun,
    Spread,
    eval_plan,
    fold_data,
    mean_metrics,
    run_summary,
)
from hpo_astro.study.interrupts import process_interrupts
from hpo_astro.study.pareto import keep_if_on_front, objective_values
from hpo_astro.study.stacked_runs import train_runs_stacked
from hpo_astro.study.trial_callbacks import (
    ArtifactCheckpoint,
    OptunaPruning,
    finite_metric,
    record_curves,
)

# Trials that hold a place in the budget: finished, or running or queued to finish.
# Trial system attribute `checkpoint`: {"artifact_id", "epoch"} of the trial's last checkpoint while it can still be
# resumed from it (running, or interrupted and re-queued); once the trial has ended the file is deleted and the
# pointer becomes {"epoch", "deleted": true} (Optuna cannot remove an attribute).
# A checkpoint that is gone or was cut short: FileNotFoundError and the like (OSError, ArtifactNotFound), an empty file
# (EOFError), a truncated zip (RuntimeError), bytes that are not a checkpoint (KeyError, UnpicklingError), or a
# pointer without its artifact id (KeyError).
_UNREADABLE = (
    OSError,
    RuntimeError,
    pickle.UnpicklingError,
    EOFError,
    KeyError,
    optuna.artifacts.exceptions.ArtifactNotFound,
)


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """The trial's values of the hyperparameters that vary, through Optuna's public `suggest_*` (a list is
    categorical, a range an int or float); fixed ones are no Optuna parameter (`SearchSpace.fixed`)."""
    sampled: dict[str, Any] = {}
    for name, dist in space.distributions().items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            sampled[name] = trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, optuna.distributions.IntDistribution):
            sampled[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            sampled[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return sampled


class _SurplusTrial(Exception):
    """Nothing left for this trial: the sampler's plan is exhausted or the budget is taken by other trials."""


@dataclass
class Objective:
    cfg: StudyConfig
    data: DataSplits
    target: int
    store: optuna.artifacts.FileSystemArtifactStore
    on_epoch: Callable[[int, TrainState], None] | None = None
    train: TrainFn = train_configuration  # the trainer: `hpo_astro.core.train.train`, a table's replay, a stand-in
    current_trial_id: int | None = field(default=None, init=False)
    write_failure: str | None = field(default=None, init=False)  # set when a trial failed for want of disk
    _checkpoint: ArtifactCheckpoint | None = field(default=None, init=False)  # the running trial's

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        self.current_trial_id = trial._trial_id
        self._checkpoint = None
        rates = {spec.name: spec.rate for spec in self.cfg.objectives if spec.rate is not None}
        try:
            with stated_rates(rates.get("fpr_at_fnr"), rates.get("mdr_at_fpr")):  # every epoch measures them
                value, checkpoint = self._run(trial)
        except KeyboardInterrupt:
            raise  # Ctrl-C / SIGTERM: the checkpoint stays for the retry
        except optuna.TrialPruned:
            self._drop(trial)
            raise
        except Exception as exc:  # any error of this configuration: recorded on the trial, which Optuna marks failed
            self.write_failure = write_fault(exc)
            if self.write_failure is not None:
                raise  # the disk's fault: the checkpoint stays for the retry (see run_study)
            if isinstance(exc, _SurplusTrial):
                trial.set_user_attr(SURPLUS_ATTR, True)  # not the configuration's fault: not counted as a failure
            trial.set_user_attr(FAIL_REASON_ATTR, described(exc))
            self._drop(trial)
            raise
        checkpoint.remove()
        self._drop(trial)
        return value

    def _drop(self, trial: optuna.Trial) -> None:
        """The trial has ended and will not be retried: remove its checkpoint, and mark its pointer so that nobody
        (the dashboard's reader included) takes it for a file that still exists."""
        if self._checkpoint is not None and not self._checkpoint.pointed:
            return  # no file was ever named (reading the attributes back costs more than a replayed trial)
        pointer = internal_attr(trial.storage.get_trial(trial._trial_id), CHECKPOINT_ATTR)
        if not isinstance(pointer, dict) or "artifact_id" not in pointer:
            return
        with contextlib.suppress(optuna.artifacts.exceptions.ArtifactNotFound):
            self.store.remove(pointer["artifact_id"])
        set_internal(trial, CHECKPOINT_ATTR, {"epoch": pointer.get("epoch"), "deleted": True})

    def _run(self, trial: optuna.Trial) -> tuple[float | list[float], ArtifactCheckpoint]:
        storage = trial.study._storage
        # The first heartbeat, before anything else: Optuna's heartbeat thread records it asynchronously, and a trial
        # killed before that thread ran had no heartbeat row, so it was never found stale and stayed RUNNING forever.
        if optuna.storages._heartbeat.is_heartbeat_enabled(storage):
            storage.record_heartbeat(trial._trial_id)
        # Who runs the trial, next: on a store without heartbeat (journal) this is how a dead process is recognised.
        set_internal(trial, WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
        set_internal(trial, WORKER_START_ATTR, process_token())
        if storage.get_trial_system_attrs(trial._trial_id).get(EXHAUSTED_KEY):
            raise _SurplusTrial("the sampler's plan is exhausted")
        ahead = [
            t
            for t in storage.get_all_trials(trial.study._study_id, deepcopy=False)
            if t.number < trial.number and t.state in HOLDING
        ]
        if len(ahead) >= self.target:
            raise _SurplusTrial(f"the budget of {self.target} trials is already taken by other trials")
        params = {
            **DEFAULT_PARAMS,
            **(self.cfg.baseline or {}),
            **self.cfg.space.fixed(),
            **suggest(trial, self.cfg.space),
        }
        set_internal(trial, PARAMS_FULL_ATTR, params)
        resume, inherited = self._inherited_checkpoint(trial, params)
        plan = eval_plan(self.cfg)
        progress = EvalProgress.from_checkpoint(resume)  # the runs an interrupted trial had finished
        if progress is None or progress.next_run >= plan.n_runs:  # not a checkpoint of this study's runs: start over
            resume, progress = None, EvalProgress()
        checkpoint = ArtifactCheckpoint(trial, self.store, inherited, self.cfg.checkpoint_interval, progress)
        self._checkpoint = checkpoint
        reported = max(storage.get_trial(trial._trial_id).intermediate_values, default=0)  # a retry inherits them
        device = self.cfg.devices[0] if self.cfg.devices else "auto"  # one per process: see workers.py

        def pruning(run: int) -> OptunaPruning:
            return OptunaPruning(trial, self.cfg.metric, self.on_epoch, reported, plan.step(run, 0))

        refusal = self._stacking_refusal(params, plan, resume, device)
        if plan.n_runs > 1:
            trial.set_user_attr(EVAL_STACKING_ATTR, refusal or "stacked")
        if refusal is None:  # every run at once; a killed trial trains them again (no checkpoint of a stack)
            with process_interrupts.allowed():
                results = train_runs_stacked(params, self.data, plan, pruning, self.cfg.max_epochs, device)
            finish = getattr(self.train, "finish", None)  # a wrapping trainer's own step (tabulate: test metrics)
            results = [finish(result, self.data) for result in results] if finish else results
            for run, result in zip(plan.runs(), results, strict=False):
                value = self._ended_run(trial, plan, run, result, progress, checkpoint, params)
            return value, checkpoint
        checkpoints = getattr(self.train, "writes_checkpoints", True)  # a table's replay: none
        resumed_run = progress.next_run  # the run `resume` continues (0 for a fresh trial)
        for run in plan.runs()[resumed_run:]:
            checkpoint.start_run(run.index)
            with process_interrupts.allowed():
                result = self.train(
                    params,
                    self.data if run.fold is None else fold_data(self.data, run.fold, plan.folds, plan.base_seed),
                    callbacks=[pruning(run.index), checkpoint] if checkpoints else [pruning(run.index)],
                    max_epochs=self.cfg.max_epochs,
                    seed=run.seed,
                    resume=resume if run.index == resumed_run else None,
                    device=device,
                    capture=self.cfg.capture,
                )
            value = self._ended_run(trial, plan, run, result, progress, checkpoint, params)
        return value, checkpoint

    def _stacking_refusal(self, params: dict, plan: EvalPlan, resume: dict | None, device: str) -> str | None:
        """None when this trial's runs train stacked; else why not (`hpo_astro.core.stacked.stacking_refusal`)."""
        if self.cfg.stack_runs == "off":
            return "stacking turned off"
        # hpo-astro's trainer, or a wrapper of it that says so (`trainer`) and adds its part with `finish`
        wrapped = getattr(self.train, "trainer", None) is train_configuration and hasattr(self.train, "finish")
        if self.train is not train_configuration and not wrapped:
            return "the trainer is not hpo-astro's own (a table's replay)"
        if plan.folds > 1:
            return "the runs train on different folds"
        if resume is not None:
            return "the trial resumes from a checkpoint of its runs one after another"
        return stacking_refusal(params, resolve_device(device), plan.n_runs, self.cfg.stack_runs)

    def _ended_run(
        self,
        trial: optuna.Trial,
        plan: EvalPlan,
        run: EvalRun,
        result: TrainResult,
        progress: EvalProgress,
        checkpoint: ArtifactCheckpoint,
        params: dict[str, Any],
    ) -> float | list[float]:
        """Record a run that ended; the trial's value so far. A pruned run ends the trial; after the last run the
        trial's weights are kept if it is the study's best, and a multi-objective trial's values are all measured
        (`hpo_astro.study.objectives`)."""
        value = finite_metric(
            getattr(result.val_metrics, self.cfg.metric.removeprefix("val_")), self.cfg.direction == "maximize"
        )
        if plan.n_runs == 1:
            _record_run(trial, result)
            weights = None if result.model is None else result.model.state_dict()
        else:
            if run.index == 0 and result.model is not None:
                progress.first_weights = {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()}
            progress.done.append(run_summary(run, value, result))
            if result.stop_reason == "pruned" or progress.next_run == plan.n_runs:
                _record_runs(trial, progress.done)
            weights, value = progress.first_weights, progress.spread().mean
        if result.stop_reason == "pruned":
            checkpoint.remove()
            raise optuna.TrialPruned(f"pruned at epoch {len(result.history)} of run {run.index + 1}")
        last = plan.n_runs == 1 or progress.next_run == plan.n_runs
        if last and self.cfg.multi_objective:
            metrics = (
                result.val_metrics.as_dict()
                if plan.n_runs == 1
                else mean_metrics([r["val_metrics"] for r in progress.done])
            )
            values = objective_values(self.cfg.objectives, metrics, self._cost(trial, params))
            if weights is not None:
                keep_if_on_front(trial, values, weights, self.store)
            return values
        if last and weights is not None:  # a replayed trial trained nothing: no weights to keep
            self._keep_if_best(trial, value, weights)
        return value

    def _cost(self, trial: optuna.Trial, params: dict[str, Any]) -> InferenceCost | None:
        """The trial's inference cost, measured and recorded when one of the study's objectives is a cost."""
        costs = [spec for spec in self.cfg.objectives if spec.is_cost]
        if not costs:
            return None
        # The configuration's cost, not its weights': a model built afresh on the trial's device (a stand-in or a
        # table's replay trains no model of the configuration, and every trial is measured the same way).
        cost = measure_cost(
            params,
            in_channels=len(self.data.channels),
            device=resolve_device(self.cfg.devices[0] if self.cfg.devices else "auto"),
            latency_batch=self.cfg.latency_batch,
            latency=any(spec.name == "latency" for spec in costs),
        )
        trial.set_user_attr(COST_ATTR, _json_cost(cost.as_dict()))
        return cost

    def _inherited_checkpoint(self, trial: optuna.Trial, params: dict) -> tuple[dict | None, str | None]:
        """The checkpoint a retried trial inherited from the trial it retries (None for a fresh trial)."""
        pointer = internal_attr(trial.storage.get_trial(trial._trial_id), CHECKPOINT_ATTR)  # inherited by a retry
        if not isinstance(pointer, dict) or "artifact_id" not in pointer:  # none, or deleted when its trial ended
            return None, None
        try:
            with self.store.open_reader(pointer["artifact_id"]) as fh:
                checkpoint = torch.load(fh, map_location="cpu", weights_only=True)
        except _UNREADABLE:  # missing or unreadable (e.g. killed while writing): start from epoch 0, and remove it
            return None, pointer["artifact_id"]
        if dict(checkpoint.get("params", {})) != params:
            return None, pointer["artifact_id"]
        trial.set_user_attr(RESUMED_FROM_EPOCH_ATTR, int(pointer["epoch"]))
        return checkpoint, pointer["artifact_id"]

    def _keep_if_best(self, trial: optuna.Trial, value: float, weights: Mapping[str, torch.Tensor]) -> None:
        """Keep this trial's weights if it is the best so far, uploaded as an artifact of the trial (optuna-dashboard
        lists it on the trial's page) and named by the study's `best_weights` attribute. The weights of earlier
        bests stay: their trials list them too, and Optuna cannot take an artifact off a finished trial."""
        study = trial.study
        best = study.user_attrs.get(BEST_WEIGHTS_ATTR)
        if best is not None and not better(value, best["value"], maximizes(study)):
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial-{trial.number}-weights.pt"
            torch.save(dict(weights), path)
            artifact_id = optuna.artifacts.upload_artifact(
                artifact_store=self.store, file_path=str(path), study_or_trial=trial, mimetype=WEIGHTS_MIMETYPE
            )
        study.set_user_attr(BEST_WEIGHTS_ATTR, {"trial": trial.number, "artifact_id": artifact_id, "value": value})


def _record_run(trial: optuna.Trial, result: TrainResult) -> None:
    """Record a trial's single training run on it."""
    record_curves(trial, result.history)  # the whole run: the last checkpoint may be epochs behind
    for key, value in {
        BEST_EPOCH_ATTR: result.best_epoch,
        STOP_REASON_ATTR: result.stop_reason,
        WALL_TIME_ATTR: result.wall_time,
        N_PARAMS_ATTR: result.n_params,
        DEVICE_ATTR: result.device,
        TRAIN_SEED_ATTR: result.seed,
        VAL_METRICS_ATTR: result.val_metrics.as_dict(),
        **result.extra_attrs,
    }.items():
        trial.set_user_attr(key, value)


def _record_runs(trial: optuna.Trial, runs: list[dict[str, Any]]) -> None:
    """Record a trial of several runs (`hpo_astro.study.evaluation`): the first run's curves, model and extra facts
    (its weights are the ones the trial keeps), the mean validation metrics, the total time, and every run. A trial
    pruned in a later run says so."""
    first = runs[0]
    trial.storage.set_trial_system_attr(trial._trial_id, RUNS_SYSTEM_ATTR, runs)
    record_curves(trial, [EpochMetrics(**h) for h in first["history"]])
    spread = Spread(tuple(float(r["value"]) for r in runs))
    for key, value in {
        BEST_EPOCH_ATTR: first["best_epoch"],
        STOP_REASON_ATTR: "pruned" if runs[-1]["stop_reason"] == "pruned" else first["stop_reason"],
        WALL_TIME_ATTR: sum(r["wall_time"] for r in runs),
        N_PARAMS_ATTR: first["n_params"],
        DEVICE_ATTR: first["device"],
        TRAIN_SEED_ATTR: first["seed"],
        VAL_METRICS_ATTR: mean_metrics([r["val_metrics"] for r in runs]),
        **first["extra_attrs"],
        EVAL_RUNS_ATTR: [{k: r[k] for k in RECORDED_RUN_FIELDS} for r in runs],
        EVAL_VALUES_ATTR: list(spread.values),
        EVAL_STD_ATTR: _json_number(spread.std),
        EVAL_SEM_ATTR: _json_number(spread.sem),
    }.items():
        trial.set_user_attr(key, value)


def _json_cost(cost: dict[str, Any]) -> dict[str, Any]:
    return {key: _json_number(v) if isinstance(v, float) else v for key, v in cost.items()}


def _json_number(value: float) -> float | None:
    """A statistic as strict JSON stores it: null when undefined (the spread of a single run)."""
    return value if math.isfinite(value) else None
