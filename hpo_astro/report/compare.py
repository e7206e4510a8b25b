"""The paper's final table done right: each study's best trial evaluated on train, val and test, with the search's
statistics, rendered as a terminal table, Markdown, CSV or JSON. A multi-objective study has no best trial: each trial
of its Pareto front is evaluated and is a row (a column of the table) of its own (`hpo_astro.results.front`).

The best trials' evaluations (rebuilt model, cache in the store) come from `hpo_astro.results.evaluate`; this module
adds the search statistics (`hpo_astro.report.search`), assembles one row per study and renders the table.

Definitions used in the table (also printed under the Markdown table):

* total wall time: the sum of the durations (Optuna's start and end timestamps) of every ended trial of the study,
  complete, pruned and failed; `wall_time_span_s` (CSV/JSON) is first trial start to last trial end, which also
  counts pauses between resumed runs.
* trials used: finished (complete + pruned) trials, the unit of a study's budget; failed ones are counted apart.
* trials to within 1%: how many finished trials, in trial order, the study needed until a complete trial's value
  (and so the running best) first came within 1% (relative) of the study's final best:
  value >= best - 0.01*|best| for a maximised objective, <= best + 0.01*|best| for a minimised one (none for a
  multi-objective study, which has no best value).
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

from hpo_astro.errors import UserError
from hpo_astro.io import strict_json
from hpo_astro.report import FormatName

# The search statistics (`hpo_astro.report.search`), also from here, as before (the benchmark takes them from here)
from hpo_astro.report.search import WITHIN as WITHIN
from hpo_astro.report.search import SearchStats, search_stats
from hpo_astro.report.search import trials_to_within as trials_to_within
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
from hpo_astro.results.front import front_evaluations, objective_names, value_text
from hpo_astro.store.record import eval_runs, eval_sem, trial_params
from hpo_astro.store.storage import read_store
from hpo_astro.store.trials import is_multi_objective

if TYPE_CHECKING:
    from rich.table import Table

FORMATS: tuple[str, ...] = get_args(FormatName)
# mdr_at_1fpr is absent from evaluations cached by earlier versions: read each with `metric`
METRIC_NAMES = ("loss", "accuracy", "roc_auc", "precision", "recall", "f1", "fpr_at_5fnr", "mdr_at_1fpr")


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
    # A trial of a multi-objective study's Pareto front (`best_trial` is its number, `best_value` its first value):
    # its objectives' names and values, in the study's order, and the front's size
    objectives: list[str] | None = None
    values: list[float] | None = None
    front_size: int | None = None

    @property
    def label(self) -> str:
        """The row's name: the study's, with the trial's number for a trial of a Pareto front."""
        return self.study if self.values is None else f"{self.study} #{self.best_trial}"

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
        if self.objectives is not None and self.values is not None:
            row["front_size"] = self.front_size
            row.update({f"value_{n}": v for n, v in zip(self.objectives, self.values, strict=True)})
        for split in SPLITS:
            for name in METRIC_NAMES:
                row[f"{split}_{name}"] = metric(getattr(ev, split), name)
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


def compare_front(
    study: optuna.Study,
    data: Path | None = None,
    events: Events | None = None,
    memo: dict | None = None,
    url: str | None = None,
) -> list[StudyResult]:
    """A multi-objective study's Pareto front, one result per trial (best first in the first objective), each
    evaluated as a best trial is (`front_evaluations`: cached, else rebuilt or retrained)."""
    record = study_record(study)
    names = objective_names(study)
    evaluated = front_evaluations(study, data, events, memo, url)
    stats = search_stats(study)
    return [
        StudyResult(
            study=study.study_name,
            strategy=record.strategy if record is not None else "?",
            objective=",".join(names),
            direction=",".join(d.name.lower() for d in study.directions),
            best_trial=trial.number,
            best_value=float(trial.values[0]),
            params=trial_params(trial),
            data_fingerprint=record.data_fingerprint if record is not None else "",
            evaluation=evaluation,
            stats=stats,
            chosen_by=f"the Pareto front ({len(evaluated)} trials)",
            objectives=names,
            values=[float(v) for v in trial.values],
            front_size=len(evaluated),
        )
        for trial, evaluation in evaluated
    ]


def compare_rows(
    study: optuna.Study,
    data: Path | None = None,
    events: Events | None = None,
    memo: dict | None = None,
    url: str | None = None,
) -> list[StudyResult]:
    """A study's rows: its best trial (`compare_study`), or each trial of a multi-objective study's Pareto front."""
    if is_multi_objective(study):
        return compare_front(study, data, events, memo, url)
    return [compare_study(study, data, events, memo, url)]


