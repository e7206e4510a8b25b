"""The trainer: learns, stops early and restores the best epoch, is reproducible, honours its options."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from helpers import noise_splits

from hpo_astro.core.hyperparameters import DEFAULT_PARAMS
from hpo_astro.core.train import EarlyStopping, TrainState, batches, evaluate, train
from hpo_astro.data.prepare import load_splits

# Overfits the noise below quickly: validation loss turns up after a few epochs.
OVERFIT = {**DEFAULT_PARAMS, "lr": 1e-2, "batch_size": 16, "t_max": 50, "dropout_rate": 0.0}
FAST = {**DEFAULT_PARAMS, "conv_layers": 3, "conv_kernel_size": 5, "fc_width": 128, "batch_size": 16, "t_max": 50}


def test_short_training_beats_the_majority_class(train_file: Path) -> None:
    data = load_splits(train_file)
    majority = max(data.y_val.mean().item(), 1 - data.y_val.mean().item())
    params = {**DEFAULT_PARAMS, "fc_width": 128, "batch_size": 32, "t_max": 50}  # 4 epochs: about 5 s on 2 cores
    result = train(params, data, max_epochs=4, seed=0)
    assert len(result.history) <= 4
    assert result.val_metrics.accuracy > majority + 0.05
    assert result.val_metrics.roc_auc > 0.8
    assert result.history[0].lr == pytest.approx(1e-3)
    assert result.history[-1].lr < 1e-3  # cosine schedule in action


def test_early_stopping_restores_the_best_epoch() -> None:
    data = noise_splits()
    params = {
        **DEFAULT_PARAMS,
        "lr": 1e-2,
        "batch_size": 16,
        "t_max": 50,
        "early_stop_patience": 3,
        "dropout_rate": 0.0,
    }
    snapshots: dict[int, dict] = {}

    class Snapshot:
        def on_epoch_end(self, state: TrainState) -> None:
            snapshots[state.epoch] = copy.deepcopy(state.model.state_dict())

    result = train(params, data, callbacks=[Snapshot()], seed=1)
    val_losses = [h.val_loss for h in result.history]
    assert result.stop_reason == "early_stopping"
    assert result.best_epoch == val_losses.index(min(val_losses)) + 1
    assert len(result.history) == result.best_epoch + 3 < 50
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, snapshots[result.best_epoch][name]), name
    assert evaluate(result.model, data.x_val, data.y_val, data.pos_weight).loss == pytest.approx(
        min(val_losses), rel=1e-5
    )


def test_training_is_reproducible_for_a_seed() -> None:
    data = noise_splits(64)
    a = train(DEFAULT_PARAMS, data, max_epochs=2, seed=3)
    b = train(DEFAULT_PARAMS, data, max_epochs=2, seed=3)
    c = train(DEFAULT_PARAMS, data, max_epochs=2, seed=4)
    assert [h.val_loss for h in a.history] == [h.val_loss for h in b.history]
    assert [h.val_loss for h in a.history] != [h.val_loss for h in c.history]


def test_epoch_cap_and_t_max() -> None:
    data = noise_splits(32)
    capped = train({**DEFAULT_PARAMS, "t_max": 10, "early_stop_patience": 10}, data, max_epochs=3)
    assert len(capped.history) == 3 and capped.stop_reason == "max_epochs"
    full = train({**DEFAULT_PARAMS, "t_max": 10, "early_stop_patience": 10}, data, early_stopping=False)
    assert len(full.history) == 10  # t_max is the epoch cap when max_epochs is not smaller
    assert full.history[-1].lr < 0.05 * 1e-3  # the cosine reaches ~0 at T_max


def test_result_records_everything() -> None:
    result = train(DEFAULT_PARAMS, noise_splits(32), max_epochs=2, seed=0)
    summary = result.summary()
    assert summary["n_params"] == result.n_params > 0 and summary["wall_time"] > 0
    assert summary["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # "auto": the GPU when there is one
    assert summary["best_epoch"] in (1, 2)
    epoch = summary["history"][0]
    assert set(epoch) == {
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "val_roc_auc",
        "lr",
        "seconds",
        "val_fpr_at_5fnr",  # the operating points, measured every epoch by the trainer
        "val_mdr_at_1fpr",
    }
    assert set(summary["val_metrics"]) >= {"accuracy", "roc_auc", "precision", "recall", "f1", "fpr_at_5fnr"}
    assert "mdr_at_1fpr" in summary["val_metrics"]


def test_a_callback_can_stop_training() -> None:
    class StopAtTwo:
        def on_epoch_end(self, state: TrainState) -> None:
            if state.epoch == 2:
                state.request_stop("custom")

    result = train(DEFAULT_PARAMS, noise_splits(32), callbacks=[StopAtTwo()], early_stopping=False)
    assert result.stop_reason == "custom" and len(result.history) == 2


def test_divergence_stops_the_run() -> None:
    data = noise_splits(32)
    data.x_train[0, 0, 0, 0] = float("nan")  # poisons the loss of every epoch
    result = train(DEFAULT_PARAMS, data, max_epochs=5)
    assert result.stop_reason == "diverged" and len(result.history) == 1


def test_batches_never_leave_a_single_sample() -> None:
    g = torch.Generator().manual_seed(0)
    sizes = [len(b) for b in batches(9, 4, g)]
    assert sizes == [4, 5] and sum(sizes) == 9
    assert sorted(torch.cat(batches(9, 4, g)).tolist()) == list(range(9))


def test_early_stopping_rejects_bad_patience() -> None:
    with pytest.raises(ValueError):
        EarlyStopping(0)


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_result() -> None:
    """Stop after 2 epochs, checkpoint, serialise, restore in a fresh run: identical to 5 uninterrupted epochs."""
    import io

    data = noise_splits(64)
    params = {**DEFAULT_PARAMS, "dropout_rate": 0.2, "batch_size": 16, "early_stop_patience": 10}
    full = train(params, data, max_epochs=5, seed=7)
    saved: dict = {}

    class CheckpointThenStop:
        def on_epoch_end(self, state: TrainState) -> None:
            if state.epoch == 2:
                buffer = io.BytesIO()
                torch.save(state.checkpoint(), buffer)
                saved["bytes"] = buffer.getvalue()
                state.request_stop("interrupted")

    train(params, data, callbacks=[CheckpointThenStop()], max_epochs=5, seed=7)
    checkpoint = torch.load(io.BytesIO(saved["bytes"]), weights_only=True)  # safe load: plain data only
    resumed = train(params, data, max_epochs=5, seed=7, resume=checkpoint)
    assert [h.val_loss for h in resumed.history] == [h.val_loss for h in full.history]
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in full.history]
    assert resumed.best_epoch == full.best_epoch
    for name, tensor in full.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    with pytest.raises(ValueError, match="other hyperparameters"):
        train({**params, "lr": 1e-2}, data, max_epochs=5, seed=7, resume=checkpoint)


@pytest.mark.parametrize("threads", [1, 3])
def test_a_resumed_run_is_the_uninterrupted_run_bit_for_bit_at_any_thread_count(threads: int) -> None:
    """Whatever the machine's torch thread count, a run resumed with that count ends bit-identical to the
    uninterrupted run with it. (Another count sums in another order: runs differ in the last digits, which is why
    the README's promise names the thread count.)"""
    data = noise_splits(48, seed=5)
    params = {**DEFAULT_PARAMS, "batch_size": 16, "normalization": "BatchNorm", "fc_layers": 2, "fc_width": 32}
    saved: list[dict] = []

    class CheckpointThenStop:
        def on_epoch_end(self, state: TrainState) -> None:
            if state.epoch == 2:
                saved.append(copy.deepcopy(state.checkpoint()))
                state.request_stop("interrupted")

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        full = train(params, data, max_epochs=4, seed=3)
        train(params, data, callbacks=[CheckpointThenStop()], max_epochs=4, seed=3)
        resumed = train(params, data, max_epochs=4, seed=3, resume=saved[0])
    finally:
        torch.set_num_threads(before)
    assert [(h.train_loss, h.val_loss) for h in resumed.history] == [(h.train_loss, h.val_loss) for h in full.history]
    for name, tensor in full.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_a_checkpoint_taken_at_the_stopping_epoch_does_not_train_further() -> None:
    data = noise_splits(32)
    saved: dict = {}

    class Keep:
        def on_epoch_end(self, state: TrainState) -> None:
            saved["ckpt"] = copy.deepcopy(state.checkpoint())

    first = train(DEFAULT_PARAMS, data, callbacks=[Keep()], max_epochs=3, seed=0)
    again = train(DEFAULT_PARAMS, data, max_epochs=3, seed=0, resume=saved["ckpt"])
    assert len(again.history) == len(first.history) == 3


def test_device_is_honoured_and_evaluation_follows_the_model() -> None:
    """`device="cpu"` trains on the CPU even where CUDA exists; `evaluate` takes inputs on any device and moves
    them to the model's (a GPU-trained model evaluated on CPU tensors, as `compare` and scripts do)."""
    data = noise_splits(32)
    on_cpu = train(DEFAULT_PARAMS, data, max_epochs=1, seed=0, device="cpu")
    assert on_cpu.device == "cpu" and next(on_cpu.model.parameters()).device.type == "cpu"
    auto = train(DEFAULT_PARAMS, data, max_epochs=1, seed=0)
    metrics = evaluate(auto.model, data.x_val.cpu(), data.y_val.cpu(), data.pos_weight)
    assert metrics.loss == pytest.approx(auto.history[-1].val_loss, rel=1e-4)
    if torch.cuda.is_available():
        assert next(auto.model.parameters()).device.type == "cuda"
        moved = evaluate(on_cpu.model, data.x_val.cuda(), data.y_val.cuda(), data.pos_weight)
        assert moved.loss == pytest.approx(on_cpu.history[-1].val_loss, rel=1e-4)


def test_the_best_epochs_metrics_are_those_of_the_restored_weights() -> None:
    """The validation metrics are taken when the best epoch ends, not measured again: they must equal a fresh
    evaluation of the returned (restored) model, also after early stopping went past the best epoch."""
    data = noise_splits()
    params = {**OVERFIT, "early_stop_patience": 3}
    result = train(params, data, max_epochs=12, seed=4)
    assert result.best_epoch < len(result.history)  # the restored weights are not the last ones
    again = evaluate(result.model, data.x_val, data.y_val, data.pos_weight)
    assert result.val_metrics == again
    assert result.train_metrics is None  # a study does not need another pass over the training split
    with_train = train(params, data, max_epochs=12, seed=4, evaluate_train=True)
    assert with_train.val_metrics == result.val_metrics
    assert with_train.train_metrics == evaluate(with_train.model, data.x_train, data.y_train, data.pos_weight)


def test_a_resumed_run_reports_the_best_epoch_measured_before_the_checkpoint() -> None:
    """Resumed after its best epoch, a run still reports that epoch's metrics (kept in the checkpoint)."""
    data = noise_splits()
    params = {**OVERFIT, "early_stop_patience": 3}
    saved: dict[int, dict] = {}

    class Snapshot:
        def on_epoch_end(self, state: TrainState) -> None:
            saved[state.epoch] = copy.deepcopy(state.checkpoint())

    whole = train(params, data, max_epochs=12, seed=4, callbacks=[Snapshot()])
    after_best = whole.best_epoch + 1
    assert after_best < len(whole.history)
    resumed = train(params, data, max_epochs=12, seed=4, resume=saved[after_best])
    assert resumed.best_epoch == whole.best_epoch and resumed.val_metrics == whole.val_metrics


def test_the_cpu_trainer_uses_channels_last() -> None:
    """Measured faster on CPU (README, Throughput): the model trains in channels_last memory format."""
    result = train({**FAST, "t_max": 10}, noise_splits(32), max_epochs=1, device="cpu")
    conv = [m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d)][1]  # 16 input channels
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()  # really the other layout, not a shape where both coincide
