"""The trainer: one configuration, one model, read top to bottom. No Optuna in here.

AdamW + BCEWithLogits (pos_weight balances the 2:1 real:bogus imbalance) + CosineAnnealingLR(T_max=t_max), at most
t_max epochs (or `max_epochs` when smaller), whole splits held as tensors and indexed per batch. After every epoch
the callbacks see a `TrainState` and may ask to stop (early stopping; Optuna pruning, `hpo_astro.study`). The
best-val-loss weights are restored. On CUDA the step is recorded once per trial as a CUDA graph and replayed
(`CapturedStep`: this CNN is launch-bound on a GPU); on CPU, or with `capture=False`, it runs eagerly (`EagerStep`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from hpo_astro.core.epochs import Callback, EarlyStopping, EpochLoop, EpochMetrics
from hpo_astro.core.metrics import Metrics, classification_metrics
from hpo_astro.core.model import build_model, count_parameters
from hpo_astro.data.prepare import DataSplits
from hpo_astro.errors import UserError

# Cutouts per forward pass when evaluating: on CPU small chunks stay in cache (702 validation cutouts: 0.13 s in chunks
# of 128, 0.44 s in one of 1024; docs/throughput.md); on CUDA the pass is launch-bound.
EVAL_BATCH = {"cpu": 128, "cuda": 1024}


def eval_batch(device: torch.device | str) -> int:
    """The evaluation chunk for `device` (see EVAL_BATCH)."""
    return EVAL_BATCH["cuda" if torch.device(device).type == "cuda" else "cpu"]


@dataclass(kw_only=True)
class TrainState(EpochLoop):
    """What a callback sees after each epoch: the epoch loop and the trainer's state (to checkpoint or stop the run)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    shuffle_generator: torch.Generator
    best_weights: dict[str, torch.Tensor] | None = None

    def keep_best(self) -> None:
        self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to continue this run bit-for-bit after the last finished epoch.

        Only tensors, numbers, strings, lists and dicts: it loads back with `torch.load(weights_only=True)`.
        """
        return {
            **self.bookkeeping(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "shuffle_rng": self.shuffle_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "best_weights": self.best_weights,
        }

    def restore(self, checkpoint: Mapping[str, Any]) -> None:
        """Continue from `checkpoint` (made by `checkpoint()` for the same parameters)."""
        self.restore_bookkeeping(checkpoint)
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.shuffle_generator.set_state(checkpoint["shuffle_rng"])
        torch.set_rng_state(checkpoint["torch_rng"])
        if checkpoint["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
        self.best_weights = checkpoint["best_weights"]


@dataclass
class TrainResult:
    params: dict[str, Any]
    history: list[EpochMetrics]
    best_epoch: int
    stop_reason: str  # "max_epochs", "early_stopping", "diverged" or a callback's reason
    n_params: int
    wall_time: float
    device: str
    seed: int
    train_metrics: Metrics | None  # of the restored best-epoch weights; None unless `evaluate_train` asked for them
    val_metrics: Metrics  # of the best epoch (the restored weights), as measured when that epoch ended
    model: nn.Module | None = field(repr=False)  # the restored best weights; None when nothing was trained (a replay)
    # More trial user attributes for the objective to record (name -> JSON value), e.g. test metrics a table keeps.
    extra_attrs: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (everything but the model)."""
        return {
            "params": self.params,
            "history": [h.as_dict() for h in self.history],
            "best_epoch": self.best_epoch,
            "stop_reason": self.stop_reason,
            "n_params": self.n_params,
            "wall_time": self.wall_time,
            "device": self.device,
            "seed": self.seed,
            "train_metrics": None if self.train_metrics is None else self.train_metrics.as_dict(),
            "val_metrics": self.val_metrics.as_dict(),
        }


class TrainFn(Protocol):
    """What a study calls to train a configuration: `train`, or anything with its contract (TableReplay, stand-ins)."""

    def __call__(
        self,
        params: Mapping[str, Any],
        data: DataSplits,
        *,
        callbacks: Iterable[Callback],
        max_epochs: int | None,
        seed: int,
        resume: Mapping[str, Any] | None,
        device: str,
        capture: bool,
    ) -> TrainResult: ...


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU. An unknown or unavailable device is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    # Reproducible convolutions on GPU; costs some speed, which the field accepts for HPO comparisons.
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """The model's logits for `x`, on `x`'s device; batches (default: `eval_batch` of the model's device) go to the
    model's device, wherever `x` lives (a model trained on the GPU can be evaluated on CPU tensors and vice versa)."""
    model.eval()
    device = next(model.parameters()).device
    batch = batch or eval_batch(device)
    return torch.cat([model(x[i : i + batch].to(device)).squeeze(1).to(x.device) for i in range(0, len(x), batch)])


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, pos_weight: float, threshold: float = 0.5) -> Metrics:
    return metrics_from_logits(predict_logits(model, x), y, pos_weight, threshold)


