"""The paper's final table done right: each study's best trial evaluated on train, val and test.

For every selected study the best (complete) trial's model is rebuilt, from the trial's saved best weights when
it has them (`load_trial_model`), else by retraining its full configuration (`params_full`) with the trial's
stored seed and the study's epoch cap, which reproduces the trial exactly because training is deterministic for
a seed. The model is evaluated on CPU on the three splits; the test split is read only here (the report and the
export reuse this code). Each evaluation is cached in the study store (study user attribute `compare_cache`,
keyed by trial number and data fingerprint), so a second `compare` is instant and gives the same numbers. The
store is read through a read-only handle; the cache is written through a separate short-lived writable one, and
not at all when the store or its file system is read-only.

Definitions used in the table (also printed under the Markdown table):

* total wall time: the sum of the durations (Optuna's start and end timestamps) of every ended trial of the study,
  complete, pruned and failed; `wall_time_span_s` (CSV/JSON) is first trial start to last trial end, which also
  counts pauses between resumed runs.
* trials used: finished (complete + pruned) trials, the unit of a study's budget; failed ones are counted apart.
* trials to within 1%: how many finished trials, in trial order, the study needed until a complete trial's value
  (and so the running best) first came within 1% (relative) of the study's final best:
  value >= best - 0.01*|best| for a maximised objective, <= best + 0.01*|best| for a minimised one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo_astro.errors import UserError
from hpo_astro.storage import close_store, read_store, writable_store

if TYPE_CHECKING:
    from rich.table import Table
    from torch import nn

    from hpo_astro.data.prepare import DataSplits

CACHE_ATTR = "compare_cache"
CACHE_VERSION = 1  # bump when the evaluation changes, so stale cached numbers are recomputed
WITHIN = 0.01  # "trials to within 1% of the final best"
FORMATS = ("table", "markdown", "csv", "json")
SPLITS = ("train", "val", "test")
METRIC_NAMES = ("loss", "accuracy", "roc_auc", "precision", "recall", "f1", "fpr_at_5fnr")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
Events = Callable[[str], None]

optuna.logging.set_verbosity(optuna.logging.WARNING)


class NoCompletedTrial(UserError):
    """The study has no complete trial, so it has no best configuration to evaluate."""


# --- the store and its studies ----------------------------------------------------------------------------------


def load_studies(storage: optuna.storages.BaseStorage, url: str, names: Sequence[str] | None) -> list[optuna.Study]:
    """The named studies (all of them when `names` is empty), in the order given; unknown names are errors."""
    existing = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if not existing:
        raise UserError(f"no studies in {url}: run `hpo-astro run` first")
    wanted = list(dict.fromkeys(names)) if names else existing
    for name in wanted:
        if name not in existing:
            raise UserError(f"no study named {name!r} in {url}; studies: {', '.join(existing)}")
    return [optuna.load_study(study_name=name, storage=storage) for name in wanted]


def state_counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {state.name.lower(): n for state in TrialState if (n := sum(t.state == state for t in trials))}


def best_trial(study: optuna.Study) -> FrozenTrial:
    """Optuna's best complete trial; a study without one is a NoCompletedTrial error that says what it holds."""
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return study.best_trial
    counts = state_counts(study)
    held = ", ".join(f"{n} {state}" for state, n in counts.items()) or "no trials"
    raise NoCompletedTrial(f"study {study.study_name!r} has no completed trial ({held}): it has no best model")


# --- search statistics ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchStats:
    n_finished: int  # complete + pruned: the budget's unit
    n_complete: int
    n_pruned: int
    n_failed: int
    wall_time_sum_s: float  # sum of the durations of every ended trial
    wall_time_span_s: float  # first trial start to last trial end
    trials_to_within: int | None  # finished trials needed to come within WITHIN of the final best


