"""`python -m hpo_astro.cli ...`: the same command line as the `hpo-astro` script."""

from hpo_astro.cli import main

main()
