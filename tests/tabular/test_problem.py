"""A table as an OptunaHub benchmark problem (`hpo_astro.tabular.problem.TableProblem`): its search space and
directions, its values (the table's rows, the run a replayed study of the same seed draws), and run by samplers
hpo-astro does not register, with the two lines the docs show."""

from __future__ import annotations

import inspect
import random
import statistics
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import journal_url
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from test_tabular import make_table

from hpo_astro.core.hyperparameters import DEFAULT_PARAMS
from hpo_astro.core.space import SearchSpace
from hpo_astro.errors import UserError
from hpo_astro.study import strategies
from hpo_astro.study.config import StudyConfig
from hpo_astro.study.run import run_study
from hpo_astro.tabular import Table, TableReplay, load_table, table_data
from hpo_astro.tabular.replay import run_index

optunahub = pytest.importorskip("optunahub")  # the `hub` extra (in `dev`)
from hpo_astro.tabular.problem import TableProblem  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
SHIPPED = "astro-small"


@pytest.fixture(scope="module")
def shipped() -> Table:
    return load_table(SHIPPED)


def table_value(table: Table, params: dict[str, Any], seed: int = 0, metric: str = "accuracy") -> float:
    """The value the table holds for `params`, read off its rows: the best epoch's validation metric of the run that a
    replayed study with `seed` draws (every table of these tests has finite metrics)."""
    runs = table.runs(params)
    return runs[run_index(runs[0].params, seed, len(runs))].val_metrics[metric]


class HashSampler(BaseSampler):
    """A sampler of this test's own, which neither Optuna nor hpo-astro knows: each parameter's choice is a hash of the
    trial number and the name (independent sampling only)."""

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        assert isinstance(param_distribution, CategoricalDistribution)
        choices = param_distribution.choices
        return choices[random.Random(f"{trial.number}:{param_name}").randrange(len(choices))]


def test_the_problem_is_the_tables_space_and_objective(shipped: Table) -> None:
    problem = TableProblem(SHIPPED)
    assert isinstance(problem, optunahub.benchmarks.BaseProblem) and problem.table == shipped
    assert problem.search_space == {name: CategoricalDistribution(values) for name, values in shipped.space.items()}
    assert list(problem.search_space) == list(shipped.space)  # the table's order, as a study suggests them
    assert problem.directions == [StudyDirection.MAXIMIZE]
    assert TableProblem(shipped, "loss").directions == [StudyDirection.MINIMIZE]
    both = TableProblem(shipped, ["roc_auc", "loss"])
    assert both.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    assert repr(both) == "TableProblem('astro-small', objective=['roc_auc', 'loss'], seed=0)"


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_any_sampler_runs_on_the_table_in_two_lines(shipped: Table) -> None:
    """The done-when of the issue: samplers hpo-astro does not register (Optuna's BruteForceSampler, and one made up
    here) run on the table as a BaseProblem, and every trial's value is the table's."""
    source = inspect.getsource(strategies)
    assert "BruteForceSampler" not in source and "HashSampler" not in source  # not one of the project's strategies
    for sampler in (optuna.samplers.BruteForceSampler(seed=0), HashSampler()):
        problem = TableProblem(SHIPPED)
        study = optuna.create_study(directions=problem.directions, sampler=sampler)
        study.optimize(problem, n_trials=25)
        assert len(study.trials) == 25 and all(t.state == TrialState.COMPLETE for t in study.trials)
        for trial in study.trials:
            assert trial.distributions == problem.search_space
            assert trial.value == table_value(shipped, trial.params)
        assert study.best_value == max(table_value(shipped, t.params) for t in study.trials)
    configurations = {tuple(t.params.values()) for t in study.trials}
    assert len(configurations) > 10  # the made-up sampler moved around the space


