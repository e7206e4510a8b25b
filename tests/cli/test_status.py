"""`status`: trial counts with waiting (re-queued) trials apart from running ones, `--format json` with the table's
facts, and `--top N`, the best trials with the parameters that vary (as Keras Tuner's `results_summary`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest
from helpers import fake_train, invoke, store_url, study_config

from hpo_astro.cli import output
from hpo_astro.core.space import SearchSpace
from hpo_astro.study.run import run_study

COLUMNS = ("study", "strategy", "target", "complete", "pruned", "fail", "running", "waiting", "best (trial)")


@pytest.fixture
def url(tmp_path: Path, small_file: Path) -> str:
    """A study of 4 complete trials over two varying dimensions and a fixed one, then one trial running and one
    waiting (re-queued, as after an interrupt or a dead worker)."""
    url = store_url(tmp_path)
    # sampled as a 0.1 study sampled its one-value lists: fc_layers is an Optuna parameter of one value, which the
    # status must still leave out of the parameters that vary
    space = SearchSpace.from_dict({"conv_layers": [1, 2], "fc_layers": [1], "lr": [1e-2, 1e-3]})
    space = dataclasses.replace(space, fixed_sampled=True)
    run_study(study_config(tmp_path, small_file, storage=url, space=space, max_epochs=1), train=fake_train)
    study = optuna.load_study(study_name="random", storage=url)
    study.ask()  # running
    study.enqueue_trial({"conv_layers": 1, "lr": 1e-2})  # waiting
    return url


def _table_row(text: str, study: str) -> dict[str, str]:
    (line,) = [line for line in text.splitlines() if line.startswith(f"│ {study} ")]
    return dict(zip(COLUMNS, (cell.strip() for cell in line.strip("│").split("│")), strict=True))


def test_waiting_trials_are_counted_apart_from_running_ones(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output.console, "width", 200)  # the console's width is set once, when it is made
    result = invoke("status", "--storage", url)
    assert result.exit_code == 0, result.output
    row = _table_row(result.stdout, "random")
    assert (row["complete"], row["running"], row["waiting"], row["target"]) == ("4", "1", "1", "4")
    (data,) = json.loads(invoke("status", "--storage", url, "--format", "json").stdout)
    assert data["counts"] == {"complete": 4, "pruned": 0, "fail": 0, "running": 1, "waiting": 1}


def test_status_json_holds_the_tables_facts(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output.console, "width", 200)  # the console's width is set once, when it is made
    result = invoke("status", "--storage", url, "--format", "json")
    assert result.exit_code == 0, result.output
    (data,) = json.loads(result.stdout)
    study = optuna.load_study(study_name="random", storage=url)
    assert data["name"] == "random" and data["strategy"] == "random" and data["target"] == 4
    assert data["direction"] == "maximize" and data["best_trial"] == study.best_trial.number
    assert data["best_value"] == study.best_value and data["best_params"] == study.best_trial.params
    row = _table_row(invoke("status", "--storage", url).stdout, "random")
    assert row["best (trial)"] == f"{data['best_value']:.4f} (#{data['best_trial']})"
    assert all(row[state] == str(count) for state, count in data["counts"].items())
    assert data["top"] == []  # only with --top
    nothing = invoke("status", "--storage", f"sqlite:///{tmp_path / 'none.db'}", "--format", "json")
    assert nothing.exit_code == 0 and json.loads(nothing.stdout) == []  # no store: no studies, still JSON


def test_status_top_lists_the_best_trials_with_the_parameters_that_vary(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output.console, "width", 200)  # the console's width is set once, when it is made
    study = optuna.load_study(study_name="random", storage=url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = sorted(complete, key=lambda t: (-t.value, t.number))[:2]
    (data,) = json.loads(invoke("status", "--storage", url, "--top", 2, "--format", "json").stdout)
    assert [(t["number"], t["value"]) for t in data["top"]] == [(t.number, t.value) for t in best]
    for shown, trial in zip(data["top"], best, strict=True):
        assert shown["params"] == {"conv_layers": trial.params["conv_layers"], "lr": trial.params["lr"]}
        assert shown["seconds"] == trial.duration.total_seconds()
    table = invoke("status", "--storage", url, "--top", 2)
    assert table.exit_code == 0, table.output
    ranked = [line for line in table.stdout.splitlines() if line.startswith(("│ 1 ", "│ 2 "))]
    assert [line.split("│")[2].strip() for line in ranked] == [f"#{t.number}" for t in best]
    for line, trial in zip(ranked, best, strict=True):
        assert f"conv_layers={trial.params['conv_layers']} lr={trial.params['lr']:g}" in line
        assert trial.params["fc_layers"] == 1 and "fc_layers" not in line and f"{trial.value:.4f}" in line
