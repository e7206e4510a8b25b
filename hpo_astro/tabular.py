"""Tabular mode: every configuration of a finite space trained once, with its whole learning curve, so that search
strategies can be replayed against the table at no training cost (as LCBench, NAS-Bench-201 and HPOBench do).

* `tabulate` (the command) runs an ordinary grid study named `table/<NAME>` over a study file's `[space]` with
  `tabulate_train`: the real trainer, then one evaluation of the restored best weights on the test split, recorded on
  the trial (`test_metrics`). It resumes and takes `--workers` like `run`.
* `load_table` reads a table: a JSON file (plain or gzip'd), a finished `table/<NAME>` study in a store, or a table
  shipped with the package (`hpo_astro/tables/`).
* `Table.train_fn()` answers a trial from the table instead of training: it replays the configuration's recorded
  curve epoch by epoch through the trainer's callbacks, so pruners, early stopping and checkpoints act as in a real
  run, and charges the recorded epoch times.

The JSON format is plain data (`Table.save`): no pickle, nothing in a table file is ever executed; every field is
checked when it is read, and a malformed file is one error line.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from hpo_astro.config import StudyConfig
from hpo_astro.data.prepare import DataSplits
from hpo_astro.errors import UserError
from hpo_astro.io import atomic_write
from hpo_astro.metrics import Metrics
from hpo_astro.objective import TrainFn
from hpo_astro.record import (
    PARAMS_FULL_ATTR,
    VAL_METRICS_ATTR,
    WALL_TIME_ATTR,
    StudyRecord,
    trial_history,
)
from hpo_astro.space import DEFAULT_PARAMS, PAPER_SPACE, SearchSpace
from hpo_astro.train import Callback, EpochMetrics, TrainResult, TrainState

TABLE_FORMAT = "hpo-astro-table"
TABLE_VERSION = 1
TABLE_PREFIX = "table/"  # a tabulate study is named table/<NAME>
TEST_METRICS_ATTR = "test_metrics"  # trial user attr: the best weights' metrics on the test split (tabulate only)
TABLE_ATTR = "table"  # trial user attr of a replayed trial: the table that answered it
DEFAULT_MAX_CONFIGS = 10_000  # tabulate refuses larger spaces unless --max-configs says otherwise
MAX_TABLE_BYTES = 512 * 2**20  # a table file, decompressed; a gzip bomb stops here
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
EPOCH_FIELDS = tuple(f.name for f in dataclasses.fields(EpochMetrics))
METRIC_FIELDS = tuple(f.name for f in dataclasses.fields(Metrics))
_REQUIRED_METRICS = tuple(f.name for f in dataclasses.fields(Metrics) if f.default is dataclasses.MISSING)


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
    """A finite space trained exhaustively: one row per configuration.

    Rows are looked up by the values of the space's hyperparameters, compared as the study files compare them
    (1e-3 == 0.001, 64 == 64.0, "batchnorm" == "BatchNorm"), so a table survives JSON round trips. `rows` are kept
    in the space's order (the grid's, first hyperparameter slowest), whatever order they were given in. A table may
    hold fewer rows than its space has configurations (one built by hand); `missing` says how many are absent."""

    name: str
    space: dict[str, list[Any]]  # hyperparameter -> values (the finite space the table covers)
    rows: tuple[TableRow, ...]
    data_fingerprint: str  # of the data the rows were trained on
    seed: int  # the training seed of every row
    max_epochs: int | None
    # Provenance, free-form JSON (data source, channels, objective, version, recipe); optional, added after the
    # interface was fixed (a keyword with a default: constructors written against the skeleton still work).
    info: dict[str, Any] = field(default_factory=dict, compare=False)
    _search: SearchSpace = field(init=False, repr=False, compare=False)
    _index: dict[tuple[int, ...], TableRow] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Check the rows and index them. A row whose params leave hyperparameters out gets the defaults for them,
        as a trial's configuration does (frozen: the completed rows are set once, here)."""
        search = _search_space(self.name, self.space)
        rows = tuple(
            row
            if all(n in row.params for n in DEFAULT_PARAMS)
            else dataclasses.replace(row, params={**DEFAULT_PARAMS, **row.params})
            for row in self.rows
        )
        index: dict[tuple[int, ...], TableRow] = {}
        for number, row in enumerate(rows):
            where = f"table {self.name!r}: row {number}"
            _check_row(where, row)
            key = _key(search, row.params, where)
            if key in index:
                raise UserError(f"{where} repeats the configuration of another row ({_describe(search, key)})")
            index[key] = row
        object.__setattr__(self, "rows", tuple(index[key] for key in sorted(index)))  # the space's order, whatever
        object.__setattr__(self, "_search", search)  # the source (a file, a store's trial order)
        object.__setattr__(self, "_index", index)

    @property
    def search_space(self) -> SearchSpace:
        return self._search

    @property
    def size(self) -> int:
        """Configurations in the space (rows present or not)."""
        return math.prod(len(values) for values in self.space.values())

    @property
    def missing(self) -> int:
        return self.size - len(self.rows)

    def covers(self, max_epochs: int | None) -> bool:
        """Whether a replay capped at `max_epochs` (None: no cap) sees whole curves: the table was trained with at
        least that many epochs. A replay asked for more ends where the table's curves end."""
        return self.max_epochs is None or (max_epochs is not None and max_epochs <= self.max_epochs)

    def row(self, params: Mapping[str, Any]) -> TableRow:
        """The row of `params` (a full configuration, or the table's space's hyperparameters); a UserError if the
        table has no such configuration."""
        search = self.search_space
        unknown = [name for name in params if name not in PAPER_SPACE]
        if unknown:
            raise UserError(f"unknown hyperparameter {unknown[0]!r}; known: {', '.join(PAPER_SPACE)}")
        key = _key(search, params, f"configuration not in table {self.name!r}")
        row = self._index.get(key)
        if row is None:
            raise UserError(
                f"configuration not in table {self.name!r}: {_describe(search, key)} has no row "
                f"({len(self.rows)} of {self.size} configurations tabulated)"
            )
        for name, value in params.items():  # the hyperparameters the table held fixed must agree too
            if name not in search and not _same(row.params.get(name), value):
                raise UserError(
                    f"configuration not in table {self.name!r}: it was trained with {name}={row.params.get(name)}, "
                    f"not {name}={value}"
                )
        return row

    def train_fn(self) -> TrainFn:
        """A stand-in for `hpo_astro.train.train` that answers from the table: it replays the row's per-epoch curve
        through the callbacks (so pruners and early stopping act), stops where a callback asks, and reports the
        recorded training time of the epochs replayed as its wall time; the row's test metrics go in
        `TrainResult.extra_attrs`. A picklable object (not a closure), so it can be handed to worker processes."""
        return TableReplay(self)

    def to_json(self) -> dict[str, Any]:
        """The table as plain JSON data (the file format; non-finite numbers become null)."""
        search = self.search_space
        return {
            "format": TABLE_FORMAT,
            "version": TABLE_VERSION,
            "name": self.name,
            "space": search.to_dict(),
            "data_fingerprint": self.data_fingerprint,
            "seed": self.seed,
            "max_epochs": self.max_epochs,
            "info": self.info,
            "epoch_fields": list(EPOCH_FIELDS),
            "rows": [
                {
                    "params": row.params,
                    "history": [
                        [int(h.epoch), *(_finite_or_none(getattr(h, f)) for f in EPOCH_FIELDS[1:])] for h in row.history
                    ],
                    "best_epoch": row.best_epoch,
                    "stop_reason": row.stop_reason,
                    "val_metrics": {k: _finite_or_none(v) for k, v in row.val_metrics.items()},
                    "test_metrics": {k: _finite_or_none(v) for k, v in row.test_metrics.items()},
                    "wall_time": row.wall_time,
                }
                for row in self.rows  # in the space's order: the same table gives the same bytes
            ],
        }

    def save(self, path: Path) -> None:
        """Write the table as JSON, gzip'd when the name ends in .gz; atomically (never half-written) and
        byte-reproducibly (no time stamp in the gzip header)."""
        path = Path(path)
        text = json.dumps(self.to_json(), separators=(",", ":"), allow_nan=False).encode()
        with atomic_write(path) as fh:
            if path.suffix == ".gz":
                with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
                    gz.write(text)
            else:
                fh.write(text)

    @classmethod
    def load(cls, path: Path) -> Table:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise UserError(f"table file not found: {path}") from None
        except OSError as exc:
            raise UserError(f"cannot read table {path}: {exc.strerror or exc}") from None
        return cls.from_bytes(raw, str(path))

    @classmethod
    def from_bytes(cls, raw: bytes, source: str) -> Table:
        """A table from a file's bytes (JSON, or gzip'd JSON); `source` names it in error messages."""
        if raw[:2] == b"\x1f\x8b":
            try:
                with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
                    raw = gz.read(MAX_TABLE_BYTES + 1)
            except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
                raise UserError(f"{source}: not a valid hpo-astro table: corrupt gzip data ({exc})") from None
        if len(raw) > MAX_TABLE_BYTES:
            raise UserError(f"{source}: not a valid hpo-astro table: larger than {MAX_TABLE_BYTES // 2**20} MiB")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"{source}: not a valid hpo-astro table: not JSON ({reason})") from None
        try:
            return cls.from_json(data)
        except _Malformed as exc:
            raise UserError(f"{source}: not a valid hpo-astro table: {exc}") from None
        except UserError as exc:  # a consistency check of the table itself (a value outside its space, ...)
            raise UserError(f"{source}: not a valid hpo-astro table: {exc}") from None

    @classmethod
    def from_json(cls, data: Any) -> Table:
        """The table in plain JSON data (`to_json`'s format); every field's type and shape is checked."""
        top = _obj(data, "the file")
        if top.get("format") != TABLE_FORMAT:
            raise _Malformed(f"'format' must be {TABLE_FORMAT!r}")
        if top.get("version") != TABLE_VERSION:
            raise _Malformed(f"unsupported version {top.get('version')!r} (this hpo-astro reads {TABLE_VERSION})")
        fields = top.get("epoch_fields")
        if fields != list(EPOCH_FIELDS):
            raise _Malformed(f"'epoch_fields' must be {list(EPOCH_FIELDS)}")
        space = _obj(top.get("space"), "space")
        rows = _list(top.get("rows"), "rows")
        return cls(
            name=_str(top.get("name"), "name"),
            space={name: _list(values, f"space.{name}") for name, values in space.items()},
            rows=tuple(_row_from_json(row, f"rows[{i}]") for i, row in enumerate(rows)),
            data_fingerprint=_str(top.get("data_fingerprint"), "data_fingerprint"),
            seed=_int(top.get("seed"), "seed"),
            max_epochs=None if top.get("max_epochs") is None else _int(top.get("max_epochs"), "max_epochs"),
            info=_obj(top.get("info", {}), "info"),
        )


