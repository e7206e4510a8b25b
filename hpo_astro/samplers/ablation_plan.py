"""The AblationSampler's plan as it is kept in the store: the trial system attribute keys, the values a plan may
hold, how a trial's choice of slot is described, and the small rules the sampler applies to trials (Optuna and
NumPy only, like the sampler)."""

from __future__ import annotations

import datetime
import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

SLOT_KEY = "ablation:slot"
PLAN_KEY = "ablation:plan"  # (hyperparameter names, values, baseline, greedy): identifies the plan
CONFIG_KEY = "ablation:config"
EXHAUSTED_KEY = "ablation:exhausted"  # the trial got no slot: it evaluates nothing
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HOLDING = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
PLAN_VALUE_TYPES = (type(None), bool, int, float, str)  # what a JSON store gives back unchanged

PlanValue = None | bool | int | float | str


class Choice(NamedTuple):
    slot: int | None  # None: no slot for this trial
    lost: bool  # the slot is re-evaluated: its trials are presumed lost
    blockers: list[FrozenTrial]  # unfinished trials standing in the way when `slot` is None
    can_wait: bool  # greedy: the blockers are earlier sweeps, which may finish soon


def value_in(name: str, value: PlanValue, distribution: BaseDistribution) -> Any:
    """`value` in the distribution's own type, or ValueError when the distribution does not contain it."""
    try:
        internal = distribution.to_internal_repr(value)
        # BaseDistribution has no public membership test; Optuna's own samplers use _contains too.
        contained = distribution._contains(internal)
    except ValueError:  # e.g. a string for a float range, a value not among a categorical's choices
        contained = False
    if not contained:
        raise ValueError(
            f"AblationSampler planned {name}={value!r}, which the objective's {distribution} does not contain; "
            f"suggest {name!r} with a distribution containing the plan's values"
        )
    return distribution.to_external_repr(internal)


def plan_value(name: str, value: Any) -> PlanValue:
    """A value that survives the store's JSON round trip unchanged (NumPy scalars become Python ones)."""
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, PLAN_VALUE_TYPES):
        raise TypeError(f"hyperparameter {name!r}: value {value!r} is not None, bool, int, float or str")
    return value


def same(a: Any, b: Any) -> bool:
    """Equality of plans and values where NaN equals NaN (a NaN read back from a JSON store is a new object)."""
    if a == b:
        return True
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)


def trial_numbers(trials: Sequence[FrozenTrial]) -> list[int]:
    return sorted(t.number for t in trials)


def by_state(trials: Sequence[FrozenTrial]) -> str:
    """E.g. "running trial 3" or "running trials [3, 5], waiting trial 8"."""
    parts = []
    for state in (TrialState.RUNNING, TrialState.WAITING):
        numbers = trial_numbers([t for t in trials if t.state == state])
        if numbers:
            label = state.name.lower()
            parts.append(f"{label} trial {numbers[0]}" if len(numbers) == 1 else f"{label} trials {numbers}")
    return ", ".join(parts)


def fail_stale_trials(study: optuna.Study) -> None:
    """Let Optuna fail the running trials whose heartbeat stopped (a no-op without a heartbeat). Hyperband's bracket
    view of the study (what samplers get with HyperbandPruner) wraps the study itself, which failure callbacks need."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(getattr(study, "_study", study))


def all_running_since(held: Sequence[FrozenTrial], now: datetime.datetime, seconds: float) -> bool:
    """Every trial in `held` is running and started at least `seconds` before `now`."""
    return all(
        t.state == TrialState.RUNNING
        and t.datetime_start is not None
        and (now - t.datetime_start).total_seconds() >= seconds
        for t in held
    )


def check_directions(greedy: bool, n_objectives: int) -> None:
    """Greedy adoption needs one objective: the best value of a sweep is undefined with several."""
    if greedy and n_objectives > 1:
        raise ValueError(
            f"AblationSampler: greedy=True needs a single-objective study (the best value of a sweep is "
            f"undefined with {n_objectives} objectives); use greedy=False"
        )


def finished_slots(trials: Sequence[FrozenTrial], plan_id: Any) -> set[int]:
    """The slots of plan `plan_id` that a complete or pruned trial holds."""
    return {
        t.system_attrs[SLOT_KEY]
        for t in trials
        if t.state in FINISHED and SLOT_KEY in t.system_attrs and same(t.system_attrs.get(PLAN_KEY), plan_id)
    }
