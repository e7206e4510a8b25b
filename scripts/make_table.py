#!/usr/bin/env python
"""The recipe of the shipped table `hpo_astro/tables/astro-small.json.gz` (docs/tabular.md), end to end:

1. simulate a small data set (`hpo-astro data synth`), split 40/30/30 so that the validation split holds 510 cutouts
   (one cutout is 0.002 of accuracy);
2. a random study over the paper's full space, short trials (`hpo-astro run --strategy random`);
3. fANOVA on it (`optuna.importance.FanovaImportanceEvaluator`): the hyperparameters that matter most;
4. the narrowed space: the most important hyperparameters with all their paper values (less LEFT_OUT), in order of
   importance, while the table stays within MAX_CONFIGS; the others at their defaults;
5. `hpo-astro tabulate --seeds 3` over that space: every configuration trained with 3 seeds, so the table carries the
   training noise; then the table is written with the recipe's provenance in its `info`.

Every step is the command a user would type, with every setting written here, so the table reproduces (on the same
kind of device: training is deterministic per device). Resumable: re-running picks up the studies where they
stopped. Prints each step's wall and CPU time and writes them, with the importances, to WORK/recipe.json.

    .venv/bin/python scripts/make_table.py                 # writes hpo_astro/tables/astro-small.json.gz
    .venv/bin/python scripts/make_table.py --work /tmp/t --out /tmp/t/astro-small.json.gz
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = "astro-small"
RECORDS, DATA_SEED = 1700, 0  # simulated cutouts, split SPLIT: 680 train, 510 validation, 510 test
SPLIT = "0.4,0.3,0.3"  # train, validation, test: training costs what 700 did; a validation cutout is 1/510 of accuracy
SEEDS = 3  # training seeds per configuration (the table's runs of each)
SEED = 0  # sampler and training seed of both studies
FANOVA_TRIALS, FANOVA_EPOCHS = 60, 5
TABLE_EPOCHS = 6
MAX_CONFIGS = 400  # the most important hyperparameters' grids up to this size (here 5: 384; a 6th made 1,536)
# Values left out for cost on a CPU, as `scripts/reproduce_paper.sh --quick` leaves them out: batch sizes 4 and 16
# take 170 and 43 optimiser steps an epoch on 680 training cutouts against 11 and 3, and would be most of the
# table's training time (the whole grid with them would be 768 configurations).
LEFT_OUT = {"batch_size": (4, 16)}


def hpo(*args: object) -> list[str]:
    return [str(ROOT / ".venv" / "bin" / "hpo-astro"), *map(str, args)]


class Timings(dict):
    """Each step's wall and CPU time, added up over the recipe's invocations (it resumes; the total is what every
    invocation cost) and saved to `path` after every step."""

    def __init__(self, path: Path) -> None:
        super().__init__(json.loads(path.read_text()) if path.exists() else {})
        self.path = path

    def add(self, name: str, wall: float, cpu: float) -> None:
        earlier = self.get(name, {"wall_s": 0.0, "cpu_s": 0.0})
        self[name] = {"wall_s": round(earlier["wall_s"] + wall, 1), "cpu_s": round(earlier["cpu_s"] + cpu, 1)}
        self.path.write_text(json.dumps(self, indent=2) + "\n")


def step(name: str, command: list[str] | None, timings: Timings, func=None) -> object:
    """Run one step, adding its wall time and CPU time (children included) to `timings`, also when it fails or is
    interrupted."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    print(f"== {name}: {' '.join(command) if command else ''}", flush=True)
    try:
        return subprocess.run(command, check=True) if command else func()
    finally:
        after = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
        cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before, strict=True))
        timings.add(name, time.perf_counter() - start, cpu)
        print(f"   {name}: {timings[name]['wall_s']} s wall, {timings[name]['cpu_s']} s CPU (all runs)", flush=True)


