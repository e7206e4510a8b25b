"""Measure parallel workers on one study: trials per hour and lock errors at K = 1, 2, 4.

Each K runs a fresh study (random search over small, fast architectures) through the real command,
`hpo-astro run --workers K`, and counts "database is locked" (or any lock/timeout error) in what the workers
print, plus failed trials in the store.

    python scripts/benchmark_workers.py [--workers 1 2 4] [--trials 24] [--max-epochs 3] [--storage sqlite|journal]
                                        [--records 1000]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from hpo_astro.data import exromana, simulate

SPACE = """
[space]
conv_layers = [1, 2]
conv_kernel_size = [3, 5]
fc_layers = [1, 2]
fc_width = [32, 64]
lr = [1e-3, 1e-2]
batch_size = [64]
t_max = [10]
"""
LOCK_ERROR = re.compile(r"database is locked|OperationalError|lock timeout", re.IGNORECASE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--records", type=int, default=1000, help="size of the simulated data set")
    parser.add_argument("--storage", choices=["sqlite", "journal"], default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = exromana.save(simulate.simulate_records(n=args.records, seed=0), root / "data.npy")
        config = root / "bench.toml"
        config.write_text(f'strategy = "random"\nmax_epochs = {args.max_epochs}\n' + SPACE)
        print(f"{args.trials} trials of up to {args.max_epochs} epochs, {args.records} records, {args.storage}")
        print(f"{'K':>3s} {'wall s':>8s} {'trials/h':>9s} {'lock errors':>12s} {'failed':>7s}")
        for k in args.workers:
            url = f"sqlite:///{root / f'k{k}.db'}" if args.storage == "sqlite" else f"journal:{root / f'k{k}.log'}"
            cmd = [
                sys.executable,
                "-m",
                "hpo_astro.cli",
                "run",
                "--config",
                str(config),
                "--study",
                f"k{k}",
                "--n-trials",
                str(args.trials),
                "--workers",
                str(k),
                "--storage",
                url,
                "--data",
                str(data),
            ]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - start
            locks = len(LOCK_ERROR.findall(proc.stdout + proc.stderr))
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
            from hpo_astro.store.storage import open_storage

            study = optuna.load_study(study_name=f"k{k}", storage=open_storage(url, heartbeat_interval=None))
            failed = len(study.get_trials(states=(optuna.trial.TrialState.FAIL,)))
            print(f"{k:3d} {wall:8.1f} {args.trials / wall * 3600:9.0f} {locks:12d} {failed:7d}", flush=True)


if __name__ == "__main__":
    main()
