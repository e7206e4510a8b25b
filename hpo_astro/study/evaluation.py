"""One configuration, evaluated honestly: several training runs per trial (seeds, cross-validation folds), one value.

One training run of a configuration is a noisy measurement: its validation accuracy moves by points from one training
seed to the next, more than the search strategies differ. A study with `eval_seeds = S` and `folds = F` trains each
configuration R = S x F times and scores it by the mean:

* run r uses fold `r % F` and training seed `seed + r // F` (the folds first: racing meets every fold early);
* with F = 1 every run trains on the study's train split and is scored on its validation split; with F ≥ 2 the
  train and validation splits are pooled and cut into F stratified folds (drawn once per study, from its seed): run r
  trains on the other folds and is scored on fold r % F. The test split is never touched;
* the trial's value is the mean of the runs' values; the runs, their standard deviation and standard error are
  recorded on the trial (`hpo_astro.store.record.EVAL_RUNS_ATTR` and its neighbours);
* the pruner sees the runs as one series, run after run: run r's epoch e is step `r x stride + e`, where the stride
  is the most epochs a run can take. A pruner compares a trial's run r with other trials' run r, epoch by epoch, so a
  poor configuration stops during its first run (racing), and a good one pays for all R;
* a checkpoint also holds the finished runs (`EvalProgress`), so a trial interrupted in run r resumes in run r, from
  its last checkpoint, and ends with the value the uninterrupted trial would have had.

R = 1 (the default) is the single run of earlier versions, step for step.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hpo_astro.core.space import Range
from hpo_astro.core.train import TrainResult
from hpo_astro.data.prepare import DataSplits

MAX_EVAL_SEEDS = 100
MAX_FOLDS = 20


@dataclass(frozen=True)
class EvalRun:
    """One training run of a trial: its index, training seed, and fold (None: the study's own train/val split)."""

    index: int
    seed: int
    fold: int | None


@dataclass(frozen=True)
class EvalPlan:
    """The runs every trial of a study makes, and where their epochs fall in the series the pruner sees."""

    seeds: int = 1
    folds: int = 1
    base_seed: int = 0
    stride: int = 1  # reported steps per run: the most epochs a run can take

    @property
    def n_runs(self) -> int:
        return self.seeds * self.folds

    def run(self, index: int) -> EvalRun:
        return EvalRun(
            index=index,
            seed=self.base_seed + index // self.folds,
            fold=index % self.folds if self.folds > 1 else None,
        )

    def runs(self) -> list[EvalRun]:
        return [self.run(i) for i in range(self.n_runs)]

    def step(self, run: int, epoch: int) -> int:
        """The intermediate-value step of run `run`'s epoch `epoch` (1-based): the epoch itself for run 0."""
        return run * self.stride + epoch

    @property
    def max_step(self) -> int:
        """The last step any trial can report (a pruner's maximum resource)."""
        return self.n_runs * self.stride


def max_run_epochs(cfg: Any) -> int:
    """The most epochs one run of a study's trials can take: `max_epochs`, else the largest t_max of the space."""
    t_max = cfg.space.get("t_max", (100,))
    return cfg.max_epochs or int(t_max.high if isinstance(t_max, Range) else max(t_max))


def eval_plan(cfg: Any) -> EvalPlan:
    """The runs of every trial of a study configured by `cfg` (a `StudyConfig`, or a record's settings)."""
    return EvalPlan(seeds=cfg.eval_seeds, folds=cfg.folds, base_seed=cfg.seed, stride=max_run_epochs(cfg))


def fold_indices(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Stratified K-fold: indices into `labels`, cut into `folds` disjoint parts that together cover every index, each
    class spread as evenly as it divides (fold sizes differ by at most one per class). Deterministic given `seed`."""
    if folds < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(folds)]
    offset = 0
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        # Deal the class round-robin, starting where the previous class stopped, so total fold sizes stay balanced.
        for k in range(folds):
            parts[(k + offset) % folds].append(idx[k::folds])
        offset += len(idx) % folds
    return [np.sort(np.concatenate(p)) for p in parts]


def check_folds(data: DataSplits, folds: int) -> None:
    """Every fold needs both classes, in both its training and its validation part: refuse a data set too small."""
    from hpo_astro.errors import UserError

    labels = torch.cat([data.y_train, data.y_val]).cpu().numpy()
    smallest = min(int((labels == 1).sum()), int((labels == 0).sum()))
    if smallest < folds:
        raise UserError(
            f"--folds {folds} needs at least {folds} records of each class in train+val; the data has {smallest} of "
            "its rarer class"
        )


def fold_data(data: DataSplits, fold: int, folds: int, seed: int) -> DataSplits:
    """The splits of fold `fold`: train+val pooled, this fold validates, the other folds train; test unchanged."""
    x = torch.cat([data.x_train, data.x_val])
    y = torch.cat([data.y_train, data.y_val])
    parts = fold_indices(y.cpu().numpy(), folds, seed)
    held = torch.as_tensor(parts[fold], device=x.device)
    kept = torch.as_tensor(np.sort(np.concatenate([p for k, p in enumerate(parts) if k != fold])), device=x.device)
    fold_info = {**data.info, "fold": fold, "folds": folds}
    return dataclasses.replace(data, x_train=x[kept], y_train=y[kept], x_val=x[held], y_val=y[held], info=fold_info)


@dataclass(frozen=True)
class Spread:
    """The values of a trial's runs, and how far they agree."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1); NaN for a single run."""
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    @property
    def sem(self) -> float:
        """Standard error of the mean."""
        return self.std / math.sqrt(len(self.values))


@dataclass
class EvalProgress:
    """A trial's finished runs, carried in its checkpoints so that an interrupted trial resumes in the run it was in.

    `done`: one summary per finished run (plain JSON: seed, fold, value, best epoch, stop reason, seconds, history);
    `first_weights`: the first run's best weights, the model the trial keeps."""

    done: list[dict[str, Any]] = field(default_factory=list)
    first_weights: dict[str, torch.Tensor] | None = None

    KEY = "evaluation"  # where a checkpoint holds it

    @property
    def next_run(self) -> int:
        return len(self.done)

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any] | None) -> EvalProgress | None:
        """The progress a checkpoint recorded: none for a checkpoint without one (made in a trial's first run, or by
        an earlier version's single-run trial); None when what it holds is not a progress of this version."""
        saved = (checkpoint or {}).get(cls.KEY)
        if saved is None:
            return cls()
        done = saved.get("done") if isinstance(saved, Mapping) else None
        if not isinstance(done, list) or not all(isinstance(d, Mapping) and set(d) >= _SUMMARY_KEYS for d in done):
            return None
        weights = saved.get("first_weights")
        return cls(done=[dict(d) for d in done], first_weights=weights if isinstance(weights, dict) else None)

    def to_checkpoint(self) -> dict[str, Any]:
        return {self.KEY: {"done": self.done, "first_weights": self.first_weights}}

    def spread(self) -> Spread:
        return Spread(tuple(float(d["value"]) for d in self.done))


