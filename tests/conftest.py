"""Shared fixtures: an isolated cache directory, small simulated data files, a fast stand-in for training, and a small
study store with real trials shared by the result tests (the helpers they use live in helpers.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch
from helpers import fake_train, make_result_store

from hpo_astro import objective as objective_module
from hpo_astro.data import exromana, simulate

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


@pytest.fixture
def fake_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials of CLI commands train in milliseconds: `helpers.fake_train` becomes the objective's default trainer.
    Only for `invoke(...)`, which cannot pass a trainer; tests that call `run_study` pass `train=fake_train`."""
    monkeypatch.setattr(objective_module, "default_train", fake_train)
