"""Tabular mode: `hpo-astro tabulate` (end to end, interrupted and resumed, with workers, refusals), tables as JSON
files, in a store and shipped, and the replay that answers trials from a table (curves, pruning, checkpoints,
truncation, missing configurations)."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import math
import os
import pickle
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import helpers
import optuna
import pytest
import torch
from helpers import assert_refused, fake_train, invoke, journal_url, load_study, patience
from optuna.trial import TrialState

from hpo_astro import tabular
from hpo_astro.core.hyperparameters import DEFAULT_PARAMS
from hpo_astro.core.metrics import Metrics
from hpo_astro.core.space import SearchSpace
from hpo_astro.core.train import EpochMetrics, TrainState
from hpo_astro.data.prepare import load_splits
from hpo_astro.errors import UserError
from hpo_astro.store.record import CHECKPOINT_ATTR, WORKER_ATTR, StudyRecord, internal_attr, params_full, trial_history
from hpo_astro.study import workers
from hpo_astro.study.config import StudyConfig
from hpo_astro.study.run import RunEvents, run_study
from hpo_astro.tabular import TEST_METRICS_ATTR, Table, TableReplay, TableRow, load_table, shipped_tables

SPACE = {"conv_layers": [1, 2], "lr": [1e-3, 1e-2], "activation": ["ReLU", "GELU"]}  # 8 configurations
SHIPPED = "astro-small"


def space_file(path: Path, space: Mapping[str, list] = SPACE, extra: str = "") -> Path:
    lines = [extra, "[space]"] + [f"{k} = {json.dumps(v)}" for k, v in space.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def fake_test(result: Any, data: Any) -> Metrics:
    """The stand-in trainer's one-weight model cannot see cutouts: its test metrics are its validation metrics less
    0.01 (the real evaluation is covered by the workers test, which trains for real)."""
    v = result.val_metrics
    return Metrics(v.loss + 0.01, v.accuracy - 0.01, v.roc_auc - 0.01, 1.0, 1.0, 1.0, 0.0)


def tabulating(trainer: Any = fake_train) -> tabular.TabulateTrain:
    """A table study's trainer with `trainer` and the stand-in test evaluation, handed to the command (`invoke`)."""
    return tabular.TabulateTrain(trainer, fake_test)