class TableReplay:
    """`Table.train_fn()`: `hpo_astro.train.train`'s contract, answered from the table.

    * The curve is the row's, replayed through the same `TrainState` and callbacks as the trainer: a pruner sees
      every epoch's metric and may stop it, a checkpoint callback saves the replay's state, and `resume` (such a
      checkpoint) continues after its last epoch. Early stopping is the row's: the curve ends where the tabulated
      run ended, with its stop reason (early stopping cannot be switched off: the epochs after it were never run).
    * `max_epochs` truncates the curve as training with that cap would have (the cosine schedule depends on t_max,
      not on the cap, so the first epochs of a longer run are those of a shorter one). A table cannot replay more
      epochs than it recorded: a replay that reaches the end of the row ends there, with the row's stop reason.
    * The best epoch is the best validation loss among the replayed epochs; its validation metrics are the row's
      when it is the row's best epoch, else the epoch's recorded loss, accuracy and ROC AUC (precision, recall, F1
      and FPR at 5% FNR were only measured at the row's best epoch: NaN).
    * wall_time is the sum of the recorded seconds of the epochs in the returned history (a resumed replay counts
      the epochs it inherited too): what training would have cost.
    * extra_attrs: `table` (the table's name) and, when the replay's restored weights are the very ones the table
      tested (its best epoch is the row's best epoch, always so when the whole curve was replayed), the row's
      `test_metrics`. A replay pruned or truncated before the row's best epoch reports no test metrics: its model
      was never tested.
    * `seed` and `data` are not used: the curve is the one trained with the table's seed, which the result
      reports; the model is a one-weight stand-in, and n_params the real model's count.
    """

    def __init__(self, table: Table) -> None:
        self.table = table
        self._n_params: dict[int, int] = {}

    def __call__(
        self,
        params: Mapping[str, Any],
        data: DataSplits | None = None,
        callbacks: Iterable[Callback] = (),
        max_epochs: int | None = None,
        seed: int = 0,
        device: str | torch.device = "auto",
        early_stopping: bool = True,
        resume: Mapping[str, Any] | None = None,
        evaluate_train: bool = False,
        capture: bool | None = None,
        **_: Any,  # options of the trainer that mean nothing to a replay (later ones too)
    ) -> TrainResult:
        row = self.table.row(params)
        history = row.history
        limit = len(history) if max_epochs is None else max(1, min(len(history), int(max_epochs)))
        model = torch.nn.Linear(1, 1)  # the checkpoint needs a model, an optimiser and a schedule: tiny ones
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        state = TrainState(params, model, optimizer, scheduler, torch.Generator().manual_seed(seed), limit)
        if resume is not None:
            state.restore(resume)
        callbacks = list(callbacks)
        while state.epoch < limit and state.stop_reason is None:
            epoch = history[state.epoch]
            state.history.append(epoch)
            val_loss = epoch.val_loss if math.isfinite(epoch.val_loss) else math.inf
            # The trainer's rule (strictly lower: the first best wins), except that a tie goes to the row's best
            # epoch: curves kept in a study are rounded, and the trainer chose that epoch at full precision.
            if val_loss < state.best_val_loss or (val_loss == state.best_val_loss and state.epoch == row.best_epoch):
                state.best_val_loss, state.best_epoch = val_loss, state.epoch
                state.best_val_metrics = _epoch_val_metrics(row, state.epoch).as_dict()
            if state.epoch == len(history) and row.stop_reason != "max_epochs":
                # The run ended here by early stopping (or divergence), which the trainer decides before the other
                # callbacks; replayed as recorded rather than recomputed from the (rounded) curve.
                state.request_stop(row.stop_reason)
            for callback in callbacks:
                callback.on_epoch_end(state)
        if state.best_epoch == 0:  # never a finite validation loss: the trainer keeps the last weights
            state.best_epoch = state.epoch
        reached_end = state.epoch >= len(history)
        best_is_rows = state.best_epoch == row.best_epoch and math.isfinite(history[row.best_epoch - 1].val_loss)
        extra: dict[str, Any] = {TABLE_ATTR: self.table.name}
        if reached_end or best_is_rows:
            extra[TEST_METRICS_ATTR] = dict(row.test_metrics)
        return TrainResult(
            params=dict(params),
            history=state.history,
            best_epoch=state.best_epoch,
            stop_reason=state.stop_reason or (row.stop_reason if reached_end else "max_epochs"),
            n_params=self._count(row),
            wall_time=sum(h.seconds for h in state.history),
            device="cpu",
            seed=self.table.seed,
            train_metrics=None,
            val_metrics=_epoch_val_metrics(row, state.best_epoch),
            model=model,
            extra_attrs=extra,
        )

    def _count(self, row: TableRow) -> int:
        """The real model's parameter count, built on the meta device (no memory, no time)."""
        from hpo_astro.model import build_model, count_parameters

        if id(row) not in self._n_params:
            channels = len(self.table.info.get("channels") or [None])
            with torch.device("meta"):
                self._n_params[id(row)] = count_parameters(build_model(row.params, in_channels=channels))
        return self._n_params[id(row)]


