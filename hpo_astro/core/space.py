"""The search space as data: hyperparameter names, their allowed values, and the default configuration.

A `SearchSpace` is an ordered mapping name -> dimension. A dimension is either a tuple of values (categorical, as
in the paper: a study file's list) or a `Range` (a study file's `{low, high, log, step}`: Optuna's `suggest_int` /
`suggest_float`, which TPE, GP and CMA-ES model as ordered numbers). A dimension with one value is *fixed*: it is
part of every configuration but not an Optuna parameter (`fixed`, `distributions`). The space validates user-given
values and parses `NAME=VALUE` strings from the command line.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from hpo_astro.core.hyperparameters import (
    DEFAULT_PARAMS,
    INT_RANGES,
    PAPER_SPACE,
    Value,
    coerce_value,
    same_value,
    value_key,
)
from hpo_astro.errors import UserError

# The most values a range may enumerate for a strategy that lists them (grid, ablation, a table).
MAX_ENUMERATED = 100_000
_RANGE_KEYS = {"low", "high", "log", "step"}


@dataclass(frozen=True)
class Range:
    """Numbers from `low` to `high`, both included: integers (`integer`) or floats, log-scaled or on a `step` grid
    from `low`, as Optuna's `IntDistribution` / `FloatDistribution` mean them."""

    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = None  # None: every number (floats), 1 (integers)
    integer: bool = False

    @classmethod
    def parse(cls, name: str, spec: Mapping[str, Any]) -> Range:
        """A range from a study file's or a record's `{low, high, log, step}`; anything else is one UserError."""
        if isinstance(PAPER_SPACE[name][0], str):
            raise UserError(f"{name} is a choice of names ({', '.join(map(str, PAPER_SPACE[name]))}): give a list")
        unknown = sorted(set(spec) - _RANGE_KEYS)
        if unknown or "low" not in spec or "high" not in spec:
            raise UserError(f"range of {name!r} takes low, high and optionally log, step; got {dict(spec)!r}")
        integer = name in INT_RANGES
        low, high = coerce_value(name, spec["low"]), coerce_value(name, spec["high"])
        log, step = spec.get("log", False), spec.get("step")
        if not isinstance(log, bool):
            raise UserError(f"log of {name!r} must be true or false, got {log!r}")
        if low > high:
            raise UserError(f"range of {name!r}: low {low} is above high {high}")
        if log and low <= 0:
            raise UserError(f"range of {name!r}: a log range needs low > 0, got {low}")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, int | float) or not math.isfinite(step) or step <= 0:
                raise UserError(f"step of {name!r} must be a number above 0, got {step!r}")
            if integer and step != int(step):
                raise UserError(f"step of {name!r} must be a whole number, got {step!r}")
            if log and (step != 1 or not integer):  # Optuna's distributions refuse log with a step
                raise UserError(f"range of {name!r}: log and step cannot be combined (Optuna samples one or the other)")
            step = int(step) if integer else float(step)
            steps = (high - low) / step
            if abs(steps - round(steps)) > 1e-9 * max(1.0, steps):  # Optuna would lower `high` to the grid, quietly
                top = low + math.floor(steps + 1e-9) * step
                raise UserError(
                    f"range of {name!r}: high {high} is not low {low} plus a whole number of steps {step}; "
                    f"use high = {float(f'{top:.12g}'):g} or {float(f'{top + step:.12g}'):g}"
                )
        if integer:
            low, high = int(low), int(high)
        else:
            low, high = float(low), float(high)
        return cls(low, high, log, None if integer and step == 1 else step, integer)

    @property
    def fixed(self) -> bool:
        return self.low == self.high

    def values(self) -> tuple[Value, ...] | None:
        """Every value, in order, when the range is finite (integers, or floats with a step) and not too long."""
        step = 1 if self.integer and self.step is None else self.step
        if step is None:
            return None
        count = math.floor((self.high - self.low) / step + 1e-9) + 1
        if count > MAX_ENUMERATED:
            return None
        if self.integer:
            return tuple(int(self.low + i * step) for i in range(count))
        return tuple(float(f"{self.low + i * step:.12g}") for i in range(count))

    def contains(self, value: int | float) -> bool:
        if not self.low <= value <= self.high:
            return value_key(value) in (value_key(self.low), value_key(self.high))
        step = self.step or (1 if self.integer else None)
        if step is None:
            return not self.integer or value == int(value)
        ratio = (value - self.low) / step
        return abs(ratio - round(ratio)) < 1e-9 * max(1.0, abs(ratio))

    def snap(self, value: int | float) -> Value:
        """`value` (inside the range) as the range spells it: on its step grid exactly as `values` lists it."""
        if self.integer:
            return int(value)
        if self.step is None:
            return float(value)
        return float(f"{self.low + round((value - self.low) / self.step) * self.step:.12g}")

    def distribution(self) -> Any:
        """Optuna's distribution of this range (an `IntDistribution` or a `FloatDistribution`)."""
        from optuna.distributions import FloatDistribution, IntDistribution

        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out

    def describe(self) -> str:
        return f"{self.low}..{self.high}" + (" (log)" if self.log else f" step {self.step}" if self.step else "")


