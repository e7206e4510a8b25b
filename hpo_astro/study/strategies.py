"""Strategy name -> Optuna sampler, pruner name -> Optuna pruner. Adding one is one entry in `STRATEGIES` or
`PRUNERS`; the study configuration validates names against these registries (`check_strategy`).

A strategy may also be a sampler class given by import path, `package.module:ClassName` (see `load_sampler_class`).
"""

from __future__ import annotations

import binascii
import bisect
import dataclasses
import importlib
import inspect
import itertools
import math
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler

from hpo_astro.errors import UserError, described
from hpo_astro.samplers import AblationSampler
from hpo_astro.samplers.trial_seeded import TrialSeededSampler
from hpo_astro.store.record import RunSettings
from hpo_astro.store.storage import DEFAULT_GRACE
from hpo_astro.study.evaluation import eval_plan
from hpo_astro.study.pbt_plan import pbt_sampler
from hpo_astro.study.waiting import waiting_hook

GRID_LIMIT = 1_000_000  # GridSampler materialises every combination; beyond this, narrow the space


def varying_grid(cfg: RunSettings, strategy: str) -> dict[str, list[Any]]:
    """The values of each hyperparameter that varies, for a strategy that enumerates them (a fixed one is no
    Optuna parameter); a range without a finite list of values is refused with the reason."""
    fixed = cfg.space.fixed()
    return {name: values for name, values in cfg.space.grid(f"strategy {strategy!r}").items() if name not in fixed}


def _grid(cfg: RunSettings) -> BaseSampler:
    grid = varying_grid(cfg, "grid")
    size = math.prod(len(values) for values in grid.values())
    if size > GRID_LIMIT:
        raise UserError(f"the grid has {size:,} combinations (limit {GRID_LIMIT:,}); narrow [space] in a study file")
    return optuna.samplers.GridSampler(grid, seed=cfg.seed)


def _genetic(cfg: RunSettings) -> BaseSampler:
    # The paper's GA: population 10, uniform crossover, mutation 0.1. NSGA-II keeps its elites by construction
    # (parents and offspring compete for the next population) rather than a fixed count of 2.
    return optuna.samplers.NSGAIISampler(
        population_size=cfg.population_size,
        mutation_prob=0.1,
        crossover=optuna.samplers.nsgaii.UniformCrossover(),
        seed=cfg.seed,
    )


# How long a greedy ablation trial waits for the earlier sweeps' running trials: above any trial's duration, since
# a worker that gives up ends its run. A dead trial does not hold it that long: the wait checks heartbeats.
ABLATION_WAIT = 6 * 3600.0


# Ablation writes its plan (every value of every hyperparameter) to each trial; beyond this many slots, narrow it.
ABLATION_LIMIT = 10_000


def _ablation(cfg: RunSettings) -> BaseSampler:
    grid = varying_grid(cfg, "ablation")
    slots = sum(len(values) for values in grid.values())
    if slots > ABLATION_LIMIT:
        raise UserError(
            f"the ablation plan has {slots:,} trials (limit {ABLATION_LIMIT:,}); give the ranges larger steps"
        )
    baseline = None if cfg.baseline is None else {k: v for k, v in cfg.baseline.items() if k in grid}
    return AblationSampler(
        grid,
        baseline=baseline,
        greedy=cfg.greedy,
        seed=cfg.seed,
        wait_timeout=ABLATION_WAIT,
        on_wait=waiting_hook(getattr(cfg, "grace_period", DEFAULT_GRACE)),  # a waiting trial is alive
    )


def _cmaes(cfg: RunSettings) -> BaseSampler:
    # CMA-ES models int and float parameters only: a space with fewer than two varying ranges would be sampled by its
    # independent (random) fallback under another name. Lists beside the ranges are drawn at random, as Optuna does;
    # its warning about that, repeated for every trial, is turned off (the docs say it once).
    ranges = cfg.space.ranges()
    if len(ranges) < 2:
        raise UserError(
            "strategy 'cmaes' needs at least two hyperparameters given as ranges (e.g. lr = {low = 1e-4, high = "
            f"0.1, log = true}}), got {len(ranges)}{': ' + ranges[0] if ranges else ''}; lists are categorical, which "
            "CMA-ES does not model (use tpe, bayesian or qmc for them)"
        )
    return optuna.samplers.CmaEsSampler(seed=cfg.seed, warn_independent_sampling=False, **_startup(cfg))


# Strategies whose model starts after `n_startup_trials` random trials (a study file setting; Optuna's default: 10).
STARTUP_STRATEGIES = ("tpe", "bohb", "bayesian", "cmaes")