def _epoch_val_metrics(row: TableRow, epoch: int) -> Metrics:
    """The validation metrics of a replayed run whose best epoch is `epoch` (see `TableReplay`)."""
    if epoch == row.best_epoch:
        return Metrics(**{**dict.fromkeys(_REQUIRED_METRICS, math.nan), **row.val_metrics})
    h = row.history[epoch - 1]
    nan = math.nan
    return Metrics(
        loss=h.val_loss,
        accuracy=h.val_accuracy,
        roc_auc=h.val_roc_auc,
        precision=nan,
        recall=nan,
        f1=nan,
        fpr_at_5fnr=nan,
    )


# --- tabulating: the trainer plus one evaluation on the test split ----------------------------------------------


def tabulate_train(params: Mapping[str, Any], data: DataSplits, **options: Any) -> TrainResult:
    """The trainer of a `tabulate` study: train as `run` does (every keyword the objective passes goes through), then
    evaluate the restored best weights on the test split once and record that on the trial (`test_metrics`). A
    module-level function, so worker processes get it."""
    from hpo_astro import objective

    trainer = objective.default_train  # looked up now: the tests replace it by a fast stand-in
    result = trainer(params, data, **options)
    if result.stop_reason != "pruned":  # a pruned trial is not a row; nothing to test
        result.extra_attrs[TEST_METRICS_ATTR] = test_metrics(result, data).as_dict()
    return result