def trials_to_within(values: Sequence[float | None], maximize: bool, tolerance: float = WITHIN) -> int | None:
    """1-based position of the first value within `tolerance` (relative) of the best; None marks trials without
    a value (pruned), which still count. The running best crosses the bound exactly when one value does."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    best = max(finite) if maximize else min(finite)
    bound = best - tolerance * abs(best) if maximize else best + tolerance * abs(best)
    for position, value in enumerate(values, start=1):
        if value is not None and math.isfinite(value) and (value >= bound if maximize else value <= bound):
            return position
    return None  # pragma: no cover - the best value itself is within the bound


def search_stats(study: optuna.Study) -> SearchStats:
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    finished = [t for t in trials if t.state in FINISHED]
    ended = [t for t in trials if t.datetime_start is not None and t.datetime_complete is not None]
    span = (max(t.datetime_complete for t in ended) - min(t.datetime_start for t in ended)) if ended else None
    values = [t.value if t.state == TrialState.COMPLETE else None for t in finished]
    return SearchStats(
        n_finished=len(finished),
        n_complete=sum(t.state == TrialState.COMPLETE for t in trials),
        n_pruned=sum(t.state == TrialState.PRUNED for t in trials),
        n_failed=sum(t.state == TrialState.FAIL for t in trials),
        wall_time_sum_s=sum(t.duration.total_seconds() for t in ended if t.duration is not None),
        wall_time_span_s=span.total_seconds() if span is not None else 0.0,
        trials_to_within=trials_to_within(values, study.direction == optuna.study.StudyDirection.MAXIMIZE),
    )


# --- the data a study was run on ------------------------------------------------------------------------------


def study_data(study: optuna.Study, data: Path | None = None, memo: dict | None = None) -> DataSplits:
    """The splits the study was run on (its `data_source` and channels, or `data` when the file moved),
    refused unless their fingerprint is the study's."""
    from hpo_astro.data.prepare import DEFAULT_CHANNELS, PrepConfig, load_splits

    attrs = study.user_attrs
    channels = tuple(attrs.get("channels") or DEFAULT_CHANNELS)
    source = attrs.get("data_source")
    if data is not None:
        path: Path | None = Path(data)
    elif source and Path(source).is_file():
        path = Path(source)
    elif source and attrs.get("data") is not None:  # recorded as None: the default simulated set
        raise UserError(
            f"data file {source} of study {study.study_name!r} not found; pass --data PATH to the file it was run on"
        )
    else:
        path = None  # the default simulated set, regenerated identically when not cached
    key = (str(path), channels)
    memo = {} if memo is None else memo
    if key not in memo:
        memo[key] = load_splits(path, PrepConfig(channels=channels))
    splits = memo[key]
    expected = attrs.get("data_fingerprint")
    if expected and splits.fingerprint != expected:
        raise UserError(
            f"study {study.study_name!r} was run on data with fingerprint {expected}, but {splits.source} "
            f"(channels {','.join(channels)}) gives {splits.fingerprint}; pass --data PATH to the file it was run on"
        )
    return splits


# --- the best trial's model and its evaluation ----------------------------------------------------------------


def load_trial_model(study: optuna.Study, trial: FrozenTrial, url: str | None = None) -> nn.Module | None:
    """The trial's saved best-epoch weights (the study keeps those of its best trial, see `hpo_astro.study`),
    or None when this trial has none or the file is gone; weights load with `weights_only=True`. The weights are
    looked for where the study recorded its artifacts, then beside the store at `url` (a store copied elsewhere)."""
    import torch

    from hpo_astro.model import build_model
    from hpo_astro.storage import find_artifact_dir
    from hpo_astro.study import BEST_WEIGHTS_ATTR

    saved = study.user_attrs.get(BEST_WEIGHTS_ATTR)
    params = trial.user_attrs.get("params_full")
    directory = find_artifact_dir(study.user_attrs.get("artifacts"), url)
    if not saved or saved.get("trial") != trial.number or not params or directory is None:
        return None
    try:
        with optuna.artifacts.FileSystemArtifactStore(str(directory)).open_reader(saved["artifact_id"]) as fh:
            state = torch.load(fh, map_location="cpu", weights_only=True)
        model = build_model(params, in_channels=len(study.user_attrs.get("channels", ["scorr"])))
        model.load_state_dict(state)
    except Exception:  # missing, unreadable or mismatched weights: fall back to retraining
        return None
    return model.eval()


def retrain_trial(study: optuna.Study, trial: FrozenTrial, data: DataSplits) -> nn.Module:
    """Retrain the trial's full configuration with its seed and the study's epoch cap: the same model, because
    training is deterministic for a seed."""
    from hpo_astro.train import train

    params = trial.user_attrs.get("params_full")
    if not params:
        raise UserError(
            f"trial {trial.number} of study {study.study_name!r} has no stored configuration (params_full): "
            "it was run by an older hpo-astro and cannot be reproduced"
        )
    seed = int(trial.user_attrs.get("train_seed", study.user_attrs.get("seed", 0)))
    return train(params, data, max_epochs=study.user_attrs.get("max_epochs"), seed=seed).model


