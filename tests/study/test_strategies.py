"""Every strategy end to end, and what its sampler proposes: the same seed gives the same configurations, a resumed
or interrupted study continues the search instead of repeating it, each trial's seed follows the study."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import optuna
import pytest
from helpers import SMALL_SPACE, assert_refused, fake_train, invoke, journal_url, load_study, study_config
from optuna.trial import TrialState

from hpo_astro.core.space import SearchSpace
from hpo_astro.core.train import TrainState
from hpo_astro.store.record import trial_history
from hpo_astro.study import run as run_module
from hpo_astro.study.run import RunEvents, run_study
from hpo_astro.study.strategies import STRATEGIES


def _grid_config(tmp_path: Path) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text('strategy = "grid"\n[space]\nconv_layers = [1, 2]\nlr = [1e-3, 1e-2]\nfc_width = [32]\n')
    return path


# --- every strategy through the CLI, real training ----------------------------------------------------------------


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_each_strategy_runs_through_the_cli(strategy: str, tmp_path: Path, small_file: Path) -> None:
    store = journal_url(tmp_path)
    if strategy == "grid":
        extra = ["--config", _grid_config(tmp_path)]
    else:  # the paper's space without its slowest corners (many small batches, deep stacks): seconds, not minutes
        cheap = tmp_path / "cheap.toml"  # ranges as well as lists; a log range only where nothing must enumerate it
        lr = "lr = [1e-3, 1e-2]" if strategy == "ablation" else "lr = {low = 1e-4, high = 1e-1, log = true}"
        pbt = "population_size = 3\nready = 1\n" if strategy == "pbt" else ""  # one generation of 3 members
        cheap.write_text(
            f"{pbt}[space]\nbatch_size = [64, 256]\nconv_layers = {{low = 1, high = 2}}\nfc_layers = [1, 2]\n{lr}\n"
        )
        extra = ["--config", cheap, "--strategy", strategy]
    result = invoke("run", *extra, "--n-trials", 3, "--data", small_file, "--max-epochs", 1, "--storage", store)
    assert result.exit_code == 0, result.output
    assert "3/3 finished trials" in result.stdout
    study = load_study(store, strategy)
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) == 3 and len(study.trials) == 3
    for t in trials:
        assert len(trial_history(t)) == 1 and t.intermediate_values.keys() == {1}
        assert {"best_epoch", "wall_time", "n_params", "device", "val_metrics"} <= t.user_attrs.keys()
    attrs = study.user_attrs
    assert attrs["strategy"] == strategy and attrs["objective"] == "accuracy" and attrs["n_trials"] == 3
    assert len(attrs["data_fingerprint"]) == 16 and "hpo_astro_version" in attrs and "space" in attrs
    status = invoke("status", "--storage", store)
    assert status.exit_code == 0 and strategy in status.stdout and "best params of" in status.stdout


# --- samplers, with the fast stand-in for training ----------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["random", "tpe", "genetic", "bayesian", "ablation", "grid", "bohb", "qmc"])
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
    from hpo_astro.study.strategies import make_sampler

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
    from hpo_astro.study.strategies import make_sampler

    sampler = make_sampler(study_config(tmp_path, small_file, strategy="genetic", population_size=7))
    assert isinstance(sampler.inner, optuna.samplers.NSGAIISampler) and sampler.inner._population_size == 7


def test_grid_refuses_the_full_paper_space(tmp_path: Path, small_file: Path) -> None:
    store = journal_url(tmp_path)
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


@pytest.mark.parametrize("strategy", ["random", "tpe", "genetic", "bayesian", "bohb", "qmc"])
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


# --- the strategies from the seed surveys: bohb, qmc, a user's sampler by import path; cmaes refused ----------------

NEW_STRATEGIES = ["bohb", "qmc", "user_sampler:CyclingSampler"]  # tests/user_sampler.py is importable here


@pytest.mark.parametrize("strategy", NEW_STRATEGIES)
def test_new_strategies_run_and_resume_through_the_cli(
    strategy: str, tmp_path: Path, small_file: Path, fake_training: None
) -> None:
    """A tiny study through the CLI, extended (`-n 3`, then `-n 6`): the second run resumes the same study and
    proposes new configurations; a third run finds the budget done and runs nothing."""
    store = journal_url(tmp_path)
    base = ["run", "--strategy", strategy, "--data", small_file, "--max-epochs", 3, "--storage", store]
    first = invoke(*base, "--n-trials", 3)
    assert first.exit_code == 0, first.output
    assert "3/3 finished trials (3 run by this process)" in first.stdout
    second = invoke(*base, "--n-trials", 6)
    assert second.exit_code == 0, second.output
    assert "resuming study" in second.stdout and "6/6 finished trials (3 run by this process)" in second.stdout
    study = load_study(store, strategy)
    assert len(study.trials) == 6 and len(set(_configs(study))) == 6
    assert study.user_attrs["strategy"] == strategy and study.user_attrs["n_trials"] == 6
    again = invoke(*base, "--n-trials", 6)
    assert again.exit_code == 0 and "6/6 finished trials (0 run by this process)" in again.stdout
    status = invoke("status", "--storage", store)
    assert status.exit_code == 0 and strategy in status.stdout


@pytest.mark.parametrize("strategy", NEW_STRATEGIES)
def test_new_strategies_resume_an_interrupted_study_with_the_uninterrupted_configurations(
    strategy: str, tmp_path: Path, small_file: Path, fake_training: None
) -> None:
    """Ctrl-C inside a trial, then the same command through the CLI: exactly the budget, and the configurations of
    a run that was never interrupted, in the same order (one worker)."""
    cfg = study_config(tmp_path, small_file, strategy=strategy, study="interrupted", n_trials=5)

    def interrupt(number: int, state: TrainState) -> None:
        if number == 2 and state.epoch == 1:  # after the first epoch: a trial bohb's Hyperband prunes gets there too
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, RunEvents(on_epoch=interrupt), train=fake_train)
    args = ["--strategy", strategy, "--data", small_file, "--max-epochs", 3, "--storage", cfg.storage]
    resumed = invoke("run", *args, "--study", "interrupted", "--n-trials", 5)
    assert resumed.exit_code == 0, resumed.output
    assert "5/5 finished trials (3 run by this process)" in resumed.stdout
    whole = invoke("run", *args, "--study", "whole", "--n-trials", 5)
    assert whole.exit_code == 0, whole.output
    interrupted = load_study(cfg.storage, "interrupted")
    assert _configs(interrupted) == _configs(load_study(cfg.storage, "whole"))
    assert [t.state for t in interrupted.trials].count(TrialState.FAIL) == 1  # the interrupted one, re-queued


@pytest.mark.parametrize(("created", "other"), [("bohb", "tpe"), ("qmc", "random"), (NEW_STRATEGIES[2], "qmc")])
def test_a_study_of_a_new_strategy_is_not_resumed_by_another(
    created: str, other: str, tmp_path: Path, small_file: Path, fake_training: None
) -> None:
    store = journal_url(tmp_path)
    base = ["run", "--n-trials", 1, "--data", small_file, "--max-epochs", 1, "--storage", store, "--study", "s"]
    assert invoke(*base, "--strategy", created).exit_code == 0
    before = load_study(store, "s")
    result = invoke(*base, "--strategy", other)
    assert_refused(result, "different strategy")
    after = load_study(store, "s")
    assert after.user_attrs == before.user_attrs and len(after.trials) == len(before.trials) == 1


def test_the_run_help_lists_every_strategy_and_the_import_path_form() -> None:
    import re

    import typer

    from hpo_astro.cli import app

    options = {p.name: p for p in typer.main.get_command(app).commands["run"].params}
    strategy_help = options["strategy"].help
    for name in STRATEGIES:
        assert re.search(rf"\b{name}\b", strategy_help), name
    assert "package.module:ClassName" in strategy_help
    assert "hyperband for bohb" in options["pruner"].help  # the --pruner help says what the default is


# bohb: TPE with the Hyperband pruner on epochs, unless the user names another pruner


def test_bohb_is_multivariate_tpe_with_hyperband_by_default(tmp_path: Path, small_file: Path) -> None:
    from hpo_astro.study.strategies import make_pruner, make_sampler

    cfg = study_config(tmp_path, small_file, strategy="bohb", max_epochs=9).validate()
    sampler = make_sampler(cfg)
    assert isinstance(sampler.inner, optuna.samplers.TPESampler) and sampler.inner._multivariate is True
    assert cfg.pruner == "hyperband"  # resolved by validate: what the study records
    pruner = make_pruner(cfg)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner) and pruner._max_resource == 9
    tpe = study_config(tmp_path, small_file, strategy="tpe").validate()
    assert tpe.pruner == "none"  # the other strategies keep no pruner by default


@pytest.mark.parametrize(
    ("pruner_args", "file_pruner", "expected"),
    [
        ([], None, "hyperband"),  # nothing given: the strategy's default
        (["--pruner", "median"], None, "median"),  # the command line names another
        ([], "successive-halving", "successive-halving"),  # the study file names another
        ([], "none", "none"),  # an explicit "none" in the file is a choice too
        (["--pruner", "hyperband"], "none", "hyperband"),  # the command line over the file
    ],
)
def test_bohb_pruner_default_and_override_are_recorded(
    pruner_args: list[str],
    file_pruner: str | None,
    expected: str,
    tmp_path: Path,
    small_file: Path,
    fake_training: None,
) -> None:
    config = tmp_path / "bohb.toml"
    config.write_text('strategy = "bohb"\n' + (f'pruner = "{file_pruner}"\n' if file_pruner else ""))
    store = journal_url(tmp_path)
    result = invoke(
        "run", "--config", config, *pruner_args, "-n", 2, "--data", small_file, "--max-epochs", 3, "--storage", store
    )
    assert result.exit_code == 0, result.output
    assert load_study(store, "bohb").user_attrs["pruner"] == expected
    from hpo_astro.study.strategies import PRUNERS, make_pruner
    from hpo_astro.study.workers import config_from_study

    joined = config_from_study(store, "bohb")  # a worker runs with the pruner the study recorded
    assert joined.pruner == expected
    assert type(make_pruner(joined)) is type(PRUNERS[expected](joined))


def test_bohb_prunes_on_epochs(tmp_path: Path, small_file: Path, fake_training: None) -> None:
    store = journal_url(tmp_path)
    args = ["--strategy", "bohb", "-n", 16, "--max-epochs", 9, "--seed", 3, "--data", small_file, "--storage", store]
    result = invoke("run", *args)
    assert result.exit_code == 0, result.output
    study = load_study(store, "bohb")
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned and any(len(trial_history(t)) < 9 for t in pruned)  # stopped at a Hyperband rung
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 16


def test_bohb_refuses_an_unknown_pruner(tmp_path: Path, small_file: Path) -> None:
    args = ["--strategy", "bohb", "--pruner", "hyperbnad", "-n", 2, "--data", small_file]
    assert_refused(invoke("run", *args, "--storage", journal_url(tmp_path)), "'hyperbnad' is not one of 'none'")
    (tmp_path / "bohb.toml").write_text('strategy = "bohb"\npruner = "hyperbnad"\n')
    args = ["--config", tmp_path / "bohb.toml", "-n", 2, "--data", small_file]
    assert_refused(invoke("run", *args, "--storage", journal_url(tmp_path)), "unknown pruner 'hyperbnad'")
    assert not (tmp_path / "optuna.db").exists()


# qmc: one scrambled Sobol sequence per study, continued across processes


def _qmc_study(tmp_path: Path, small_file: Path, study: str, n_trials: int, seed: int = 0) -> optuna.Study:
    cfg = study_config(
        tmp_path, small_file, strategy="qmc", study=study, n_trials=n_trials, space=SearchSpace.from_dict(SMALL_SPACE)
    )
    return run_study(dataclasses.replace(cfg, seed=seed), train=fake_train).study


def test_qmc_spreads_its_points_over_the_space(tmp_path: Path, small_file: Path) -> None:
    """SMALL_SPACE has 16 configurations (four hyperparameters, two values each). Optuna's QMCSampler draws the
    first trial at random (it learns the space from it), then Sobol points: the next 16 trials are the 16
    configurations, each value taken 8 times. A sampler restarted for every trial would draw the first point of
    a new sequence each time: independent uniform draws, which repeat configurations (16 draws without a repeat
    happen with probability 16!/16**16, about 1e-6)."""
    study = _qmc_study(tmp_path, small_file, "qmc", n_trials=17)
    sobol = _configs(study)[1:]
    assert len(sobol) == 16 and len(set(sobol)) == 16
    for name, values in SMALL_SPACE.items():
        taken = [dict(c)[name] for c in sobol]
        assert [taken.count(v) for v in values] == [8, 8], name


def test_qmc_resumed_continues_the_sequence(tmp_path: Path, small_file: Path) -> None:
    """Stopped after 9 trials and extended to 17 by a new run: the sequence goes on where it stopped (a restart
    would repeat its first points), the same configurations as one run of 17."""
    _qmc_study(tmp_path, small_file, "stepped", n_trials=9)
    stepped = _qmc_study(tmp_path, small_file, "stepped", n_trials=17)
    whole = _qmc_study(tmp_path, small_file, "whole", n_trials=17)
    assert len(set(_configs(stepped)[1:])) == 16
    assert _configs(stepped) == _configs(whole)


def test_qmc_is_built_once_with_the_study_seed(tmp_path: Path, small_file: Path) -> None:
    from hpo_astro.study.strategies import SHARED_PLAN, make_sampler

    sampler = make_sampler(study_config(tmp_path, small_file, strategy="qmc", seed=5))
    assert "qmc" in SHARED_PLAN and isinstance(sampler, optuna.samplers.QMCSampler)
    assert sampler._seed == 5 and sampler._scramble and sampler._qmc_type == "sobol"


# cmaes: runs where the space has ranges; refused on lists, which it would only draw at random


def test_cmaes_is_refused_without_two_ranges_with_the_reason(tmp_path: Path, small_file: Path) -> None:
    store = journal_url(tmp_path)
    result = invoke("run", "--strategy", "cmaes", "-n", 2, "--data", small_file, "--storage", store)
    assert_refused(result, "strategy 'cmaes' needs at least two hyperparameters given as ranges")
    config = tmp_path / "cmaes.toml"
    config.write_text('strategy = "cmaes"\nn_trials = 2\n[space]\nlr = {low = 1e-4, high = 0.1, log = true}\n')
    assert_refused(invoke("run", "--config", config, "--data", small_file, "--storage", store), "got 1: lr")
    assert not (tmp_path / "optuna.db").exists() and not list(tmp_path.glob("*.log"))


def test_cmaes_models_the_ranges_and_draws_the_lists_at_random(tmp_path: Path, small_file: Path) -> None:
    """With two ranges CMA-ES proposes them from its own state (stored with each trial, so a resumed study goes
    on), not from its random fallback."""
    from hpo_astro.study.strategies import make_sampler

    space = SearchSpace.from_dict(
        {"lr": {"low": 1e-4, "high": 0.1, "log": True}, "weight_decay": {"low": 1e-5, "high": 1e-2, "log": True}}
    )
    cfg = study_config(tmp_path, small_file, strategy="cmaes", space=space, n_startup_trials=0)
    study = optuna.create_study(sampler=make_sampler(cfg))

    def objective(trial: optuna.Trial) -> float:
        lr, decay = (
            trial.suggest_float("lr", 1e-4, 0.1, log=True),
            trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True),
        )
        return abs(math.log10(lr) + 2) + abs(math.log10(decay) + 4)

    study.optimize(objective, n_trials=6)
    assert any(key.startswith("cma:") for t in study.trials for key in t.system_attrs)


def test_cmaes_on_this_space_is_its_random_fallback() -> None:
    """Why cmaes is refused: on categorical parameters (every hyperparameter here: `suggest_categorical` over the
    space's lists) Optuna's CmaEsSampler draws every value with its RandomSampler fallback, the very draws of a
    RandomSampler with the same seed. If a later Optuna models categorical parameters, this fails: reconsider."""
    space = SearchSpace.paper()

    def configurations(sampler: optuna.samplers.BaseSampler) -> list[dict]:
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda t: sum(len(str(t.suggest_categorical(n, list(v)))) for n, v in space.items()), 15)
        return [t.params for t in study.trials]

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one fallback warning per parameter and trial
    try:
        cmaes = configurations(optuna.samplers.CmaEsSampler(seed=4))
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert cmaes == configurations(optuna.samplers.RandomSampler(seed=4))


def test_the_study_files_of_the_new_strategies_load() -> None:
    from hpo_astro.study.config import load_config
    from hpo_astro.study.strategies import make_pruner, make_sampler

    root = Path(__file__).resolve().parents[2] / "studies"
    expected = {
        "bohb": ("bohb", 100, "hyperband", optuna.pruners.HyperbandPruner),
        "qmc": ("qmc", 65, "none", optuna.pruners.NopPruner),
        "user-sampler": ("optuna.samplers:BruteForceSampler", 8, "none", optuna.pruners.NopPruner),
    }
    for name, (strategy, n_trials, pruner, pruner_class) in expected.items():
        cfg = load_config(root / f"{name}.toml").validate()
        assert (cfg.strategy, cfg.n_trials, cfg.study_name, cfg.pruner) == (strategy, n_trials, name, pruner)
        assert isinstance(make_pruner(cfg), pruner_class)
        make_sampler(cfg)
    assert load_config(root / "bohb.toml").space == load_config(root / "qmc.toml").space == SearchSpace.paper()
    assert make_pruner(load_config(root / "bohb.toml").validate())._max_resource == 100  # the largest t_max
