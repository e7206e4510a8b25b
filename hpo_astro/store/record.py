"""What a study records about itself: one schema for the study's user attributes, written by `run` and read by every
other command (`worker`, `status`, `compare`, `report`, `export`).

`run` writes the attributes one by one in field order (Optuna has no multi-attribute write), `hpo_astro_version`
last: its presence means the record is whole. A study without it was interrupted while being created, and counts as
not yet created. The attributes stay plain JSON, one per field, so optuna-dashboard shows them as they are.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hpo_astro import __version__
from hpo_astro.core.space import SearchSpace
from hpo_astro.data.prepare import DEFAULT_CHANNELS, DEFAULT_FRACTIONS
from hpo_astro.errors import UserError

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

VERSION_KEY = "hpo_astro_version"  # written last: marks the record whole
# Record fields read on their own (a study's record is one user attribute per `StudyRecord` field).
STRATEGY_KEY, N_TRIALS_KEY, FINGERPRINT_KEY, ARTIFACTS_KEY = "strategy", "n_trials", "data_fingerprint", "artifacts"
OBJECTIVE_KEY = "objective"
# Fields that must agree when a run resumes a stored study (a trial's value means something else when they differ).
IDENTITY = ("strategy", "space", "objective", "data_fingerprint", "eval_seeds", "folds", "latency_batch")
# Fields every whole record holds (the fields added since the first version take their defaults when absent).
_REQUIRED = ("strategy", "space", "objective", "data_fingerprint", "n_trials")

# Trial user attributes written by the search and read by `compare`, `report` and `export`: one name each, here.
FAIL_REASON_ATTR = "fail_reason"  # "ErrorClass: message" of a trial whose objective raised (never on a killed one)
SURPLUS_ATTR = "surplus"  # True on a trial failed because nothing was left for it (see objective._SurplusTrial)
TRAIN_SEED_ATTR = "train_seed"  # the seed it trained with: retraining with it gives the same model
VAL_METRICS_ATTR = "val_metrics"  # Metrics.as_dict() of its best epoch on the validation split
# Its per-epoch metrics (EpochMetrics as dicts, epoch order), read with `trial_history`, are stored twice:
# * for programs, exactly, in one trial *system* attribute (optuna-dashboard does not show those);
# * for people, in one user attribute per metric, `curve_<metric>` (e.g. curve_val_loss = [0.6931, 0.5127, ...]),
#   rounded to CURVE_DIGITS significant digits: optuna-dashboard shows each as a short row (it cuts any attribute
#   value at 1,024 characters; a 100-epoch series fits). The objective's per-epoch values are also the trial's
#   intermediate values, which the dashboard draws.
HISTORY_SYSTEM_ATTR = "hpo_astro:history"
CURVE_PREFIX = "curve_"
CURVE_DIGITS = 4
HISTORY_ATTR = "history"  # studies made by earlier versions: the exact history in this one user attribute
WALL_TIME_ATTR = "wall_time"  # seconds its training took (a replayed trial: the recorded training time)
BEST_EPOCH_ATTR = "best_epoch"  # the epoch whose weights the trial kept (lowest validation loss)
STOP_REASON_ATTR = "stop_reason"  # max_epochs, early_stopping, diverged, pruned
N_PARAMS_ATTR = "n_params"  # the model's trainable parameters
COST_ATTR = "inference_cost"  # `hpo_astro.core.cost.InferenceCost.as_dict()`, in a study with a cost objective
WEIGHTS_ATTR = "weights_artifact"  # a multi-objective trial's weights (artifact id), if on the front as it finished
DEVICE_ATTR = "device"  # where it trained
TEST_METRICS_ATTR = "test_metrics"  # the best weights' metrics on the test split (tabulate and replayed trials only)
TABLE_ATTR = "table"  # the table that answered a replayed trial
RESUMED_FROM_EPOCH_ATTR = "resumed_from_epoch"  # the epoch a retried trial continued after
RETRY_OF_ATTR = "retry_of"  # on a re-queued trial: {"trial": the number it retries, "reason": why that one failed}
# What hpo-astro keeps on a trial for itself: *system* attributes `SYSTEM_PREFIX` + name (the dashboard shows none),
# through `internal_attr` and `set_internal`; an earlier version's store holds them as user attributes of that name.
SYSTEM_PREFIX = "hpo_astro:"  # the samplers' keys have other prefixes
PARAMS_FULL_ATTR = "params_full"  # the trial's whole configuration (sampled values, baseline and defaults)
# While a trial runs: who runs it, and where its last checkpoint is (retries inherit both, see store.recovery).
WORKER_ATTR = "worker"  # "{hostname}:{pid}" of the process running it
WORKER_START_ATTR = "worker_start"  # recovery.process_token() of that process, so a reused pid is told apart
CHECKPOINT_ATTR = "checkpoint"  # {"artifact_id", "epoch"} while resumable; {"epoch", "deleted": true} once it ended
WEIGHTS_MIMETYPE = "application/octet-stream"  # the best weights' artifact (a `torch.save` zip): a download
# A trial of several training runs (`hpo_astro.study.evaluation`; never written for a single run): the runs, as
# [{"seed", "fold", "value", "best_epoch", "stop_reason", "wall_time", "val_metrics"}], their values, and the values'
# sample standard deviation and standard error of the mean (the trial's value is the mean; read with `eval_runs`).
EVAL_RUNS_ATTR, EVAL_VALUES_ATTR, EVAL_STD_ATTR, EVAL_SEM_ATTR = "eval_runs", "eval_values", "eval_std", "eval_sem"
# ... and every run whole (its summary: history, validation metrics, the trainer's extra attributes such as a
# tabulated run's test metrics), exactly, in one trial system attribute that programs read (`trial_runs`).
RUNS_SYSTEM_ATTR = "hpo_astro:runs"
# A trial of several runs: "stacked" when its seeds trained as one model, else why they trained one after another.
EVAL_STACKING_ATTR = "eval_stacking"
# Optuna's own system attribute on a re-queued trial: the numbers of the trials it retries, oldest first.
RETRY_HISTORY_KEY = "retry_history"

# What a study's trials are (`StudyRecord.trial_kind`): trained on the data (`hpo_astro.core.train`), trained and
# tested as a table's rows (`hpo-astro tabulate`), or answered from a table without training (the benchmark's replays).
# A worker joining a study takes the trainer its kind names.
TRAINED, TABULATED, REPLAYED = "trained", "tabulated", "replayed"
TRIAL_KINDS = (TRAINED, TABULATED, REPLAYED)
# Earlier versions did not record the kind: they named their tabulate studies `table/<NAME>`, and the benchmark's
# replay studies were never joined.
_UNRECORDED_TABLE_PREFIX = "table/"

# Study user attributes besides the record: where the best trial's weights are, {"trial", "artifact_id", "value"};
# the best trials' evaluations, kept by `hpo_astro.results.evaluate`.
BEST_WEIGHTS_ATTR = "best_weights"
CACHE_ATTR = "compare_cache"
# A study's confirmation (`hpo_astro.study.confirm`): on the source, the confirmation study's name; on the
# confirmation, {"study": the source's name, "trials": the finalists' numbers}; on each of its trials, the number of
# the source trial whose configuration it trains again.
CONFIRMATION_ATTR = "confirmation"
CONFIRMS_ATTR = "confirms"
CONFIRMS_TRIAL_ATTR = "confirms_trial"


class RunSettings(Protocol):
    """What a record is made of: the settings of a run (a `hpo_astro.study.config.StudyConfig`), as a structural
    type, so that the store layer does not import the study layer above it."""

    strategy: str
    space: SearchSpace
    objective: str
    n_trials: int | None
    pruner: str | None
    seed: int
    max_epochs: int | None
    split: tuple[float, float, float]
    data: Path | None
    baseline: dict[str, Any] | None
    greedy: bool
    population_size: int
    n_startup_trials: int | None
    eval_seeds: int
    folds: int
    latency_batch: int


@dataclass(frozen=True)
class StudyRecord:
    """A study's recorded configuration and data. Field order is the order the attributes are written in."""

    strategy: str
    space: dict[str, list[Any] | dict[str, Any]]  # a list of values or a range {low, high, log, step}
    objective: str
    data_fingerprint: str
    n_trials: int
    pruner: str = "none"
    seed: int = 0
    max_epochs: int | None = None
    channels: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_CHANNELS))
    split: list[float] = dataclasses.field(default_factory=lambda: list(DEFAULT_FRACTIONS))  # train/val/test
    data_source: str = ""  # the file the study was run on
    data: str | None = None  # the --data given (None: the default simulated set)
    baseline: dict[str, Any] | None = None
    greedy: bool = False
    population_size: int = 10
    n_startup_trials: int | None = None  # tpe, bohb, bayesian (None: Optuna's default)
    artifacts: str | None = None  # checkpoint and weights folder
    eval_seeds: int = 1  # training runs per configuration and fold (`hpo_astro.study.evaluation`)
    folds: int = 1  # cross-validation folds over train+val (1: the fixed train/val split)
    trial_kind: str | None = None  # one of TRIAL_KINDS (None: an earlier version's record, see `kind_of`)
    # The space's hyperparameters with one value: set in every configuration, not Optuna parameters (no flat axis in
    # the dashboard's plots); shown here for whoever browses the study. None: an earlier version's record.
    fixed_params: dict[str, Any] | None = None
    latency_batch: int | None = None  # cutouts per timed forward pass, when latency is an objective
    hpo_astro_version: str = __version__

    @classmethod
    def from_run(
        cls,
        cfg: RunSettings,
        fingerprint: str,
        channels: tuple[str, ...],
        source: str,
        artifacts: Path,
        trial_kind: str = TRAINED,
    ) -> StudyRecord:
        """The record of a run of `cfg` on data with this fingerprint, channels and source file, whose trials are of
        `trial_kind`."""
        return cls(
            strategy=cfg.strategy,
            space=cfg.space.to_dict(),
            objective=cfg.objective,
            data_fingerprint=fingerprint,
            n_trials=int(cfg.n_trials or 0),
            pruner=cfg.pruner,
            seed=cfg.seed,
            max_epochs=cfg.max_epochs,
            channels=list(channels),
            split=list(cfg.split),
            data_source=source,
            data=None if cfg.data is None else str(cfg.data),
            baseline=cfg.baseline,
            greedy=cfg.greedy,
            population_size=cfg.population_size,
            n_startup_trials=cfg.n_startup_trials,
            artifacts=str(Path(artifacts).resolve()),
            eval_seeds=cfg.eval_seeds,
            folds=cfg.folds,
            trial_kind=trial_kind,
            fixed_params=cfg.space.fixed(),
            latency_batch=cfg.latency_batch if "latency" in cfg.objective.split(",") else None,
        )

    def kind_of(self, study_name: str) -> str:
        """What the trials of the study `study_name` holding this record are: its recorded `trial_kind`, or, for a
        record of a version that did not write one, what its name said (`table/<NAME>`: tabulated)."""
        if self.trial_kind is not None:
            return self.trial_kind
        return TABULATED if study_name.startswith(_UNRECORDED_TABLE_PREFIX) else TRAINED

    def to_attrs(self) -> dict[str, Any]:
        """The user attributes, JSON-ready, in writing order (`hpo_astro_version` last)."""
        return {field.name: _jsonable(getattr(self, field.name)) for field in dataclasses.fields(self)}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StudyRecord | None:
        """The record in a study's user attributes; None when it is not whole (interrupted creation, or a study
        made by another program). Fields a study of an older version did not record take their defaults."""
        if VERSION_KEY not in attrs or any(key not in attrs for key in _REQUIRED):
            return None
        known = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in attrs.items() if key in known}
        if values.get("channels") is None:
            values.pop("channels", None)
        for key, value in values.items():
            if not _FIELD_TYPES[key][0](value):
                raise UserError(
                    f"the study's stored attribute {key!r} is {json.dumps(value)[:80]}, not {_FIELD_TYPES[key][1]}: "
                    "the store was written by another program"
                )
        if "channels" in values:
            from hpo_astro.data.prepare import parse_channels

            parse_channels(",".join(values["channels"]))  # known plane names, each once: else a one-line UserError
        return cls(**values)

    def differences(self, other: StudyRecord) -> list[str]:
        """The identity fields on which two records disagree."""
        return [key for key in IDENTITY if _jsonable(getattr(self, key)) != _jsonable(getattr(other, key))]


