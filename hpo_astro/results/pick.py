"""A rule that picks one trial of a study (`export --pick`): the point of a multi-objective study's Pareto front a
user deploys, or a constrained best of any study.

A rule is clauses joined by commas, each either

* `best:NAME` — the trial with the best value of the objective NAME (at most one; default: the study's first
  objective), or
* `NAME<VALUE`, `NAME<=VALUE`, `NAME>VALUE`, `NAME>=VALUE` — a bound on the objective NAME. VALUE may carry a unit:
  `us`/`µs`, `ms`, `s` for latency (stored in µs), `k`, `M`, `G` for params, macs and flops, `%` for a metric.

The trials that meet every bound are the candidates; among those no other candidate dominates, the one with the best
value of the `best:` objective is taken (a tie: the earlier trial). `latency<50us,best:accuracy` is the most accurate
model that scores a cutout in under 50 µs.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo_astro.errors import UserError
from hpo_astro.study.objectives import COST_OBJECTIVES, OBJECTIVES
from hpo_astro.study.pareto import on_front

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
# NAME, or an operating point with its stated rate as the study names it (`fpr_at_fnr@2%<0.3`)
_CLAUSE = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_]*(?:@[0-9.eE+-]+%?)?)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*([a-zA-Zµ%]*)\s*$"
)
_TIME_UNITS = {"": 1.0, "us": 1.0, "µs": 1.0, "ms": 1e3, "s": 1e6}  # latency is stored in microseconds
_COUNT_UNITS = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}
_METRIC_UNITS = {"": 1.0, "%": 0.01}


@dataclass(frozen=True)
class Bound:
    objective: str
    op: str
    value: float

    def holds(self, x: float) -> bool:
        return _OPERATORS[self.op](x, self.value)

    def __str__(self) -> str:
        unit = " µs" if self.objective == "latency" else ""
        return f"{self.objective} {self.op} {self.value:g}{unit}"


@dataclass(frozen=True)
class PickRule:
    text: str
    best: str  # the objective to optimise among the candidates
    bounds: tuple[Bound, ...]


def parse_pick(text: str, objectives: Sequence[str]) -> PickRule:
    """The rule `text` for a study of `objectives` (its names in order, an operating point with its stated rate:
    `fpr_at_fnr@2%`, which a rule may name with or without the rate); one line for anything else."""
    names = list(objectives)
    best: str | None = None
    bounds: list[Bound] = []
    clauses = [c for c in str(text).split(",")]
    if not text.strip() or any(not c.strip() for c in clauses):
        raise UserError(f"--pick takes clauses joined by commas (best:NAME, NAME<VALUE), got {text!r}")
    for clause in clauses:
        clause = clause.strip()
        if clause.startswith("best:"):
            name = _check_name(clause.removeprefix("best:").strip(), names, text)
            if best is not None:
                raise UserError(f"--pick {text!r} names two best: clauses; give one")
            best = name
            continue
        match = _CLAUSE.match(clause)
        if match is None:
            raise UserError(
                f"--pick: cannot read {clause!r}: give best:NAME or a bound such as latency<50us, params<=1M, "
                "accuracy>0.9"
            )
        given, op, number, unit = match.groups()
        name = _check_name(given, names, text)
        bounds.append(Bound(name, op, _number(number, unit, name.split("@")[0], clause)))
    return PickRule(text, best or names[0], tuple(bounds))


def _check_name(name: str, names: list[str], text: str) -> str:
    """The study's name of the objective `name` (its own, or the base name of one with a stated rate)."""
    if name in names:
        return name
    by_base = [n for n in names if n.split("@")[0] == name]
    if len(by_base) == 1:
        return by_base[0]
    known = "an unknown objective" if name.split("@")[0] not in OBJECTIVES else "not an objective of this study"
    raise UserError(f"--pick {text!r}: {name!r} is {known}; the study's objectives: {', '.join(names)}")


def _number(number: str, unit: str, name: str, clause: str) -> float:
    units = _TIME_UNITS if name == "latency" else _COUNT_UNITS if name in COST_OBJECTIVES else _METRIC_UNITS
    if unit not in units:
        allowed = ", ".join(u for u in units if u) or "none"
        raise UserError(f"--pick: {clause!r}: unit {unit!r} does not fit {name} (units: {allowed})")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise UserError(f"--pick: {clause!r}: {number!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"--pick: {clause!r}: the bound must be a finite number")
    return value


def pick_trial(study: optuna.Study, rule: PickRule, names: Sequence[str]) -> tuple[FrozenTrial, str]:
    """The trial `rule` picks among the study's complete trials, and a sentence saying how."""
    index = {name: i for i, name in enumerate(names)}
    maximize = [d == optuna.study.StudyDirection.MAXIMIZE for d in study.directions]
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values is not None and len(t.values) == len(names) and all(math.isfinite(v) for v in t.values)
    ]
    candidates = [t for t in complete if all(b.holds(t.values[index[b.objective]]) for b in rule.bounds)]
    if not candidates:
        ranges = "; ".join(_range(complete, index[b.objective], b.objective) for b in rule.bounds)
        raise UserError(
            f"no complete trial of study {study.study_name!r} meets --pick {rule.text!r}"
            + (f" ({ranges})" if ranges else "")
        )
    front = [t for t in candidates if on_front(t.values, [o.values for o in candidates], maximize)]
    i = index[rule.best]
    sign = -1.0 if maximize[i] else 1.0
    chosen = min(front, key=lambda t: (sign * t.values[i], t.number))
    where = f" of the {len(candidates)} trial(s) with {', '.join(map(str, rule.bounds))}" if rule.bounds else ""
    return chosen, f"the pick rule {rule.text!r}: the best {rule.best} ({chosen.values[i]:.6g}){where}"


def _range(trials: list[FrozenTrial], i: int, name: str) -> str:
    values = [t.values[i] for t in trials]
    return f"{name} ranges from {min(values):.6g} to {max(values):.6g}" if values else f"no {name} measured"
