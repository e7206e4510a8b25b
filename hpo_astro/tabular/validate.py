"""What a table must hold to be replayed, checked once when a `Table` is made (read from a file, from a store's
`tabulate` study, or built in code): each field's type and range, and the rows' agreement with the space and with
each other. A table that fails is one `UserError` line naming the table, the row (its index and configuration) and
the field, instead of a failure in every trial that replays it or a report built on impossible numbers.

The type checks of the file format itself (a field that is not a number, a list of the wrong length) are in
`table.py`, where the JSON is parsed; what is checked here holds for a table however it was made.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hpo_astro.core.hyperparameters import PAPER_SPACE, coerce_value, value_key
from hpo_astro.core.space import SearchSpace
from hpo_astro.core.train import EpochMetrics
from hpo_astro.data.prepare import PrepConfig
from hpo_astro.errors import UserError
from hpo_astro.study.config import MAX_SEED
from hpo_astro.study.objectives import METRIC_OBJECTIVES as OBJECTIVES
from hpo_astro.tabular.row import TableRow, field_name, shown

# How a tabulated run ends (`hpo_astro.core.train`); a pruned run is never a row (`tabulate_train` does not test
# it), and a row that says "pruned" would be replayed as pruned in every study.
STOP_REASONS = ("max_epochs", "early_stopping", "diverged")
MAX_EPOCHS_LIMIT = 2**63 - 1  # a table's epoch cap: any whole number a store keeps
MAX_NAME_LENGTH = 200


@dataclass(frozen=True)
class Range:
    """The numbers a field may take: [low, high], whether NaN (JSON null: not measured, or diverged) is one, and
    whether infinity is (a diverged loss may be; a time or a learning rate never is)."""

    low: float
    high: float
    nan: bool
    finite: bool
    text: str

    def holds(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            return False
        if math.isnan(number):
            return self.nan
        return self.low <= number <= self.high and (math.isfinite(number) or not self.finite)


LOSS = Range(0.0, math.inf, nan=True, finite=False, text="a loss >= 0 (or null)")
FRACTION = Range(0.0, 1.0, nan=True, finite=True, text="between 0 and 1 (or null)")
THRESHOLD = Range(0.0, 1.0, nan=False, finite=True, text="a probability between 0 and 1")
RATE = Range(0.0, math.inf, nan=False, finite=True, text="a finite learning rate >= 0")
SECONDS = Range(0.0, math.inf, nan=False, finite=True, text="a finite number of seconds >= 0")

EPOCH_RANGES: dict[str, Range] = {
    "train_loss": LOSS,
    "train_accuracy": FRACTION,
    "val_loss": LOSS,
    "val_accuracy": FRACTION,
    "val_roc_auc": FRACTION,
    "lr": RATE,
    "seconds": SECONDS,
}
METRIC_RANGES: dict[str, Range] = {
    "loss": LOSS,
    "accuracy": FRACTION,
    "roc_auc": FRACTION,
    "precision": FRACTION,
    "recall": FRACTION,
    "f1": FRACTION,
    "fpr_at_5fnr": FRACTION,
    "mdr_at_1fpr": FRACTION,
    "fpr_at_fnr": FRACTION,  # at a study's stated rates (a table of an earlier version never holds them)
    "mdr_at_fpr": FRACTION,
    "threshold": THRESHOLD,
}


def check_header(name: Any, data_fingerprint: Any, seed: Any, max_epochs: Any, info: Any) -> str:
    """The table's own fields (name, fingerprint, seed, epoch cap, provenance); returns its name for messages."""
    if not (isinstance(name, str) and name.strip() and name.isprintable() and len(name) <= MAX_NAME_LENGTH):
        raise UserError(f"a table name must be 1 to {MAX_NAME_LENGTH} printable characters, got {shown(name)}")
    where = f"table {name!r}"
    if not isinstance(data_fingerprint, str):
        raise UserError(f"{where}: data_fingerprint must be a string, got {shown(data_fingerprint)}")
    if not _whole(seed) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"{where}: seed must be a whole number from 0 to {MAX_SEED}, got {shown(seed)}")
    if max_epochs is not None and (not _whole(max_epochs) or not 1 <= max_epochs <= MAX_EPOCHS_LIMIT):
        raise UserError(f"{where}: max_epochs must be null or a whole number >= 1, got {shown(max_epochs)}")
    _check_info(where, info)
    return name


def _check_info(where: str, info: Any) -> None:
    """The provenance fields that code reads (`channels` sizes the model, `data_source` names the data in a study's
    record); the rest is free-form."""
    if not isinstance(info, Mapping):
        raise UserError(f"{where}: info must be an object, got {shown(info)}")
    try:
        json.dumps(info, allow_nan=False)  # what `save` writes
    except (TypeError, ValueError, RecursionError):
        raise UserError(f"{where}: info must be plain JSON (no NaN or infinity)") from None
    channels = info.get("channels")
    if channels is not None:
        if not isinstance(channels, list | tuple) or not all(isinstance(c, str) for c in channels):
            raise UserError(f"{where}: info.channels must be a list of plane names, got {shown(channels)}")
        try:
            PrepConfig(channels=tuple(channels))  # the rule --channels follows: known planes, each once, at least one
        except UserError as exc:
            raise UserError(f"{where}: info.channels: {exc}") from None
    for key in ("data_source", "study", "hpo_astro_version"):
        if info.get(key) is not None and not isinstance(info[key], str):
            raise UserError(f"{where}: info.{key} must be a string, got {shown(info[key])}")
    objective = info.get("objective")
    if objective is not None and (not isinstance(objective, str) or objective not in OBJECTIVES):
        raise UserError(f"{where}: info.objective must be one of {', '.join(OBJECTIVES)}, got {shown(objective)}")
    seconds = info.get("training_seconds")
    if seconds is not None and not SECONDS.holds(seconds):
        raise UserError(f"{where}: info.training_seconds must be {SECONDS.text}, got {shown(seconds)}")


