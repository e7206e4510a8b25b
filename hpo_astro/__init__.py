"""hpo-astro: Optuna-based hyperparameter search for real/bogus CNNs on astronomical cutouts."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hpo-astro")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"