def test_the_value_is_the_one_a_replayed_study_records(tmp_path: Path, shipped: Table) -> None:
    """For the same study seed, objective and evaluation seeds, the problem scores a configuration as an hpo-astro
    study replaying the table does (`hpo-astro run --table`)."""
    for objective, eval_seeds in (("accuracy", 1), ("loss", 2)):
        cfg = StudyConfig(
            strategy="random",
            study=f"{objective}-{eval_seeds}",
            storage=journal_url(tmp_path),
            n_trials=8,
            space=SearchSpace.from_dict(shipped.space),
            objective=objective,
            seed=5,
            eval_seeds=eval_seeds,
            pruner="none",
        )
        study = run_study(cfg, train=TableReplay(shipped), data=table_data(shipped)).study
        problem = TableProblem(shipped, objective, seed=5, eval_seeds=eval_seeds)
        assert problem.directions == study.directions
        trials = [t for t in study.trials if t.state == TrialState.COMPLETE]
        assert len(trials) == 8
        for trial in trials:
            assert problem.evaluate(trial.params) == pytest.approx(trial.value, rel=1e-12)


def test_the_seed_chooses_the_run_and_eval_seeds_average_the_runs(shipped: Table) -> None:
    params = {"lr": 1e-2, "dropout_rate": 0.3, "weight_decay": 1e-2, "conv_layers": 4}
    runs = [row.val_metrics["accuracy"] for row in shipped.runs(params)]
    assert shipped.seeds == 3 and len(set(runs)) > 1  # the training noise the seed chooses from
    for seed in range(4):
        problem = TableProblem(shipped, seed=seed)
        assert problem.evaluate(params) == table_value(shipped, params, seed) == problem.evaluate(params)
    assert {TableProblem(shipped, seed=s).evaluate(params) for s in range(3)} == set(runs)
    assert TableProblem(shipped, eval_seeds=3).evaluate(params) == pytest.approx(statistics.fmean(runs))


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_several_objectives_make_a_multi_objective_problem(shipped: Table) -> None:
    problem = TableProblem(shipped, ("accuracy", "loss"))
    study = optuna.create_study(directions=problem.directions, sampler=optuna.samplers.NSGAIIISampler(seed=0))
    study.optimize(problem, n_trials=12)
    for trial in study.trials:
        assert trial.values == [table_value(shipped, trial.params), table_value(shipped, trial.params, metric="loss")]


def test_max_epochs_truncates_the_curves_as_a_study_does() -> None:
    table = make_table()  # accuracy rises to its best at the last of 10 epochs
    params = {"lr": 1e-3, "batch_size": 64}
    row = table.row(params)
    assert TableProblem(table).evaluate(params) == row.val_metrics["accuracy"]
    assert TableProblem(table, max_epochs=3).evaluate(params) == row.history[2].val_accuracy


def test_a_hyperparameter_the_table_holds_fixed_is_no_parameter() -> None:
    table = make_table({"lr": [1e-1, 1e-2, 1e-3, 1e-4], "fc_width": [128]})  # fc_width 128, not the default 64
    problem = TableProblem(table)
    assert list(problem.search_space) == ["lr"]
    value = table.row({"lr": 1e-2, "fc_width": 128}).val_metrics["accuracy"]
    assert problem.evaluate({"lr": 1e-2}) == problem.evaluate({"lr": 1e-2, "fc_width": 128}) == value
    study = optuna.create_study(directions=problem.directions)
    study.optimize(problem, n_trials=3)
    assert all(set(t.params) == {"lr"} for t in study.trials)
    with pytest.raises(UserError, match=r"fc_width=64 is not in the table's space \(128\)"):
        problem.evaluate({"lr": 1e-2, "fc_width": 64})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lr": 1e-3, "batch_size": 64, "momentum": 0.9}, "unknown parameter 'momentum'; its search space: lr, "),
        ({"lr": 1e-3}, r"table 'hand': no value for batch_size \(its search space: lr, batch_size\)"),
        ({"lr": 0.5, "batch_size": 64}, r"lr=0.5 is not in the table's space \(0.1, 0.01, 0.001, 0.0001\)"),
        ({"lr": "fast", "batch_size": 64}, "lr='fast' is not in the table's space"),
        ({"lr": 1e-3, "batch_size": True}, "batch_size=True is not in the table's space"),
        ({"lr": 1e-3, "batch_size": 64, "fc_width": 256}, "it was trained with fc_width=64, not fc_width=256"),
    ],
)
def test_a_name_or_value_the_table_does_not_have_is_one_line(params: dict[str, Any], message: str) -> None:
    problem = TableProblem(make_table())
    with pytest.raises(UserError, match=message) as raised:
        problem.evaluate(params)
    assert "\n" not in str(raised.value)


