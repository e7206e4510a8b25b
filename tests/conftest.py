"""Shared fixtures: a temporary HOME and an isolated cache directory, small simulated data files, a fast stand-in for
training, and a small study store with real trials shared by the result tests (the helpers they use live in
helpers.py)."""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest
import torch
from helpers import fake_train, make_result_store

from hpo_astro.data import exromana, simulate

# One torch thread per test process, and for the commands the tests start (they default to OMP_NUM_THREADS): the
# suite runs two test processes on two cores, and two threads each oversubscribe them (OpenMP's spinning threads then
# burn the CPU the other process needs). Tests about thread counts set their own.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prepared")


@pytest.fixture(scope="session", autouse=True)
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """HOME is a temporary folder for the whole session, and the cache variables are unset: the user's own cache
    (`~/.cache/hpo-astro`) is out of reach even of a test that undoes its per-test cache redirection, or of a
    subprocess that does not inherit it. `per_test_cache` fails a test that writes to this HOME's cache."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        patch.delenv("XDG_CACHE_HOME", raising=False)
        patch.delenv("HPO_ASTRO_CACHE", raising=False)
        yield home


def default_cache(home: Path) -> Path:
    """Where hpo-astro caches without HPO_ASTRO_CACHE, for the session's HOME (see `prepare.cache_dir`)."""
    return home / ".cache" / "hpo-astro"


@pytest.fixture(autouse=True)
def per_test_cache(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    shared_prepared: Path,
    session_home: Path,
) -> Iterator[Path]:
    """Every test gets its own cache directory, so no test sees another's simulated data.

    Preprocessed tensors (`prepared/`) are shared across the session unless the test asks for `isolated_cache`:
    their file names are content hashes (data file + settings) written atomically, so sharing them changes no
    result, and ZScale of the same small files is not recomputed for each of the ~100 tests that train on them.

    A test that escapes its cache (e.g. by `monkeypatch.undo()`, which also undoes this redirection) would write to
    the default cache, which on a user's machine is their real one: it fails here, at teardown."""
    cache = tmp_path_factory.mktemp("cache")
    if "isolated_cache" not in request.fixturenames:
        (cache / "prepared").symlink_to(shared_prepared, target_is_directory=True)
    monkeypatch.setenv("HPO_ASTRO_CACHE", str(cache))
    yield cache
    escaped = default_cache(session_home)
    if escaped.exists():
        shutil.rmtree(escaped)  # so that the next test is judged on its own writes
        pytest.fail(f"the test wrote to the default cache {escaped} instead of its own HPO_ASTRO_CACHE", pytrace=False)


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
    monkeypatch.setattr(helpers, "TRAINER", fake_train)