def metrics_from_logits(logits: torch.Tensor, y: torch.Tensor, pos_weight: float, threshold: float = 0.5) -> Metrics:
    """The metrics of `evaluate`, from logits already computed (callers that also need the scores)."""
    y = y.to(logits.device)
    loss = nn.functional.binary_cross_entropy_with_logits(
        logits, y, pos_weight=torch.tensor(pos_weight, device=logits.device)
    ).item()
    probabilities = torch.sigmoid(logits).cpu().numpy()
    return classification_metrics(y.cpu().numpy(), probabilities, loss=loss, threshold=threshold)


def batches(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """A shuffled epoch of index batches on `device`. The permutation is drawn on the CPU (the same stream on every
    device) and moved once per epoch, not once per step. A last batch of one sample joins the previous one, because
    BatchNorm cannot train on a single sample."""
    chunks = list(torch.randperm(n, generator=generator).to(device).split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


class EagerStep:
    """One training step on the batch `x[idx]`: forward, loss, backward, AdamW step. Returns the batch's summed loss
    and its number of correct predictions, as device tensors (no host round trip per step)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> None:
        self.model, self.optimizer, self.criterion, self.x, self.y = model, optimizer, criterion, x, y
        self.set_to_none = True  # a captured graph owns the gradient tensors: then they are zeroed, never dropped

    def __call__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xb, yb = self.x[idx], self.y[idx]
        logits = self.model(xb).squeeze(1)
        loss = self.criterion(logits, yb)
        self.optimizer.zero_grad(set_to_none=self.set_to_none)
        loss.backward()
        self.optimizer.step()
        return loss.detach() * len(idx), ((logits.detach() > 0) == (yb > 0.5)).sum()


class CapturedStep:
    """`EagerStep` recorded once as a CUDA graph for full batches and replayed for every later one.

    The graph's only input is the index tensor: the whole training split already lives on the GPU, so the gather is
    part of the graph and a step costs one small copy and one replay. The first `WARMUP` full batches run eagerly on
    a side stream (cuDNN and cuBLAS pick their kernels and workspaces, AdamW creates its state), as CUDA graph
    capture requires; they are real training steps, like every replay. A batch of another size (the epoch's last,
    partial batch) runs eagerly on the same weights and optimizer state: once per epoch, not worth a graph of its own.
    The learning rate is a device tensor that the scheduler updates in place, so the cosine schedule needs no
    re-capture. The returned tensors are the graph's outputs, overwritten by the next replay: use them at once.
    """

    WARMUP = 3

    def __init__(self, eager: EagerStep, batch_size: int) -> None:
        self.eager, self.batch_size = eager, batch_size
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warmed = 0
        self.static_idx: torch.Tensor | None = None
        self.static_out: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(idx) != self.batch_size:
            return self.eager(idx)
        if self.graph is None:
            if self.warmed < self.WARMUP:
                self.warmed += 1
                return self._on_side_stream(idx)
            self._capture(idx)
        assert self.static_idx is not None and self.static_out is not None and self.graph is not None
        self.static_idx.copy_(idx)
        self.graph.replay()
        return self.static_out

    def _on_side_stream(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = self.eager(idx)
        torch.cuda.current_stream().wait_stream(stream)
        return out

    def _capture(self, idx: torch.Tensor) -> None:
        self.static_idx = idx.clone()
        # Gradients must not exist when capture starts: backward then allocates them inside the graph's memory pool
        # and every replay overwrites them (no accumulation). Eager steps after this zero them instead of dropping
        # them, so the graph keeps reading the tensors it was recorded with.
        self.eager.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_out = self.eager(self.static_idx)
        self.eager.set_to_none = False
        self.graph = graph


def make_optimizer(model: nn.Module, params: Mapping[str, Any], capturable: bool) -> torch.optim.AdamW:
    """AdamW as the paper; for a captured step, capturable with its learning rate as a device tensor."""
    lr: float | torch.Tensor = float(params["lr"])
    if capturable:
        lr = torch.tensor(lr, device=next(model.parameters()).device)
    return torch.optim.AdamW(
        model.parameters(), lr=lr, weight_decay=float(params["weight_decay"]), capturable=capturable
    )


def _settle_optimizer(optimizer: torch.optim.Optimizer, device: torch.device, capturable: bool) -> None:
    """After a checkpoint is restored: the learning rate and `capturable` as this run needs them, whichever mode or
    device wrote the checkpoint (loading it replaces both with the saved values)."""
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        group["lr"] = torch.tensor(lr, device=device) if capturable else lr
        group["capturable"] = capturable
    for state in optimizer.state.values():  # capturable AdamW counts steps on the device, eager AdamW on the host
        if "step" in state:
            state["step"] = state["step"].to(dtype=torch.float32, device=device if capturable else "cpu")


def use_capture(capture: bool | None, device: torch.device) -> bool:
    """Whether to capture the train step: on CUDA unless `capture` is False (CPU is always eager)."""
    return device.type == "cuda" and capture is not False


def train(
    params: Mapping[str, Any],
    data: DataSplits,
    callbacks: Iterable[Callback] = (),
    max_epochs: int | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    early_stopping: bool = True,
    resume: Mapping[str, Any] | None = None,
    evaluate_train: bool = False,
    capture: bool | None = None,
) -> TrainResult:
    """Train one configuration; return per-epoch curves, the best epoch and its validation metrics (and, with
    `evaluate_train`, its metrics on the training split: one more pass over it, which a study does not need).

    `resume` is a `TrainState.checkpoint()`: training continues after its last epoch and, for the same seed,
    ends exactly as the uninterrupted run would (eager on CPU; cuDNN is set deterministic on GPU too). A captured
    run's checkpoint holds the learning rate in float32, so resumed eagerly it agrees to float32 rounding.

    `capture`: record the train step as a CUDA graph (None or True: on CUDA; False: eager everywhere). Same seed,
    device and mode give the same metrics; captured and eager runs of one seed agree to float rounding, not bitwise
    (capturable AdamW computes with device tensors).
    """
    start = time.perf_counter()
    device = resolve_device(device) if isinstance(device, str) else device
    data = data.to(device)
    seed_everything(seed)

    model = build_model(params, in_channels=data.in_channels).to(device)
    channels_last = device.type == "cpu"  # measured: epochs 25-27% faster on CPU (README, Throughput)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    captured = use_capture(capture, device)
    optimizer = make_optimizer(model, params, capturable=captured)
    t_max = int(params["t_max"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max)
    epochs = t_max if max_epochs is None else max(1, min(t_max, int(max_epochs)))
    generator = torch.Generator().manual_seed(seed)
    criterion = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(data.pos_weight, device=device))
    callbacks = list(callbacks)
    if early_stopping:
        callbacks.insert(0, EarlyStopping(int(params["early_stop_patience"])))
    state = TrainState(
        params=params,
        max_epochs=epochs,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        shuffle_generator=generator,
    )
    if resume is not None:
        state.restore(resume)
        _settle_optimizer(optimizer, device, captured)
    batch_size = int(params["batch_size"])
    if channels_last:  # the inputs too, once: a conv given the other layout converts it on every call
        data.x_train = data.x_train.contiguous(memory_format=torch.channels_last)
        data.x_val = data.x_val.contiguous(memory_format=torch.channels_last)
    x, y = data.x_train, data.y_train
    eager = EagerStep(model, optimizer, criterion, x, y)
    step = CapturedStep(eager, batch_size) if captured else eager

    while state.running:
        epoch_start = time.perf_counter()
        lr = float(optimizer.param_groups[0]["lr"])
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for idx in batches(len(x), batch_size, generator, device):
            batch_loss, batch_correct = step(idx)
            loss_sum += batch_loss
            correct += batch_correct
        scheduler.step()
        val = evaluate(model, data.x_val, data.y_val, data.pos_weight)
        seconds, train_loss, train_accuracy = (
            time.perf_counter() - epoch_start,
            (loss_sum / len(x)).item(),
            (correct / len(x)).item(),
        )
        metrics = EpochMetrics.of(state.epoch + 1, train_loss, train_accuracy, val, lr, seconds)
        state.end_epoch(metrics, val.as_dict, callbacks)  # best epoch (its weights kept), divergence, callbacks

    result = finished(state, state.best_weights, model, data, seed, device, time.perf_counter() - start)
    result.train_metrics = evaluate(model, data.x_train, data.y_train, data.pos_weight) if evaluate_train else None
    return result


def finished(
    loop: EpochLoop, best_weights: Mapping[str, torch.Tensor] | None, model: nn.Module, data: DataSplits, seed: int,
    device: torch.device, wall_time: float,
) -> TrainResult:  # fmt: skip
    """A finished run's result: `model` gets the best epoch's weights (else keeps its own), measured when it ended."""
    had_best = loop.best_epoch > 0
    best_epoch, stop_reason = loop.finish()
    if had_best and best_weights is not None:
        model.load_state_dict(best_weights)
    if had_best and loop.best_val_metrics is not None:
        val_metrics = Metrics(**loop.best_val_metrics)
    else:
        val_metrics = evaluate(model, data.x_val, data.y_val, data.pos_weight)
    return TrainResult(
        dict(loop.params), loop.history, best_epoch, stop_reason, count_parameters(model), wall_time, str(device), seed,
        None, val_metrics, model,
    )  # fmt: skip
