"""Ranges in study files (`{low, high, log, step}`, Optuna's int and float distributions) beside lists (categorical),
and fixed values (one value) that are part of every configuration but no Optuna parameter."""

from __future__ import annotations

import math
from dataclasses import replace as dataclasses_replace
from pathlib import Path

import optuna
import pytest
from helpers import assert_refused, invoke, journal_url, load_study

from hpo_astro.core.space import SearchSpace
from hpo_astro.errors import UserError
from hpo_astro.store.record import params_full
from hpo_astro.study.config import load_config

RANGES = """
[space]
lr = {low = 1e-4, high = 1e-1, log = true}
weight_decay = {low = 1e-5, high = 1e-2, log = true}
conv_layers = {low = 1, high = 3}
fc_width = {low = 32, high = 128, step = 32}
dropout_rate = {low = 0.0, high = 0.3, step = 0.1}
activation = ["ReLU", "GELU"]
batch_size = [64]
t_max = {low = 10, high = 10}
"""


def _file(tmp_path: Path, strategy: str, space: str = RANGES) -> Path:
    path = tmp_path / f"{strategy}.toml"
    path.write_text(
        f'strategy = "{strategy}"\nn_trials = 8\nn_startup_trials = 3\n{space}'.replace(
            "n_startup_trials = 3\n", "n_startup_trials = 3\n" if strategy in ("tpe", "bayesian", "cmaes") else ""
        )
    )
    return path


