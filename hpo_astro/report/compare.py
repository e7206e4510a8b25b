"""The paper's final table done right: each study's best trial evaluated on train, val and test, with the search's
statistics, rendered as a terminal table, Markdown, CSV or JSON.

The best trials' evaluations (rebuilt model, cache in the store) come from `hpo_astro.results.evaluate`; this module
adds the search statistics, assembles one row per study and renders the table.

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import optuna
from optuna.trial import TrialState

from hpo_astro.errors import UserError
from hpo_astro.io import strict_json
from hpo_astro.report import FormatName
from hpo_astro.results.choice import choose_trial
from hpo_astro.results.evaluate import (
    SPLITS,
    Evaluation,
    Events,
    NoCompletedTrial,
    best_evaluation,
    load_studies,
    study_record,
)
from hpo_astro.store.record import eval_runs, eval_sem, trial_params
from hpo_astro.store.storage import read_store
from hpo_astro.store.trials import FINISHED

if TYPE_CHECKING:
    from rich.table import Table

WITHIN = 0.01  # "trials to within 1% of the final best"
FORMATS: tuple[str, ...] = get_args(FormatName)
METRIC_NAMES = ("loss", "accuracy", "roc_auc", "precision", "recall", "f1", "fpr_at_5fnr")


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
    chosen_by: str = "the best value of the search"  # or the best confirmed mean (`hpo-astro confirm`)
    best_value_sem: float | None = None  # the standard error of a several-run trial's value (`--eval-seeds`, `--folds`)
    best_value_runs: int = 1

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
            "best_value_sem": self.best_value_sem,
            "best_value_runs": self.best_value_runs,
            "chosen_by": self.chosen_by,
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
    choice = choose_trial(study)
    trial = choice.trial
    record = study_record(study)  # None for a study another program made: shown as "?"
    evaluation = best_evaluation(study, trial, data, events, memo, url)
    return StudyResult(
        study=study.study_name,
        strategy=record.strategy if record is not None else "?",
        objective=record.objective if record is not None else "?",
        direction=study.direction.name.lower(),
        best_trial=trial.number,
        best_value=float(trial.value),
        params=trial_params(trial),
        data_fingerprint=record.data_fingerprint if record is not None else "",
        evaluation=evaluation,
        stats=search_stats(study),
        chosen_by=choice.describe(),
        best_value_sem=eval_sem(trial),
        best_value_runs=max(1, len(eval_runs(trial))),
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
    "Each study's best trial (best validation objective; with a confirmation, `hpo-astro confirm`, the best "
    "confirmed mean) is rebuilt from its saved weights or retrained with its stored seed; the test split is used "
    "only here. A trial of several runs (--eval-seeds, --folds) shows its mean ± standard error; its model is its "
    "first run's.",
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


def _value(result: StudyResult) -> str:
    """A best value, with its standard error over the trial's runs when it has several."""
    if result.best_value_sem is None:
        return f"{result.best_value:.4f}"
    return f"{result.best_value:.4f} ± {result.best_value_sem:.4f} ({result.best_value_runs} runs)"


def table_rows(results: Sequence[StudyResult]) -> list[list[str]]:
    """Rows of the final table: a label, then one cell per study (studies are columns, as in the paper)."""
    objectives = {r.objective for r in results}
    if len(objectives) == 1:
        best = [f"Best trial: val {next(iter(objectives))}", *(f"#{r.best_trial}: {_value(r)}" for r in results)]
    else:
        best = ["Best trial: val objective", *(f"#{r.best_trial}: {r.objective} {_value(r)}" for r in results)]
    rows = [["Strategy", *(r.strategy for r in results)], best]
    if any(r.chosen_by != StudyResult.chosen_by for r in results):
        rows.append(["Chosen by", *(r.chosen_by for r in results)])
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
        return json.dumps(strict_json(payload), indent=2, allow_nan=False) + "\n"
    if fmt == "table":
        from rich.console import Console

        console = Console(file=io.StringIO(), width=200, record=True, color_system=None)
        console.print(rich_table(comparison))
        return console.export_text()
    raise UserError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return fmt
