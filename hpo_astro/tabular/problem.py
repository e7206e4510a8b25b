"""A table as an OptunaHub benchmark problem (`TableProblem`): any Optuna sampler, or any library that speaks
`optunahub.benchmarks.BaseProblem`, runs on a table with two lines::

    problem = TableProblem("astro-small")
    optuna.create_study(directions=problem.directions).optimize(problem, n_trials=30)

It answers a configuration with the number a replayed hpo-astro study gives it (`TableReplay`, the objective's
metric, a NaN counted as the worst value), so a study run here and a replayed hpo-astro study (`hpo-astro benchmark
--table`) score a configuration alike. Needs `optunahub` (`pip install 'hpo-astro[hub]'`); `hpo_astro.tabular` itself
does not import this module.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection

from hpo_astro.core.cost import InferenceCost, measure_cost
from hpo_astro.core.hyperparameters import PAPER_SPACE
from hpo_astro.errors import UserError
from hpo_astro.study.objectives import COST_OBJECTIVES, OBJECTIVES
from hpo_astro.study.trial_callbacks import finite_metric
from hpo_astro.tabular.load import load_table
from hpo_astro.tabular.replay import TableReplay
from hpo_astro.tabular.table import Table

try:
    from optunahub.benchmarks import BaseProblem
except ImportError as exc:  # pragma: no cover - the optional extra is missing
    raise ImportError(
        "hpo_astro.tabular.problem needs optunahub: pip install 'hpo-astro[hub]' (or pip install optunahub)"
    ) from exc


class TableProblem(BaseProblem):
    """`TableProblem(table, objective="accuracy")`: a table as an `optunahub.benchmarks.BaseProblem`.

    * `table`: a `Table`, or what `hpo_astro.tabular.load_table` takes (a shipped table's name such as
      ``"astro-small"``, a table file, or a `tabulate` study's name with `storage`).
    * `objective`: ``"accuracy"``, ``"roc_auc"`` (maximized) or ``"loss"``, ``"fpr_at_fnr"`` (minimized), the
      validation metric of the run's best epoch, as in a study, or the configuration's inference cost ``"params"``,
      ``"macs"``, ``"flops"`` (`hpo_astro.core.cost`; a table holds no latency); or a sequence of them for a
      multi-objective problem (`evaluate` then returns one value per objective, in that order).
    * `search_space`: the distribution of each hyperparameter the table varies (`SearchSpace.distributions`, what
      hpo-astro's own objective suggests): a `CategoricalDistribution` of a list of values, an int or float
      distribution of a range. A hyperparameter the table holds at one value is left out and filled in by `evaluate`.
    * `evaluate(params)`: the value of the configuration `params` (the search space's names; the table's other
      hyperparameters may be given too, and must then be the values the table was trained with). A name or a value
      the table does not have is a one-line `hpo_astro.errors.UserError`.
    * `seed`, `eval_seeds`, `max_epochs`: the study settings of the replay the value is taken from. A table of
      several training seeds per configuration (`Table.seeds`; the shipped ``astro-small`` has 3) answers each
      configuration with one of its runs, chosen from the configuration and `seed` exactly as a replayed study of
      that seed chooses (`hpo_astro.tabular.replay.run_index`): the same run every time it is evaluated.
      `eval_seeds = S` scores it by the mean over the runs of seeds `seed` ... `seed + S - 1` (a study's
      ``eval_seeds``; ``S = table.seeds`` meets every run of a configuration). `max_epochs` truncates the curves as
      a study's ``max_epochs`` does (None: the whole recorded curve).
    """

    def __init__(
        self,
        table: str | Path | Table,
        objective: str | Sequence[str] = "accuracy",
        *,
        seed: int = 0,
        eval_seeds: int = 1,
        max_epochs: int | None = None,
        storage: str | None = None,
    ) -> None:
        self.table = table if isinstance(table, Table) else load_table(str(table), storage)
        names = [objective] if isinstance(objective, str) else list(objective)
        if not names:
            raise UserError("TableProblem needs at least one objective")
        for name in names:
            if name not in OBJECTIVES:
                raise UserError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
            if name == "latency":
                raise UserError(
                    "objective 'latency': a table holds no inference time (it is measured on a device as a study "
                    "trains); params, macs and flops are the configuration's own"
                )
            if name in COST_OBJECTIVES:
                continue
            metric = OBJECTIVES[name][0].removeprefix("val_")
            if self.table.rows and metric not in self.table.rows[0].val_metrics:
                raise UserError(f"objective {name!r}: table {self.table.name!r} records no {metric} (train for it)")
        self.objectives = tuple(names)
        self._multi = not isinstance(objective, str)
        _check_whole("seed", seed, 0)
        _check_whole("eval_seeds", eval_seeds, 1)
        if max_epochs is not None:
            _check_whole("max_epochs", max_epochs, 1)
        self.seed, self.eval_seeds, self.max_epochs = seed, eval_seeds, max_epochs
        self._replay = TableReplay(self.table)
        search = self.table.search_space
        self._space: dict[str, BaseDistribution] = search.distributions()
        self._fixed = search.fixed()

    def __repr__(self) -> str:
        objective = list(self.objectives) if self._multi else self.objectives[0]
        return f"TableProblem({self.table.name!r}, objective={objective!r}, seed={self.seed})"

    @property
    def search_space(self) -> dict[str, BaseDistribution]:
        return dict(self._space)

    @property
    def directions(self) -> list[StudyDirection]:
        return [_direction(name) for name in self.objectives]

    def evaluate(self, params: dict[str, Any]) -> float | list[float]:
        config = self._configuration(params)
        values = [self._run_values(config, self.seed + i) for i in range(self.eval_seeds)]
        means = [statistics.fmean(run[k] for run in values) for k in range(len(self.objectives))]
        return means if self._multi else means[0]

    def _configuration(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """`params` checked against the search space, with the table's fixed hyperparameters filled in."""
        if not isinstance(params, Mapping):
            raise UserError(f"TableProblem.evaluate takes a dict of parameters, got {type(params).__name__}")
        where = f"table {self.table.name!r}"
        unknown = [name for name in params if name not in self._space and name not in PAPER_SPACE]
        if unknown:
            raise UserError(f"{where}: unknown parameter {unknown[0]!r}; its search space: {', '.join(self._space)}")
        absent = [name for name in self._space if name not in params]
        if absent:
            raise UserError(f"{where}: no value for {', '.join(absent)} (its search space: {', '.join(self._space)})")
        return {**self._fixed, **params}

    def _run_values(self, config: Mapping[str, Any], seed: int) -> list[float]:
        """The objectives of the run a replay with `seed` answers `config` with (`Objective._ended_run`'s rule)."""
        result = self._replay(config, max_epochs=self.max_epochs, seed=seed)
        return [
            float(getattr(self._cost(config), COST_OBJECTIVES[name][0]))
            if name in COST_OBJECTIVES
            else finite_metric(getattr(result.val_metrics, OBJECTIVES[name][0].removeprefix("val_")), _maximizes(name))
            for name in self.objectives
        ]

    def _cost(self, config: Mapping[str, Any]) -> InferenceCost:
        """The configuration's parameter count, MACs and FLOPs (`hpo_astro.core.cost`, counted once per architecture):
        of every hyperparameter the table trained it with."""
        channels = len(self.table.info.get("channels") or ["scorr"])
        return measure_cost(self.table.runs(config)[0].params, in_channels=channels, latency=False)


def _check_whole(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"TableProblem: {name} must be a whole number >= {low}, got {value!r}")


def _maximizes(objective: str) -> bool:
    return OBJECTIVES[objective][1] == "maximize"


def _direction(objective: str) -> StudyDirection:
    return StudyDirection.MAXIMIZE if _maximizes(objective) else StudyDirection.MINIMIZE


__all__ = ["TableProblem"]
