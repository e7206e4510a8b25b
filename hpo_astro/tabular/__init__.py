"""Tabular mode: every configuration of a finite space trained once, with its whole learning curve, so that search
strategies can be replayed against the table at no training cost (as LCBench, NAS-Bench-201 and HPOBench do).

Modules, one job each:

* `table`: the data model (`Table`, `TableRow`) and the JSON file format (plain or gzip'd data, no pickle; regular
  files only, size and JSON values capped; a malformed file is one error line).
* `validate`: what every table must hold (types, ranges, rows against the space and each other), checked once when a
  table is made, from a file, a store or code: a bad table is one error line naming the table, the row and the field.
* `tabulate`: building a table by training. The `tabulate` command runs an ordinary grid study named `table/<NAME>`
  over a study file's `[space]` with `tabulate_train`: the real trainer, then one evaluation of the restored best
  weights on the test split, recorded on the trial (`test_metrics`). It resumes and takes `--workers` like `run`.
* `load`: finding and reading a table (`load_table`): a JSON file, a finished `table/<NAME>` study in a store, or a
  table shipped with the package (`hpo_astro/tables/`).
* `row`: a table's row (`TableRow`) and the typed readers of a table file's JSON values.
* `replay`: `TableReplay(table)` answers a trial from the table instead of training: it replays the configuration's
  recorded curve epoch by epoch through the trainer's callbacks, so pruners, early stopping and checkpoints act as
  in a real run, and charges the recorded epoch times.

The names other modules use are re-exported here: `from hpo_astro.tabular import X`.
"""

from hpo_astro.store.record import TABLE_ATTR, TEST_METRICS_ATTR
from hpo_astro.tabular.load import load_table, shipped_tables, table_from_store, table_from_study
from hpo_astro.tabular.replay import TableReplay, table_data
from hpo_astro.tabular.row import EPOCH_FIELDS, METRIC_FIELDS, TableRow
from hpo_astro.tabular.table import (
    MAX_TABLE_BYTES,
    MAX_TABLE_VALUES,
    TABLE_FORMAT,
    TABLE_PREFIX,
    TABLE_VERSION,
    Table,
)
from hpo_astro.tabular.tabulate import (
    DEFAULT_MAX_CONFIGS,
    NAME_PATTERN,
    TabulateTrain,
    check_name,
    check_size,
    tabulate_config,
    tabulate_train,
    tabulating,
    test_metrics,
    train_for_kind,
)
from hpo_astro.tabular.validate import STOP_REASONS

__all__ = [
    "DEFAULT_MAX_CONFIGS",
    "EPOCH_FIELDS",
    "MAX_TABLE_BYTES",
    "MAX_TABLE_VALUES",
    "METRIC_FIELDS",
    "NAME_PATTERN",
    "STOP_REASONS",
    "TABLE_ATTR",
    "TABLE_FORMAT",
    "TABLE_PREFIX",
    "TABLE_VERSION",
    "TEST_METRICS_ATTR",
    "Table",
    "TableReplay",
    "TableRow",
    "TabulateTrain",
    "check_name",
    "check_size",
    "load_table",
    "shipped_tables",
    "table_data",
    "table_from_store",
    "table_from_study",
    "tabulate_config",
    "tabulate_train",
    "tabulating",
    "test_metrics",
    "train_for_kind",
]