def check_space(name: str, space: Any) -> SearchSpace:
    """The table's space: known hyperparameters, each with a list of valid, distinct values or a range with a
    finite list of values (integers, or floats with a step)."""
    where = f"table {name!r}"
    if not isinstance(space, Mapping) or not space:
        raise UserError(f"{where}: the space must name at least one hyperparameter")
    for hp, values in space.items():
        if isinstance(values, Mapping):
            continue  # a range: `SearchSpace.from_dict` checks it, `grid` below its finiteness
        if not isinstance(values, list | tuple):
            raise UserError(f"{where}: space.{field_name(hp)} must be a list of values, got {shown(values)}")
        for value in values:
            _check_kind(f"{where}: space", hp, value)
    try:
        search = SearchSpace.from_dict(space)
    except OverflowError:  # an integer too large for a float, compared with a float range
        raise UserError(f"{where}: space: a value is too large") from None
    except UserError as exc:
        raise UserError(f"{where}: space: {exc}") from None
    try:
        grid = search.grid("a table")
    except UserError as exc:
        raise UserError(f"{where}: space: {exc}") from None
    for hp, values in grid.items():
        if len({value_key(v) for v in values}) != len(values):
            raise UserError(f"{where}: hyperparameter {hp!r} lists a value twice")
    return search


def check_params(where: str, params: Any) -> dict[str, Any]:
    """A row's configuration, every value one the hyperparameter can take, as the space spells it (1e-3 and 0.001,
    "batchnorm" and "BatchNorm" are one value)."""
    if not isinstance(params, Mapping):
        raise UserError(f"{where}: params must be an object, got {shown(params)}")
    out = {}
    for name, value in params.items():
        if name not in PAPER_SPACE:
            raise UserError(f"{where}: unknown hyperparameter {shown(name)} in its params")
        _check_kind(f"{where}: params", name, value)
        try:
            out[name] = coerce_value(name, value)
        except OverflowError:
            raise UserError(f"{where}: params.{name} = {shown(value)} is too large") from None
        except UserError as exc:
            raise UserError(f"{where}: params: {exc}") from None
    return out


def check_row(where: str, row: TableRow, max_epochs: int | None) -> None:
    """One row's curve, best epoch, stop reason, metrics and time (its params are checked by `check_params`)."""
    history = row.history
    if not history:
        raise UserError(f"{where} has no epochs")
    t_max = row.params.get("t_max")
    for cap, what in ((max_epochs, "the table's max_epochs"), (t_max, "its t_max (the epochs training runs)")):
        if isinstance(cap, int) and len(history) > cap:
            raise UserError(f"{where}: its history has {len(history)} epochs, more than {what}, {cap}")
    for i, epoch in enumerate(history):
        if not isinstance(epoch, EpochMetrics):
            raise UserError(f"{where}: history[{i}] is not an epoch's metrics")
        if epoch.epoch != i + 1:
            raise UserError(f"{where}: epoch {i + 1} of its history says epoch {shown(epoch.epoch)}")
        for field, allowed in EPOCH_RANGES.items():
            _check_number(f"{where}: history[{i}].{field}", getattr(epoch, field), allowed)
    if not _whole(row.best_epoch) or not 1 <= row.best_epoch <= len(history):
        raise UserError(f"{where}: best_epoch {shown(row.best_epoch)} is outside its {len(history)} epochs")
    if row.stop_reason not in STOP_REASONS:
        raise UserError(f"{where}: stop_reason must be one of {', '.join(STOP_REASONS)}, got {shown(row.stop_reason)}")
    for label, metrics in (("val_metrics", row.val_metrics), ("test_metrics", row.test_metrics)):
        if not isinstance(metrics, Mapping):
            raise UserError(f"{where}: {label} must be an object")
        extra = [shown(k) for k in metrics if k not in METRIC_RANGES]
        if extra:  # a table built in code may leave metrics out (NaN when replayed); a file must have them all
            raise UserError(f"{where}: {label} has unknown {', '.join(extra)}")
        for key, value in metrics.items():
            _check_number(f"{where}: {label}.{key}", value, METRIC_RANGES[key])
    _check_number(f"{where}: wall_time", row.wall_time, SECONDS)


def check_fixed(name: str, search: SearchSpace, rows: list[tuple[str, TableRow]]) -> None:
    """The hyperparameters outside the table's space are held fixed: every row must hold the same value (a study
    fills them in with one value, so a row trained with another is one no trial can reach). `rows`: (label, row)."""
    if not rows:
        return
    first_label, first = rows[0]
    for label, row in rows[1:]:
        for hp, value in row.params.items():
            if hp not in search and value_key(value) != value_key(first.params.get(hp)):
                raise UserError(
                    f"table {name!r}: {label}: params.{hp} = {shown(value)}, but {first_label} has "
                    f"{shown(first.params.get(hp))}: a hyperparameter outside the table's space must be the same in "
                    "every row"
                )


def _check_kind(where: str, name: Any, value: Any) -> None:
    """A named hyperparameter (activation, normalization) takes names: a number for one is refused here, before
    `coerce_value`, which looks a number up among the numeric ranges."""
    if name in PAPER_SPACE and isinstance(PAPER_SPACE[name][0], str) and not isinstance(value, str):
        known = ", ".join(map(str, PAPER_SPACE[name]))
        raise UserError(f"{where}: {name} = {shown(value)} is not one of its names ({known})")


def _check_number(where: str, value: Any, allowed: Range) -> None:
    if not allowed.holds(value):
        raise UserError(f"{where} = {shown(value)} must be {allowed.text}")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
