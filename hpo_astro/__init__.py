"""hpo-astro: Optuna-based hyperparameter search for real/bogus CNNs on astronomical cutouts.

The package face: what a notebook or script calls, `hpo_astro.run_study(...)`, `hpo_astro.load_table(...)`, ...
(docs/python-api.md). Each name lives in its own module (`LAZY`) and is imported when first used, so that
`import hpo_astro` and `hpo-astro --version` stay fast (torch and Optuna load only with the first name that needs
them). The modules inside the package import from the home modules, never these names from here: the face sits at
the bottom of the layers (tests/test_architecture.py) and only points up, by name.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("hpo-astro")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

# name -> the module it lives in (docs/python-api.md lists them with what each is for)
LAZY: dict[str, str] = {
    # studies
    "StudyConfig": "hpo_astro.study.config",
    "load_config": "hpo_astro.study.config",
    "run_study": "hpo_astro.study.run",
    "RunResult": "hpo_astro.study.run",
    "confirm_study": "hpo_astro.study.confirm",
    "SearchSpace": "hpo_astro.core.space",
    # training and data
    "train": "hpo_astro.core.train",
    "load_splits": "hpo_astro.data.prepare",
    "PrepConfig": "hpo_astro.data.prepare",
    "load_model": "hpo_astro.core.model",
    # results of finished studies
    "read_store": "hpo_astro.store.storage",
    "study_status": "hpo_astro.results.status",
    "trial_history": "hpo_astro.store.record",
    "compare_studies": "hpo_astro.report.compare",
    "build_report": "hpo_astro.report.html",
    "export_best": "hpo_astro.results.export",
    "predict": "hpo_astro.results.export",
    # tabular mode and benchmarks
    "load_table": "hpo_astro.tabular",
    "Table": "hpo_astro.tabular",
    "TableReplay": "hpo_astro.tabular",
    "table_data": "hpo_astro.tabular",
    "run_benchmark": "hpo_astro.benchmark",
    "BenchmarkSpec": "hpo_astro.benchmark",
    # errors
    "UserError": "hpo_astro.errors",
}

__all__ = ["__version__", *LAZY]


def __getattr__(name: str) -> Any:
    """`hpo_astro.NAME`: imported from its module on first use, then kept here."""
    home = LAZY.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *LAZY})
