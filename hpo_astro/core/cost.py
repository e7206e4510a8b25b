"""What a configuration costs at inference, measured rather than guessed: its parameter count, the multiply-accumulates
and floating-point operations of one forward pass of one cutout (counted by PyTorch's `FlopCounterMode`), and the
time per cutout of a forward pass at a stated batch size on the study's device.

Every trial is measured the same way: the model in eval mode, `LATENCY_WARMUP` forward passes not timed (allocator,
kernel selection), then the median over `LATENCY_REPEATS` timed passes of one batch of random cutouts, synchronised
on CUDA, on one thread on a CPU. The median of several passes keeps one scheduler hiccup from deciding a trial's
latency; what is left is the device's own noise (a few per cent on an idle machine, more on a shared one, where other
workers train beside the timing), which is why the docs call latency a measured, not a reproducible, objective.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hpo_astro.core.model import architecture, build_model, count_parameters

DEFAULT_LATENCY_BATCH = 256  # cutouts per timed forward pass: a survey scores its candidates in batches
LATENCY_WARMUP = 3
LATENCY_REPEATS = 15
# A CPU times latency on one thread: the time one core takes per cutout, the same for every trial whether it runs in
# `run --workers K` (each worker has a share of the cores) or in a joining `worker` (all of them).
LATENCY_CPU_THREADS = 1
IMAGE_SIZE = 64


@dataclass(frozen=True)
class InferenceCost:
    """A model's inference cost. `macs` and `flops` are per cutout (a forward pass of batch 1); `latency_us` is the
    median time per cutout of a forward pass of `latency_batch` cutouts on `device`."""

    n_params: int
    macs: int
    flops: int
    latency_us: float
    latency_batch: int
    device: str
    latency_threads: int | None = None  # CPU threads the latency was timed on (None on a GPU, or not timed)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def forward_flops(model: nn.Module, in_channels: int, image_size: int = IMAGE_SIZE) -> int:
    """Floating-point operations of one forward pass of one cutout, as PyTorch's FLOP counter counts them (a
    multiply-accumulate is two; normalisation and activations are not counted)."""
    device = next(model.parameters()).device
    x = torch.zeros(1, in_channels, image_size, image_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def forward_latency_us(
    model: nn.Module,
    in_channels: int,
    batch: int = DEFAULT_LATENCY_BATCH,
    image_size: int = IMAGE_SIZE,
    repeats: int = LATENCY_REPEATS,
) -> float:
    """Median microseconds per cutout of a forward pass of `batch` cutouts, on the model's device; on a CPU with
    `LATENCY_CPU_THREADS` threads, whatever the process's own count (a worker's share of the cores, or all of them)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_channels, image_size, image_size, generator=generator).to(device)
    was_training = model.training
    model.eval()
    times: list[float] = []
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(LATENCY_CPU_THREADS)
    try:
        with torch.inference_mode():
            for i in range(LATENCY_WARMUP + repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= LATENCY_WARMUP:
                    times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
        torch.set_num_threads(threads)
    return statistics.median(times) / batch * 1e6


def measure_cost(
    params: Mapping[str, Any],
    in_channels: int,
    model: nn.Module | None = None,
    device: str | torch.device = "cpu",
    latency_batch: int = DEFAULT_LATENCY_BATCH,
    latency: bool = True,
) -> InferenceCost:
    """The inference cost of the configuration `params`. The counts depend on its architecture only and are counted
    once per architecture in a process; the latency is timed on `model` (else a model built afresh on `device`: it
    does not depend on the weights) every time. `latency=False` skips the timing (NaN), for a study that does not
    optimise it."""
    key = tuple(sorted(architecture(params, in_channels).items()))
    n_params, flops = _counts(key, in_channels)
    latency_us = math.nan
    if latency:
        model = model if model is not None else build_model(params, in_channels=in_channels).to(device)
        device = next(model.parameters()).device
        latency_us = forward_latency_us(model, in_channels, latency_batch)
    device = torch.device(device)
    threads = LATENCY_CPU_THREADS if latency and device.type == "cpu" else None
    return InferenceCost(n_params, flops // 2, flops, latency_us, latency_batch, str(device), threads)


@functools.lru_cache(maxsize=4096)
def _counts(architecture_items: tuple[tuple[str, Any], ...], in_channels: int) -> tuple[int, int]:
    """Parameters and FLOPs per cutout of an architecture (counting builds the model and runs it once: tens of
    milliseconds, which a replayed trial would otherwise pay every time)."""
    model = build_model(dict(architecture_items), in_channels=in_channels)
    return count_parameters(model), forward_flops(model, in_channels)