def test_metrics(result: TrainResult, data: DataSplits) -> Metrics:
    """The trained model (best weights restored) on the test split."""
    from hpo_astro.train import evaluate

    return evaluate(result.model, data.x_test, data.y_test, data.pos_weight)


test_metrics.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, whatever its name


def train_for_study(study_name: str) -> TrainFn | None:
    """The trainer a worker joining `study_name` must use: `tabulate_train` for a table study, else the default."""
    return tabulate_train if study_name.startswith(TABLE_PREFIX) else None


def check_name(name: str) -> str:
    """A table name: letters, digits, '.', '_', '-' (it names a study and a file)."""
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(
            f"invalid table name {name!r}: use up to 100 letters, digits, '.', '_' or '-', starting with a letter or "
            "digit"
        )
    return name


def check_size(space: SearchSpace, limit: int = DEFAULT_MAX_CONFIGS) -> int:
    size = space.n_combinations()
    if size > limit:
        raise UserError(
            f"the space has {size:,} configurations, more than the table limit of {limit:,}; narrow [space] in the "
            "study file (or raise --max-configs)"
        )
    return size


def tabulate_config(
    space_file: Path | None,
    name: str,
    storage: str,
    max_configs: int = DEFAULT_MAX_CONFIGS,
    **overrides: Any,
) -> StudyConfig:
    """The study that tabulates `name`: the grid over the `[space]` of `space_file`, named `table/<name>`, with
    the file's other settings and `overrides` (None: not given). Without a file, the stored study's own
    configuration (to resume it). Checked here, before any store is written: the size limit, no pruner (a table
    needs whole curves), and a resumed table's seed and epoch cap (rows trained otherwise would mix in)."""
    import tomllib

    from hpo_astro.config import load_config
    from hpo_astro.storage import store_file

    study_name = TABLE_PREFIX + check_name(name)
    file = store_file(storage)
    stored = None
    if file is None or (file.is_file() and file.stat().st_size > 0):  # a new or empty store holds no study
        stored = _stored_config(storage, study_name)
    if space_file is None:
        if stored is None:
            raise UserError(f"no table study {study_name!r} in {storage} to resume; pass --space FILE to start it")
        cfg = stored.merged(**overrides)
    else:
        base = load_config(space_file)
        if "space" not in tomllib.loads(Path(space_file).read_text()):
            raise UserError(
                f"{space_file} has no [space]: a table enumerates a finite space, listed as name = [values] under "
                "[space] in the study file"
            )
        if base.pruner not in (None, "none"):
            raise UserError(
                f"{space_file} sets pruner = {base.pruner!r}: a table needs every configuration's whole curve, "
                "so tabulate never prunes (remove the pruner)"
            )
        cfg = base.merged(**overrides)
    size = check_size(cfg.space, max_configs)
    cfg = dataclasses.replace(cfg, strategy="grid", study=study_name, n_trials=size, pruner="none", storage=storage)
    cfg.validate()
    if stored is not None:
        for what, was, now in (("seed", stored.seed, cfg.seed), ("max epochs", stored.max_epochs, cfg.max_epochs)):
            if was != now:
                raise UserError(
                    f"table study {study_name!r} in {storage} was started with {what} {was}, not {now}: its rows "
                    "must all train alike; resume it with the same settings, or use another --out NAME"
                )
    return cfg


