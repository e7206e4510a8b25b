"""Shared fixtures and helpers: an isolated cache directory, small simulated data files, the CLI runner with its
one-line-error check, and a small study store with real trials shared by the result tests."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from typer.testing import CliRunner, Result

from hpo_astro import study as study_module
from hpo_astro.cli import app
from hpo_astro.config import StudyConfig
from hpo_astro.data import exromana, simulate
from hpo_astro.space import SearchSpace
from hpo_astro.study import run_study

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shared_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prepared")


@pytest.fixture(autouse=True)
def per_test_cache(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    shared_prepared: Path,
) -> Path:
    """Every test gets its own cache directory, so no test sees another's simulated data.

    Preprocessed tensors (`prepared/`) are shared across the session unless the test asks for `isolated_cache`:
    their file names are content hashes (data file + settings) written atomically, so sharing them changes no
    result, and ZScale of the same small files is not recomputed for each of the ~100 tests that train on them."""
    cache = tmp_path_factory.mktemp("cache")
    if "isolated_cache" not in request.fixturenames:
        (cache / "prepared").symlink_to(shared_prepared, target_is_directory=True)
    monkeypatch.setenv("HPO_ASTRO_CACHE", str(cache))
    return cache


@pytest.fixture
def isolated_cache(per_test_cache: Path) -> Path:
    """A cache that starts empty and is this test's alone, for tests that look at what is written to it."""
    return per_test_cache


@pytest.fixture(scope="session")
def small_records() -> dict[str, list[dict]]:
    return simulate.simulate_records(n=240, seed=7)


@pytest.fixture(scope="session")
def small_file(tmp_path_factory: pytest.TempPathFactory, small_records: dict) -> Path:
    return exromana.save(small_records, tmp_path_factory.mktemp("data") / "small.npy")


@pytest.fixture(scope="session")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Large enough for a short training to learn something (about 1,000 records)."""
    return exromana.save(simulate.simulate_records(n=1000, seed=3), tmp_path_factory.mktemp("data") / "train.npy")


def write_npy_object(path: Path, obj: object) -> Path:
    np.save(path, np.asarray(obj, dtype=object), allow_pickle=True)
    return path


# --- the CLI ----------------------------------------------------------------------------------------------------

runner = CliRunner()


def invoke(*args: object) -> Result:
    """Run `hpo-astro ARGS...` in-process; every argument is passed as a string."""
    return runner.invoke(app, [str(a) for a in args])


def assert_refused(result: Result, message: str | re.Pattern[str]) -> None:
    """Bad input: exit code 2, exactly one `error: ...` line on stderr containing `message` (or matching it, for a
    compiled pattern), and no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    if isinstance(message, re.Pattern):
        assert message.search(lines[0]), result.stderr
    else:
        assert message in lines[0], result.stderr
    assert "Traceback" not in result.output


# --- a small store with real studies (compare, report, export, predict) -----------------------------------------

RESULT_SPACE = {  # the smallest models: the result tests are about results, not about training
    "conv_layers": [1],
    "fc_width": [32, 64],
    "lr": [1e-3, 1e-2],
    "batch_size": [64],
    "activation": ["ReLU", "GELU"],
}
GOOD_STUDIES = ("random", "tpe")  # studies with complete trials; "pruned-only" has only pruned and failed ones


def make_result_store(db: Path, data: Path) -> str:
    """Two small real studies (1 epoch per trial) and one whose trials were all pruned or failed."""
    url = f"sqlite:///{db}"
    space = SearchSpace.from_dict(RESULT_SPACE)
    for name, seed in zip(GOOD_STUDIES, (0, 1), strict=True):
        run_study(StudyConfig(strategy=name, storage=url, data=data, max_epochs=1, n_trials=3, space=space, seed=seed))
    with pytest.MonkeyPatch.context() as mp:  # a pruner that prunes every trial after its first epoch
        mp.setattr(study_module, "make_pruner", lambda cfg: optuna.pruners.ThresholdPruner(lower=2.0))
        cfg = StudyConfig(study="pruned-only", storage=url, data=data, max_epochs=2, n_trials=2, space=space)
        run_study(cfg)
    failed = optuna.load_study(study_name="pruned-only", storage=url)
    failed.tell(failed.ask(), state=TrialState.FAIL)
    return url


@pytest.fixture(scope="session")
def result_template(tmp_path_factory: pytest.TempPathFactory, small_file: Path) -> Path:
    """The store of `make_result_store`, built once per test session."""
    db = tmp_path_factory.mktemp("result-template") / "template.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPO_ASTRO_CACHE", str(tmp_path_factory.mktemp("cache")))
        make_result_store(db, small_file)
    return db


@pytest.fixture
def store(result_template: Path, tmp_path: Path) -> str:
    """A private copy of the result store for one test, so tests that write to it do not see each other."""
    db = tmp_path / "optuna.db"
    with sqlite3.connect(result_template) as source, sqlite3.connect(db) as copy:
        source.backup(copy)  # a consistent copy, whatever the journal mode
    return f"sqlite:///{db}"
