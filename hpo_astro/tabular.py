"""Tabular mode: every configuration of a finite space trained once, with its whole learning curve, so that search
strategies can be replayed against the table at no training cost (as LCBench, NAS-Bench-201 and HPOBench do).

INTERFACE SKELETON (being implemented): `Table`, `TableRow`, `Table.train_fn`, `load_table` and `tabulate` keep these
signatures; the bodies are filled in by the tabular-mode work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo_astro.objective import TrainFn
from hpo_astro.train import EpochMetrics


@dataclass(frozen=True)
class TableRow:
    """One configuration as it trained."""

    params: dict[str, Any]  # the full configuration, every hyperparameter (what the objective trains: params_full)
    history: tuple[EpochMetrics, ...]  # per-epoch metrics, early stopping on: the curve ends where training ended
    best_epoch: int
    stop_reason: str
    val_metrics: dict[str, float]  # Metrics.as_dict() of the best epoch on the validation split
    test_metrics: dict[str, float]  # the best epoch's weights on the test split, measured once when tabulated
    wall_time: float  # seconds its training took


@dataclass(frozen=True)
class Table:
    """A finite space trained exhaustively: one row per configuration."""

    name: str
    space: dict[str, list[Any]]  # hyperparameter -> values (the finite space the table covers)
    rows: tuple[TableRow, ...]
    data_fingerprint: str  # of the data the rows were trained on
    seed: int  # the training seed of every row
    max_epochs: int | None

    def row(self, params: Mapping[str, Any]) -> TableRow:
        """The row of `params` (a full configuration, or the table's space's hyperparameters); a UserError if the
        table has no such configuration."""
        raise NotImplementedError

    def train_fn(self) -> TrainFn:
        """A stand-in for `hpo_astro.train.train` that answers from the table: it replays the row's per-epoch curve
        through the callbacks (so pruners and early stopping act), stops where a callback asks, and reports the
        recorded training time of the epochs replayed as its wall time; the row's test metrics go in
        `TrainResult.extra_attrs`."""
        raise NotImplementedError

    def save(self, path: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, path: Path) -> Table:
        raise NotImplementedError


def load_table(name: str, storage: str | None = None) -> Table:
    """A table by name: a JSON file path, a table shipped with the package, or a `tabulate` study in `storage`."""
    raise NotImplementedError