@dataclass
class Evaluation:
    """A best model's metrics on the three splits (Metrics.as_dict) and its test scores (sigmoid, test order)."""

    train: dict[str, float]
    val: dict[str, float]
    test: dict[str, float]
    test_scores: list[float]
    source: str  # "weights" (the trial's saved weights) or "retrained"
    reproduced: bool | None  # the validation metrics equal those the trial recorded (None: nothing recorded)
    seconds: float  # time taken to rebuild and evaluate the model


def evaluate_model(model: nn.Module, data: DataSplits, trial: FrozenTrial, source: str, seconds: float) -> Evaluation:
    """Metrics on train, val and test, on CPU, as `hpo_astro.train.evaluate` computes them during training."""
    import torch

    from hpo_astro.train import metrics_from_logits, predict_logits

    model = model.cpu().eval()
    data = data.to("cpu")
    metrics, scores = {}, []
    for split in SPLITS:
        x, y = data.split(split)
        logits = predict_logits(model, x)
        metrics[split] = metrics_from_logits(logits, y, data.pos_weight).as_dict()
        if split == "test":
            scores = torch.sigmoid(logits).tolist()
    stored = trial.user_attrs.get("val_metrics")
    reproduced = None
    if stored:
        # tolerance for evaluating on CPU what the trial evaluated on its device; a different model is far off
        reproduced = all(_close(metrics["val"][k], stored.get(k), 1e-4) for k in ("loss", "accuracy", "roc_auc"))
    return Evaluation(metrics["train"], metrics["val"], metrics["test"], scores, source, reproduced, seconds)


def evaluate_best(
    study: optuna.Study, trial: FrozenTrial, data: DataSplits, events: Events | None = None, url: str | None = None
) -> tuple[nn.Module, Evaluation]:
    """Rebuild the trial's model (saved weights, else retraining) and evaluate it."""
    start = time.perf_counter()
    model = load_trial_model(study, trial, url)
    source = "weights"
    if model is None:
        if events:
            seed = trial.user_attrs.get("train_seed", study.user_attrs.get("seed", 0))
            events(f"study {study.study_name!r}: retraining best trial #{trial.number} with its seed {seed}")
        model, source = retrain_trial(study, trial, data), "retrained"
    return model, evaluate_model(model, data, trial, source, time.perf_counter() - start)


def _close(a: float, b: Any, tol: float = 1e-6) -> bool:
    if not isinstance(b, int | float):
        return False
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def same_metrics(a: Evaluation, b: Evaluation) -> bool:
    """Equal train/val/test metrics (to rounding; NaN equals NaN)."""
    return all(
        _close(value, getattr(b, split).get(name)) for split in SPLITS for name, value in getattr(a, split).items()
    )


def cache_key(trial: FrozenTrial, fingerprint: str) -> str:
    return f"{trial.number}:{fingerprint}"


def cached_evaluation(study: optuna.Study, trial: FrozenTrial, fingerprint: str) -> Evaluation | None:
    entry = (study.user_attrs.get(CACHE_ATTR) or {}).get(cache_key(trial, fingerprint))
    if not isinstance(entry, dict) or entry.get("version") != CACHE_VERSION:
        return None
    try:
        return Evaluation(**{f.name: entry[f.name] for f in fields(Evaluation)})
    except (KeyError, TypeError):
        return None


def store_evaluation(
    study: optuna.Study, trial: FrozenTrial, fingerprint: str, evaluation: Evaluation, url: str | None = None
) -> bool:
    """Cache the evaluation in the study's user attributes at `url`. The study was loaded through a read-only
    handle, so this writes through a separate short-lived writable one; a read-only store (or file system), or no
    `url`, is skipped quietly: the cache only saves time. Returns whether it was written."""
    import sqlalchemy.exc

    storage = writable_store(url) if url else None
    if storage is None:
        return False
    try:
        study_id = storage.get_study_id_from_name(study.study_name)
        cache = dict(storage.get_study_user_attrs(study_id).get(CACHE_ATTR) or {})  # fresh: others may have added
        cache[cache_key(trial, fingerprint)] = {"version": CACHE_VERSION, **asdict(evaluation)}
        storage.set_study_user_attr(study_id, CACHE_ATTR, cache)
        return True
    except (sqlalchemy.exc.SQLAlchemyError, OSError, KeyError):  # e.g. a file system that refuses the write
        return False
    finally:
        close_store(storage)


