"""Population-based training's settings and schedule (`docs/pbt.md`): the checks of a PBT study's configuration and
of its stored settings, the sampler it runs with (`hpo_astro.samplers.pbt.PbtSampler`), how a member's checkpoint
continues with new hyperparameters, and a member retrained from its recorded schedule. What a trial does is
`hpo_astro.study.pbt.PbtObjective`; the lineage read back and drawn is `hpo_astro.study.pbt_lineage`.

Budget: a PBT study of `n_trials` trials is `n_trials / population` generations of `population` members, each trial
one member's segment of `ready` epochs: `n_trials * ready` member-epochs in all.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from optuna.trial import FrozenTrial

from hpo_astro.core.epochs import Callback, EpochLoop
from hpo_astro.core.hyperparameters import DEFAULT_PARAMS, PAPER_SPACE, coerce_value
from hpo_astro.core.space import Range
from hpo_astro.core.train import TrainFn, TrainResult
from hpo_astro.core.train import train as train_configuration
from hpo_astro.errors import UserError
from hpo_astro.samplers.pbt import MUTABLE, PbtSampler
from hpo_astro.store.record import TRAINED, RunSettings, internal_attr
from hpo_astro.store.storage import DEFAULT_GRACE
from hpo_astro.study.waiting import waiting_hook

PBT = "pbt"  # the strategy's name
DEFAULT_READY = 2  # epochs per segment: a member's training between two exploit-and-explore steps
DEFAULT_QUANTILE = 0.25
MAX_SEED = 2**32 - 1
# The study's PBT settings, {"population", "ready", "quantile"}: a study user attribute (the dashboard shows it),
# written when the study is created, before its first trial, and compared when a run resumes it
# (`hpo_astro.study.pbt.settle_pbt`, `record_settings`).
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


def check_trainer(cfg: Any, trial_kind: str) -> None:
    """Refuse, before the store is opened, a PBT run whose trainer writes no checkpoints (a table's replay)."""
    if cfg.strategy == PBT and trial_kind != TRAINED:
        raise UserError("strategy pbt needs training: a table's replay has no checkpoints to continue")


def stored_settings(value: Any, study_name: str) -> dict[str, Any] | None:
    """A study's stored `pbt` attribute, checked (None: the study has none yet); anything that is not
    {"population": >= 2, "ready": >= 1, "quantile": 0..0.5} is a one-line refusal (a tampered store)."""
    if value is None:
        return None

    def whole(v: Any, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    quantile = value.get("quantile") if isinstance(value, dict) else None
    if not (
        isinstance(value, dict)
        and set(value) == {"population", "ready", "quantile"}
        and whole(value["population"], 2)
        and whole(value["ready"], 1)
        and isinstance(quantile, int | float)
        and not isinstance(quantile, bool)
        and 0 <= quantile <= 0.5
    ):
        raise UserError(
            f"study {study_name!r} in the store has a broken {SETTINGS_ATTR!r} attribute (expected population >= 2, "
            f"ready >= 1 and quantile 0..0.5): {str(value)[:80]}; use another --study name"
        )
    return dict(value)


def _smallest_t_max(cfg: Any) -> int:
    dim = cfg.space.get("t_max")
    if dim is None:
        return int((cfg.baseline or {}).get("t_max", DEFAULT_PARAMS["t_max"]))
    return int(dim.low if isinstance(dim, Range) else min(dim))


def pbt_sampler(cfg: RunSettings) -> PbtSampler:
    """The strategy's sampler (`hpo_astro.study.strategies.STRATEGIES`), built once with the study's seed."""
    settings = pbt_settings(cfg)
    return PbtSampler(
        cfg.space.distributions(),
        population=settings["population"],
        quantile=settings["quantile"],
        mutable=MUTABLE,
        seed=cfg.seed,
        n_slots=cfg.n_trials,
        # a waiting trial is alive (its worker recorded), and does not wait for a trial whose process died
        on_wait=waiting_hook(getattr(cfg, "grace_period", DEFAULT_GRACE)),
        ready=settings["ready"],
        invalid=UserError,  # a tampered store: one line
    )


# --- a member's checkpoint, continued -----------------------------------------------------------------------------


def continue_with(checkpoint: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """`checkpoint` (a `TrainState.checkpoint()`) made ready to continue with `params`: the optimiser's learning rate
    and weight decay become the new ones, the cosine schedule keeps its position (epoch t of t_max) with the new
    base learning rate (lr_t = new_lr * (1 + cos(pi t / t_max)) / 2), the model's dropout is the new rate (the trainer
    builds the model from `params`); weights, optimiser moments, history and random states are the checkpoint's.
    Unchanged parameters leave the checkpoint as it is; a change of any other hyperparameter than `MUTABLE` (the
    architecture, ...) is refused with ValueError: the checkpoint's model would not be that configuration's."""
    old = dict(checkpoint["params"])
    if old == dict(params):
        return dict(checkpoint)
    changed = fixed_changes(old, params)
    if changed:
        raise ValueError(f"a checkpoint continues with new {', '.join(MUTABLE)} only; these differ: {changed}")
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


def fixed_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The hyperparameters other than `MUTABLE` whose values differ between two configurations."""
    return sorted(k for k in set(old) | set(new) if k not in MUTABLE and old.get(k) != new.get(k))


def checkpoint_bytes(checkpoint: Mapping[str, Any]) -> bytes:
    """A checkpoint as the bytes a checkpoint file holds (a copy: training may go on changing the tensors)."""
    with io.BytesIO() as fh:
        torch.save(dict(checkpoint), fh)
        return fh.getvalue()


def load_state(data: bytes) -> dict[str, Any]:
    """The checkpoint in `data` (`checkpoint_bytes`'s), on the CPU, read with `weights_only=True`."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class SegmentEnd:
    """Trainer callback: the checkpoint at the end of a segment (epoch `end`, or an earlier stop, e.g. divergence),
    as bytes; `on_saved` is called with them."""

    def __init__(self, end: int, on_saved: Callable[[bytes], None] | None = None) -> None:
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
    """A member's schedule up to the end of this trial's segment: [{"epochs": [start, end], "params": {...}}]; []
    for a trial that records none (not a PBT trial). A schedule that is not one (`checked_schedule`) is refused."""
    value = internal_attr(trial, SCHEDULE_ATTR)
    return [] if value is None else checked_schedule(value, f"trial {trial.number}'s attribute {SCHEDULE_ATTR}")


def checked_schedule(value: Any, where: str = "the schedule") -> list[dict[str, Any]]:
    """A schedule checked, or a one-line UserError naming `where`: a non-empty list of segments {"epochs": [start,
    end], "params": {...}}, the epochs contiguous from 0, the params hyperparameters of the space (each a value it
    can mean), and only the mutable ones changing from one segment to the next."""
    if not isinstance(value, list) or not value:
        raise UserError(f"{where} is not a list of segments: {str(value)[:80]}")
    schedule, at = [], 0
    for i, segment in enumerate(value):
        epochs = segment.get("epochs") if isinstance(segment, dict) else None
        params = segment.get("params") if isinstance(segment, dict) else None
        if not (
            isinstance(epochs, list)
            and len(epochs) == 2
            and all(isinstance(e, int) and not isinstance(e, bool) for e in epochs)
            and epochs[0] == at < epochs[1]
            and isinstance(params, dict)
        ):
            raise UserError(
                f'{where}: segment {i} is not {{"epochs": [{at}, end > {at}], "params": {{...}}}}: {str(segment)[:80]}'
            )
        unknown = sorted(str(k) for k in params if k not in PAPER_SPACE)
        if unknown:
            raise UserError(f"{where}: segment {i} has unknown hyperparameters {unknown}")
        try:
            checked = {k: coerce_value(k, v) for k, v in params.items()}
        except UserError as exc:
            raise UserError(f"{where}: segment {i}: {exc}") from None
        if schedule:
            changed = fixed_changes(schedule[-1]["params"], checked)
            if changed:
                raise UserError(f"{where}: segment {i} changes {changed}, which never change along a lineage")
        schedule.append({"epochs": list(epochs), "params": checked})
        at = epochs[1]
    return schedule


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
    each segment continues the last one's end checkpoint with its own hyperparameters, as the study did. A schedule
    that is not one is refused in one line (`checked_schedule`)."""
    resume: dict[str, Any] | None = None
    result: TrainResult | None = None
    for segment in checked_schedule(list(schedule)):
        params = dict(segment["params"])
        if resume is not None:
            resume = continue_with(resume, params)
        end = SegmentEnd(int(segment["epochs"][1]))
        result = train_segment(train, params, data, [end], end.end, seed, resume, device, capture)
        resume = load_state(end.saved) if end.saved is not None else resume
    assert result is not None  # checked_schedule refuses an empty schedule
    return result
