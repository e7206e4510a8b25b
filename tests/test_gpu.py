"""GPU placement, on machines with CUDA (skipped elsewhere): workers train on the visible GPUs, worker i on GPU
i mod n, and the CPU path stays for `--devices cpu`."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from helpers import invoke

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_workers_train_on_the_gpus(tmp_path: Path, small_file: Path) -> None:
    store = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["run", "-n", 4, "--data", small_file, "--max-epochs", 1, "--storage", store, "--workers", 2]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="random", storage=store).trials
    expected = {f"cuda:{i}" for i in range(min(2, torch.cuda.device_count()))}
    assert {t.user_attrs["device"] for t in trials if "device" in t.user_attrs} <= expected | {"cuda"}


def test_devices_cpu_keeps_training_on_the_cpu(tmp_path: Path, small_file: Path) -> None:
    store = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["run", "-n", 1, "--data", small_file, "--max-epochs", 1, "--storage", store, "--devices", "cpu"]
    assert invoke(*args).exit_code == 0
    (trial,) = optuna.load_study(study_name="random", storage=store).trials
    assert trial.user_attrs["device"] == "cpu"