@pytest.mark.parametrize("strategy", ["random", "tpe", "bayesian", "cmaes"])  # the others: test_strategies.py
def test_a_study_file_with_ranges_runs_and_samples_the_ranges_as_numbers(
    strategy: str, tmp_path: Path, small_file: Path, fake_training: None
) -> None:
    store = journal_url(tmp_path)
    result = invoke("run", "--config", _file(tmp_path, strategy), "--data", small_file, "--storage", store)
    assert result.exit_code == 0, result.output
    study = load_study(store, strategy)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 8
    for trial in trials:
        dists = trial.distributions
        assert set(dists) == {"lr", "weight_decay", "conv_layers", "fc_width", "dropout_rate", "activation"}
        assert dists["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
        assert dists["conv_layers"] == optuna.distributions.IntDistribution(1, 3)
        assert dists["fc_width"] == optuna.distributions.IntDistribution(32, 128, step=32)
        assert dists["dropout_rate"] == optuna.distributions.FloatDistribution(0.0, 0.3, step=0.1)
        assert isinstance(dists["activation"], optuna.distributions.CategoricalDistribution)
        assert 1e-4 <= trial.params["lr"] <= 1e-1 and trial.params["fc_width"] in (32, 64, 96, 128)
        if strategy == "cmaes" and trial.number >= 3:  # past its start-up: proposed by CMA-ES, not its fallback
            assert any(key.startswith("cma:") for key in trial.system_attrs), trial.system_attrs.keys()
        full = params_full(trial)
        assert full["batch_size"] == 64 and full["t_max"] == 10 and full["lr"] == trial.params["lr"]
    assert len({t.params["lr"] for t in trials}) == 8  # a continuous range: no two trials share a learning rate
    assert study.user_attrs["fixed_params"] == {"batch_size": 64, "t_max": 10}


def test_fixed_values_are_not_optuna_parameters_but_study_attributes(
    tmp_path: Path, small_file: Path, fake_training: None
) -> None:
    store = journal_url(tmp_path)
    config = tmp_path / "fixed.toml"
    config.write_text('strategy = "tpe"\nn_trials = 3\n[space]\nlr = [1e-3, 1e-2]\nconv_kernel_size = [3]\n')
    assert invoke("run", "--config", config, "--data", small_file, "--storage", store).exit_code == 0
    study = load_study(store, "tpe")
    assert all(set(t.params) == {"lr"} for t in study.trials)
    assert study.user_attrs["fixed_params"] == {"conv_kernel_size": 3}


@pytest.mark.parametrize("strategy", ["ablation", "grid"])
def test_strategies_that_enumerate_take_finite_ranges_and_refuse_others_with_the_reason(
    strategy: str, tmp_path: Path, small_file: Path, fake_training: None
) -> None:
    store = journal_url(tmp_path)
    finite = "[space]\nconv_layers = {low = 1, high = 3}\ndropout_rate = {low = 0.0, high = 0.2, step = 0.1}\n"
    config = tmp_path / "finite.toml"
    config.write_text(f'strategy = "{strategy}"\nn_trials = 20\n{finite}batch_size = [64]\n')
    result = invoke("run", "--config", config, "--data", small_file, "--storage", store)
    assert result.exit_code == 0, result.output
    trials = load_study(store, strategy).trials
    seen = {(t.params["conv_layers"], round(t.params["dropout_rate"], 9)) for t in trials}
    if strategy == "grid":  # every combination once
        assert seen == {(c, d) for c in (1, 2, 3) for d in (0.0, 0.1, 0.2)} and len(trials) == 9
    else:  # one hyperparameter at a time: 3 + 3 slots, every value of each
        assert len(trials) == 6
        assert {c for c, _ in seen} == {1, 2, 3} and {d for _, d in seen} == {0.0, 0.1, 0.2}
    assert all("batch_size" not in t.params for t in trials)
    if strategy == "ablation":  # a finite range too long to list: the reason is its length, not a missing step
        many = SearchSpace.from_dict({"lr": {"low": 1e-7, "high": 0.1, "step": 1e-7}})
        with pytest.raises(UserError, match=r"lr is the range 1e-07\.\.0\.1 step 1e-07: more than 100,000 values"):
            many.grid("strategy 'ablation'")
        long = tmp_path / "long.toml"  # finite, but a plan longer than a study should be
        long.write_text(
            'strategy = "ablation"\nn_trials = 5\n[space]\nfc_width = {low = 1, high = 8192}\n'
            "t_max = {low = 1, high = 5000}\n"
        )
        result = invoke("run", "--config", long, "--data", small_file, "--storage", journal_url(tmp_path / "long"))
        assert_refused(result, "the ablation plan has 13,192 trials (limit 10,000)")

    endless = tmp_path / "endless.toml"
    endless.write_text(f'strategy = "{strategy}"\nn_trials = 4\n[space]\nlr = {{low = 1e-4, high = 0.1, log = true}}\n')
    other = journal_url(tmp_path / "other")
    result = invoke("run", "--config", endless, "--data", small_file, "--storage", other)
    assert_refused(result, f"strategy '{strategy}' needs a finite list of values, but lr is the range 0.0001..0.1")
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"lr": {"low": 0.1, "high": 0.01}}, "low 0.1 is above high 0.01"),
        ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "lr = 0.0 is out of range"),
        ({"weight_decay": {"low": 0.0, "high": 0.1, "log": True}}, "a log range needs low > 0"),
        ({"lr": {"low": 1e-4, "high": 0.1, "log": True, "step": 0.01}}, "log and step cannot be combined"),
        ({"conv_layers": {"low": 1, "high": 3, "step": 0.5}}, "step of 'conv_layers' must be a whole number"),
        ({"conv_layers": {"low": 1.5, "high": 3}}, "must be a whole number"),
        ({"conv_layers": {"low": 1, "high": 9}}, "out of range"),
        ({"dropout_rate": {"low": 0.0, "high": 1.0}}, "out of range"),
        ({"fc_width": {"low": 32, "high": 64, "stride": 2}}, "takes low, high and optionally log, step"),
        ({"fc_width": {"low": 32}}, "takes low, high"),
        ({"lr": {"low": 1e-4, "high": 0.1, "log": "yes"}}, "log of 'lr' must be true or false"),
        ({"lr": {"low": 1e-4, "high": 0.1, "step": -1}}, "step of 'lr' must be a number above 0"),
        ({"activation": {"low": 1, "high": 2}}, "activation is a choice of names"),
        ({"lr": {"low": 0.5, "high": 4.0, "log": True, "step": 1}}, "log and step cannot be combined"),
        ({"t_max": {"low": 10, "high": 95, "step": 15}}, "high 95 is not low 10 plus a whole number of steps 15"),
        ({"dropout_rate": {"low": 0.0, "high": 0.25, "step": 0.1}}, "use high = 0.2 or 0.3"),
        ({"fc_width": {"low": 32, "high": 48, "step": 32}}, "high 48 is not low 32 plus a whole number of steps"),
    ],
)
def test_a_bad_range_is_refused_in_one_line(space: dict, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("+", r"\+").replace(".", r"\.")):
        SearchSpace.from_dict(space)


