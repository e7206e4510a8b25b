"""K training runs of one configuration trained as one model (`train_stacked`): the runs of a trial's seeds share
the architecture, so their layers are stacked (convolutions grouped, fully connected layers batched with `bmm`) and
every step trains all of them with one forward and one backward.

Each run keeps what makes it that run: its own initialisation (built under its seed, exactly as `train` builds it),
its own data order (its own shuffle generator), its own dropout masks (drawn from a generator that continues the
random stream its lone run would use) and its own BatchNorm statistics (stacked per feature), its own early stopping
and best epoch. AdamW is elementwise, so the stacked optimiser updates each run as its own would. A run gives what it
gives alone up to the rounding of the stacked arithmetic (grouped convolutions and batched matrix products add in
another order; measured in tests/core/test_stacked.py), not bit-for-bit. When a run stops (early stopping,
divergence), the others go on without it: the stack is rebuilt from the runs still training.

`stacking_refusal` says when not to stack (one run, or a CPU batch too large to gain: see docs/throughput.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from hpo_astro.core.epochs import Callback, EarlyStopping, EpochLoop, EpochMetrics
from hpo_astro.core.model import build_model
from hpo_astro.core.train import (
    TrainResult,
    batches,
    eval_batch,
    finished,
    metrics_from_logits,
    resolve_device,
    seed_everything,
)
from hpo_astro.data.prepare import DataSplits

STACK_MODES = ("auto", "on", "off")
# On CPU the step of this CNN is compute-bound from small batches on: stacking K runs does K times the arithmetic
# either way and gains only the per-step overhead, which matters below this batch size (scripts/bench.py --stacked).
CPU_STACK_MAX_BATCH = 4


def stacking_refusal(params: Mapping[str, Any], device: torch.device, n_runs: int, mode: str = "auto") -> str | None:
    """None when `n_runs` runs of `params` should train stacked on `device`; else why they train one after another."""
    if mode not in STACK_MODES:
        raise ValueError(f"stack mode must be one of {STACK_MODES}, got {mode!r}")
    if n_runs < 2:
        return "a single run"
    if mode == "off":
        return "stacking turned off"
    if mode == "auto" and device.type == "cpu" and int(params["batch_size"]) > CPU_STACK_MAX_BATCH:
        return f"on CPU a batch of {int(params['batch_size'])} is compute-bound: stacked runs are not faster"
    return None


class StackedCNN(nn.Module):
    """`build_model(params)` K times as one module. Input: the K runs' batches side by side on the channel axis
    ([B, K*C, H, W]); output: logits [K, B]. Built from and unpacked to the member models' own state dicts."""

    def __init__(
        self,
        params: Mapping[str, Any],
        in_channels: int,
        states: Sequence[Mapping[str, torch.Tensor]],
        dropout_generators: Sequence[torch.Generator],
    ) -> None:
        super().__init__()
        # The member architecture, without weights and not a submodule: it only names the layers and their keys.
        self.template: nn.Sequential
        object.__setattr__(self, "template", build_model(params, in_channels=in_channels).to("meta"))
        self.k = len(states)
        self.dropout_generators = list(dropout_generators)
        self.values = nn.ParameterDict()  # the trainable tensors; BatchNorm's statistics are buffers `stat_*`
        trainable = dict(self.template.named_parameters())
        for key in self.template.state_dict():
            stacked = self._stack(key, [state[key] for state in states])
            if key in trainable:
                self.values[_name(key)] = nn.Parameter(stacked)
            else:
                self.register_buffer(f"stat_{_name(key)}", stacked)

    def _mode(self, key: str) -> str:
        """How a member tensor joins the stack: 'cat' along dim 0 (grouped convolution, BatchNorm features), 'stack'
        on a new leading dim (Linear, LayerNorm), 'shared' (a counter every run has the same value of)."""
        layer = self.template[int(key.split(".")[0])]
        if key.endswith("num_batches_tracked"):
            return "shared"
        return "cat" if isinstance(layer, nn.Conv2d | nn.BatchNorm1d) else "stack"

    def _stack(self, key: str, tensors: list[torch.Tensor]) -> torch.Tensor:
        mode = self._mode(key)
        if mode == "shared":
            return tensors[0].detach().clone()
        return (torch.cat if mode == "cat" else torch.stack)([t.detach() for t in tensors]).clone()

    def member(self, key: str, tensor: torch.Tensor, k: int) -> torch.Tensor:
        """Run k's slice of a stacked tensor (a parameter, a statistic or its optimiser state)."""
        mode = self._mode(key)
        if mode == "shared":
            return tensor
        if mode == "stack":
            return tensor[k]
        width = tensor.shape[0] // self.k
        return tensor[k * width : (k + 1) * width]

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Run k's weights as its own model's state dict (a copy)."""
        return {key: self.member(key, self.tensor(key), k).detach().clone() for key in self.template.state_dict()}

    def tensor(self, key: str) -> torch.Tensor:
        name = _name(key)
        return self.values[name] if name in self.values else getattr(self, f"stat_{name}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for index, layer in enumerate(self.template):

            def get(name: str, index: int = index) -> torch.Tensor:
                return self.tensor(f"{index}.{name}")

            if isinstance(layer, nn.Conv2d):
                h = F.conv2d(h, get("weight"), get("bias"), padding=layer.padding, groups=self.k)
            elif isinstance(layer, nn.Flatten):
                h = h.reshape(h.shape[0], self.k, -1).transpose(0, 1)  # [K, B, features], each run's own C*H*W
            elif isinstance(layer, nn.Linear):
                h = torch.baddbmm(get("bias").unsqueeze(1), h, get("weight").transpose(1, 2))
            elif isinstance(layer, nn.BatchNorm1d):
                k, b, w = h.shape  # each run's features are its own channels of one wide BatchNorm
                flat = h.transpose(0, 1).reshape(b, k * w)
                flat = F.batch_norm(
                    flat,
                    get("running_mean"),
                    get("running_var"),
                    get("weight"),
                    get("bias"),
                    self.training,
                    layer.momentum if layer.momentum is not None else 0.1,
                    layer.eps,
                )
                self.tensor(f"{index}.num_batches_tracked").data += int(self.training)
                h = flat.reshape(b, k, w).transpose(0, 1)
            elif isinstance(layer, nn.LayerNorm):
                h = F.layer_norm(h, layer.normalized_shape, None, None, layer.eps)
                h = h * get("weight").unsqueeze(1) + get("bias").unsqueeze(1)
            elif isinstance(layer, nn.Dropout):
                h = self._dropout(h, layer.p)
            else:  # activations, max pooling, Identity: the same function for every run
                h = layer(h)
        return h.squeeze(-1)

    def _dropout(self, h: torch.Tensor, p: float) -> torch.Tensor:
        """Each run's mask from its own generator, drawn as torch's CPU dropout draws it (Bernoulli(1-p), scaled)."""
        if not self.training or p == 0:
            return h
        masks = [
            torch.empty(h.shape[1:], device=g.device).bernoulli_(1 - p, generator=g).div_(1 - p)
            for g in self.dropout_generators
        ]
        return h * torch.stack(masks).to(h.device)


class _RunLoop(EpochLoop):
    """One stacked run's epochs; its best weights are taken from the stack when an epoch becomes its best."""

    def __init__(self, params: Mapping[str, Any], max_epochs: int, trainer: _Stack, run: int) -> None:
        super().__init__(params=params, max_epochs=max_epochs)
        self.trainer, self.run = trainer, run
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.val_history: list[dict[str, float]] = []  # each epoch's full validation metrics

    def keep_best(self) -> None:
        self.best_weights = self.trainer.run_state(self.run)


