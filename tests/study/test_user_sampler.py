"""A user's own sampler class by import path (`--strategy package.module:ClassName`): how it is built and seeded,
that the study records the path so every command works on the study and a resume imports it again, and that every
bad path is one error line with nothing written. The classes live in tests/user_sampler.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import user_sampler
from helpers import SMALL_SPACE, assert_refused, fake_train, invoke, journal_url, load_study, study_config
from optuna.trial import TrialState

from hpo_astro.core.space import SearchSpace
from hpo_astro.core.train import TrainState
from hpo_astro.study.run import RunEvents, run_study
from hpo_astro.study.strategies import make_sampler

CYCLING = "user_sampler:CyclingSampler"


@pytest.fixture(autouse=True)
def fresh_instances() -> None:
    user_sampler.INSTANCES.clear()


def _small_space_file(tmp_path: Path, strategy: str) -> Path:
    path = tmp_path / "study.toml"
    space = "\n".join(f"{name} = {values!r}".replace("'", '"') for name, values in SMALL_SPACE.items())
    path.write_text(f'strategy = "{strategy}"\n[space]\n{space}\n')
    return path


def test_a_user_sampler_is_built_once_with_the_study_seed_and_keeps_its_state(
    tmp_path: Path, small_file: Path, fake_training: None
) -> None:
    """One instance per process, built with seed=S, used for every trial (not rebuilt per trial, unlike the
    registry's stochastic samplers: a user's sampler may keep state). It samples every parameter: its first 16
    draws are the 16 configurations of the space."""
    store = journal_url(tmp_path)
    config = _small_space_file(tmp_path, CYCLING)
    args = ["run", "--config", config, "-n", 16, "--seed", 7, "--data", small_file, "--max-epochs", 2]
    result = invoke(*args, "--storage", store)
    assert result.exit_code == 0, result.output
    [sampler] = user_sampler.INSTANCES
    assert sampler.seed == 7 and sampler.draws == 16
    study = load_study(store, CYCLING)  # the study name defaults to the strategy
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 16
    assert study.user_attrs["strategy"] == CYCLING and study.user_attrs["seed"] == 7


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("user_sampler:NoSeedSampler", {}), ("user_sampler:KwargsSampler", {"seed": 3})],
)
def test_a_user_sampler_gets_seed_only_when_its_constructor_takes_it(
    strategy: str, expected: dict, tmp_path: Path, small_file: Path
) -> None:
    sampler = make_sampler(study_config(tmp_path, small_file, strategy=strategy, seed=3))
    assert [sampler] == user_sampler.INSTANCES
    assert getattr(sampler, "kwargs", {}) == expected


def test_a_user_sampler_study_resumes_and_a_worker_joins_it(
    tmp_path: Path, small_file: Path, fake_training: None
) -> None:
    """Interrupted mid-trial, then a worker that knows only the study name and store: it imports the recorded
    class again, with the recorded seed, and completes the budget; `run` with the path resumes too."""
    cfg = study_config(
        tmp_path, small_file, strategy=CYCLING, n_trials=4, seed=2, space=SearchSpace.from_dict(SMALL_SPACE)
    )

    def interrupt(number: int, state: TrainState) -> None:
        if number == 1 and state.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, RunEvents(on_epoch=interrupt), train=fake_train)
    del sys.modules["user_sampler"]  # as in a new process: the worker imports the module itself
    try:
        worker = invoke("worker", "--study", CYCLING, "--storage", cfg.storage, "--strategy", CYCLING)
        assert worker.exit_code == 0, worker.output
        assert "4/4 finished trials" in worker.stdout
        fresh = sys.modules["user_sampler"]
        assert [type(s).__name__ for s in fresh.INSTANCES] == ["CyclingSampler"] and fresh.INSTANCES[0].seed == 2
    finally:
        sys.modules["user_sampler"] = user_sampler
    study = load_study(cfg.storage, CYCLING)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 4 and len({tuple(sorted(t.params.items())) for t in finished}) == 4
    extended = invoke(
        "run",
        "--strategy",
        CYCLING,
        "-n",
        6,
        "--seed",
        2,
        "--data",
        small_file,
        "--max-epochs",
        3,
        "--storage",
        cfg.storage,
        "--config",
        _small_space_file(tmp_path, CYCLING),
    )
    assert extended.exit_code == 0, extended.output
    assert "resuming study" in extended.stdout and "6/6 finished trials (2 run by this process)" in extended.stdout


def test_status_compare_and_report_read_a_user_sampler_study(tmp_path: Path, small_file: Path) -> None:
    """Real training (the commands rebuild and evaluate the best model): the recorded import path is shown as the
    strategy; none of these commands needs to import it."""
    store = journal_url(tmp_path)
    config = _small_space_file(tmp_path, "user_sampler:NoSeedSampler")
    run = invoke("run", "--config", config, "-n", 2, "--data", small_file, "--max-epochs", 1, "--storage", store)
    assert run.exit_code == 0, run.output
    name = "user_sampler:NoSeedSampler"
    status = invoke("status", "--storage", store)
    assert status.exit_code == 0 and name in " ".join(status.stdout.split())
    compare = invoke("compare", "--storage", store, "--format", "json")
    assert compare.exit_code == 0, compare.output
    assert f'"strategy": "{name}"' in compare.stdout
    report = invoke("report", "--storage", store, "--out", tmp_path / "report")
    assert report.exit_code == 0, report.output
    assert name in (tmp_path / "report" / "index.html").read_text()


def test_a_module_in_the_working_directory_is_found(
    tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hpo-astro` is a console script, so the working directory is not on sys.path by itself: the import-path
    strategy looks there too (after the installed packages)."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "my_local_samplers.py").write_text(
        "import optuna\n\nclass Local(optuna.samplers.RandomSampler):\n    pass\n"
    )
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(folder))])
    monkeypatch.delitem(sys.modules, "my_local_samplers", raising=False)
    monkeypatch.chdir(folder)
    sampler = make_sampler(study_config(tmp_path, small_file, strategy="my_local_samplers:Local", seed=1))
    assert type(sampler).__name__ == "Local"
    assert sys.path[-1] == str(folder)  # appended: a local file never shadows an installed module


def _broken_modules(folder: Path) -> None:
    (folder / "raises_on_import.py").write_text("raise RuntimeError('the sampler module is broken')\n")
    (folder / "needs_missing_dependency.py").write_text("import not_installed_dependency_xyz\n")
    (folder / "bad_syntax_sampler.py").write_text("class Broken(:\n")


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("no_such_module_xyz:Sampler", "no module named 'no_such_module_xyz' (not installed"),
        ("user_sampler.missing:Sampler", "no module named 'user_sampler.missing'"),
        ("user_sampler:Missing", "user_sampler has no attribute 'Missing'"),
        ("user_sampler:NotASampler", "NotASampler is not an Optuna sampler (a subclass of BaseSampler)"),
        ("user_sampler:not_a_class", "not_a_class is not an Optuna sampler"),
        ("user_sampler:INSTANCES", "INSTANCES is not an Optuna sampler"),
        ("user_sampler:FailingSampler", "FailingSampler(seed=0) failed: ValueError: needs a config file"),
        ("user_sampler:UnfinishedSampler", "UnfinishedSampler() failed: TypeError: Can't instantiate abstract class"),
        ("user_sampler:", "is not a registry name"),
        (":CyclingSampler", "is not a registry name"),
        ("user-sampler:CyclingSampler", "is not a registry name"),
        ("user_sampler:Cycling Sampler", "is not a registry name"),
        ("raises_on_import:Sampler", "importing raises_on_import failed: RuntimeError: the sampler module is broken"),
        (
            "needs_missing_dependency:Sampler",
            "importing needs_missing_dependency failed: ModuleNotFoundError: No module named 'not_installed_dep",
        ),
        ("bad_syntax_sampler:Broken", "importing bad_syntax_sampler failed: SyntaxError"),
        ("annealing", "known: random, ablation, genetic, bayesian, tpe, grid, bohb, qmc, cmaes, pbt, or a sampler"),
    ],
)
def test_a_bad_sampler_path_is_refused_with_nothing_written(
    strategy: str, message: str, tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _broken_modules(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    store = journal_url(tmp_path)
    result = invoke("run", "--strategy", strategy, "-n", 2, "--data", small_file, "--storage", store)
    assert_refused(result, message)
    config = tmp_path / "bad.toml"
    config.write_text(f'strategy = "{strategy}"\nn_trials = 2\n')
    assert_refused(invoke("run", "--config", config, "--data", small_file, "--storage", store), message)
    assert not (tmp_path / "optuna.log").exists()


def test_a_worker_without_the_module_is_refused_with_the_store_untouched(
    tmp_path: Path, small_file: Path, fake_training: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study records the path, not the code: a worker where the module cannot be imported says so in one line
    and writes nothing (its trials are not started)."""
    (tmp_path / "gone_samplers.py").write_text("import optuna\n\nclass S(optuna.samplers.RandomSampler):\n    pass\n")
    with monkeypatch.context() as m:
        m.syspath_prepend(str(tmp_path))
        store = journal_url(tmp_path)
        args = ["--strategy", "gone_samplers:S", "-n", 2, "--data", small_file, "--max-epochs", 1, "--storage", store]
        assert invoke("run", *args).exit_code == 0
    (tmp_path / "gone_samplers.py").unlink()
    monkeypatch.delitem(sys.modules, "gone_samplers")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    study = load_study(store, "gone_samplers:S")
    study.set_user_attr("n_trials", 3)  # one trial left for the worker
    result = invoke("worker", "--study", "gone_samplers:S", "--storage", store, "--trust-sampler")
    assert_refused(result, "no module named 'gone_samplers'")
    assert len(load_study(store, "gone_samplers:S").trials) == 2


