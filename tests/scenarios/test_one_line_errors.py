"""Bad input that used to end in a traceback (#17): each is now one `error:` line, exit code 2, and nothing is
written (no store created, no file left in the working directory)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import optuna
import pytest
from helpers import GOOD_STUDIES, assert_refused, invoke

from hpo_astro.store.record import params_full


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "--storage", "sqlite:///"], "in-memory SQLite"),
        (["status", "--storage", "sqlite://"], "in-memory SQLite"),
        (["compare", "--storage", "sqlite:///:memory:"], "in-memory SQLite"),
        (["run", "-n", 1, "--storage", "sqlite:///:memory:", "--max-epochs", 1], "in-memory SQLite"),
        (["status", "--storage", "postgresql+psycopg://nobody@127.0.0.1:1/x"], "cannot open storage"),
        (["run", "-n", 1, "--grace-period", 10**14], "grace_period at most"),
        (["run", "-n", 1, "--heartbeat", 10**14], "grace_period"),
        (["train", "--threads", 99999999999], "--threads"),
        (["storage-proxy", "--host", "256.1.1.1"], "cannot serve on 256.1.1.1"),
        (["run", "-n", 1, "--study", ""], "the study name is empty"),
        (["data", "synth", "--n", 10**10, "--out", "x.npz"], "--n"),
    ],
    ids=lambda value: " ".join(map(str, value)) if isinstance(value, list) else None,
)
def test_bad_input_is_one_line_and_writes_nothing(
    args: list[object], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert_refused(invoke(*args), message)
    assert list(tmp_path.iterdir()) == []


def _first_study(store: str) -> optuna.Study:
    return optuna.load_study(study_name=GOOD_STUDIES[0], storage=store)


@pytest.mark.parametrize(
    ("attr", "value", "message"),
    [
        ("best_weights", "a string", "best_weights"),
        ("best_weights", [1, 2], "best_weights"),
        ("channels", 5, "channels"),
        ("channels", ["bogus"], "channel"),
        ("strategy", {"an": "object"}, "strategy"),
    ],
)
def test_hostile_study_attributes_are_refused_in_one_line(
    attr: str, value: object, message: str, store: str, tmp_path: Path
) -> None:
    _first_study(store).set_user_attr(attr, value)
    for command in (["status"], ["compare", "--study", GOOD_STUDIES[0]]):
        result = invoke(*command, "--storage", store)
        if result.exit_code != 0:
            assert_refused(result, message)
        assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("name", "value"),
    [("fc_width", math.inf), ("fc_width", 10**9), ("fc_width", "wide"), ("fc_width", -3), ("conv_layers", 12)],
)
def test_a_stored_configuration_that_cannot_be_built_is_refused(name: str, value: object, store: str) -> None:
    """A store whose best trial's params_full asks for a model that cannot be built (conv_layers 12 made compare
    allocate more than 3 GB): refused in one line before anything is read or retrained."""
    study = _first_study(store)
    best = study.best_trial
    params = {**params_full(best), name: value}
    db = store.removeprefix("sqlite:///")
    with sqlite3.connect(db) as con:  # a finished trial: written as another program would, past Optuna's API
        con.execute(
            "UPDATE trial_system_attributes SET value_json = ? WHERE trial_id = ? AND key = 'hpo_astro:params_full'",
            (json.dumps(params), best._trial_id),
        )
    study.set_user_attr("best_weights", None)  # so that compare must rebuild the model from params_full
    assert_refused(invoke("compare", "--storage", store, "--study", GOOD_STUDIES[0]), name)
