"""Objectives at a real/bogus classifier's operating point: the false-positive rate at 5% missed reals
(`fpr_at_fnr`) and the missed-detection rate at 1% false positives (`mdr_at_fpr`), measured on validation every
epoch, minimised, reported to the pruner, named with their rate; refused on a table, which records neither per epoch."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from helpers import assert_refused, invoke, journal_url, load_study, study_config

from hpo_astro.core.space import SearchSpace
from hpo_astro.errors import UserError
from hpo_astro.store.record import trial_history
from hpo_astro.study.run import run_study
from hpo_astro.tabular import TableReplay, load_table, table_data


@pytest.mark.parametrize(
    ("objective", "metric", "field"),
    [("fpr_at_fnr", "val_fpr_at_5fnr", "fpr_at_5fnr"), ("mdr_at_fpr", "val_mdr_at_1fpr", "mdr_at_1fpr")],
)
def test_an_operating_point_objective_is_measured_every_epoch_and_minimised(
    objective: str, metric: str, field: str, tmp_path: Path, small_file: Path
) -> None:
    space = SearchSpace.from_dict({"conv_layers": [1], "fc_layers": [1], "batch_size": [64], "lr": [1e-2, 1e-3]})
    cfg = study_config(tmp_path, small_file, objective=objective, space=space, n_trials=2, max_epochs=2)
    study = run_study(cfg, train=None).study
    assert study.direction == optuna.study.StudyDirection.MINIMIZE and study.metric_names == [metric]
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        history = trial_history(trial)
        per_epoch = [row[metric] for row in history]
        assert all(0.0 <= v <= 1.0 for v in per_epoch)
        assert trial.intermediate_values == {row["epoch"]: row[metric] for row in history}  # what the pruner saw
        best = next(row for row in history if row["epoch"] == trial.user_attrs["best_epoch"])
        assert trial.value == pytest.approx(best[metric]) == pytest.approx(trial.user_attrs["val_metrics"][field])


def test_the_cli_takes_the_operating_points_and_a_table_refuses_them(
    tmp_path: Path, small_file: Path, fake_training: None
) -> None:
    store = journal_url(tmp_path)
    result = invoke("run", "--objective", "mdr_at_fpr", "-n", 1, "--data", small_file, "--storage", store)
    assert result.exit_code == 0, result.output
    assert load_study(store, "random").metric_names == ["val_mdr_at_1fpr"]
    table = load_table("astro-small")
    cfg = study_config(
        tmp_path / "t", small_file, objective="fpr_at_fnr", space=table.search_space, max_epochs=table.max_epochs,
        split=tuple(table.info["split"]),
    )  # fmt: skip
    with pytest.raises(UserError, match="--objective fpr_at_fnr needs training: a table records no operating point"):
        run_study(cfg, train=TableReplay(table), data=table_data(table))
    assert not math.isnan(table.rows[0].val_metrics["fpr_at_5fnr"])  # the best epoch's is there, not the curve
    bench = invoke(
        "benchmark", "--table", "astro-small", "--objective", "mdr_at_fpr", "--strategies", "random", "--repeats", 1,
        "--n-trials", 2, "--out", tmp_path / "bm",
    )  # fmt: skip
    assert_refused(bench, "needs training: a table records no operating point per epoch")
