"""`python -m hpo_astro ...`: the same command line as the `hpo-astro` script."""

import sys

from hpo_astro.cli import main

if __name__ == "__main__":  # not when a worker process imports its parent's main module
    sys.exit(main())
