"""Confirm a study's winners: its top-k distinct configurations trained again with fresh seeds (`hpo-astro confirm`).

A search keeps the configuration its trials measured best, and a measurement of one training run (or of a few) is
noisy: the best value of many noisy measurements is an optimistic one, and often a lucky draw of a mediocre
configuration. A confirmation measures the finalists again, with seeds the search never used, so the choice rests on
new evidence rather than on the luck that made them finalists.

* The confirmation is a study of its own in the same store, linked to its source: `<study>/confirm` by default,
  one trial per finalist, enqueued with its configuration (the sampler never chooses), each trained with `seeds` runs
  (`hpo_astro.study.evaluation`) on the source's train/val split, seeds `seed + eval_seeds`, `seed + eval_seeds + 1`,
  ... (the first ones the search did not use; the search's own folds, if any, are not used). Being a study, it is
  resumed by running the same command, shared by workers (`hpo-astro worker --study NAME/confirm`), browsed in
  the dashboard.
* The finalists are the source's complete trials ranked by value, the first trial of each configuration, best k.
  They are fixed when the confirmation is created (`CONFIRMS_ATTR` on it) and a later command with other finalists
  (more trials since, another `--top-k`) is refused rather than mixed into it.
* The source records where its confirmation is (`CONFIRMATION_ATTR`): `compare`, `report` and `export` then take
  the configuration with the best confirmed mean (`hpo_astro.results.evaluate.best_trial`) and say so.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo_astro.core.hyperparameters import value_key
from hpo_astro.core.train import TrainFn
from hpo_astro.data.prepare import DataSplits
from hpo_astro.errors import UserError
from hpo_astro.store.record import (
    CONFIRMATION_ATTR,
    CONFIRMS_ATTR,
    CONFIRMS_TRIAL_ATTR,
    EVAL_VALUES_ATTR,
    REPLAYED,
    StudyRecord,
    trial_params,
)
from hpo_astro.store.storage import read_store
from hpo_astro.store.trials import maximizes
from hpo_astro.study.config import StudyConfig
from hpo_astro.study.run import RunEvents, RunResult, prepare_run, run_study
from hpo_astro.study.strategies import CONFIRM_STRATEGY

DEFAULT_TOP_K = 5
DEFAULT_SEEDS = 5
CONFIDENCE = 0.95


def confirmation_name(study_name: str) -> str:
    """The default name of a study's confirmation."""
    return f"{study_name}/confirm"


def finalists(study: optuna.Study, top_k: int) -> list[FrozenTrial]:
    """The study's best `top_k` distinct configurations: complete trials by value (best first; a tie goes to the
    earlier trial), the first trial of each configuration."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    sign = -1.0 if maximizes(study) else 1.0
    ranked = sorted(complete, key=lambda t: (sign * float(t.value), t.number))
    chosen: list[FrozenTrial] = []
    seen: set[tuple] = set()
    for trial in ranked:
        key = tuple(sorted((name, value_key(value)) for name, value in trial_params(trial).items()))
        if key not in seen:
            seen.add(key)
            chosen.append(trial)
        if len(chosen) == top_k:
            break
    return chosen


@dataclass(frozen=True)
class ConfirmedConfiguration:
    """One finalist: its trial in the source study and what its confirmation measured."""

    trial: int  # the source trial
    search_value: float  # what the search measured
    values: tuple[float, ...]  # the confirmation's runs (empty until its trial completes)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def ci(self) -> tuple[float, float]:
        """Student's t confidence interval (`CONFIDENCE`) of the mean; NaN with fewer than two runs."""
        if len(self.values) < 2:
            return math.nan, math.nan
        from scipy import stats

        half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(self.values) - 1) * statistics.stdev(self.values)
        half /= math.sqrt(len(self.values))
        return self.mean - half, self.mean + half


@dataclass(frozen=True)
class Confirmation:
    source: str
    study: str  # the confirmation study
    seeds: int
    configurations: list[ConfirmedConfiguration]  # in the source's order (best search value first)
    maximize: bool = True
    run: RunResult | None = None

    @property
    def best(self) -> ConfirmedConfiguration | None:
        """The finalist with the best confirmed mean (None until one is confirmed)."""
        return confirmed_best(self.configurations, self.maximize)


def confirmed_best(configurations: list[ConfirmedConfiguration], maximize: bool) -> ConfirmedConfiguration | None:
    done = [c for c in configurations if c.values]
    if not done:
        return None
    sign = -1.0 if maximize else 1.0
    return min(done, key=lambda c: (sign * c.mean, configurations.index(c)))


