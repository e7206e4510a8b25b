"""A table is checked whole when it is loaded, from a file or from a store's `tabulate` study: every field's type and
range, the rows against the space and each other. A bad table is one error line naming the table, the row and the
field (exit 2 from the command line, nothing written), never a traceback per trial or a report of impossible numbers.
Reads are bounded: regular files only, a size cap on table and study files, a gzip bomb stopped at the cap.

The property tests mutate a small valid table (a file, and a store study's attributes) at random and load it: it
loads and is valid (it saves, loads back the same and replays), or it is refused with one UserError line. Derandomized
and without an example database, like the other fuzz tests; HPO_ASTRO_FUZZ_EXAMPLES=5000 for a longer local run."""

from __future__ import annotations

import copy
import dataclasses
import gzip
import json
import math
import os
import re
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import assert_refused, invoke, store_url
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import Result

from hpo_astro.core.train import EpochMetrics
from hpo_astro.errors import UserError
from hpo_astro.store.record import (
    HISTORY_SYSTEM_ATTR,
    PARAMS_FULL_ATTR,
    VAL_METRICS_ATTR,
    WALL_TIME_ATTR,
    StudyRecord,
    curve_attrs,
)
from hpo_astro.tabular import TEST_METRICS_ATTR, Table, TableReplay, TableRow, load_table, table_from_study
from hpo_astro.tabular.validate import EPOCH_RANGES, METRIC_RANGES

SPACE = {"lr": [1e-3, 1e-2]}
NAME = "small"


def make_row(lr: float) -> TableRow:
    """Two epochs; epoch e took e seconds."""
    history = tuple(EpochMetrics(e, 0.7 / e, 0.5 + 0.1 * e, 0.6 / e, 0.55 + 0.1 * e, 0.6, lr, float(e)) for e in (1, 2))
    metrics = {"loss": 0.3, "accuracy": 0.75, "roc_auc": 0.6, "precision": 0.8, "recall": 0.7, "f1": 0.75}
    return TableRow(
        params={"lr": lr},
        history=history,
        best_epoch=2,
        stop_reason="max_epochs",
        val_metrics={**metrics, "fpr_at_5fnr": 0.4, "threshold": 0.5},
        test_metrics={**metrics, "fpr_at_5fnr": 0.5, "threshold": 0.5},
        wall_time=3.0,
    )


def make_table() -> Table:
    info = {"objective": "accuracy", "channels": ["scorr"], "data_source": "cutouts.npz", "recipe": {"note": "x"}}
    rows = tuple(make_row(lr) for lr in SPACE["lr"])
    return Table(NAME, dict(SPACE), rows, data_fingerprint="f" * 16, seed=0, max_epochs=3, info=info)


def table_dict() -> dict[str, Any]:
    return make_table().to_json()


def write(path: Path, doc: Any, gz: bool = False) -> Path:
    text = json.dumps(doc, allow_nan=True).encode()  # NaN and Infinity as Python writes them
    path.write_bytes(gzip.compress(text, mtime=0) if gz else text)
    return path


def refusal(load: Callable[[], object]) -> str:
    with pytest.raises(UserError) as refused:
        load()
    message = str(refused.value)
    assert "\n" not in message, message
    return message


# --- every finding, from a file --------------------------------------------------------------------------------


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _every_row(key: str, value: Any) -> Callable[[dict], None]:
    return lambda doc: [row.update({key: value}) for row in doc["rows"]]