# What each stored attribute must be, as JSON gives it back: (test, how the error names it).
_STR = (lambda v: isinstance(v, str), "a string")
_OPT_STR = (lambda v: v is None or isinstance(v, str), "a string or null")
_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")
_OPT_INT = (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "an integer or null")
_FIELD_TYPES: dict[str, tuple[Any, str]] = {
    "strategy": _STR,
    "space": (
        lambda v: isinstance(v, dict) and all(isinstance(x, list | dict) for x in v.values()),
        "an object of lists and ranges",
    ),
    "objective": _STR,
    "data_fingerprint": _STR,
    "n_trials": _INT,
    "pruner": _OPT_STR,  # null in a record of a configuration never validated: the strategy's default
    "seed": _INT,
    "max_epochs": _OPT_INT,
    "channels": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of plane names"),
    "split": (
        lambda v: isinstance(v, list) and len(v) == 3 and all(_is_fraction(x) for x in v),
        "three fractions (train, val, test)",
    ),
    "data_source": _STR,
    "data": _OPT_STR,
    "baseline": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "greedy": (lambda v: isinstance(v, bool), "true or false"),
    "population_size": _INT,
    "n_startup_trials": _OPT_INT,
    "artifacts": _OPT_STR,
    "eval_seeds": (lambda v: _INT[0](v) and v >= 1, "a positive integer"),
    "folds": (lambda v: _INT[0](v) and v >= 1, "a positive integer"),
    "trial_kind": (lambda v: v is None or v in TRIAL_KINDS, f"one of {', '.join(TRIAL_KINDS)} or null"),
    "fixed_params": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "latency_batch": (lambda v: v is None or (_INT[0](v) and v >= 1), "a positive integer or null"),
    "hpo_astro_version": _STR,
}