def confirm_study(
    url: str,
    study_name: str,
    top_k: int = DEFAULT_TOP_K,
    seeds: int = DEFAULT_SEEDS,
    confirm_name: str | None = None,
    events: RunEvents | None = None,
    train: TrainFn | None = None,
    configure: Callable[[StudyConfig], StudyConfig] | None = None,
    data: DataSplits | None = None,
) -> Confirmation:
    """Create or resume the confirmation of study `study_name` in the store `url` and run it to its end.
    `configure` adjusts the confirmation's settings (devices, heartbeat: what `run` takes); `train` and `data` are
    `run_study`'s (a stand-in trainer, splits already loaded)."""
    if top_k < 1 or seeds < 2:
        raise UserError(f"--top-k must be at least 1 and --seeds at least 2, got {top_k} and {seeds}")
    with read_store(url) as storage:  # a store that does not exist is not created
        try:
            source = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            raise UserError(f"no study named {study_name!r} in {url}") from None
        record = StudyRecord.from_attrs(source.user_attrs)
        if len(source.directions) > 1:
            raise UserError(
                f"study {study_name!r} has several objectives: confirm ranks one value per configuration, and a "
                "Pareto front has none; choose a point with `export --pick`"
            )
        chosen = finalists(source, top_k)
    if record is None:
        raise UserError(f"study {study_name!r} has no hpo-astro configuration: nothing to confirm it with")
    if record.kind_of(study_name) == REPLAYED and train is None:
        raise UserError(
            f"study {study_name!r} replays a table: confirm it with the table's replay as the trainer "
            "(`confirm_study(..., train=TableReplay(table))`); the command line trains for real"
        )
    if record.strategy == CONFIRM_STRATEGY:
        raise UserError(f"study {study_name!r} is itself a confirmation")
    if record.strategy == "pbt":
        raise UserError(
            f"study {study_name!r} is population-based training: its models come from hyperparameter schedules, not "
            "configurations that fresh seeds could train again"
        )
    if not chosen:
        raise UserError(f"study {study_name!r} has no complete trial to confirm")
    name = confirm_name or confirmation_name(study_name)
    cfg = StudyConfig.from_record(record, url, name)
    cfg = dataclasses.replace(
        cfg,
        strategy=CONFIRM_STRATEGY,
        n_trials=len(chosen),
        seed=record.seed + record.eval_seeds,  # the first seed the search never trained with
        eval_seeds=seeds,
        folds=1,
        pruner="none",
        n_startup_trials=None,
        baseline=record.baseline,
    )
    cfg = configure(cfg) if configure else cfg
    data, _, _ = prepare_run(cfg, data)
    if data.fingerprint != record.data_fingerprint:
        raise UserError(
            f"study {study_name!r} was run on data with fingerprint {record.data_fingerprint}, but {data.source} gives "
            f"{data.fingerprint}: confirm on the data it was run on"
        )
    links = {"study": study_name, "trials": [t.number for t in chosen]}
    result = run_study(cfg, events, train, data, before=lambda study: _link(study, study_name, links, chosen))
    source = optuna.load_study(study_name=study_name, storage=result.study._storage)
    return dataclasses.replace(summarise(source, result.study), run=result)


def _link(confirm: optuna.Study, source_name: str, links: dict, chosen: list[FrozenTrial]) -> None:
    """Before the confirmation's first trial: record what it confirms (refusing other finalists), point the source
    at it, and enqueue every finalist not yet in it (idempotent: a resumed or second process enqueues nothing)."""
    source = optuna.load_study(study_name=source_name, storage=confirm._storage)
    recorded = confirm.user_attrs.get(CONFIRMS_ATTR)
    if recorded is not None and recorded != links:
        before = recorded.get("trials") if isinstance(recorded, dict) else "?"
        raise UserError(
            f"study {confirm.study_name!r} confirms trials {before} of {source.study_name!r}, and the finalists are "
            f"now trials {links['trials']}: give the confirmation another name (--confirm-study NAME)"
        )
    if recorded is None:
        confirm.set_user_attr(CONFIRMS_ATTR, links)
    if source.user_attrs.get(CONFIRMATION_ATTR) != confirm.study_name:
        source.set_user_attr(CONFIRMATION_ATTR, confirm.study_name)
    for trial in chosen:
        confirm.enqueue_trial(trial.params, user_attrs={CONFIRMS_TRIAL_ATTR: trial.number}, skip_if_exists=True)


def summarise(source: optuna.Study, confirm: optuna.Study) -> Confirmation:
    """What the confirmation `confirm` of `source` has measured so far (a store is data: what is not as written here
    counts as not measured)."""
    links = confirm.user_attrs.get(CONFIRMS_ATTR)
    listed = links.get("trials") if isinstance(links, dict) else None
    numbers = [n for n in listed if isinstance(n, int)] if isinstance(listed, list) else []
    record = StudyRecord.from_attrs(confirm.user_attrs)
    seeds = record.eval_seeds if record is not None else 0
    by_number = {t.number: t for t in source.get_trials(deepcopy=False)}
    measured = {}
    for trial in confirm.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        values = trial.user_attrs.get(EVAL_VALUES_ATTR)
        if isinstance(values, list) and all(isinstance(v, int | float) for v in values):
            measured[_key(trial)] = tuple(float(v) for v in values)
    configurations = [
        ConfirmedConfiguration(n, float(by_number[n].value), measured.get(_key(by_number[n]), ()))
        for n in numbers
        if n in by_number and by_number[n].value is not None
    ]
    return Confirmation(source.study_name, confirm.study_name, seeds, configurations, maximize=maximizes(source))


def _key(trial: FrozenTrial) -> tuple:
    return tuple(sorted((name, value_key(value)) for name, value in trial.params.items()))
