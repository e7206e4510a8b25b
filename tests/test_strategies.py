"""Every strategy end to end, and what its sampler proposes: the same seed gives the same configurations, a resumed
or interrupted study continues the search instead of repeating it, each trial's seed follows the study."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from helpers import SMALL_SPACE, assert_refused, fake_train, invoke, store_url, study_config
from optuna.trial import TrialState

from hpo_astro import run as run_module
from hpo_astro.run import RunEvents, run_study
from hpo_astro.space import SearchSpace
from hpo_astro.strategies import STRATEGIES
from hpo_astro.train import TrainState


def _grid_config(tmp_path: Path) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text('strategy = "grid"\n[space]\nconv_layers = [1, 2]\nlr = [1e-3, 1e-2]\nfc_width = [32]\n')
    return path


# --- every strategy through the CLI, real training ----------------------------------------------------------------


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_each_strategy_runs_through_the_cli(strategy: str, tmp_path: Path, small_file: Path) -> None:
    store = store_url(tmp_path)
    extra = ["--config", _grid_config(tmp_path)] if strategy == "grid" else ["--strategy", strategy]
    result = invoke("run", *extra, "--n-trials", 3, "--data", small_file, "--max-epochs", 1, "--storage", store)
    assert result.exit_code == 0, result.output
    assert "3/3 finished trials" in result.stdout
    study = optuna.load_study(study_name=strategy, storage=store)
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) == 3 and len(study.trials) == 3
    for t in trials:
        assert len(t.user_attrs["history"]) == 1 and t.intermediate_values.keys() == {1}
        assert {"best_epoch", "wall_time", "n_params", "device", "val_metrics"} <= t.user_attrs.keys()
    attrs = study.user_attrs
    assert attrs["strategy"] == strategy and attrs["objective"] == "accuracy" and attrs["n_trials"] == 3
    assert len(attrs["data_fingerprint"]) == 16 and "hpo_astro_version" in attrs and "space" in attrs
    status = invoke("status", "--storage", store)
    assert status.exit_code == 0 and strategy in status.stdout and "best params of" in status.stdout


# --- samplers, with the fast stand-in for training ----------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["random", "tpe", "genetic", "bayesian", "ablation", "grid"])
def test_same_seed_gives_the_same_configurations(strategy: str, tmp_path: Path, small_file: Path) -> None:
    space = SearchSpace.from_dict(SMALL_SPACE)

    def configs(seed: int, name: str) -> list[dict]:
        cfg = study_config(
            tmp_path, small_file, strategy=strategy, seed=seed, study=name, n_trials=12, space=space, population_size=4
        )
        return [t.params for t in run_study(cfg, train=fake_train).study.trials]

    first, again, other = configs(0, "a"), configs(0, "b"), configs(1, "c")
    assert first == again
    assert first != other


def test_bayesian_fits_a_gaussian_process_after_startup(tmp_path: Path, small_file: Path) -> None:
    from hpo_astro.strategies import make_sampler

    cfg = study_config(tmp_path, small_file, strategy="bayesian", n_trials=13, space=SearchSpace.from_dict(SMALL_SPACE))
    sampler = make_sampler(cfg)
    assert isinstance(sampler.inner, optuna.samplers.GPSampler)
    original = run_module.make_sampler
    run_module.make_sampler = lambda _cfg: sampler
    try:
        run_study(cfg, train=fake_train)
    finally:
        run_module.make_sampler = original
    assert sampler.inner._gprs_cache_list is not None  # the GP surrogate was fitted for trials 11-13


def test_genetic_population_size_is_used(tmp_path: Path, small_file: Path) -> None:
    from hpo_astro.strategies import make_sampler

    sampler = make_sampler(study_config(tmp_path, small_file, strategy="genetic", population_size=7))
    assert isinstance(sampler.inner, optuna.samplers.NSGAIISampler) and sampler.inner._population_size == 7


def test_grid_refuses_the_full_paper_space(tmp_path: Path, small_file: Path) -> None:
    store = store_url(tmp_path)
    result = invoke("run", "--strategy", "grid", "--n-trials", 3, "--data", small_file, "--storage", store)
    assert_refused(result, "narrow [space]")
    assert not (tmp_path / "optuna.db").exists()


def test_ablation_stops_at_its_plan(tmp_path: Path, small_file: Path) -> None:
    space = SearchSpace.from_dict(SMALL_SPACE)  # 2+2+2+2 = 8 slots
    cfg = study_config(tmp_path, small_file, strategy="ablation", n_trials=50, space=space)
    result = run_study(cfg, train=fake_train)
    assert result.target == 8 and result.finished == 8 and len(result.study.trials) == 8


# --- resumed studies continue the search --------------------------------------------------------------------------


def _configs(study: optuna.Study) -> list[tuple]:
    """The configurations of a study's finished trials, in trial order."""
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    return [tuple(sorted(t.params.items())) for t in finished]


@pytest.mark.parametrize("strategy", ["random", "tpe", "genetic", "bayesian"])
def test_a_resumed_study_continues_the_search_instead_of_repeating_it(
    strategy: str, tmp_path: Path, small_file: Path
) -> None:
    """`run -n 1`, then `-n 2`, `-n 3`, `-n 4`: each process starts from the same seed, yet proposes new
    configurations, the very ones one uninterrupted `-n 4` run proposes (one worker: reproducible)."""

    def run(study: str, n_trials: int) -> optuna.Study:
        cfg = study_config(tmp_path, small_file, strategy=strategy, study=study, n_trials=n_trials)
        return run_study(cfg, train=fake_train).study

    for n in (1, 2, 3, 4):
        stepped = run("stepped", n)
    whole = run("whole", 4)
    assert len(set(_configs(stepped))) == 4  # the paper space: four draws never collide by chance here
    assert _configs(stepped) == _configs(whole)


def test_an_interrupted_random_study_resumes_with_the_uninterrupted_configurations(
    tmp_path: Path, small_file: Path
) -> None:
    """SIGTERM/Ctrl-C mid-trial twice, resuming each time: the finished trials are the same configurations, in the
    same order, as a run that was never interrupted; none is repeated."""
    cfg = study_config(tmp_path, small_file, study="interrupted", n_trials=5)
    for when in (1, 3):

        def interrupt(number: int, state: TrainState, when: int = when) -> None:
            if number == when and state.epoch == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run_study(cfg, RunEvents(on_epoch=interrupt), train=fake_train)
    interrupted = run_study(cfg, train=fake_train).study
    whole = run_study(study_config(tmp_path, small_file, study="whole", n_trials=5), train=fake_train).study
    assert len(set(_configs(interrupted))) == 5
    assert _configs(interrupted) == _configs(whole)


def test_trial_seeds_follow_the_study_not_the_process() -> None:
    from hpo_astro.samplers.trial_seeded import TrialSeededSampler, derive_seed

    study = optuna.create_study(sampler=TrialSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed=3))
    study.enqueue_trial({"x": 0.5})  # fixed parameters: not a draw, so it takes no seed index
    draws = []
    for _ in range(3):
        trial = study.ask()
        draws.append(trial.suggest_float("x", 0, 1))
        study.tell(trial, 0.0)
    expected = [optuna.samplers.RandomSampler(seed=derive_seed(3, k)) for k in range(2)]
    fresh = [optuna.create_study(sampler=s).ask().suggest_float("x", 0, 1) for s in expected]
    assert draws == [0.5, *fresh]
    assert derive_seed(3, 0) != derive_seed(3, 1) != derive_seed(4, 1)