# --- comparing studies ------------------------------------------------------------------------------------------


@dataclass
class StudyResult:
    study: str
    strategy: str
    objective: str
    direction: str
    best_trial: int
    best_value: float
    params: dict[str, Any]
    data_fingerprint: str
    evaluation: Evaluation
    stats: SearchStats

    def record(self) -> dict[str, Any]:
        """One flat row: the CSV line and the core of the JSON entry."""
        ev, st = self.evaluation, self.stats
        row: dict[str, Any] = {
            "study": self.study,
            "strategy": self.strategy,
            "objective": self.objective,
            "direction": self.direction,
            "best_trial": self.best_trial,
            "best_value": self.best_value,
        }
        for split in SPLITS:
            for name in METRIC_NAMES:
                row[f"{split}_{name}"] = getattr(ev, split)[name]
        row.update(
            threshold=ev.test.get("threshold", 0.5),
            wall_time_sum_s=st.wall_time_sum_s,
            wall_time_span_s=st.wall_time_span_s,
            trials_finished=st.n_finished,
            trials_complete=st.n_complete,
            trials_pruned=st.n_pruned,
            trials_failed=st.n_failed,
            trials_to_within_1pct=st.trials_to_within,
            model_source=ev.source,
            reproduced=ev.reproduced,
            data_fingerprint=self.data_fingerprint,
        )
        return row


@dataclass
class Comparison:
    results: list[StudyResult]
    skipped: list[tuple[str, str]]  # (study, why) for studies left out because they have no completed trial


def compare_study(
    study: optuna.Study,
    data: Path | None = None,
    events: Events | None = None,
    memo: dict | None = None,
    url: str | None = None,
) -> StudyResult:
    """Evaluate one study's best trial (from the cache when it holds it) and summarise its search."""
    trial = best_trial(study)
    attrs = study.user_attrs
    fingerprint = attrs.get("data_fingerprint", "")
    evaluation = cached_evaluation(study, trial, fingerprint)
    if evaluation is None:
        splits = study_data(study, data, memo)
        _, evaluation = evaluate_best(study, trial, splits, events, url)
        store_evaluation(study, trial, fingerprint, evaluation, url)
        if events and evaluation.reproduced is False:
            events(
                f"warning: study {study.study_name!r}: the rebuilt model's validation metrics differ from those "
                f"recorded by trial #{trial.number} (was it trained on another device or torch version?)"
            )
    return StudyResult(
        study=study.study_name,
        strategy=attrs.get("strategy", "?"),
        objective=attrs.get("objective", "?"),
        direction=study.direction.name.lower(),
        best_trial=trial.number,
        best_value=float(trial.value),
        params=dict(trial.user_attrs.get("params_full") or trial.params),
        data_fingerprint=fingerprint,
        evaluation=evaluation,
        stats=search_stats(study),
    )


def compare_studies(
    url: str, names: Sequence[str] | None = None, data: Path | None = None, events: Events | None = None
) -> Comparison:
    """Evaluate every selected study's best trial. A study without a completed trial is an error when named,
    and is skipped (listed in `skipped`) when all studies are compared; nothing left to compare is an error."""
    results: list[StudyResult] = []
    skipped: list[tuple[str, str]] = []
    memo: dict = {}
    with read_store(url) as storage:  # read-only; the cache is written through a separate handle
        for study in load_studies(storage, url, names):
            try:
                results.append(compare_study(study, data, events, memo, url))
            except NoCompletedTrial as exc:
                if names:
                    raise
                skipped.append((study.study_name, str(exc)))
    if not results:
        raise UserError("nothing to compare: " + "; ".join(why for _, why in skipped))
    return Comparison(results, skipped)


# --- rendering ------------------------------------------------------------------------------------------------

