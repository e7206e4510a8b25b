"""What a study optimises: one objective, or several (`--objective accuracy,latency`).

An objective is a validation metric the trainer measures every epoch (accuracy, loss, ROC AUC, or an operating point
of the classifier), or an inference cost measured once the trial has trained (`hpo_astro.core.cost`): parameter
count, multiply-accumulates or FLOPs of one forward pass per cutout, microseconds per cutout at a stated batch size.
A study of several objectives is an Optuna multi-objective study: its trials have one value per objective, and its
result is a Pareto front (`study.best_trials`), not one best trial.

A trial trains on its first metric objective (the *primary* one: early stopping and the curves the dashboard draws
follow it). Optuna does not prune multi-objective trials (`Trial.report` and `should_prune` refuse them), so a
multi-objective study runs without a pruner: its trials stop at their epoch cap or by early stopping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpo_astro.errors import UserError

# name -> (the metric it reads, its direction)
METRIC_OBJECTIVES = {
    "accuracy": ("val_accuracy", "maximize"),
    "loss": ("val_loss", "minimize"),
    "roc_auc": ("val_roc_auc", "maximize"),
    # The operating points a real/bogus classifier is deployed at: the false-positive rate at 5% missed reals, the
    # missed-detection rate at 1% false positives. The rate is in the metric's name, which the dashboard shows.
    "fpr_at_fnr": ("val_fpr_at_5fnr", "minimize"),
    "mdr_at_fpr": ("val_mdr_at_1fpr", "minimize"),
}
COST_OBJECTIVES = {  # name -> (the `InferenceCost` field it reads, its direction)
    "params": ("n_params", "minimize"),
    "macs": ("macs", "minimize"),
    "flops": ("flops", "minimize"),
    "latency": ("latency_us", "minimize"),
}
OBJECTIVES = {**METRIC_OBJECTIVES, **COST_OBJECTIVES}
MAX_OBJECTIVES = 4

# Strategies whose sampler optimises several objectives (Optuna's NSGA-II, TPE, GP, random, QMC and grid; the
# AblationSampler without greedy adoption, which needs one best value per sweep).
MULTI_OBJECTIVE_STRATEGIES = ("random", "tpe", "genetic", "bayesian", "qmc", "grid", "ablation")
_SINGLE_ONLY = {
    "cmaes": "CMA-ES optimises one objective",
    "bohb": "BOHB is TPE with the Hyperband pruner, and Optuna does not prune multi-objective trials (use tpe)",
}


# An operating point at a stated rate: `fpr_at_fnr@2%` (the FPR at 2% missed reals), `mdr_at_fpr@0.5%`, or the rate
# as a fraction (`@0.02`). The default rates (5% and 1%) are the plain names, whose metrics every epoch measures.
DEFAULT_RATES = {"fpr_at_fnr": 0.05, "mdr_at_fpr": 0.01}
STATED_KEYS = {"fpr_at_fnr": "val_fpr_at_fnr", "mdr_at_fpr": "val_mdr_at_fpr"}  # EpochMetrics fields at a stated rate
_RATE_WORD = {"fpr_at_fnr": "fnr", "mdr_at_fpr": "fpr"}


@dataclass(frozen=True)
class ObjectiveSpec:
    """One objective of a study: its name (`--objective`), the value it reads (a per-epoch metric such as
    `val_accuracy`, or an inference-cost field such as `latency_us`), its direction, and for an operating point at a
    stated rate, the rate (a fraction)."""

    name: str
    key: str
    direction: str
    rate: float | None = None

    @property
    def label(self) -> str:
        """How `--objective` and the study record write it: `fpr_at_fnr@2%` for a stated rate."""
        return self.name if self.rate is None else f"{self.name}@{_percent(self.rate)}%"

    @property
    def is_cost(self) -> bool:
        return self.name in COST_OBJECTIVES

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def metric_name(self) -> str:
        """The name the study records for it (Optuna's metric names: optuna-dashboard's axis titles), with its rate:
        `val_fpr_at_5fnr`, `val_fpr_at_2fnr`."""
        if self.rate is None:
            return self.key
        return f"val_{self.name.split('_at_')[0]}_at_{_percent(self.rate)}{_RATE_WORD[self.name]}"


def _percent(rate: float) -> str:
    return f"{rate * 100:.6g}"


def _spec(text: str) -> ObjectiveSpec:
    """One objective of `--objective`: a name, or an operating point with its rate (`fpr_at_fnr@2%`)."""
    name, at, rate_text = text.partition("@")
    name = name.strip()
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
    if not at:
        return ObjectiveSpec(name, *OBJECTIVES[name])
    if name not in DEFAULT_RATES:
        raise UserError(f"objective {name!r} takes no rate (only {', '.join(DEFAULT_RATES)} do: fpr_at_fnr@2%)")
    rate_text = rate_text.strip()
    try:
        rate = float(rate_text[:-1]) / 100 if rate_text.endswith("%") else float(rate_text)
    except ValueError:
        raise UserError(f"objective {text!r}: the rate must be a percentage or a fraction (@2% or @0.02)") from None
    if not 0 < rate < 1:
        raise UserError(f"objective {text!r}: the rate must be between 0 and 100% (exclusive), got {rate_text}")
    if not math.isclose(float(_percent(rate)) / 100, rate, rel_tol=1e-12):  # the label names the rate it trains at
        raise UserError(f"objective {text!r}: give the rate with at most 6 significant digits (it names the metric)")
    if math.isclose(rate, DEFAULT_RATES[name], rel_tol=0, abs_tol=1e-12):
        return ObjectiveSpec(name, *OBJECTIVES[name])  # the default rate: the metric every epoch measures
    return ObjectiveSpec(name, STATED_KEYS[name], OBJECTIVES[name][1], rate)


def parse_objectives(text: str) -> tuple[ObjectiveSpec, ...]:
    """`accuracy`, or several names joined by commas (`accuracy,latency`); one line for anything else."""
    parts = [part.strip() for part in str(text).split(",")]
    if not text or any(not part for part in parts):
        raise UserError(f"--objective takes names joined by commas (e.g. accuracy,latency), got {text!r}")
    specs = tuple(_spec(part) for part in parts)
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise UserError(f"objective {text!r} names one objective twice")
    if len(names) > MAX_OBJECTIVES:
        raise UserError(f"at most {MAX_OBJECTIVES} objectives, got {len(names)} ({text})")
    if all(name in COST_OBJECTIVES for name in names):
        raise UserError(
            f"objective {text!r} has no validation metric: add one a trial trains for (e.g. accuracy,{names[0]}); "
            f"metrics: {', '.join(METRIC_OBJECTIVES)}"
        )
    return specs


def primary(objectives: tuple[ObjectiveSpec, ...]) -> ObjectiveSpec:
    """The metric a trial trains on: its first metric objective."""
    return next(spec for spec in objectives if not spec.is_cost)


def check_multi_objective(strategy: str, greedy: bool, pruner: str, explicit_pruner: bool) -> None:
    """Refuse, in one line, a multi-objective study its strategy or pruner cannot run."""
    if strategy in _SINGLE_ONLY:
        raise UserError(
            f"strategy {strategy!r} cannot run a multi-objective study: {_SINGLE_ONLY[strategy]}; strategies that can: "
            f"{', '.join(MULTI_OBJECTIVE_STRATEGIES)}"
        )
    if strategy == "ablation" and greedy:
        raise UserError(
            "greedy ablation adopts each sweep's best value, and a multi-objective study has a front of them, not "
            "one best: run ablation without greedy"
        )
    if pruner != "none" and explicit_pruner:
        raise UserError(
            f"pruner {pruner!r} cannot run a multi-objective study: Optuna does not prune multi-objective trials "
            "(they stop at --max-epochs or by early stopping); use --pruner none"
        )


def check_latency_devices(objectives: tuple[ObjectiveSpec, ...], devices: tuple[str, ...]) -> None:
    """Latency is timed on each trial's device: a study that optimises it runs on devices of one kind."""
    if any(spec.name == "latency" for spec in objectives) and len({d.split(":")[0] for d in devices}) > 1:
        raise UserError(
            f"latency is timed on each trial's device, and --devices {','.join(devices)} mixes kinds: trials timed "
            "on a CPU and on a GPU would share one front; give devices of one kind"
        )
