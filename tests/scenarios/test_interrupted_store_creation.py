"""A first `run` interrupted while Optuna creates a new SQLite store leaves its tables with an empty `version_info`
(#17, 3a): readers say so in one line (they used to print a 300-line traceback); re-running `run` completes it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
from helpers import assert_refused, invoke


def test_readers_refuse_a_half_created_store_in_one_line_and_run_completes_it(tmp_path: Path, small_file: Path) -> None:
    db = tmp_path / "optuna.db"
    optuna.storages.RDBStorage(f"sqlite:///{db}").engine.dispose()
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM version_info")  # the schema without its version row: where the interruption fell
    before = db.read_bytes()
    for command in (["status"], ["compare"], ["report", "--out", str(tmp_path / "r")]):
        assert_refused(invoke(*command, "--storage", f"sqlite:///{db}"), "interrupted while being created")
    assert db.read_bytes() == before  # readers never write
    run = invoke("run", "-n", 1, "--data", small_file, "--max-epochs", 1, "--storage", f"sqlite:///{db}")
    assert run.exit_code == 0, run.output
    assert invoke("status", "--storage", f"sqlite:///{db}").exit_code == 0