def test_a_range_round_trips_through_the_study_record_and_matches_values(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(RANGES)
    space = load_config(path).space
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert space.to_dict()["lr"] == {"low": 1e-4, "high": 0.1, "log": True}
    assert space.match("dropout_rate", "0.2") == 0.2 and space.match("fc_width", 96) == 96
    assert space.values_of("dropout_rate") == (0.0, 0.1, 0.2, 0.3) and space.values_of("lr") is None
    assert space.n_combinations() == math.inf
    for bad in (("fc_width", 100), ("dropout_rate", 0.15), ("lr", 0.5), ("conv_layers", 2.5)):
        with pytest.raises(UserError, match=r"outside the search space|whole number"):
            space.match(*bad)
    assert space.fixed() == {"batch_size": 64, "t_max": 10}
    assert list(space.distributions()) == [
        "lr",
        "weight_decay",
        "conv_layers",
        "fc_width",
        "dropout_rate",
        "activation",
    ]


def test_a_table_over_finite_ranges_is_replayed_with_int_and_float_parameters(tmp_path: Path, small_file: Path) -> None:
    """A table's space may hold ranges with a finite list of values; its replay samples them as Optuna ints and
    floats (ordered to TPE and GP), and every sampled value finds its row, floating-point steps included."""
    import dataclasses
    import itertools
    import json

    from tabular.test_tabular import make_row

    from hpo_astro.core.hyperparameters import DEFAULT_PARAMS
    from hpo_astro.study.config import StudyConfig
    from hpo_astro.study.run import run_study
    from hpo_astro.tabular import Table, TableReplay

    space = {"lr": {"low": 0.01, "high": 0.05, "step": 0.01}, "batch_size": {"low": 16, "high": 64, "step": 16}}
    grid = SearchSpace.from_dict(space).grid("a table")
    rows = tuple(
        make_row({**DEFAULT_PARAMS, "lr": lr, "batch_size": bs}) for lr, bs in itertools.product(*grid.values())
    )
    table = Table(name="ranges", space=space, rows=rows, data_fingerprint="f" * 16, seed=0, max_epochs=10)
    assert table.size == 20 and grid["lr"] == [0.01, 0.02, 0.03, 0.04, 0.05]
    again = Table.from_json(json.loads(json.dumps(table.to_json())))
    assert again.space == space and again.rows == table.rows
    cfg = StudyConfig(
        strategy="tpe", study="replay", storage=journal_url(tmp_path), data=small_file, n_trials=12,
        space=SearchSpace.from_dict(table.space), pruner="none", checkpoint_interval=0, n_startup_trials=4,
    )  # fmt: skip
    result = run_study(cfg, train=TableReplay(table))
    assert result.finished == 12
    for trial in result.study.trials:
        assert isinstance(trial.distributions["lr"], optuna.distributions.FloatDistribution)
        assert trial.distributions["batch_size"] == optuna.distributions.IntDistribution(16, 64, step=16)
        row = table.row(trial.params)
        assert trial.value == pytest.approx(row.val_metrics["accuracy"])
    with pytest.raises(UserError, match="a table needs a finite list of values, but lr is the range"):
        dataclasses.replace(table, space={"lr": {"low": 0.01, "high": 0.05}})


def test_tabulate_refuses_a_range_it_cannot_list_before_opening_the_store(tmp_path: Path, small_file: Path) -> None:
    space = tmp_path / "space.toml"
    space.write_text("[space]\nconv_layers = {low = 1, high = 2}\nlr = {low = 1e-4, high = 0.1, log = true}\n")
    store = journal_url(tmp_path / "store")
    result = invoke("tabulate", "--space", space, "--out", "t", "--storage", store, "--data", small_file)
    assert_refused(result, "a table needs a finite list of values, but lr is the range 0.0001..0.1 (log)")
    assert not (tmp_path / "store").exists()


def test_the_ranges_study_file_loads_and_every_model_based_strategy_takes_it(tmp_path: Path) -> None:
    from hpo_astro.study.strategies import make_sampler

    root = Path(__file__).resolve().parents[2] / "studies"
    cfg = load_config(root / "ranges.toml").validate()
    assert cfg.space.fixed() == {"early_stop_patience": 5}
    assert set(cfg.space.ranges()) == {
        "conv_layers", "fc_layers", "fc_width", "dropout_rate", "lr", "weight_decay", "t_max"
    }  # fmt: skip
    for strategy in ("tpe", "bayesian", "cmaes", "random", "qmc", "genetic", "bohb"):
        make_sampler(dataclasses_replace(cfg, strategy=strategy))
    with pytest.raises(UserError, match="strategy 'grid' needs a finite list of values, but lr is the range"):
        make_sampler(dataclasses_replace(cfg, strategy="grid"))


@pytest.mark.parametrize("strategy", ["grid", "ablation", "optuna.samplers:BruteForceSampler"])
def test_a_study_of_an_earlier_version_resumes_with_its_one_value_lists_still_sampled(
    strategy: str, tmp_path: Path, small_file: Path
) -> None:
    """Before fixed values left Optuna's parameters, a one-value list was sampled like any list; such a study
    (its record has no `fixed_params`) resumes as it ran: the same plan, no configuration twice, no failed trial."""
    from dataclasses import replace

    from helpers import fake_train, study_config

    from hpo_astro.study.run import run_study

    space = SearchSpace.from_dict({"conv_layers": [1, 2, 3], "fc_width": [32]})
    cfg = study_config(tmp_path, small_file, strategy=strategy, space=space, n_trials=2, study="old", max_epochs=1)
    earlier = run_study(replace(cfg, space=replace(space, fixed_sampled=True)), train=fake_train).study
    earlier.set_user_attr("fixed_params", None)  # what a record of the earlier version holds
    assert all(t.params["fc_width"] == 32 for t in earlier.trials)
    study = run_study(replace(cfg, n_trials=3), train=fake_train).study
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == len(study.trials) == 3
    assert sorted(t.params["conv_layers"] for t in trials) == [1, 2, 3]
    assert all(t.params["fc_width"] == 32 for t in trials)
