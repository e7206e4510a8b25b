"""The paper's figures as interactive Plotly figures, built from the trials in the study store.

Per study, the paper's three: (a) the improvement time series (per-trial validation accuracy and loss, running
best), (b) the distributions of validation loss and accuracy over trials, (c) the per-epoch train/val loss and
accuracy curves of all trials coloured by trial order (Viridis, as the paper: dark purple early, yellow late). Across
studies: the
running best against trial number and against cumulative trial time. Per best model: its test confusion matrix.
And Optuna's own visualisations, each with a note instead of a figure when it cannot be drawn. Epoch and trial axes
have integer ticks; where lines of several trials overlap, a legend names them (up to `LEGEND_LIMIT` trials).

A trial's validation loss and accuracy are those of its best epoch (lowest validation loss, weights restored);
running bests are over complete trials (pruned trials are drawn, marked, but never count as a best).
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from hpo_astro.errors import described
from hpo_astro.store.record import VAL_METRICS_ATTR, StudyRecord, stored_metrics, trial_history
from hpo_astro.store.trials import FINISHED, is_multi_objective, maximizes, running_best

ORDER_SCALE = "Viridis"  # trial order: dark purple (#440154) early, through blue and green, to yellow (#fde725) late
ORDER_COLOURS = "dark purple early, yellow late"  # how the figures describe ORDER_SCALE
TEMPLATE = "plotly_white"
# Trials named in a legend where their lines overlap; beyond this many a legend is a wall of names, and the colour
# bar (curves) or hovering names them.
LEGEND_LIMIT = 20


def integer_ticks(fig: go.Figure, largest: float, axis: str = "x", **selector: int) -> None:
    """Integer ticks on the x (or y) axes of `fig`, or those `selector` picks (e.g. row=2): epochs, trial numbers and
    trial counts are whole numbers, and Plotly's automatic ticks put 1.5 between 1 and 2 on a short axis. About 10
    ticks up to `largest`, at 1, 2 or 5 times a power of ten."""
    steps = (base * 10**power for power in itertools.count() for base in (1, 2, 5))
    step = next(step for step in steps if largest <= 10 * step)
    update = fig.update_xaxes if axis == "x" else fig.update_yaxes
    update(tickmode="linear", tick0=0, dtick=step, tickformat="d", **selector)


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete and pruned trials in trial order."""
    return sorted(study.get_trials(deepcopy=False, states=FINISHED), key=lambda t: t.number)


def _val(trial: FrozenTrial, name: str) -> float | None:
    value = (stored_metrics(trial, VAL_METRICS_ATTR) or {}).get(name)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def improvement_figure(study: optuna.Study) -> go.Figure:
    """(a) Per-trial validation accuracy and loss against trial number, with the running best of each."""
    trials = finished_trials(study)
    numbers = [t.number for t in trials]
    complete = [t.state == TrialState.COMPLETE for t in trials]
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=("Validation accuracy", "Validation loss"),
    )
    for row, name, maximize in ((1, "accuracy", True), (2, "loss", False)):
        values = [_val(t, name) for t in trials]
        for done, label, symbol in ((True, "complete", "circle"), (False, "pruned", "x")):
            idx = [i for i, c in enumerate(complete) if c == done and values[i] is not None]
            if idx:
                fig.add_trace(
                    go.Scatter(
                        x=[numbers[i] for i in idx],
                        y=[values[i] for i in idx],
                        mode="markers",
                        marker={"symbol": symbol, "size": 7, "color": "#1f77b4" if done else "#aaaaaa"},
                        name=f"val {name}, {label} trial",
                        legendgroup=name,
                    ),
                    row=row,
                    col=1,
                )
        best = running_best([v if c else None for v, c in zip(values, complete, strict=True)], maximize)
        fig.add_trace(
            go.Scatter(
                x=numbers,
                y=best,
                mode="lines",
                line={"shape": "hv", "color": "#d62728", "width": 2},
                name=f"running best val {name}",
                legendgroup=name,
            ),
            row=row,
            col=1,
        )
    fig.update_xaxes(title_text="trial", row=2, col=1)
    integer_ticks(fig, max(numbers, default=1))
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    fig.update_yaxes(title_text="loss", row=2, col=1)
    fig.update_layout(template=TEMPLATE, height=620, title=f"{study.study_name}: improvement time series")
    return fig