def test_the_example_study_file_runs(tmp_path: Path, fake_training: None, small_file: Path) -> None:
    """studies/user-sampler.toml names an importable sampler class; it runs as it stands (storage and data aside)."""
    example = Path(__file__).resolve().parents[2] / "studies" / "user-sampler.toml"
    store = journal_url(tmp_path)
    result = invoke("run", "--config", example, "-n", 3, "--data", small_file, "--storage", store)
    assert result.exit_code == 0, result.output
    study = load_study(store, "user-sampler")
    assert study.user_attrs["strategy"] == "optuna.samplers:BruteForceSampler" and len(study.trials) == 3


def test_a_worker_never_imports_a_sampler_path_only_the_store_names(
    tmp_path: Path, small_file: Path, fake_training: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store is data, maybe someone else's: a worker that joins a study whose strategy is an import path imports
    it only when told to (the same path again with --strategy, or --trust-sampler). Refused: one line, nothing run,
    nothing imported, the store untouched."""
    marker = tmp_path / "ran"
    (tmp_path / "evil_samplers.py").write_text(
        f"import pathlib\nimport optuna\npathlib.Path({str(marker)!r}).write_text('imported')\n\n"
        "class S(optuna.samplers.RandomSampler):\n    pass\n"
    )
    monkeypatch.chdir(tmp_path)
    store = journal_url(tmp_path)
    args = ["--strategy", "evil_samplers:S", "-n", 1, "--data", small_file, "--max-epochs", 1, "--storage", store]
    assert invoke("run", *args).exit_code == 0
    marker.unlink()
    monkeypatch.delitem(sys.modules, "evil_samplers")
    load_study(store, "evil_samplers:S").set_user_attr("n_trials", 2)
    before = (tmp_path / "optuna.log").read_bytes()
    refused = invoke("worker", "--study", "evil_samplers:S", "--storage", store)
    assert_refused(refused, "pass --strategy evil_samplers:S (or --trust-sampler)")
    assert not marker.exists() and "evil_samplers" not in sys.modules
    assert (tmp_path / "optuna.log").read_bytes() == before
    other = invoke("worker", "--study", "evil_samplers:S", "--storage", store, "--strategy", "other:S")
    assert_refused(other, "runs 'evil_samplers:S', not 'other:S'")
    assert not marker.exists()
    joined = invoke("worker", "--study", "evil_samplers:S", "--storage", store, "--strategy", "evil_samplers:S")
    assert joined.exit_code == 0, joined.output
    assert marker.exists() and len(load_study(store, "evil_samplers:S").trials) == 2
