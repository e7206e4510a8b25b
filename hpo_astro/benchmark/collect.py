"""Reading a benchmark's studies back from the store: per study, its trials as plain records (the analysis never sees
Optuna), and the test metric of its best configuration: from the table's row in tabular mode, else evaluated once
by `hpo_astro.results.evaluate` (the model rebuilt from the saved weights or retrained with the trial's seed, cached
in the store, exactly as `compare` does it).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo_astro.benchmark.hypervolume import Box, box_of, finite_values, running_hypervolume
from hpo_astro.benchmark.plan import BenchmarkSpec, Job
from hpo_astro.errors import UserError
from hpo_astro.store.record import (
    FINGERPRINT_KEY,
    HISTORY_SYSTEM_ATTR,
    RESUMED_FROM_EPOCH_ATTR,
    TEST_METRICS_ATTR,
    internal_attr,
    stored_metrics,
    stored_seconds,
    trial_history,
    trial_params,
    trial_runs,
)
from hpo_astro.store.trials import FINISHED, better
from hpo_astro.study.pbt_plan import SCHEDULE_ATTR

if TYPE_CHECKING:
    from hpo_astro.study.objectives import ObjectiveSpec
    from hpo_astro.tabular import Table


@dataclass(frozen=True)
class TrialRecord:
    number: int
    state: str  # "complete", "pruned" or "fail"
    value: float | None  # the objective (validation), complete trials only
    cost: float  # training seconds charged to the anytime curves
    test: float | None  # the objective's metric on the test split, when the trial carries it (tabular mode)
    params: dict[str, Any] = field(default_factory=dict)
    # Its configuration's true quality: the test metric's mean over every seed the table holds of it (tabular mode;
    # a one-seed table: its one run). What a user gets from the configuration, whatever run the search saw.
    true_test: float | None = None
    # Its objective values (complete trials whose values are all finite): one for a single-objective study, several
    # for a multi-objective one, whose `value` is None until `hypervolume.score` sets it.
    values: tuple[float, ...] | None = None
    epochs: int = 0  # epochs it trained (`trial_epochs`)
    # A PBT trial's member schedule (`hpo_astro.study.pbt_plan.schedule_of`): what its model is the result of
    schedule: tuple[dict[str, Any], ...] | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("complete", "pruned")

    @property
    def key(self) -> str:
        """What it trained, as an identity (`config_key`): its configuration, a PBT trial's schedule."""
        return config_key({"pbt_schedule": list(self.schedule)} if self.schedule else self.params)


@dataclass(frozen=True)
class StudyRun:
    """One study of the benchmark as the analysis sees it: its first `n_trials` finished trials (and the failed
    ones among them), and its best configuration's test metric."""

    strategy: str
    repeat: int
    seed: int
    study: str
    trials: tuple[TrialRecord, ...]
    best_trial: int | None  # the incumbent: the first complete trial with the best value
    best_test: float | None  # its test metric (None: unknown)
    fingerprint: str = ""  # of the data the study was run on (its record)
    best_true: float | None = None  # its configuration's true quality (`TrialRecord.true_test`; tabular mode)

    @property
    def finished(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.finished]


def trial_cost(trial: FrozenTrial) -> float:
    """The training seconds a trial is charged: its recorded training time (a replayed trial: the table's), else
    (a failed trial, which records none) its duration in the store."""
    value = stored_seconds(trial)
    if value is not None:
        return value
    return trial.duration.total_seconds() if trial.duration is not None else 0.0


def trial_epochs(trial: FrozenTrial) -> int:
    """The epochs a trial trained itself: its runs' (a trial of several), else its history's, less the epochs it
    continued from (those are charged to the trial that trained them): a PBT segment's start (its member's epochs
    before, its parent's), a retried trial's resumed epoch (its killed attempt's)."""
    runs = trial_runs(trial)
    if runs:
        return sum(len(run.get("history") or ()) for run in runs)
    exact = trial.system_attrs.get(HISTORY_SYSTEM_ATTR)
    trained = len(exact) if isinstance(exact, list) else len(trial_history(trial))
    resumed = trial.user_attrs.get(RESUMED_FROM_EPOCH_ATTR)
    start = resumed if isinstance(resumed, int) and not isinstance(resumed, bool) else 0
    schedule = _schedule(trial)
    if schedule:
        start = max(start, int(schedule[-1]["epochs"][0]))
    return max(0, trained - start)