class _Stack:
    """The model, optimiser and scheduler of the runs still training, rebuilt when one of them stops."""

    def __init__(self, params: Mapping[str, Any], data: DataSplits, device: torch.device, seeds: Sequence[int]):
        self.params, self.device, self.in_channels = params, device, data.in_channels
        self.channels_last = device.type == "cpu"  # as `train`: measured faster on CPU
        states, self.dropout_generators = [], []
        for seed in seeds:  # each run built exactly as its lone run builds it, then its random stream continues
            seed_everything(seed)
            states.append(build_model(params, in_channels=data.in_channels).state_dict())
            generator = torch.Generator(device=device)
            generator.set_state(torch.get_rng_state() if device.type == "cpu" else torch.cuda.get_rng_state(device))
            self.dropout_generators.append(generator)
        self.active = list(range(len(seeds)))
        self._build(states, [None] * len(seeds), None)

    def _build(
        self,
        states: list[dict[str, torch.Tensor]],
        optimizer_states: list[dict[str, dict[str, torch.Tensor]] | None],
        scheduler_state: dict[str, Any] | None,
    ) -> None:
        gens = [self.dropout_generators[r] for r in self.active]
        self.model = StackedCNN(self.params, self.in_channels, states, gens).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(
            list(self.model.values.values()),
            lr=float(self.params["lr"]),
            weight_decay=float(self.params["weight_decay"]),
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=int(self.params["t_max"]))
        if scheduler_state is not None:
            lr = scheduler_state["_last_lr"][0]
            self.scheduler.load_state_dict(scheduler_state)
            self.optimizer.param_groups[0]["lr"] = lr
        if optimizer_states[0] is not None:
            for name, param in self.model.values.items():
                key = _key(name)
                per_run = [state[key] for state in optimizer_states if state is not None]
                self.optimizer.state[param] = {  # in the parameter's memory layout, as AdamW would create it
                    "step": per_run[0]["step"].clone(),
                    **{
                        field: torch.empty_like(param).copy_(self.model._stack(key, [s[field] for s in per_run]))
                        for field in ("exp_avg", "exp_avg_sq")
                    },
                }

    def run_state(self, run: int) -> dict[str, torch.Tensor]:
        return self.model.member_state(self.active.index(run))

    def _optimizer_state(self, k: int) -> dict[str, dict[str, torch.Tensor]]:
        out = {}
        for name, param in self.model.values.items():
            key = _key(name)
            state = self.optimizer.state[param]
            out[key] = {
                "step": state["step"],
                **{f: self.model.member(key, state[f], k).detach().clone() for f in ("exp_avg", "exp_avg_sq")},
            }
        return out

    def keep(self, runs: list[int]) -> None:
        """Go on with `runs` only (the others have stopped)."""
        if runs == self.active:
            return
        if not runs:
            self.active = []
            return
        ks = [self.active.index(r) for r in runs]
        states = [self.model.member_state(k) for k in ks]
        optimizer_states = [self._optimizer_state(k) for k in ks] if self.optimizer.state else [None] * len(ks)
        scheduler_state = self.scheduler.state_dict()
        self.active = list(runs)
        self._build(states, optimizer_states, scheduler_state)