def _stored_config(storage: str, study_name: str) -> StudyConfig | None:
    """The configuration a stored table study recorded (read-only, the store closed again); None if there is none."""
    import optuna

    from hpo_astro.storage import read_store

    with read_store(storage) as backend:
        try:
            study = optuna.load_study(study_name=study_name, storage=backend)
        except KeyError:
            return None
        record = StudyRecord.from_attrs(study.user_attrs)
    if record is None:
        raise UserError(f"study {study_name!r} in {storage} is not a table made by `hpo-astro tabulate`")
    return record.to_config(storage, study_name)


# --- reading a table: a file, a study in a store, or a shipped one ---------------------------------------------


def shipped_tables() -> dict[str, Any]:
    """The tables shipped with the package: name -> resource."""
    folder = resources.files("hpo_astro") / "tables"
    if not folder.is_dir():
        return {}
    found = {}
    for entry in folder.iterdir():
        for suffix in (".json.gz", ".json"):
            if entry.name.endswith(suffix):
                found.setdefault(entry.name.removesuffix(suffix), entry)
    return dict(sorted(found.items()))


def load_table(name: str, storage: str | None = None) -> Table:
    """A table by name: a JSON file path, a table shipped with the package, or a `tabulate` study in `storage`.

    Looked up in this order: a path (anything naming an existing file, or ending in .json / .json.gz, or with a
    folder in it); the finished study `table/<NAME>` in `storage`, when given and the store exists (what you
    tabulated yourself comes before a shipped table of the same name); a shipped table."""
    from hpo_astro.storage import store_file

    if not name.strip():
        raise UserError("the table name is empty")
    path = Path(name)
    if path.is_file() or name.endswith((".json", ".json.gz", ".gz")) or "/" in name.removeprefix(TABLE_PREFIX):
        return Table.load(path)
    short = name.removeprefix(TABLE_PREFIX)
    if storage is not None:
        file = store_file(storage)
        if file is None or file.is_file():
            table = table_from_store(storage, short, required=False)
            if table is not None:
                return table
    shipped = shipped_tables()
    if short in shipped:
        return Table.from_bytes(shipped[short].read_bytes(), f"shipped table {short}")
    where = f"no study {TABLE_PREFIX}{short} in {storage}, " if storage is not None else ""
    raise UserError(
        f"no table {name!r}: not a file, {where}not a shipped table (shipped: {', '.join(shipped) or 'none'})"
    )