@pytest.fixture
def fake_tabulating(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tabulate commands train with the fast stand-in trainer and test with `fake_test`."""
    monkeypatch.setattr(helpers, "TRAINER", tabulating())


def tabulate(tmp_path: Path, data: Path, *args: object, name: str = "t8") -> Any:
    space = space_file(tmp_path / "space.toml")
    return invoke(
        "tabulate", "--space", space, "--out", name, "--storage", journal_url(tmp_path), "--data", data,
        "--max-epochs", 3, "--json", tmp_path / f"{name}.json.gz", *args,
    )  # fmt: skip


# --- tables built by hand ------------------------------------------------------------------------------------------


def quality(params: Mapping[str, Any]) -> float:
    """A configuration's final validation accuracy in the hand-made tables: lr and batch size matter."""
    return 0.95 - 4 * float(params["lr"]) - 0.0004 * int(params["batch_size"])


def make_row(params: Mapping[str, Any], epochs: int = 10, best: int | None = None) -> TableRow:
    """Accuracy rising to `quality` at epoch `best` (default: the last), validation loss its mirror image, so the
    best epoch is `best`; epoch e took 0.5 + 0.1 e seconds."""
    best = best or epochs
    q = quality(params)
    history = []
    for e in range(1, epochs + 1):
        acc = q * min(e, best) / best - (0.01 * (e - best) if e > best else 0.0)
        history.append(EpochMetrics(e, 1 - acc, acc, 1 - acc, acc, acc, 1e-3, 0.5 + 0.1 * e))
    a = history[best - 1].val_accuracy
    return TableRow(
        params=dict(params),
        history=tuple(history),
        best_epoch=best,
        stop_reason="max_epochs" if best == epochs else "early_stopping",
        val_metrics={
            "loss": 1 - a,
            "accuracy": a,
            "roc_auc": a,
            "precision": 0.9,
            "recall": 0.8,
            "f1": 0.85,
            "fpr_at_5fnr": 0.2,
        },
        test_metrics={
            "loss": 1 - a + 0.01,
            "accuracy": a - 0.01,
            "roc_auc": a,
            "precision": 0.9,
            "recall": 0.8,
            "f1": 0.85,
            "fpr_at_5fnr": 0.25,
        },
        wall_time=sum(h.seconds for h in history),
    )


HAND_SPACE = {"lr": [1e-1, 1e-2, 1e-3, 1e-4], "batch_size": [4, 16, 64, 256]}  # 16 configurations


def make_table(
    space: Mapping[str, list] = HAND_SPACE,
    row: Callable[[dict[str, Any]], TableRow] = make_row,
    skip: int = 0,
) -> Table:
    configs = [dict(zip(space, values, strict=True)) for values in itertools.product(*space.values())]
    rows = tuple(row({**DEFAULT_PARAMS, **config}) for config in configs[skip:])
    return Table(name="hand", space=dict(space), rows=rows, data_fingerprint="f" * 16, seed=0, max_epochs=10)


class Recorder:
    """A trainer callback that keeps a copy of every epoch's state and may stop or interrupt the run."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.epochs: list[int] = []
        self.stop_at = stop_at
        self.checkpoint: dict | None = None

    def on_epoch_end(self, state: TrainState) -> None:
        self.epochs.append(state.epoch)
        self.checkpoint = state.checkpoint()
        if state.epoch == self.stop_at:
            state.request_stop("pruned")


def bench_config(tmp_path: Path, data: Path, table: Table, **overrides: Any) -> StudyConfig:
    """A grid study over the table's space answered by the table (what `benchmark` runs)."""
    base = {
        "strategy": "grid",
        "study": "bench",
        "storage": journal_url(tmp_path),
        "data": data,
        "space": SearchSpace.from_dict(table.space),
        "n_trials": table.size,
        "pruner": "none",
        "checkpoint_interval": 0,
    }
    return StudyConfig(**{**base, **overrides})


# --- tabulate ------------------------------------------------------------------------------------------------------


def test_tabulate_writes_the_whole_table(
    tmp_path: Path, small_file: Path, fake_tabulating: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = tabulate(tmp_path, small_file, "--seed", 5)
    assert result.exit_code == 0, result.output
    assert "table 't8': 8 configurations, 24 epochs" in result.stdout
    table = Table.load(tmp_path / "t8.json.gz")
    assert gzip.decompress((tmp_path / "t8.json.gz").read_bytes()).startswith(b'{"format":"hpo-astro-table"')
    assert (table.name, table.size, len(table.rows), table.missing) == ("t8", 8, 8, 0)
    assert table.seed == 5 and table.max_epochs == 3 and table.info["study"] == "table/t8"
    assert table.data_fingerprint == load_splits(small_file).fingerprint  # --data
    assert table.info["data_source"] == str(small_file)
    study = load_study(journal_url(tmp_path), "table/t8")
    assert study.user_attrs["strategy"] == "grid" and study.user_attrs["pruner"] == "none"
    for trial in study.trials:
        row = table.row(params_full(trial))
        assert trial.user_attrs["train_seed"] == 5  # --seed is the training seed of every row
        assert [h.val_accuracy for h in row.history] == [h["val_accuracy"] for h in trial_history(trial)]
        assert len(row.history) == 3  # --max-epochs
        assert row.test_metrics == trial.user_attrs[TEST_METRICS_ATTR]
        assert row.test_metrics["accuracy"] == pytest.approx(row.val_metrics["accuracy"] - 0.01)
    # the same table from the store, and by name through load_table
    assert load_table("t8", journal_url(tmp_path)).rows == table.rows
    assert load_table("table/t8", journal_url(tmp_path)).rows == table.rows
    # without --json the table is NAME.json in the working directory
    monkeypatch.chdir(tmp_path)
    again = invoke("tabulate", "--out", "t8", "--storage", journal_url(tmp_path), "--data", small_file)
    assert again.exit_code == 0, again.output
    assert "8/8 finished trials (0 run by this process)" in again.stdout  # resumed: nothing left to train
    assert Table.load(tmp_path / "t8.json").rows == table.rows


def test_an_interrupted_tabulation_resumes_to_the_full_table(
    tmp_path: Path, small_file: Path, fake_tabulating: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def interrupted(params: Mapping[str, Any], data: Any, **options: Any) -> Any:
        calls.append(params)
        if len(calls) == 3:  # Ctrl-C in the third configuration's second epoch

            class Interrupt:
                def on_epoch_end(self, state: TrainState) -> None:
                    if state.epoch == 2:
                        raise KeyboardInterrupt

            options["callbacks"] = [*options["callbacks"], Interrupt()]
        return fake_train(params, data, **options)

    monkeypatch.setattr(helpers, "TRAINER", tabulating(interrupted))
    stopped = tabulate(tmp_path, small_file)
    assert stopped.exit_code == 130 and "resume with" in stopped.stderr
    assert not (tmp_path / "t8.json.gz").exists()  # no table before every configuration has its row
    with pytest.raises(UserError) as unfinished:
        load_table("t8", journal_url(tmp_path))
    assert "unfinished: 6 of 8 configurations have no row" in str(unfinished.value)
    assert f"hpo-astro tabulate --out t8 --storage {journal_url(tmp_path)}" in str(unfinished.value)
    # the command the message gives (no --space: the study's own configuration) finishes it
    resumed = invoke(
        "tabulate", "--out", "t8", "--storage", journal_url(tmp_path), "--data", small_file,
        "--json", tmp_path / "t8.json.gz",
    )  # fmt: skip
    assert resumed.exit_code == 0, resumed.output
    table = Table.load(tmp_path / "t8.json.gz")
    assert len(table.rows) == 8 and all(len(row.history) == 3 for row in table.rows)
    study = load_study(journal_url(tmp_path), "table/t8")
    retried = [t for t in study.trials if "resumed_from_epoch" in t.user_attrs]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 8


def test_a_worker_joining_a_table_study_records_test_metrics(
    tmp_path: Path, small_file: Path, fake_tabulating: None
) -> None:
    space = space_file(tmp_path / "space.toml")
    cfg = tabular.tabulate_config(space, "joined", journal_url(tmp_path), max_epochs=2, data=small_file)
    cfg.n_trials = 3  # a first run that stops after 3 configurations
    run_study(cfg, train=tabulating())
    study = load_study(journal_url(tmp_path), "table/joined")
    study.set_user_attr("n_trials", 8)
    assert study.user_attrs["trial_kind"] == "tabulated"  # the record says what its trials are, not the name
    assert workers.joined_study(journal_url(tmp_path), "table/joined")[1] == "tabulated"
    assert tabular.train_for_kind("tabulated", "table/joined") is tabular.tabulate_train
    assert tabular.train_for_kind("tabulated", "table/joined", helpers.TRAINER) is helpers.TRAINER
    assert tabular.train_for_kind("trained", "random") is None
    joined = invoke("worker", "--study", "table/joined", "--storage", journal_url(tmp_path))
    assert joined.exit_code == 0, joined.output
    assert len(load_table("joined", journal_url(tmp_path)).rows) == 8


def test_the_trial_kind_comes_from_the_record_not_the_name(tmp_path: Path, small_file: Path) -> None:
    """A study `run` names table/x trains (a worker joining it records no test metrics); a record of an earlier
    version, which had no trial_kind, is a table study when its name says so; resuming a study with a trainer of
    another kind is refused."""
    cfg = bench_config(tmp_path, small_file, make_table(), study="table/x", n_trials=2, max_epochs=2)
    run_study(cfg, train=fake_train)
    study = load_study(journal_url(tmp_path), "table/x")
    assert study.user_attrs["trial_kind"] == "trained"
    study.set_user_attr("n_trials", 3)
    joined = invoke("worker", "--study", "table/x", "--storage", journal_url(tmp_path), train=fake_train)
    assert joined.exit_code == 0, joined.output
    trials = load_study(journal_url(tmp_path), "table/x").get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3 and not any(TEST_METRICS_ATTR in t.user_attrs for t in trials)
    store = journal_url(tmp_path)
    refused = invoke("tabulate", "--out", "x", "--storage", store, "--data", small_file, train=fake_train)
    assert_refused(refused, "study 'table/x' in the store holds trained trials, and this command runs tabulated ones")
    record = StudyRecord.from_attrs(study.user_attrs)
    assert record is not None
    earlier = dataclasses.replace(record, trial_kind=None)  # what an earlier version wrote
    assert (earlier.kind_of("table/x"), earlier.kind_of("random")) == ("tabulated", "trained")
    with pytest.raises(UserError, match="'trial_kind' is \"grown\", not one of trained, tabulated, replayed"):
        StudyRecord.from_attrs({**study.user_attrs, "trial_kind": "grown"})


def test_a_worker_cannot_join_a_replay_study(tmp_path: Path, small_file: Path) -> None:
    table = make_table()
    cfg = bench_config(tmp_path, small_file, table, n_trials=2)
    run_study(cfg, train=TableReplay(table))
    assert load_study(journal_url(tmp_path), "bench").user_attrs["trial_kind"] == "replayed"
    joined = invoke("worker", "--study", "bench", "--storage", journal_url(tmp_path))
    assert_refused(joined, "study 'bench' replays a table (made by `hpo-astro benchmark`): a worker cannot join it")
    with pytest.raises(UserError, match="'bench' in the store holds replayed trials, and this command runs trained"):
        run_study(cfg, train=fake_train)


def test_tabulate_with_workers_trains_and_tests_for_real(
    tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes (the spawned one gets the tabulating trainer by pickling), real training and the real test
    evaluation; --threads sets each worker's torch threads."""
    space = space_file(tmp_path / "space.toml", {"conv_layers": [1], "fc_layers": [1], "lr": [1e-3, 1e-2]})
    gate = workers._FirstTrialGate.on_start
    me = f"{socket.gethostname()}:{os.getpid()}"

    def on_start(self: workers._FirstTrialGate, study: optuna.Study, finished: int, target: int) -> None:
        gate(self, study, finished, target)
        deadline = time.time() + patience(180)
        while time.time() < deadline:  # hold this process until the spawned one has a trial of its own
            if {internal_attr(t, WORKER_ATTR) for t in study.get_trials(deepcopy=False)} - {me, None}:
                return
            time.sleep(0.05)

    threads = torch.get_num_threads()
    with monkeypatch.context() as patch:
        patch.setattr(workers._FirstTrialGate, "on_start", on_start)
        result = invoke(
            "tabulate", "--space", space, "--out", "real", "--storage", journal_url(tmp_path), "--data", small_file,
            "--max-epochs", 1, "--workers", 2, "--threads", 1, "--json", tmp_path / "real.json",
        )  # fmt: skip
        assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    study = load_study(journal_url(tmp_path), "table/real")
    assert len({internal_attr(t, WORKER_ATTR) for t in study.trials} - {me}) == 1  # the spawned worker trained one
    table = Table.load(tmp_path / "real.json")
    assert len(table.rows) == 2
    for row in table.rows:
        assert set(row.test_metrics) >= {"loss", "accuracy", "roc_auc", "fpr_at_5fnr"}
        assert 0 <= row.test_metrics["accuracy"] <= 1 and row.wall_time > 0


@pytest.mark.parametrize(
    ("args", "toml_extra", "message"),
    [
        (["--max-configs", 7], "", "the space has 8 configurations, more than the table limit of 7"),
        ([], "pruner = 'median'", "sets pruner = 'median': a table needs every configuration's whole curve"),
        ([], "NO_SPACE", "has no [space]: a table enumerates a finite space"),
        (["--pruner", "median"], "", "No such option: --pruner"),
        (["--out", "a b"], "", "invalid table name 'a b'"),
        (["--json", "."], "", "cannot write .: it is a directory"),
        (["--max-epochs", 0], "", "Invalid value for '--max-epochs'"),
    ],
)
def test_tabulate_refuses_bad_input_before_the_store_is_opened(
    args: list, toml_extra: str, message: str, tmp_path: Path, small_file: Path, fake_tabulating: None
) -> None:
    space = tmp_path / "space.toml"
    if toml_extra == "NO_SPACE":
        space.write_text("strategy = 'grid'\n")
    else:
        space_file(space, extra=toml_extra)
    base = ["--space", space, "--out", "t", "--storage", journal_url(tmp_path), "--data", small_file]
    assert_refused(invoke("tabulate", *base, *args), message)
    assert not (tmp_path / "optuna.log").exists()


def test_tabulate_refuses_a_space_above_the_default_limit(tmp_path: Path) -> None:
    big = {"conv_layers": [1, 2, 3, 4], "conv_kernel_size": [3, 5, 7], "fc_layers": [1, 2, 3, 4, 5],
           "fc_width": [32, 64, 128, 256], "normalization": ["None", "BatchNorm", "LayerNorm"],
           "activation": ["ReLU", "GELU", "Tanh", "LeakyReLU"], "dropout_rate": [0.0, 0.1, 0.2, 0.3, 0.05]}  # fmt: skip
    big_file = space_file(tmp_path / "big.toml", big)
    result = invoke(
        "tabulate", "--config", big_file, "--out", "big", "--storage", journal_url(tmp_path)
    )  # --space's alias
    assert_refused(result, "the space has 14,400 configurations, more than the table limit of 10,000")
    assert not (tmp_path / "optuna.log").exists()


def test_tabulate_refuses_to_resume_with_other_settings(
    tmp_path: Path, small_file: Path, fake_tabulating: None
) -> None:
    nothing = invoke("tabulate", "--out", "t8", "--storage", journal_url(tmp_path))
    assert_refused(nothing, "no table study 'table/t8'")
    assert tabulate(tmp_path, small_file).exit_code == 0
    before = (tmp_path / "optuna.log").read_bytes()
    assert_refused(tabulate(tmp_path, small_file, "--seed", 1), "was started with seed 0, not 1")
    assert_refused(tabulate(tmp_path, small_file, "--max-epochs", 4), "was started with max epochs 3, not 4")
    assert (tmp_path / "optuna.log").read_bytes() == before


def test_an_incomplete_table_after_a_run_is_one_line(
    tmp_path: Path, small_file: Path, fake_tabulating: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configuration whose training fails leaves a hole: tabulate says so (exit 1) instead of writing a table."""

    def failing(params: Mapping[str, Any], data: Any, **options: Any) -> Any:
        if params["lr"] == 1e-2 and params["conv_layers"] == 2 and params["activation"] == "GELU":
            raise RuntimeError("boom")
        return fake_train(params, data, **options)

    monkeypatch.setattr(helpers, "TRAINER", tabulating(failing))
    result = tabulate(tmp_path, small_file)
    assert result.exit_code == 1, result.output
    assert "1 of 8 configurations have no row (1 trial(s) failed" in result.stderr
    assert not (tmp_path / "t8.json.gz").exists()


# --- table files ---------------------------------------------------------------------------------------------------


def test_a_table_survives_json_round_trips(tmp_path: Path) -> None:
    table = make_table()
    for name in ("t.json", "t.json.gz"):
        table.save(tmp_path / name)
        loaded = Table.load(tmp_path / name)
        assert loaded.rows == table.rows and loaded.space == {k: list(v) for k, v in table.space.items()}
        assert (loaded.seed, loaded.max_epochs, loaded.data_fingerprint) == (0, 10, "f" * 16)
    table.save(tmp_path / "again.json.gz")  # byte-reproducible: no time stamp in the gzip header
    assert (tmp_path / "again.json.gz").read_bytes() == (tmp_path / "t.json.gz").read_bytes()
    # values written as a person would: 1e-3 or 0.001, 64 or 64.0, any case of a name
    text = (
        (tmp_path / "t.json")
        .read_text()
        .replace('"lr":0.001', '"lr":1e-3')
        .replace('"batch_size":64', '"batch_size":64.0')
    )
    (tmp_path / "edited.json").write_text(text)
    edited = Table.load(tmp_path / "edited.json")
    for params in (
        {"lr": 0.001, "batch_size": 64},
        {"lr": "1e-3", "batch_size": 64.0},
        {"lr": 1e-3, "batch_size": "64"},
    ):
        assert edited.row(params) == table.row({"lr": 1e-3, "batch_size": 64})
    assert table.row({**DEFAULT_PARAMS, "lr": 1e-3, "activation": "relu"}).params["lr"] == 1e-3


def test_non_finite_metrics_are_written_as_null(tmp_path: Path) -> None:
    def diverged(params: dict) -> TableRow:
        row = make_row(params, epochs=2)
        nan = math.nan
        bad = EpochMetrics(2, nan, 0.3, nan, 0.3, 0.5, 1e-1, 0.7)
        return TableRow(**{**row.__dict__, "history": (row.history[0], bad), "best_epoch": 1,
                           "stop_reason": "diverged"})  # fmt: skip

    table = make_table({"lr": [1e-1]}, diverged)
    table.save(tmp_path / "d.json")
    text = (tmp_path / "d.json").read_text()
    assert "NaN" not in text and "null" in text  # standard JSON, readable by any tool
    row = Table.load(tmp_path / "d.json").rows[0]
    assert math.isnan(row.history[1].val_loss) and row.stop_reason == "diverged"


def _malformed(tmp_path: Path) -> dict[str, bytes]:
    good = make_table({"lr": [1e-3, 1e-2]})
    data = good.to_json()

    def edited(change: Callable[[dict], None]) -> bytes:
        copy = json.loads(json.dumps(data))
        change(copy)
        return json.dumps(copy).encode()

    return {
        "empty": b"",
        "not json": b"{ not json",
        "deep": b"[" * 100_000,
        "a list": b"[1, 2]",
        "binary": b"\xff\xfe\x00garbage",
        "broken gzip": b"\x1f\x8b\x08\x00garbage",
        "format": edited(lambda d: d.update(format="something-else")),
        "version": edited(lambda d: d.update(version=99)),
        "rows": edited(lambda d: d.update(rows={"a": 1})),
        "short epoch": edited(lambda d: d["rows"][0]["history"][0].pop()),
        "string metric": edited(lambda d: d["rows"][0]["history"][0].__setitem__(3, "low")),
        "outside the space": edited(lambda d: d["rows"][0]["params"].update(lr=0.5)),
        "unknown hyperparameter": edited(lambda d: d["space"].update(depth=[1])),
        "duplicate": edited(lambda d: d["rows"].append(d["rows"][0])),
        "best epoch": edited(lambda d: d["rows"][0].update(best_epoch=11)),
        "epoch numbers": edited(lambda d: d["rows"][0]["history"][1].__setitem__(0, 7)),
        "metrics": edited(lambda d: d["rows"][0]["test_metrics"].pop("accuracy")),
        "wall time": edited(lambda d: d["rows"][0].update(wall_time=-1)),
        "bool seed": edited(lambda d: d.update(seed=True)),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "empty",
        "not json",
        "deep",
        "a list",
        "binary",
        "broken gzip",
        "format",
        "version",
        "rows",
        "short epoch",
        "string metric",
        "outside the space",
        "unknown hyperparameter",
        "duplicate",
        "best epoch",
        "epoch numbers",
        "metrics",
        "wall time",
        "bool seed",
    ],
)
def test_a_malformed_table_is_one_error_line(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(_malformed(tmp_path)[kind])
    with pytest.raises(UserError) as refused:
        load_table(str(path))
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{path}: not a valid hpo-astro table"), message


def test_a_gzip_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tabular.table, "MAX_TABLE_BYTES", 1000)  # where Table.from_bytes reads it
    path = tmp_path / "bomb.json.gz"
    path.write_bytes(gzip.compress(b" " * 100_000))
    with pytest.raises(UserError, match="larger than"):
        load_table(str(path))


# --- load_table ----------------------------------------------------------------------------------------------------


def test_load_table_by_path_store_and_shipped_name(tmp_path: Path, small_file: Path, fake_tabulating: None) -> None:
    make_table().save(tmp_path / "hand.json")
    assert len(load_table(str(tmp_path / "hand.json")).rows) == 16
    with pytest.raises(UserError, match="table file not found"):
        load_table(str(tmp_path / "absent.json"))
    shipped = load_table(SHIPPED)
    assert shipped.name == SHIPPED and shipped.missing == 0
    with pytest.raises(UserError, match=f"not a shipped table \\(shipped: .*{SHIPPED}"):
        load_table("no-such-table", journal_url(tmp_path))
    # a table tabulated under the shipped table's name: the store's comes first (the user's own)
    assert tabulate(tmp_path, small_file, name=SHIPPED).exit_code == 0
    assert len(load_table(SHIPPED, journal_url(tmp_path)).rows) == 8
    assert load_table(SHIPPED).rows == shipped.rows  # without a store: the shipped one
    other = Table.load(tmp_path / f"{SHIPPED}.json.gz")
    assert other.rows != shipped.rows


def test_the_shipped_table(tmp_path: Path) -> None:
    """The table the package ships: complete, a few hundred configurations, each trained with at least 3 seeds on
    a validation split of at least 500 cutouts (one cutout at most 0.002 of accuracy), its recipe and fANOVA
    importances recorded, small, and its rows replay."""
    assert SHIPPED in shipped_tables()
    resource = shipped_tables()[SHIPPED]
    assert resource.name.endswith(".json.gz") and len(resource.read_bytes()) < 4 * 2**20
    table = load_table(SHIPPED)
    assert table.missing == 0 and table.configurations >= 300
    assert table.seeds >= 3 and len(table.rows) == table.configurations * table.seeds
    recipe = table.info["recipe"]
    records = int(recipe["data"].split("--n ")[1].split()[0])
    validation = float(recipe["split"].split(",")[1])
    assert records * validation >= 500 and table.info["split"] == [float(f) for f in recipe["split"].split(",")]
    assert table.configurations <= recipe["max_configs"]
    for name, left_out in recipe["left_out"].items():  # what the recipe leaves out for cost is not in the table
        assert not set(left_out) & set(table.space.get(name, ()))
    assert recipe["script"] == "scripts/make_table.py" and set(table.space) <= set(recipe["fanova_importances"])
    ranked = list(recipe["fanova_importances"])
    assert list(table.space) == [name for name in ranked if name in table.space]  # the space: the most important
    from hpo_astro.tabular.replay import run_index

    for row in table.runs(table.rows[0].params):  # each seed's run, drawn by the seed that draws it
        seed = next(
            s for s in range(table.seeds) if table.runs(row.params)[run_index(row.params, s, table.seeds)] is row
        )
        replayed = TableReplay(table)(row.params, None, seed=seed)
        assert replayed.history == list(row.history) and replayed.extra_attrs[TEST_METRICS_ATTR] == row.test_metrics
        assert replayed.seed == row.seed


# --- the replay ----------------------------------------------------------------------------------------------------


def test_a_replay_is_the_recorded_curve(tmp_path: Path, small_file: Path) -> None:
    table = make_table()
    replay = TableReplay(table)
    for row in table.rows:
        recorder = Recorder()
        result = replay(row.params, None, callbacks=[recorder], max_epochs=None, seed=3, resume=None, device="cpu")
        assert result.history == list(row.history) and recorder.epochs == list(range(1, 11))
        assert result.best_epoch == row.best_epoch and result.stop_reason == row.stop_reason
        assert result.val_metrics.as_dict() == {**row.val_metrics, "threshold": 0.5}
        assert result.wall_time == pytest.approx(row.wall_time) and result.seed == table.seed  # the table's seed
        assert result.extra_attrs == {"table": "hand", TEST_METRICS_ATTR: row.test_metrics}
        assert result.n_params > 100_000  # the real model's count, not the stand-in's
    # in a study: every trial's value, curve, wall time and test metrics are its row's
    result = run_study(bench_config(tmp_path, small_file, table), train=replay)
    assert result.finished == 16
    for trial in result.study.trials:
        row = table.row(trial.params)
        assert trial.state == TrialState.COMPLETE
        assert trial.value == pytest.approx(row.val_metrics["accuracy"])
        assert trial.intermediate_values == pytest.approx({h.epoch: h.val_accuracy for h in row.history})
        assert trial.user_attrs["wall_time"] == pytest.approx(row.wall_time)
        assert trial.user_attrs[TEST_METRICS_ATTR] == row.test_metrics
    assert pickle.loads(pickle.dumps(replay)).table.rows == table.rows  # workers get it by pickling


def test_a_replay_ends_where_the_tabulated_run_stopped_early() -> None:
    table = make_table(row=lambda p: make_row(p, epochs=9, best=4))  # best at 4, stopped 5 epochs later
    row = table.rows[0]
    result = TableReplay(table)(row.params, None)
    assert len(result.history) == 9 and result.stop_reason == "early_stopping" and result.best_epoch == 4
    assert result.val_metrics.accuracy == row.val_metrics["accuracy"]


def test_pruning_acts_on_replayed_curves(tmp_path: Path, small_file: Path) -> None:
    table = make_table()
    result = run_study(bench_config(tmp_path, small_file, table, pruner="median"), train=TableReplay(table))
    pruned = result.study.get_trials(states=(TrialState.PRUNED,))
    complete = result.study.get_trials(states=(TrialState.COMPLETE,))
    assert result.finished == 16 and pruned and complete
    for trial in pruned:  # stopped early, charged only the epochs replayed, and never tested
        epochs = len(trial_history(trial))
        assert epochs < 10 and trial.user_attrs["stop_reason"] == "pruned"
        assert trial.user_attrs["wall_time"] == pytest.approx(sum(0.5 + 0.1 * e for e in range(1, epochs + 1)))
        assert TEST_METRICS_ATTR not in trial.user_attrs
    best_pruned = max(quality(params_full(t)) for t in pruned)
    assert max(quality(params_full(t)) for t in complete) > best_pruned


def test_a_replay_resumes_from_its_checkpoint_and_an_interrupted_replayed_trial_is_replayed_whole(
    tmp_path: Path, small_file: Path
) -> None:
    table = make_table()
    row = table.rows[5]
    first = Recorder(stop_at=4)
    TableReplay(table)(row.params, None, callbacks=[first])
    rest = Recorder()
    resumed = TableReplay(table)(row.params, None, callbacks=[rest], resume=first.checkpoint)
    assert rest.epochs == list(range(5, 11)) and resumed.history == list(row.history)
    assert resumed.best_epoch == row.best_epoch and TEST_METRICS_ATTR in resumed.extra_attrs
    # In a study a replayed trial writes no checkpoint (it costs more than replaying the trial again): Ctrl-C in a
    # trial's third epoch, then the same run replays that trial from its first epoch and ends as it would have.
    cfg = bench_config(tmp_path, small_file, table)

    def interrupt(number: int, state: TrainState) -> None:
        if number == 1 and state.epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, RunEvents(on_epoch=interrupt), train=TableReplay(table))
    result = run_study(cfg, train=TableReplay(table))
    assert result.finished == 16
    trials = result.study.trials
    assert not any(internal_attr(t, CHECKPOINT_ATTR) or "resumed_from_epoch" in t.user_attrs for t in trials)
    retried = [
        t for t in result.study.trials if t.state.name == "COMPLETE" and t.params == result.study.trials[1].params
    ]
    assert len(retried) == 1
    row = table.row(retried[0].params)
    assert sorted(retried[0].intermediate_values) == list(range(1, 11))
    assert retried[0].value == pytest.approx(row.val_metrics["accuracy"])
    assert retried[0].user_attrs["wall_time"] == pytest.approx(row.wall_time)


def test_max_epochs_truncates_the_replay() -> None:
    table = make_table(row=lambda p: make_row(p, epochs=10, best=6))
    row = table.rows[3]
    short = TableReplay(table)(row.params, None, max_epochs=4)
    assert short.history == list(row.history[:4]) and short.stop_reason == "max_epochs" and short.best_epoch == 4
    assert short.wall_time == pytest.approx(sum(h.seconds for h in row.history[:4]))
    assert TEST_METRICS_ATTR not in short.extra_attrs  # its best weights (epoch 4) were never tested
    assert short.val_metrics.accuracy == row.history[3].val_accuracy and math.isnan(short.val_metrics.precision)
    past_best = TableReplay(table)(row.params, None, max_epochs=8)
    assert past_best.best_epoch == 6 and past_best.extra_attrs[TEST_METRICS_ATTR] == row.test_metrics
    longer = TableReplay(table)(row.params, None, max_epochs=50)  # a table cannot replay epochs it never ran
    assert longer.history == list(row.history) and longer.stop_reason == "early_stopping"
    assert table.covers(10) and table.covers(4) and not table.covers(11) and not table.covers(None)


def test_a_configuration_missing_from_the_table_is_refused(tmp_path: Path, small_file: Path) -> None:
    table = make_table(skip=1)  # the first configuration (lr 0.1, batch 4) has no row
    replay = TableReplay(table)
    with pytest.raises(UserError, match=r"configuration not in table 'hand': lr=0.1 batch_size=4 has no row \(15 of"):
        replay({**DEFAULT_PARAMS, "lr": 0.1, "batch_size": 4}, None)
    with pytest.raises(UserError, match=r"lr=0.5 is not in the table's space"):
        replay({"lr": 0.5, "batch_size": 4}, None)
    with pytest.raises(UserError, match="it was trained with fc_width=64, not fc_width=128"):
        replay({"lr": 1e-3, "batch_size": 4, "fc_width": 128}, None)
    with pytest.raises(UserError, match="unknown hyperparameter 'depth'"):
        table.row({"lr": 1e-3, "batch_size": 4, "depth": 3})
    # in a study the trial fails with that reason
    result = run_study(bench_config(tmp_path, small_file, table), train=replay)
    assert result.finished == 16  # the grid's 15 rows, and a configuration evaluated twice once the grid is spent
    failed = result.study.get_trials(states=(TrialState.FAIL,))
    assert all("has no row" in t.user_attrs["fail_reason"] for t in failed)


def test_a_table_built_by_hand_fills_in_defaults_and_refuses_duplicates() -> None:
    rows = (make_row({"lr": 1e-3, "batch_size": 64}),)  # only the space's hyperparameters given
    table = Table(name="h", space={"lr": [1e-3], "batch_size": [64]}, rows=rows, data_fingerprint="x", seed=0,
                  max_epochs=None)  # fmt: skip
    assert table.rows[0].params == {**DEFAULT_PARAMS, "lr": 1e-3, "batch_size": 64}
    sparse = TableRow(**{**rows[0].__dict__, "val_metrics": {"accuracy": 0.9, "loss": 0.2}, "test_metrics": {}})
    lean = Table(name="h", space={"lr": [1e-3]}, rows=(sparse,), data_fingerprint="x", seed=0, max_epochs=None)
    result = TableReplay(lean)({"lr": 1e-3}, None)  # metrics a table built in code leaves out are NaN
    assert result.val_metrics.accuracy == 0.9 and math.isnan(result.val_metrics.f1)
    with pytest.raises(UserError, match="repeats the configuration"):
        Table(name="h", space={"lr": [1e-3]}, rows=rows * 2, data_fingerprint="x", seed=0, max_epochs=None)
