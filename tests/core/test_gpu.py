"""On machines with CUDA (skipped elsewhere): workers train on the visible GPUs, worker i on GPU i mod n, the CPU
path stays for `--devices cpu`; the captured train step (a CUDA graph) trains as the eager one does, handles the
last partial batch, is reproducible per seed and resumes from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from helpers import invoke, noise_splits

from hpo_astro.core.hyperparameters import DEFAULT_PARAMS
from hpo_astro.core.train import CapturedStep, TrainState, train

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


# 45 training images in batches of 8: five full batches (three warm-up steps, one capture, one replay per epoch after
# the first) and a partial batch of 5, which runs eagerly.
PARAMS = {**DEFAULT_PARAMS, "conv_layers": 2, "fc_layers": 1, "fc_width": 32, "batch_size": 8, "t_max": 4}


def _curves(result: Any) -> list[tuple[float, float, float]]:
    return [(h.train_loss, h.val_loss, h.lr) for h in result.history]


def test_the_captured_step_is_used_and_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    replays: list[int] = []
    replay = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", lambda self: (replays.append(1), replay(self))[1])
    train(PARAMS, noise_splits(45, seed=5), seed=0, device="cuda", early_stopping=False)
    assert len(replays) == 4 * 5 - CapturedStep.WARMUP  # every full batch after the warm-up steps
    replays.clear()
    train(PARAMS, noise_splits(45, seed=5), seed=0, device="cuda", early_stopping=False, capture=False)
    assert replays == []


def test_captured_and_eager_training_agree() -> None:
    captured = train(PARAMS, noise_splits(45, seed=5), seed=1, device="cuda", early_stopping=False)
    eager = train(PARAMS, noise_splits(45, seed=5), seed=1, device="cuda", early_stopping=False, capture=False)
    assert len(captured.history) == len(eager.history) == 4
    for a, b in zip(_curves(captured), _curves(eager), strict=True):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-4)


def test_the_same_seed_gives_the_same_captured_run() -> None:
    first = train(PARAMS, noise_splits(45, seed=5), seed=2, device="cuda", early_stopping=False)
    again = train(PARAMS, noise_splits(45, seed=5), seed=2, device="cuda", early_stopping=False)
    assert _curves(first) == _curves(again)


def test_a_captured_run_resumes_from_its_checkpoint() -> None:
    whole = train(PARAMS, noise_splits(45, seed=5), seed=3, device="cuda", early_stopping=False)
    saved: list[dict[str, Any]] = []

    class StopAfterTwo:
        def on_epoch_end(self, state: TrainState) -> None:
            if state.epoch == 2:
                saved.append(state.checkpoint())
                state.request_stop("interrupted")

    train(PARAMS, noise_splits(45, seed=5), callbacks=[StopAfterTwo()], seed=3, device="cuda", early_stopping=False)
    checkpoint = {**saved[0], "stop_reason": None}
    resumed = train(PARAMS, noise_splits(45, seed=5), seed=3, device="cuda", early_stopping=False, resume=checkpoint)
    for a, b in zip(_curves(resumed), _curves(whole), strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    eager = train(
        PARAMS, noise_splits(45, seed=5), seed=3, device="cuda", early_stopping=False, resume=checkpoint, capture=False
    )
    assert len(eager.history) == 4  # a captured run's checkpoint resumes eagerly too