def table_from_store(storage: str, name: str, required: bool = True) -> Table | None:
    """The table of the finished study `table/<name>` in `storage` (read-only); None when there is no such study
    and it is not `required`. An unfinished study is refused, saying what is missing and how to finish it."""
    import optuna

    from hpo_astro.storage import read_store

    study_name = TABLE_PREFIX + name
    with read_store(storage) as backend:
        try:
            study = optuna.load_study(study_name=study_name, storage=backend)
        except KeyError:
            if not required:
                return None
            raise UserError(f"no table study {study_name!r} in {storage}") from None
        return table_from_study(study, storage)


def table_from_study(study: Any, storage: str) -> Table:
    """The table of a `tabulate` study: one row per configuration, from its first complete trial (a grid study run
    by racing workers may evaluate a configuration twice; training is deterministic, so either gives the row)."""
    from optuna.trial import TrialState

    name = study.study_name.removeprefix(TABLE_PREFIX)
    record = StudyRecord.from_attrs(study.user_attrs)
    if record is None or record.strategy != "grid":
        raise UserError(f"study {study.study_name!r} in {storage} is not a table made by `hpo-astro tabulate`")
    space = SearchSpace.from_dict(record.space)
    rows: dict[tuple[int, ...], TableRow] = {}
    untested = failed = 0
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if trial.state == TrialState.FAIL and "fail_reason" in trial.user_attrs:
            failed += 1
        if trial.state != TrialState.COMPLETE:
            continue
        if TEST_METRICS_ATTR not in trial.user_attrs:
            untested += 1
            continue
        row = _row_from_trial(trial)
        rows.setdefault(_key(space, row.params, f"trial {trial.number}"), row)
    missing = space.n_combinations() - len(rows)
    if missing:
        why = []
        if failed:
            why.append(f"{failed} trial(s) failed (see their fail_reason)")
        if untested:
            why.append(f"{untested} trial(s) finished without test metrics (not run by tabulate)")
        reason = f" ({'; '.join(why)})" if why else ""
        raise UserError(
            f"table study {study.study_name!r} in {storage} is unfinished: {missing} of {space.n_combinations()} "
            f"configurations have no row{reason}; finish it with: hpo-astro tabulate --out {name} --storage {storage}"
        )
    return Table(
        name=name,
        space=space.to_dict(),
        rows=tuple(rows.values()),
        data_fingerprint=record.data_fingerprint,
        seed=int(record.seed),
        max_epochs=record.max_epochs,
        info={
            "study": study.study_name,
            "objective": record.objective,
            "channels": list(record.channels),
            "data_source": record.data_source,
            "hpo_astro_version": record.hpo_astro_version,
            "training_seconds": round(sum(row.wall_time for row in rows.values()), 1),
        },
    )


