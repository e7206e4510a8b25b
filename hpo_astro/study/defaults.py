"""Study defaults that light modules (the command line's option declarations) need without importing config."""

from __future__ import annotations

from typing import Literal

DEFAULT_STORAGE = "sqlite:///optuna.db"
# The names a study's pruner takes, as a type (the command line's choices, here because this module is
# light); `hpo_astro.study.strategies.PRUNERS` maps each to what it means.
PrunerName = Literal["none", "median", "hyperband", "successive-halving"]
# Every objective `--objective` takes, alone or several joined by commas (`hpo_astro.study.objectives.OBJECTIVES`)
OBJECTIVE_NAMES = ("accuracy", "loss", "roc_auc", "fpr_at_fnr", "mdr_at_fpr", "params", "macs", "flops", "latency")
StackMode = Literal["auto", "on", "off"]  # `hpo_astro.core.stacked.STACK_MODES`
# The registry names of `hpo_astro.study.strategies.STRATEGIES`, in its order, for the command line's help and shell
# completion (a strategy may also be a sampler class by import path, so it is not a closed choice).
STRATEGY_NAMES = ("random", "ablation", "genetic", "bayesian", "tpe", "grid", "bohb", "qmc", "cmaes", "pbt")
