"""The report's section on a multi-objective study's result, its Pareto front: Optuna's Pareto-front plot (every
complete trial, the front's highlighted) and the front's trials as a table, each with its objective values and its
model's test metrics (`hpo_astro.report.compare.compare_front`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import optuna
import plotly.graph_objects as go

from hpo_astro.errors import described
from hpo_astro.report.compare import StudyResult, format_duration, metric_cell
from hpo_astro.report.figures import TEMPLATE, OptunaPlot, _optuna_notes
from hpo_astro.results.front import objective_names, value_text
from hpo_astro.results.page import escape, table_html
from hpo_astro.results.status import varying_params

TEST_COLUMNS = (  # the front trials' models on the test split
    ("test accuracy", "accuracy"),
    ("test ROC AUC", "roc_auc"),
    ("test FPR at 5% FNR", "fpr_at_5fnr"),
    ("test MDR at 1% FPR", "mdr_at_1fpr"),
)


def pareto_figure(study: optuna.Study) -> OptunaPlot:
    """Optuna's `plot_pareto_front`, its axes named by the study's objectives (two or three: with more, a note)."""
    import optuna.visualization as vis

    notes: list[str] = []
    figure: go.Figure | None = None
    with _optuna_notes(notes):
        try:
            figure = vis.plot_pareto_front(study, target_names=objective_names(study))
        except (ValueError, TypeError, RuntimeError, ImportError, ArithmeticError) as exc:  # e.g. four objectives
            notes.append(described(exc))
    if figure is not None and not figure.data:
        figure, notes = None, [*notes, "nothing to draw"]
    if figure is not None:
        figure.update_layout(template=TEMPLATE, title=f"{study.study_name}: Pareto front")
    note = " ".join(dict.fromkeys(n.strip() for n in notes if n.strip()))
    return OptunaPlot("pareto", "Pareto front", figure, note)


def front_rows(study: optuna.Study, front: Sequence[StudyResult]) -> tuple[list[str], list[list[str]]]:
    """The front table: each trial's objective values, its model's test metrics, where the model came from and the
    parameters that vary."""
    trials = {t.number: t for t in study.best_trials}
    names = objective_names(study)
    header = ["trial", *names, *(label for label, _ in TEST_COLUMNS), "model", "parameters that vary"]
    rows = []
    for result in front:
        test = result.evaluation.test
        params = varying_params(trials[result.best_trial]) if result.best_trial in trials else result.params
        rows.append(
            [
                f"#{result.best_trial}",
                *(value_text(v) for v in result.values or []),
                *(metric_cell(test, key) for _, key in TEST_COLUMNS),
                "saved weights" if result.evaluation.source == "weights" else "retrained",
                " ".join(f"{k}={v}" for k, v in params.items()),
            ]
        )
    return header, rows


def front_section(study: optuna.Study, front: Sequence[StudyResult], figs: Callable[[str, go.Figure], str]) -> str:
    """The study page's section on its Pareto front, in place of a single best configuration's."""
    names = objective_names(study)
    stats = front[0].stats
    parts = [
        f"<h2>Pareto front: {len(front)} trial{'s' if len(front) != 1 else ''}</h2>",
        f'<p class="muted">A multi-objective study ({escape(", ".join(names))}) has no single best trial: these are '
        "the complete trials no other trial beats in every objective, best first in "
        f"{escape(names[0])}. Each model is evaluated on the test split as a best trial's is (rebuilt from its "
        f"saved weights, else retrained with its stored seed); search: {stats.n_finished} finished trials, "
        f"{format_duration(stats.wall_time_sum_s)} of trial time.</p>",
    ]
    plot = pareto_figure(study)
    if plot.figure is None:
        parts.append(f'<p class="note">Pareto-front plot not drawn: {escape(plot.note or "no data")}</p>')
    else:
        if plot.note:
            parts.append(f'<p class="note">Optuna: {escape(plot.note)}</p>')
        parts.append(figs(plot.key, plot.figure))
    parts.append(table_html(*front_rows(study, front)))
    return "\n".join(parts)