PAPER_ROWS = (  # the paper's final table
    ("Final train loss", "train", "loss"),
    ("Final val loss", "val", "loss"),
    ("Final test loss", "test", "loss"),
    ("Final train accuracy", "train", "accuracy"),
    ("Final val accuracy", "val", "accuracy"),
    ("Final test accuracy", "test", "accuracy"),
)
EXTRA_ROWS = (  # honest metrics on the test split (positive = real)
    ("Test ROC AUC", "test", "roc_auc"),
    ("Test precision", "test", "precision"),
    ("Test recall", "test", "recall"),
    ("Test F1", "test", "f1"),
    ("Test FPR at 5% FNR", "test", "fpr_at_5fnr"),
)
NOTES = (
    "Accuracy, precision, recall and F1 at a 0.5 threshold on the sigmoid (positive = real); loss is the "
    "pos_weight-balanced BCE used in training; FPR at 5% FNR: fraction of bogus scored at or above the threshold "
    "that keeps 95% of the reals.",
    "Each study's best trial (best validation objective) is rebuilt from its saved weights or retrained with its "
    "stored seed; the test split is used only here.",
    "Total wall time: sum of the durations of all the study's trials (complete, pruned, failed). Trials used: "
    "finished (complete + pruned); failed ones in brackets.",
    "Trials to within 1%: finished trials, in order, until one came within 1% (relative) of the study's final best "
    "objective value.",
)


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _number(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def table_rows(results: Sequence[StudyResult]) -> list[list[str]]:
    """Rows of the final table: a label, then one cell per study (studies are columns, as in the paper)."""
    objectives = {r.objective for r in results}
    if len(objectives) == 1:
        best = [f"Best trial: val {next(iter(objectives))}", *(f"#{r.best_trial}: {r.best_value:.4f}" for r in results)]
    else:
        best = ["Best trial: val objective", *(f"#{r.best_trial}: {r.objective} {r.best_value:.4f}" for r in results)]
    rows = [["Strategy", *(r.strategy for r in results)], best]
    for label, split, name in PAPER_ROWS + EXTRA_ROWS:
        rows.append([label, *(_number(getattr(r.evaluation, split)[name]) for r in results)])
    rows.append(["Total wall time", *(format_duration(r.stats.wall_time_sum_s) for r in results)])
    rows.append(
        [
            "Trials used",
            *(f"{r.stats.n_finished}" + (f" ({r.stats.n_failed} failed)" if r.stats.n_failed else "") for r in results),
        ]
    )
    rows.append(["Trials to within 1% of best", *(str(r.stats.trials_to_within or "n/a") for r in results)])
    return rows


def rich_table(comparison: Comparison) -> Table:
    from rich.table import Table

    results = comparison.results
    table = Table(title="Best configuration of each study")
    table.add_column("", no_wrap=True)
    for r in results:
        table.add_column(r.study, overflow="fold")  # a narrow terminal wraps study names, never truncates them
    for row in table_rows(results):
        table.add_row(*row)
    return table


def markdown_table(comparison: Comparison) -> str:
    results = comparison.results
    lines = [
        "| | " + " | ".join(r.study for r in results) + " |",
        "|---|" + "---:|" * len(results),
        *("| " + " | ".join(row) + " |" for row in table_rows(results)),
        "",
        *(f"- {note}" for note in NOTES),
    ]
    lines += [f"- Skipped: {why}" for _, why in comparison.skipped]
    return "\n".join(lines) + "\n"


def render(comparison: Comparison, fmt: str) -> str:
    """The comparison as text in one of FORMATS."""
    if fmt == "markdown":
        return markdown_table(comparison)
    if fmt == "csv":
        records = [r.record() for r in comparison.results]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return buffer.getvalue()
    if fmt == "json":
        payload = {
            "studies": [
                {**r.record(), "params": r.params, "metrics": {s: getattr(r.evaluation, s) for s in SPLITS}}
                for r in comparison.results
            ],
            "skipped": [{"study": name, "reason": why} for name, why in comparison.skipped],
            "notes": list(NOTES),
        }
        return json.dumps(_json_ready(payload), indent=2, allow_nan=False) + "\n"
    if fmt == "table":
        from rich.console import Console

        console = Console(file=io.StringIO(), width=200, record=True, color_system=None)
        console.print(rich_table(comparison))
        return console.export_text()
    raise UserError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")


def _json_ready(value: Any) -> Any:
    """NaN and infinities (e.g. ROC AUC of a one-class split) become null: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return fmt