def _startup(cfg: RunSettings) -> dict[str, int]:
    return {} if cfg.n_startup_trials is None else {"n_startup_trials": cfg.n_startup_trials}


def _bohb(cfg: RunSettings) -> BaseSampler:
    # Optuna's BOHB-like recipe: TPE with the Hyperband pruner (the strategy's default pruner, `DEFAULT_PRUNERS`).
    # multivariate: one joint density over all hyperparameters, as BOHB's KDE (Optuna 5 defaults to it for one
    # objective; said explicitly so that another default cannot change the strategy). TPE also learns from the
    # trials Hyperband pruned, ranked by how far they got: the low-budget evaluations inform the model.
    return optuna.samplers.TPESampler(multivariate=True, seed=cfg.seed, **_startup(cfg))


def _qmc(cfg: RunSettings) -> BaseSampler:
    # Scrambled Sobol: the scramble is drawn from the study's seed, and the sampler keeps its position in the
    # sequence in the study's system attributes (a key made of the seed and the space), which is why it is built
    # once with the study's seed (`SHARED_PLAN`). Its first trial is a RandomSampler draw with that seed: Optuna's
    # QMCSampler learns the space from the study's first trial. QMCSampler is marked experimental; the warning
    # says nothing a user of hpo-astro can act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=cfg.seed)


STRATEGIES: dict[str, Callable[[RunSettings], BaseSampler]] = {
    "random": lambda cfg: optuna.samplers.RandomSampler(seed=cfg.seed),
    "ablation": _ablation,
    "genetic": _genetic,
    # GP surrogate, log expected improvement
    "bayesian": lambda cfg: optuna.samplers.GPSampler(seed=cfg.seed, **_startup(cfg)),
    "tpe": lambda cfg: optuna.samplers.TPESampler(seed=cfg.seed, **_startup(cfg)),
    "grid": _grid,
    "bohb": _bohb,
    "qmc": _qmc,
    "cmaes": _cmaes,
    "pbt": pbt_sampler,  # population-based training: `hpo_astro.study.pbt_plan`, docs/pbt.md
}

# A confirmation study's strategy (`hpo_astro.study.confirm`): every trial is enqueued with its configuration, so the
# sampler never chooses; not a strategy `run` takes.
CONFIRM_STRATEGY = "confirm"

# The pruner a strategy runs with when neither --pruner nor the study file names one; every other strategy: "none".
DEFAULT_PRUNERS = {"bohb": "hyperband"}

# Samplers whose plan lives in the store and must be identical in every process: they are built once with the
# study's seed. Ablation and grid keep their plan in trial system attributes; qmc keeps its position in the Sobol
# sequence in a study system attribute keyed by its seed, so a sampler rebuilt with another seed for every trial
# would start a new sequence each time and only ever draw its first point. The stochastic ones are rebuilt for every
# trial with a seed derived from the study's seed and its progress (`TrialSeededSampler`), so a resumed study or a
# second process never repeats them.
SHARED_PLAN = {"ablation", "grid", "qmc", "pbt"}  # pbt: its population in trial system attributes


def is_import_path(strategy: str) -> bool:
    """A user's sampler class, `package.module:ClassName`, rather than a registry name."""
    return ":" in strategy


def check_strategy(strategy: str) -> None:
    """Refuse, in one line, a strategy that is neither a registry name nor an importable sampler class."""
    if strategy in STRATEGIES or strategy == CONFIRM_STRATEGY:
        return
    if is_import_path(strategy):
        load_sampler_class(strategy)
        return
    raise UserError(
        f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}, or a sampler class by import path "
        "(package.module:ClassName)"
    )


