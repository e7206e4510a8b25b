"""The benchmark's figures, as Plotly: anytime curves (best so far against trials or training time, with their
confidence bands), mean ranks, final values and selection optimism per strategy. `render` puts them in index.html."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.colors import qualitative

from hpo_astro.benchmark.analysis import Analysis, Curves
from hpo_astro.report.figures import TEMPLATE

COLORS = qualitative.Plotly


def _color(i: int, alpha: float | None = None) -> str:
    hex_color = COLORS[i % len(COLORS)].lstrip("#")
    r, g, b = (int(hex_color[j : j + 2], 16) for j in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})" if alpha is not None else f"rgb({r},{g},{b})"


def anytime_figure(curves: Curves, metric: str, title: str, score: bool = False) -> go.Figure:
    """Median best-so-far per strategy with its 95% band over repeats. `score`: `metric` names a study's score (the
    hypervolume of a multi-objective study), not a validation metric."""
    x = curves.budgets if curves.axis == "trials" else curves.budgets / 60.0
    fig = go.Figure()
    for i, (s, b) in enumerate(curves.bands.items()):
        fig.add_trace(
            go.Scatter(
                x=x, y=b.high, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip", legendgroup=s
            )
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=b.low,
                mode="lines",
                line={"width": 0},
                fill="tonexty",
                fillcolor=_color(i, 0.15),
                name=f"{s} 95% band",
                legendgroup=s,
                showlegend=False,
                hoverinfo="skip",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=b.median,
                mode="lines",
                line={"color": _color(i), "width": 2, "shape": "hv"},
                name=s,
                legendgroup=s,
            )
        )
    fig.update_layout(
        template=TEMPLATE,
        height=460,
        title=title,
        xaxis_title="finished trials" if curves.axis == "trials" else "cumulative training time (min)",
        yaxis_title=f"{metric} so far" if score else f"best validation {metric} so far",
    )
    return fig


def rank_figure(curves: Curves, title: str) -> go.Figure:
    x = curves.budgets if curves.axis == "trials" else curves.budgets / 60.0
    fig = go.Figure()
    for i, (s, ranks) in enumerate(curves.mean_rank.items()):
        fig.add_trace(go.Scatter(x=x, y=ranks, mode="lines", line={"color": _color(i), "shape": "hv"}, name=s))
    n = len(curves.mean_rank)
    fig.update_layout(
        template=TEMPLATE,
        height=400,
        title=title,
        xaxis_title="finished trials" if curves.axis == "trials" else "cumulative training time (min)",
        yaxis={"title": "mean rank (1 = best, at the top)", "range": [n + 0.2, 0.8]},  # a descending range: 1 on top
    )
    return fig


def final_figure(analysis: Analysis) -> go.Figure:
    """Each study's best configuration on the test split (points), with the strategy's mean and bootstrap 95% CI."""
    fig = go.Figure()
    for i, s in enumerate(analysis.summary):
        values = [r.best_test for r in analysis.studies if r.strategy == s.strategy and r.best_test is not None]
        fig.add_trace(
            go.Box(
                y=values,
                name=s.strategy,
                boxpoints="all",
                jitter=0.4,
                pointpos=0,
                marker={"color": _color(i), "size": 5},
                line={"color": _color(i, 0.5)},
                fillcolor="rgba(0,0,0,0)",
                showlegend=False,
            )
        )
        e = s.best_test
        if e.n:
            fig.add_trace(
                go.Scatter(
                    x=[s.strategy],
                    y=[e.mean],
                    mode="markers",
                    marker={"symbol": "diamond", "size": 11, "color": "black"},
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": [e.high - e.mean],
                        "arrayminus": [e.mean - e.low],
                    },
                    name="mean and 95% CI",
                    showlegend=i == 0,
                )
            )
    fig.update_layout(
        template=TEMPLATE,
        height=440,
        title=f"Test {analysis.metric} of each study's best configuration",
        yaxis_title=f"test {analysis.metric}",
    )
    return fig


def selection_figure(analysis: Analysis) -> go.Figure:
    """Validation objective of each study's best trial against its test metric; the diagonal is "no optimism"."""
    fig = go.Figure()
    points = [
        (r.best_value, r.best_test) for r in analysis.studies if r.best_value is not None and r.best_test is not None
    ]
    for i, s in enumerate(analysis.strategies):
        mine = [r for r in analysis.studies if r.strategy == s and r.best_value is not None and r.best_test is not None]
        fig.add_trace(
            go.Scatter(
                x=[r.best_value for r in mine],
                y=[r.best_test for r in mine],
                mode="markers",
                marker={"color": _color(i), "size": 7, "opacity": 0.8},
                name=s,
                text=[r.study for r in mine],
                hovertemplate="%{text}<br>validation %{x:.4f}<br>test %{y:.4f}<extra></extra>",
            )
        )
    if points:
        lo = min(min(p) for p in points)
        hi = max(max(p) for p in points)
        fig.add_trace(
            go.Scatter(
                x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot", "color": "#888"}, name="test = validation"
            )
        )
    fig.update_layout(
        template=TEMPLATE,
        height=480,
        title="Selection bias: each study's best trial, validation against test",
        xaxis_title=f"validation {analysis.metric} (what the search selected on)",
        yaxis_title=f"test {analysis.metric}",
    )
    return fig