def distributions_figure(study: optuna.Study) -> go.Figure:
    """(b) Histograms of the validation loss and accuracy of all finished trials."""
    trials = finished_trials(study)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Validation loss", "Validation accuracy"))
    for col, name, color in ((1, "loss", "#ff7f0e"), (2, "accuracy", "#1f77b4")):
        values = [v for t in trials if (v := _val(t, name)) is not None]
        fig.add_trace(go.Histogram(x=values, nbinsx=30, marker_color=color, name=f"val {name}"), row=1, col=col)
        fig.update_xaxes(title_text=name, row=1, col=col)
        # Counts of trials: whole numbers. Plotly picks its own bins (at most 30, "nice" widths up to about 2.5 times
        # numpy's), so the tallest bar is bounded from numpy's 30 bins.
        tallest = int(np.histogram(values, bins=30)[0].max()) if values else 1
        integer_ticks(fig, 2.5 * tallest, axis="y", row=1, col=col)
    fig.update_yaxes(title_text="trials", row=1, col=1)
    fig.update_layout(
        template=TEMPLATE,
        height=420,
        showlegend=False,
        bargap=0.05,
        title=f"{study.study_name}: distributions over {len(trials)} finished trials",
    )
    return fig


CURVES = (("train_loss", 1, 1), ("val_loss", 1, 2), ("train_accuracy", 2, 1), ("val_accuracy", 2, 2))


def curves_figure(study: optuna.Study) -> go.Figure:
    """(c) Per-epoch train/val loss and accuracy of every finished trial, coloured by trial order. Up to
    `LEGEND_LIMIT` trials also have a legend entry (clicking one hides that trial in all four panels)."""
    trials = [t for t in finished_trials(study) if trial_history(t)]
    fig = make_subplots(
        rows=2,
        cols=2,
        shared_xaxes=True,
        vertical_spacing=0.1,
        subplot_titles=("Train loss", "Validation loss", "Train accuracy", "Validation accuracy"),
    )
    n = len(trials)
    colors = sample_colorscale(ORDER_SCALE, [i / max(n - 1, 1) for i in range(n)]) if n else []
    legend = n <= LEGEND_LIMIT
    last_epoch = 1
    for trial, color in zip(trials, colors, strict=True):
        history = trial_history(trial)
        epochs = [h["epoch"] for h in history]
        last_epoch = max(last_epoch, *epochs)
        for key, row, col in CURVES:
            fig.add_trace(
                go.Scatter(
                    x=epochs,
                    y=[h.get(key) for h in history],
                    mode="lines",
                    line={"color": color, "width": 1},
                    opacity=0.8,
                    name=f"trial {trial.number}",
                    legendgroup=str(trial.number),
                    showlegend=legend and (row, col) == (1, 1),  # one entry per trial, for all four panels
                    hovertemplate=f"trial {trial.number}<br>epoch %{{x}}<br>{key} %{{y:.4f}}<extra></extra>",
                ),
                row=row,
                col=col,
            )
    if n:  # a colour bar for trial order
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                showlegend=False,
                hoverinfo="skip",
                marker={
                    "colorscale": ORDER_SCALE,
                    "cmin": trials[0].number,
                    "cmax": trials[-1].number,
                    "color": [trials[0].number],
                    "showscale": True,
                    "colorbar": {"title": {"text": "trial"}},
                },
            ),
            row=1,
            col=1,
        )
    for col in (1, 2):
        fig.update_xaxes(title_text="epoch", row=2, col=col)
    integer_ticks(fig, last_epoch)
    fig.update_layout(
        template=TEMPLATE,
        height=720 if legend else 680,
        title=f"{study.study_name}: per-epoch curves of {n} trials (colour: trial order, {ORDER_COLOURS})",
        # below the panels, clear of the colour bar on the right
        legend={"orientation": "h", "yanchor": "top", "y": -0.1, "title": {"text": "trial (click to hide)"}},
    )
    return fig


