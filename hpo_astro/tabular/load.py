"""Finding and reading a table by name: a JSON file, a finished `table/<NAME>` study in a store, or a table
shipped with the package (`hpo_astro/tables/`)."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

from hpo_astro.errors import UserError, one_line
from hpo_astro.store.record import (
    BEST_EPOCH_ATTR,
    FAIL_REASON_ATTR,
    PARAMS_FULL_ATTR,
    RESUMED_FROM_EPOCH_ATTR,
    STOP_REASON_ATTR,
    TEST_METRICS_ATTR,
    VAL_METRICS_ATTR,
    WALL_TIME_ATTR,
    StudyRecord,
    internal_attr,
    trial_history,
    trial_runs,
)
from hpo_astro.tabular.row import EPOCH_FIELDS, Malformed, TableRow, json_int, json_list, json_object, row_from_json
from hpo_astro.tabular.table import TABLE_PREFIX, Table, space_key
from hpo_astro.tabular.validate import check_space


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
    from hpo_astro.store.storage import store_file

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

    from hpo_astro.store.storage import read_store

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
    by racing workers may evaluate a configuration twice; training is deterministic, so either gives the row).

    The study's attributes are checked as a file's fields are (any program can write a store): a record or a trial
    with a missing or ill-typed attribute is one error line naming the study, the trial and the attribute."""
    from optuna.trial import TrialState

    name = study.study_name.removeprefix(TABLE_PREFIX)
    source = f"table study {study.study_name!r} in {storage}"
    try:
        record = StudyRecord.from_attrs(study.user_attrs)
    except UserError as exc:  # a record field of the wrong type
        raise UserError(one_line(f"{source}: not a valid hpo-astro table: {exc}")) from None
    if record is None or record.strategy != "grid":
        raise UserError(f"study {study.study_name!r} in {storage} is not a table made by `hpo-astro tabulate`")
    try:
        space = check_space(name, record.space)
        rows: dict[tuple[int, ...], list[TableRow]] = {}
        untested = failed = 0
        for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
            if trial.state == TrialState.FAIL and FAIL_REASON_ATTR in trial.user_attrs:
                failed += 1
            if trial.state != TrialState.COMPLETE:
                continue
            runs = _rows_from_trial(trial, record.eval_seeds)
            if runs is None:
                untested += 1
                continue
            rows.setdefault(space_key(space, runs[0].params, f"trial {trial.number}"), runs)
    except (Malformed, UserError) as exc:
        raise UserError(one_line(f"{source}: not a valid hpo-astro table: {exc}")) from None
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
    info = {
        "study": study.study_name,
        "objective": record.objective,
        "channels": list(record.channels) if isinstance(record.channels, list | tuple) else record.channels,
        "split": list(record.split),
        "data_source": record.data_source,
        "hpo_astro_version": record.hpo_astro_version,
    }
    try:
        table = Table(
            name=name,
            space=space.to_dict(),
            rows=tuple(row for runs in rows.values() for row in runs),
            data_fingerprint=record.data_fingerprint,
            seed=record.seed,
            max_epochs=record.max_epochs,
            info=info,
            seeds=record.eval_seeds,
        )
    except UserError as exc:
        raise UserError(one_line(f"{source}: not a valid hpo-astro table: {exc}")) from None
    table.info["training_seconds"] = round(sum(row.wall_time for row in table.rows), 1)  # checked: finite, >= 0
    return table


def _rows_from_trial(trial: Any, seeds: int) -> list[TableRow] | None:
    """A complete trial's rows: its one run, or (a study of `--seeds S`) each of its runs; None when it was not
    tested (a trial not run by tabulate)."""
    if seeds == 1:
        return [_row_from_trial(trial)] if TEST_METRICS_ATTR in trial.user_attrs else None
    runs = trial_runs(trial)
    if len(runs) != seeds:
        raise Malformed(f"trial {trial.number} records {len(runs)} runs, not the study's {seeds}")
    rows = []
    for i, run in enumerate(runs):
        where = f"trial {trial.number} run {i}"
        extra = run.get("extra_attrs")
        if not isinstance(extra, dict) or TEST_METRICS_ATTR not in extra:
            return None
        history = json_list(run.get("history"), f"{where}.history")
        epochs = [[json_object(h, f"{where}.history[{j}]").get(f) for f in EPOCH_FIELDS] for j, h in enumerate(history)]
        row = row_from_json(
            {
                "params": internal_attr(trial, PARAMS_FULL_ATTR),
                "history": epochs,
                **{key: run.get(key) for key in ("best_epoch", "stop_reason", "val_metrics", "seed")},
                "test_metrics": extra[TEST_METRICS_ATTR],
                "wall_time": run.get("wall_time"),
            },
            where,
        )
        # A resumed run's wall time is its own process's; the epochs it inherited count as recorded.
        rows.append(dataclasses.replace(row, wall_time=max(row.wall_time, sum(h.seconds for h in row.history))))
    return rows


def _row_from_trial(trial: Any) -> TableRow:
    """A trial's row, its attributes read as a file's row is (`row_from_json`: types and shapes)."""
    attrs = trial.user_attrs
    where = f"trial {trial.number}"
    try:
        history = trial_history(trial)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError):
        raise Malformed(f"{where}: its per-epoch history is unreadable") from None
    epochs = []
    for i, epoch in enumerate(history):
        if not isinstance(epoch, dict):
            raise Malformed(f"{where}: epoch {i + 1} of its history is not an object")
        absent = [f for f in EPOCH_FIELDS if f not in epoch]
        if absent:
            raise Malformed(f"{where}: epoch {i + 1} of its history lacks {', '.join(absent)}")
        epochs.append([epoch[f] for f in EPOCH_FIELDS])
    params = internal_attr(trial, PARAMS_FULL_ATTR)
    absent = [PARAMS_FULL_ATTR] if params is None else []
    absent += [a for a in (BEST_EPOCH_ATTR, STOP_REASON_ATTR, VAL_METRICS_ATTR) if a not in attrs]
    if absent:
        raise Malformed(f"{where} lacks the attribute(s) {', '.join(absent)}")
    row = row_from_json(
        {
            "params": params,
            "history": epochs,
            "best_epoch": attrs[BEST_EPOCH_ATTR],
            "stop_reason": attrs[STOP_REASON_ATTR],
            "val_metrics": attrs[VAL_METRICS_ATTR],
            "test_metrics": attrs[TEST_METRICS_ATTR],
            "wall_time": attrs.get(WALL_TIME_ATTR, 0.0),
        },
        where,
    )
    # A retried trial's wall time is its own run's; the epochs it inherited were paid for by the interrupted one.
    inherited = json_int(attrs.get(RESUMED_FROM_EPOCH_ATTR, 0), f"{where}.{RESUMED_FROM_EPOCH_ATTR}")
    if not 0 <= inherited <= len(row.history):
        raise Malformed(f"{where}: resumed_from_epoch {inherited} is outside its {len(row.history)} epochs")
    return dataclasses.replace(row, wall_time=row.wall_time + sum(h.seconds for h in row.history[:inherited]))
