"""A PBT study's lineage read back (`docs/pbt.md`): its members by generation, the lineage as a Plotly figure, and
its budget in member-epochs (for `status`). The settings and schedules are `hpo_astro.study.pbt_plan`'s."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo_astro.samplers.pbt import MEMBER_KEY, segment_score
from hpo_astro.store.record import N_TRIALS_KEY
from hpo_astro.study.pbt_plan import SETTINGS_ATTR


def _ready(study: optuna.Study) -> int | None:
    settings = study.user_attrs.get(SETTINGS_ATTR)
    ready = settings.get("ready") if isinstance(settings, dict) else None
    return ready if isinstance(ready, int) and not isinstance(ready, bool) and ready > 0 else None


def lineage(study: optuna.Study) -> list[dict[str, Any]]:
    """The complete members of a PBT study, by generation and member: trial number, generation, member, parent,
    exploited_from, founder, the score it was ranked by (NaN: its segment did not train to its end, e.g. diverged)
    and its value (the best epoch of the member's run so far: after an exploit, possibly an epoch its parent's
    lineage trained). A slot with two complete trials shows the earliest, the one the next generation ranked."""
    rows: dict[tuple, dict[str, Any]] = {}
    ready = _ready(study)
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        member = t.system_attrs.get(MEMBER_KEY)
        if isinstance(member, dict) and all(isinstance(member.get(k), int) for k in ("generation", "member")):
            end = (member["generation"] + 1) * ready if ready else None
            row = {"trial": t.number, **member, "score": segment_score(t, end), "value": t.value}
            rows.setdefault((member["generation"], member["member"]), row)
    return [rows[k] for k in sorted(rows)]


def lineage_figure(study: optuna.Study) -> Any:
    """A PBT study's lineage as a Plotly figure: each member's objective at the end of each generation's segment
    (the score the next generation ranks), one line per member; a dashed line from a parent to each member that
    exploited it (copied its checkpoint and perturbed its hyperparameters)."""
    import plotly.graph_objects as go

    rows = lineage(study)
    ready = _ready(study) or 1
    fig = go.Figure()
    by_trial = {r["trial"]: r for r in rows}
    for member in sorted({r["member"] for r in rows}):
        mine = [r for r in rows if r["member"] == member]
        fig.add_trace(
            go.Scatter(
                x=[(r["generation"] + 1) * ready for r in mine],
                y=[r["score"] for r in mine],
                mode="lines+markers",
                name=f"member {member}",
                customdata=[[r["trial"], r["parent"]] for r in mine],
                hovertemplate="trial %{customdata[0]} (parent %{customdata[1]})<br>epoch %{x}: %{y:.4g}<extra></extra>",
            )
        )
    xs: list[float | None] = []
    ys: list[float | None] = []
    for r in rows:
        parent = by_trial.get(r["exploited_from"]) if r["exploited_from"] is not None else None
        if parent is not None:
            xs += [(parent["generation"] + 1) * ready, (r["generation"] + 1) * ready, None]
            ys += [parent["score"], r["score"], None]
    if xs:
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="exploit", line={"dash": "dash", "color": "grey"}))
    metric = (study.metric_names or ["objective"])[0]
    fig.update_layout(
        title="PBT lineage: each member's objective at the end of its segments (dashed: exploit)",
        xaxis_title="epoch (end of segment)",
        yaxis_title=metric,
        template="plotly_white",
    )
    return fig


def budget_line(study: optuna.Study) -> str | None:
    """How a PBT study's budget reads in member-epochs (None for another study), e.g. for `status`."""
    settings = study.user_attrs.get(SETTINGS_ATTR)
    n_trials = study.user_attrs.get(N_TRIALS_KEY)
    population, ready = (settings.get(k) if isinstance(settings, dict) else None for k in ("population", "ready"))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (n_trials, population, ready)):
        return None  # not a PBT study, or one whose settings another program wrote: nothing to say
    generations = math.ceil(n_trials / population)
    return (
        f"budget {n_trials} trials = {n_trials * ready} member-epochs ({population} members x {generations} "
        f"generations x {ready} epochs)"
    )