@dataclass(frozen=True)
class Progress:
    """A study's running best objective value after each complete trial (a multi-objective study: its first
    objective's)."""

    study: str
    objective: str
    trials: list[int]  # trial numbers
    minutes: list[float]  # cumulative duration of all the study's trials up to this one, in minutes
    best: list[float]


def search_progress(study: optuna.Study) -> Progress:
    maximize = maximizes(study)
    elapsed, best = 0.0, None
    numbers, minutes, bests = [], [], []
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if trial.duration is not None:
            elapsed += trial.duration.total_seconds()
        if trial.state == TrialState.COMPLETE and trial.values:
            best = running_best([best, trial.values[0]], maximize)[-1]
        if best is not None and trial.state in FINISHED:
            numbers.append(trial.number)
            minutes.append(elapsed / 60)
            bests.append(best)
    record = StudyRecord.from_attrs(study.user_attrs)
    objective = record.objective if record is not None else "objective"  # a study another program made
    if is_multi_objective(study):
        objective = f"{objective.split(',')[0]}, the first of its objectives"
    return Progress(study.study_name, objective, numbers, minutes, bests)


def overlay_figure(progress: Sequence[Progress], by: str) -> go.Figure:
    """Running best of every study against trial number (`by="trial"`) or cumulative trial time (`"time"`)."""
    fig = go.Figure()
    for p in progress:
        fig.add_trace(
            go.Scatter(
                x=p.trials if by == "trial" else p.minutes,
                y=p.best,
                mode="lines+markers",
                line={"shape": "hv"},
                marker={"size": 4},
                name=f"{p.study} ({p.objective})",
            )
        )
    xlabel = "trial" if by == "trial" else "cumulative trial time (min)"
    if by == "trial":
        integer_ticks(fig, max((t for p in progress for t in p.trials), default=1))
    fig.update_layout(
        template=TEMPLATE,
        height=460,
        title=f"Running best objective value vs {'trial number' if by == 'trial' else 'cumulative trial time'}",
        xaxis_title=xlabel,
        yaxis_title="best validation objective so far",
    )
    return fig