def _row_from_trial(trial: Any) -> TableRow:
    attrs = trial.user_attrs
    history = tuple(
        EpochMetrics(**{k: math.nan if v is None else v for k, v in h.items()}) for h in trial_history(trial)
    )
    wall_time = float(attrs.get(WALL_TIME_ATTR, 0.0))
    # A retried trial's wall time is its own run's; the epochs it inherited were paid for by the interrupted one.
    inherited = int(attrs.get("resumed_from_epoch", 0))
    wall_time += sum(h.seconds for h in history[:inherited])
    return TableRow(
        params=dict(attrs[PARAMS_FULL_ATTR]),
        history=history,
        best_epoch=int(attrs["best_epoch"]),
        stop_reason=str(attrs["stop_reason"]),
        val_metrics={k: _float_or_nan(v) for k, v in attrs[VAL_METRICS_ATTR].items()},
        test_metrics={k: _float_or_nan(v) for k, v in attrs[TEST_METRICS_ATTR].items()},
        wall_time=wall_time,
    )


# --- checks ------------------------------------------------------------------------------------------------------


class _Malformed(Exception):
    """A table file's structure is wrong (becomes one UserError line naming the file)."""


def _search_space(name: str, space: Mapping[str, Any]) -> SearchSpace:
    if not isinstance(space, Mapping) or not space:
        raise UserError(f"table {name!r}: the space must name at least one hyperparameter")
    search = SearchSpace.from_dict(space)
    for hp, values in search.items():
        if len({_norm(v) for v in values}) != len(values):
            raise UserError(f"table {name!r}: hyperparameter {hp!r} lists a value twice")
    return search