def importances(storage: str) -> dict[str, float]:
    """fANOVA importances of the random study's validation accuracy (complete trials)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="fanova-random", storage=storage)
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=SEED)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def narrowed_space(ranked: dict[str, float], max_configs: int) -> dict[str, list]:
    """The most important hyperparameters with all their paper values (less LEFT_OUT), in order of importance, while
    the product of their value counts fits in `max_configs`."""
    from hpo_astro.core.hyperparameters import PAPER_SPACE

    space: dict[str, list] = {}
    for name in ranked:
        values = [v for v in PAPER_SPACE[name] if v not in LEFT_OUT.get(name, ())]
        if math.prod(len(v) for v in space.values()) * len(values) > max_configs:
            break
        space[name] = values
    return space


def space_toml(space: dict[str, list], ranked: dict[str, float]) -> str:
    lines = ["# Written by scripts/make_table.py: the random study's most important hyperparameters (fANOVA).", ""]
    lines += ["[space]"]
    for name, values in space.items():
        shown = ", ".join(json.dumps(v) if isinstance(v, str) else repr(v) for v in values)
        lines.append(f"{name} = [{shown}]  # importance {ranked[name]:.3f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hpo-astro-table"), help="working folder")
    parser.add_argument("--out", type=Path, default=ROOT / "hpo_astro" / "tables" / f"{NAME}.json.gz")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of both studies")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HPO_ASTRO_CACHE", str(work / "cache"))
    data, storage = work / f"sim-n{RECORDS}-seed{DATA_SEED}.npz", f"sqlite:///{work / 'recipe.db'}"
    timings = Timings(work / "timings.json")

    if not data.exists():
        step("data", hpo("data", "synth", "--n", RECORDS, "--seed", DATA_SEED, "--out", data), timings)
    # Options both studies share; one torch thread per worker whatever the machine: the same sums in the same order.
    common = ("--seed", SEED, "--data", data, "--split", SPLIT, "--storage", storage, "--workers", args.workers)
    common += ("--threads", 1)
    step(
        "random study",
        hpo(
            "run",
            "--strategy",
            "random",
            "--study",
            "fanova-random",
            "--n-trials",
            FANOVA_TRIALS,
            "--max-epochs",
            FANOVA_EPOCHS,
            *common,
        ),
        timings,
    )
    ranked = step("fanova", None, timings, lambda: importances(storage))
    print(json.dumps(ranked, indent=2))
    space = narrowed_space(ranked, MAX_CONFIGS)
    space_file = work / "space.toml"
    space_file.write_text(space_toml(space, ranked))
    print(space_file.read_text())
    table_json = work / f"{NAME}.json"
    step(
        "tabulate",
        hpo(
            "tabulate",
            "--space",
            space_file,
            "--out",
            NAME,
            "--max-epochs",
            TABLE_EPOCHS,
            "--seeds",
            SEEDS,
            *common,
            "--json",
            table_json,
        ),
        timings,
    )
    sys.path.insert(0, str(ROOT))
    from hpo_astro.tabular import Table

    table = Table.load(table_json)
    recipe = {
        "script": "scripts/make_table.py",
        "data": f"hpo-astro data synth --n {RECORDS} --seed {DATA_SEED}",
        "split": SPLIT,
        "seeds": SEEDS,
        "fanova_study": {"strategy": "random", "n_trials": FANOVA_TRIALS, "max_epochs": FANOVA_EPOCHS, "seed": SEED},
        "fanova_importances": {k: round(v, 4) for k, v in ranked.items()},
        "max_configs": MAX_CONFIGS,
        "left_out": {k: list(v) for k, v in LEFT_OUT.items()},
        "timings": timings,
        "total_wall_s": round(sum(t["wall_s"] for t in timings.values()), 1),
        "total_cpu_s": round(sum(t["cpu_s"] for t in timings.values()), 1),
    }
    table = Table(
        **{
            **{
                f: getattr(table, f)
                for f in ("name", "space", "rows", "data_fingerprint", "seed", "max_epochs", "seeds")
            },
            "info": {**table.info, "recipe": recipe},
        }
    )
    table.save(args.out)
    (work / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes): {table.configurations} configurations x {SEEDS}")
    print(json.dumps(recipe, indent=2))


if __name__ == "__main__":
    main()
