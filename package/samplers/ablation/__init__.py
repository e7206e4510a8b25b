"""OptunaHub package ``samplers/ablation``: hpo-astro's AblationSampler, laid out as a sampler package of an OptunaHub
registry (``package/samplers/<name>/``: this ``__init__``, ``README.md``, ``LICENSE``, ``example.py``,
``requirements.txt``). The sampler's code is hpo-astro's own (`hpo_astro.samplers.ablation`, Optuna and NumPy only);
this package re-exports it, so hpo-astro must be installed.

    module = optunahub.load_local_module(package="samplers/ablation", registry_root="package")
    sampler = module.AblationSampler({"x": [1, 2, 3], "y": ["a", "b"]}, baseline={"x": 2, "y": "a"})
"""

from __future__ import annotations

try:
    from hpo_astro.samplers.ablation import AblationSampler
    from hpo_astro.samplers.ablation_plan import EXHAUSTED_KEY
except ImportError as exc:  # pragma: no cover - hpo-astro is not installed
    raise ImportError(
        "the OptunaHub package samplers/ablation re-exports hpo-astro's AblationSampler: install hpo-astro first "
        "(pip install /path/to/hpo-astro, or pip install from its repository)"
    ) from exc

__all__ = ["EXHAUSTED_KEY", "AblationSampler"]
