"""Replay throughput: replayed trials per second on one core, against the bare Optuna loop of the same sampler.

A benchmark in tabular mode runs many short studies whose trials are answered from a table: what a trial costs
there is the sampler's work plus hpo-astro's bookkeeping (the objective, the trial's record, the in-memory store).
This script times both on the shipped table, each study in a fresh in-memory store, after one warm-up study:

* hpo-astro: `run_study` with the table's replay (what `hpo-astro benchmark --table` runs per study);
* bare Optuna: `study.optimize` with the same sampler class and seed, each trial suggesting the same parameters,
  reporting the same number of epochs and returning the table's value, nothing recorded (the floor: what the
  sampler and Optuna's in-memory store cost).

    python scripts/bench_replay.py                     # random, tpe, qmc, bayesian; 40-trial studies
    python scripts/bench_replay.py --strategies random --n-trials 200 --studies 5
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
import torch

from hpo_astro.benchmark.plan import BenchmarkSpec
from hpo_astro.benchmark.runner import replay_storage
from hpo_astro.study.run import run_study
from hpo_astro.study.strategies import make_sampler
from hpo_astro.tabular import TableReplay, load_table, table_data

_REPLAYS: dict[int, TableReplay] = {}


def study_config(strategy: str, n_trials: int, seed: int, table: Any) -> Any:
    """The study `hpo-astro benchmark --table` runs for this strategy and seed (a `StudyConfig`)."""
    spec = BenchmarkSpec(strategies=(strategy,), repeats=1, n_trials=n_trials, out="unused")
    settings = spec.for_table(table)
    return spec.config(strategy, seed, space=settings.space, max_epochs=settings.max_epochs, split=settings.split)


def hpo_astro_study(strategy: str, n_trials: int, seed: int, table: Any) -> float:
    cfg = study_config(strategy, n_trials, seed, table)
    replay = _REPLAYS.setdefault(id(table), TableReplay(table))  # one per process, as the benchmark's runner has
    data = table_data(table)
    start = time.perf_counter()
    run_study(cfg, train=replay, data=data, storage=replay_storage())  # the store `benchmark --table` uses
    return time.perf_counter() - start


def bare_optuna_study(strategy: str, n_trials: int, seed: int, table: Any) -> float:
    cfg = study_config(strategy, n_trials, seed, table)
    sampler = make_sampler(cfg)
    sampler = getattr(sampler, "inner", sampler)  # the Optuna sampler itself, without hpo-astro's per-trial seeding
    space = cfg.space.grid("the bare loop")
    answers = {}
    for row in table.rows:
        key = tuple(row.params[name] for name in space)
        answers.setdefault(key, row)

    def objective(trial: optuna.Trial) -> float:
        row = answers[tuple(trial.suggest_categorical(name, values) for name, values in space.items())]
        for epoch, metrics in enumerate(row.history, start=1):
            trial.report(metrics.val_accuracy, epoch)
        return float(row.val_metrics["accuracy"])

    study = optuna.create_study(sampler=sampler, direction="maximize", storage=optuna.storages.InMemoryStorage())
    start = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    return time.perf_counter() - start


def measure(run: Callable[[str, int, int, Any], float], strategy: str, args: argparse.Namespace, table: Any) -> float:
    run(strategy, args.n_trials, 999, table)  # warm-up: imports, the table's index, the sampler's first use
    seconds = [run(strategy, args.n_trials, seed, table) for seed in range(args.studies)]
    return statistics.median(seconds) / args.n_trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", default="random,tpe,qmc,bayesian")
    parser.add_argument("--n-trials", type=int, default=40, help="trials per study (the benchmark's default is 40)")
    parser.add_argument("--studies", type=int, default=5, help="studies timed per strategy (the median is shown)")
    parser.add_argument("--table", default="astro-small")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    table = load_table(args.table, "sqlite:///unused.db")
    print(f"table {table.name}: {len(table.rows)} rows; {args.n_trials}-trial studies, median of {args.studies}")
    print(f"{'strategy':<10} {'hpo-astro':>18} {'bare Optuna':>18} {'bookkeeping':>12}")
    for strategy in args.strategies.split(","):
        ours = measure(hpo_astro_study, strategy, args, table)
        bare = measure(bare_optuna_study, strategy, args, table)
        print(
            f"{strategy:<10} {1000 * ours:>7.2f} ms {1 / ours:>6.0f}/s {1000 * bare:>7.2f} ms {1 / bare:>6.0f}/s "
            f"{1000 * (ours - bare):>9.2f} ms",
            flush=True,
        )


if __name__ == "__main__":
    main()
