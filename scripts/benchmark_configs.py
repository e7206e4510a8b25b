"""Measure a few fixed configurations on a data set (default: the simulated ExRomana set).

Prints validation and test accuracy / ROC AUC per configuration, averaged over the seeds, and the test accuracy
of each seed: the numbers quoted in the README that show how much room the simulator leaves for tuning. The test
split is read here only to report those figures.

    python scripts/benchmark_configs.py [--data FILE] [--seeds 0 1 2] [--max-epochs N] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hpo_astro.core.hyperparameters import DEFAULT_PARAMS
from hpo_astro.core.train import evaluate, train
from hpo_astro.data.prepare import load_splits

CONFIGS: dict[str, dict] = {
    "default (paper-like, untuned)": DEFAULT_PARAMS,
    "bad (lr 0.1, Tanh, 1 conv)": {
        **DEFAULT_PARAMS,
        "conv_layers": 1,
        "activation": "Tanh",
        "lr": 1e-1,
        "batch_size": 256,
    },
    "small (1 conv, linear head)": {**DEFAULT_PARAMS, "conv_layers": 1, "fc_layers": 1},
    "tuned-looking (3 conv k5, BN)": {
        **DEFAULT_PARAMS,
        "conv_layers": 3,
        "conv_kernel_size": 5,
        "fc_width": 128,
        "normalization": "BatchNorm",
        "activation": "GELU",
        "batch_size": 16,
        "t_max": 50,
        "early_stop_patience": 10,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="ExRomana file (default: the cached simulated set)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", default=None, help="substring of a configuration name")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_splits(args.data)
    print(f"data {data.source}: train {len(data.y_train)}, val {len(data.y_val)}, test {len(data.y_test)}")
    header = f"{'configuration':32s} {'epochs':>6s} {'val acc':>8s} {'test acc':>8s} {'test AUC':>8s} {'seconds':>8s}"
    print(f"{header}  test acc per seed {tuple(args.seeds)}")
    for name, params in CONFIGS.items():
        if args.only and args.only not in name:
            continue
        rows = []
        for seed in args.seeds:
            start = time.perf_counter()
            result = train(params, data, max_epochs=args.max_epochs, seed=seed)
            test = evaluate(result.model, data.x_test, data.y_test, data.pos_weight)
            rows.append(
                (
                    len(result.history),
                    result.val_metrics.accuracy,
                    test.accuracy,
                    test.roc_auc,
                    time.perf_counter() - start,
                )
            )
        cols = list(zip(*rows, strict=True))
        mean = [statistics.fmean(c) for c in cols]
        per_seed = " ".join(f"{acc:.4f}" for acc in cols[2])
        line = f"{name:32s} {mean[0]:6.1f} {mean[1]:8.4f} {mean[2]:8.4f} {mean[3]:8.4f} {mean[4]:8.1f}"
        print(f"{line}  {per_seed}", flush=True)


if __name__ == "__main__":
    main()