def confusion_counts(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """[[TN, FP], [FN, TP]]: rows are the true class (bogus, real), columns the prediction."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(scores) >= threshold
    return np.array(
        [
            [int((~labels & ~predicted).sum()), int((~labels & predicted).sum())],
            [int((labels & ~predicted).sum()), int((labels & predicted).sum())],
        ]
    )


def confusion_figure(labels: np.ndarray, scores: np.ndarray, threshold: float, title: str) -> go.Figure:
    counts = confusion_counts(labels, scores, threshold)
    fig = go.Figure(
        go.Heatmap(
            z=counts,
            x=["predicted bogus", "predicted real"],
            y=["bogus (FP)", "real (TP)"],
            colorscale="Blues",
            texttemplate="%{z}",
            textfont={"size": 18},
            showscale=False,
            hovertemplate="%{y}, %{x}: %{z}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", title_text="true class")
    fig.update_layout(template=TEMPLATE, height=380, width=520, title=title)
    return fig


@dataclass(frozen=True)
class OptunaPlot:
    key: str
    title: str
    figure: go.Figure | None
    note: str  # why it could not be drawn, or Optuna's warning about it


OPTUNA_PLOTS = (
    ("history", "Optimisation history", "plot_optimization_history"),
    ("importances", "Parameter importances (PED-ANOVA)", "plot_param_importances"),  # Optuna 5's default evaluator
    ("parallel", "Parallel coordinates", "plot_parallel_coordinate"),
    ("intermediate", "Intermediate values (objective per epoch)", "plot_intermediate_values"),
)


def _epochs_legend(figure: go.Figure) -> None:
    """Optuna's intermediate-values plot: its steps are epochs, and its trials' lines overlap with no legend."""
    for trace in figure.data:
        trace.name = trace.name.replace("Trial", "trial ")
    steps = [x for trace in figure.data for x in (trace.x or ())]
    integer_ticks(figure, max(steps, default=1))
    figure.update_layout(showlegend=len(figure.data) <= LEGEND_LIMIT, xaxis_title="epoch")


@contextmanager
def _optuna_notes(notes: list[str]) -> Iterator[None]:
    """Collect Optuna's warnings (Python warnings and its logger) into `notes` instead of printing them."""

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(record.getMessage())

    logger = logging.getLogger("optuna")
    handler = Collect(level=logging.WARNING)
    logger.addHandler(handler)
    optuna.logging.disable_default_handler()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        notes.extend(str(w.message) for w in caught)
    finally:
        logger.removeHandler(handler)
        optuna.logging.enable_default_handler()


def _front_importances(study: optuna.Study) -> go.Figure:
    """One importance series per objective. Optuna's evaluator takes a target as minimised: a maximised objective is
    given negated (else it ranks what makes accuracy low); its warning saying so is silenced."""
    import optuna.visualization as vis

    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    parts = []
    for i, direction in enumerate(study.directions):
        sign = -1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            target = lambda t, i=i, sign=sign: sign * float(t.values[i])  # noqa: E731
            parts.append(vis.plot_param_importances(study, target=target, target_name=names[i]))
    return parts[0].add_traces([trace for part in parts[1:] for trace in part.data])


def optuna_plots(study: optuna.Study) -> list[OptunaPlot]:
    """Optuna's own visualisations; a plot that cannot be drawn (e.g. too few trials) becomes a note."""
    import optuna.visualization as vis

    objective = (study.metric_names or ["objective value"])[0]  # set by `run` (a study of an earlier version: none)
    # A multi-objective study: the history and parallel coordinates of its first objective (they draw one), the
    # importances for each objective; its trials report no intermediate values (Optuna does not prune them).
    multi = {"target": lambda t: float(t.values[0])} if is_multi_objective(study) else {}
    plots = []
    for key, title, name in OPTUNA_PLOTS:
        notes: list[str] = []
        figure: go.Figure | None = None
        with _optuna_notes(notes):
            try:
                if key in ("history", "parallel"):  # the objective by its name on the axis, not "Objective Value"
                    figure = getattr(vis, name)(study, target_name=objective, **multi)
                elif key == "intermediate" and multi:
                    notes.append("a multi-objective study's trials report no intermediate values; see (c)")
                elif key == "importances" and multi:
                    figure = _front_importances(study)
                else:
                    figure = getattr(vis, name)(study)
            # Optuna's refusals (ValueError, TypeError: e.g. too few trials for a plot), fANOVA's zero variance
            # (RuntimeError), a missing optional package (ImportError), a numeric edge case: a note, not a failure
            except (ValueError, TypeError, RuntimeError, ImportError, ArithmeticError) as exc:
                notes.append(described(exc))
        if figure is not None and not figure.data:
            figure = None
            notes.append("nothing to draw")
        if figure is not None:
            figure.update_layout(template=TEMPLATE, title=f"{study.study_name}: {title}")
            if key == "history":
                integer_ticks(figure, max(len(study.trials) - 1, 1))
            if key == "intermediate":
                _epochs_legend(figure)
                figure.update_layout(yaxis_title=f"{objective} per epoch")
        plots.append(OptunaPlot(key, title, figure, " ".join(dict.fromkeys(n.strip() for n in notes if n.strip()))))
    return plots
