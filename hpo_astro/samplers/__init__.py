"""Custom Optuna samplers (the others come from Optuna itself, see `hpo_astro.study.strategies`)."""

from hpo_astro.samplers.ablation import AblationSampler

__all__ = ["AblationSampler"]