def load_sampler_class(path: str) -> type[BaseSampler]:
    """The Optuna sampler class named by `package.module:ClassName` (a nested class: `module:Outer.Inner`).

    The working directory is searched after the installed packages (as `python -m` would, but without letting a
    local file shadow an installed module), so a `mysamplers.py` beside the study store works without PYTHONPATH.
    Every process that runs the study imports it again: a worker elsewhere needs the module too."""
    module_name, _, qualname = path.partition(":")
    parts = module_name.split(".")
    if not all(p.isidentifier() for p in parts) or not all(p.isidentifier() for p in qualname.split(".")):
        raise UserError(
            f"strategy {path!r} is not a registry name ({', '.join(STRATEGIES)}) nor an import path "
            "package.module:ClassName"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise UserError(
                f"strategy {path!r}: no module named {exc.name!r} (not installed, not on PYTHONPATH, not in the "
                "working directory)"
            ) from None
        raise UserError(f"strategy {path!r}: importing {module_name} failed: {described(exc)}") from None
    except Exception as exc:  # the module's own code failed (a missing dependency, a syntax error): one line
        raise UserError(f"strategy {path!r}: importing {module_name} failed: {described(exc)}") from None
    target: object = module
    for name in qualname.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise UserError(f"strategy {path!r}: {module_name} has no attribute {qualname!r}") from None
    if not (isinstance(target, type) and issubclass(target, BaseSampler)):
        raise UserError(f"strategy {path!r}: {qualname} is not an Optuna sampler (a subclass of BaseSampler)")
    return target


def _accepts_seed(cls: type[BaseSampler]) -> bool:
    """Whether the class's constructor takes `seed=` (a `seed` parameter, or **kwargs that pass it on)."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a class built in C): construct it without arguments
        return False
    return any(
        (p.name == "seed" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)) or p.kind == p.VAR_KEYWORD
        for p in parameters
    )


def _user_sampler(cfg: RunSettings) -> BaseSampler:
    """The user's sampler, built once per process: `Class(seed=cfg.seed)` when it takes a seed, else `Class()`."""
    cls = load_sampler_class(cfg.strategy)
    kwargs = {"seed": cfg.seed} if _accepts_seed(cls) else {}
    call = f"{cls.__name__}({'seed=' + str(cfg.seed) if kwargs else ''})"
    try:
        with warnings.catch_warnings():  # Optuna's experimental samplers warn when built; nothing to act on here
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = cls(**kwargs)
    except Exception as exc:
        raise UserError(f"strategy {cfg.strategy!r}: {call} failed: {described(exc)}") from None
    return sampler


def make_sampler(cfg: RunSettings) -> BaseSampler:
    """The strategy's sampler (see `SHARED_PLAN` for how each is seeded). A user's sampler class is built once
    per process with the study's seed and never rebuilt per trial: it may keep state between trials."""
    check_strategy(cfg.strategy)
    if is_import_path(cfg.strategy):
        return _user_sampler(cfg)
    if cfg.strategy == CONFIRM_STRATEGY:
        return optuna.samplers.RandomSampler(seed=cfg.seed)  # never asked: every trial is enqueued in full
    factory = STRATEGIES[cfg.strategy]
    if cfg.strategy in SHARED_PLAN:
        return factory(cfg)
    return TrialSeededSampler(lambda seed: factory(dataclasses.replace(cfg, seed=seed)), cfg.seed)


class SeededHyperbandPruner(optuna.pruners.HyperbandPruner):
    """Optuna's `HyperbandPruner`, whose bracket for a trial follows from the study's seed and the trial's number.

    Optuna's draws it from a hash of the study's *name* and the trial number, so the same study under another name (a
    benchmark written to another `--out` folder, a study renamed with `--study`) pruned other trials and found other
    results. Same allocation as Optuna's (each bracket gets its share of the CRC32 hash space, in bracket order), keyed
    by the seed instead; it overrides Optuna's private `_get_bracket_id`, which its sampler integration (BOHB's TPE)
    also calls, so both agree on every trial's bracket."""

    def __init__(self, seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._bracket_seed = seed

    def _get_bracket_id(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> int:
        if not self._pruners:  # brackets are built at the first prune; until then everything is bracket 0
            return 0
        draw = binascii.crc32(f"{self._bracket_seed}_{trial.number}".encode()) % self._total_trial_allocation_budget
        upper_bounds = list(itertools.accumulate(self._trial_allocation_budgets))
        return bisect.bisect_right(upper_bounds, draw)


# Pruners work on epochs: each trial reports its objective metric after every epoch of each of its runs, one series
# (`hpo_astro.study.evaluation`; names: `PrunerName`). Hyperband's maximum resource is the whole series.
PRUNERS: dict[str, Callable[[RunSettings], BasePruner]] = {
    "none": lambda cfg: optuna.pruners.NopPruner(),
    "median": lambda cfg: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
    "hyperband": lambda cfg: SeededHyperbandPruner(
        cfg.seed, min_resource=1, max_resource=eval_plan(cfg).max_step, reduction_factor=3
    ),
    "successive-halving": lambda cfg: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
}


def pruner_name(cfg: RunSettings) -> str:
    """The pruner the study runs with: the one given (--pruner, the study file), else the strategy's default."""
    if cfg.pruner is not None:
        return cfg.pruner
    return DEFAULT_PRUNERS.get(cfg.strategy, "none")


def make_pruner(cfg: RunSettings) -> BasePruner:
    name = pruner_name(cfg)
    try:
        factory = PRUNERS[name]
    except KeyError:
        raise UserError(f"unknown pruner {name!r}; known: {', '.join(PRUNERS)}") from None
    return factory(cfg)
