"""Studies in an Optuna storage: open the store, create or resume a study, run it to its exact budget.

A study's budget is a number of *finished* trials (complete + pruned). `run_study` runs one trial at a time
and recounts the store before each, so an interrupted run resumes where it stopped and never overshoots.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo_astro import __version__
from hpo_astro.config import StudyConfig
from hpo_astro.data.prepare import DataSplits, PrepConfig, load_splits
from hpo_astro.errors import UserError
from hpo_astro.samplers import AblationSampler
from hpo_astro.samplers.ablation import EXHAUSTED_KEY
from hpo_astro.space import DEFAULT_PARAMS
from hpo_astro.strategies import make_pruner, make_sampler
from hpo_astro.train import TrainState, train

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_CONSECUTIVE_FAILURES = 3
# Study attributes that must agree when a run resumes a stored study.
IDENTITY_ATTRS = ("strategy", "space", "objective", "data_fingerprint")

optuna.logging.set_verbosity(optuna.logging.WARNING)


class StudyFailed(Exception):
    """Several trials in a row failed: something is wrong beyond one configuration (a bug, the device)."""


class _SurplusTrial(Exception):
    """The sampler has nothing left to evaluate for this trial (e.g. the ablation plan is exhausted)."""


# --- storage ------------------------------------------------------------------------------------------------


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Open an Optuna storage from a SQLAlchemy URL, refusing bad URLs and unwritable paths with a UserError."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(f"malformed storage URL {url!r}; expected e.g. sqlite:///optuna.db") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        directory = path.parent if str(path.parent) else Path(".")
        if not directory.is_dir():
            raise UserError(f"storage directory does not exist: {directory}")
        if (path.exists() and not _writable(path)) or (not path.exists() and not _writable(directory)):
            raise UserError(f"storage is not writable: {path}")
    engine_kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": 60}  # wait for a writer instead of "database is locked"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except ImportError as exc:
        raise UserError(f"storage URL {url!r} needs a database driver that is not installed: {exc}") from None
    except Exception as exc:  # sqlalchemy OperationalError and friends: unreachable or unusable database
        reason = " ".join(str(getattr(exc, "orig", exc)).split())
        raise UserError(f"cannot open storage {url!r}: {reason}") from None


def _writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK)


# --- objective ----------------------------------------------------------------------------------------------


class OptunaPruning:
    """Trainer callback: report the objective metric each epoch, keep the curves in the trial, prune on request."""

    def __init__(self, trial: optuna.Trial, metric: str, on_epoch: Callable[[int, TrainState], None] | None = None):
        self.trial, self.metric, self.on_epoch = trial, metric, on_epoch

    def on_epoch_end(self, state: TrainState) -> None:
        value = getattr(state.last, self.metric)
        self.trial.report(_finite(value), state.epoch)
        self.trial.set_user_attr("history", [asdict(h) for h in state.history])
        if self.on_epoch:
            self.on_epoch(self.trial.number, state)
        if self.trial.should_prune():
            state.request_stop("pruned")


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 1e9


@dataclass
class Objective:
    cfg: StudyConfig
    data: DataSplits
    on_epoch: Callable[[int, TrainState], None] | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except (optuna.TrialPruned, KeyboardInterrupt):
            raise
        except Exception as exc:  # recorded on the trial, which Optuna then marks failed
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            raise

    def _run(self, trial: optuna.Trial) -> float:
        if trial.study._storage.get_trial_system_attrs(trial._trial_id).get(EXHAUSTED_KEY):
            raise _SurplusTrial("the sampler's plan is exhausted")
        sampled = {name: trial.suggest_categorical(name, list(values)) for name, values in self.cfg.space.items()}
        params = {**DEFAULT_PARAMS, **(self.cfg.baseline or {}), **sampled}
        trial.set_user_attr("params_full", params)
        callback = OptunaPruning(trial, self.cfg.metric, self.on_epoch)
        result = train(params, self.data, callbacks=[callback], max_epochs=self.cfg.max_epochs, seed=self.cfg.seed)
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
            raise optuna.TrialPruned(f"pruned at epoch {len(result.history)}")
        value = getattr(result.val_metrics, self.cfg.metric.removeprefix("val_"))
        return _finite(value)


# --- create / resume ----------------------------------------------------------------------------------------


def study_attrs(cfg: StudyConfig, data: DataSplits) -> dict[str, Any]:
    return {
        "strategy": cfg.strategy,
        "space": cfg.space.to_dict(),
        "objective": cfg.objective,
        "data_fingerprint": data.fingerprint,
        "n_trials": cfg.n_trials,
        "hpo_astro_version": __version__,
        "pruner": cfg.pruner,
        "seed": cfg.seed,
        "max_epochs": cfg.max_epochs,
        "channels": list(data.channels),
        "data_source": data.source,
        "baseline": cfg.baseline,
        "greedy": cfg.greedy,
        "population_size": cfg.population_size,
    }


def create_or_resume(
    cfg: StudyConfig,
    storage: optuna.storages.BaseStorage,
    attrs: dict[str, Any],
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Load the study named `cfg.study_name`, or create it; refuse one whose identity differs."""
    try:
        study = optuna.load_study(study_name=cfg.study_name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        try:
            study = optuna.create_study(
                study_name=cfg.study_name, storage=storage, sampler=sampler, pruner=pruner, direction=cfg.direction
            )
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it meanwhile
            study = optuna.load_study(study_name=cfg.study_name, storage=storage, sampler=sampler, pruner=pruner)
    stored = study.user_attrs
    if stored:
        for key in IDENTITY_ATTRS:
            if stored.get(key) != _jsonable(attrs[key]):
                raise UserError(
                    f"study {cfg.study_name!r} in the store was made with a different {key.replace('_', ' ')} "
                    f"({_short(stored.get(key))} vs {_short(attrs[key])}); use another --study name"
                )
    for key, value in attrs.items():
        if stored.get(key) != _jsonable(value):
            study.set_user_attr(key, value)
    return study


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))


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


def run_study(cfg: StudyConfig, events: RunEvents | None = None) -> RunResult:
    """Create or resume the study and run trials until it holds `target` finished trials."""
    events = events or RunEvents()
    data, sampler, pruner = prepare_run(cfg)
    storage = open_storage(cfg.storage)
    study = create_or_resume(cfg, storage, study_attrs(cfg, data), sampler, pruner)
    target = target_trials(cfg, sampler)
    objective = Objective(cfg, data, events.on_epoch)
    finished = count_finished(study)
    if events.on_start:
        events.on_start(study, finished, target)
    ran = failures = 0
    while finished < target:
        before = len(study.get_trials(deepcopy=False))
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
        trials = study.get_trials(deepcopy=False)
        if len(trials) == before:
            break  # the sampler stopped the study before creating a trial
        last = max((t for t in trials if t.number >= before), key=lambda t: t.number)
        finished = count_finished(study)
        ran += 1
        if events.on_trial_end:
            events.on_trial_end(study, last, finished)
        if last.system_attrs.get(EXHAUSTED_KEY):
            break
        failures = failures + 1 if last.state == TrialState.FAIL else 0
        if failures >= MAX_CONSECUTIVE_FAILURES:
            reason = last.user_attrs.get("fail_reason", "unknown error")
            raise StudyFailed(f"{failures} trials in a row failed; last error: {reason}")
    return RunResult(study, target, finished, ran)


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
    storage = open_storage(storage_url)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
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
