"""The AblationSampler package in use: loaded as OptunaHub loads a registry package, on a toy objective, then on
hpo-astro's shipped table as an OptunaHub benchmark problem. Run from the repository root: python
package/samplers/ablation/example.py"""

from __future__ import annotations

from pathlib import Path

import optuna
import optunahub

from hpo_astro.tabular.problem import TableProblem

optuna.logging.set_verbosity(optuna.logging.WARNING)
REGISTRY_ROOT = Path(__file__).resolve().parents[2]  # the folder holding samplers/ablation: this repository's package/

# From a checkout (a registry on disk). From a registry on GitHub, the same package is
# optunahub.load_module("samplers/ablation", repo_owner=OWNER, repo_name=REPOSITORY, ref=BRANCH).
module = optunahub.load_local_module(package="samplers/ablation", registry_root=str(REGISTRY_ROOT))


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_int("x", -2, 2)
    y = trial.suggest_categorical("y", ["flat", "steep"])
    return x**2 * (3 if y == "steep" else 1)


# One hyperparameter at a time from the baseline: 5 values of x, then 2 of y, 7 trials; then the study stops itself.
sampler = module.AblationSampler({"x": [-2, -1, 0, 1, 2], "y": ["flat", "steep"]}, baseline={"x": 1, "y": "steep"})
study = optuna.create_study(sampler=sampler)
study.optimize(objective)
print(f"{len(study.trials)} trials; best {study.best_params} = {study.best_value}")

# On a tabular benchmark (hpo-astro's shipped table as an optunahub BaseProblem): every value the table lists, one
# hyperparameter at a time from the baseline, greedy (each sweep's best value is kept for the next sweeps).
problem = TableProblem("astro-small")
space = {name: list(dist.choices) for name, dist in problem.search_space.items()}
sampler = module.AblationSampler(space, baseline={"lr": 1e-3, "dropout_rate": 0.1}, greedy=True, seed=0)
study = optuna.create_study(directions=problem.directions, sampler=sampler)
study.optimize(problem)
print(f"{len(study.trials)} trials on {problem.table.name}; best {study.best_params} = {study.best_value:.4f}")
