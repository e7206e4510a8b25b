"""The captured train step's CPU-testable parts: when capture applies, `--capture/--no-capture` and the study file
reach the trainer, and a checkpoint written by a captured (CUDA) run resumes in an eager run and vice versa. The
capture itself runs in tests/core/test_gpu.py (skipped without CUDA)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import helpers
import optuna
import pytest
import torch
from helpers import fake_train, invoke, noise_splits, store_url, study_config

from hpo_astro.core.hyperparameters import DEFAULT_PARAMS
from hpo_astro.core.train import TrainState, train, use_capture
from hpo_astro.study.config import load_config
from hpo_astro.study.run import run_study

PARAMS = {**DEFAULT_PARAMS, "conv_layers": 1, "fc_layers": 1, "fc_width": 16, "batch_size": 8, "t_max": 4}


def test_capture_applies_on_cuda_only_and_can_be_turned_off() -> None:
    cuda, cpu = torch.device("cuda:0"), torch.device("cpu")
    assert use_capture(None, cuda) and use_capture(True, cuda)
    assert not use_capture(False, cuda)
    assert not use_capture(None, cpu) and not use_capture(True, cpu)  # CUDA graphs exist only on CUDA


def test_on_cpu_capture_true_is_the_eager_run_bit_for_bit() -> None:
    eager = train(PARAMS, noise_splits(42, seed=3), seed=4, device="cpu", capture=False, early_stopping=False)
    asked = train(PARAMS, noise_splits(42, seed=3), seed=4, device="cpu", capture=True, early_stopping=False)
    strip = [{**h.__dict__, "seconds": 0} for h in eager.history]
    assert [{**h.__dict__, "seconds": 0} for h in asked.history] == strip
    assert len(strip) == 4


def _recording(seen: list[object]) -> Any:
    def fit(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["capture"])
        return fake_train(*args, **kwargs)

    return fit


def test_the_study_setting_reaches_the_trainer(tmp_path: Path, small_file: Path) -> None:
    seen: list[object] = []
    run_study(study_config(tmp_path, small_file, n_trials=1), train=_recording(seen))
    run_study(study_config(tmp_path, small_file, n_trials=2, capture=False), train=_recording(seen))
    assert seen == [True, False]


def test_no_capture_from_the_command_line_and_the_study_file(
    tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[object] = []
    monkeypatch.setattr(helpers, "TRAINER", _recording(seen))
    store = store_url(tmp_path)
    base = ["--data", small_file, "--max-epochs", 1, "--storage", store]
    assert invoke("run", "-n", 1, *base, "--no-capture").exit_code == 0
    assert invoke("run", "-n", 2, *base, "--capture").exit_code == 0
    study_file = tmp_path / "s.toml"
    study_file.write_text("capture = false\n")
    assert load_config(study_file).capture is False
    assert invoke("run", "-n", 3, *base, "--config", study_file).exit_code == 0
    assert invoke("worker", "--study", "random", "--storage", store, "--no-capture", "--devices", "cpu").exit_code == 0
    assert seen == [False, True, False]  # the worker found the budget complete and trained nothing
    bad = tmp_path / "bad.toml"
    bad.write_text('capture = "no"\n')
    result = invoke("run", "-n", 1, *base, "--config", bad)
    assert result.exit_code == 2 and "capture must be a bool" in result.stderr


def test_a_worker_joins_on_the_device_and_mode_it_is_given(
    tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[object, object]] = []

    def fit(*args: Any, **kwargs: Any) -> Any:
        seen.append((kwargs["device"], kwargs["capture"]))
        return fake_train(*args, **kwargs)

    monkeypatch.setattr(helpers, "TRAINER", fit)
    store = store_url(tmp_path)
    assert invoke("run", "-n", 1, "--data", small_file, "--max-epochs", 1, "--storage", store).exit_code == 0
    study = optuna.load_study(study_name="random", storage=store)
    study.set_user_attr("n_trials", 2)  # the study's budget grows: the worker runs the second trial
    assert invoke("worker", "--study", "random", "--storage", store, "--devices", "cpu", "--no-capture").exit_code == 0
    assert seen == [("cpu", True), ("cpu", False)]  # run: the device pool (no GPU here: the CPU)


def _as_if_captured(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint as a captured CUDA run writes it: the learning rate a float32 tensor (in the optimizer and in
    the scheduler's record of it), capturable, step counts as tensors."""
    optimizer = checkpoint["optimizer"]
    groups = [{**g, "lr": torch.tensor(float(g["lr"])), "capturable": True} for g in optimizer["param_groups"]]
    rates = [torch.tensor(float(v)) for v in checkpoint["scheduler"]["_last_lr"]]
    scheduler = {**checkpoint["scheduler"], "_last_lr": rates}
    return {**checkpoint, "optimizer": {**optimizer, "param_groups": groups}, "scheduler": scheduler}


def test_a_captured_runs_checkpoint_resumes_eagerly_and_agrees_with_the_uninterrupted_run_to_float32() -> None:
    """A captured run holds its learning rate as a float32 device tensor (capturable AdamW), so its checkpoint carries
    the schedule rounded to float32: resumed eagerly, the run continues from that rounded rate, and its curves agree
    with an uninterrupted eager run to float32 rounding, not bitwise (an eager checkpoint resumes bitwise:
    tests/core/test_train.py). Measured: the first resumed epoch's validation loss moves by about 1e-7 of its value."""
    whole = train(PARAMS, noise_splits(42, seed=3), seed=2, device="cpu", early_stopping=False)
    saved: list[dict[str, Any]] = []

    class StopAfterTwo:
        def on_epoch_end(self, state: TrainState) -> None:
            if state.epoch == 2:
                saved.append(state.checkpoint())
                state.request_stop("interrupted")

    train(PARAMS, noise_splits(42, seed=3), callbacks=[StopAfterTwo()], seed=2, device="cpu", early_stopping=False)
    checkpoint = _as_if_captured(saved[0])
    checkpoint["stop_reason"] = None
    resumed = train(PARAMS, noise_splits(42, seed=3), seed=2, device="cpu", early_stopping=False, resume=checkpoint)
    assert len(resumed.history) == len(whole.history) == 4
    same = [(h.train_loss, h.val_loss, h.val_accuracy, h.lr) for h in whole.history[:2]]
    assert [(h.train_loss, h.val_loss, h.val_accuracy, h.lr) for h in resumed.history[:2]] == same  # as recorded
    assert all(type(h.lr) is float for h in resumed.history)  # the eager run holds its rate as a host float again
    for after, before in zip(resumed.history[2:], whole.history[2:], strict=True):
        assert after.lr == pytest.approx(before.lr, rel=1e-7)  # float32 rounding of the rate, nothing more
        assert after.val_loss == pytest.approx(before.val_loss, rel=1e-5)
        assert after.train_loss == pytest.approx(before.train_loss, rel=1e-5)
