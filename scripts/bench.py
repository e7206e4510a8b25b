"""Throughput benchmark: how close a trial runs to the speed of the hardware. Prints one JSON object.

    python scripts/bench.py [--device auto|cpu|cuda] [--quick] [--repeats 3] [--epochs 2] [--train-size N]
                            [--batch-sizes 4 16 64 256] [--workers 1 2 4] [--skip-study] [--skip-grid]

Measured, each side of a ratio back to back in one invocation, repeated, medians reported:

* `trainer`: `hpo_astro.core.train.train` against the best bare PyTorch loop of its kind: the same work (the same
  model built by `hpo_astro.core.model.build_model`, data on the device, AdamW with the same options, BCE with
  pos_weight, cosine schedule, per-epoch validation loss) in the same memory layout (channels_last on CPU, as the
  trainer; `ratio`), and the same loop in the default layout (`ratio_vs_default_layout`), for every batch size,
  with the default configuration ("default") and the largest one of the
  paper's space ("largest": 4 conv blocks of kernel 7, 5 FC layers of 256). Early stopping is off on both sides
  so both run the same number of epochs. Reported: seconds per epoch, the ratio, step time and images/s. On CUDA
  the trainer captures its step as a CUDA graph (the default); its eager mode (`capture=False`) is measured too.
* `study`: the fixed cost of a trial in a study beyond its training (sampler, store writes, checkpoints, weights):
  `run_study` with a training stand-in that returns at once, per trial; and a new process's start-up
  (`hpo-astro --version`-like import of the CLI and of torch).
* `grid`: the 32 fixed configurations (batch 4/16/64/256 x conv layers 1-4 x kernel 3/7, other values default)
  run as a grid study through `hpo-astro run --workers K`, wall time per K.
* `stacked` (`--stacked`): K runs of one configuration (seeds 0..K-1) trained as one stacked model
  (`hpo_astro.core.stacked.train_stacked`) against the same K runs one after another, K = 1, 3, 5, at the smallest
  and largest batch size: the speed-up, and the time of K stacked runs in units of one run.
* `peer` (`--peer`): `hpo-astro run` on a 4-configuration grid against `scripts/peer_optuna_example.py` (the
  optuna-examples-style script a user would write) on the same grid, data and CNN, each a fresh process, back to
  back: the peer at its best (tensor batches, channels_last on CPU) and as optuna-examples writes it (`--plain`).
* `paper_protocol_estimate`: the paper's 347 trials estimated from the measured seconds per epoch at each batch
  size (default configuration) and the mean epochs a trial of the paper's space runs (t_max capped by early
  stopping: taken as the mean of min(t_max, 2 x patience + 5) over the space, an assumption stated in the output).

On the 2-core CPU machine, `--quick` keeps the run under 10 minutes (fewer repeats, a training subset; the stacked
runs and the peer comparison included).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpo_astro.core.hyperparameters import DEFAULT_PARAMS, PAPER_SPACE
from hpo_astro.core.model import build_model
from hpo_astro.core.train import eval_batch, resolve_device, seed_everything, train
from hpo_astro.data.prepare import DataSplits, load_splits

LARGEST = {
    **DEFAULT_PARAMS,
    "conv_layers": 4,
    "conv_kernel_size": 7,
    "fc_layers": 5,
    "fc_width": 256,
    "normalization": "BatchNorm",
}
CONFIGS = {"default": DEFAULT_PARAMS, "largest": LARGEST}


def subset(data: DataSplits, n: int | None) -> DataSplits:
    """The first `n` training cutouts (validation split unchanged): the ratio does not depend on the size."""
    if not n or n >= len(data.y_train):
        return data
    return dataclasses.replace(data, x_train=data.x_train[:n], y_train=data.y_train[:n])


def bare_loop(
    params: Mapping[str, Any],
    data: DataSplits,
    epochs: int,
    seed: int,
    device: torch.device,
    variant: str = "plain",
) -> float:
    """The loop a user would write by hand, doing the trainer's work; returns its wall time in seconds.

    `variant` tries one speed-up (see `VARIANTS`): the measurements behind the README's list of what was tried."""
    start = time.perf_counter()
    seed_everything(seed)
    x, y = data.x_train.to(device), data.y_train.to(device)
    xv, yv = data.x_val.to(device), data.y_val.to(device)
    model = build_model(params, in_channels=x.shape[1]).to(device)
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x, xv = x.contiguous(memory_format=torch.channels_last), xv.contiguous(memory_format=torch.channels_last)
    optimizer_options = {"foreach": True} if variant == "foreach" else {"fused": True} if variant == "fused" else {}
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(params["lr"]), weight_decay=float(params["weight_decay"]), **optimizer_options
    )
    if variant == "compile":
        model = torch.compile(model)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(params["t_max"]))
    criterion = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(data.pos_weight, device=device))
    batch = int(params["batch_size"])
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=generator).split(batch):
            if len(idx) < 2:
                continue  # BatchNorm cannot train on one sample (the trainer merges it into the previous batch)
            idx = idx.to(device)
            loss = criterion(model(x[idx]).squeeze(1), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        with torch.no_grad():
            chunk = eval_batch(device)  # the trainer's evaluation chunk: the best measured on this device
            val_loss = sum(
                criterion(model(xv[i : i + chunk]).squeeze(1), yv[i : i + chunk]).item() * len(yv[i : i + chunk])
                for i in range(0, len(xv), chunk)
            ) / len(yv)
        del val_loss  # computed every epoch, as a user's loop does for early stopping
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


VARIANTS = ("plain", "channels_last", "foreach", "fused", "compile")


def bench_variants(args: argparse.Namespace, data: DataSplits, device: torch.device) -> dict[str, Any]:
    """Seconds per epoch of the bare loop with each speed-up, default configuration, at the two ends of the batch
    sizes, relative to the plain loop (< 1: faster). `compile` includes its compilation, as a trial would pay it."""
    out: dict[str, Any] = {}
    for batch in (min(args.batch_sizes), max(args.batch_sizes)):
        params = {**DEFAULT_PARAMS, "batch_size": batch, "t_max": max(int(DEFAULT_PARAMS["t_max"]), args.epochs)}
        times = {v: [] for v in VARIANTS}
        bare_loop(params, data, 1, 0, device)  # warm-up
        for _ in range(args.repeats):
            for variant in VARIANTS:
                try:
                    times[variant].append(bare_loop(params, data, args.epochs, 0, device, variant) / args.epochs)
                except Exception as exc:  # e.g. torch.compile without a C++ compiler: reported, not fatal
                    print(f"# variant {variant} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                    times[variant].append(math.nan)
        plain = statistics.median(times["plain"])
        out[f"batch{batch}"] = {
            v: {"s_per_epoch": statistics.median(t), "vs_plain": statistics.median(t) / plain} for v, t in times.items()
        }
        print(
            f"# variants batch {batch}: "
            + ", ".join(f"{v} {out[f'batch{batch}'][v]['vs_plain']:.3f}" for v in VARIANTS),
            file=sys.stderr,
        )
    threads = {}
    params = {**DEFAULT_PARAMS, "batch_size": max(args.batch_sizes)}
    saved = torch.get_num_threads()
    for n in sorted({1, saved}):
        torch.set_num_threads(n)
        threads[str(n)] = statistics.median(
            bare_loop(params, data, args.epochs, 0, device) for _ in range(args.repeats)
        )
    torch.set_num_threads(saved)
    out["threads_s_per_run"] = threads
    return out


def trainer(
    params: Mapping[str, Any], data: DataSplits, epochs: int, seed: int, device: torch.device, capture: bool = True
) -> float:
    start = time.perf_counter()
    train(params, data, max_epochs=epochs, seed=seed, device=device, early_stopping=False, capture=capture)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def paired(
    first: Callable[[], float], second: Callable[[], float], repeats: int, warm_up: bool = True
) -> tuple[list[float], list[float]]:
    """Both sides back to back, alternating which goes first, after one warm-up each (unless already warm)."""
    if warm_up:
        first(), second()
    a: list[float] = []
    b: list[float] = []
    for r in range(repeats):
        if r % 2:
            b.append(second())
            a.append(first())
        else:
            a.append(first())
            b.append(second())
    return a, b


def trainer_layout(device: torch.device) -> str:
    """The bare loop's variant that uses the trainer's memory layout (`hpo_astro.core.train.train`)."""
    return "channels_last" if device.type == "cpu" else "plain"


def bench_trainer(args: argparse.Namespace, data: DataSplits, device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {}
    layout = trainer_layout(device)
    n = len(data.y_train)
    for name, base in CONFIGS.items():
        for batch in args.batch_sizes:
            params = {**base, "batch_size": batch, "t_max": max(int(base["t_max"]), args.epochs)}
            ours, bare = paired(
                lambda p=params: trainer(p, data, args.epochs, 0, device),
                lambda p=params: bare_loop(p, data, args.epochs, 0, device, layout),
                args.repeats,
            )
            t_ours, t_bare = statistics.median(ours), statistics.median(bare)
            default_layout = [bare_loop(params, data, args.epochs, 0, device) for _ in range(args.layout_repeats)]
            steps = args.epochs * math.ceil(n / batch)
            entry = out[f"{name}/batch{batch}"] = {
                "trainer_s_per_epoch": t_ours / args.epochs,
                "bare_s_per_epoch": t_bare / args.epochs,
                "ratio": t_ours / t_bare,
                "bare_layout": layout,
                "ratio_vs_default_layout": t_ours / statistics.median(default_layout),
                "trainer_step_ms": 1000 * t_ours / steps,
                "bare_step_ms": 1000 * t_bare / steps,
                "trainer_images_per_s": args.epochs * n / t_ours,
                "runs": {"trainer": ours, "bare": bare, "bare_default_layout": default_layout},
            }
            if device.type == "cuda":  # the trainer's eager mode (--no-capture) too: what capture buys
                eager = [trainer(params, data, args.epochs, 0, device, capture=False) for _ in range(args.repeats)]
                t_eager = statistics.median(eager)
                entry |= {
                    "eager_s_per_epoch": t_eager / args.epochs,
                    "eager_ratio": t_eager / t_bare,
                    "eager_step_ms": 1000 * t_eager / steps,
                    "capture_speedup": t_eager / t_ours,
                }
                entry["runs"]["eager"] = eager
            print(f"# {name} batch {batch}: ratio {t_ours / t_bare:.3f}", file=sys.stderr)
    return out


def bench_stacked(args: argparse.Namespace, data: DataSplits, device: torch.device) -> dict[str, Any]:
    """K runs of the default configuration stacked against the same K runs one after another."""
    from hpo_astro.core.stacked import train_stacked

    out: dict[str, Any] = {}
    for batch in sorted({min(args.batch_sizes), max(args.batch_sizes)}):
        params = {**DEFAULT_PARAMS, "batch_size": batch, "t_max": max(int(DEFAULT_PARAMS["t_max"]), args.epochs)}

        def one_by_one(k: int, p: dict = params) -> float:
            return sum(trainer(p, data, args.epochs, seed, device) for seed in range(k))

        def stacked(k: int, p: dict = params) -> float:
            start = time.perf_counter()
            train_stacked(p, data, list(range(k)), max_epochs=args.epochs, device=device, early_stopping=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        stacked(1)  # warm-up of both paths (the lone runs were warmed by the trainer section or here)
        one_run = statistics.median(one_by_one(1) for _ in range(args.stacked_repeats + 1))
        for k in (1, 3, 5):
            sequential, together = paired(
                lambda k=k: one_by_one(k), lambda k=k: stacked(k), args.stacked_repeats, warm_up=False
            )
            t_seq, t_stack = statistics.median(sequential), statistics.median(together)
            out[f"batch{batch}/K{k}"] = {
                "sequential_s": t_seq,
                "stacked_s": t_stack,
                "speedup": t_seq / t_stack,
                "stacked_in_one_runs": t_stack / one_run,
            }
            shown = f"x{t_seq / t_stack:.2f}, {t_stack / one_run:.2f} runs"
            print(f"# stacked batch {batch} K={k}: {shown}", file=sys.stderr)
    return out


def bench_peer(args: argparse.Namespace, data_path: str | None) -> dict[str, Any]:
    """`hpo-astro run` against the optuna-examples-style script on the same 4-configuration grid, each a new
    process (start-up, data loading and all), alternating which goes first."""
    peer_script = Path(__file__).with_name("peer_optuna_example.py")
    with tempfile.TemporaryDirectory() as tmp:
        grid = Path(tmp) / "grid.toml"
        grid.write_text(
            f'strategy = "grid"\nn_trials = 4\nmax_epochs = {args.peer_epochs}\npruner = "none"\n'
            "[space]\nbatch_size = [16, 64]\nconv_layers = [2, 3]\n"
        )
        extra = ["--data", data_path] if data_path else []
        commands = {
            "hpo_astro": [sys.executable, "-m", "hpo_astro.cli", "run", "--config", str(grid), *extra],
            "peer_best": [sys.executable, str(peer_script), "--grid", str(grid), *extra],
            "peer_plain": [sys.executable, str(peer_script), "--grid", str(grid), "--plain", *extra],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for repeat in range(args.peer_repeats):
            order = list(commands) if repeat % 2 == 0 else list(reversed(commands))
            for name in order:
                store = f"sqlite:///{tmp}/{name}-{repeat}.db"
                start = time.perf_counter()
                done = subprocess.run([*commands[name], "--storage", store], capture_output=True, text=True)
                times[name].append(time.perf_counter() - start)
                if done.returncode:
                    raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    wall = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "grid": "batch_size [16, 64] x conv_layers [2, 3], other values default",
        "epochs": args.peer_epochs,
        "wall_s": wall,
        "runs": times,
        "ratio_vs_peer_best": wall["hpo_astro"] / wall["peer_best"],
        "ratio_vs_peer_plain": wall["hpo_astro"] / wall["peer_plain"],
    }
    print(
        f"# peer: hpo-astro {wall['hpo_astro']:.1f} s, peer best {wall['peer_best']:.1f} s, "
        f"peer plain {wall['peer_plain']:.1f} s",
        file=sys.stderr,
    )
    return result


def bench_study(args: argparse.Namespace, data_path: str | None) -> dict[str, Any]:
    """Per-trial cost of a study beyond training (sampler, store writes, per-epoch checkpoints and pruning reports,
    best weights), with trials that train one epoch on 16 cutouts; and a new process's start-up."""
    from hpo_astro.core.space import SearchSpace
    from hpo_astro.study.config import StudyConfig
    from hpo_astro.study.run import run_study

    training = [0.0]  # seconds spent training, callbacks excluded

    class Timed:
        """A callback wrapper whose time counts as study overhead, not training."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.seconds = 0.0

        def on_epoch_end(self, state: Any) -> None:
            t = time.perf_counter()
            self.inner.on_epoch_end(state)
            self.seconds += time.perf_counter() - t

    def tiny_train(params, data, callbacks=(), max_epochs=None, seed=0, resume=None, **kwargs):  # type: ignore[no-untyped-def]
        wrapped = [Timed(cb) for cb in callbacks]
        t = time.perf_counter()
        result = train(params, subset(data, 16), callbacks=wrapped, max_epochs=1, seed=seed, resume=resume)
        training[0] += time.perf_counter() - t - sum(w.seconds for w in wrapped)
        return result

    n_trials = 10
    with tempfile.TemporaryDirectory() as tmp:
        cfg = StudyConfig(
            strategy="random",
            n_trials=n_trials,
            storage=f"sqlite:///{tmp}/bench.db",
            data=Path(data_path) if data_path else None,
            space=SearchSpace.from_dict({"lr": [1e-3, 1e-2], "fc_width": [32, 64], "conv_layers": [1]}),
        )
        run_study(cfg, train=tiny_train)  # warm-up: data cache, imports
        cfg.study = "timed"
        training[0] = 0.0
        start = time.perf_counter()
        run_study(cfg, train=tiny_train)
        total = time.perf_counter() - start
    startup = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, optuna, hpo_astro.cli"], check=True)
        startup.append(time.perf_counter() - t)
    return {
        "trials": n_trials,
        "seconds_per_trial_beyond_training": (total - training[0]) / n_trials,
        "process_start_s": statistics.median(startup),
    }


def bench_grid(args: argparse.Namespace, data_path: str | None) -> dict[str, Any]:
    """The 32-configuration grid through `hpo-astro run --workers K`."""
    out: dict[str, Any] = {}
    for k in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "grid.toml"
            config.write_text(
                f'strategy = "grid"\nn_trials = 32\nmax_epochs = {args.grid_epochs}\n'
                "[space]\nbatch_size = [4, 16, 64, 256]\nconv_layers = [1, 2, 3, 4]\nconv_kernel_size = [3, 7]\n"
            )
            command = [sys.executable, "-m", "hpo_astro.cli", "run", "--config", str(config)]
            command += ["--storage", f"sqlite:///{tmp}/grid.db", "--workers", str(k)]
            if data_path:
                command += ["--data", data_path]
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            out[f"workers{k}"] = {"wall_s": time.perf_counter() - start}
            print(f"# grid K={k}: {out[f'workers{k}']['wall_s']:.1f} s", file=sys.stderr)
    best = min(out, key=lambda key: out[key]["wall_s"])
    return {"epochs": args.grid_epochs, "runs": out, "best": best}


def paper_estimate(trainer_results: dict[str, Any], train_size: int, full_size: int) -> dict[str, Any]:
    """Estimate the paper protocol's wall time from the measured seconds per epoch (default configuration)."""
    per_epoch = {
        int(key.split("batch")[1]): value["trainer_s_per_epoch"] * full_size / train_size
        for key, value in trainer_results.items()
        if key.startswith("default/")
    }
    patience = PAPER_SPACE["early_stop_patience"]
    t_max = PAPER_SPACE["t_max"]
    mean_epochs = statistics.mean(min(int(t), 2 * int(p) + 5) for t in t_max for p in patience)
    per_trial = {b: s * mean_epochs for b, s in per_epoch.items()}
    mean_trial = statistics.mean(per_trial.values())  # batch sizes equally likely under random search
    return {
        "assumed_mean_epochs_per_trial": mean_epochs,
        "seconds_per_epoch_full_data": per_epoch,
        "mean_trial_s": mean_trial,
        "trials": 347,
        "one_worker_hours": 347 * mean_trial / 3600,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", default=None, help="data file (default: the cached simulated set)")
    parser.add_argument("--quick", action="store_true", help="a run under 10 minutes on 2 CPU cores")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=None, help="training cutouts used (default: all)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 16, 64, 256])
    parser.add_argument("--workers", type=int, nargs="+", default=None, help="K values for the grid")
    parser.add_argument("--grid-epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-study", action="store_true")
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument("--only", choices=sorted(CONFIGS), default=None, help="one configuration only")
    parser.add_argument("--variants", action="store_true", help="also try channels_last, foreach/fused AdamW, compile")
    parser.add_argument("--skip-trainer", action="store_true")
    parser.add_argument("--stacked", action="store_true", help="K stacked runs against K runs one after another")
    parser.add_argument("--peer", action="store_true", help="hpo-astro run against the optuna-examples-style script")
    parser.add_argument("--peer-epochs", type=int, default=3)
    parser.add_argument("--stacked-repeats", type=int, default=2)
    parser.add_argument("--peer-repeats", type=int, default=2)
    parser.add_argument("--layout-repeats", type=int, default=None, help="runs of the default-layout loop")
    args = parser.parse_args()
    if args.quick:
        args.repeats = args.repeats or 3
        args.train_size = args.train_size or 640
        args.skip_grid = True
        args.stacked = args.peer = True
        args.peer_epochs, args.peer_repeats, args.stacked_repeats = min(args.peer_epochs, 1), 1, 1
    args.repeats = args.repeats or 5
    args.layout_repeats = args.layout_repeats or (1 if args.quick else args.repeats)
    if args.only:
        for name in list(CONFIGS):
            if name != args.only:
                del CONFIGS[name]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.workers is None:
        args.workers = [1, 2] if device.type == "cpu" else [1, 4, 8, 12]
    full = load_splits(args.data)
    data = subset(full, args.train_size)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "train_size": len(data.y_train),
        "epochs": args.epochs,
        "repeats": args.repeats,
        "command": " ".join(sys.argv),
    }
    if args.variants:
        result["variants"] = bench_variants(args, data, device)
    if not args.skip_trainer:
        result["trainer"] = bench_trainer(args, data, device)
        result["max_ratio"] = max(v["ratio"] for v in result["trainer"].values())
    if "default/batch4" in result.get("trainer", {}):
        result["paper_protocol_estimate"] = paper_estimate(result["trainer"], len(data.y_train), len(full.y_train))
    if args.stacked:
        result["stacked"] = bench_stacked(args, data, device)
    if args.peer:
        result["peer"] = bench_peer(args, args.data)
    if not args.skip_study:
        result["study"] = bench_study(args, args.data)
    if not args.skip_grid:
        result["grid"] = bench_grid(args, args.data)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