def _name(key: str) -> str:
    """A member state-dict key ('4.weight') as a stacked tensor's name ('4_weight'); `_key` reverses it."""
    return key.replace(".", "_", 1)


def _key(name: str) -> str:
    return name.replace("_", ".", 1)


def train_stacked(
    params: Mapping[str, Any],
    data: DataSplits,
    seeds: Sequence[int],
    callbacks: Sequence[Iterable[Callback]] | None = None,
    max_epochs: int | None = None,
    device: str | torch.device = "auto",
    early_stopping: bool = True,
) -> list[TrainResult]:
    """Train `params` once per seed, all runs as one stacked model; one `TrainResult` per seed, in order, each what
    `train(params, data, seed=s, max_epochs=...)` gives up to rounding. `callbacks[r]` see run r's epochs (an
    `EpochLoop` each) as they end, in lockstep; a callback that stops a run stops that run only."""
    start = time.perf_counter()
    device = resolve_device(device) if isinstance(device, str) else device
    data = data.to(device)
    stack = _Stack(params, data, device, seeds)
    t_max = int(params["t_max"])
    epochs = t_max if max_epochs is None else max(1, min(t_max, int(max_epochs)))
    shuffles = [torch.Generator().manual_seed(seed) for seed in seeds]
    pos_weight = torch.tensor(data.pos_weight, device=device)
    loops = [_RunLoop(params, epochs, stack, r) for r in range(len(seeds))]
    run_callbacks = [list(c) for c in (callbacks or [()] * len(seeds))]
    if early_stopping:
        for c in run_callbacks:
            c.insert(0, EarlyStopping(int(params["early_stop_patience"])))
    x, y = data.x_train, data.y_train
    x_val = data.x_val
    if stack.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        x_val = x_val.contiguous(memory_format=torch.channels_last)
    batch_size = int(params["batch_size"])

    while True:
        for r in stack.active:
            if not loops[r].running and loops[r].best_weights is None:  # never a finite loss: its last weights stay
                loops[r].best_weights = stack.run_state(r)
        stack.keep([r for r in stack.active if loops[r].running])
        if not stack.active:
            break
        epoch_start = time.perf_counter()
        model, optimizer, active = stack.model, stack.optimizer, stack.active
        lr = float(optimizer.param_groups[0]["lr"])
        model.train()
        loss_sums = torch.zeros(len(active), device=device)
        correct = torch.zeros(len(active), device=device)
        orders = [batches(len(x), batch_size, shuffles[r], device) for r in active]
        for step_indices in zip(*orders, strict=True):
            xb = _side_by_side([x[idx] for idx in step_indices], stack.channels_last)
            yb = torch.stack([y[idx] for idx in step_indices])
            logits = model(xb)
            losses = torch.stack(
                [
                    F.binary_cross_entropy_with_logits(logits[k], yb[k], pos_weight=pos_weight)
                    for k in range(len(active))
                ]
            )
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            loss_sums += losses.detach() * yb.shape[1]
            correct += ((logits.detach() > 0) == (yb > 0.5)).sum(1)
        stack.scheduler.step()
        val_logits = _stacked_logits(model, x_val, len(active), stack.channels_last)
        seconds = (time.perf_counter() - epoch_start) / len(active)
        for k, r in enumerate(active):
            val = metrics_from_logits(val_logits[k], data.y_val, data.pos_weight)
            train_loss, train_accuracy = (loss_sums[k] / len(x)).item(), (correct[k] / len(x)).item()
            metrics = EpochMetrics.of(loops[r].epoch + 1, train_loss, train_accuracy, val, lr, seconds)
            loops[r].end_epoch(metrics, val.as_dict, run_callbacks[r])

    wall = time.perf_counter() - start
    return [
        _result(params, data, loop, seed, device, wall / len(seeds)) for loop, seed in zip(loops, seeds, strict=True)
    ]


def _side_by_side(batches_: list[torch.Tensor], channels_last: bool) -> torch.Tensor:
    xb = torch.cat(batches_, dim=1)
    return xb.contiguous(memory_format=torch.channels_last) if channels_last else xb


@torch.no_grad()
def _stacked_logits(model: StackedCNN, x: torch.Tensor, k: int, channels_last: bool) -> torch.Tensor:
    model.eval()
    chunk = max(1, eval_batch(x.device) // k)  # K runs side by side: the same number of images per pass as one run
    parts = [model(_side_by_side([x[i : i + chunk]] * k, channels_last)) for i in range(0, len(x), chunk)]
    return torch.cat(parts, dim=1)


def _result(
    params: Mapping[str, Any], data: DataSplits, loop: _RunLoop, seed: int, device: torch.device, wall: float
) -> TrainResult:
    model = build_model(params, in_channels=data.in_channels).to(device)
    if (
        loop.best_epoch == 0 and loop.best_weights is not None
    ):  # no finite loss: its last weights (`finished` loads a best)
        model.load_state_dict(loop.best_weights)
    return finished(loop, loop.best_weights, model.eval(), data, seed, device, wall)