def test_a_configuration_missing_from_a_table_built_in_code_is_one_line() -> None:
    table = make_table(skip=1)  # the first configuration has no row
    first = {"lr": 1e-1, "batch_size": 4}
    with pytest.raises(UserError, match=r"has no row \(15 of 16 configurations tabulated\)"):
        TableProblem(table).evaluate(first)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("f1",), {}, "unknown objective 'f1'; known: accuracy, loss, roc_auc"),
        (([],), {}, "needs at least one objective"),
        ((), {"seed": -1}, "seed must be a whole number >= 0, got -1"),
        ((), {"seed": True}, "seed must be a whole number >= 0, got True"),
        ((), {"eval_seeds": 0}, "eval_seeds must be a whole number >= 1, got 0"),
        ((), {"max_epochs": 0}, "max_epochs must be a whole number >= 1, got 0"),
    ],
)
def test_bad_settings_are_refused_when_the_problem_is_made(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(UserError, match=message):
        TableProblem(make_table(), *args, **kwargs)
    with pytest.raises(UserError, match="no table 'no-such-table'"):
        TableProblem("no-such-table")


def test_a_failing_evaluation_fails_the_trial_and_says_why() -> None:
    """What an objective raises reaches the caller of `optimize` (Optuna's default), the trial marked failed."""
    problem = TableProblem(make_table({"lr": [1e-2], "batch_size": [16, 64]}, skip=1))  # batch_size 16 has no row
    study = optuna.create_study(directions=problem.directions)
    study.enqueue_trial({"batch_size": 16})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match="batch_size=16 has no row"):
            study.optimize(problem, n_trials=1)
    assert study.trials[0].state == TrialState.FAIL


def test_a_row_is_what_the_problem_reads(shipped: Table) -> None:
    """The shipped table's rows carry full configurations: the problem's value of a configuration is its row's,
    whatever defaults the other hyperparameters take (`DEFAULT_PARAMS`)."""
    row = shipped.rows[0]
    params = {name: row.params[name] for name in shipped.space}
    assert {k: v for k, v in row.params.items() if k not in shipped.space} == {
        k: v for k, v in DEFAULT_PARAMS.items() if k not in shipped.space
    }
    seed = next(s for s in range(10) if run_index(row.params, s, shipped.seeds) == 0)  # the seed that draws row 0
    assert TableProblem(shipped, seed=seed).evaluate(params) == row.val_metrics["accuracy"]


def test_an_objective_the_table_does_not_record_is_refused_and_one_it_records_is_its_best_epochs() -> None:
    """The shipped table records each row's FPR at 5% FNR (best epoch) but not the missed-detection rate at 1% FPR."""
    with pytest.raises(UserError, match="objective 'mdr_at_fpr': table 'astro-small' records no mdr_at_1fpr"):
        TableProblem("astro-small", objective="mdr_at_fpr")
    problem = TableProblem("astro-small", objective="fpr_at_fnr")
    assert problem.directions == [optuna.study.StudyDirection.MINIMIZE]
    row = problem.table.rows[0]
    params = {name: row.params[name] for name in problem.search_space}
    assert 0.0 <= problem.evaluate(params) <= 1.0
