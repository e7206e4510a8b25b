"""Placing workers on devices: worker i trains on device i mod n (every visible GPU by default, else the CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import assert_refused, fake_train, invoke, study_config

from hpo_astro.study.run import run_study
from hpo_astro.study.workers import device_pool, placed


def test_the_pool_is_the_given_devices_else_every_gpu_else_the_cpu() -> None:
    assert device_pool(("cuda:1", "cpu"), cuda_devices=4) == ["cuda:1", "cpu"]
    assert device_pool((), cuda_devices=3) == ["cuda:0", "cuda:1", "cuda:2"]
    assert device_pool((), cuda_devices=0) == ["cpu"]


def test_workers_take_the_devices_in_turn(tmp_path: Path, small_file: Path) -> None:
    cfg = study_config(tmp_path, small_file)
    pool = ["cuda:0", "cuda:1"]
    assert [placed(cfg, i, pool).devices for i in range(5)] == [("cuda:0",), ("cuda:1",)] * 2 + [("cuda:0",)]


def test_the_objective_trains_on_its_device(tmp_path: Path, small_file: Path) -> None:
    seen: list[object] = []

    def recording(*args: object, **kwargs: object) -> object:
        seen.append(kwargs["device"])
        return fake_train(*args, **kwargs)  # type: ignore[arg-type]

    run_study(study_config(tmp_path, small_file, n_trials=2, devices=("cpu",)), train=recording)
    run_study(study_config(tmp_path, small_file, n_trials=3), train=recording)  # no devices: "auto"
    assert seen == ["cpu", "cpu", "auto"]


@pytest.mark.parametrize(
    ("devices", "message"),
    [("tpu", "unknown device 'tpu'"), ("cuda:0", "CUDA is not available"), ("meta", "unsupported device 'meta'")],
)
def test_bad_devices_are_refused_before_the_store_is_opened(
    devices: str, message: str, tmp_path: Path, small_file: Path
) -> None:
    if devices.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    db = tmp_path / "optuna.db"
    result = invoke("run", "-n", 1, "--data", small_file, "--storage", f"sqlite:///{db}", "--devices", devices)
    assert_refused(result, message)
    assert not db.exists()
