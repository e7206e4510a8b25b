"""The `hpo-astro` command line: thin Typer commands over the library. Bad input -> one line, exit 2.

The package face: `app` (the Typer app) and `main` (the console script). Each command module registers its commands
when imported, so the imports below, in this order, are the order `hpo-astro --help` lists the commands in."""

from __future__ import annotations

# isort: off
from hpo_astro.cli import init  # noqa: F401  init
from hpo_astro.cli import train  # noqa: F401  train
from hpo_astro.cli import study  # noqa: F401  run, worker, storage-proxy, status
from hpo_astro.cli import confirm  # noqa: F401  confirm
from hpo_astro.cli import results  # noqa: F401  compare, report, export, predict, dashboard
from hpo_astro.cli import tabulate  # noqa: F401  tabulate
from hpo_astro.cli import benchmark  # noqa: F401  benchmark
from hpo_astro.cli import data  # noqa: F401  data synth, convert, download, info (a sub-app: listed last)

# isort: on
from hpo_astro.cli.application import app, main

__all__ = ["app", "main"]
