"""Study defaults that light modules (the command line's option declarations) need without importing config."""

from __future__ import annotations

from typing import Literal

DEFAULT_STORAGE = "sqlite:///optuna.db"
# The names a study's pruner and objective take, as types (the command line's choices, here because this module is
# light); `hpo_astro.study.strategies.PRUNERS` and `hpo_astro.study.config.OBJECTIVES` map each to what it means.
PrunerName = Literal["none", "median", "hyperband", "successive-halving"]
ObjectiveName = Literal["accuracy", "loss", "roc_auc"]
StackMode = Literal["auto", "on", "off"]  # `hpo_astro.core.stacked.STACK_MODES`
