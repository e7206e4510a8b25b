"""A multi-objective benchmark's score: the hypervolume of each study's Pareto front, in one box shared by the whole
benchmark.

Objectives have different units (accuracy in [0, 1], parameter counts in the hundreds of thousands), so each one is
normalised to [0, 1] by the best and the worst value observed over every trial of the benchmark (all strategies, all
repeats: every study is scored in the same box), 0 the best and 1 the worst, a maximised objective thereby flipped to
a loss; an objective whose every trial has the same value normalises to 0. The hypervolume is that of the normalised
points dominated by the front and bounded by the reference point 1.1 in each objective (a common convention: the
worst trials still add some volume), so it lies in [0, 1.1 ** k] for k objectives, higher is better. The box is
recorded in benchmark.json (`Box.to_json`) so the numbers can be recomputed. Adding a strategy (or a repeat) can
widen the box and so changes every study's number: compare hypervolumes within one benchmark only.

`hpo_astro.benchmark.collect.score` turns a benchmark's studies into single-objective ones for the analysis: each
complete trial's value becomes the hypervolume of its study's front just after it (non-decreasing, so the running
best of those values is the hypervolume so far), and everything after is the single-objective analysis, "higher is
better".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hpo_astro.study.objectives import ObjectiveSpec

REFERENCE = 1.1  # in each normalised objective
LABEL = f"hypervolume (normalised, reference {REFERENCE})"


def compute_hypervolume(losses: np.ndarray, reference: np.ndarray) -> float:
    """The hypervolume of `losses` (points to minimise, shaped (n, k)) bounded by `reference` (every point must be
    <= it). Optuna's exact implementation (2-D sweep, 3-D, WFG beyond), which its samplers and
    `plot_hypervolume_history` use. Optuna 5.1 exposes it only as the private `optuna._hypervolume`; this one wrapper
    is the only place that reaches it, so a change there is fixed here."""
    from optuna._hypervolume import compute_hypervolume as optuna_hypervolume

    reference = np.asarray(reference, dtype=float)
    points = np.asarray(losses, dtype=float).reshape(-1, len(reference))
    return float(optuna_hypervolume(points, reference))


@dataclass(frozen=True)
class Bound:
    """One objective's range over the benchmark, in its own units: `best` normalises to 0, `worst` to 1."""

    name: str
    direction: str  # "maximize" or "minimize"
    best: float
    worst: float


@dataclass(frozen=True)
class Box:
    bounds: tuple[Bound, ...]
    reference: float = REFERENCE

    def normalise(self, values: Sequence[float]) -> np.ndarray:
        """A trial's objective values as losses in [0, 1] (0: the benchmark's best, 1: its worst)."""
        out = np.zeros(len(self.bounds))
        for i, (v, b) in enumerate(zip(values, self.bounds, strict=True)):
            span = b.worst - b.best  # negative for a maximised objective: the division flips it
            out[i] = 0.0 if span == 0 else (v - b.best) / span
        return out

    def hypervolume(self, points: Iterable[Sequence[float]]) -> float:
        """The hypervolume of trials' objective values (their own units) in this box; 0 for none."""
        losses = [self.normalise(p) for p in points]
        if not losses:
            return 0.0
        return compute_hypervolume(np.array(losses), np.full(len(self.bounds), self.reference))

    def to_json(self) -> dict[str, Any]:
        return {
            "score": LABEL,
            "reference": self.reference,
            "normalisation": "each objective (v - best) / (worst - best), best and worst over every trial of the "
            "benchmark (all strategies and repeats); 0 where best == worst",
            "bounds": {b.name: {"direction": b.direction, "best": b.best, "worst": b.worst} for b in self.bounds},
        }


def box_of(points: Iterable[Sequence[float]], objectives: Sequence[ObjectiveSpec]) -> Box:
    """The box of every trial's objective values `points` (0, 0 for an objective no trial has a value of)."""
    values = np.array(list(points), dtype=float).reshape(-1, len(objectives))
    bounds = []
    for i, spec in enumerate(objectives):
        column = values[:, i]
        low, high = (float(column.min()), float(column.max())) if len(column) else (0.0, 0.0)
        best, worst = (high, low) if spec.maximize else (low, high)
        bounds.append(Bound(spec.label, spec.direction, best, worst))
    return Box(tuple(bounds))


def running_hypervolume(points: Sequence[Sequence[float] | None], box: Box) -> list[float | None]:
    """After each entry, the hypervolume of the entries so far; None for an entry without values (a failed or pruned
    trial: it changes nothing). A point dominated by the front so far leaves it as it was and is not recomputed."""
    out: list[float | None] = []
    front: list[np.ndarray] = []
    current = 0.0
    for p in points:
        if p is None:
            out.append(None)
            continue
        loss = box.normalise(p)
        if not any(np.all(f <= loss) for f in front):  # not weakly dominated: the front (and its volume) grows
            front = [f for f in front if not np.all(loss <= f)] + [loss]
            current = compute_hypervolume(np.array(front), np.full(len(box.bounds), box.reference))
        out.append(current)
    return out


def finite_values(values: Sequence[float] | None) -> tuple[float, ...] | None:
    """A trial's objective values, or None when it has none or one is not finite (it cannot be placed in the box)."""
    if values is None or not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        return None
    return tuple(float(v) for v in values)


def box_html(box: dict[str, Any]) -> str:
    """The report's section on the box (`Box.to_json()`'s record) every study is scored in."""
    from hpo_astro.results.page import table_html

    rows = [
        (name, b["direction"], f"{b['best']:.6g}", f"{b['worst']:.6g}") for name, b in box.get("bounds", {}).items()
    ]
    return "\n".join(
        [
            "<h2>Hypervolume</h2>",
            '<p class="muted">Each objective is normalised to [0, 1] by the best (0) and worst (1) value observed '
            "over every trial of this benchmark, all strategies and repeats, so every study is scored in the same "
            "box; the hypervolume of a study's Pareto front is taken against the reference point "
            f"{box.get('reference')} in each normalised objective, so it lies between 0 and "
            f"{box.get('reference', REFERENCE) ** len(box.get('bounds', ())):.4g}. Adding a strategy or a repeat can "
            "widen the box and change every number: compare hypervolumes within one benchmark. The bounds (also in "
            "benchmark.json, to recompute any number):</p>",
            table_html(["objective", "direction", "best (0)", "worst (1)"], rows),
        ]
    )