Dimension = tuple[Value, ...] | Range


@dataclass(frozen=True)
class SearchSpace(Mapping[str, Dimension]):
    """An ordered, immutable mapping from hyperparameter name to its allowed values (a tuple) or its `Range`."""

    entries: tuple[tuple[str, Dimension], ...]
    # A study of an earlier version sampled its one-value lists as Optuna parameters: resumed, it goes on doing so
    # (its sampler's plan and its trials' parameters stay what they were). See `fixed`.
    fixed_sampled: bool = field(default=False, compare=False)

    @classmethod
    def from_dict(cls, space: Mapping[str, Any]) -> SearchSpace:
        items: list[tuple[str, Dimension]] = []
        for name, vals in space.items():
            if name not in PAPER_SPACE:
                raise UserError(f"unknown hyperparameter {name!r}; known: {', '.join(PAPER_SPACE)}")
            if isinstance(vals, Range | Mapping):  # a Range is checked as its spec is: built by hand, it may be wrong
                items.append((name, Range.parse(name, vals.to_dict() if isinstance(vals, Range) else vals)))
                continue
            if isinstance(vals, str | bytes) or not hasattr(vals, "__iter__"):
                raise UserError(f"values of {name!r} must be a list or a range {{low, high}}, got {vals!r}")
            vals = tuple(vals)
            if not vals:
                raise UserError(f"hyperparameter {name!r} has an empty list of values")
            items.append((name, tuple(coerce_value(name, v) for v in vals)))
        return cls(tuple(items))

    @classmethod
    def paper(cls) -> SearchSpace:
        return cls.from_dict(PAPER_SPACE)

    def __getitem__(self, name: str) -> Dimension:
        for key, vals in self.entries:
            if key == name:
                return vals
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def n_combinations(self) -> int | float:
        """How many configurations the space holds: `math.inf` when a range is not finite."""
        sizes = [len(values) if (values := self.values_of(name)) is not None else math.inf for name in self]
        return math.prod(sizes) if math.inf not in sizes else math.inf

    def values_of(self, name: str) -> tuple[Value, ...] | None:
        """Every value of `name` in order; None for a range that is not finite (floats without a step)."""
        return self._enumerated[name]

    @functools.cached_property
    def _enumerated(self) -> dict[str, tuple[Value, ...] | None]:  # cached: a table looks up every row with it
        return {name: dim.values() if isinstance(dim, Range) else dim for name, dim in self.entries}

    def grid(self, needed_by: str) -> dict[str, list[Value]]:
        """Every dimension as its list of values, for what must enumerate them (`needed_by`: a grid, the ablation,
        a table); a range that is not finite is refused with the reason."""
        out: dict[str, list[Value]] = {}
        for name, dim in self.entries:
            values = self.values_of(name)
            if values is None:
                assert isinstance(dim, Range)
                why = (
                    "give it a step" if dim.step is None and not dim.integer else f"more than {MAX_ENUMERATED:,} values"
                )
                raise UserError(
                    f"{needed_by} needs a finite list of values, but {name} is the range {dim.describe()}: {why}, or "
                    "a list of values"
                )
            out[name] = list(values)
        return out

    def grid_size(self, needed_by: str) -> int:
        """How many configurations `grid` lists (refused as `grid` refuses)."""
        return math.prod(len(values) for values in self.grid(needed_by).values())

    def fixed(self) -> dict[str, Value]:
        """The hyperparameters with a single value: set in every configuration, not sampled (no Optuna parameter)."""
        return dict(self._fixed)

    def distributions(self) -> dict[str, Any]:
        """Optuna's distribution of each hyperparameter that varies (`fixed` ones have none), in the space's order:
        a list is a `CategoricalDistribution`, a range an `IntDistribution` or a `FloatDistribution`."""
        return dict(self._distributions)

    @functools.cached_property
    def _fixed(self) -> dict[str, Value]:  # cached: asked for every trial (a replay's trial takes a millisecond)
        out: dict[str, Value] = {}
        if self.fixed_sampled:
            return out
        for name, dim in self.entries:
            if isinstance(dim, Range) and dim.fixed:
                out[name] = dim.low
            elif not isinstance(dim, Range) and len(dim) == 1:
                out[name] = dim[0]
        return out

    @functools.cached_property
    def _distributions(self) -> dict[str, Any]:
        from optuna.distributions import CategoricalDistribution

        return {
            name: dim.distribution() if isinstance(dim, Range) else CategoricalDistribution(list(dim))
            for name, dim in self.entries
            if name not in self._fixed
        }

    def ranges(self) -> list[str]:
        """The hyperparameters given as ranges that vary (ordered numbers to a model-based sampler)."""
        fixed = self.fixed()
        return [name for name, dim in self.entries if isinstance(dim, Range) and name not in fixed]

    def to_dict(self) -> dict[str, list[Value] | dict[str, Any]]:
        return {k: v.to_dict() if isinstance(v, Range) else list(v) for k, v in self.entries}

    def match(self, name: str, value: Any) -> Value:
        """Return the allowed value of `name` equal to `value` (a string from the CLI or a number)."""
        if name not in self:
            raise UserError(f"unknown hyperparameter {name!r}; known: {', '.join(self)}")
        allowed = self[name]
        if isinstance(allowed, Range):
            number = coerce_value(name, value)
            if allowed.contains(number):
                return allowed.snap(number)
            raise UserError(f"{name}={value} is outside the search space; allowed: {allowed.describe()}")
        for candidate in allowed:
            if same_value(candidate, value):
                return candidate
        shown = ", ".join(str(v) for v in allowed)
        raise UserError(f"{name}={value} is outside the search space; allowed: {shown}")

    def complete(self, params: Mapping[str, Any], defaults: Mapping[str, Value] = DEFAULT_PARAMS) -> dict:
        """Validate `params` and fill the unspecified ones from `defaults` (or the space's first value)."""
        out: dict[str, Value] = {}
        for name in params:
            if name not in self:
                raise UserError(f"unknown hyperparameter {name!r}; known: {', '.join(self)}")
        for name, allowed in self.entries:
            if name in params:
                out[name] = self.match(name, params[name])
            elif name in defaults and self._allows(name, defaults[name]):
                out[name] = self.match(name, defaults[name])
            else:
                out[name] = allowed.low if isinstance(allowed, Range) else allowed[0]
        return out

    def _allows(self, name: str, value: Any) -> bool:
        try:
            self.match(name, value)
        except UserError:
            return False
        return True


def parse_assignments(items: list[str] | None, space: SearchSpace | None = None) -> dict[str, Value]:
    """Parse `NAME=VALUE` strings into a validated partial configuration."""
    space = space or SearchSpace.paper()
    params: dict[str, Value] = {}
    for item in items or []:
        name, sep, raw = item.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not name or not raw:
            raise UserError(f"--param expects NAME=VALUE, got {item!r}")
        params[name] = space.match(name, raw)
    return params