def compare_studies(
    url: str, names: Sequence[str] | None = None, data: Path | None = None, events: Events | None = None
) -> Comparison:
    """Evaluate every selected study's best trial (each trial of a multi-objective study's Pareto front). A study
    without a completed trial is an error when named, and is skipped (listed in `skipped`) when all studies are
    compared; nothing left to compare is an error."""
    results: list[StudyResult] = []
    skipped: list[tuple[str, str]] = []
    memo: dict = {}
    with read_store(url) as storage:  # read-only; the cache is written through a separate handle
        for study in load_studies(storage, url, names):
            try:
                results.extend(compare_rows(study, data, events, memo, url))
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
    ("Test MDR at 1% FPR", "test", "mdr_at_1fpr"),
)
NOTES = (
    "Accuracy, precision, recall and F1 at a 0.5 threshold on the sigmoid (positive = real); loss is the "
    "pos_weight-balanced BCE used in training; FPR at 5% FNR: fraction of bogus scored at or above the threshold "
    "that keeps 95% of the reals; MDR at 1% FPR: fraction of reals scored below the lowest threshold that lets "
    "through at most 1% of the bogus (-: not measured, an evaluation cached by an earlier version).",
    "Each study's best trial (best validation objective; with a confirmation, `hpo-astro confirm`, the best "
    "confirmed mean) is rebuilt from its saved weights or retrained with its stored seed; the test split is used "
    "only here. A trial of several runs (--eval-seeds, --folds) shows its mean ± standard error; its model is its "
    "first run's.",
    "Total wall time: sum of the durations of all the study's trials (complete, pruned, failed). Trials used: "
    "finished (complete + pruned); failed ones in brackets.",
    "Trials to within 1%: finished trials, in order, until one came within 1% (relative) of the study's final best "
    "objective value.",
)
FRONT_NOTE = (  # under a table with a multi-objective study
    "A multi-objective study has no single best trial: each trial of its Pareto front (no other trial is better in "
    "every objective) is a column of its own, with its objective values; it has no trials to within 1% of a best."
)


def notes(results: Sequence[StudyResult]) -> list[str]:
    """The notes under a table of `results`."""
    return [*NOTES, *([FRONT_NOTE] if any(r.values is not None for r in results) else [])]


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _number(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def metric(metrics: dict[str, float], name: str) -> float:
    """A metric of an evaluation; NaN when it holds none (MDR at 1% FPR, cached by an earlier version)."""
    return float(metrics.get(name, math.nan))


def metric_cell(metrics: dict[str, float], name: str) -> str:
    """A metric as the tables show it: "-" when the evaluation holds none, "n/a" when it is not a number."""
    return "-" if name not in metrics else _number(metrics[name])


def _value(result: StudyResult) -> str:
    """A best value, with its standard error over the trial's runs when it has several."""
    if result.best_value_sem is None:
        return f"{result.best_value:.4f}"
    return f"{result.best_value:.4f} ± {result.best_value_sem:.4f} ({result.best_value_runs} runs)"


def _values(result: StudyResult) -> str:
    """A front trial's values by objective; a best trial's value (a table of both kinds of studies)."""
    if result.objectives is None or result.values is None:
        return f"#{result.best_trial}: {result.objective} {_value(result)}"
    pairs = zip(result.objectives, result.values, strict=True)
    return f"#{result.best_trial}: " + ", ".join(f"{name} {value_text(value)}" for name, value in pairs)


def table_rows(results: Sequence[StudyResult]) -> list[list[str]]:
    """Rows of the final table: a label, then one cell per study (studies are columns, as in the paper)."""
    objectives = {r.objective for r in results}
    if any(r.values is not None for r in results):  # a Pareto front: each trial's value of every objective
        best = ["Trial: objective values", *(_values(r) for r in results)]
    elif len(objectives) == 1:
        best = [f"Best trial: val {next(iter(objectives))}", *(f"#{r.best_trial}: {_value(r)}" for r in results)]
    else:
        best = ["Best trial: val objective", *(f"#{r.best_trial}: {r.objective} {_value(r)}" for r in results)]
    rows = [["Strategy", *(r.strategy for r in results)], best]
    if any(r.chosen_by != StudyResult.chosen_by for r in results):
        rows.append(["Chosen by", *(r.chosen_by for r in results)])
    for label, split, name in PAPER_ROWS + EXTRA_ROWS:
        rows.append([label, *(metric_cell(getattr(r.evaluation, split), name) for r in results)])
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
        table.add_column(r.label, overflow="fold")  # a narrow terminal wraps study names, never truncates them
    for row in table_rows(results):
        table.add_row(*row)
    return table


def markdown_table(comparison: Comparison) -> str:
    results = comparison.results
    lines = [
        "| | " + " | ".join(r.label for r in results) + " |",
        "|---|" + "---:|" * len(results),
        *("| " + " | ".join(row) + " |" for row in table_rows(results)),
        "",
        *(f"- {note}" for note in notes(results)),
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
        fields = list(dict.fromkeys(key for record in records for key in record))  # a front's columns too
        writer = csv.DictWriter(buffer, fieldnames=fields, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return buffer.getvalue()
    if fmt == "json":
        payload = {
            "studies": [
                {**r.record(), "params": r.params, "metrics": {s: getattr(r.evaluation, s) for s in SPLITS}}
                | ({} if r.values is None else {"objectives": r.objectives, "values": r.values})
                for r in comparison.results
            ],
            "skipped": [{"study": name, "reason": why} for name, why in comparison.skipped],
            "notes": notes(comparison.results),
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
