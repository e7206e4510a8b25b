"""Strategy name -> Optuna sampler, pruner name -> Optuna pruner. Adding one is one entry in `STRATEGIES` or
`PRUNERS`; the study configuration validates names against these registries."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler

from hpo_astro.errors import UserError
from hpo_astro.samplers import AblationSampler
from hpo_astro.samplers.trial_seeded import TrialSeededSampler

if TYPE_CHECKING:  # config imports the registries; the reverse import is for type hints only
    from hpo_astro.config import StudyConfig

GRID_LIMIT = 1_000_000  # GridSampler materialises every combination; beyond this, narrow the space


def _grid(cfg: StudyConfig) -> BaseSampler:
    size = cfg.space.n_combinations()
    if size > GRID_LIMIT:
        raise UserError(f"the grid has {size:,} combinations (limit {GRID_LIMIT:,}); narrow [space] in a study file")
    return optuna.samplers.GridSampler(cfg.space.to_dict(), seed=cfg.seed)


def _genetic(cfg: StudyConfig) -> BaseSampler:
    # The paper's GA: population 10, uniform crossover, mutation 0.1. NSGA-II keeps its elites by construction
    # (parents and offspring compete for the next population) rather than a fixed count of 2.
    return optuna.samplers.NSGAIISampler(
        population_size=cfg.population_size,
        mutation_prob=0.1,
        crossover=optuna.samplers.nsgaii.UniformCrossover(),
        seed=cfg.seed,
    )


def _ablation(cfg: StudyConfig) -> BaseSampler:
    return AblationSampler(cfg.space.to_dict(), baseline=cfg.baseline, greedy=cfg.greedy, seed=cfg.seed)


STRATEGIES: dict[str, Callable[[StudyConfig], BaseSampler]] = {
    "random": lambda cfg: optuna.samplers.RandomSampler(seed=cfg.seed),
    "ablation": _ablation,
    "genetic": _genetic,
    "bayesian": lambda cfg: optuna.samplers.GPSampler(seed=cfg.seed),  # GP surrogate, log expected improvement
    "tpe": lambda cfg: optuna.samplers.TPESampler(seed=cfg.seed),
    "grid": _grid,
}


# Samplers whose plan lives in the store (trial system attributes) and must be identical in every process: they
# are built once with the study's seed. The stochastic ones are rebuilt for every trial with a seed derived from the
# study's seed and its progress (`TrialSeededSampler`), so a resumed study or a second process never repeats them.
SHARED_PLAN = {"ablation", "grid"}


def make_sampler(cfg: StudyConfig) -> BaseSampler:
    """The strategy's sampler (see `SHARED_PLAN` for how each is seeded)."""
    try:
        factory = STRATEGIES[cfg.strategy]
    except KeyError:
        raise UserError(f"unknown strategy {cfg.strategy!r}; known: {', '.join(STRATEGIES)}") from None
    if cfg.strategy in SHARED_PLAN:
        return factory(cfg)
    return TrialSeededSampler(lambda seed: factory(dataclasses.replace(cfg, seed=seed)), cfg.seed)


def _max_epochs(cfg: StudyConfig) -> int:
    """The most epochs a trial can run: --max-epochs, else the largest t_max of the space."""
    return cfg.max_epochs or max(int(v) for v in cfg.space.get("t_max", (100,)))


# Pruners work on epochs: each trial reports its objective metric after every epoch.
PRUNERS: dict[str, Callable[[StudyConfig], BasePruner]] = {
    "none": lambda cfg: optuna.pruners.NopPruner(),
    "median": lambda cfg: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
    "hyperband": lambda cfg: optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=_max_epochs(cfg), reduction_factor=3
    ),
    "successive-halving": lambda cfg: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
}


def make_pruner(cfg: StudyConfig) -> BasePruner:
    try:
        factory = PRUNERS[cfg.pruner]
    except KeyError:
        raise UserError(f"unknown pruner {cfg.pruner!r}; known: {', '.join(PRUNERS)}") from None
    return factory(cfg)