def mean_metrics(runs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The mean of each metric over runs (a metric a run could not measure, NaN, is left out of its mean)."""
    names = list(dict.fromkeys(name for run in runs for name in run))
    out: dict[str, float] = {}
    for name in names:
        values = [float(r[name]) for r in runs if isinstance(r.get(name), int | float) and math.isfinite(r[name])]
        out[name] = statistics.fmean(values) if values else math.nan
    return out


def run_summary(run: EvalRun, value: float, result: TrainResult) -> dict[str, Any]:
    """What a finished run of a several-run trial leaves for the trial's record (plain data: it is checkpointed)."""
    return {
        "seed": run.seed,
        "fold": run.fold,
        "value": value,
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        "wall_time": result.wall_time,
        "n_params": result.n_params,
        "device": result.device,
        "history": [h.as_dict() for h in result.history],
        "val_metrics": result.val_metrics.as_dict(),
        "extra_attrs": dict(result.extra_attrs),
    }


_SUMMARY_KEYS = frozenset(
    ("seed", "fold", "value", "best_epoch", "stop_reason", "wall_time", "n_params", "device", "history", "val_metrics")
) | {"extra_attrs"}
# A trial's `eval_runs` entries (the validation metrics of the first run are those of the model the trial keeps).
RECORDED_RUN_FIELDS = ("seed", "fold", "value", "best_epoch", "stop_reason", "wall_time", "val_metrics")