ROW0 = "table 'small': row 0 (lr=0.001): "
BAD_FILES: dict[str, tuple[Callable[[dict], None], str]] = {
    # time: the replay charges it, the anytime curves add it up
    "negative seconds": (_set(("rows", 0, "history", 0, 7), -3.0), ROW0 + "history[0].seconds = -3.0 must be a finite"),
    "infinite seconds": (_set(("rows", 0, "history", 1, 7), math.inf), ROW0 + "history[1].seconds = inf must be"),
    "no seconds": (_set(("rows", 0, "history", 1, 7), None), ROW0 + "history[1].seconds = nan must be"),
    "negative wall time": (_set(("rows", 0, "wall_time"), -1), ROW0 + "wall_time = -1.0 must be a finite number"),
    # how a run ended: a pruned row would be pruned in every study
    "pruned": (_every_row("stop_reason", "pruned"), ROW0 + "stop_reason must be one of max_epochs, early_stopping"),
    "stop reason": (_set(("rows", 0, "stop_reason"), "bored"), ROW0 + "stop_reason must be one of"),
    # metrics in their ranges
    "accuracy 7.5": (_set(("rows", 0, "val_metrics", "accuracy"), 7.5), ROW0 + "val_metrics.accuracy = 7.5 must be"),
    "auc": (_set(("rows", 0, "test_metrics", "roc_auc"), -0.1), ROW0 + "test_metrics.roc_auc = -0.1 must be between"),
    "negative loss": (_set(("rows", 0, "history", 0, 3), -0.5), ROW0 + "history[0].val_loss = -0.5 must be a loss"),
    "epoch accuracy": (_set(("rows", 0, "history", 0, 2), 2), ROW0 + "history[0].train_accuracy = 2.0 must be"),
    "learning rate": (_set(("rows", 0, "history", 0, 6), None), ROW0 + "history[0].lr = nan must be a finite"),
    "threshold": (_set(("rows", 0, "val_metrics", "threshold"), 2), ROW0 + "val_metrics.threshold = 2.0 must be"),
    "huge metric": (_set(("rows", 0, "val_metrics", "f1"), 10**400), "rows[0].val_metrics.f1 is too large"),
    # seeds, epoch caps
    "seed -5": (_set(("seed",), -5), "table 'small': seed must be a whole number from 0 to 4294967295, got -5"),
    "seed 2**70": (
        _set(("seed",), 2**70),
        "seed must be a whole number from 0 to 4294967295, got 1180591620717411303424",
    ),
    "max_epochs 0": (_set(("max_epochs",), 0), "table 'small': max_epochs must be null or a whole number >= 1, got 0"),
    "longer than max_epochs": (_set(("max_epochs",), 1), ROW0 + "its history has 2 epochs, more than the table's"),
    "longer than t_max": (
        _set(("rows", 0, "params", "t_max"), 1),
        ROW0 + "its history has 2 epochs, more than its t_max",
    ),
    # the rows against the space and each other
    "fixed values differ": (
        _set(("rows", 1, "params", "fc_width"), 128),
        "table 'small': row 1 (lr=0.01): params.fc_width = 128, but row 0 (lr=0.001) has 64",
    ),
    "missing row": (lambda doc: doc["rows"].pop(), "table 'small': 1 of 2 configurations of its space have no row"),
    "bad value": (_set(("rows", 0, "params", "fc_width"), 99999), "row 0: params: fc_width = 99999 is out of range"),
    "huge value": (_set(("rows", 0, "params", "lr"), 10**400), "row 0: params.lr = 1000000000"),
    "value outside the space": (_set(("rows", 0, "params", "lr"), 0.5), "row 0: lr=0.5 is not in the table's space"),
    "huge space value": (_set(("space", "lr"), [10**400]), "table 'small': space: a value is too large"),
    # provenance that code reads
    "channels 5": (_set(("info", "channels"), 5), "table 'small': info.channels must be a list of plane names, got 5"),
    "channels bogus": (_set(("info", "channels"), ["bogus"]), "info.channels: unknown channel 'bogus'; known: sci"),
    "channels twice": (_set(("info", "channels"), ["scorr", "scorr"]), "info.channels: channel listed twice"),
    "data source": (_set(("info", "data_source"), ["a"]), "info.data_source must be a string"),
    "objective": (_set(("info", "objective"), "speed"), "info.objective must be one of accuracy, loss, roc_auc"),
    "info NaN": (_set(("info", "recipe"), math.nan), "info must be plain JSON"),
    # fields the format does not have
    "unknown field": (_set(("maxepochs",), 3), "the file has unknown field(s) 'maxepochs'"),
    "unknown row field": (_set(("rows", 0, "walltime"), 3), "rows[0] has unknown field(s) 'walltime'"),
    "name": (_set(("name",), "two\nlines"), "a table name must be 1 to 200 printable characters, got 'two\\nlines'"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_table_file_with_a_bad_field_is_one_line_naming_the_row_and_field(kind: str, tmp_path: Path) -> None:
    change, expected = BAD_FILES[kind]
    doc = table_dict()
    change(doc)
    path = write(tmp_path / "bad.json", doc)
    message = refusal(lambda: load_table(str(path)))
    assert message.startswith(f"{path}: not a valid hpo-astro table: ") and expected in message, message


def test_the_ranges_cover_every_field() -> None:
    from hpo_astro.tabular import EPOCH_FIELDS, METRIC_FIELDS

    assert set(EPOCH_RANGES) == set(EPOCH_FIELDS) - {"epoch"} and set(METRIC_RANGES) == set(METRIC_FIELDS)


def test_a_valid_table_with_nulls_where_they_are_allowed_loads(tmp_path: Path) -> None:
    """A diverged epoch (null losses), ROC AUC not measured (one class), infinity as a loss: a table still."""
    doc = table_dict()
    doc["rows"][0]["history"][1][1] = None  # train loss of a diverged epoch
    doc["rows"][0]["history"][1][3] = math.inf
    doc["rows"][0]["history"][0][5] = None
    doc["rows"][1]["test_metrics"]["fpr_at_5fnr"] = None
    doc["rows"][1]["stop_reason"] = "diverged"
    table = load_table(str(write(tmp_path / "ok.json", doc)))
    assert math.isnan(table.rows[0].history[1].train_loss) and table.rows[1].stop_reason == "diverged"


@pytest.mark.parametrize("kind", ["pruned", "channels 5", "missing row"])
def test_benchmark_refuses_a_bad_table_before_writing_anything(kind: str, tmp_path: Path) -> None:
    change, expected = BAD_FILES[kind]
    doc = table_dict()
    change(doc)
    path = write(tmp_path / "bad.json.gz", doc, gz=True)
    out = tmp_path / "out"
    result = invoke("benchmark", "-s", "random", "-n", 2, "-r", 1, "--top-k", 0, "--table", path, "--out", out)
    assert_refused(result, f"{path}: not a valid hpo-astro table: ")
    assert expected in result.stderr
    assert not out.exists()


# --- from a store's study --------------------------------------------------------------------------------------


def store_doc() -> dict[str, Any]:
    """A `tabulate` study as plain data: its record and, per configuration, a trial's attributes and exact curve."""
    table = make_table()
    record = StudyRecord(
        strategy="grid",
        space=dict(SPACE),
        objective="accuracy",
        data_fingerprint=table.data_fingerprint,
        n_trials=2,
        seed=0,
        max_epochs=3,
        channels=["scorr"],
        data_source="cutouts.npz",
    )
    trials = []
    for row in table.rows:
        history = [dataclasses.asdict(h) for h in row.history]
        attrs = {
            PARAMS_FULL_ATTR: row.params,
            "best_epoch": row.best_epoch,
            "stop_reason": row.stop_reason,
            VAL_METRICS_ATTR: row.val_metrics,
            TEST_METRICS_ATTR: row.test_metrics,
            WALL_TIME_ATTR: row.wall_time,
            **curve_attrs(history),
        }
        trials.append({"user_attrs": attrs, "history": history})
    return json.loads(json.dumps({"record": record.to_attrs(), "trials": trials}))


def build_study(doc: dict[str, Any], storage: str | None = None) -> optuna.Study:
    study = optuna.create_study(study_name=f"table/{NAME}", storage=storage, direction="maximize")
    for key, value in doc["record"].items():
        study.set_user_attr(key, value)
    for trial in doc["trials"]:
        exact = {HISTORY_SYSTEM_ATTR: trial["history"]} if "history" in trial else {}  # else: the curve_* attributes
        study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs=trial["user_attrs"], system_attrs=exact))
    return study


