"""A table's row (`TableRow`: one configuration as it trained) and the typed readers of a table file's JSON values.

`table` parses a file with these readers and `validate` checks the values: this module is below both, so that
neither imports the other's data model back.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hpo_astro.core.epochs import OPERATING_POINT_FIELDS, EpochMetrics
from hpo_astro.core.metrics import Metrics
from hpo_astro.errors import UserError

# A table's per-epoch fields (its format): the trainer's operating points (`OPERATING_POINT_FIELDS`) are not among
# them, so a table's replay has none of them per epoch.
EPOCH_FIELDS = tuple(f.name for f in dataclasses.fields(EpochMetrics) if f.name not in OPERATING_POINT_FIELDS)
METRIC_FIELDS = tuple(f.name for f in dataclasses.fields(Metrics))
REQUIRED_METRICS = tuple(f.name for f in dataclasses.fields(Metrics) if f.default is dataclasses.MISSING)
ROW_KEYS = ("params", "history", "best_epoch", "stop_reason", "val_metrics", "test_metrics", "wall_time", "seed")


_SHOWN = 40  # characters of a bad value quoted in a message


def shown(value: Any) -> str:
    """A value quoted in a message: its repr, cut short (a message is one line of reasonable length)."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def field_name(key: Any) -> str:
    """A key in a field's path (`params.lr`): as it is when it reads as a name, else quoted like a value."""
    return key if isinstance(key, str) and key.isidentifier() and len(key) <= _SHOWN else shown(key)


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
    seed: int | None = None  # the run's training seed (a table of several seeds); None: the table's seed


class Malformed(UserError):
    """A table file's structure is wrong (a UserError: `Table.from_bytes` and the store's reader prefix the
    source)."""


def known_keys(obj: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = [shown(key) for key in obj if key not in known]
    if unknown:
        raise Malformed(f"{where} has unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}")


def json_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Malformed(f"{where} must be an object")
    return value


def json_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise Malformed(f"{where} must be a list")
    return value


def json_string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise Malformed(f"{where} must be a string")
    return value


def json_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Malformed(f"{where} must be a whole number")
    return value


def json_number(value: Any, where: str) -> float:
    """A number, or null for a non-finite one."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Malformed(f"{where} must be a number or null")
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float
        raise Malformed(f"{where} is too large") from None


def json_metrics(value: Any, where: str) -> dict[str, float]:
    metrics = {key: json_number(v, f"{where}.{field_name(key)}") for key, v in json_object(value, where).items()}
    absent = [k for k in REQUIRED_METRICS if k not in metrics]
    if absent:
        raise Malformed(f"{where} lacks {', '.join(absent)}")
    return metrics


def row_from_json(value: Any, where: str) -> TableRow:
    row = json_object(value, where)
    known_keys(row, ROW_KEYS, where)
    history = []
    for i, epoch in enumerate(json_list(row.get("history"), f"{where}.history")):
        values = json_list(epoch, f"{where}.history[{i}]")
        if len(values) != len(EPOCH_FIELDS):
            raise Malformed(f"{where}.history[{i}] must hold {len(EPOCH_FIELDS)} values ({', '.join(EPOCH_FIELDS)})")
        number = json_int(values[0], f"{where}.history[{i}].epoch")
        rest = [json_number(v, f"{where}.history[{i}].{f}") for f, v in zip(EPOCH_FIELDS[1:], values[1:], strict=True)]
        history.append(EpochMetrics(number, *rest))
    params = json_object(row.get("params"), f"{where}.params")
    for key, param in params.items():
        if isinstance(param, bool) or not isinstance(param, int | float | str):
            raise Malformed(f"{where}.params.{field_name(key)} must be a number or a string")
    return TableRow(
        params=dict(params),
        history=tuple(history),
        best_epoch=json_int(row.get("best_epoch"), f"{where}.best_epoch"),
        stop_reason=json_string(row.get("stop_reason"), f"{where}.stop_reason"),
        val_metrics=json_metrics(row.get("val_metrics"), f"{where}.val_metrics"),
        test_metrics=json_metrics(row.get("test_metrics"), f"{where}.test_metrics"),
        wall_time=json_number(row.get("wall_time"), f"{where}.wall_time"),
        seed=json_int(row["seed"], f"{where}.seed") if "seed" in row else None,
    )