def _schedule(trial: FrozenTrial) -> tuple[dict[str, Any], ...] | None:
    """A PBT trial's member schedule (as `hpo_astro.study.pbt_plan.schedule_of` reads it), else None."""
    value = internal_attr(trial, SCHEDULE_ATTR)
    if not isinstance(value, list) or not value:
        return None
    segments = tuple(dict(s) for s in value if isinstance(s, dict))
    ok = all(
        isinstance(s.get("params"), dict) and isinstance(s.get("epochs"), list) and len(s["epochs"]) == 2
        and all(isinstance(e, int) and not isinstance(e, bool) for e in s["epochs"])
        for s in segments
    )  # fmt: skip
    return segments if ok and len(segments) == len(value) else None


def schedule_text(schedule: Sequence[dict[str, Any]]) -> str:
    """A PBT member's schedule in one line: each segment's epochs and mutable hyperparameters."""
    from hpo_astro.study.pbt_plan import shown_schedule

    def value(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return "; ".join(
        f"epochs {s['epochs'][0]}-{s['epochs'][1]}: "
        + ", ".join(f"{k}={value(v)}" for k, v in s.items() if k != "epochs")
        for s in shown_schedule(schedule)
    )


def _metric(metrics: Any, name: str) -> float | None:
    value = metrics.get(name) if isinstance(metrics, dict) else None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def trial_records(
    trials: Sequence[FrozenTrial],
    n_trials: int,
    metric: str,
    true_quality: Callable[[dict[str, Any]], float | None] | None = None,
) -> tuple[TrialRecord, ...]:
    """The trials in number order up to the `n_trials`-th finished one (a study run longer before is cut to the
    benchmark's budget); waiting and running trials are left out. `true_quality`: a configuration's true quality
    (tabular mode: `table_quality`)."""
    out: list[TrialRecord] = []
    finished = 0
    for trial in sorted(trials, key=lambda t: t.number):
        if finished >= n_trials:
            break
        if trial.state not in (*FINISHED, TrialState.FAIL):
            continue
        values = finite_values(trial.values) if trial.state == TrialState.COMPLETE else None
        value = values[0] if values is not None and len(values) == 1 else None
        out.append(
            TrialRecord(
                number=trial.number,
                state=trial.state.name.lower(),
                value=value,
                cost=trial_cost(trial),
                test=_metric(stored_metrics(trial, TEST_METRICS_ATTR), metric),
                params=trial_params(trial),
                true_test=true_quality(trial_params(trial)) if true_quality is not None else None,
                values=values,
                epochs=trial_epochs(trial),
                schedule=_schedule(trial),
            )
        )
        finished += trial.state in FINISHED
    return tuple(out)


def table_quality(table: Table, metric: str) -> Callable[[dict[str, Any]], float | None]:
    """A configuration's true quality in `table`: the mean of its rows' test `metric` over the table's seeds (None
    when the table does not hold it, or no run measured it)."""

    def quality(params: dict[str, Any]) -> float | None:
        try:
            runs = table.runs(params)
        except UserError:
            return None
        values = [v for v in (_metric(row.test_metrics, metric) for row in runs) if v is not None]
        return sum(values) / len(values) if values else None

    return quality


def incumbent(trials: Sequence[TrialRecord], maximize: bool) -> TrialRecord | None:
    """The first complete trial with the best value (the one whose weights the study keeps: a later tie is not
    better)."""
    best: TrialRecord | None = None
    for t in trials:
        if t.value is not None and better(t.value, None if best is None else best.value, maximize):
            best = t
    return best


Events = Callable[[str], None]


def collect(
    spec: BenchmarkSpec,
    jobs: Sequence[Job],
    storage: optuna.storages.BaseStorage,
    tabular: bool,
    events: Events | None = None,
    table: Table | None = None,
) -> list[StudyRun]:
    """Every job's study as a `StudyRun`. In training mode each best configuration is evaluated on the test split
    once (and cached in the store): `hpo_astro.results.evaluate.best_evaluation`; in tabular mode `table` gives
    every configuration's true quality (`table_quality`)."""
    from hpo_astro.results.evaluate import best_evaluation

    runs: list[StudyRun] = []
    memo: dict = {}  # the data, loaded once for every evaluation that needs it
    for job in jobs:
        name = job.config.study_name
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise UserError(f"study {name!r} is missing from {spec.storage_url}") from None
        frozen = study.get_trials(deepcopy=False)
        quality = table_quality(table, spec.metric) if table is not None else None
        trials = trial_records(frozen, spec.read_trials(job.strategy), spec.metric, quality)
        best = incumbent(trials, spec.maximize)
        best_test = best.test if best is not None else None
        if best is not None and not tabular:
            trial = next(t for t in frozen if t.number == best.number)
            evaluation = best_evaluation(study, trial, spec.settings.data, events, memo, spec.storage_url)
            best_test = _metric(evaluation.test, spec.metric)
        runs.append(
            StudyRun(
                strategy=job.strategy,
                repeat=job.repeat,
                seed=job.config.seed,
                study=name,
                trials=trials,
                best_trial=best.number if best is not None else None,
                best_test=best_test,
                fingerprint=str(study.user_attrs.get(FINGERPRINT_KEY, "")),
                best_true=best.true_test if best is not None else None,
            )
        )
    return runs


def score(runs: Sequence[StudyRun], objectives: Sequence[ObjectiveSpec]) -> tuple[list[StudyRun], Box]:
    """A multi-objective benchmark's studies scored by hypervolume (`hpo_astro.benchmark.hypervolume`) in the box of
    all their trials, and that box.
    A trial's value becomes the hypervolume of its study's front just after it; the test metrics of a best trial
    (`test`, `true_test`, `best_test`, `best_true`) and the best trial itself do not apply to a front: None."""
    box = box_of((t.values for r in runs for t in r.trials if t.values is not None), objectives)
    scored = []
    for run in runs:
        volumes = running_hypervolume([t.values for t in run.trials], box)
        trials = tuple(
            dataclasses.replace(t, value=v, test=None, true_test=None) for t, v in zip(run.trials, volumes, strict=True)
        )
        scored.append(dataclasses.replace(run, trials=trials, best_trial=None, best_test=None, best_true=None))
    return scored, box


def config_key(params: dict[str, Any]) -> str:
    """A configuration's identity (JSON, keys sorted): the same configuration found by two repeats is one."""
    return json.dumps(params, sort_keys=True, default=str)


@dataclass(frozen=True)
class Candidate:
    """One of a strategy's top configurations over all its repeats."""

    strategy: str
    params: dict[str, Any]
    value: float  # its best validation objective in the search
    test: float | None  # its test metric in the search (tabular mode: the table's)
    found_by: tuple[str, ...]  # studies that tried it
    schedule: tuple[dict[str, Any], ...] | None = None  # a PBT member's schedule: what is re-trained

    @property
    def key(self) -> str:
        """Its identity (`TrialRecord.key`): the configuration, a PBT member's schedule."""
        return config_key({"pbt_schedule": list(self.schedule)} if self.schedule else self.params)


def top_configurations(runs: Sequence[StudyRun], k: int, maximize: bool) -> dict[str, list[Candidate]]:
    """Per strategy, its `k` best distinct configurations over all its repeats' complete trials, by validation
    objective (ties: the earlier repeat and trial first)."""
    out: dict[str, list[Candidate]] = {}
    if k <= 0:
        return out
    for strategy in dict.fromkeys(r.strategy for r in runs):
        seen: dict[str, Candidate] = {}
        for run in sorted((r for r in runs if r.strategy == strategy), key=lambda r: r.repeat):
            for t in run.trials:
                if t.value is None:
                    continue
                key = t.key
                old = seen.get(key)
                if old is None:
                    seen[key] = Candidate(strategy, t.params, t.value, t.test, (run.study,), t.schedule)
                else:
                    improves = better(t.value, old.value, maximize)
                    seen[key] = Candidate(
                        strategy,
                        old.params,
                        t.value if improves else old.value,
                        old.test if old.test is not None else t.test,
                        old.found_by if run.study in old.found_by else (*old.found_by, run.study),
                        old.schedule,
                    )
        ordered = sorted(seen.values(), key=lambda c: -c.value if maximize else c.value)  # stable: first found first
        out[strategy] = ordered[:k]
    return out


# --- the re-training cache: DIR/retrained.json -------------------------------------------------------------------

RETRAIN_FILE = "retrained.json"
RETRAIN_VERSION = 1


def retrain_key(
    fingerprint: str,
    params: dict[str, Any],
    seed: int,
    max_epochs: int | None,
    schedule: Sequence[dict[str, Any]] | None = None,
) -> str:
    """A re-training's identity; a PBT member's schedule (re-trained segment by segment) is part of it."""
    key: dict[str, Any] = {"data": fingerprint, "params": params, "seed": seed, "max_epochs": max_epochs}
    if schedule:
        key = {**key, "pbt_schedule": list(schedule), "max_epochs": None}
    return json.dumps(key, sort_keys=True, default=str)


def read_retrained(out: Path) -> dict[str, dict[str, Any]]:
    """The re-trainings done before (a file that cannot be read or is of another version counts as none)."""
    try:
        data = json.loads((Path(out) / RETRAIN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if (
        not isinstance(data, dict)
        or data.get("version") != RETRAIN_VERSION
        or not isinstance(data.get("entries"), dict)
    ):
        return {}
    return data["entries"]


def write_retrained(out: Path, entries: dict[str, dict[str, Any]]) -> None:
    from hpo_astro.io import write_output

    payload = {"version": RETRAIN_VERSION, "entries": entries}
    write_output(Path(out) / RETRAIN_FILE, json.dumps(payload, indent=1, sort_keys=True, allow_nan=True) + "\n")
