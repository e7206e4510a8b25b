"""Study defaults that light modules (the command line's option declarations) need without importing config."""

from __future__ import annotations

DEFAULT_STORAGE = "sqlite:///optuna.db"
