"""Confirmation (`hpo-astro confirm`, `hpo_astro.study.confirm`): the finalists trained again with fresh seeds, in a
linked study; compare and export then take the best confirmed mean."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_refused, invoke, load_study, noise_splits, scripted_trainer
from optuna.trial import TrialState

from hpo_astro.core.space import SearchSpace
from hpo_astro.errors import UserError
from hpo_astro.results.choice import best_trial, choose_trial
from hpo_astro.study.config import StudyConfig
from hpo_astro.study.confirm import confirm_study, finalists
from hpo_astro.study.run import run_study

SPACE = SearchSpace.from_dict({"lr": [1e-4, 1e-3, 1e-2]})
STEADY, LUCKY, POOR = 1e-3, 1e-2, 1e-4


def steady_lucky_poor(params: Mapping[str, Any], seed: int) -> float:
    """Seed 0 (the search's): the lucky configuration 0.95, the steady one 0.80, the poor one 0.50. Any other seed:
    lucky 0.60, steady 0.80, poor 0.50."""
    lr = float(params["lr"])
    if lr == LUCKY:
        return 0.95 if seed == 0 else 0.60
    return 0.80 if lr == STEADY else 0.50


def searched(tmp_path: Path, **overrides: Any) -> StudyConfig:
    """A grid search of the three configurations, one run each with seed 0, in a SQLite store."""
    cfg = StudyConfig(
        strategy="grid", study="search", storage=f"sqlite:///{tmp_path / 'optuna.db'}", n_trials=3, space=SPACE
    )
    cfg = cfg.merged(**overrides)
    run_study(cfg, train=scripted_trainer(steady_lucky_poor), data=noise_splits())
    return cfg


def test_confirm_trains_the_finalists_with_fresh_seeds_and_the_choice_moves_to_the_best_confirmed_mean(
    tmp_path: Path,
) -> None:
    cfg = searched(tmp_path)
    source = load_study(cfg.storage, "search")
    assert best_trial(source).params["lr"] == LUCKY  # the search's choice: the lucky run
    seen: list[int] = []

    def final(params: Mapping[str, Any], seed: int) -> float:
        seen.append(seed)
        return steady_lucky_poor(params, seed)

    result = confirm_study(cfg.storage, "search", top_k=2, seeds=3, train=scripted_trainer(final), data=noise_splits())
    assert sorted(seen) == [1, 1, 2, 2, 3, 3]  # fresh seeds: the search trained with seed 0 only
    assert result.study == "search/confirm"
    by_trial = {c.trial: c for c in result.configurations}
    numbers = {t.params["lr"]: t.number for t in source.trials}
    assert set(by_trial) == {numbers[LUCKY], numbers[STEADY]}  # the top 2 of the search, not the poor one
    assert by_trial[numbers[LUCKY]].mean == pytest.approx(0.60) and by_trial[numbers[STEADY]].mean == pytest.approx(0.8)
    assert result.best is not None and result.best.trial == numbers[STEADY]
    low, high = by_trial[numbers[STEADY]].ci
    assert low == pytest.approx(0.8) and high == pytest.approx(0.8)  # three equal runs: no spread
    source = load_study(cfg.storage, "search")
    choice = choose_trial(source)
    assert choice.trial.number == numbers[STEADY]
    assert "best confirmed mean" in choice.describe() and "search/confirm" in choice.describe()
    confirmation = load_study(cfg.storage, "search/confirm")
    assert confirmation.user_attrs["strategy"] == "confirm" and confirmation.user_attrs["eval_seeds"] == 3
    assert len(confirmation.get_trials(states=(TrialState.COMPLETE,))) == 2


def test_the_fresh_seeds_follow_the_searchs_own_seeds(tmp_path: Path) -> None:
    cfg = searched(tmp_path, seed=10, eval_seeds=2)  # the search trained with seeds 10 and 11
    seen: list[int] = []

    def final(params: Mapping[str, Any], seed: int) -> float:
        seen.append(seed)
        return 0.5

    confirm_study(cfg.storage, "search", top_k=1, seeds=2, train=scripted_trainer(final), data=noise_splits())
    assert seen == [12, 13]


def test_finalists_are_distinct_configurations_best_first() -> None:
    import optuna

    study = optuna.create_study(direction="maximize")
    for lr, value in [(1e-3, 0.7), (1e-2, 0.9), (1e-3, 0.8), (1e-4, 0.9)]:
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": lr},
                distributions={"lr": optuna.distributions.CategoricalDistribution([1e-4, 1e-3, 1e-2])},
                value=value,
            )
        )
    assert [t.number for t in finalists(study, 5)] == [1, 3, 2]  # tie: the earlier first; 1e-3 once, its best


def test_an_interrupted_confirmation_resumes_and_a_finished_one_runs_nothing(tmp_path: Path) -> None:
    cfg = searched(tmp_path)
    calls: list[int] = []

    def interrupting(params: Mapping[str, Any], data: Any, seed: int = 0, **kw: Any) -> Any:
        calls.append(seed)
        if len(calls) == 4:  # the second finalist's second run
            raise KeyboardInterrupt
        return scripted_trainer(steady_lucky_poor)(params, data, seed=seed, **kw)

    with pytest.raises(KeyboardInterrupt):
        confirm_study(cfg.storage, "search", top_k=2, seeds=3, train=interrupting, data=noise_splits())
    result = confirm_study(cfg.storage, "search", top_k=2, seeds=3, train=interrupting, data=noise_splits())
    assert all(len(c.values) == 3 for c in result.configurations)
    confirmation = load_study(cfg.storage, "search/confirm")
    assert len(confirmation.get_trials(states=(TrialState.COMPLETE,))) == 2
    calls.clear()
    again = confirm_study(cfg.storage, "search", top_k=2, seeds=3, train=interrupting, data=noise_splits())
    assert calls == [] and again.best == result.best  # nothing left to train


def test_other_finalists_or_seeds_are_refused_for_an_existing_confirmation(tmp_path: Path) -> None:
    cfg = searched(tmp_path)
    train = scripted_trainer(steady_lucky_poor)
    confirm_study(cfg.storage, "search", top_k=1, seeds=2, train=train, data=noise_splits())
    with pytest.raises(UserError, match=r"confirms trials .* the finalists are now trials"):
        confirm_study(cfg.storage, "search", top_k=2, seeds=2, train=train, data=noise_splits())
    with pytest.raises(UserError, match="different eval seeds"):
        confirm_study(cfg.storage, "search", top_k=1, seeds=3, train=train, data=noise_splits())
    other = confirm_study(cfg.storage, "search", 2, 2, "search/confirm-2", train=train, data=noise_splits())
    assert other.study == "search/confirm-2" and len(other.configurations) == 2


def test_confirm_and_compare_from_the_command_line(tmp_path: Path, small_file: Path) -> None:
    store = f"sqlite:///{tmp_path / 'cli.db'}"
    train = scripted_trainer(steady_lucky_poor)
    study_file = tmp_path / "study.toml"
    study_file.write_text(
        f'strategy = "grid"\nn_trials = 3\nmax_epochs = 1\ndata = "{small_file}"\n[space]\nlr = [1e-4, 1e-3, 1e-2]\n'
    )
    assert invoke("run", "--config", study_file, "--storage", store, "--study", "s", train=train).exit_code == 0
    args = ("--study", "s", "--storage", store, "--top-k", "2", "--seeds", "2", "--stack-runs", "off")
    result = invoke("confirm", *args, train=train)
    assert result.exit_code == 0, result.output
    confirmed = load_study(store, "s/confirm").trials
    assert {t.user_attrs["eval_stacking"] for t in confirmed} == {"stacking turned off"}  # the option arrived
    steady = next(t.number for t in load_study(store, "s").trials if t.params["lr"] == STEADY)
    assert f"now take trial #{steady} of 's'" in result.output
    compared = invoke("compare", "--storage", store, "--study", "s", "--format", "json")
    assert compared.exit_code == 0, compared.output
    (row,) = json.loads(compared.stdout)["studies"]
    assert row["best_trial"] == steady and row["chosen_by"].startswith("the best confirmed mean")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--study", "nope"), "no study named 'nope'"),
        (("--study", "s", "--seeds", "1"), "Invalid value for '--seeds'"),
        (("--study", "s", "--top-k", "0"), "Invalid value for '--top-k'"),
    ],
)
def test_bad_confirmations_are_refused_in_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    cfg = searched(tmp_path)
    before = (tmp_path / "optuna.db").read_bytes()
    assert_refused(invoke("confirm", "--storage", cfg.storage, *args), message)
    assert (tmp_path / "optuna.db").read_bytes() == before


def test_a_store_that_does_not_exist_is_not_created(tmp_path: Path) -> None:
    assert_refused(invoke("confirm", "--storage", f"sqlite:///{tmp_path / 'none.db'}", "--study", "s"), "")
    assert not (tmp_path / "none.db").exists()
