"""Objectives at a real/bogus classifier's operating point: the false-positive rate at 5% missed reals
(`fpr_at_fnr`) and the missed-detection rate at 1% false positives (`mdr_at_fpr`), measured on validation every
epoch, minimised, reported to the pruner, named with their rate; refused on a table, which records neither per epoch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from helpers import assert_refused, invoke, journal_url, load_study, study_config

from hpo_astro.core.metrics import classification_metrics, stated_rates
from hpo_astro.core.space import SearchSpace
from hpo_astro.errors import UserError
from hpo_astro.store.record import trial_history
from hpo_astro.study.objectives import parse_objectives
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


@pytest.mark.parametrize(
    ("text", "rate", "metric", "label"),
    [
        ("fpr_at_fnr@2%", 0.02, "val_fpr_at_2fnr", "fpr_at_fnr@2%"),
        ("fpr_at_fnr@0.02", 0.02, "val_fpr_at_2fnr", "fpr_at_fnr@2%"),
        ("mdr_at_fpr@0.5%", 0.005, "val_mdr_at_0.5fpr", "mdr_at_fpr@0.5%"),
        ("fpr_at_fnr@5%", None, "val_fpr_at_5fnr", "fpr_at_fnr"),  # the default rate: the plain objective
        ("mdr_at_fpr @ 1%", None, "val_mdr_at_1fpr", "mdr_at_fpr"),
    ],
)
def test_an_operating_point_takes_a_stated_rate_named_in_its_metric(
    text: str, rate: float | None, metric: str, label: str
) -> None:
    (spec,) = parse_objectives(text)
    assert spec.rate == (None if rate is None else pytest.approx(rate))
    assert (spec.metric_name, spec.label) == (metric, label)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("accuracy@2%", "objective 'accuracy' takes no rate"),
        ("fpr_at_fnr@0", "between 0 and 100%"),
        ("fpr_at_fnr@100%", "between 0 and 100%"),
        ("mdr_at_fpr@two", "a percentage or a fraction"),
        ("fpr_at_fnr@2%,fpr_at_fnr", "names one objective twice"),
    ],
)
def test_a_bad_rate_is_one_line(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_objectives(text)


def test_metrics_at_the_default_rates_stated_equal_the_standard_ones() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.clip(labels * 0.3 + rng.random(500) * 0.7, 0, 1)
    plain = classification_metrics(labels, scores)
    assert math.isnan(plain.fpr_at_fnr) and "fpr_at_fnr" not in plain.as_dict()
    with stated_rates(0.05, 0.01):
        same = classification_metrics(labels, scores)
    assert (same.fpr_at_fnr, same.mdr_at_fpr) == (plain.fpr_at_5fnr, plain.mdr_at_1fpr)
    with stated_rates(0.01, 0.05):
        other = classification_metrics(labels, scores)
    # Fewer missed reals allowed: a lower threshold, more bogus through; more false positives allowed: fewer misses
    assert other.fpr_at_fnr >= plain.fpr_at_5fnr and other.mdr_at_fpr <= plain.mdr_at_1fpr
    assert math.isnan(classification_metrics(labels, scores).fpr_at_fnr)  # the block ended: nothing stated


def test_a_study_at_a_stated_rate_measures_it_every_epoch_and_records_it(tmp_path: Path, small_file: Path) -> None:
    space = SearchSpace.from_dict({"conv_layers": [1], "fc_layers": [1], "batch_size": [64], "lr": [1e-2, 1e-3]})
    cfg = study_config(tmp_path, small_file, objective="fpr_at_fnr@2%", space=space, n_trials=2, max_epochs=2)
    study = run_study(cfg, train=None).study
    assert study.metric_names == ["val_fpr_at_2fnr"] and study.user_attrs["objective"] == "fpr_at_fnr@2%"
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        history = trial_history(trial)
        assert trial.intermediate_values == {row["epoch"]: row["val_fpr_at_fnr"] for row in history}
        metrics = trial.user_attrs["val_metrics"]
        assert trial.value == pytest.approx(metrics["fpr_at_fnr"]) and metrics["fpr_at_fnr"] >= metrics["fpr_at_5fnr"]
    other = study_config(tmp_path, small_file, objective="fpr_at_fnr@1%", space=space, n_trials=3, max_epochs=2)
    with pytest.raises(UserError, match=r"different objective \(fpr_at_fnr@2% vs fpr_at_fnr@1%\)"):
        run_study(other, train=None)


def test_a_rate_the_metric_name_cannot_hold_exactly_is_refused() -> None:
    for text in ("fpr_at_fnr@0.123456789", "fpr_at_fnr@5.0000001%"):  # not trained at a rate its name rounds off
        with pytest.raises(UserError, match="at most 6 significant digits"):
            parse_objectives(text)
