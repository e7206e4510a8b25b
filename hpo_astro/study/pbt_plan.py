"""Population-based training's settings, stored lineage and schedule (`docs/pbt.md`): the checks of a PBT study's
configuration, the sampler it runs with (`hpo_astro.samplers.pbt.PbtSampler`), how a member's checkpoint continues
with new hyperparameters, a member retrained from its recorded schedule, and the lineage as a Plotly figure. What a
trial does is `hpo_astro.study.pbt.PbtObjective`.

Budget: a PBT study of `n_trials` trials is `n_trials / population` generations of `population` members, each trial
one member's segment of `ready` epochs: `n_trials * ready` member-epochs in all.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from hpo_astro.core.epochs import Callback, EpochLoop
from hpo_astro.core.hyperparameters import DEFAULT_PARAMS
from hpo_astro.core.space import Range
from hpo_astro.core.train import TrainFn, TrainResult
from hpo_astro.core.train import train as train_configuration
from hpo_astro.errors import UserError
from hpo_astro.samplers.pbt import MEMBER_KEY, MUTABLE, PbtSampler, segment_score
from hpo_astro.store.record import N_TRIALS_KEY, RunSettings, internal_attr
from hpo_astro.store.recovery import fail_dead_trials
from hpo_astro.store.storage import DEFAULT_GRACE

PBT = "pbt"  # the strategy's name
DEFAULT_READY = 2  # epochs per segment: a member's training between two exploit-and-explore steps
DEFAULT_QUANTILE = 0.25
MAX_SEED = 2**32 - 1
# The study's PBT settings, {"population", "ready", "quantile"}: a study user attribute (the dashboard shows it),
# compared when a run resumes the study (`hpo_astro.study.pbt.settle_pbt`).
SETTINGS_ATTR = "pbt"
# Trial user attributes (the dashboard shows them): the member's generation and index, the trial whose checkpoint
# it continued (null in generation 0), that trial again when it was exploited from another member (else null), and
# its schedule so far, [{"epochs": [start, end], <mutable hyperparameters>}, ...] (the whole configurations are the
# internal attribute of the same name: what `retrain` reads).
GENERATION_ATTR, MEMBER_ATTR, PARENT_ATTR = "pbt_generation", "pbt_member", "pbt_parent"
EXPLOITED_ATTR, SCHEDULE_ATTR = "pbt_exploited_from", "pbt_schedule"
# Internal attribute: the artifact id of the checkpoint at the end of the trial's segment, which the next
# generation continues (an artifact of the trial; it stays after the trial ends).
SEGMENT_CHECKPOINT_ATTR = "pbt_checkpoint"


def pbt_settings(cfg: Any) -> dict[str, Any]:
    """The PBT settings of a configuration (`StudyConfig`), defaults where it sets none."""
    ready, quantile = getattr(cfg, "ready", None), getattr(cfg, "pbt_quantile", None)
    return {
        "population": cfg.population_size,
        "ready": DEFAULT_READY if ready is None else ready,
        "quantile": DEFAULT_QUANTILE if quantile is None else quantile,
    }


def check_pbt(cfg: Any) -> None:
    """Refuse, in one line, PBT settings that cannot run (or PBT settings given to another strategy)."""
    if cfg.strategy != PBT:
        for key in ("ready", "pbt_quantile"):
            if getattr(cfg, key, None) is not None:
                raise UserError(f"{key} applies to the pbt strategy, not {cfg.strategy!r}")
        return
    settings = pbt_settings(cfg)
    population, ready, quantile = settings["population"], settings["ready"], settings["quantile"]
    if ready < 1:
        raise UserError(f"ready (epochs per PBT segment) must be at least 1, got {ready}")
    if not 0 <= quantile <= 0.5:
        raise UserError(f"pbt_quantile must be between 0 and 0.5, got {quantile}")
    if cfg.n_trials % population:
        raise UserError(
            f"pbt: n_trials ({cfg.n_trials}) must be a multiple of population_size ({population}): one trial per "
            "member and generation"
        )
    if cfg.eval_seeds != 1 or cfg.folds != 1:
        raise UserError("pbt trains each member once on the fixed split: eval_seeds and folds must be 1")
    if getattr(cfg, "multi_objective", False):
        raise UserError("pbt ranks its members by one objective: give a single --objective")
    if cfg.pruner not in (None, "none"):
        raise UserError(f"pbt trains every member for every generation: --pruner must be none, got {cfg.pruner!r}")
    if cfg.seed + population - 1 > MAX_SEED:
        raise UserError(f"seed + population_size - 1 must be at most {MAX_SEED}: member m trains with seed + m")
    epochs = cfg.n_trials // population * ready
    if cfg.max_epochs is not None and cfg.max_epochs < epochs:
        raise UserError(f"pbt: a member trains {epochs} epochs (generations x ready); max_epochs {cfg.max_epochs}")
    t_max = _smallest_t_max(cfg)
    if t_max < epochs:
        raise UserError(
            f"pbt: a member trains {epochs} epochs (generations x ready) but t_max can be {t_max}, which ends "
            "training (and the cosine schedule) there; give t_max values of at least that"
        )


def _smallest_t_max(cfg: Any) -> int:
    dim = cfg.space.get("t_max")
    if dim is None:
        return int((cfg.baseline or {}).get("t_max", DEFAULT_PARAMS["t_max"]))
    return int(dim.low if isinstance(dim, Range) else min(dim))


def pbt_sampler(cfg: RunSettings) -> PbtSampler:
    """The strategy's sampler (`hpo_astro.study.strategies.STRATEGIES`), built once with the study's seed."""
    settings = pbt_settings(cfg)
    grace = getattr(cfg, "grace_period", DEFAULT_GRACE)

    def recover(study: optuna.Study) -> None:  # a waiting trial must not wait for a trial whose process died
        if not isinstance(study._storage, optuna.storages.InMemoryStorage):
            fail_dead_trials(study, grace)

    return PbtSampler(
        cfg.space.distributions(),
        population=settings["population"],
        quantile=settings["quantile"],
        mutable=MUTABLE,
        seed=cfg.seed,
        n_slots=cfg.n_trials,
        on_wait=recover,
    )


# --- a member's checkpoint, continued -----------------------------------------------------------------------------


def continue_with(checkpoint: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """`checkpoint` (a `TrainState.checkpoint()`) made ready to continue with `params`: the optimiser's learning rate
    and weight decay become the new ones, the cosine schedule keeps its position (epoch t of t_max) with the new
    base learning rate (lr_t = new_lr * (1 + cos(pi t / t_max)) / 2), the model's dropout is the new rate (the trainer
    builds the model from `params`); weights, optimiser moments, history and random states are the checkpoint's.
    Unchanged parameters leave the checkpoint as it is."""
    old = dict(checkpoint["params"])
    if old == dict(params):
        return dict(checkpoint)
    lr, ratio = float(params["lr"]), float(params["lr"]) / float(old["lr"])
    groups = []
    for group in checkpoint["optimizer"]["param_groups"]:
        group = {**group, "lr": float(group["lr"]) * ratio, "weight_decay": float(params["weight_decay"])}
        if "initial_lr" in group:
            group["initial_lr"] = lr
        groups.append(group)
    scheduler = dict(checkpoint["scheduler"])
    if "base_lrs" in scheduler:
        scheduler["base_lrs"] = [lr for _ in scheduler["base_lrs"]]
    if "_last_lr" in scheduler:
        scheduler["_last_lr"] = [g["lr"] for g in groups]
    return {
        **checkpoint,
        "params": dict(params),
        "optimizer": {**checkpoint["optimizer"], "param_groups": groups},
        "scheduler": scheduler,
    }


def checkpoint_bytes(checkpoint: Mapping[str, Any]) -> bytes:
    """A checkpoint as the bytes a checkpoint file holds (a copy: training may go on changing the tensors)."""
    with io.BytesIO() as fh:
        torch.save(dict(checkpoint), fh)
        return fh.getvalue()


def load_state(data: bytes) -> dict[str, Any]:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class SegmentEnd:
    """Trainer callback: the checkpoint at the end of a segment (epoch `end`, or an earlier stop, e.g. divergence),
    as bytes; `on_saved` is called with them."""

    def __init__(self, end: int, on_saved: Any = None) -> None:
        self.end, self.on_saved = end, on_saved
        self.saved: bytes | None = None

    def on_epoch_end(self, state: EpochLoop) -> None:
        if state.epoch >= self.end or state.stop_reason is not None:
            self.saved = checkpoint_bytes(state.checkpoint())
            if self.on_saved is not None:
                self.on_saved(self.saved)


def train_segment(
    train: TrainFn,
    params: Mapping[str, Any],
    data: Any,
    callbacks: Iterable[Callback],
    end: int,
    seed: int,
    resume: Mapping[str, Any] | None,
    device: str = "auto",
    capture: bool | None = None,
) -> TrainResult:
    """Train one segment, to epoch `end`: hpo-astro's trainer without early stopping (a member trains exactly its
    segments), any other trainer as it is."""
    kwargs: dict[str, Any] = {"early_stopping": False} if train is train_configuration else {}
    return train(
        params, data, callbacks=list(callbacks), max_epochs=end, seed=seed, resume=resume, device=device,
        capture=capture, **kwargs,
    )  # fmt: skip


# --- the lineage, read back -------------------------------------------------------------------------------------


def schedule_of(trial: FrozenTrial) -> list[dict[str, Any]]:
    """A member's schedule up to the end of this trial's segment: [{"epochs": [start, end], "params": {...}}]."""
    value = internal_attr(trial, SCHEDULE_ATTR)
    return [dict(s) for s in value if isinstance(s, dict)] if isinstance(value, list) else []


def shown_schedule(schedule: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The schedule as the dashboard shows it: the epochs and the mutable hyperparameters of each segment."""
    return [{"epochs": s["epochs"], **{k: s["params"][k] for k in MUTABLE if k in s["params"]}} for s in schedule]