def test_a_store_study_reads_as_its_table() -> None:
    table = table_from_study(build_study(store_doc()), "memory")
    assert table.rows == make_table().rows and table.info["channels"] == ["scorr"]
    assert table.info["training_seconds"] == 6.0


def _trial(index: int, key: str, value: Any) -> Callable[[dict], None]:
    return _set(("trials", index, "user_attrs", key), value)


def _drop(index: int, key: str) -> Callable[[dict], None]:
    return lambda doc: doc["trials"][index]["user_attrs"].pop(key)


def _record(key: str, value: Any) -> Callable[[dict], None]:
    return _set(("record", key), value)


def _either(*fragments: str) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(f) for f in fragments))


STUDY = "table study 'table/small' in memory: not a valid hpo-astro table: "
BAD_STUDIES: dict[str, tuple[Callable[[dict], None], str | re.Pattern[str]]] = {
    "no params": (_drop(0, PARAMS_FULL_ATTR), "trial 0 lacks the attribute(s) params_full"),
    "params a list": (_trial(0, PARAMS_FULL_ATTR, [1]), "trial 0.params must be an object"),
    "best epoch a string": (_trial(1, "best_epoch", "2"), "trial 1.best_epoch must be a whole number"),
    "no stop reason": (_drop(1, "stop_reason"), "trial 1 lacks the attribute(s) stop_reason"),
    "pruned": (_trial(0, "stop_reason", "pruned"), "row 0 (lr=0.001): stop_reason must be one of"),
    "metrics a list": (_trial(0, VAL_METRICS_ATTR, []), "trial 0.val_metrics must be an object"),
    "metric a string": (_trial(0, TEST_METRICS_ATTR, {"accuracy": "high"}), "trial 0.test_metrics.accuracy must"),
    "wall time a string": (_trial(0, WALL_TIME_ATTR, "3 s"), "trial 0.wall_time must be a number or null"),
    "resumed from": (_trial(0, "resumed_from_epoch", "1"), "trial 0.resumed_from_epoch must be a whole number"),
    "resumed past the end": (_trial(0, "resumed_from_epoch", 9), "trial 0: resumed_from_epoch 9 is outside its 2"),
    "history garbage": (_set(("trials", 0, "history"), [5]), "trial 0: its per-epoch history is unreadable"),
    "history short": (
        lambda doc: doc["trials"][0]["history"][0].pop("seconds"),
        "trial 0: epoch 1 of its history lacks seconds",
    ),
    "negative seconds": (_set(("trials", 1, "history", 0, "seconds"), -1.0), "history[0].seconds = -1.0 must be"),
    # a record field of the wrong type: refused by the record reader (hpo_astro.store.record) or, past it, by the
    # table's
    "seed a string": (_record("seed", "zero"), _either("seed must be a whole number", "attribute 'seed' is \"zero\"")),
    "channels 5": (_record("channels", 5), _either("info.channels must be a list", "attribute 'channels' is 5")),
    "channels bogus": (_record("channels", ["bogus"]), "info.channels: unknown channel 'bogus'"),
    "space a string": (_record("space", "lr"), _either("the space must name", "attribute 'space' is \"lr\"")),
    "space values": (_record("space", {"lr": 0.001}), _either("space.lr must be a list", "attribute 'space' is {")),
    "max epochs a string": (_record("max_epochs", "3"), _either("max_epochs must be", "attribute 'max_epochs' is")),
    "fingerprint a number": (_record("data_fingerprint", 7), _either("fingerprint must be", "'data_fingerprint' is 7")),
}