def _is_fraction(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1


def _jsonable(value: Any) -> Any:
    """The value as the store gives it back (JSON round trip: tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, default=str))


def curve_attrs(history: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The trial user attributes that show per-epoch metrics (`EpochMetrics` as dicts, epoch order) to people: one
    list per metric, values rounded to `CURVE_DIGITS` significant digits. The epochs themselves are listed only when
    they are not 1, 2, 3, ... (they always are for `hpo_astro.core.train`)."""
    names = list(dict.fromkeys(key for row in history for key in row))
    epochs = [row.get("epoch") for row in history]
    if "epoch" in names and epochs == list(range(1, len(history) + 1)):
        names.remove("epoch")
    return {f"{CURVE_PREFIX}{name}": [_rounded(row.get(name)) for row in history] for name in names}


def _rounded(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{CURVE_DIGITS}g}")
    return value


def trial_history(trial: FrozenTrial) -> list[dict[str, Any]]:
    """A trial's per-epoch metrics (`EpochMetrics` fields as dicts, epoch order), [] if none; every reader goes
    through here. The exact copy (system attribute), else the rounded `curve_*` attributes (a re-queued trial before
    its first checkpoint), else the single `history` attribute of a study made by an earlier version."""
    exact = trial.system_attrs.get(HISTORY_SYSTEM_ATTR)
    if isinstance(exact, list):
        return [dict(row) for row in exact]
    curves = {
        key.removeprefix(CURVE_PREFIX): list(value)
        for key, value in trial.user_attrs.items()
        if key.startswith(CURVE_PREFIX) and isinstance(value, list)
    }
    if not curves:
        return list(trial.user_attrs.get(HISTORY_ATTR) or [])
    n = max(len(values) for values in curves.values())
    epochs = curves.pop("epoch", None) or list(range(1, n + 1))
    return [
        {"epoch": epochs[i], **{name: values[i] if i < len(values) else None for name, values in curves.items()}}
        for i in range(n)
    ]


# --- typed readers of trial attributes: a store is data that any program (or an older version) may have written,
# so each reader returns what its name promises, or its stated fallback, never whatever the store held.


def internal_attr(trial: FrozenTrial, name: str) -> Any:
    """An internal attribute (`PARAMS_FULL_ATTR`, `WORKER_ATTR`, ...) as stored: its system attribute, else (an
    earlier version's store) the user attribute, else None. Unchecked: check its type before use."""
    value = trial.system_attrs.get(SYSTEM_PREFIX + name)
    return trial.user_attrs.get(name) if value is None else value


def set_internal(trial: optuna.Trial, name: str, value: Any) -> None:
    """Write an internal attribute of a running trial (as its system attribute)."""
    trial.storage.set_trial_system_attr(trial._trial_id, SYSTEM_PREFIX + name, value)


def params_full(trial: FrozenTrial) -> dict[str, Any] | None:
    """The trial's whole configuration (`PARAMS_FULL_ATTR`); None when it stored none, or not as an object."""
    value = internal_attr(trial, PARAMS_FULL_ATTR)
    return dict(value) if isinstance(value, dict) and value else None


def trial_params(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's whole configuration, else (a trial of another program) the parameters Optuna sampled."""
    return params_full(trial) or dict(trial.params)


def stored_metrics(trial: FrozenTrial, key: str) -> dict[str, Any] | None:
    """The metrics a trial stored under `key` (`VAL_METRICS_ATTR`, `TEST_METRICS_ATTR`); None when not an object."""
    value = trial.user_attrs.get(key)
    return value if isinstance(value, dict) else None


def stored_seconds(trial: FrozenTrial) -> float | None:
    """The training seconds a trial recorded (`WALL_TIME_ATTR`); None unless a finite number."""
    value = trial.user_attrs.get(WALL_TIME_ATTR)
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if number else None


def fail_reason(trial: FrozenTrial, default: str = "") -> str:
    """Why the trial's objective failed (`FAIL_REASON_ATTR`), else `default`."""
    value = trial.user_attrs.get(FAIL_REASON_ATTR)
    return value if isinstance(value, str) else default


def is_surplus(trial: FrozenTrial) -> bool:
    """Whether the trial failed only because nothing was left for it (`SURPLUS_ATTR`)."""
    return trial.user_attrs.get(SURPLUS_ATTR) is True


def retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of the trials this one retries (Optuna's `retry_history`), oldest first; [] for a first try."""
    value = trial.system_attrs.get(RETRY_HISTORY_KEY)
    return [n for n in value if isinstance(n, int)] if isinstance(value, list) else []


def eval_runs(trial: FrozenTrial) -> list[dict[str, Any]]:
    """The runs of a trial of several (`EVAL_RUNS_ATTR`), in run order; [] for a single-run trial."""
    value = trial.user_attrs.get(EVAL_RUNS_ATTR)
    return [dict(run) for run in value if isinstance(run, dict)] if isinstance(value, list) else []


def eval_sem(trial: FrozenTrial) -> float | None:
    """The standard error of a several-run trial's value (`EVAL_SEM_ATTR`); None for one run or when not a number."""
    value = trial.user_attrs.get(EVAL_SEM_ATTR)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def kept_model_val_metrics(trial: FrozenTrial) -> dict[str, Any] | None:
    """The validation metrics of the model the trial kept: its first run's for a trial of several (its
    `VAL_METRICS_ATTR` is then the runs' mean), else `VAL_METRICS_ATTR`."""
    runs = eval_runs(trial)
    kept = runs[0].get("val_metrics") if runs else trial.user_attrs.get(VAL_METRICS_ATTR)
    return kept if isinstance(kept, dict) else None


def trial_runs(trial: FrozenTrial) -> list[dict[str, Any]]:
    """Every run of a trial of several, whole (`RUNS_SYSTEM_ATTR`: `hpo_astro.study.evaluation.run_summary`); []
    for a single-run trial or a trial that recorded none."""
    value = trial.system_attrs.get(RUNS_SYSTEM_ATTR)
    return [dict(run) for run in value if isinstance(run, dict)] if isinstance(value, list) else []