def _check_row(where: str, row: TableRow) -> None:
    history = row.history
    if not history:
        raise UserError(f"{where} has no epochs")
    for i, epoch in enumerate(history, start=1):
        if epoch.epoch != i:
            raise UserError(f"{where}: epoch {i} of its history says epoch {epoch.epoch}")
    if not 1 <= row.best_epoch <= len(history):
        raise UserError(f"{where}: best_epoch {row.best_epoch} is outside its {len(history)} epochs")
    for label, metrics in (("val_metrics", row.val_metrics), ("test_metrics", row.test_metrics)):
        extra = [k for k in metrics if k not in METRIC_FIELDS]
        if extra:  # a table built in code may leave metrics out (NaN when replayed); a file must have them all
            raise UserError(f"{where}: {label} has unknown {', '.join(extra)}")
    unknown = [name for name in row.params if name not in PAPER_SPACE]
    if unknown:
        raise UserError(f"{where}: unknown hyperparameter {unknown[0]!r} in its params")


def _key(search: SearchSpace, params: Mapping[str, Any], where: str) -> tuple[int, ...]:
    """The configuration's position in the space: the index of each hyperparameter's value."""
    key = []
    for name, values in search.items():
        if name not in params:
            raise UserError(f"{where}: {name} is not given")
        try:
            value = search.match(name, params[name])
        except UserError:
            shown = ", ".join(str(v) for v in values)
            raise UserError(f"{where}: {name}={params[name]} is not in the table's space ({shown})") from None
        key.append(values.index(value))
    return tuple(key)


def _describe(search: SearchSpace, key: tuple[int, ...]) -> str:
    return " ".join(f"{name}={values[i]}" for (name, values), i in zip(search.items(), key, strict=True))


def _same(a: Any, b: Any) -> bool:
    return _norm(a) == _norm(b)


def _norm(value: Any) -> Any:
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(f"{float(value):.12g}")  # 1e-3, 0.001 and 0.0010000000000000002 are one value
    return value


def _finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity: a diverged epoch's loss is written as null (read back as NaN)."""
    return float(value) if value is not None and math.isfinite(value) else None


def _float_or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Malformed(f"{where} must be an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Malformed(f"{where} must be a list")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _Malformed(f"{where} must be a string")
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Malformed(f"{where} must be a whole number")
    return value


def _number(value: Any, where: str) -> float:
    """A number, or null for a non-finite one."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Malformed(f"{where} must be a number or null")
    return float(value)


def _metrics(value: Any, where: str) -> dict[str, float]:
    metrics = {key: _number(v, f"{where}.{key}") for key, v in _obj(value, where).items()}
    absent = [k for k in _REQUIRED_METRICS if k not in metrics]
    if absent:
        raise _Malformed(f"{where} lacks {', '.join(absent)}")
    return metrics


def _row_from_json(value: Any, where: str) -> TableRow:
    row = _obj(value, where)
    history = []
    for i, epoch in enumerate(_list(row.get("history"), f"{where}.history")):
        values = _list(epoch, f"{where}.history[{i}]")
        if len(values) != len(EPOCH_FIELDS):
            raise _Malformed(f"{where}.history[{i}] must hold {len(EPOCH_FIELDS)} values ({', '.join(EPOCH_FIELDS)})")
        number = _int(values[0], f"{where}.history[{i}].epoch")
        rest = [_number(v, f"{where}.history[{i}].{f}") for f, v in zip(EPOCH_FIELDS[1:], values[1:], strict=True)]
        history.append(EpochMetrics(number, *rest))
    params = _obj(row.get("params"), f"{where}.params")
    for key, param in params.items():
        if isinstance(param, bool) or not isinstance(param, int | float | str):
            raise _Malformed(f"{where}.params.{key} must be a number or a string")
    wall_time = _number(row.get("wall_time"), f"{where}.wall_time")
    if not (math.isfinite(wall_time) and wall_time >= 0):
        raise _Malformed(f"{where}.wall_time must be a number of seconds >= 0")
    return TableRow(
        params=dict(params),
        history=tuple(history),
        best_epoch=_int(row.get("best_epoch"), f"{where}.best_epoch"),
        stop_reason=_str(row.get("stop_reason"), f"{where}.stop_reason"),
        val_metrics=_metrics(row.get("val_metrics"), f"{where}.val_metrics"),
        test_metrics=_metrics(row.get("test_metrics"), f"{where}.test_metrics"),
        wall_time=wall_time,
    )