@pytest.mark.parametrize("kind", list(BAD_STUDIES))
def test_a_store_study_with_a_bad_attribute_is_one_line_naming_the_trial_and_field(kind: str) -> None:
    change, expected = BAD_STUDIES[kind]
    doc = store_doc()
    change(doc)
    study = build_study(doc)
    message = refusal(lambda: table_from_study(study, "memory"))
    found = expected.search(message) if isinstance(expected, re.Pattern) else expected in message
    assert message.startswith(STUDY) and found, message


def test_benchmark_refuses_a_bad_table_study_in_its_store(tmp_path: Path) -> None:
    doc = store_doc()
    _record("channels", 5)(doc)
    url = store_url(tmp_path)
    build_study(doc, url)
    out = tmp_path / "out"
    args = ["-s", "random", "-n", 2, "-r", 1, "--top-k", 0, "--table", NAME, "--storage", url, "--out", out]
    result = invoke("benchmark", *args)
    assert_refused(result, f"table study 'table/{NAME}' in {url}: not a valid hpo-astro table: ")
    assert "attribute 'channels' is 5" in result.stderr or "info.channels must be a list" in result.stderr
    assert not out.exists()


# --- bounded reads -----------------------------------------------------------------------------------------------


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)  # nobody writes to it: a blocking open would hang here
    return path


@pytest.mark.parametrize("where", ["/dev/zero", "fifo", "folder"])
def test_only_regular_files_are_read_as_tables(where: str, tmp_path: Path) -> None:
    path = {"/dev/zero": Path("/dev/zero"), "fifo": _fifo(tmp_path), "folder": tmp_path}[where]
    kind = "a directory" if where == "folder" else "not a regular file"
    assert refusal(lambda: load_table(str(path))) == f"cannot read table {path}: it is {kind}"


