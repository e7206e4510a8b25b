"""K runs of one configuration as one stacked model (`hpo_astro.core.stacked`): each run gives what its lone run
gives, to rounding, for every layer type, normalisation and activation of the space; each keeps its own
initialisation, data order, dropout masks, BatchNorm statistics and early stopping; the stack is rebuilt when a run
stops without losing the others' optimiser state; and `stacking_refusal` says when not to stack."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import noise_splits

from hpo_astro.core.hyperparameters import DEFAULT_PARAMS
from hpo_astro.core.model import build_model
from hpo_astro.core.stacked import CPU_STACK_MAX_BATCH, StackedCNN, stacking_refusal, train_stacked
from hpo_astro.core.train import TrainResult, seed_everything, train

BASE = {**DEFAULT_PARAMS, "batch_size": 16, "fc_width": 32}
# Every layer type and normalisation of the space, each activation, dropout on and off, every kernel size.
ARCHITECTURES = [
    {"conv_layers": 1, "conv_kernel_size": 3, "fc_layers": 1, "activation": "ReLU", "dropout_rate": 0.0},
    {"conv_layers": 2, "conv_kernel_size": 5, "fc_layers": 2, "normalization": "BatchNorm", "activation": "GELU"},
    {"conv_layers": 3, "conv_kernel_size": 7, "fc_layers": 3, "normalization": "LayerNorm", "activation": "Tanh"},
    {"conv_layers": 4, "conv_kernel_size": 3, "fc_layers": 5, "normalization": "None", "activation": "LeakyReLU"},
    {"conv_layers": 2, "fc_layers": 3, "normalization": "BatchNorm", "dropout_rate": 0.3, "activation": "ReLU"},
    {"conv_layers": 1, "fc_layers": 2, "normalization": "LayerNorm", "dropout_rate": 0.2, "activation": "GELU"},
]
# Rounding: grouped convolutions and batched matrix products add in another order than the lone run's layers. Over
# a few epochs the difference stays at float32 rounding amplified by training (measured up to ~2e-3 in a validation
# loss with BatchNorm and dropout on 16-sample batches; ~1e-7 without normalisation).
TOLERANCE = 5e-3


def _close(stacked: TrainResult, alone: TrainResult) -> None:
    assert len(stacked.history) == len(alone.history)
    assert (stacked.stop_reason, stacked.seed) == (alone.stop_reason, alone.seed)
    # The same best epoch, or one whose lone validation loss ties the best within rounding.
    best = min(h.val_loss for h in alone.history)
    assert alone.history[stacked.best_epoch - 1].val_loss == pytest.approx(best, abs=TOLERANCE)
    for a, b in zip(stacked.history, alone.history, strict=True):
        assert a.epoch == b.epoch and a.lr == b.lr
        assert a.train_loss == pytest.approx(b.train_loss, abs=TOLERANCE)
        assert a.val_loss == pytest.approx(b.val_loss, abs=TOLERANCE)
        assert abs(a.val_accuracy - b.val_accuracy) <= 2 / 24 + 1e-9  # at most two of 24 cutouts flip
    assert stacked.val_metrics.loss == pytest.approx(alone.val_metrics.loss, abs=TOLERANCE)
    assert stacked.model is not None and alone.model is not None
    if stacked.best_epoch != alone.best_epoch:
        return  # a tie within rounding picked the other epoch's weights
    alone_state = alone.model.state_dict()
    for key, tensor in stacked.model.state_dict().items():
        assert tensor.shape == alone_state[key].shape, key
        assert torch.allclose(tensor.float(), alone_state[key].float(), atol=2e-2), key


@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=lambda a: "-".join(str(v) for v in a.values()))
def test_each_stacked_run_gives_what_it_gives_alone(architecture: dict[str, Any]) -> None:
    params = {**BASE, **architecture}
    data = noise_splits(48)
    stacked = train_stacked(params, data, seeds=[0, 1], max_epochs=2)
    alone = [train(params, data, seed=seed, max_epochs=2) for seed in (0, 1)]
    for s, a in zip(stacked, alone, strict=True):
        _close(s, a)
    assert stacked[0].history[0].train_loss != stacked[1].history[0].train_loss  # two runs, not one run twice


def test_each_run_starts_from_the_weights_its_lone_run_starts_from() -> None:
    params = {**BASE, "normalization": "BatchNorm", "fc_layers": 3}
    states = []
    for seed in (3, 4, 5):
        seed_everything(seed)
        states.append(build_model(params).state_dict())
    stack = StackedCNN(params, 1, states, [torch.Generator() for _ in states])
    for k, seed in enumerate((3, 4, 5)):
        seed_everything(seed)
        expected = build_model(params).state_dict()
        got = stack.member_state(k)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[key], expected[key]) for key in expected)


def test_dropout_masks_continue_each_lone_runs_random_stream() -> None:
    """A stacked forward in training mode equals each lone model's forward after seeding as its run does: the same
    masks (up to the rounding of the layers around them)."""
    params = {**BASE, "fc_layers": 3, "dropout_rate": 0.5, "normalization": "None"}
    states, generators, lone = [], [], []
    for seed in (0, 1):
        seed_everything(seed)
        model = build_model(params)
        states.append(model.state_dict())
        generator = torch.Generator()
        generator.set_state(torch.get_rng_state())
        generators.append(generator)
        lone.append((model, torch.get_rng_state()))
    x = torch.rand(8, 1, 64, 64)
    stacked = StackedCNN(params, 1, states, generators).train()(torch.cat([x, x], dim=1))
    for k, (model, rng) in enumerate(lone):
        torch.set_rng_state(rng)
        expected = model.train()(x).squeeze(1)
        assert torch.allclose(stacked[k], expected, atol=1e-5)
    assert not torch.allclose(stacked[0], stacked[1])


def test_runs_stop_on_their_own_and_the_others_keep_their_optimiser_state() -> None:
    """Noise data, a high learning rate: the runs overfit and stop early at different epochs; each stops where its
    lone run stops, and the runs that go on after the stack is rebuilt still follow their lone runs (a rebuilt stack
    that lost AdamW's moments would not)."""
    params = {**BASE, "lr": 1e-2, "t_max": 50, "early_stop_patience": 2, "dropout_rate": 0.0}
    data = noise_splits(48)
    seeds = [0, 1, 2, 3]
    stacked = train_stacked(params, data, seeds=seeds, max_epochs=12)
    alone = [train(params, data, seed=seed, max_epochs=12) for seed in seeds]
    lengths = [len(r.history) for r in alone]
    assert len(set(lengths)) > 1, "the runs should stop at different epochs for this test to mean anything"
    for s, a in zip(stacked, alone, strict=True):
        _close(s, a)


def test_a_callback_stops_one_run_only() -> None:
    class StopAtOne:
        def on_epoch_end(self, state: Any) -> None:
            state.request_stop("told to")

    results = train_stacked(BASE, noise_splits(32), seeds=[0, 1], callbacks=[[StopAtOne()], []], max_epochs=3)
    assert [len(r.history) for r in results] == [1, 3]
    assert [r.stop_reason for r in results] == ["told to", "max_epochs"]


def test_stacking_is_refused_with_its_reason() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    small, large = {**BASE, "batch_size": CPU_STACK_MAX_BATCH}, {**BASE, "batch_size": 64}
    assert stacking_refusal(small, cpu, 3) is None
    assert stacking_refusal(large, cuda, 3) is None
    assert "compute-bound" in (stacking_refusal(large, cpu, 3) or "")
    assert stacking_refusal(large, cpu, 3, "on") is None
    assert stacking_refusal(small, cpu, 3, "off") == "stacking turned off"
    assert stacking_refusal(small, cpu, 1, "on") == "a single run"
    with pytest.raises(ValueError, match="stack mode"):
        stacking_refusal(small, cpu, 3, "sometimes")