def retrain(
    schedule: Sequence[Mapping[str, Any]],
    data: Any,
    seed: int,
    train: TrainFn = train_configuration,
    device: str = "auto",
    capture: bool | None = None,
) -> TrainResult:
    """A member trained again from its schedule (`schedule_of`, with the seed its trial recorded, `train_seed`):
    each segment continues the last one's end checkpoint with its own hyperparameters, as the study did."""
    resume: dict[str, Any] | None = None
    result: TrainResult | None = None
    for segment in schedule:
        params = dict(segment["params"])
        if resume is not None:
            resume = continue_with(resume, params)
        end = SegmentEnd(int(segment["epochs"][1]))
        result = train_segment(train, params, data, [end], end.end, seed, resume, device, capture)
        resume = load_state(end.saved) if end.saved is not None else resume
    if result is None:
        raise ValueError("an empty schedule")
    return result


def lineage(study: optuna.Study) -> list[dict[str, Any]]:
    """The complete members of a PBT study, by generation and member: trial number, generation, member, parent,
    exploited_from, founder, the score it was ranked by and its value."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        member = t.system_attrs.get(MEMBER_KEY)
        if isinstance(member, dict):
            rows.append({"trial": t.number, **member, "score": segment_score(t), "value": t.value})
    return sorted(rows, key=lambda r: (r["generation"], r["member"]))


def lineage_figure(study: optuna.Study) -> Any:
    """A PBT study's lineage as a Plotly figure: each member's objective at the end of each generation's segment
    (the score the next generation ranks), one line per member; a dashed line from a parent to each member that
    exploited it (copied its checkpoint and perturbed its hyperparameters)."""
    import plotly.graph_objects as go

    rows = lineage(study)
    settings = study.user_attrs.get(SETTINGS_ATTR)
    ready = settings.get("ready", 1) if isinstance(settings, dict) else 1
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