@pytest.mark.parametrize(
    ("command", "where"),
    [
        ("benchmark", "/dev/zero"),
        ("tabulate", "/dev/zero"),
        ("tabulate", "fifo"),
        ("run", "/dev/zero"),
        ("run", "folder"),
        ("benchmark-config", "fifo"),
    ],
)
def test_the_commands_refuse_what_is_not_a_regular_file(command: str, where: str, tmp_path: Path) -> None:
    path = {"/dev/zero": Path("/dev/zero"), "fifo": _fifo(tmp_path), "folder": tmp_path}[where]
    kind = "a directory" if where == "folder" else "not a regular file"
    store = store_url(tmp_path)
    out = tmp_path / "out"
    if command == "benchmark":
        result = invoke("benchmark", "-s", "random", "-n", 1, "--table", path, "--out", out)
        assert_refused(result, f"cannot read table {path}: it is {kind}")
    else:
        args = {
            "tabulate": ["tabulate", "--space", path, "--out", "t", "--storage", store],
            "run": ["run", "--config", path, "--n-trials", 1, "--storage", store],
            "benchmark-config": ["benchmark", "-s", "random", "-n", 1, "--config", path, "--out", out],
        }[command]
        assert_refused(invoke(*args), f"cannot read study file {path}: it is {kind}")
    assert not (tmp_path / "optuna.db").exists() and not out.exists()


def test_a_huge_study_file_is_refused(tmp_path: Path) -> None:
    from hpo_astro.study.config import MAX_STUDY_FILE_BYTES

    path = tmp_path / "huge.toml"
    path.write_bytes(b'strategy = "random"\n' + b"#" * MAX_STUDY_FILE_BYTES + b"\n")
    result = invoke("run", "--config", path, "--n-trials", 1, "--storage", store_url(tmp_path))
    assert_refused(result, f"{path}: larger than 4 MiB, not a study file")


