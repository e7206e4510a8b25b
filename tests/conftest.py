"""Shared fixtures: an isolated cache directory and small simulated data files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hpo_astro.data import exromana, simulate

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache, so no test sees another's simulated data or tensors."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("HPO_ASTRO_CACHE", str(cache))
    return cache


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