def _deflated(parts: Iterator[bytes]) -> bytes:
    """gzip data of the concatenated parts, compressed a piece at a time (never whole in memory)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return b"".join(deflate.compress(part) for part in parts) + deflate.flush()


def _peak(load: Callable[[], object]) -> tuple[str, int]:
    tracemalloc.start()
    try:
        message = refusal(load)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return message, peak


def test_a_small_gzip_file_of_many_json_values_is_refused_before_parsing(tmp_path: Path) -> None:
    """The finding: 61 KiB of gzip holding 57 MiB of empty lists, which parsing would make 2 GB of objects."""
    path = tmp_path / "bomb.json.gz"
    count = 57 * 2**20 // 3
    path.write_bytes(_deflated(iter([b"[", *([b"[]," * (count // 64)] * 64), b"[]]"])))
    assert path.stat().st_size < 128 * 2**10
    message, peak = _peak(lambda: load_table(str(path)))
    assert message == f"{path}: not a valid hpo-astro table: more than 4,000,000 JSON values"
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_a_gzip_bomb_stops_at_the_size_cap(tmp_path: Path) -> None:
    path = tmp_path / "bomb.json.gz"
    # 256 MiB of spaces in about 256 KiB: four times the cap, so a loader that read it whole peaks far past 100 MiB
    path.write_bytes(_deflated(iter([b" " * 2**20] * 256)))
    message, peak = _peak(lambda: load_table(str(path)))
    assert message == f"{path}: not a valid hpo-astro table: larger than 64 MiB"
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_gzip_members_truncation_and_trailing_bytes(tmp_path: Path) -> None:
    text = json.dumps(table_dict()).encode()
    half = len(text) // 2
    members = gzip.compress(text[:half], mtime=0) + gzip.compress(text[half:], mtime=0)
    path = tmp_path / "t.json.gz"
    path.write_bytes(members + b"\0\0")  # two members, as `cat a.gz b.gz` makes, and zero padding: gzip reads them
    assert load_table(str(path)).rows == make_table().rows
    path.write_bytes(members[:-20])
    assert "corrupt gzip data (truncated)" in refusal(lambda: load_table(str(path)))
    path.write_bytes(members + b"garbage")
    assert "corrupt gzip data (trailing garbage)" in refusal(lambda: load_table(str(path)))


# --- property tests: random mutations of a valid table -----------------------------------------------------------

PEAK_LIMIT = 64 << 20
EXPLORE = os.environ.get("HPO_ASTRO_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(EXPLORE) if EXPLORE else 100,  # a few seconds each
    deadline=None,
    derandomize=not EXPLORE,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
SPECIAL_NUMBERS = [-1, 0, 1, 2, -0.5, 0.5, 7.5, 1e308, 2**31, 2**32, 2**63, 2**70, -(2**70), 10**400]
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10),
    st.sampled_from(SPECIAL_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)
JSON = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _locations(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON document, as a path of keys and indices."""
    if prefix:
        yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _locations(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from _locations(value, (*prefix, index))


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], allowed: Callable[[tuple[Any, ...]], bool] = bool) -> Any:
    """`base` with 1 to 3 changes: a value replaced by any JSON (wrong types, huge ints, NaN, infinity, nesting) or a
    boundary number, a key or element removed, an extra key or element added."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        places = [p for p in _locations(doc) if allowed(p)]
        if not places:
            break
        path = draw(st.sampled_from(places))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key, target = path[-1], parent[path[-1]]
        kind = draw(st.sampled_from(["replace", "number", "delete", "extra"]))
        if kind == "replace":
            parent[key] = draw(JSON)
        elif kind == "number":
            parent[key] = draw(st.sampled_from([*SPECIAL_NUMBERS, math.nan, math.inf, -math.inf]))
        elif kind == "delete":
            del parent[key]
        elif isinstance(target, dict):
            target[draw(st.text(max_size=6))] = draw(JSON)
        elif isinstance(target, list):
            target.append(draw(st.sampled_from([*target, None]) if target else JSON))
        else:
            parent[key] = draw(JSON)
    return doc


def assert_valid(table: Table, work: Path) -> None:
    """A table that loaded is one the package can use: it saves, loads back the same, and every row replays."""
    table.save(work / "again.json")
    assert Table.load(work / "again.json").to_json() == table.to_json()  # compared as JSON: NaN is null there
    replay = TableReplay(table)
    for row in table.rows:
        result = replay(row.params, None)
        assert result.history == list(row.history) and math.isfinite(result.wall_time) and result.wall_time >= 0


def assert_clean(result: Result) -> None:
    """A command either worked or refused in one line; never a traceback."""
    if result.exit_code != 0:
        assert_refused(result, "")


CLI_RUNS = {"refused": 0, "loaded": 0}  # the command line is tried on the first example of each outcome only


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("table-fuzz")


@FUZZ
@given(data=st.data())
def test_a_mutated_table_file_loads_valid_or_is_one_line(data: st.DataObject, work: Path) -> None:
    doc = data.draw(mutated(table_dict()))
    path = write(work / ("t.json.gz" if data.draw(st.booleans()) else "t.json"), doc)
    tracemalloc.start()
    try:
        table: Table | None = load_table(str(path))
    except UserError as exc:
        table = None
        assert "\n" not in str(exc) and str(exc).startswith(f"{path}: not a valid hpo-astro table: "), str(exc)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.1f} MiB"
    if table is not None:
        assert_valid(table, work)
    outcome = "refused" if table is None else "loaded"
    if CLI_RUNS[outcome] == 0:  # through the command line too, once each: the same verdict, in one line
        CLI_RUNS[outcome] += 1
        out = work / f"bench-{outcome}"
        result = invoke("benchmark", "-s", "random", "-n", 1, "-r", 1, "--top-k", 0, "--table", path, "--out", out)
        assert_clean(result)
        assert (result.exit_code == 0) == (table is not None) or "cannot replay table" in result.stderr


def _store_place(path: tuple[Any, ...]) -> bool:
    """Inside the record, or inside a trial's attributes or curve (the study itself must stay buildable)."""
    if path[0] == "record":
        return len(path) >= 2
    return len(path) >= 3 and (path[2] == "history" or len(path) >= 4)


@FUZZ
@given(data=st.data())
def test_a_mutated_table_study_loads_valid_or_is_one_line(data: st.DataObject, work: Path) -> None:
    doc = data.draw(mutated(store_doc(), _store_place))
    study = build_study(doc)
    try:
        table: Table | None = table_from_study(study, "memory")
    except UserError as exc:
        table = None
        assert "\n" not in str(exc), str(exc)
    if table is not None:
        assert_valid(table, work)
